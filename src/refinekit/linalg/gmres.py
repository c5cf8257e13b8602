"""Flexible GMRES for the correction equation of GMRES-IR, written once for numpy and torch vectors.

GMRES-IR (Carson & Higham, SIAM J. Sci. Comput. 2017, 2018) solves the correction equation
``A d = r`` not with the low-precision LU factors alone but with GMRES in double precision,
preconditioned by them. Where the factors are too rough for plain refinement to contract
(``kappa * u_low`` near 1 or above), the preconditioned matrix may still have all but a few of its
eigenvalues clustered near 1, and then GMRES converges in a few iterations; where the factors are
wrong in many directions (a quarter of the singular values below ``u_low ||A||``), it needs about as
many iterations as there are such directions.

The preconditioner is applied on the right, in double precision: the callers promote the factors to
float64 once (:meth:`refinekit.linalg.systems.DenseLU.promoted`), as Carson & Higham's analysis
assumes. Applied in its own low precision, a preconditioned vector ``M^-1 v`` carries rounding errors
relative to its largest component, which for an ill-conditioned ``A`` is the near-null direction:
the other components drown, and GMRES needs 20-40 iterations where it needs 4-8 in double (measured on
random matrices of condition 1e8-1e12 with a handful of small singular values). SuperLU's factors stay
in single precision; flexible GMRES (Saad 1993) is exact for such a preconditioner too, because it
keeps the preconditioned vectors ``z_j = M^-1 v_j`` and builds the correction from them. The residual
it minimises, ``||r - A d||``, is the true one, in double.

The Arnoldi basis is orthogonalised by classical Gram-Schmidt applied twice (CGS2), as stable as
modified Gram-Schmidt in practice and two matrix-vector products per step instead of a Python loop.
Only ``@``, slicing, ``*``, ``-`` and ``float()`` touch the vectors, so the same code serves numpy
arrays and torch tensors on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Vector = Any  # a one-dimensional numpy array or torch tensor (float64)


@dataclass(slots=True)
class GmresOutcome:
    """One GMRES solve: the solution, the iterations, the relative residual reached (Arnoldi's value),
    whether it reached the tolerance, and whether it gave up early because it converged too slowly."""

    x: Vector
    iterations: int
    relative_residual: float
    converged: bool
    gave_up: bool = False


def fgmres(
    matvec: Callable[[Vector], Vector],
    precondition: Callable[[Vector], Vector] | None,
    rhs: Vector,
    *,
    tol: float,
    max_iter: int,
    new_basis: Callable[[int], Any],
    give_up_after: int | None = None,
) -> GmresOutcome:
    """Solve ``A x = rhs`` from ``x = 0`` by flexible GMRES, right-preconditioned by ``precondition``.

    Stops when the relative residual ``||rhs - A x|| / ||rhs||`` is at most ``tol``, after ``max_iter``
    iterations, or, with ``give_up_after``, once at least that many iterations show a rate at which
    ``tol`` would take more than twice ``max_iter`` (``gave_up``: the preconditioner is too poor for
    GMRES to pay; the margin because GMRES speeds up once it has resolved the few eigenvalues the
    preconditioner leaves far from 1, and because running on to ``max_iter`` costs less than giving up
    a solve that would have converged). ``new_basis(rows)`` returns a zeroed ``(rows, n)`` array of the
    vectors' kind.

    >>> import numpy as np
    >>> a = np.array([[4.0, 1.0], [2.0, 3.0]])
    >>> out = fgmres(lambda v: a @ v, None, np.array([1.0, 2.0]), tol=1e-14, max_iter=5,
    ...              new_basis=lambda m: np.zeros((m, 2)))
    >>> out.converged, bool(np.allclose(a @ out.x, [1.0, 2.0]))
    (True, True)
    """
    beta = float((rhs @ rhs) ** 0.5)
    if beta == 0.0 or not math.isfinite(beta):
        return GmresOutcome(rhs * 0.0, 0, 0.0 if beta == 0.0 else math.nan, beta == 0.0)
    m = max(1, int(max_iter))
    basis = new_basis(m + 1)
    project, combine = _products(basis)
    preconditioned = new_basis(m) if precondition is not None else basis
    basis[0] = rhs / beta
    hessenberg = np.zeros((m + 1, m))
    cosines: list[float] = []  # the Givens rotations so far, as Python floats (scalar work is cheaper so)
    sines: list[float] = []
    g = [beta]
    residual = 1.0
    iterations = 0
    gave_up = False
    for j in range(m):
        if precondition is not None:
            z = precondition(basis[j])
            preconditioned[j] = z
        else:
            z = basis[j]
        w = matvec(z)
        # classical Gram-Schmidt, twice ("twice is enough": Giraud, Langou & Rozloznik 2005)
        active = basis[: j + 1]
        h = project(active, w)
        w = w - combine(h, active)
        h2 = project(active, w)
        w = w - combine(h2, active)
        column = (_to_numpy(h) + _to_numpy(h2)).tolist()
        norm_w = float((w @ w) ** 0.5)
        if not (math.isfinite(norm_w) and all(map(math.isfinite, column))):
            break
        for i in range(j):  # the previous Givens rotations, then a new one for this column
            top, bottom = column[i], column[i + 1]
            column[i] = cosines[i] * top + sines[i] * bottom
            column[i + 1] = -sines[i] * top + cosines[i] * bottom
        top, bottom = column[j], norm_w
        radius = math.hypot(top, bottom)
        if radius == 0.0:
            break
        cosines.append(top / radius)
        sines.append(bottom / radius)
        column[j] = radius
        hessenberg[: j + 1, j] = column
        hessenberg[j + 1, j] = 0.0
        g.append(-sines[j] * g[j])
        g[j] = cosines[j] * g[j]
        iterations = j + 1
        residual = abs(g[j + 1]) / beta
        if residual <= tol or norm_w == 0.0:
            break
        if j + 1 < m:
            basis[j + 1] = w / norm_w
        if give_up_after is not None and iterations >= give_up_after and residual > 0.0:
            # iterations needed at the geometric rate seen so far (none at all: never)
            needed = iterations * math.log(tol) / math.log(residual) if residual < 1.0 else math.inf
            if needed > 2 * m:
                gave_up = True
                break
    if iterations == 0:
        return GmresOutcome(rhs * 0.0, 0, 1.0, False, gave_up)
    y = _back_substitute(hessenberg[:iterations, :iterations], np.array(g[:iterations]))
    x = _like(basis, y) @ preconditioned[:iterations]
    return GmresOutcome(x, iterations, float(residual), bool(residual <= tol), gave_up)


def _products(basis: Any) -> tuple[Callable[[Any, Any], Any], Callable[[Any, Any], Any]]:
    """``V w`` and ``h^T V`` for the rows ``V`` of the basis: by scipy's BLAS for numpy arrays (the one
    its LAPACK uses: see :func:`refinekit.linalg.systems.product`), by ``@`` for torch tensors."""
    if not isinstance(basis, np.ndarray) or basis.dtype != np.float64:
        return (lambda active, w: active @ w), (lambda h, active: h @ active)
    from scipy.linalg import blas

    def project(active: np.ndarray, w: np.ndarray) -> np.ndarray:
        return blas.dgemv(1.0, active.T, w, trans=1)  # rows of V: V^T in Fortran order

    def combine(h: np.ndarray, active: np.ndarray) -> np.ndarray:
        return blas.dgemv(1.0, active.T, h)

    return project, combine


def _back_substitute(upper: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    from scipy.linalg import solve_triangular

    return solve_triangular(upper, rhs, lower=False, check_finite=False)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    return value.detach().cpu().numpy()  # a torch tensor


def _like(template: Any, values: np.ndarray) -> Any:
    if isinstance(template, np.ndarray):
        return values.astype(template.dtype, copy=False)
    import torch

    return torch.as_tensor(values, dtype=template.dtype, device=template.device)
