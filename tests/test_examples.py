"""The examples run and do what they say."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "examples" / script), *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_fit_with_free_set(tmp_path):
    out = run("fit_with_free_set.py", "--plot", str(tmp_path / "p.png"))
    assert out.returncode == 0, out.stderr
    assert "converged" in out.stdout and "k1" in out.stdout
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_custom_problem():
    out = run("custom_problem.py")
    assert out.returncode == 0, out.stderr
    assert "status      : converged" in out.stdout
