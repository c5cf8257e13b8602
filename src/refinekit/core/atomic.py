"""Atomic output: write to a temporary file beside the target, then rename over it.

A crash or an error halfway leaves either the old file or nothing, never a partial file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file for writing; on success it replaces ``path`` atomically.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> with atomic_write(out) as fh:
    ...     _ = fh.write("hello")
    >>> out.read_text()
    'hello'
    """
    with atomic_outputs([path]) as (tmp,), open(tmp, mode, **kwargs) as fh:
        yield fh


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)


@contextlib.contextmanager
def output_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """``path`` made if need be (parents too) for a block that writes outputs into it; where the block
    fails, a folder it made is removed again (a failed command writes nothing, not even its folder),
    and one that was there already is left as it was.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "results"
    >>> try:
    ...     with output_folder(out):
    ...         raise OSError("disk full")
    ... except OSError:
    ...     pass
    >>> out.exists()
    False
    """
    folder = Path(path)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Temporary paths beside ``paths`` (same suffixes, for writers that go by them) for a block to write
    several outputs to, by any writer that takes a path. When the block succeeds, all are synced and
    only then renamed over their targets; otherwise all are removed, so that a failure (a full disk on
    the third file, an interrupt) leaves none of the new outputs rather than some of them beside older
    ones. A rename failing halfway removes those already renamed.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_outputs([folder / "a.txt", folder / "b.txt"]) as (a, b):
    ...     _ = a.write_text("A"), b.write_text("B")
    >>> sorted(p.name for p in folder.iterdir())
    ['a.txt', 'b.txt']
    """
    targets = [Path(p) for p in paths]
    staged: list[Path] = []
    renamed: list[Path] = []
    try:
        for target in targets:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}",
                                       dir=target.parent or ".")
            os.close(fd)
            staged.append(Path(tmp))
        yield list(staged)
        for tmp in staged:  # every byte on disk before the first rename: what can fail then is rare
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would have given
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for tmp, target in zip(staged, targets, strict=True):
            os.replace(tmp, target)
            renamed.append(target)
    except BaseException:
        for leftover in (*staged, *renamed):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
        raise


def atomic_write_files(files: Mapping[str | os.PathLike[str], bytes | str]) -> None:
    """Write several files all or nothing (``str`` as UTF-8), through :func:`atomic_outputs`.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_files({folder / "a.txt": "A", folder / "b.bin": b"B"})
    >>> sorted(p.name for p in folder.iterdir())
    ['a.txt', 'b.bin']
    """
    with atomic_outputs(list(files)) as staged:
        for tmp, data in zip(staged, files.values(), strict=True):
            tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
