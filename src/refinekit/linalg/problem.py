"""Iterative refinement of ``A x = b`` as one problem for the engine: check = residual, correct = solve.

The model is ``x`` (``(n, k)``, float64). Every cycle the engine checks ``x``: the residual
``r = b - A x`` in double precision and its normwise backward error (the work score, lower is better).
The correction ``d`` solves ``A d = r`` approximately with a *corrector*: the low-precision LU factors
(plain refinement, route ``"ir"``), flexible GMRES preconditioned by them (``"gmres-ir"``), or double
LU factors (``"double"``, fixed-precision refinement). ``x + d`` is the next model.

The rules that stop it: the relative correction ``max_j ||d_j||_inf / ||x_j||_inf`` at or below ``tol``
(converged; the engine's rule), a componentwise backward error ``max_i |r_i| / (|A||x| + |b|)_i`` at or
below twice the unit roundoff (converged: every residual component is rounding noise, and the next
correction would be too; LAPACK's xGERFS test, with one unit of slack), a correction more than half the
previous one (stagnated, the engine's rule: refinement has reached its limiting accuracy, or does not
contract), a backward error 1000 times its lowest (diverged), and a non-finite residual, correction or
solution at any cycle. Divergence is judged here, not by the
engine: only a backward error that has risen 1000-fold *and* lies above the converged level counts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..core import RefinementProblem, Scores, Status, StopRefinement
from .gmres import fgmres
from .precision import DOUBLE_EPS


def _power_of_two_scale(largest: float) -> float:
    if not (largest > 0 and math.isfinite(largest)):
        return 1.0
    return math.ldexp(1.0, -max(-1000, min(1000, math.frexp(largest)[1])))


class LUCorrector:
    """Corrections from LU factors of the scaled matrix: ``d = C M^-1 R r``."""

    def __init__(self, system: Any, factors: Any, route: str) -> None:
        self.system = system
        self.factors = factors
        self.route = route
        self.inner_iterations = 0

    def solve(self, r: np.ndarray, r_norm: np.ndarray | None = None) -> np.ndarray:
        """``A^-1 r`` through the factors; ``r_norm``: the columns' largest magnitudes, if known."""
        system = self.system
        scaling = system.scaling
        # normalise r by a power of two first: with extreme row scale factors, R r could otherwise
        # fall into the subnormal range and lose digits (and without row scaling, R r = r is then
        # ready for rounding to the factors' precision as it is)
        scale = system.scale_for(system.column_norms(r) if r_norm is None else r_norm)
        solved = self.factors.solve(scaling.to_scaled(r * scale), prescaled=scaling.row is None)
        return scaling.from_scaled(solved) / scale

    def solve_transpose(self, v: np.ndarray) -> np.ndarray:
        """``A^-T v`` through the factors (for the error bounds)."""
        scaling = self.system.scaling
        scale = self.system.column_scale(v)
        solved = self.factors.solve(scaling.transpose_to_scaled(v * scale), transposed=True)
        return scaling.transpose_from_scaled(solved) / scale

    def initial(self) -> np.ndarray:
        return self.solve(self.system.b)

    def correct(self, r: np.ndarray, r_norm: np.ndarray | None = None) -> np.ndarray:
        return self.solve(r, r_norm)

    def item(self, i: int) -> LUCorrector:
        """The corrector of system ``i`` of a stack (torch)."""
        return LUCorrector(self.system.item(i), self.factors.item(i), self.route)


