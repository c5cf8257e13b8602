"""The fit problem: weighted least squares on the working points, plus Gaussian priors as restraints.

The correction is a Levenberg-Marquardt step (Marquardt's scaling by the Jacobian's column norms,
Nielsen's damping update), optionally with geodesic acceleration (Transtrum & Sethna 2012), which
carries the step along curved valleys. Residuals are computed in the data's precision (float64, or
long double for ``precision="extended"``) and the step in float64: mixed-precision refinement, which
lets a zero-residual fit reach the data's last digit. The damped system is solved
through the SVD of the scaled Jacobian, so each new damping costs a matrix-vector product, not a
factorization. Bounds are kept by projection, a parameter pressed against its bound being held there
for the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..core import RefinementProblem, Scores, Status, StopRefinement

Vector = np.ndarray


class CurveFitProblem(RefinementProblem):
    """Fit predictions ``predict(x)`` to data ``y`` (all points) on the working points only.

    ``jacobian(x)`` returns d(predictions)/dx, shape ``(n_points, n_varied)``. ``priors`` is a tuple of
    index, mean and sigma arrays over the varied parameters; they enter as rows
    ``sqrt(prior_weight) * (x[i] - mean) / sigma`` beside the data rows.
    """

    def __init__(
        self,
        predict: Callable[[Vector], Vector],
        jacobian: Callable[[Vector], np.ndarray],
        y: Vector,
        x0: Vector,
        *,
        sigma: Vector | None = None,
        work: np.ndarray | None = None,
        free: np.ndarray | None = None,
        lower: Vector | None = None,
        upper: Vector | None = None,
        priors: tuple[np.ndarray, Vector, Vector] | None = None,
        prior_weight: float = 1.0,
        geodesic: bool = False,
        ftol: float = 1e-15,
        gtol: float = 1e-15,
        initial_damping: float = 1e-3,
    ) -> None:
        self.predict = predict
        self.jacobian = jacobian
        self.y = np.asarray(y)
        self.dtype = np.result_type(self.y.dtype, np.float64)  # float64, or long double for extended
        self.y = self.y.astype(self.dtype, copy=False)
        self.x0 = np.asarray(x0, dtype=self.dtype)
        n = self.y.size
        self.inv_sigma = (1.0 / np.asarray(sigma, dtype=self.dtype) if sigma is not None
                          else np.ones(n, dtype=self.dtype))
        self.work = np.ones(n, dtype=bool) if work is None else np.asarray(work, dtype=bool)
        self.free = None if free is None or not np.any(free) else np.asarray(free, dtype=bool)
        p = self.x0.size
        self.lower = np.full(p, -np.inf) if lower is None else np.asarray(lower, dtype=float)
        self.upper = np.full(p, np.inf) if upper is None else np.asarray(upper, dtype=float)
        if priors is None or len(priors[0]) == 0:
            self.prior_index = np.zeros(0, dtype=int)
            self.prior_mean = self.prior_scale = np.zeros(0)
        else:
            idx, mean, prior_sigma = priors
            self.prior_index = np.asarray(idx, dtype=int)
            self.prior_mean = np.asarray(mean, dtype=float)
            self.prior_scale = math.sqrt(prior_weight) / np.asarray(prior_sigma, dtype=float)
        self.prior_weight = float(prior_weight)
        self.geodesic = geodesic
        self.ftol, self.gtol = float(ftol), float(gtol)
        self.initial_damping = float(initial_damping)
        self.n_work = int(self.work.sum())
        self.reset()

    def reset(self) -> None:
        self.damping = self.initial_damping
        self.nu = 2.0
        self.scale = np.zeros(self.x0.size)
        self.pending_stop: str | None = None
        self._cache: tuple[Vector, Vector, Vector] | None = None

    # ------------------------------------------------------------------ residuals
    def _weighted(self, x: Vector) -> Vector:
        """(prediction - y) / sigma at every point (non-finite where the model is)."""
        with np.errstate(all="ignore"):
            return (np.asarray(self.predict(x), dtype=self.dtype) - self.y) * self.inv_sigma

    def _stack(self, x: Vector, weighted: Vector) -> Vector:
        """The least-squares vector: working residuals, then prior rows."""
        prior = (x[self.prior_index] - self.prior_mean) * self.prior_scale
        return np.concatenate([weighted[self.work], prior])

    def _stack_jacobian(self, x: Vector) -> np.ndarray:
        with np.errstate(all="ignore"):
            jac = np.asarray(self.jacobian(np.asarray(x, dtype=float)), dtype=float)[self.work]
        jac *= np.asarray(self.inv_sigma[self.work, None], dtype=float)
        prior = np.zeros((self.prior_index.size, x.size))
        prior[np.arange(self.prior_index.size), self.prior_index] = self.prior_scale
        return np.vstack([jac, prior])

    def _residual(self, x: Vector) -> Vector:
        if self._cache is not None and np.array_equal(self._cache[0], x):
            return self._cache[2]
        return self._stack(x, self._weighted(x))

    # ------------------------------------------------------------------ protocol
    def initial(self) -> Vector:
        self.reset()
        return self.x0.copy()

    def check(self, x: Vector) -> Scores:
        weighted = self._weighted(x)
        stacked = self._stack(x, weighted)
        self._cache = (x.copy(), weighted, stacked)
        chisqr = float(np.sum(weighted[self.work] ** 2))
        dof = self.n_work - x.size
        figures = {"chisqr": chisqr, "redchi": chisqr / dof if dof > 0 else math.nan}
        free = None
        if self.free is not None:
            free = float(np.sqrt(np.mean(weighted[self.free] ** 2)))
            figures["chisqr_free"] = float(np.sum(weighted[self.free] ** 2))
        restraint = float(np.sum(stacked[self.n_work:] ** 2)) if self.prior_index.size else None
        work = float(np.sqrt(chisqr / max(self.n_work, 1)))
        return Scores(work=work, free=free, restraint=restraint, figures=figures)

    def step_size(self, x: Vector, step: Vector) -> float:
        """``||D step|| / ||D x||`` with Marquardt's scale D, so parameters of any units count alike."""
        scale = np.where(self.scale > 0, self.scale, 1.0)
        size = float(np.linalg.norm(scale * step))
        norm = float(np.linalg.norm(scale * x))
        return size / norm if norm > 0 else size

    def correct(self, x: Vector, scores: Scores) -> Vector:
        if self.pending_stop is not None:
            raise StopRefinement(Status.CONVERGED, self.pending_stop)
        r_exact = self._residual(x)
        cost = float(r_exact @ r_exact)
        r = np.asarray(r_exact, dtype=float)
        if cost == 0.0:
            raise StopRefinement(Status.CONVERGED, "converged: the model fits the data exactly")
        jac = self._stack_jacobian(x)
        if not np.all(np.isfinite(jac)):
            raise StopRefinement(Status.NON_FINITE, "non-finite derivatives of the model")
        column_norms = np.linalg.norm(jac, axis=0)
        self.scale = np.maximum(self.scale, column_norms)
        scale = np.where(self.scale > 0, self.scale, 1.0)

        gradient = jac.T @ r
        # a parameter on a bound that the descent direction pushes outward is held there for this step
        # (its column dropped): clipping the coupled full step instead zig-zags the others for
        # thousands of cycles, and its gradient never vanishes to signal convergence
        held = ((x <= self.lower) & (gradient > 0)) | ((x >= self.upper) & (gradient < 0))
        if np.any(held):
            jac = np.where(held, 0.0, jac)
            gradient = np.where(held, 0.0, gradient)
            column_norms = np.where(held, 0.0, column_norms)
        with np.errstate(divide="ignore", invalid="ignore"):
            cosines = np.abs(gradient) / (math.sqrt(cost) * column_norms)
        if np.nanmax(np.where(column_norms > 0, cosines, 0.0), initial=0.0) <= self.gtol:
            raise StopRefinement(Status.CONVERGED, (
                f"converged: the residuals are orthogonal to the Jacobian's columns (cosine <= {self.gtol:g})"
            ))
        u, s, vt = np.linalg.svd(jac / scale, full_matrices=False)
        u_r = u.T @ r
        x_norm = float(np.linalg.norm(scale * x))
        for _ in range(64):
            filt = s / (s * s + self.damping)
            delta = np.where(held, 0.0, -(vt.T @ (filt * u_r)) / scale)
            step = delta
            if self.geodesic:
                step = self._accelerate(x, r, jac, delta, u, filt, vt, scale)
            trial = np.clip(x + step, self.lower, self.upper)
            step = np.asarray(trial - x, dtype=float)
            r_trial = self._residual(trial)
            with np.errstate(over="ignore"):  # a wild trial step may overflow: it is then rejected
                cost_trial = float(r_trial @ r_trial) if np.all(np.isfinite(r_trial)) else math.inf
            linear = r + jac @ step
            predicted = cost - float(linear @ linear)
            actual = cost - cost_trial
            if predicted > 0 and actual > 0:
                rho = actual / predicted
                self.damping *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
                self.nu = 2.0
                if actual <= self.ftol * cost and predicted <= self.ftol * cost:
                    self.pending_stop = (f"converged: relative reduction of the cost {actual / cost:.3g} "
                                         f"<= ftol {self.ftol:g}")
                return step
            self.damping *= self.nu
            self.nu *= 2.0
            if float(np.linalg.norm(scale * step)) <= 1e-16 * max(x_norm, 1e-300):
                raise StopRefinement(Status.CONVERGED, (
                    "converged: no correction lowers the cost any more (a minimum to machine precision)"
                ))
        raise StopRefinement(Status.STAGNATED, "stagnated: no correction lowered the cost at any damping")

    def _accelerate(self, x: Vector, r: Vector, jac: np.ndarray, delta: Vector, u: np.ndarray,
                    filt: Vector, vt: np.ndarray, scale: Vector, h: float = 0.1,
                    alpha: float = 0.75) -> Vector:
        """Add half the geodesic acceleration to ``delta`` where it is small beside the velocity."""
        r_h = np.asarray(self._residual(np.clip(x + h * delta, self.lower, self.upper)), dtype=float)
        if not np.all(np.isfinite(r_h)):
            return delta
        second = (2.0 / h) * ((r_h - r) / h - jac @ delta)
        accel = -(vt.T @ (filt * (u.T @ second))) / scale
        if 2.0 * np.linalg.norm(scale * accel) <= alpha * np.linalg.norm(scale * delta):
            return delta + 0.5 * accel
        return delta

    # ------------------------------------------------------------------ after the fit
    def covariance(self, x: Vector) -> np.ndarray:
        """Covariance of the varied parameters from the working Jacobian (and priors), scaled by the
        reduced chi-square of the working residuals: NIST's and lmfit's standard errors."""
        jac = self._stack_jacobian(x)
        if not np.all(np.isfinite(jac)):
            return np.full((x.size, x.size), np.nan)
        _, s, vt = np.linalg.svd(jac, full_matrices=False)
        tol = s.max(initial=0.0) * max(jac.shape) * np.finfo(float).eps
        if s.size == 0 or np.any(s <= tol):
            return np.full((x.size, x.size), np.nan)
        cov = (vt.T / s**2) @ vt
        weighted = self._weighted(x)
        dof = self.n_work - x.size
        if dof <= 0:
            return np.full((x.size, x.size), np.nan)
        return cov * float(np.sum(weighted[self.work] ** 2)) / dof

    def is_degenerate(self, x: Vector) -> bool:
        """True where the parameters are not all determined at ``x`` (a rank-deficient Jacobian): the
        mark of a false stop on a plateau, e.g. an exponential rate run off to infinity."""
        return not np.all(np.isfinite(np.diag(self.covariance(x))))

    def state_dict(self) -> dict[str, Any]:
        return {"damping": self.damping, "nu": self.nu, "scale": self.scale.copy(),
                "pending_stop": self.pending_stop}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.damping, self.nu = state["damping"], state["nu"]
        self.scale, self.pending_stop = np.array(state["scale"]), state["pending_stop"]
        self._cache = None
