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
GMRES-IR's corrector also ends the run (stagnated) when its budget of GMRES iterations is spent or GMRES
gives up; the caller counts that route as failed, whatever its backward error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..core import RefinementProblem, Scores, Status, StopRefinement
from .gmres import fgmres
from .precision import DOUBLE_EPS
from .systems import DenseLU, DenseSystem, NumpyVectors, power_of_two_scale

# ufunc reductions called directly: ndarray.max and .all go through a Python-level wrapper each call,
# which shows when a refinement cycle of a small system makes a dozen of them
_largest = np.maximum.reduce
_every = np.logical_and.reduce


class LUCorrector:
    """Corrections from LU factors of the scaled matrix: ``d = C M^-1 R r``."""

    def __init__(self, system: Any, factors: Any, route: str) -> None:
        self.system = system
        self.factors = factors
        self.route = route
        self.inner_iterations = 0
        # dense numpy systems take the lean path: one pass that scales and rounds, the LAPACK solve,
        # one pass that widens and scales back
        self._dense = isinstance(system, DenseSystem) and isinstance(factors, DenseLU)

    def solve(self, r: np.ndarray, r_norm: np.ndarray | None = None) -> np.ndarray:
        """``A^-1 r`` through the factors; ``r_norm``: the columns' largest magnitudes, if known."""
        system = self.system
        if self._dense:
            return system.solve_with(self.factors, r, r_norm)
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
        return self.solve(self.system.b, self.system.b_norm if self._dense else None)

    def correct(self, r: np.ndarray, r_norm: np.ndarray | None = None) -> np.ndarray:
        return self.solve(r, r_norm)

    def item(self, i: int) -> LUCorrector:
        """The corrector of system ``i`` of a stack (torch)."""
        return LUCorrector(self.system.item(i), self.factors.item(i), self.route)