class GmresCorrector:
    """Corrections by flexible GMRES in double precision on the scaled system, right-preconditioned by
    the low-precision LU factors; one GMRES solve per right-hand side.

    GMRES stops when it has reduced the correction equation's residual by ``inner_tol`` (1e-10: the
    residual, unlike the error, is no guide for an ill-conditioned ``A``, and with ``kappa * 1e-10``
    below 1 each correction contracts the error whatever the residual says). The route has a budget of
    GMRES iterations (by default ``n / 40``, between 12 and 80: one iteration costs about two passes
    over ``A``, a double factorization about ``n / 50`` to ``n / 15`` of them), and GMRES gives up after
    ``give_up_after`` iterations that show it would need more than what is left of the budget: then the
    preconditioner is too poor for GMRES to pay, and the caller falls back to a double factorization
    having lost little.
    """

    route = "gmres-ir"

    def __init__(self, system: Any, factors: Any, *, max_inner: int | None = None, give_up_after: int = 8,
                 inner_tol: float = 1e-10) -> None:
        self.system = system
        self.factors = factors
        self.budget = int(max_inner) if max_inner is not None else min(80, max(12, system.n // 40))
        self.give_up_after = int(give_up_after)
        self.inner_tol = float(inner_tol)
        self.inner_iterations = 0
        self.total_inner_iterations = 0

    def _scaled_matvec(self, v: np.ndarray) -> np.ndarray:
        scaling = self.system.scaling
        return scaling.to_scaled(self.system.matvec(scaling.from_scaled(v[:, None])))[:, 0]


    def _precondition(self, v: np.ndarray) -> np.ndarray:
        return self.factors.solve(v[:, None])[:, 0]

    def solve(self, r: np.ndarray, tol: float | None = None) -> np.ndarray:
        """``A^-1 r`` by GMRES to relative residual ``tol`` (default: the corrector's ``inner_tol``,
        within the iteration budget, giving up where that would not pay)."""
        scaling = self.system.scaling
        normalise = self.system.column_scale(r)
        rs = scaling.to_scaled(r * normalise)
        n, k = rs.shape
        out = rs * 0.0
        self.inner_iterations = 0
        for j in range(k):
            left = self.budget - self.total_inner_iterations - self.inner_iterations
            if tol is None and left <= 0:
                raise StopRefinement(Status.STAGNATED, f"GMRES-IR used up its budget of {self.budget} GMRES "
                                                       f"iterations")
            # GMRES is linear: a power of two bringing the column near 1 keeps its norms from
            # overflowing or underflowing, and is undone exactly
            scale = _power_of_two_scale(self.system.column_norms(rs[:, j:j + 1])[0])
            column = self.system.contiguous(rs[:, j] * scale)
            target = self.inner_tol if tol is None else tol
            outcome = fgmres(self._scaled_matvec, self._precondition, column, tol=target,
                             max_iter=min(left if tol is None else self.budget, n),
                             new_basis=self.system.new_basis,
                             give_up_after=self.give_up_after if tol is None else None)
            self.inner_iterations += outcome.iterations
            if outcome.iterations == 0 and not outcome.converged:
                raise StopRefinement(Status.NON_FINITE,
                                     "GMRES-IR broke down: the preconditioned vector is not finite")
            if outcome.gave_up:
                self.total_inner_iterations += self.inner_iterations
                raise StopRefinement(Status.STAGNATED, (
                    f"GMRES-IR gave up after {outcome.iterations} GMRES iterations: relative residual "
                    f"{outcome.relative_residual:.2g}, at a rate that would need more than the {left} left "
                    f"of its budget"))
            out[:, j] = outcome.x / scale
        self.total_inner_iterations += self.inner_iterations
        return scaling.from_scaled(out) / normalise

    def solve_transpose(self, v: np.ndarray, tol: float = 1e-3) -> np.ndarray:
        """``A^-T v`` by GMRES on ``A_s^T`` preconditioned by the transposed factors (for the bounds)."""
        scaling = self.system.scaling
        system = self.system
        normalise = system.column_scale(v)
        vs = scaling.transpose_to_scaled(v * normalise)
        n, k = vs.shape
        out = vs * 0.0

        def matvec(u: np.ndarray) -> np.ndarray:
            product = system.rmatvec(scaling.transpose_from_scaled(u[:, None]))
            return scaling.transpose_to_scaled(product)[:, 0]

        def precondition(u: np.ndarray) -> np.ndarray:
            return self.factors.solve(u[:, None], transposed=True)[:, 0]

        for j in range(k):
            scale = _power_of_two_scale(system.column_norms(vs[:, j:j + 1])[0])
            outcome = fgmres(matvec, precondition, system.contiguous(vs[:, j] * scale), tol=tol,
                             max_iter=min(self.budget, n), new_basis=system.new_basis)
            out[:, j] = outcome.x / scale
        return scaling.transpose_from_scaled(out) / normalise

    def correct(self, r: np.ndarray, r_norm: np.ndarray | None = None) -> np.ndarray:
        return self.solve(r)

    def initial(self) -> np.ndarray:
        return self.system.b * 0.0


class IterativeRefinementProblem(RefinementProblem):
    """``A x = b`` refined from ``x0`` (by default the corrector's own first solve) with ``corrector``.

    Work score: the largest normwise backward error over the right-hand sides. Figures per cycle:
    ``backward_error`` and ``inner_iterations`` (GMRES iterations spent on the correction that produced
    this model; 0 for LU corrections).
    """

    def __init__(self, system: Any, corrector: Any, x0: np.ndarray | None = None, *,
                 converged_backward_error: float = 0.0, divergence: float = 1e3) -> None:
        self.system = system
        self.corrector = corrector
        self.x0 = x0
        self.converged_backward_error = float(converged_backward_error)
        self.divergence = float(divergence)
        self._residual: np.ndarray | None = None
        # column norms of the last model checked and of the last correction, so that each vector's
        # norms are taken once per cycle (it shows for small n)
        self._checked: tuple[Any, np.ndarray, np.ndarray] | None = None
        self._corrected: tuple[Any, np.ndarray] | None = None
        # |A||x| + |b| for the componentwise backward error, taken once x has settled to 3 digits
        self._magnitudes: Any = None
        self._last_step: float | None = None
        self._pending_stop: str | None = None
        self._last_inner = 0
        # the lowest backward error so far, and the residuals of the last models checked: the engine
        # returns one of them, whose residual need not be computed again
        self._best: tuple[float, np.ndarray, np.ndarray] | None = None
        self._recent: list[tuple[Any, Any]] = []

    def initial(self) -> np.ndarray:
        if self.x0 is not None:
            return self.x0
        x0 = self.corrector.initial()
        self._last_inner = getattr(self.corrector, "inner_iterations", 0)
        return x0

    def check(self, x: np.ndarray) -> Scores:
        system = self.system
        r = system.residual(x)
        self._residual = r
        r_norm, x_norm = system.column_norms(r), system.column_norms(x)
        self._checked = (x, x_norm, r_norm)
        etas = system.backward_errors_from_norms(r_norm, x_norm)
        eta = float(np.max(etas)) if etas.size else 0.0
        lowest = self._best[0] if self._best is not None else math.inf
        if eta > self.divergence * lowest and eta > self.converged_backward_error:
            # the engine's own rule would also fire among backward errors at rounding level, where a
            # factor of 1000 between two of them is noise, not divergence
            raise StopRefinement(Status.DIVERGED, (
                f"diverged: backward error {eta:.3g} rose above {self.divergence:g} x its lowest value "
                f"{self._best[0]:.3g}"))
        if self._best is None or eta < self._best[0]:
            self._best = (eta, x, r)
        self._recent = [*self._recent[-3:], (x, r)]
        figures = {"backward_error": eta, "inner_iterations": float(self._last_inner)}
        if self._magnitudes is None and self._last_step is not None and self._last_step <= 1e-3:
            # |A||x| changes by at most the relative change of x from here on: one pass over |A| serves
            # every later check
            self._magnitudes = system.magnitudes(x)
        if self._magnitudes is not None:
            omega = system.largest_ratio(r, self._magnitudes)
            figures["componentwise_backward_error"] = omega
            if omega <= 2 * DOUBLE_EPS:
                # every component of r is at the rounding level of its own computation (the final
                # subtraction from b alone contributes up to one unit of roundoff): the next correction
                # would be noise. LAPACK's xGERFS stops at one unit; its test can miss by a hair.
                self._pending_stop = (f"converged: componentwise backward error {omega:.3g} <= 2 x unit "
                                      f"roundoff (every residual component is at its rounding level)")
        return Scores(work=eta if not math.isnan(eta) else math.inf, figures=figures)

    def residual_of(self, x: np.ndarray) -> np.ndarray:
        """``b - A x``, from the cache where ``x`` is the best model checked."""
        if self._best is not None and self._best[1] is x:
            return self._best[2]
        for model, residual in self._recent:
            if model is x:
                return residual
        return self.system.residual(x)

    def correct(self, x: np.ndarray, scores: Scores) -> np.ndarray:
        if self._pending_stop is not None:
            raise StopRefinement(Status.CONVERGED, self._pending_stop)
        if self._checked is None or self._checked[0] is not x:  # pragma: no cover - the engine checks first
            self.check(x)
        d = self.corrector.correct(self._residual, self._checked[2])
        self._last_inner = getattr(self.corrector, "inner_iterations", 0)
        d_norm = self.system.column_norms(d)
        self._corrected = (d, d_norm)
        if not np.isfinite(d_norm).all():  # a max is NaN or Inf exactly where an entry is
            raise StopRefinement(Status.NON_FINITE, f"non-finite correction from the {self.corrector.route} "
                                                    f"corrector")
        return d

    def apply(self, x: np.ndarray, step: np.ndarray) -> np.ndarray:
        return x + step

    def step_size(self, x: np.ndarray, step: np.ndarray) -> float:
        """``max_j ||d_j||_inf / ||x_j||_inf`` (``||d_j||`` where ``x_j = 0``), the largest over the
        right-hand sides, so that each converges on its own scale."""
        if self._corrected is not None and self._corrected[0] is step:
            d_norm = self._corrected[1]
        else:
            d_norm = self.system.column_norms(step)
        if self._checked is not None and self._checked[0] is x:
            x_norm = self._checked[1]
        else:
            x_norm = self.system.column_norms(x)
        if d_norm.size == 0:
            return 0.0
        if x_norm.all():
            self._last_step = float((d_norm / x_norm).max())
            return self._last_step
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(x_norm > 0, d_norm / x_norm, d_norm)
        self._last_step = float(np.max(ratios))
        return self._last_step

    def is_finite(self, x: np.ndarray) -> bool:
        if self._checked is not None and self._checked[0] is x:
            return bool(np.isfinite(self._checked[1]).all())
        return self.system.all_finite(x)
