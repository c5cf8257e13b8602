"""Atomic output: write to a temporary file beside the target, then rename over it.

A crash or an error halfway leaves either the old file or nothing, never a partial file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
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
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would have given
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_files(files: Mapping[str | os.PathLike[str], bytes | str]) -> None:
    """Write several files all or nothing: each to a temporary file beside its target (``str`` as
    UTF-8), all synced, and only then all renamed into place. A failure (a full disk on the third
    file, say) leaves none of them, and no temporary file.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_files({folder / "a.txt": "A", folder / "b.bin": b"B"})
    >>> sorted(p.name for p in folder.iterdir())
    ['a.txt', 'b.bin']
    """
    staged: list[tuple[str, Path]] = []
    renamed: list[Path] = []
    try:
        for path, data in files.items():
            target = Path(path)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
            staged.append((tmp, target))
            with os.fdopen(fd, "wb") as fh:
                os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would have given
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
                fh.flush()
                os.fsync(fh.fileno())
        # every byte is on disk before the first rename: what fails from here on is a rename, rare
        for tmp, target in staged:
            os.replace(tmp, target)
            renamed.append(target)
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for target in renamed:  # a rename failed halfway: the outputs already in place go too
            with contextlib.suppress(OSError):
                os.unlink(target)
        raise
