"""Reading and writing matrices: Matrix Market (``.mtx``, or gzip-compressed ``.mtx.gz`` for reading, via
scipy.io) and numpy (``.npy``).

Every reading error becomes one :class:`~refinekit.core.InputError` line naming the file; the solution
is written atomically (a temporary file renamed over the target), so a failed run leaves no output.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..core import InputError
from ..core.atomic import atomic_write

FORMATS = (".mtx", ".npy")
_COMMENT = re.compile(rb"%[^\r\n]*")
_FORTRAN_EXPONENT = bytes.maketrans(b"dD", b"ee")


def _format(path: Path, *, reading: bool = False) -> str:
    suffix = path.suffix.lower()
    if reading and suffix == ".gz" and path.stem.lower().endswith(".mtx"):  # as the NIST Matrix Market serves
        return ".mtx.gz"
    if suffix not in FORMATS:
        raise InputError(f"unknown format {suffix or '(no extension)'!r}: use .mtx (Matrix Market) or .npy",
                         path=path)
    return suffix


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise InputError(f"is a directory, not a {what}", path=path) from None
    except FileNotFoundError:
        raise InputError("no such file", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot read {what} ({(exc.strerror or str(exc)).lower()})", path=path) from None
    if not data.strip():
        raise InputError(f"empty {what}", path=path)
    return data


def read_array(path: str | os.PathLike[str], *, what: str = "matrix", sparse: bool = True) -> Any:
    """A real matrix or vector from ``.mtx`` or ``.npy``: a numpy array, or (Matrix Market coordinate
    files, with ``sparse``) a scipy.sparse CSR array. Pattern and complex files, non-numeric or
    truncated files are refused with one line.

    >>> import pathlib, tempfile, numpy as np
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "b.npy"
    >>> np.save(path, np.arange(3.0))
    >>> read_array(path, what="right-hand side").tolist()
    [0.0, 1.0, 2.0]
    """
    path = Path(path)
    suffix = _format(path, reading=True)
    data = _read_bytes(path, what)
    if suffix == ".mtx.gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:  # not gzip, or cut short
            raise InputError(f"not a readable gzip-compressed {what} ({_reason(exc)})", path=path) from None
        if not data.strip():
            raise InputError(f"empty {what}", path=path)
    if suffix == ".npy":
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as exc:  # numpy raises ValueError, EOFError, OSError... for bad files
            raise InputError(f"not a readable .npy {what} ({_reason(exc)})", path=path) from None
        return _check_dtype(np.asarray(array), path, what)
    return _read_matrix_market(data, path, what, sparse)


def _read_matrix_market(data: bytes, path: Path, what: str, sparse: bool) -> Any:
    import scipy.io
    import scipy.sparse as sp

    data = _normalize_matrix_market(data)
    header = data.split(b"\n", 1)[0].decode("ascii", "replace").lower().split()
    if len(header) < 5 or header[0] != "%%matrixmarket" or header[1] != "matrix":
        raise InputError(f"not a Matrix Market file (the first line must be '%%MatrixMarket matrix ...', "
                         f"got {header[:5]!r})", path=path)
    if header[3] == "pattern":
        raise InputError(f"a pattern {what} has no values", path=path)
    if header[3] == "complex":
        raise InputError(f"complex {_plural(what)} are not supported", path=path)
    try:
        value = scipy.io.mmread(io.BytesIO(data))
    except Exception as exc:  # scipy raises ValueError, IndexError, RuntimeError... on a malformed file
        raise InputError(f"corrupt or truncated Matrix Market {what} ({_reason(exc)})", path=path) from None
    if sp.issparse(value):
        value = sp.csr_array(value)
        _check_dtype(value.data, path, what)
        if not sparse:
            return value.toarray()
        return value
    return _check_dtype(np.asarray(value), path, what)


def _normalize_matrix_market(data: bytes) -> bytes:
    """Legitimate files that scipy.io.mmread refuses or misreads, made plain: a UTF-8 byte order mark, a
    banner in any case (``%%MATRIXMARKET``), comment lines among the data lines, Fortran ``D`` exponents.
    Comments are emptied, not removed, so that scipy's line numbers in error messages still match the file."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    banner, newline, body = data.partition(b"\n")
    last = body.rfind(b"%")
    if last >= 0:  # scipy skips comment lines only before the size line; scan no further than the last one
        end = body.find(b"\n", last)
        end = len(body) if end < 0 else end
        body = _COMMENT.sub(b"", body[:end]) + body[end:]
    if b"d" in body or b"D" in body:  # with comments gone, a letter d can only be an exponent: 1.5D+01 is 15,
        body = body.translate(_FORTRAN_EXPONENT)  # which scipy silently reads as 1.5
    if banner[:14].lower() == b"%%matrixmarket":  # scipy wants this word as spelled, the rest in lower case
        banner = b"%%MatrixMarket" + banner[14:].lower()
    return banner + newline + body


def _plural(what: str) -> str:
    return "matrices" if what == "matrix" else f"{what}s"


def _check_dtype(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    if array.dtype.kind == "c":
        raise InputError(f"complex {_plural(what)} are not supported", path=path)
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise InputError(f"a {what} must hold numbers, this one holds {array.dtype}", path=path)
    if array.size and not np.all(np.isfinite(array)):
        raise InputError(f"the {what} contains NaN or Inf", path=path)
    return array


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def write_array(path: str | os.PathLike[str], x: np.ndarray) -> None:
    """Write ``x`` atomically as ``.mtx`` (dense array format, 17 significant digits: doubles round-trip)
    or ``.npy``, chosen by the extension of ``path``."""
    path = Path(path)
    suffix = _format(path)
    x = np.asarray(x, dtype=np.float64)
    if suffix == ".npy":
        with atomic_write(path, "wb") as fh:
            np.save(fh, x, allow_pickle=False)
        return
    import scipy.io

    matrix = x[:, None] if x.ndim == 1 else x
    buffer = io.BytesIO()
    # symmetry="general": left to itself mmwrite stores a symmetric x (a 1x1 one, or an n x n one from n
    # right-hand sides) as its lower triangle only, which a reader of plain columns misreads
    scipy.io.mmwrite(buffer, matrix, precision=17, symmetry="general",
                     comment="solution written by refinekit linalg solve")
    with atomic_write(path, "wb") as fh:
        fh.write(buffer.getvalue())
