"""The same refinement with torch: ``solve(A, b, device="cuda")`` on a GPU, ``device="torch-cpu"`` on the
CPU (how the tests cover this code without a GPU).

Residuals and solutions stay in float64 on the device; only the LU factorization runs low:

- ``single``: torch's LU (cuSOLVER / LAPACK) in float32, batched for a stack of matrices;
- ``tf32``, ``half``, ``bfloat16``: a right-looking blocked LU whose panels are factored in float32 and
  whose trailing updates, the O(n^3) part, are matrix products in TF32 (tensor cores), float16 or
  bfloat16 (Haidar, Tomov, Dongarra & Higham, SC18). The float16 product of the row block ``U12`` is
  scaled by a power of two first, so it cannot overflow. On the CPU, torch has no TF32: ``tf32``
  computes the products in float32 there;
- ``double``: torch's LU in float64 (the fallback).

torch is imported here only, when this backend is used: ``refinekit.linalg`` works without it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..core import InputError
from .precision import UNIT_ROUNDOFF, resolve_precision
from .systems import (
    SCALE_EXPONENTS,
    FactorizationFailed,
    MatrixError,
    Scaling,
    SingularMatrixError,
    estimated_reciprocal_condition,
    rigal_gaches,
)

#: Column block of the blocked LU: panels this wide are factored in float32.
DEFAULT_BLOCK = 256


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise InputError("device='cuda' or 'torch-cpu' needs torch: pip install 'refinekit[gpu]'") from None
    return torch


def solve_torch(A: Any, b: Any, *, precision: str, device: str, tol: float, max_iter: int | None, method: str,
                error_bounds: bool, callbacks: Any) -> Any:
    """:func:`refinekit.linalg.solve` with torch (see there). ``x`` is a tensor where ``A`` is one,
    otherwise a numpy array."""
    from .api import _solve_system

    torch = _torch()
    return_tensor = isinstance(A, torch.Tensor)
    if device == "torch-cpu":
        target = A.device if return_tensor else torch.device("cpu")
    else:
        target = torch.device(device)
        if target.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device={device!r}, but torch sees no CUDA device")
        count = torch.cuda.device_count()
        if target.index is not None and target.index >= count:
            # otherwise "invalid device ordinal" from deep inside torch, at the first tensor
            raise InputError(f"device={device!r}, but torch sees {count} CUDA device(s), cuda:0 to "
                             f"cuda:{count - 1}")
        if target.index is None and return_tensor and A.device.type == "cuda":
            target = A.device  # "cuda" is any GPU: not a copy of A from cuda:1 to the current one
    if target.type not in ("cpu", "cuda"):
        raise InputError(f"A is a tensor on device {str(target)!r}: only 'cpu' and 'cuda' tensors are solved")
    precision = resolve_precision(precision, device="cuda", sparse=False)
    a = _as_float64(A, target, "A")
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise InputError(f"A must be a square matrix (or a stack of them), got shape {tuple(a.shape)}")
    n = a.shape[-1]
    rhs = _as_float64(b, target, "b")
    if rhs.ndim == 0:
        raise InputError("b must be a vector or a matrix, got a scalar")
    vector = rhs.ndim == 1
    if vector:
        rhs = rhs[:, None]
    if rhs.shape[-2] != n:
        raise InputError(f"b has {rhs.shape[-2]} rows but A is {n}x{n}")
    if not bool(torch.isfinite(rhs).all()):
        raise InputError("the right-hand side b contains NaN or Inf")
    batch = tuple(a.shape[:-2])
    if not batch and rhs.ndim > 2:  # as on the CPU
        raise InputError(f"b has shape {tuple(rhs.shape)}: a stack of right-hand sides needs a stack of "
                         f"matrices")
    if batch:
        try:
            shape = tuple(torch.broadcast_shapes(batch, tuple(rhs.shape[:-2])))
        except RuntimeError:
            raise InputError(f"the stacks of A {tuple(a.shape)} and b {tuple(rhs.shape)} "
                             f"do not broadcast") from None
        if math.prod(shape) == 0:
            from .api import empty_stack

            result = empty_stack(shape, n, rhs.shape[-1], precision, error_bounds, vector, str(target))
            result.x = torch.as_tensor(result.x, device=target) if return_tensor else result.x
            return result
        a = a.expand(*shape, n, n).reshape(-1, n, n)
        rhs = rhs.expand(*shape, *rhs.shape[-2:]).reshape(-1, *rhs.shape[-2:])
    else:
        shape = ()
    system = TorchSystem(a.contiguous(), rhs.contiguous(), precision)
    result = _solve_system(system, precision, tol, max_iter, method, error_bounds, callbacks, vector,
                           device=str(target))
    x = result.x
    if shape:
        x = x.reshape(*shape, *x.shape[1:])
        for name in ("backward_errors", "componentwise_backward_errors", "forward_error_bounds",
                     "componentwise_error_bounds"):
            value = getattr(result, name)
            if isinstance(value, np.ndarray):
                setattr(result, name, value.reshape(*shape, *value.shape[1:]))
    result.x = x if return_tensor else x.detach().cpu().numpy()
    return result


def _as_float64(value: Any, device: Any, name: str) -> Any:
    torch = _torch()
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            raise InputError(f"{name} is a sparse tensor ({value.layout}): pass a dense tensor, or a "
                             f"scipy.sparse matrix with device='cpu'")
        if value.is_complex():
            raise InputError(f"complex {'matrices' if name == 'A' else 'right-hand sides'} are not supported "
                             f"({name} is complex)")
        return value.to(device=device, dtype=torch.float64)
    if type(value).__module__.startswith("scipy.sparse"):
        raise InputError(f"{name} is a scipy.sparse matrix: it is solved with SuperLU on device='cpu'")
    array = np.asarray(value)
    if array.dtype.kind == "c":
        raise InputError(f"complex {'matrices' if name == 'A' else 'right-hand sides'} are not supported "
                         f"({name} is complex)")
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise InputError(f"{name} must be numeric, got dtype {array.dtype}")
    return torch.as_tensor(array.astype(np.float64), device=device)


# -------------------------------------------------------------------------------------- factors
class TorchLU:
    """LU factors on the device. Either torch's own (``pivots``, LAPACK style, batched) or those of the
    blocked LU (``permutation``: ``A[perm] = L U``). Solves take and return float64 tensors."""

    def __init__(self, lu: Any, precision: str, *, pivots: Any = None, permutation: Any = None,
                 multiplier: float = 1.0) -> None:
        self.lu = lu
        self.pivots = pivots
        self.permutation = permutation
        self.precision = precision
        self.unit_roundoff = UNIT_ROUNDOFF[precision]
        self.multiplier = float(multiplier)

    def promoted(self) -> TorchLU:
        """The same factors in float64, for GMRES-IR's preconditioner (see
        :meth:`refinekit.linalg.systems.DenseLU.promoted`)."""
        torch = _torch()
        if self.lu.dtype == torch.float64:
            return self
        return TorchLU(self.lu.to(torch.float64), self.precision, pivots=self.pivots,
                       permutation=self.permutation, multiplier=self.multiplier)

    def item(self, i: int) -> TorchLU:
        return TorchLU(self.lu[i], self.precision,
                       pivots=None if self.pivots is None else self.pivots[i],
                       permutation=None if self.permutation is None else self.permutation[i],
                       multiplier=self.multiplier)

    def solve(self, v: Any, transposed: bool = False, prescaled: bool = False) -> Any:
        torch = _torch()
        low = self.lu.dtype != torch.float64
        scale = None
        # powers of two keep a tiny or huge vector inside float32's range (see column_scale)
        if low and not prescaled:
            scale = _column_scale(v)
            v = v * scale
        rhs = v.to(self.lu.dtype)
        if self.pivots is not None:
            out = torch.linalg.lu_solve(self.lu, self.pivots, rhs, adjoint=transposed)
        elif not transposed:  # A = P^T L U with P taking row perm[i] to row i
            y = _take_rows(rhs, self.permutation)
            y = torch.linalg.solve_triangular(self.lu, y, upper=False, unitriangular=True)
            out = torch.linalg.solve_triangular(self.lu, y, upper=True)
        else:  # A^T = U^T L^T P
            lu_t = self.lu.mT
            z = torch.linalg.solve_triangular(lu_t, rhs, upper=False)
            w = torch.linalg.solve_triangular(lu_t, z, upper=True, unitriangular=True)
            out = torch.empty_like(w)
            _put_rows(out, self.permutation, w)
        out = out.to(torch.float64)
        if scale is not None:
            out = out / scale
        return out * self.multiplier if self.multiplier != 1.0 else out

    def reciprocal_condition(self, norm_inf: Any) -> float:
        """The smallest over a stack of the estimates of ``1 / kappa_inf(A_s)`` (``norm_inf``:
        ``||A_s||_inf`` of each matrix; see
        :func:`refinekit.linalg.systems.estimated_reciprocal_condition`)."""
        torch = _torch()
        norms = np.atleast_1d(np.asarray(norm_inf, dtype=np.float64))
        stack = [self.item(i) for i in range(self.lu.shape[0])] if self.lu.ndim == 3 else [self]
        lowest = math.inf
        for factors, norm in zip(stack, norms, strict=True):
            def solve(v: np.ndarray, transposed: bool = False, factors: TorchLU = factors) -> np.ndarray:
                out = factors.solve(torch.as_tensor(v, device=factors.lu.device), transposed=transposed)
                return out.detach().cpu().numpy()

            lowest = min(lowest, estimated_reciprocal_condition(solve, self.lu.shape[-1], float(norm)))
        return lowest


def _column_scale(v: Any) -> Any:
    """The torch twin of :func:`refinekit.linalg.systems.column_scale`."""
    torch = _torch()
    if v.shape[-2] == 0:
        return torch.ones_like(v[..., :1, :])
    largest = v.abs().amax(-2, keepdim=True)
    largest = torch.where((largest > 0) & torch.isfinite(largest), largest, torch.ones_like(largest))
    return torch.exp2(-torch.clamp(torch.round(torch.log2(largest)), -1000, 1000))


def _take_rows(v: Any, permutation: Any) -> Any:
    torch = _torch()
    if v.ndim == 2:
        return v[permutation]
    index = permutation[..., :, None].expand(*permutation.shape, v.shape[-1])
    return torch.gather(v, -2, index)


def _put_rows(out: Any, permutation: Any, values: Any) -> None:
    if out.ndim == 2:
        out[permutation] = values
    else:
        index = permutation[..., :, None].expand(*permutation.shape, values.shape[-1])
        out.scatter_(-2, index, values)


def swaps_to_permutation(pivots: np.ndarray, rows: int) -> np.ndarray:
    """LAPACK's sequential row interchanges (1-based ``pivots``) as a permutation: row ``i`` of the
    result is row ``perm[i]`` of the input.

    >>> swaps_to_permutation(np.array([3, 3, 3]), 4).tolist()
    [2, 0, 1, 3]
    """
    perm = np.arange(rows)
    for i, p in enumerate(np.asarray(pivots, dtype=np.int64) - 1):
        perm[i], perm[p] = perm[p], perm[i]
    return perm


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """float32 products on CUDA in TF32 (``enabled``) or in IEEE float32 inside the block; the caller's
    settings are restored after it.

    torch >= 2.9 keeps two TF32 settings, the legacy matmul precision and ``fp32_precision``, and raises
    on reading the legacy one (``allow_tf32``) where a caller set only the new one. Setting
    ``allow_tf32`` updates both consistently; the previous state is read from both, where readable.
    """
    torch = _torch()
    matmul = torch.backends.cuda.matmul
    try:
        legacy: str | None = torch.get_float32_matmul_precision()
    except RuntimeError:  # the caller set the new API only: it alone is restored
        legacy = None
    new = getattr(matmul, "fp32_precision", None)  # None before torch 2.9
    matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        if legacy is not None:
            torch.set_float32_matmul_precision(legacy)
        if new is not None:
            matmul.fp32_precision = new


def _low_product(left: Any, right: Any, precision: str) -> Any:
    """``left @ right`` (float32 in and out) with the product computed in ``precision``."""
    if precision == "half":
        # L21 has entries of at most 1 (partial pivoting); scale U12 to at most 1 as well, so that no
        # product of a block of width <= 2**10 can overflow float16 (max 65504). The scale stays on the
        # device: reading it on the host would stall every block for a round trip
        torch = _torch()
        largest = right.abs().amax()
        usable = (largest > 0) & torch.isfinite(largest)
        exponent = torch.clamp(-torch.ceil(torch.log2(largest)), max=126)  # 2**127 would overflow
        scale = torch.where(usable, torch.exp2(exponent), torch.ones_like(largest))
        return (left.half() @ (right * scale).half()).float() / scale
    if precision == "bfloat16":
        return (left.bfloat16() @ right.bfloat16()).float()
    if precision == "tf32":
        with _tf32(True):
            return left @ right
    return left @ right


def blocked_lu(a: Any, precision: str, block: int = DEFAULT_BLOCK) -> tuple[Any, Any]:
    """Right-looking blocked LU with partial pivoting of the float32 matrix ``a`` (overwritten), the
    trailing updates in ``precision``. Returns the packed factors and ``perm`` with ``A[perm] = L U``.

    >>> import torch
    >>> a = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 10.0]])
    >>> lu, perm = blocked_lu(a.clone(), "single", block=2)
    >>> lower = torch.tril(lu, -1) + torch.eye(3)
    >>> bool(torch.allclose(lower @ torch.triu(lu), a[perm]))
    True
    """
    torch = _torch()
    n = a.shape[0]
    perm = torch.arange(n, device=a.device)
    infos = []  # checked once at the end: one host round trip per block (the pivots) is enough
    for k in range(0, n, block):
        width = min(block, n - k)
        panel, pivots, info = torch.linalg.lu_factor_ex(a[k:, k:k + width])
        infos.append(info)
        order = swaps_to_permutation(pivots.cpu().numpy(), n - k)
        # the swaps move at most 2 * width rows: gather those, not the whole trailing matrix (a copy
        # of up to all of A per block)
        moved = np.flatnonzero(order != np.arange(n - k))
        if moved.size:
            rows, source = torch.as_tensor(np.stack([k + moved, k + order[moved]]), device=a.device)
            a[rows] = a[source]
            perm[rows] = perm[source]
        a[k:, k:k + width] = panel
        if k + width < n:
            a[k:k + width, k + width:] = torch.linalg.solve_triangular(
                panel[:width], a[k:k + width, k + width:], upper=False, unitriangular=True)
            a[k + width:, k + width:] -= _low_product(a[k + width:, k:k + width], a[k:k + width, k + width:],
                                                      precision)
    if infos:
        failed = torch.stack(infos).cpu().numpy()
        if failed.any():
            block_index = int(np.flatnonzero(failed)[0])
            pivot = block_index * block + int(failed[block_index])
            raise FactorizationFailed(f"exact zero pivot U({pivot},{pivot}) in the {precision} LU")
    return a, perm


# --------------------------------------------------------------------------------------- system
class TorchSystem:
    """``A x = b`` with float64 tensors ``A`` (``(n, n)`` or ``(batch, n, n)``) and ``b`` (``(n, k)`` or
    ``(batch, n, k)``), equilibrated on the device by powers of two (always: it is cheap there)."""

    kind = "torch"

    def __init__(self, a: Any, b: Any, precision: str, *, _view: bool = False) -> None:
        if _view:
            return
        torch = _torch()
        self.a, self.b = a, b
        self.precision = precision
        self.batch_shape = tuple(a.shape[:-2])
        self.n, self.k = b.shape[-2], b.shape[-1]
        self.device = a.device
        if self.n == 0:
            self.scaling = Scaling()
            self.norm_inf = torch.zeros(self.batch_shape, dtype=torch.float64, device=a.device)
            self.b_norm = torch.zeros((*self.batch_shape, self.k), dtype=torch.float64, device=a.device)
            return
        magnitudes = a.abs()
        row_sum = magnitudes.sum(-1)
        if not bool(torch.isfinite(row_sum).all()):
            if not bool(torch.isfinite(a).all()):
                raise MatrixError("the matrix A contains NaN or Inf")
            raise MatrixError("the matrix A has entries so large that a row's sum overflows")
        row_max = magnitudes.amax(-1)
        if bool((row_max == 0).any()):
            raise SingularMatrixError("the matrix A is singular: a row is zero")
        row = torch.exp2(-torch.clamp(torch.round(torch.log2(row_max)), *SCALE_EXPONENTS))
        col_max = magnitudes.mul_(row[..., :, None]).amax(-2)  # in place: |A| is not needed after this
        if bool((col_max == 0).any()):
            raise SingularMatrixError("the matrix A is singular: a column is zero")
        col = torch.exp2(-torch.clamp(torch.round(torch.log2(col_max)), *SCALE_EXPONENTS))
        del magnitudes
        self.scaling = Scaling(row, col)
        self.norm_inf = row_sum.amax(-1)
        self.b_norm = b.abs().amax(-2)

    def item(self, i: int) -> TorchSystem:
        """System ``i`` of a stack, sharing the tensors."""
        view = TorchSystem(None, None, self.precision, _view=True)
        view.a, view.b = self.a[i], self.b[i]
        view.precision, view.batch_shape, view.n, view.k = self.precision, (), self.n, self.k
        view.device = self.device
        view.scaling = Scaling(self.scaling.row[i], self.scaling.col[i])
        view.norm_inf, view.b_norm = self.norm_inf[i], self.b_norm[i]
        return view

    def items(self, x: Any, r: Any, corrector: Any) -> list[tuple[Any, Any, Any, Any]]:
        if not self.batch_shape:
            return [(self, x, r, corrector)]
        return [(self.item(i), x[i], r[i], corrector.item(i)) for i in range(self.batch_shape[0])]

    # ---------------------------------------------------------------- factorizations
    def _scaled(self) -> Any:
        # one temporary the size of A, not two (n = 16384 in float64 is 2 GiB on the device)
        return (self.a * self.scaling.row[..., :, None]).mul_(self.scaling.col[..., None, :])

    def factor_low(self) -> TorchLU:
        torch = _torch()
        scaled = self._scaled().to(torch.float32)
        if self.precision == "single":
            lu, pivots, info = torch.linalg.lu_factor_ex(scaled)
            if bool((info > 0).any()):
                raise FactorizationFailed("exact zero pivot in the single-precision LU")
            factors = TorchLU(lu, "single", pivots=pivots)
        else:
            block = DEFAULT_BLOCK if self.device.type == "cuda" else 32
            if self.batch_shape:
                pairs = [blocked_lu(scaled[i], self.precision, block) for i in range(self.batch_shape[0])]
                lu = torch.stack([p[0] for p in pairs])
                perm = torch.stack([p[1] for p in pairs])
            else:
                lu, perm = blocked_lu(scaled, self.precision, block)
            factors = TorchLU(lu, self.precision, permutation=perm)
        diagonal = torch.diagonal(factors.lu, dim1=-2, dim2=-1)
        if not bool(torch.isfinite(diagonal).all()) or bool((diagonal == 0).any()):
            raise FactorizationFailed(f"the {self.precision} LU overflowed or has a zero pivot")
        return factors

    def factor_double(self) -> TorchLU:
        torch = _torch()
        lu, pivots, info = torch.linalg.lu_factor_ex(self._scaled())
        if bool((info > 0).any()):
            raise SingularMatrixError("the matrix A is singular: exact zero pivot in the double-precision LU")
        return TorchLU(lu, "double", pivots=pivots)

    def scaled_norm_inf(self) -> np.ndarray:
        """``||R A C||_inf`` of each matrix (for the condition estimate of the double factors)."""
        return self.to_numpy(self._scaled().abs_().sum(-1).amax(-1))

    # ---------------------------------------------------------------- operations
    def residual(self, x: Any) -> Any:
        return self.b - self.a @ x

    def matvec(self, v: Any) -> Any:
        return self.a @ v

    def rmatvec(self, v: Any) -> Any:
        return self.a.mT @ v

    def abs_times_and_counts(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        product = self.a.abs() @ self.from_numpy(v)
        counts = (self.a != 0).sum(-1)
        return self.to_numpy(product), self.to_numpy(counts)

    def column_norms(self, v: Any) -> np.ndarray:
        return self.to_numpy(v.abs().amax(-2)).ravel() if v.shape[-2] else np.zeros(v.shape[-1])

    def backward_errors(self, x: Any, r: Any) -> np.ndarray:
        return self.backward_errors_from_norms(self.column_norms(r), self.column_norms(x))

    def backward_errors_from_norms(self, r_norm: np.ndarray, x_norm: np.ndarray) -> np.ndarray:
        norm_a = self.to_numpy(self.norm_inf)[..., None]
        norm_a = np.broadcast_to(norm_a, (*self.batch_shape, self.k)).ravel()
        return rigal_gaches(r_norm, x_norm, norm_a, self.to_numpy(self.b_norm).ravel())

    def magnitudes(self, x: Any) -> Any:
        return self.a.abs() @ x.abs() + self.b.abs()

    def largest_ratio(self, r: Any, magnitudes: Any) -> float:
        return float((r.abs() / (magnitudes + np.finfo(np.float64).tiny)).max()) if r.numel() else 0.0

    def scale_for(self, norms: np.ndarray) -> Any:
        from .systems import powers_of_two_for

        return self.from_numpy(powers_of_two_for(norms).reshape(*self.batch_shape, 1, self.k))

    def all_finite(self, v: Any) -> bool:
        return bool(_torch().isfinite(v).all())

    def column_scale(self, v: Any) -> Any:
        return _column_scale(v)

    def contiguous(self, v: Any) -> Any:
        return v.contiguous()

    def new_basis(self, rows: int) -> Any:
        torch = _torch()
        return torch.zeros((rows, self.n), dtype=torch.float64, device=self.device)

    def to_numpy(self, v: Any) -> np.ndarray:
        return v.detach().cpu().numpy()

    def from_numpy(self, v: np.ndarray) -> Any:
        return _torch().as_tensor(np.asarray(v, dtype=np.float64), device=self.device)
