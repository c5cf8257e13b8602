"""The torch backend's device handling, and the GPU benchmark's timing (run without a GPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")


def _benchmark_module():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "cryoem_gpu.py"
    spec = importlib.util.spec_from_file_location("cryoem_gpu_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_waits_for_the_backends_own_gpu(monkeypatch):
    """A bare torch.cuda.synchronize() waits for the current device (cuda:0) only: with --device cuda:1
    the clock was read before the kernels had run."""
    benchmark = _benchmark_module()
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    backend = SimpleNamespace(name="torch", device="cuda:1", torch=torch)
    calls = []
    benchmark.timed(backend, lambda: calls.append(len(waited)), repeats=2)
    assert waited and all(device == "cuda:1" for device in waited)
    # a warm-up first; each timed run is followed by a wait
    assert calls == [0, 1, 2] and len(waited) == 3


def test_torch_backend_accepts_an_existing_cuda_index(monkeypatch):
    from refinekit.cryoem.backend import get_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    backend = get_backend(device="cuda:1")
    assert backend.name == "torch" and backend.device == "cuda:1"
