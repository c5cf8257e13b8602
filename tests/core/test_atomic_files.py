"""Several outputs written all or nothing (refinekit.core.atomic.atomic_write_files)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import refinekit.core.atomic as atomic
from refinekit.core.atomic import atomic_write_files


def test_every_file_is_written_with_the_mode_open_gives(tmp_path: Path) -> None:
    atomic_write_files({tmp_path / "a.txt": "é\n", tmp_path / "b.bin": b"\x00\x01"})
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "é\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert (tmp_path / "a.txt").stat().st_mode == plain.stat().st_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "plain"]


def test_a_full_disk_on_a_later_file_leaves_none_and_the_old_files_as_they_were(
        tmp_path: Path, full_disk_on_third_fsync: list[int]) -> None:
    (tmp_path / "b.txt").write_text("old b")
    with pytest.raises(OSError, match="No space"):
        atomic_write_files({tmp_path / n: f"new {n}" for n in ("a.txt", "b.txt", "c.txt")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]  # no temporary file either
    assert (tmp_path / "b.txt").read_text() == "old b"


def test_a_rename_failing_halfway_takes_back_the_files_already_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace

    def replace(src: str, dst: os.PathLike[str]) -> None:
        if Path(dst).name == "b.txt":
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError):
        atomic_write_files({tmp_path / "a.txt": "a", tmp_path / "b.txt": "b"})
    assert list(tmp_path.iterdir()) == []
