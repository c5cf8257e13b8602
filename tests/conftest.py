"""Shared test fixtures: where the real datasets live (../shared/data beside the repository)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REFINEKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets; tests that need them are skipped where they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def full_disk_on_third_fsync(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``os.fsync`` as refinekit.core.atomic calls it fails with ENOSPC (a full disk) on its third call;
    the list gathers the calls made."""
    import refinekit.core.atomic as atomic

    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    return calls
