"""``refinekit.linalg.solve``: mixed-precision iterative refinement of ``A x = b``.

Factor ``A`` once in a cheap low precision, then repeat: residual ``r = b - A x`` in double, a
correction from the cheap factors, ``x += d``, until the correction is negligible or stops shrinking.
Where plain refinement does not contract (``kappa(A) * u_low`` near 1 or above), GMRES-IR takes over
with the same factors as a preconditioner; where that does not pay either, ``A`` is factored in double.
Every route is a run of the engine (:mod:`refinekit.core`) on one
:class:`~refinekit.linalg.problem.IterativeRefinementProblem`.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core import Alarm, CycleRecord, InputError, RefinementResult, Status, refine
from ..core.result import _fmt, history_table
from .bounds import componentwise_backward_errors
from .bounds import error_bounds as compute_error_bounds
from .precision import DOUBLE_EPS, UNIT_ROUNDOFF, resolve_precision
from .problem import GmresCorrector, IterativeRefinementProblem, LUCorrector, gmres_budget
from .systems import (
    DenseSystem,
    FactorizationFailed,
    Scaling,
    SingularMatrixError,
    SparseSystem,
    converged_backward_error,
    estimated_reciprocal_condition,
)

ROUTES = {"auto": ("ir", "gmres-ir", "double"), "ir": ("ir",), "gmres-ir": ("gmres-ir",),
          "double": ("double",)}
#: Route order by cost: a batch reports its most expensive route.
ROUTE_COST = {"ir": 0, "gmres-ir": 1, "double": 2}
DEFAULT_MAX_ITER = {"ir": 20, "gmres-ir": 10, "double": 10}


@dataclass
class Attempt:
    """One route tried: which, in what precision, how it ended, its cycles and the time of its
    refinement loop (the factorization not included)."""

    path: str
    precision: str
    status: str
    message: str
    iterations: int
    backward_error: float
    seconds: float
    history: list[CycleRecord] = field(default_factory=list, repr=False)
    inner_iterations: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "precision": self.precision, "status": self.status,
                "message": self.message, "iterations": self.iterations,
                "backward_error": self.backward_error, "inner_iterations": self.inner_iterations,
                "seconds": self.seconds, "history": [r.to_dict() for r in self.history]}


@dataclass
class SolveResult(RefinementResult):
    """The solution of ``A x = b`` and how far it can be trusted.

    ``x`` has the shape ``numpy.linalg.solve`` gives (float64). ``success`` is true where ``x`` is
    finite, reached a normwise backward error of at most ``max((sqrt(n) + 2) u, tol)`` (``u = 2**-53``)
    along a route that had stopped improving it, and (where bounds were computed) its normwise forward-error
    bound is below 1. ``path`` names the route that produced ``x``: ``"ir"`` (low-precision LU and
    refinement), ``"gmres-ir"`` or ``"double"``; ``attempts`` lists every route tried, each with its
    per-cycle history. Per right-hand side (arrays of shape ``b.shape[1:]``, or floats for a vector
    ``b``): ``backward_errors`` (normwise), ``componentwise_backward_errors``, ``forward_error_bounds``
    (normwise, ``||x - x_true||_inf / ||x||_inf``) and ``componentwise_error_bounds``
    (``max_i |x_i - x_true_i| / |x_i|``); ``backward_error`` and ``forward_error_bound`` are the
    largest over the right-hand sides.
    """

    path: str = ""
    precision: str = ""
    device: str = "cpu"
    attempts: list[Attempt] = field(default_factory=list)
    backward_errors: Any = None
    componentwise_backward_errors: Any = None
    forward_error_bounds: Any = None
    componentwise_error_bounds: Any = None
    items: list[SolveResult] | None = field(default=None, repr=False)
    trusted: bool = True

    @property
    def success(self) -> bool:  # type: ignore[override]
        return self.status.success and self.trusted

    @property
    def iterations(self) -> int:
        """Corrections over all routes tried (the largest over a batch)."""
        if self.items:
            return max(item.iterations for item in self.items)
        return sum(a.iterations for a in self.attempts)

    @property
    def backward_error(self) -> float:
        return _largest(self.backward_errors)

    @property
    def forward_error_bound(self) -> float | None:
        return None if self.forward_error_bounds is None else _largest(self.forward_error_bounds)

    @property
    def componentwise_error_bound(self) -> float | None:
        return None if self.componentwise_error_bounds is None else _largest(self.componentwise_error_bounds)

    @property
    def correction_history(self) -> list[tuple[str, float | None]]:
        """``(path, ||d||/||x||)`` of every cycle of every route (None at each route's first cycle)."""
        return [(a.path, r.step) for a in self.attempts for r in a.history]

    @property
    def backward_error_history(self) -> list[tuple[str, float]]:
        """``(path, normwise backward error)`` of every cycle of every route."""
        return [(a.path, r.work) for a in self.attempts for r in a.history]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        history = out.pop("history")
        out.update({
            "success": self.success,
            "path": self.path,
            "precision": self.precision,
            "device": self.device,
            "iterations": self.iterations,
            "backward_error": self.backward_error,
            "backward_errors": _listed(self.backward_errors),
            "componentwise_backward_errors": _listed(self.componentwise_backward_errors),
            "forward_error_bound": self.forward_error_bound,
            "forward_error_bounds": _listed(self.forward_error_bounds),
            "componentwise_error_bound": self.componentwise_error_bound,
            "componentwise_error_bounds": _listed(self.componentwise_error_bounds),
            "attempts": [a.to_dict() for a in self.attempts],
        })
        if self.items:
            out["batch"] = [{k: v for k, v in item.to_dict().items() if k not in ("history", "attempts")}
                            for item in self.items]
        out["history"] = history
        return out

    def report(self, full: bool = False) -> str:
        lines = [
            f"status      : {self.status.label} ({'success' if self.success else 'no success'})",
            f"message     : {self.message}",
            f"path        : {self.path} (factors in {self.precision}, on {self.device})",
            f"iterations  : {self.iterations}",
            f"backward err: {_fmt(self.backward_error)} (normwise), "
            f"{_fmt(_largest(self.componentwise_backward_errors))} (componentwise)",
        ]
        if self.forward_error_bounds is not None:
            lines.append(f"error bound : {_fmt(self.forward_error_bound)} (normwise), "
                         f"{_fmt(self.componentwise_error_bound)} (componentwise)")
        for alarm in self.alarms:
            lines.append(f"ALARM       : {alarm.kind}: {alarm.message}")
        if full:
            for attempt in self.attempts:
                lines += ["", f"route {attempt.path} ({attempt.precision}): {attempt.message}",
                          history_table(attempt.history)]
        return "\n".join(lines)


def _largest(values: Any) -> float:
    if values is None:
        return math.nan
    array = np.asarray(values, dtype=float)
    return float(np.max(array)) if array.size else 0.0


def _listed(values: Any) -> Any:
    if values is None:
        return None
    array = np.asarray(values, dtype=float)
    return float(array) if array.ndim == 0 else array.tolist()


# ------------------------------------------------------------------------------------------ solve
def solve(
    A: Any,
    b: Any,
    *,
    precision: str = "auto",
    device: str = "cpu",
    tol: float | None = None,
    max_iter: int | None = None,
    method: str = "auto",
    error_bounds: bool = True,
    callbacks: Any = (),
) -> SolveResult:
    """Solve ``A x = b`` by mixed-precision iterative refinement; never report success silently wrong.

    ``A`` is a square array, a stack of them (``(..., n, n)``, solved one by one on the CPU) or a
    scipy.sparse matrix (SuperLU in single precision, double residuals); ``b`` is ``(n,)`` or
    ``(..., n, k)`` as for ``numpy.linalg.solve``. ``precision`` is the factorization's: ``"single"``,
    ``"half"``, ``"bfloat16"`` (emulated on the CPU: see :mod:`refinekit.linalg.precision`), ``"tf32"``
    (GPU), ``"double"``, or ``"auto"`` (single). ``device="cuda"`` (or a torch tensor ``A``) runs the
    same algorithm with torch; ``device="torch-cpu"`` runs the torch code on the CPU.

    ``tol`` is the relative correction ``||d|| / ||x||`` at which refinement has converged (default the
    unit roundoff of double, 2**-53); refinement also stops as soon as a correction is more than half
    the previous one. ``max_iter`` caps the corrections of each route (default 20 for plain
    refinement, 10 for GMRES-IR and double). ``method``: ``"auto"`` (plain refinement, then GMRES-IR,
    then a double LU, each only where the previous one failed), ``"ir"``, ``"gmres-ir"`` or
    ``"double"`` (that route alone). ``error_bounds=False`` skips the forward-error bounds (about a
    dozen triangular solves). ``callbacks`` are passed to the engine.

    A singular matrix (an exact zero pivot in double, a zero row or column) raises
    :class:`~refinekit.linalg.SingularMatrixError`; NaN or Inf in ``A`` or ``b``, or shapes that do
    not fit, raise :class:`~refinekit.core.InputError`.

    >>> import numpy as np
    >>> from refinekit.linalg import solve
    >>> A = np.array([[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 2.0]])
    >>> result = solve(A, np.array([1.0, 2.0, 3.0]))
    >>> result.success, result.path
    (True, 'ir')
    >>> bool(np.allclose(A @ result.x, [1.0, 2.0, 3.0], rtol=1e-15, atol=1e-15))
    True
    >>> result.forward_error_bound < 1e-13
    True
    """
    method = _check_method(method)
    tol = _check_tol(tol)
    if max_iter is not None and (int(max_iter) != max_iter or max_iter < 1):
        raise InputError(f"max_iter must be a positive integer, got {max_iter!r}")
    device_name = _device_name(A, device)
    if device_name != "cpu":
        from .torch_backend import solve_torch

        return solve_torch(A, b, precision=precision, device=device_name, tol=tol, max_iter=max_iter,
                           method=method, error_bounds=error_bounds, callbacks=callbacks)
    if _is_sparse(A):
        precision = resolve_precision(precision, device="cpu", sparse=True)
        if A.shape[0] != A.shape[1]:  # before b, whose rows are checked against A's order
            raise InputError(f"A must be square, got shape {A.shape[0]}x{A.shape[1]}")
        if A.dtype.kind not in "biuf":  # a cast to float64 would drop an imaginary part silently
            if A.dtype.kind == "c":
                raise InputError("complex matrices are not supported (A is complex)")
            raise InputError(f"A must be numeric, got dtype {A.dtype}")
        b_array, vector = _right_hand_side(b, A.shape, batch=())
        system = SparseSystem(A, b_array, precision)
        return _solve_system(system, precision, tol, max_iter, method, error_bounds, callbacks, vector)
    precision = resolve_precision(precision, device="cpu", sparse=False)
    a = _dense_matrix(A)
    n = a.shape[-1]
    batch = a.shape[:-2]
    b_array, vector = _right_hand_side(b, a.shape, batch=batch)
    if not batch:
        system = DenseSystem(np.ascontiguousarray(a), b_array, precision)
        return _solve_system(system, precision, tol, max_iter, method, error_bounds, callbacks, vector)
    shape = np.broadcast_shapes(batch, b_array.shape[:-2])
    if math.prod(shape) == 0:
        return empty_stack(shape, n, b_array.shape[-1], precision, error_bounds, vector, "cpu")
    a_stack = np.broadcast_to(a, (*shape, n, n)).reshape(-1, n, n)
    b_stack = np.broadcast_to(b_array, (*shape, *b_array.shape[-2:])).reshape(-1, *b_array.shape[-2:])
    items = [
        _solve_system(DenseSystem(np.ascontiguousarray(a_i), np.ascontiguousarray(b_i), precision), precision,
                      tol, max_iter, method, error_bounds, callbacks, vector)
        for a_i, b_i in zip(a_stack, b_stack, strict=True)
    ]
    return combine_batch(items, shape)


def _check_method(method: str) -> str:
    if not isinstance(method, str) or method.lower() not in ROUTES:
        raise InputError(f"method must be one of {', '.join(ROUTES)}, got {method!r}")
    return method.lower()


def _check_tol(tol: float | None) -> float:
    if tol is None:
        return DOUBLE_EPS
    tol = float(tol)
    if not (0.0 <= tol < 1.0):
        raise InputError(f"tol must be in [0, 1), got {tol}")
    return tol


def _device_name(A: Any, device: str) -> str:
    if not isinstance(device, str):
        device = str(device)
    device = device.lower()
    if type(A).__module__.startswith("torch") and device == "cpu":
        return "torch-cpu"  # a tensor stays on its device unless told otherwise
    if device == "cpu":
        return "cpu"
    if device == "torch-cpu" or re.fullmatch(r"cuda(:\d+)?", device):
        return device
    raise InputError(f"device must be 'cpu', 'torch-cpu' or 'cuda[:N]', got {device!r}")


def _is_sparse(A: Any) -> bool:
    if isinstance(A, np.ndarray):  # the usual case, without importing scipy.sparse
        return False
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover - scipy is a dependency
        return False
    return sp.issparse(A)


def _dense_matrix(A: Any) -> np.ndarray:
    try:
        a = np.asarray(A)
    except Exception as exc:
        raise InputError(f"A is not an array ({type(exc).__name__})") from None
    if a.dtype == object or a.dtype.kind not in "biuf":
        if a.dtype.kind == "c":
            raise InputError("complex matrices are not supported (A is complex)")
        raise InputError(f"A must be numeric, got dtype {a.dtype}")
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise InputError(f"A must be a square matrix (or a stack of them), got shape {a.shape}")
    return a.astype(np.float64, copy=False)


def _right_hand_side(b: Any, a_shape: tuple[int, ...], batch: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """``b`` as ``(..., n, k)`` float64, and whether it was a single vector (numpy 2's rule: ``b`` is a
    vector only where it is one-dimensional)."""
    try:
        array = np.asarray(b)
    except Exception as exc:
        raise InputError(f"b is not an array ({type(exc).__name__})") from None
    if array.dtype == object or array.dtype.kind not in "biuf":
        if array.dtype.kind == "c":
            raise InputError("complex right-hand sides are not supported (b is complex)")
        raise InputError(f"b must be numeric, got dtype {array.dtype}")
    n = a_shape[-1]
    if array.ndim == 0:
        raise InputError("b must be a vector or a matrix, got a scalar")
    vector = array.ndim == 1
    if vector:
        array = array[:, None]
    if array.shape[-2] != n:
        raise InputError(f"b has {array.shape[-2]} rows but A is {n}x{n}")
    if not batch and array.ndim > 2:
        raise InputError(f"b has shape {np.shape(b)}: a stack of right-hand sides needs a stack of matrices")
    if batch:
        try:
            np.broadcast_shapes(batch, array.shape[:-2])
        except ValueError:
            raise InputError(f"the stacks of A {a_shape} and b {np.shape(b)} do not broadcast") from None
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise InputError("the right-hand side b contains NaN or Inf")
    return array, vector


# ----------------------------------------------------------------------------------- the routes
def _solve_system(system: Any, precision: str, tol: float, max_iter: int | None, method: str,
                  error_bounds: bool, callbacks: Any, vector: bool, device: str = "cpu") -> SolveResult:
    """Run the routes in order until one succeeds; assemble the result. ``system`` is a numpy system of
    :mod:`refinekit.linalg.systems` or a torch one (:mod:`refinekit.linalg.torch_backend`)."""
    routes = ("double",) if precision == "double" else ROUTES[method]
    if getattr(system, "batch_shape", ()) and "gmres-ir" in routes:
        routes = tuple(r for r in routes if r != "gmres-ir")  # GMRES runs one system at a time
    eta_tol = converged_backward_error(system.n, tol)
    alarms: list[Alarm] = []
    attempts: list[Attempt] = []
    if system.n == 0 or system.k == 0:
        empty = np.zeros((*getattr(system, "batch_shape", ()), system.k))
        return _result(system.b * 0.0, Status.CONVERGED, "converged: an empty system", [], alarms, "double",
                       precision, empty, empty, empty if error_bounds else None,
                       empty if error_bounds else None, vector, device)
    low = None
    low_failure: str | None = None
    best: tuple | None = None
    chosen = None
    for index, route in enumerate(routes):
        last_route = index == len(routes) - 1
        x0 = r0 = None
        if route in ("ir", "gmres-ir"):
            if low is None and low_failure is None:
                try:
                    low = system.factor_low()
                except FactorizationFailed as exc:
                    low_failure = str(exc)
                    alarms.append(Alarm("fallback", None, f"{low_failure}: skipped the {precision} routes"))
            if low is None:
                attempts.append(Attempt(route, precision, "not_run", low_failure or "", 0, math.inf, 0.0))
                continue
            if route == "ir":
                corrector: Any = LUCorrector(system, low, "ir")
            else:
                budget = max(50, gmres_budget(system.n, precision)) if len(routes) == 1 else None
                corrector = GmresCorrector(system, low, max_inner=budget)
                if not last_route:
                    doomed = _doomed_for_gmres(low, corrector.budget)
                    if doomed is not None:
                        attempts.append(Attempt(route, precision, "not_run", doomed, 0, math.inf, 0.0))
                        alarms.append(Alarm("fallback", None,
                                            f"{route}: {doomed}; trying {routes[index + 1]}"))
                        continue
                if best is not None and _good_start(best):
                    x0, r0 = best[1], best[6].residual_of(best[1])
            factor_precision = precision
        else:
            factors = system.factor_double()  # a SingularMatrixError propagates: nothing can be done
            corrector = LUCorrector(system, factors, "double")
            factor_precision = "double"
        cap = max_iter if max_iter is not None else DEFAULT_MAX_ITER[route]
        problem = IterativeRefinementProblem(system, corrector, x0, converged_backward_error=eta_tol, r0=r0)
        tick = time.perf_counter()
        # every model, residual and correction is checked for Inf and NaN, which stop the route: an
        # overflow is judged there (a denominator |A||x| + |b| beyond double's range makes its ratio 0)
        with np.errstate(over="ignore"):
            run = refine(problem, max_cycles=cap, xtol=tol, stagnation=0.5, divergence=math.inf,
                         restore_best=True, callbacks=callbacks)
        seconds = time.perf_counter() - tick
        ok, status, message = _judge(run, route, eta_tol, getattr(corrector, "stopped", None))
        inner = getattr(corrector, "total_inner_iterations", 0)
        attempts.append(Attempt(route, factor_precision, status.label, message, run.n_cycles, run.best.work,
                                seconds, run.history, inner))
        finite = run.usable and math.isfinite(run.best.work) and problem.is_finite(run.x)
        if finite and (best is None or run.best.work < best[0]):
            best = (run.best.work, run.x, corrector, run.best_cycle, run.history, status, problem)
        if ok:
            chosen = (run.x, corrector, status, message, route, factor_precision, problem)
            break
        if not last_route:
            alarms.append(Alarm("fallback", None, f"{route}: {message}; trying {routes[index + 1]}"))

    if chosen is None:
        if best is None:
            eta_shape = (*getattr(system, "batch_shape", ()), system.k)
            return _result(system.b * math.nan, Status.NON_FINITE, "no route produced a finite solution",
                           attempts, alarms, attempts[-1].path if attempts else "", precision,
                           np.full(eta_shape, np.inf), None, None, None, vector, device, trusted=False)
        _, x, corrector, _, _, status, final_problem = best
        last = attempts[-1]
        status = Status(status) if status is not Status.CONVERGED else Status.STAGNATED
        message = f"no route converged; returning the best solution found ({last.path}: {last.message})"
        path, factor_precision = corrector.route, "double" if corrector.route == "double" else precision
    else:
        x, corrector, status, message, path, factor_precision, final_problem = chosen

    r = final_problem.residual_of(x)
    eta_shape = (*getattr(system, "batch_shape", ()), system.k)
    eta = final_problem.backward_errors_of(x, r).reshape(eta_shape)
    omega = normwise = componentwise = None
    trusted = True
    if error_bounds:
        # low-precision LU factors apply A^-1 to within a half only where their refinement converged;
        # where it did not, they may be off by far more, and only a double factorization bounds x
        exact_inverse = chosen is None and corrector.route == "ir"
        omega, normwise, componentwise = _bounds(system, x, r, corrector, exact_inverse)
        omega, normwise, componentwise = (v.reshape(eta_shape) for v in (omega, normwise, componentwise))
        if not np.all(normwise < 1.0):
            trusted = False
            alarms.append(Alarm("ill_conditioned", None, (
                f"normwise forward-error bound {np.max(normwise):.2g} >= 1: no digit of x is certain "
                f"(A is singular or nearly so to working precision)")))
    elif corrector.route == "gmres-ir" or (corrector.route == "double" and _largest_step(attempts) >= 1e-8):
        # without bounds, a condition estimate (about ten solves) decides whether A is singular to
        # working precision. GMRES-IR reaches a backward-stable x however ill-conditioned A is, so it
        # always needs one; the double LU's is skipped where its own correction was below 1e-8: the
        # rounding noise in a residual excites every direction of A^-1, so kappa * u would have shown
        # as a correction of order 1/sqrt(n) or more
        rcond = _reciprocal_condition(system, corrector)
        if rcond < DOUBLE_EPS:
            trusted = False
            alarms.append(Alarm("ill_conditioned", None, (
                f"estimated reciprocal condition number {rcond:.2g} < unit roundoff: A is singular to "
                f"working precision and no digit of x is certain")))
    return _result(x, status, message, attempts, alarms, path, factor_precision, eta, omega, normwise,
                   componentwise, vector, device, trusted=trusted)


def _reciprocal_condition(system: Any, corrector: Any) -> float:
    """An estimate of ``1 / kappa_inf(R A C)`` (the scaled matrix): from the double factors (LAPACK's
    xGECON for dense ones), or from GMRES-IR's solves to relative residual 1e-3 (its low-precision
    factors alone say nothing where A is nearly singular), or, where one of those stopped short, from a
    double factorization."""
    norm = system.scaled_norm_inf()
    if not isinstance(corrector, GmresCorrector):
        return float(corrector.factors.reciprocal_condition(norm))
    scaling = system.scaling
    # (R A C)^-1 = C^-1 A^-1 R^-1 and (R A C)^-T = R^-1 A^-T C^-1 (powers of two: exact inverses)
    inverse = Scaling(None if scaling.row is None else 1.0 / scaling.row,
                      None if scaling.col is None else 1.0 / scaling.col)

    def solve(v: np.ndarray, transposed: bool = False) -> np.ndarray:
        u = system.from_numpy(v)
        if transposed:
            out = inverse.transpose_from_scaled(corrector.solve_transpose(inverse.transpose_to_scaled(u)))
        else:
            out = inverse.from_scaled(corrector.solve(inverse.to_scaled(u), tol=1e-3))
        return system.to_numpy(out)

    rcond = estimated_reciprocal_condition(solve, system.n, float(np.max(norm)))
    if corrector.bound_solves_converged:
        return rcond
    try:
        return float(system.factor_double().reciprocal_condition(norm))
    except SingularMatrixError:
        return 0.0


def _bounds(system: Any, x: Any, r: Any, corrector: Any, exact_inverse: bool = False
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Componentwise backward errors and the two forward-error bounds, system by system (on the host;
    the solves run where the factors are). ``exact_inverse``: apply ``A^-1`` through a double
    factorization, not through ``corrector`` (whose factors did not converge)."""
    views = system.items(x, r, corrector) if hasattr(system, "items") else [(system, x, r, corrector)]
    omegas, normwises, componentwises = [], [], []
    for sys_i, x_i, r_i, cor_i in views:
        x_host, r_host, b_host = sys_i.to_numpy(x_i), sys_i.to_numpy(r_i), sys_i.to_numpy(sys_i.b)
        abs_product, row_terms = sys_i.abs_times_and_counts(np.abs(x_host))
        omegas.append(componentwise_backward_errors(r_host, abs_product, b_host))
        host = (x_host, r_host, abs_product, b_host, row_terms)
        if exact_inverse:
            normwise, componentwise = _exact_bounds(sys_i, host)
        else:
            gmres = isinstance(cor_i, GmresCorrector)
            # GMRES to 1e-3 is plenty for a norm estimate (which needs about one digit)
            options = {"tol": 1e-3} if gmres else {}
            # low-precision factors apply A^-1 only to within the contraction refinement showed (< 1/2)
            inflation = 1.0 if cor_i.route == "double" else 2.0
            normwise, componentwise = _bounds_through(sys_i, cor_i, host, inflation, **options)
            if gmres and not cor_i.bound_solves_converged:
                # a GMRES solve of the estimator stopped short of its tolerance: its A^-1 is not to be
                # trusted for a bound, a double factorization's is (rare, and then worth its cost)
                normwise, componentwise = _exact_bounds(sys_i, host)
        normwises.append(normwise)
        componentwises.append(componentwise)
    return np.concatenate(omegas), np.concatenate(normwises), np.concatenate(componentwises)


def _exact_bounds(system: Any, host: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The two forward-error bounds with ``A^-1`` applied by a double factorization; infinite where
    ``A`` is exactly singular in double (no digit of ``x`` can then be certified)."""
    try:
        exact = LUCorrector(system, system.factor_double(), "double")
    except SingularMatrixError:
        infinite = np.full(host[0].shape[-1], np.inf)
        return infinite, infinite.copy()
    return _bounds_through(system, exact, host, 1.0)


def _bounds_through(system: Any, corrector: Any, host: tuple, inflation: float, **options: Any
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The two forward-error bounds with ``A^-1`` and ``A^-T`` applied by ``corrector`` (``options``: for
    its solve); ``host``: ``x``, ``r``, ``|A||x|``, ``b`` and the rows' term counts, on the host."""
    x, r, abs_a_abs_x, b, row_terms = host

    def solve_a(v: np.ndarray) -> np.ndarray:
        return system.to_numpy(corrector.solve(system.from_numpy(v), **options))

    def solve_at(v: np.ndarray) -> np.ndarray:
        return system.to_numpy(corrector.solve_transpose(system.from_numpy(v)))

    return compute_error_bounds(x=x, r=r, abs_a_abs_x=abs_a_abs_x, b=b, solve=solve_a,
                                solve_transpose=solve_at, row_terms=row_terms, inflation=inflation)


def _largest_step(attempts: list[Attempt]) -> float:
    steps = [r.step for r in attempts[-1].history if r.step is not None] if attempts else []
    return max(steps, default=math.inf)


def _good_start(best: tuple) -> bool:
    """Start GMRES-IR from plain refinement's best ``x`` (whose residual is known) where the correction
    computed from it (its error, to first order) was smaller than ``x`` itself: an ``x`` whose error
    exceeds it would only add cancellation, and GMRES-IR starts from zero instead."""
    _, _, _, best_cycle, history, _, _ = best
    if not history:
        return False
    # the correction computed from it; for the last model (stagnated refinement: its corrections no
    # longer shrink), the one that produced it is as large
    step = history[min(best_cycle + 1, len(history) - 1)].step
    return step is not None and step < 1.0


def _doomed_for_gmres(factors: Any, budget: int) -> str | None:
    """Why GMRES-IR would not pay with these low-precision factors, or None.

    The factors fail (plain refinement did not contract) in the directions where the rounding errors
    of the factorization are not small beside ``A`` itself, and each such direction costs GMRES about
    one iteration. They show as pivots produced by heavy cancellation: pivot ``k`` carries a rounding
    error of about ``u (|L||U|)_kk``, and where ``|u_kk| / (|L||U|)_kk < sqrt(u) / 2`` it has lost half
    its digits or more (a tiny pivot of a tiny row, as in circuit matrices, is exact and does not
    count). Where more such pivots than four times the budget of GMRES iterations show
    (:meth:`~refinekit.linalg.systems.DenseLU.cancellation`: the last ``budget`` pivots, where a few
    small singular values show, one by one, and a sample of the others; random matrices whose singular
    values decay geometrically to 1e-8 have about half of them so), a double factorization is the
    cheaper way; where a few are (a handful of small singular values), GMRES converges in a few
    iterations (Carson & Higham 2017). A heuristic for the time only: a wrong call costs time, never
    accuracy."""
    cancellation = getattr(factors, "cancellation", None)
    if cancellation is None:
        return None
    n = factors.lu.shape[0]
    # the last pivots, where a few small singular values show, exactly; a sample of the others
    tail = min(n, budget)
    ratios, index = cancellation(tail=tail)
    lost = ratios < 0.5 * math.sqrt(factors.unit_roundoff)
    in_tail = index >= n - tail
    sampled = int(np.count_nonzero(~in_tail))
    damaged = float(np.count_nonzero(lost & in_tail))
    if sampled:
        damaged += float(np.count_nonzero(lost & ~in_tail)) / sampled * (n - tail)
    if damaged > 4 * budget:
        return (f"not run: about {damaged:.0f} pivots of the {factors.precision} LU lost half their digits "
                f"or more to cancellation, more than GMRES could resolve in its {budget} iterations")
    return None


def _judge(run: RefinementResult, route: str, eta_tol: float, stopped: str | None = None
           ) -> tuple[bool, Status, str]:
    """Did this route reach the solution? (``ok``, the status to report, the message.)

    Converged: the corrections fell below ``tol``, or stopped shrinking once they had been shrinking
    (refinement reached its limiting accuracy); in both cases the backward error must be at most
    ``eta_tol``. Plain refinement that stopped shrinking before it ever contracted has not converged:
    it is too slow to trust, and GMRES-IR takes over. GMRES-IR that ran out of its budget or gave up
    (``stopped``: why) has not converged either, whatever its backward error: its last correction was
    not checked to have reached the limiting accuracy.
    """
    eta = run.best.work
    status = run.status
    if not (run.usable and math.isfinite(eta)):
        return False, status, run.message
    if eta > eta_tol:
        if status is Status.CONVERGED:
            return False, Status.STAGNATED, (
                f"corrections fell below tol but the backward error {eta:.2g} is above {eta_tol:.2g}")
        return False, status, f"{run.message} (backward error {eta:.2g} > {eta_tol:.2g})"
    if status is Status.CONVERGED:
        return True, status, run.message
    if status is Status.STAGNATED and stopped is not None:
        return False, status, f"{stopped} (backward error {eta:.2g})"
    if status is Status.STAGNATED:
        steps = [r.step for r in run.history if r.step is not None]
        contracted = any(later <= 0.5 * earlier for earlier, later in itertools.pairwise(steps))
        if route != "ir" or contracted or (steps and steps[-1] <= eta_tol):
            return True, Status.CONVERGED, (
                f"converged: the corrections stopped shrinking at backward error {eta:.3g} <= {eta_tol:.3g} "
                f"(limiting accuracy reached after {run.n_cycles} corrections)")
        return False, status, f"{run.message}: plain refinement did not contract"
    return False, status, run.message


def _result(x: Any, status: Status, message: str, attempts: list[Attempt], alarms: list[Alarm],
            path: str, precision: str, eta: Any, omega: Any, normwise: Any, componentwise: Any,
            vector: bool, device: str, trusted: bool = True) -> SolveResult:
    final = [a for a in attempts if a.path == path and a.history]
    history = final[-1].history if final else [CycleRecord(0, float(_largest(eta)), None, None, 0.0)]
    best_cycle = int(np.argmin([record.work for record in history]))  # the first lowest, or the first NaN

    def shaped(values: Any) -> Any:
        if values is None:
            return None
        array = np.asarray(values, dtype=float)
        if vector:
            array = array[..., 0]
        return float(array) if array.ndim == 0 else array

    if not trusted and status.success:
        message += "; but the error bound does not certify any digit"
    return SolveResult(
        x=x[..., 0] if vector else x, status=status, message=message,
        n_cycles=sum(a.iterations for a in attempts), history=history, best_cycle=best_cycle,
        alarms=alarms, x_last=None, path=path, precision=precision, device=device, attempts=attempts,
        backward_errors=shaped(eta), componentwise_backward_errors=shaped(omega),
        forward_error_bounds=shaped(normwise), componentwise_error_bounds=shaped(componentwise),
        trusted=trusted,
    )


def empty_stack(shape: tuple[int, ...], n: int, k: int, precision: str, error_bounds: bool, vector: bool,
                device: str) -> SolveResult:
    """The result for a stack of no systems (a zero in ``shape``), as numpy gives it: ``x`` empty."""
    empty = np.zeros((*shape, k))
    return _result(np.zeros((*shape, n, k)), Status.CONVERGED, "converged: an empty stack", [], [], "double",
                   precision, empty, empty, empty if error_bounds else None, empty if error_bounds else None,
                   vector, device)


def combine_batch(items: list[SolveResult], batch_shape: tuple[int, ...]) -> SolveResult:
    """One result for a stack of systems solved one by one: ``x`` stacked; success where all succeeded;
    the status, message, path and history of the first failure (or of the most expensive route)."""
    failed = [i for i, item in enumerate(items) if not item.success]
    index = failed[0] if failed else max(range(len(items)), key=lambda i: ROUTE_COST.get(items[i].path, 0))
    lead = items[index]
    x = np.stack([item.x for item in items]).reshape(*batch_shape, *items[0].x.shape)

    def stacked(name: str) -> Any:
        values = [getattr(item, name) for item in items]
        if any(v is None for v in values):
            return None
        return np.asarray(values, dtype=float).reshape(*batch_shape, *np.shape(values[0]))

    if failed:
        message = f"{len(items) - len(failed)} of {len(items)} systems solved; system {index}: {lead.message}"
    else:
        message = f"all {len(items)} systems solved; the most expensive route was {lead.path}: {lead.message}"
    alarms = [Alarm(a.kind, a.cycle, f"system {i}: {a.message}") for i, item in enumerate(items)
              for a in item.alarms]
    return SolveResult(
        x=x, status=lead.status, message=message, n_cycles=max(item.n_cycles for item in items),
        history=lead.history, best_cycle=lead.best_cycle, alarms=alarms, path=lead.path,
        precision=lead.precision, device=lead.device, attempts=lead.attempts,
        backward_errors=stacked("backward_errors"),
        componentwise_backward_errors=stacked("componentwise_backward_errors"),
        forward_error_bounds=stacked("forward_error_bounds"),
        componentwise_error_bounds=stacked("componentwise_error_bounds"),
        items=items, trusted=all(item.trusted for item in items) and not failed,
    )


__all__ = ["UNIT_ROUNDOFF", "Attempt", "SolveResult", "solve"]