def gmres_budget(n: int, precision: str = "single") -> int:
    """GMRES iterations that GMRES-IR may spend on an ``n x n`` system before a double factorization
    is the cheaper way. One iteration reads ``A`` and the float64 factors once each (``16 n^2`` bytes)
    against the ``2 n^3 / 3`` flops of a double LU: measured on a 2-core Xeon with OpenBLAS, one
    iteration costs 0.08 of a LAPACK double solve at n = 300-500, 0.045 at 1000, 0.025 at 2000 and
    0.015-0.02 at 4000, while the single LU costs 0.63, 0.54, 0.47 and 0.43 of it. ``n / 75`` (at least
    8, at most 60) iterations then cost about 0.6 of a double solve, so that GMRES-IR that succeeds
    costs at most ~1.2 double solves in all. The 16-bit and TF32 factorizations cost a small fraction
    of a double LU on a GPU (on the CPU they are emulated, for their accuracy): ``n / 35``, up to 80."""
    if precision == "single":
        return max(8, min(60, n // 75))
    return max(8, min(80, n // 35))


#: GMRES iterations allowed to each solve of the error bounds' norm estimator (to relative residual
#: 1e-3); where one stops short, the bounds are computed with a double factorization instead.
BOUND_ITERATIONS = 40


class GmresCorrector:
    """Corrections by flexible GMRES in double precision on the scaled system, right-preconditioned by
    the low-precision LU factors applied in double precision (a float64 copy of them, made on first
    use); one GMRES solve per right-hand side.

    GMRES stops when it has reduced the correction equation's residual far enough for the corrected
    ``x`` to reach a backward error at the unit roundoff: by ``u / (4 eta)`` where ``eta`` is the
    current backward error (``inner_tol`` if given; between 1e-14 and 1e-2). The route has a budget of
    GMRES iterations (:func:`gmres_budget` by default), and GMRES gives up after ``give_up_after``
    iterations that show it would need more than what is left of the budget: then the preconditioner
    is too poor for GMRES to pay, and the caller falls back to a double factorization having lost
    little.
    """

    route = "gmres-ir"
    wants_backward_errors = True

    def __init__(self, system: Any, factors: Any, *, max_inner: int | None = None, give_up_after: int = 4,
                 inner_tol: float | None = None) -> None:
        self.system = system
        self.factors = factors
        self.budget = (int(max_inner) if max_inner is not None
                       else gmres_budget(system.n, getattr(factors, "precision", "single")))
        self.give_up_after = int(give_up_after)
        self.inner_tol = None if inner_tol is None else float(inner_tol)
        self.inner_iterations = 0
        self.total_inner_iterations = 0
        self.backward_errors: np.ndarray | None = None
        #: why GMRES stopped short (budget used up, gave up), if it did
        self.stopped: str | None = None
        #: whether every solve for the error bounds (``tol`` given) reached its tolerance
        self.bound_solves_converged = True
        self._preconditioner: Any = None

    @property
    def preconditioner(self) -> Any:
        """The factors as GMRES applies them: promoted to float64 where the factors can be (dense and
        torch), in their own precision otherwise (SuperLU)."""
        if self._preconditioner is None:
            promote = getattr(self.factors, "promoted", None)
            self._preconditioner = promote() if promote is not None else self.factors
        return self._preconditioner

    def _scaled_matvec(self, v: np.ndarray) -> np.ndarray:
        scaling = self.system.scaling
        if not scaling.active:
            return self.system.matvec(v)
        return scaling.to_scaled(self.system.matvec(scaling.from_scaled(v[:, None])))[:, 0]

    def _precondition(self, v: np.ndarray) -> np.ndarray:
        return self.preconditioner.solve(v[:, None])[:, 0]

    def _target(self, j: int, tol: float | None) -> float:
        if tol is not None:
            return tol
        if self.inner_tol is not None:
            return self.inner_tol
        etas = self.backward_errors
        eta = float(etas[j]) if etas is not None and j < len(etas) else math.inf
        if not (eta > 0 and math.isfinite(eta)):
            return 1e-14
        return min(1e-2, max(1e-14, 0.005 * DOUBLE_EPS / eta))

    def solve(self, r: np.ndarray, tol: float | None = None) -> np.ndarray:
        """``A^-1 r`` by GMRES to relative residual ``tol`` (default: see the class; within the
        iteration budget, giving up where that would not pay)."""
        scaling = self.system.scaling
        normalise = self.system.column_scale(r)
        rs = scaling.to_scaled(r * normalise)
        n, k = rs.shape
        out = rs * 0.0
        self.inner_iterations = 0
        for j in range(k):
            left = self.budget - self.total_inner_iterations - self.inner_iterations
            if tol is None and left <= 0:
                self.stopped = f"GMRES-IR used up its budget of {self.budget} GMRES iterations"
                raise StopRefinement(Status.STAGNATED, self.stopped)
            # GMRES is linear: a power of two bringing the column near 1 keeps its norms from
            # overflowing or underflowing, and is undone exactly
            scale = power_of_two_scale(self.system.column_norms(rs[:, j:j + 1])[0])
            column = self.system.contiguous(rs[:, j] * scale)
            outcome = fgmres(self._scaled_matvec, self._precondition, column, tol=self._target(j, tol),
                             max_iter=min(left if tol is None else max(self.budget, BOUND_ITERATIONS), n),
                             new_basis=self.system.new_basis,
                             give_up_after=self.give_up_after if tol is None else None)
            self.inner_iterations += outcome.iterations
            if tol is not None and not outcome.converged:
                self.bound_solves_converged = False
            if outcome.iterations == 0 and not outcome.converged:
                raise StopRefinement(Status.NON_FINITE,
                                     "GMRES-IR broke down: the preconditioned vector is not finite")
            if outcome.gave_up:
                self.total_inner_iterations += self.inner_iterations
                self.stopped = (f"GMRES-IR gave up after {outcome.iterations} GMRES iterations: relative "
                                f"residual {outcome.relative_residual:.2g}, at a rate that would need more "
                                f"than twice the {left} left of its budget")
                raise StopRefinement(Status.STAGNATED, self.stopped)
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
        preconditioner = self.preconditioner

        def matvec(u: np.ndarray) -> np.ndarray:
            product = system.rmatvec(scaling.transpose_from_scaled(u[:, None]))
            return scaling.transpose_to_scaled(product)[:, 0]

        def precondition(u: np.ndarray) -> np.ndarray:
            return preconditioner.solve(u[:, None], transposed=True)[:, 0]

        for j in range(k):
            scale = power_of_two_scale(system.column_norms(vs[:, j:j + 1])[0])
            outcome = fgmres(matvec, precondition, system.contiguous(vs[:, j] * scale), tol=tol,
                             max_iter=min(max(self.budget, BOUND_ITERATIONS), n), new_basis=system.new_basis)
            if not outcome.converged:
                self.bound_solves_converged = False
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
    this model; 0 for LU corrections), and ``componentwise_backward_error`` where it is checked.

    ``r0``: the residual of ``x0``, where the caller has it (plain refinement's best model, handed to
    GMRES-IR, comes with its residual).
    """

    def __init__(self, system: Any, corrector: Any, x0: np.ndarray | None = None, *,
                 converged_backward_error: float = 0.0, divergence: float = 1e3, r0: Any = None) -> None:
        self.system = system
        self.corrector = corrector
        self.x0 = x0
        self.r0 = r0 if x0 is not None else None
        self.converged_backward_error = float(converged_backward_error)
        self.divergence = float(divergence)
        self._wants_etas = getattr(corrector, "wants_backward_errors", False)
        self._residual: np.ndarray | None = None
        # column norms of the last model checked and of the last correction, so that each vector's
        # norms are taken once per cycle (it shows for small n)
        self._checked: tuple[Any, np.ndarray, np.ndarray] | None = None
        self._etas: np.ndarray | None = None
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
        # numpy vectors (dense and sparse systems): the norms and the componentwise ratio are computed
        # inline, each |r| once (for small n the per-call overheads of the system's helpers show beside
        # the BLAS); the numbers are the same as those of the helpers
        self._numpy = isinstance(system, NumpyVectors) and system.n > 0 and system.k > 0
        #: ``|A||x| + |b| + tiny``, the denominators of the componentwise ratio (numpy vectors)
        self._denominators: np.ndarray | None = None

    def initial(self) -> np.ndarray:
        if self.x0 is not None:
            return self.x0
        x0 = self.corrector.initial()
        self._last_inner = getattr(self.corrector, "inner_iterations", 0)
        return x0

    def check(self, x: np.ndarray) -> Scores:
        system = self.system
        if self.r0 is not None and x is self.x0:
            r = self.r0
        else:
            r = system.residual(x)
        self._residual = r
        abs_r = None
        if self._numpy:  # system.column_norms inlined: the same numbers
            abs_r = np.abs(r)
            r_norm, x_norm = _largest(abs_r), _largest(np.abs(x))
        else:
            r_norm, x_norm = system.column_norms(r), system.column_norms(x)
        etas = system.backward_errors_from_norms(r_norm, x_norm)
        eta = float(_largest(etas, axis=None)) if etas.size else 0.0
        self._checked = (x, x_norm, r_norm)
        self._etas = etas
        lowest = self._best[0] if self._best is not None else math.inf
        if eta > self.divergence * lowest and eta > self.converged_backward_error:
            # the engine's own rule would also fire among backward errors at rounding level, where a
            # factor of 1000 between two of them is noise, not divergence
            raise StopRefinement(Status.DIVERGED, (
                f"diverged: backward error {eta:.3g} rose above {self.divergence:g} x its lowest value "
                f"{self._best[0]:.3g}"))
        if self._best is None or eta < lowest:
            self._best = (eta, x, r)
        recent = self._recent
        if len(recent) >= 4:
            del recent[0]
        recent.append((x, r))
        figures = {"backward_error": eta, "inner_iterations": float(self._last_inner)}
        if self._magnitudes is None and self._last_step is not None and (
                self._last_step <= 1e-3 or eta <= self.converged_backward_error):
            # |A||x| changes by at most the relative change of x from here on: one pass over |A| serves
            # every later check (taken as soon as x has settled to 3 digits, or is backward stable,
            # which GMRES-IR's first correction often makes it, however large that correction was)
            self._magnitudes = system.magnitudes(x)
            if abs_r is not None:
                self._denominators = self._magnitudes + np.finfo(np.float64).tiny
        if self._magnitudes is not None:
            if abs_r is not None:  # system.largest_ratio, with |r| and the denominators at hand
                omega = float(_largest(np.divide(abs_r, self._denominators), axis=None))
            else:
                omega = system.largest_ratio(r, self._magnitudes)
            figures["componentwise_backward_error"] = omega
            if omega <= 2 * DOUBLE_EPS:
                # every component of r is at the rounding level of its own computation (the final
                # subtraction from b alone contributes up to one unit of roundoff): the next correction
                # would be noise. LAPACK's xGERFS stops at one unit; its test can miss by a hair.
                self._pending_stop = (f"converged: componentwise backward error {omega:.3g} <= 2 x unit "
                                      f"roundoff (every residual component is at its rounding level)")
        return Scores(work=eta if eta == eta else math.inf, figures=figures)

    def residual_of(self, x: np.ndarray) -> np.ndarray:
        """``b - A x``, from the cache where ``x`` is one of the last models checked."""
        if self._best is not None and self._best[1] is x:
            return self._best[2]
        for model, residual in self._recent:
            if model is x:
                return residual
        return self.system.residual(x)

    def backward_errors_of(self, x: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
        """The normwise backward errors of ``x`` (one per right-hand side), from the cache where ``x``
        is the last model checked; ``r``: its residual, if at hand."""
        if self._checked is not None and self._checked[0] is x and self._etas is not None:
            return self._etas
        return self.system.backward_errors(x, self.residual_of(x) if r is None else r)

    def correct(self, x: np.ndarray, scores: Scores) -> np.ndarray:
        if self._pending_stop is not None:
            raise StopRefinement(Status.CONVERGED, self._pending_stop)
        if self._checked is None or self._checked[0] is not x:  # pragma: no cover - the engine checks first
            self.check(x)
        if self._wants_etas:
            self.corrector.backward_errors = self._etas
        d = self.corrector.correct(self._residual, self._checked[2])
        self._last_inner = getattr(self.corrector, "inner_iterations", 0)
        d_norm = _largest(np.abs(d)) if self._numpy else self.system.column_norms(d)
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
        if _every(x_norm, axis=None):
            self._last_step = float(_largest(d_norm / x_norm, axis=None))
            return self._last_step
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(x_norm > 0, d_norm / x_norm, d_norm)
        self._last_step = float(np.max(ratios))
        return self._last_step

    def is_finite(self, x: np.ndarray) -> bool:
        if self._checked is not None and self._checked[0] is x:
            if self._numpy:
                return float(_largest(self._checked[1], axis=None)) < math.inf  # NaN compares false
            return bool(np.isfinite(self._checked[1]).all())
        return self.system.all_finite(x)
