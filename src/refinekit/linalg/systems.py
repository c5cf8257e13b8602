"""The linear system as the refinement sees it: double-precision residuals, equilibration, and the LU
factorizations (LAPACK for dense matrices, SuperLU for sparse ones) in low or double precision.

Equilibration follows LAPACK's DGEEQUB: rows, then columns, are scaled by powers of two so that each
has its largest entry near 1, and only where that is needed (a row or column ratio below 0.1, or
entries far from 1, as in DLAQGE). Powers of two make the scaling exact, so the scaled system
``(R A C) y = R b`` with ``x = C y`` is the same system, not an approximation of it: the residual is
computed with the caller's ``A`` and ``b``, untouched, and only the low-precision factors see the
scaled matrix.

A dense matrix is factored as its transpose: ``A`` in C order is ``A.T`` in Fortran order, which
LAPACK factors in place without a transposing copy; the solves then use ``trans=1``. Partial pivoting
of ``A.T`` is column pivoting of ``A``, which is as stable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import InputError
from .precision import DOUBLE_EPS, HALF_MAX, UNIT_ROUNDOFF, round_in_place

#: Row and column ratios below this are equilibrated (LAPACK DLAQGE's THRESH).
SCALING_THRESHOLD = 0.1
#: Entries of largest magnitude outside [2**-16, 2**16] are scaled towards 1 as well.
RANGE_LIMIT = 2.0**16
#: Up to this order, a dense system keeps ``|A|`` in float32 (half the memory of ``A``) for the
#: componentwise backward error; above it, ``|A||x|`` is taken from ``A`` itself (one pass either way).
KEEP_ABS_UP_TO = 2048
#: A matrix of at most this many bytes (n <= 724 in float32) is read for its statistics in one block.
ONE_BLOCK_BYTES = 1 << 21


class MatrixError(InputError):
    """Bad values in the matrix A itself (not finite, a row's sum overflowing, singular), found by the
    solver, which has no file to name: a caller that read A from one names it (as the command line does)."""


class SingularMatrixError(MatrixError, np.linalg.LinAlgError):
    """The matrix is singular: an exact zero pivot in the double-precision LU, or a zero row or column.

    It is an :class:`~refinekit.core.InputError` (the command line reports it in one line, exit code 2)
    and a :class:`numpy.linalg.LinAlgError`, as ``numpy.linalg.solve`` raises.
    """


class FactorizationFailed(Exception):
    """A low-precision factorization broke down (zero pivot, overflow): the caller falls back."""


#: the exponents of the equilibration's scale factors: 2**1022 is the largest power of two whose
#: inverse is still a (subnormal, exact) double, so rows of subnormal magnitude scale without overflow
SCALE_EXPONENTS = (-1022, 1022)


def _inverse_power_of_two(values: np.ndarray) -> np.ndarray:
    """``2**-round(log2(values))`` for positive finite values, the exponent kept in
    :data:`SCALE_EXPONENTS` (a row of subnormal numbers would otherwise need 2**1028, which overflows)."""
    return np.exp2(-np.clip(np.round(np.log2(values)), *SCALE_EXPONENTS))


@dataclass
class Scaling:
    """Row and column scale factors (powers of two), None where the side is not scaled."""

    row: np.ndarray | None = None
    col: np.ndarray | None = None

    @property
    def active(self) -> bool:
        return self.row is not None or self.col is not None

    # the factors are (n,) or, for a stack, (batch, n); vectors are (..., n, k)
    def to_scaled(self, r: Any) -> Any:
        """A right-hand side or residual of ``A x = b`` as one of ``(R A C) y = R b``."""
        return r if self.row is None else self.row[..., :, None] * r

    def from_scaled(self, d: Any) -> Any:
        """A solution of the scaled system as one of the original: ``x = C y``."""
        return d if self.col is None else self.col[..., :, None] * d

    def transpose_to_scaled(self, v: Any) -> Any:
        """For ``A^T``: ``(R A C)^T = C A^T R``, so a right-hand side of ``A^T`` is scaled by ``C``."""
        return v if self.col is None else self.col[..., :, None] * v

    def transpose_from_scaled(self, d: Any) -> Any:
        return d if self.row is None else self.row[..., :, None] * d


def choose_scaling(row_max: np.ndarray, col_max_of: Any, *, always: bool = False) -> Scaling:
    """DGEEQUB's power-of-two scale factors from the rows' largest magnitudes; ``col_max_of(row)`` gives
    the columns' largest magnitudes after the row scaling ``row`` (None: unscaled). ``always`` scales
    even a well-scaled matrix to entries near 1 (the 16-bit formats need that for their range)."""
    amax, amin = float(row_max.max()), float(row_max.min())
    out_of_range = not (1.0 / RANGE_LIMIT <= amax <= RANGE_LIMIT)
    row = None
    if always or out_of_range or amin < SCALING_THRESHOLD * amax:
        row = _inverse_power_of_two(row_max)
    col_max = col_max_of(row)
    cmax, cmin = float(col_max.max()), float(col_max.min())
    col = None
    if cmin < SCALING_THRESHOLD * cmax or (row is None and not (1.0 / RANGE_LIMIT <= cmax <= RANGE_LIMIT)):
        col = _inverse_power_of_two(col_max)
    return Scaling(row, col)


def powers_of_two_for(largest: np.ndarray) -> np.ndarray:
    """``2**-e`` with ``largest = f * 2**e``, ``0.5 <= f < 1`` (1 where ``largest`` is 0 or not finite):
    the exact scale factors that bring vectors of these largest magnitudes into [0.5, 1)."""
    # frexp gives exponent 0 for 0, Inf and NaN; exponents reach -1073 (subnormals) and 1024 (the
    # largest doubles), whose inverse powers of two would overflow or underflow to 0, hence the clip
    return np.ldexp(1.0, -np.clip(np.frexp(largest)[1], -1000, 1000))


def power_of_two_scale(largest: float) -> float:
    """:func:`powers_of_two_for` of one number, in scalar arithmetic (fewer calls for one column)."""
    if not (largest > 0 and math.isfinite(largest)):
        return 1.0
    return math.ldexp(1.0, -max(-1000, min(1000, math.frexp(largest)[1])))


def column_scale(v: np.ndarray) -> np.ndarray:
    """Powers of two bringing each column's largest magnitude near 1 (shape ``(1, k)``): a right-hand
    side is scaled so before it is rounded to a low precision (a residual of 1e-40 would underflow
    float32, a vector of 1e300 overflow it), and the solution scaled back (exactly: linear solves
    commute with scaling)."""
    largest = np.max(np.abs(v), axis=-2, keepdims=True) if v.shape[-2] else np.ones((1, v.shape[-1]))
    return powers_of_two_for(largest)


def product(a: np.ndarray, v: np.ndarray, *, alpha: float = 1.0, add: np.ndarray | None = None) -> np.ndarray:
    """``alpha a v (+ add)`` for a C-ordered float32 or float64 matrix ``a`` and a vector or ``(n, k)``
    block ``v`` of its type, by the BLAS that scipy's LAPACK uses (one call; ``a.T`` is ``a`` in
    Fortran order, so nothing is copied).

    Refinement alternates products with ``A`` and LAPACK solves. Were the products numpy's, two
    OpenBLAS libraries would take turns (numpy and scipy each ship one), each with its own thread
    pool whose threads spin for a while after every call: with more than one thread, each pool's
    spinning threads take the cores the other one needs (measured on 2 cores: 25 % slower).

    >>> a = np.array([[1.0, 2.0], [3.0, 4.0]])
    >>> product(a, np.array([1.0, 1.0]), alpha=-1.0, add=np.array([3.0, 7.0])).tolist()
    [0.0, 0.0]
    """
    blas = _scipy_blas()
    blas_types = (np.float32, np.float64)
    if a.ndim != 2 or not a.flags.c_contiguous or a.dtype != v.dtype or a.dtype not in blas_types:
        out = alpha * (a @ v) if alpha != 1.0 else a @ v
        return out + add if add is not None else out
    single = a.dtype == np.float32
    if v.ndim == 1 or v.shape[1] == 1:
        gemv = blas.sgemv if single else blas.dgemv
        vector = v if v.ndim == 1 else v[:, 0]
        if add is None:
            out = gemv(alpha, a.T, vector, trans=1)
        else:
            out = gemv(alpha, a.T, vector, beta=1.0, y=add if add.ndim == 1 else add[:, 0], trans=1)
        return out if v.ndim == 1 else out[:, None]
    gemm = blas.sgemm if single else blas.dgemm
    if add is None:
        return gemm(alpha, a.T, v, trans_a=1)
    return gemm(alpha, a.T, v, beta=1.0, c=add, trans_a=1)


_BLAS: Any = None
_LAPACK: Any = None


def _scipy_blas() -> Any:
    """scipy.linalg.blas, imported on first use (the command line starts without scipy) and then kept:
    an import statement costs a microsecond or so per call, and refinement makes many small ones."""
    global _BLAS
    if _BLAS is None:
        from scipy.linalg import blas

        _BLAS = blas
    return _BLAS


def _scipy_lapack() -> Any:
    """scipy.linalg.lapack, imported on first use and then kept (as :func:`_scipy_blas`)."""
    global _LAPACK
    if _LAPACK is None:
        from scipy.linalg import lapack

        _LAPACK = lapack
    return _LAPACK


def _block_rows(n_columns: int, itemsize: int, target_bytes: int = 1 << 20) -> int:
    return max(8, target_bytes // max(1, n_columns * itemsize))


# ----------------------------------------------------------------------------------------- factors
class DenseLU:
    """LU factors of ``mu * A_s`` (``A_s`` the scaled matrix, ``mu`` a power of two keeping the 16-bit
    formats in range), stored as LAPACK leaves them for ``A_s.T``; solves take and return float64."""

    def __init__(self, lu: np.ndarray, pivots: np.ndarray, precision: str, multiplier: float = 1.0) -> None:
        lapack = _scipy_lapack()
        self.lu = lu
        self.pivots = pivots
        self.precision = precision
        #: ``A_s^-1 = multiplier * (mu A_s)^-1``: the solves of the factors are multiplied by ``mu``
        self.multiplier = float(multiplier)
        self.unit_roundoff = UNIT_ROUNDOFF[precision]
        self._getrs = lapack.sgetrs if lu.dtype == np.float32 else lapack.dgetrs
        self._buffer: np.ndarray | None = None

    def solve(self, v: np.ndarray, transposed: bool = False, prescaled: bool = False) -> np.ndarray:
        """``A_s^-1 v`` (``A_s^-T v`` if ``transposed``), computed in the factors' precision.
        ``prescaled``: the columns of ``v`` already have their largest magnitudes near 1."""
        low = self.lu.dtype != np.float64
        scale = column_scale(v) if low and not prescaled else None
        rhs = (v if scale is None else v * scale).astype(self.lu.dtype) if low else v
        x, _info = self._getrs(self.lu, self.pivots, rhs, trans=0 if transposed else 1, overwrite_b=low)
        out = x.astype(np.float64, copy=False)
        if scale is not None:
            out = out / scale
        return out * self.multiplier if self.multiplier != 1.0 else out

    def solve_normalised(self, v: np.ndarray, scale: np.ndarray, post: Any) -> np.ndarray:
        """``post * A_s^-1 (scale * v)`` in float64 for float64 ``v`` of shape ``(n, k)``: the hot path
        of refinement. ``scale`` (``(k,)``, powers of two) brings each column of ``v`` into float32's
        range before it is rounded to the factors' precision (one pass that multiplies and rounds into
        a reused buffer); ``post`` undoes it (and applies the column scaling), one pass that widens."""
        if self.lu.dtype == np.float64:
            x, _info = self._getrs(self.lu, self.pivots, v * scale, trans=1, overwrite_b=True)
            return x * post
        buffer = self._buffer
        if buffer is None or buffer.shape != v.shape:
            buffer = self._buffer = np.empty(v.shape, dtype=self.lu.dtype, order="F")
        np.multiply(v, scale, out=buffer, casting="unsafe")
        x, _info = self._getrs(self.lu, self.pivots, buffer, trans=1, overwrite_b=True)
        return np.multiply(x, post, dtype=np.float64)

    def promoted(self) -> DenseLU:
        """The same factors in float64 (a fresh copy: GMRES-IR's corrector keeps the one it uses):
        solves that apply them exactly, as GMRES-IR needs of its preconditioner (Carson & Higham 2017).
        Applied in float32, a preconditioned vector carries rounding errors relative to its largest
        component, which for an ill-conditioned ``A`` is the near-null direction: the well-conditioned
        components drown and GMRES stalls."""
        if self.lu.dtype == np.float64:
            return self
        return DenseLU(self.lu.astype(np.float64), self.pivots, self.precision, self.multiplier)

    def cancellation(self, tail: int = 0, chunks: int | None = None, rows: int = 8
                     ) -> tuple[np.ndarray, np.ndarray]:
        """``|u_kk| / (|L||U|)_kk`` for the last ``tail`` pivots and a sample of the others (``chunks``
        runs of ``rows`` consecutive ones, evenly spread: by default ``n / 128`` runs, between 4 and 16;
        all pivots of a small matrix), and their indices: how much of the magnitude of the terms that
        produced each pivot survived their cancellation. The rounding error of pivot ``k`` is about
        ``u (|L||U|)_kk``, so a pivot whose ratio is below ``u / eps`` is known to relative accuracy
        ``eps`` at best. Runs of consecutive rows keep the reads of the (column-major) factors to a few
        cache lines per column.

        >>> from scipy.linalg import lapack
        >>> a = np.array([[1.0, 1.0], [1.0, 1.0 + 2.0**-20]], dtype=np.float32)
        >>> lu, piv, _ = lapack.sgetrf(a)
        >>> ratios, index = DenseLU(lu, piv, "single").cancellation()
        >>> ratios.round(7).tolist(), index.tolist()
        ([1.0, 1e-06], [0, 1])
        """
        lu = self.lu
        n = lu.shape[0]
        tail = max(0, min(int(tail), n))
        head = n - tail
        if chunks is None:
            chunks = max(4, min(16, n // 128))
        if head <= chunks * rows:
            runs = [(k0, min(k0 + rows, head)) for k0 in range(0, head, rows)]
        else:
            runs = [(k0, k0 + rows) for k0 in np.linspace(0, head - rows, chunks).astype(np.int64).tolist()]
        if tail:
            runs.append((head, n))
        sums, index = [], []
        for k0, k1 in runs:
            # sum_{j<k} |l_kj| |u_jk| for k in k0..k1: rows of L (left of the diagonal) against columns
            # of U (slices read the column-major factors in their own order)
            lower = np.abs(lu[k0:k1, :k1])
            lower[:, k0:] = np.tril(lower[:, k0:], -1)
            sums.append(np.einsum("kj,jk->k", lower, np.abs(lu[:k1, k0:k1])).astype(np.float64))
            index.append(np.arange(k0, k1))
        index_all = np.concatenate(index)
        diagonal = np.abs(np.diagonal(lu)[index_all]).astype(np.float64)
        terms = np.concatenate(sums) + diagonal
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(terms > 0, diagonal / terms, 1.0), index_all

    def reciprocal_condition(self, norm_inf: float) -> float:
        """LAPACK's estimate of ``1 / kappa_inf(A_s)`` from the factors (``norm_inf = ||A_s||_inf``)."""
        from scipy.linalg import lapack

        gecon = lapack.sgecon if self.lu.dtype == np.float32 else lapack.dgecon
        # the factors are those of (mu A_s)^T, whose 1-norm is mu times A_s's infinity norm
        rcond, _info = gecon(self.lu, norm_inf * self.multiplier, norm="1")
        return float(rcond)


class SparseLU:
    """SuperLU factors of the scaled sparse matrix, in single or double precision."""

    def __init__(self, factors: Any, precision: str) -> None:
        self.factors = factors
        self.precision = precision
        self.unit_roundoff = UNIT_ROUNDOFF[precision]
        self.dtype = np.float32 if precision == "single" else np.float64

    def solve(self, v: np.ndarray, transposed: bool = False, prescaled: bool = False) -> np.ndarray:
        low = self.dtype != np.float64
        scale = column_scale(v) if low and not prescaled else 1.0
        out = self.factors.solve(np.asarray(v * scale, dtype=self.dtype), trans="T" if transposed else "N")
        out = np.asarray(out, dtype=np.float64).reshape(v.shape)
        return out / scale if low else out

    def reciprocal_condition(self, norm_inf: float) -> float:
        """An estimate of ``1 / kappa_inf(A_s)`` from the factors (``norm_inf = ||A_s||_inf``), as
        LAPACK's xGECON makes it for the dense factors."""
        return estimated_reciprocal_condition(self.solve, self.factors.shape[0], norm_inf)


def estimated_reciprocal_condition(solve: Any, n: int, norm_inf: float) -> float:
    """``1 / (||A||_inf ||A^-1||_inf)`` with ``||A^-1||_inf = ||A^-T||_1`` estimated by Hager and
    Higham's method (as xGECON does) from ``solve(v, transposed)``, which applies ``A^-1`` or ``A^-T``
    to the float64 columns of ``v``. 0 where the estimate is not finite."""
    from .bounds import estimate_one_norms

    with np.errstate(over="ignore", invalid="ignore"):
        inverse = float(estimate_one_norms(lambda v: solve(v, transposed=True), solve, n, 1)[0])
        condition = float(norm_inf) * inverse
    return 1.0 / condition if condition > 0 and math.isfinite(condition) else 0.0


# ----------------------------------------------------------------------------------------- systems
class NumpyVectors:
    """What the refinement needs of the vectors (``(n, k)`` numpy arrays), as methods of the system so
    that the torch systems can supply their own."""

    b: np.ndarray
    b_norm: np.ndarray
    norm_inf: float
    n: int

    def column_norms(self, v: np.ndarray) -> np.ndarray:
        """``||v_j||_inf`` of each column (a flat numpy array; NaN where the column has a NaN)."""
        return np.abs(v).max(axis=0) if v.shape[0] else np.zeros(v.shape[1])

    def backward_errors(self, x: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Normwise backward error of each column (see :func:`rigal_gaches`)."""
        return self.backward_errors_from_norms(self.column_norms(r), self.column_norms(x))

    def backward_errors_from_norms(self, r_norm: np.ndarray, x_norm: np.ndarray) -> np.ndarray:
        return rigal_gaches(r_norm, x_norm, self.norm_inf, self.b_norm)

    def magnitudes(self, x: np.ndarray) -> np.ndarray:
        """``|A||x| + |b|``: the scale of each residual component's rounding error."""
        return self.abs_times(np.abs(x)) + np.abs(self.b)

    def largest_ratio(self, r: np.ndarray, magnitudes: np.ndarray) -> float:
        """``max_i |r_i| / magnitudes_i`` (0/0 counts as 0)."""
        return float((np.abs(r) / (magnitudes + np.finfo(np.float64).tiny)).max()) if r.size else 0.0

    def scale_for(self, norms: np.ndarray) -> np.ndarray:
        """Powers of two, shaped to multiply the vectors, for columns of these largest magnitudes."""
        return powers_of_two_for(norms)[None, :]

    def all_finite(self, v: np.ndarray) -> bool:
        return bool(np.all(np.isfinite(v)))

    def column_scale(self, v: np.ndarray) -> np.ndarray:
        """Powers of two, one per column (shape ``(1, k)``), bringing each column's largest entry near 1."""
        return column_scale(v)

    def contiguous(self, v: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(v)

    def new_basis(self, rows: int) -> np.ndarray:
        return np.zeros((rows, self.n))

    def to_numpy(self, v: np.ndarray) -> np.ndarray:
        return v

    def from_numpy(self, v: np.ndarray) -> np.ndarray:
        return v


class DenseSystem(NumpyVectors):
    """``A x = b`` for a dense float64 ``A`` (C order) and ``b`` of shape ``(n, k)``."""

    kind = "dense"

    def __init__(self, a: np.ndarray, b: np.ndarray, precision: str) -> None:
        self.a = a
        self.b = b
        self.n, self.k = b.shape
        self.precision = precision
        self.b_norm = np.max(np.abs(b), axis=0) if b.size else np.zeros(self.k)
        self.low: np.ndarray | None = None  # the scaled matrix in float32, to be factored in place
        self.abs_low: np.ndarray | None = None  # |A| in float32 (unscaled), where kept
        self.scaling = Scaling()
        self.norm_inf = 0.0
        if self.n:
            self._prepare()

    # ---------------------------------------------------------------- preparation
    def _prepare(self) -> None:
        """One cast to float32 and one pass over it for the norm and the scale factors; a slower pass
        over the double matrix only where the float32 copy cannot be trusted (range, NaN, Inf)."""
        a = self.a
        n = self.n
        if self.precision == "double":
            row_max, row_sum, col_max = self._statistics(a)
            self._check_statistics(row_max, row_sum, col_max)
            self.norm_inf = float(row_sum.max())
            self.scaling = choose_scaling(row_max, lambda row: col_max if row is None
                                          else self._column_max(a, row))
            return
        low = np.empty((n, n), dtype=np.float32)
        row_max, row_sum, col_max = self._statistics(a, low, keep_abs=n <= KEEP_ABS_UP_TO)
        tiny = 2.0**-100
        if np.isfinite(row_sum).all() and row_max.min() > tiny and col_max.min() > tiny:
            # the float32 copy holds A to its own accuracy: enough for a norm and scale factors
            # (the factor covers the rounding of the entries and of the float32 sums)
            self.norm_inf = float(row_sum.max()) * (1.0 + (n + 2.0) * 2.0**-24)
        else:
            del low
            self.abs_low = None
            row_max, row_sum, col_max = self._statistics(a)
            self._check_statistics(row_max, row_sum, col_max)
            self.norm_inf = float(row_sum.max())
            low = None
        sixteen_bit = self.precision in ("half", "bfloat16")
        scaling = choose_scaling(
            row_max, lambda row: col_max if row is None else self._column_max(a if low is None else low, row),
            always=sixteen_bit)
        if sixteen_bit and scaling.row is None:
            scaling.row = np.ones(n)
        self.scaling = scaling
        if low is None:
            low = np.empty((n, n), dtype=np.float32)
            self._scale_into(a, low)
        elif scaling.active:
            self._scale_into(low, low)
        self.low = low

    def _statistics(self, m: np.ndarray, low: np.ndarray | None = None, keep_abs: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Largest magnitude of each row and column and each row's sum of magnitudes, in one pass over
        blocks of rows through one reused buffer. With ``low``, the blocks of ``m`` are rounded into
        ``low`` (float32) on the way and the statistics are those of ``low``: the matrix is read from
        memory once, and everything else happens in cache (it is the cost of the cast alone). With
        ``keep_abs``, ``|low|`` is kept (``self.abs_low``) instead of passing through the buffer."""
        n = m.shape[0]
        dtype = m.dtype if low is None else low.dtype
        itemsize = np.dtype(dtype).itemsize
        # a small matrix is one block: it stays in cache as it is (n = 500: the float32 copy and |A|
        # take 2 MB), and a few whole-matrix calls cost less than a dozen per block
        step = n if n * n * itemsize <= ONE_BLOCK_BYTES else _block_rows(n, itemsize, 1 << 18)
        row_max = np.empty(n, dtype=dtype)
        row_sum = np.empty(n, dtype=dtype)
        col_max = np.empty(n, dtype=dtype)
        if keep_abs and low is not None:
            self.abs_low = np.empty((n, n), dtype=dtype)
        else:
            keep_abs = False
            buffer = np.empty((min(step, n), n), dtype=dtype)
        ones = np.ones(n, dtype=dtype)
        # float32: |a| by clearing the sign bit, and maxima of the bit patterns as integers (for
        # non-negative IEEE numbers the two orders agree, Inf and NaN included), faster than floats
        integer = np.int32 if dtype == np.float32 else None
        row_max_of = row_max if integer is None else row_max.view(integer)
        col_max_of = col_max if integer is None else col_max.view(integer)
        with np.errstate(over="ignore", invalid="ignore"):  # out of float32's range: Inf, seen below
            for i in range(0, n, step):
                rows = min(step, n - i)
                if low is None:
                    source = m[i:i + step]
                else:
                    source = low[i:i + step]
                    np.copyto(source, m[i:i + step], casting="unsafe")
                block = self.abs_low[i:i + step] if keep_abs else buffer[:rows]
                if integer is not None:
                    magnitudes = np.bitwise_and(source.view(integer), 0x7FFFFFFF, out=block.view(integer))
                else:
                    magnitudes = np.abs(source, out=block)
                magnitudes.max(axis=1, out=row_max_of[i:i + step])
                if i == 0:
                    magnitudes.max(axis=0, out=col_max_of)
                else:
                    np.maximum(col_max_of, magnitudes.max(axis=0), out=col_max_of)
                row_sum[i:i + step] = product(block, ones)  # BLAS: error <= n u of the sum
        return row_max.astype(np.float64), row_sum.astype(np.float64), col_max.astype(np.float64)

    def _check_statistics(self, row_max: np.ndarray, row_sum: np.ndarray, col_max: np.ndarray) -> None:
        if not np.all(np.isfinite(row_sum)):
            if not np.all(np.isfinite(self.a)):
                raise MatrixError("the matrix A contains NaN or Inf")
            raise MatrixError("the matrix A has entries so large that a row's sum overflows")
        zero_rows = np.flatnonzero(row_max == 0)
        if zero_rows.size:
            raise SingularMatrixError(f"the matrix A is singular: row {zero_rows[0]} is zero")
        zero_cols = np.flatnonzero(col_max == 0)
        if zero_cols.size:
            raise SingularMatrixError(f"the matrix A is singular: column {zero_cols[0]} is zero")

    def _column_max(self, m: np.ndarray, row: np.ndarray) -> np.ndarray:
        n = m.shape[0]
        col_max = np.zeros(n)
        step = _block_rows(n, 8)
        for i in range(0, n, step):
            block = np.abs(m[i:i + step]) * row[i:i + step, None]
            np.fmax(col_max, block.max(axis=0), out=col_max)
        return col_max

    def _scale_into(self, source: np.ndarray, target: np.ndarray) -> None:
        n = self.n
        row = self.scaling.row if self.scaling.row is not None else np.ones(n)
        col = self.scaling.col
        step = _block_rows(n, 8)
        for i in range(0, n, step):
            block = source[i:i + step] * row[i:i + step, None]
            if col is not None:
                block *= col
            target[i:i + step] = block

    def scaled_copy(self) -> np.ndarray:
        """``R A C`` in float64, C order (for the double factorization)."""
        if not self.scaling.active:
            return self.a.copy()
        out = np.empty_like(self.a)
        self._scale_into(self.a, out)
        return out

    # ---------------------------------------------------------------- factorizations
    def factor_low(self) -> DenseLU:
        """LU of the scaled matrix in the low precision (consumes the float32 copy)."""
        lapack = _scipy_lapack()
        if self.low is None:
            raise FactorizationFailed("the low-precision copy was already factored")
        low, self.low = self.low, None
        multiplier = 1.0
        if self.precision in ("half", "bfloat16"):
            # the scaled entries are at most ~1.4; 2**12 uses the 16-bit range without risking
            # overflow in the factors (U may grow a few times over A)
            multiplier = 2.0**12 if self.precision == "half" else 1.0
            low *= np.float32(multiplier)
            round_in_place(low, self.precision)
        lu, pivots, info = lapack.sgetrf(low.T, overwrite_a=True)
        if info > 0:
            raise FactorizationFailed(f"exact zero pivot U({info},{info}) in the {self.precision} LU")
        if info < 0:  # pragma: no cover - an argument error is a bug
            raise RuntimeError(f"sgetrf argument {-info} is invalid")
        if self.precision in ("half", "bfloat16"):
            round_in_place(lu, self.precision)
        # the diagonal in one strided pass (its entries lie a column apart, on as many cache lines and
        # half as many pages), then both tests on the contiguous copy
        diagonal = np.diagonal(lu).copy()
        if not (np.isfinite(diagonal).all() and diagonal.all()):
            raise FactorizationFailed(f"the {self.precision} LU overflowed or has a zero pivot")
        return DenseLU(lu, pivots, self.precision, multiplier=multiplier)

    def factor_double(self) -> DenseLU:
        from scipy.linalg import lapack

        self.low = None  # free the float32 copy before allocating the double one
        scaled = self.scaled_copy()
        lu, pivots, info = lapack.dgetrf(scaled.T, overwrite_a=True)
        if info > 0:
            raise SingularMatrixError(f"the matrix A is singular: exact zero pivot U({info},{info}) in the "
                                      f"double-precision LU")
        return DenseLU(lu, pivots, "double")

    def solve_with(self, factors: DenseLU, r: np.ndarray, r_norm: np.ndarray | None = None) -> np.ndarray:
        """``A^-1 r`` through LU factors of the scaled matrix: ``C (R A C)^-1 R r``. ``r_norm``: the
        columns' largest magnitudes, if known (they decide the power of two that brings each column of
        ``R r`` into float32's range before rounding; with extreme row scale factors, ``R r`` is
        normalised after the row scaling, so that it can neither overflow nor fall into the subnormals)."""
        row, col = self.scaling.row, self.scaling.col
        if row is not None:
            r = r * row[:, None]
            r_norm = None
        if r_norm is None:
            r_norm = np.max(np.abs(r), axis=0) if r.shape[0] else np.zeros(r.shape[1])
        if r_norm.shape == (1,):
            # one right-hand side: the same power of two as powers_of_two_for, in scalar arithmetic
            scale: Any = power_of_two_scale(float(r_norm[0]))
        else:
            scale = powers_of_two_for(r_norm)
        post = factors.multiplier / scale
        if col is not None:
            post = col[:, None] * post
        return factors.solve_normalised(r, scale, post)

    def scaled_norm_inf(self) -> float:
        """``||R A C||_inf`` (for the condition estimate of the scaled factors)."""
        if not self.scaling.active:
            return self.norm_inf
        row = self.scaling.row if self.scaling.row is not None else np.ones(self.n)
        col = np.abs(self.scaling.col) if self.scaling.col is not None else np.ones(self.n)
        return float(np.max(row * self.abs_times(col[:, None])[:, 0]))

    # ---------------------------------------------------------------- operations
    def residual(self, x: np.ndarray) -> np.ndarray:
        """``b - A x`` in double precision (one BLAS call)."""
        if x.shape[1] == 1 and x.dtype == np.float64 and self.a.flags.c_contiguous:
            # one right-hand side (the usual case): straight to dgemv, A in C order being A^T in
            # Fortran order (the same call as product's, without its dispatch)
            return _scipy_blas().dgemv(-1.0, self.a.T, x[:, 0], beta=1.0, y=self.b[:, 0], trans=1)[:, None]
        return product(self.a, x, alpha=-1.0, add=self.b)

    def matvec(self, v: np.ndarray) -> np.ndarray:
        return product(self.a, v)

    def rmatvec(self, v: np.ndarray) -> np.ndarray:
        from scipy.linalg import blas

        if v.ndim == 1 and v.dtype == np.float64:
            return blas.dgemv(1.0, self.a.T, v)  # A^T v: A in C order is A^T in Fortran order
        return self.a.T @ v

    def magnitudes(self, x: np.ndarray) -> np.ndarray:
        """``|A||x| + |b|``. Where ``|A|`` was kept in float32 (``n <= KEEP_ABS_UP_TO``), one float32
        product: it scales the stopping test of the componentwise backward error against ``2 u``, for
        which its relative error, below ``n 2**-24``, does not matter; and it reads half the bytes."""
        if self.abs_low is None:
            return super().magnitudes(x)
        abs_x = np.abs(x)
        scale = powers_of_two_for(abs_x.max(axis=0) if x.shape[0] else np.zeros(x.shape[1]))
        return product(self.abs_low, (abs_x * scale).astype(np.float32)) / scale + np.abs(self.b)

    def abs_times(self, v: np.ndarray) -> np.ndarray:
        """``|A| v`` for non-negative ``v``, in row blocks through one buffer (no n-by-n temporary)."""
        n = self.n
        out = np.empty((n, v.shape[1]))
        step = _block_rows(n, 8)
        buffer = np.empty((min(step, n), n))
        for i in range(0, n, step):
            block = np.abs(self.a[i:i + step], out=buffer[:min(step, n - i)])
            out[i:i + step] = product(block, v)
        return out

    def abs_times_and_counts(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``|A| v`` and the number of nonzeros of each row, in one pass over ``A``."""
        n = self.n
        out = np.empty((n, v.shape[1]))
        counts = np.empty(n, dtype=np.int64)
        step = _block_rows(n, 8)
        buffer = np.empty((min(step, n), n))
        nonzero = np.empty((min(step, n), n), dtype=bool)
        for i in range(0, n, step):
            rows = min(step, n - i)
            block = np.abs(self.a[i:i + step], out=buffer[:rows])
            np.not_equal(block, 0.0, out=nonzero[:rows])
            counts[i:i + step] = nonzero[:rows].sum(axis=1)
            out[i:i + step] = product(block, v)
        return out, counts


class SparseSystem(NumpyVectors):
    """``A x = b`` for a scipy.sparse ``A`` (any format) and ``b`` of shape ``(n, k)``."""

    kind = "sparse"

    def __init__(self, a: Any, b: np.ndarray, precision: str) -> None:
        import scipy.sparse as sp

        a = sp.csr_array(a, dtype=np.float64)
        a.sum_duplicates()
        if not np.all(np.isfinite(a.data)):
            raise MatrixError("the matrix A contains NaN or Inf")
        self.a = a
        self.b = b
        self.n, self.k = b.shape
        self.precision = precision
        self.b_norm = np.max(np.abs(b), axis=0) if b.size else np.zeros(self.k)
        self._abs: Any = None
        self._long: tuple[Any, np.ndarray] | None = None
        self.scaling = Scaling()
        self.norm_inf = 0.0
        if self.n == 0:
            return
        magnitudes = self.abs_matrix()
        row_max = magnitudes.max(axis=1).toarray().ravel()
        col_max = magnitudes.max(axis=0).toarray().ravel()
        zero_rows = np.flatnonzero(row_max == 0)
        if zero_rows.size:
            raise SingularMatrixError(f"the matrix A is singular: row {zero_rows[0]} is zero")
        zero_cols = np.flatnonzero(col_max == 0)
        if zero_cols.size:
            raise SingularMatrixError(f"the matrix A is singular: column {zero_cols[0]} is zero")
        with np.errstate(over="ignore"):  # a sum beyond double's range: Inf, refused below
            self.norm_inf = float(np.max(np.asarray(magnitudes.sum(axis=1)).ravel()))
        if not math.isfinite(self.norm_inf):
            raise MatrixError("the matrix A has entries so large that a row's sum overflows")

        def col_max_after(row: np.ndarray | None) -> np.ndarray:
            if row is None:
                return col_max
            return (sp.diags_array(row) @ magnitudes).max(axis=0).toarray().ravel()

        self.scaling = choose_scaling(row_max, col_max_after)

    def abs_matrix(self) -> Any:
        if self._abs is None:
            self._abs = abs(self.a)
        return self._abs

    def scaled_matrix(self, dtype: Any) -> Any:
        import scipy.sparse as sp

        m = self.a
        if self.scaling.row is not None:
            m = sp.diags_array(self.scaling.row) @ m
        if self.scaling.col is not None:
            m = m @ sp.diags_array(self.scaling.col)
        return sp.csc_array(m, dtype=dtype)

    def _factor(self, precision: str) -> SparseLU:
        from scipy.sparse.linalg import splu

        dtype = np.float32 if precision == "single" else np.float64
        try:
            factors = splu(self.scaled_matrix(dtype))
        except RuntimeError as exc:  # SuperLU: "Factor is exactly singular"
            if precision == "double":
                raise SingularMatrixError(f"the matrix A is singular: SuperLU found an exact zero pivot "
                                          f"({exc})") from None
            raise FactorizationFailed(f"SuperLU in {precision} precision: {exc}") from None
        return SparseLU(factors, precision)

    def factor_low(self) -> SparseLU:
        return self._factor(self.precision)

    def factor_double(self) -> SparseLU:
        return self._factor("double")

    def scaled_norm_inf(self) -> float:
        return float(np.max(np.asarray(abs(self.scaled_matrix(np.float64)).sum(axis=1)).ravel()))

    def residual(self, x: np.ndarray) -> np.ndarray:
        """``b - A x`` accumulated in long double (80-bit on x86; double where the platform has no
        wider type) and rounded to double. A sparse product costs O(nnz), nothing beside the
        factorization, and scipy's rounds every term: on circuit matrices such as adder_dcop_05 its
        rounding errors fall where ``A^-1`` magnifies them, and refinement with that residual would stop
        ten times short of a dense double solve's accuracy."""
        if self._long is None:
            self._long = (self.a.astype(np.longdouble), self.b.astype(np.longdouble))
        a_long, b_long = self._long
        return np.asarray(b_long - a_long @ x.astype(np.longdouble), dtype=np.float64)

    def matvec(self, v: np.ndarray) -> np.ndarray:
        return self.a @ v

    def rmatvec(self, v: np.ndarray) -> np.ndarray:
        return self.a.T @ v

    def abs_times(self, v: np.ndarray) -> np.ndarray:
        return self.abs_matrix() @ v

    def abs_times_and_counts(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``|A| v`` and the number of stored entries of each row (explicit zeros count: an upper bound)."""
        return self.abs_matrix() @ v, np.diff(self.a.indptr)


def rigal_gaches(r_norm: np.ndarray, x_norm: np.ndarray, norm_a: Any, b_norm: np.ndarray) -> np.ndarray:
    """Normwise backward error of each column: ``||r||_inf / (||A||_inf ||x||_inf + ||b||_inf)``
    (Rigal & Gaches): the smallest relative change to ``A`` and ``b`` that makes ``x`` exact (from the
    columns' norms ``r_norm`` and ``x_norm``; Inf where ``x`` or ``r`` has a NaN, 0 where ``x``, ``b``
    and ``r`` are all zero). Shared by every backend, so that they agree on the corner cases."""
    denominator = norm_a * x_norm
    denominator += b_norm
    if denominator.all():  # the usual case, without the cost of errstate and where
        eta = r_norm / denominator
        top = eta.max() if eta.size else 0.0
        return eta if top == top else np.where(np.isnan(eta), np.inf, eta)  # a NaN makes the max NaN
    # a zero denominator (x = 0 and b = 0): 0 for a zero residual, Inf otherwise (NaN included)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.where(denominator > 0, r_norm / denominator, np.where(r_norm == 0, 0.0, np.inf))
    return np.where(np.isnan(eta) | np.isnan(denominator), np.inf, eta)


def converged_backward_error(n: int, tol: float) -> float:
    """The backward error a converged solution must reach: ``max((sqrt(n) + 2) u, tol)``. DSGESV asks
    for ``||r|| <= sqrt(n) u ||A|| ||x||``; the two extra units cover the rounding of ``x`` itself and of
    the subtraction from ``b``, which alone exceed ``sqrt(n) u`` for the smallest systems (n = 1-2:
    backward errors at rounding level reach 1.95 u; with ``sqrt(n) u`` one solve in 8 to 40 left plain
    refinement for GMRES-IR)."""
    return max((math.sqrt(max(n, 1)) + 2.0) * DOUBLE_EPS, float(tol))


__all__ = ["HALF_MAX", "DenseSystem", "SingularMatrixError", "SparseSystem"]
