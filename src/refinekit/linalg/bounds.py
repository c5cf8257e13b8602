"""Error bounds for a computed solution, as LAPACK's xGERFS computes FERR (Arioli, Demmel & Duff 1989).

For the computed ``x`` and its residual ``r = fl(b - A x)``, the true residual ``b - A x`` differs from
``r`` by at most ``gamma_{m_i} (|A||x| + |b|)_i`` in row ``i`` (``gamma_m = m u / (1 - m u)``, the
rounding error of a dot product with ``m_i - 1`` nonzero terms plus the subtraction; LAPACK takes
``m_i = n + 1``, but terms with ``a_ij = 0`` add exact zeros and no rounding, so the count of nonzeros
of the row is as rigorous and much tighter for sparse matrices). So with

    w = |r| + gamma_{m} (|A||x| + |b|)

the error satisfies ``|x - x_true| = |A^-1 (b - A x)| <= |A^-1| w`` componentwise, and

- normwise:      ``||x - x_true||_inf / ||x||_inf <= || |A^-1| w ||_inf / ||x||_inf``
- componentwise: ``max_i |x_i - x_true_i| / |x_i| <= max_i (|A^-1| w)_i / |x_i|``

Both right-hand sides are infinity norms of ``A^-1`` scaled by diagonal matrices, ``|| D1 A^-1 D2 ||_inf
= || D2 A^-T D1 ||_1``, estimated by Hager's method as refined by Higham (LAPACK's DLACN2), which needs
only products with ``A^-1`` and ``A^-T``: a few solves with the factors already computed. The estimate
is a lower bound of the norm that is almost always within a factor of 3 and usually exact; the
``gamma_{n+1}`` term, the worst case of rounding, overstates the residual's error by orders of
magnitude for any sizeable ``n``, which is what makes the bound safe in practice (LAPACK's FERR is
"almost always a slight overestimate of the true error"). Where ``A^-1`` is applied through
low-precision factors, the estimate is further multiplied by ``inflation`` (2 by default), which covers
an application error of up to a half.

Everything is vectorised over the right-hand sides: column ``j`` of ``w`` and ``x`` gives bound ``j``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .precision import DOUBLE_EPS

Apply = Callable[[np.ndarray], np.ndarray]


def estimate_one_norms(apply: Apply, apply_transpose: Apply, n: int, k: int, max_iter: int = 5) -> np.ndarray:
    """Estimate ``||B_j||_1`` for ``k`` operators at once, column ``j`` of the argument and the result
    belonging to ``B_j``: ``apply(V)[:, j] = B_j V[:, j]`` and ``apply_transpose`` likewise with ``B_j^T``.

    >>> import numpy as np
    >>> m = np.array([[1.0, -7.0], [2.0, 3.0]])
    >>> estimate_one_norms(lambda v: m @ v, lambda v: m.T @ v, 2, 1)
    array([10.])
    """
    if n == 0 or k == 0:
        return np.zeros(k)
    columns = np.arange(k)
    y = apply(np.full((n, k), 1.0 / n))
    estimate = np.abs(y).sum(axis=0)
    if n == 1:
        return estimate
    signs = _signs(y)
    z = apply_transpose(signs)
    best_index = np.argmax(np.abs(z), axis=0)
    active = np.ones(k, dtype=bool)
    for _ in range(max_iter - 1):
        unit = np.zeros((n, k))
        unit[best_index, columns] = 1.0
        y = apply(unit)
        new_estimate = np.abs(y).sum(axis=0)
        new_signs = _signs(y)
        repeated = np.all(new_signs == signs, axis=0)
        no_gain = new_estimate <= estimate
        estimate = np.where(active, np.maximum(estimate, new_estimate), estimate)
        active &= ~(repeated | no_gain)
        if not active.any():
            break
        signs = np.where(active, new_signs, signs)
        z = apply_transpose(signs)
        new_index = np.argmax(np.abs(z), axis=0)
        # Higham's test: stop where the largest entry of z is no larger than at the last index
        stalled = np.abs(z[new_index, columns]) <= np.abs(z[best_index, columns])
        active &= ~stalled
        best_index = np.where(active, new_index, best_index)
        if not active.any():
            break
    # Higham's alternative vector, which catches the cases the iteration misses
    i = np.arange(n)
    alternative = ((-1.0) ** i * (1.0 + i / (n - 1)))[:, None] * np.ones((1, k))
    extra = 2.0 * np.abs(apply(alternative)).sum(axis=0) / (3.0 * n)
    return np.maximum(estimate, extra)


def _signs(y: np.ndarray) -> np.ndarray:
    return np.where(y >= 0, 1.0, -1.0)


def gamma(m: int, unit_roundoff: float = DOUBLE_EPS) -> float:
    """``m u / (1 - m u)``: the classic bound on the relative rounding error of ``m`` operations."""
    mu = m * unit_roundoff
    return mu / (1.0 - mu) if mu < 1 else np.inf


def error_bounds(
    *,
    x: np.ndarray,
    r: np.ndarray,
    abs_a_abs_x: np.ndarray,
    b: np.ndarray,
    solve: Apply,
    solve_transpose: Apply,
    row_terms: np.ndarray | None = None,
    inflation: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Normwise and componentwise relative forward-error bounds of each column of ``x`` (see the module).

    ``solve(V)`` applies ``A^-1`` and ``solve_transpose(V)`` applies ``A^-T`` to every column of ``V``;
    ``row_terms`` holds the number of nonzeros of each row of ``A`` (default ``n``, LAPACK's choice).
    A component of ``x`` that is exactly 0 makes that column's componentwise bound infinite; a bound
    at or above 1 says that no digit of ``x`` is certain.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _error_bounds(x, r, abs_a_abs_x, b, solve, solve_transpose, row_terms, inflation)


def _error_bounds(x: np.ndarray, r: np.ndarray, abs_a_abs_x: np.ndarray, b: np.ndarray, solve: Apply,
                  solve_transpose: Apply, row_terms: np.ndarray | None, inflation: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    n, k = x.shape
    terms = np.full(n, n) if row_terms is None else np.asarray(row_terms)
    rounding = (terms + 1) * DOUBLE_EPS
    rounding = np.where(rounding < 1, rounding / (1 - rounding), np.inf)[:, None]
    magnitudes = abs_a_abs_x + np.abs(b)
    if not np.all(np.isfinite(magnitudes)):  # beyond double's range (a b near it): term by term
        w = np.abs(r) + np.where(np.isfinite(magnitudes), rounding * magnitudes,
                                 rounding * abs_a_abs_x + rounding * np.abs(b))
    else:
        w = np.abs(r) + rounding * magnitudes
    abs_x = np.abs(x)
    x_norm = abs_x.max(axis=0) if n else np.zeros(k)

    # || |A^-1| w ||_inf = || A^-1 diag(w) ||_inf = || diag(w) A^-T ||_1
    normwise = estimate_one_norms(lambda v: w * solve_transpose(v), lambda v: solve(w * v), n, k)
    normwise = np.where(x_norm > 0, inflation * normwise / x_norm, np.where(normwise > 0, np.inf, 0.0))
    inverse_x = np.where(abs_x > 0, 1.0 / abs_x, 0.0)
    zero_components = np.any(abs_x == 0, axis=0)
    # || diag(1/|x|) |A^-1| w ||_inf = || diag(w) A^-T diag(1/|x|) ||_1
    componentwise = estimate_one_norms(lambda v: w * solve_transpose(inverse_x * v),
                                       lambda v: inverse_x * solve(w * v), n, k)
    componentwise = inflation * componentwise
    componentwise = np.where(zero_components | ~np.isfinite(componentwise), np.inf, componentwise)
    normwise = np.where(np.isfinite(normwise), normwise, np.inf)
    return normwise, componentwise


def componentwise_backward_errors(r: np.ndarray, abs_a_abs_x: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Oettli & Prager's componentwise backward error of each column: ``max_i |r_i| / (|A||x| + |b|)_i``
    (0/0 counts as 0), the smallest relative change to each entry of ``A`` and ``b`` making ``x`` exact."""
    abs_r = np.abs(r)
    # a sum beyond double's range is Inf: the ratio is then 0 (or Inf/Inf, NaN: Inf below)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        denominator = abs_a_abs_x + np.abs(b)
        ratios = np.where(denominator > 0, abs_r / denominator, np.where(abs_r > 0, np.inf, 0.0))
    return ratios.max(axis=0) if ratios.size else np.zeros(r.shape[1])
