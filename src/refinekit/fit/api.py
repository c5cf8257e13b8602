"""``refinekit.fit.fit``: the refinement loop for any parametric model a user brings."""

from __future__ import annotations

import inspect
import keyword
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core import FreeFlags, HoldOut, InputError, RefinementResult, Refiner, choose_weight
from ..core.result import _fmt
from .expression import CONSTANTS, FUNCTIONS, Expression
from .parameters import Parameters
from .problem import CurveFitProblem

ModelFunction = Callable[..., Any]


@dataclass
class FitResult(RefinementResult):
    """A :class:`~refinekit.core.RefinementResult` plus what a fit reports (lmfit's names).

    ``params`` holds the fitted values with standard errors, ``covar`` their covariance (varied
    parameters, in order), ``free_flags`` the free set used (None when every point was fitted).
    """

    params: Parameters = field(default_factory=Parameters)
    covar: np.ndarray | None = None
    free_flags: FreeFlags | None = None
    ndata: int = 0
    nfree: int = 0
    nvarys: int = 0
    model: str = ""
    stderr_note: str = ""  # why the standard errors are undefined (n/a), where they are

    @property
    def chisqr(self) -> float:
        return float(self.kept.figures["chisqr"])

    @property
    def redchi(self) -> float:
        return float(self.kept.figures["redchi"])

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        history = out.pop("history")
        out["model"] = self.model
        out["ndata"], out["nfree"], out["nvarys"] = self.ndata, self.nfree, self.nvarys
        out["parameters"] = self.params.to_dict()
        out["history"] = history
        return out

    def report(self, full: bool = False) -> str:
        lines = [f"model       : {self.model}" if self.model else "",
                 f"data points : {self.ndata} ({self.nfree} free)", RefinementResult.report(self, full)]
        lines.append("parameters  :")
        width = max((len(n) for n in self.params), default=4)
        for name, p in self.params.items():
            err = "fixed" if not p.vary else ("n/a" if p.stderr is None else f"+/- {_fmt(p.stderr)}")
            rel = ""
            if p.vary and p.stderr is not None and p.value != 0:
                rel = f" ({100 * abs(p.stderr / p.value):.3g}%)"
            lines.append(f"  {name:<{width}} = {p.value: .10g}  {err}{rel}")
        if self.stderr_note:
            lines.append(f"  (n/a: {self.stderr_note})")
        return "\n".join(line for line in lines if line)

    fit_report = report


def fit(
    model: str | ModelFunction,
    params: Parameters | Mapping[str, float],
    data: Mapping[str, Any] | None = None,
    y: Any = None,
    *,
    x: Any = None,
    sigma: Any = None,
    free_fraction: float = 0.05,
    seed: int | None = 0,
    free_flags: FreeFlags | None = None,
    prior_weight: float | str = 1.0,
    precision: str = "double",
    geodesic: bool = False,
    initial_damping: float = 1e-3,
    restarts: int = 2,
    max_cycles: int = 20000,
    xtol: float = 1e-12,
    ftol: float = 1e-15,
    gtol: float = 1e-15,
    **refine_options: Any,
) -> FitResult:
    """Fit ``model`` to data by damped least squares, with a free set held out.

    ``model`` is an expression (``"b1*(1-exp(-b2*x))"``, names being parameters or columns of
    ``data``) or a function ``f(x, **params)``. ``y`` is the response (or the name of a column of
    ``data``; by default the column ``"y"``). ``sigma`` gives per-point uncertainties (weights
    ``1/sigma**2``). ``free_fraction`` of the points (default 5 %, seeded) never guide a correction and
    give the free score; ``free_fraction=0`` fits every point. ``free_flags`` reuses a saved free set.

    ``prior_weight`` weighs the priors against the data; ``"auto"`` chooses it by the free score
    (:func:`refinekit.core.choose_weight`: a scan of short fits over 1e-4..1e4, then a golden-section
    search), reported as ``weight_choice``.

    ``precision="extended"`` computes the model and the residuals in long double (the corrections
    stay in double): for zero-residual problems whose sum of squares is below double's resolution.
    Where a run stops at a degenerate point (a parameter no longer determined, as when an exponential
    rate runs off to infinity), the fit restarts from the starting values with 1000 times heavier
    initial damping, up to ``restarts`` times, and keeps the best determined result.

    >>> import numpy as np
    >>> from refinekit.fit import fit
    >>> t = np.linspace(0, 4, 40)
    >>> y = 3.0 * np.exp(-1.3 * t) + 0.5
    >>> res = fit("a*exp(-k*t) + c", {"a": 1, "k": 1, "c": 0}, {"t": t}, y, free_fraction=0)
    >>> res.status.label, [round(p.value, 6) for p in res.params.values()]
    ('converged', [3.0, 1.3, 0.5])
    """
    params = params if isinstance(params, Parameters) else _as_parameters(params)
    if precision not in ("double", "extended"):
        raise InputError(f"precision must be 'double' or 'extended', got {precision!r}")
    if not 0 <= free_fraction < 1:  # a negative or NaN fraction silently fitted every point
        raise InputError(f"free_fraction must be in [0, 1), got {free_fraction!r}")
    dtype = np.longdouble if precision == "extended" else np.float64
    if data is not None and not isinstance(data, Mapping):
        raise InputError("data must be a mapping of column names to arrays")
    columns = {k: _real_array(v, f"data column {k!r}", dtype) for k, v in (data or {}).items()}
    y_name = "y"
    if y is None or isinstance(y, str):
        y_name = y or "y"
        if y_name not in columns:
            raise InputError(f"no response column {y_name!r} in the data (columns: {', '.join(columns)})")
        y_arr = columns.pop(y_name)
    else:
        y_arr = _real_array(y, "the response", dtype)
    if y_arr.ndim != 1 or y_arr.size == 0:
        raise InputError("the response must be a non-empty one-dimensional array")
    n = y_arr.size
    for name, col in columns.items():
        if col.shape != (n,):
            raise InputError(f"column {name!r} has shape {col.shape}, the response has {n} points")
    if not np.all(np.isfinite(y_arr)):
        raise InputError("the response contains NaN or Inf")
    sigma_arr = None
    if sigma is not None:
        sigma_arr = _real_array(sigma, "sigma", np.float64)
        if sigma_arr.shape not in ((), (1,), (n,)):  # broadcast_to raised numpy's ValueError
            raise InputError(f"sigma has shape {sigma_arr.shape}: give one value or one per point ({n})")
        sigma_arr = np.broadcast_to(sigma_arr, (n,)).copy()
        if not np.all(np.isfinite(sigma_arr) & (sigma_arr > 0)):
            raise InputError("sigma must be finite and positive at every point")

    predict, jacobian, text = _compile(model, params, columns, x, n, dtype)
    names = params.varied
    if not names:
        raise InputError("no parameter is varied: nothing to fit")

    if free_flags is None and free_fraction > 0:
        free_flags = HoldOut(free_fraction, seed).flags(n)
    elif free_flags is not None and len(free_flags) != n:
        raise InputError(f"free flags are for {len(free_flags)} points but the data have {n}")
    work = free_flags.work if free_flags is not None else np.ones(n, dtype=bool)
    free = free_flags.free if free_flags is not None else None
    if int(work.sum()) < len(names):
        raise InputError(f"{int(work.sum())} working points cannot determine {len(names)} parameters")

    prior_idx = [i for i, nm in enumerate(names) if params[nm].prior is not None]
    priors = (np.array(prior_idx, dtype=int),
              np.array([params[names[i]].prior.mean for i in prior_idx]),
              np.array([params[names[i]].prior.sigma for i in prior_idx])) if prior_idx else None
    lower, upper = params.bounds()
    resume_from = refine_options.pop("resume_from", None)
    checkpoint = refine_options.pop("checkpoint", None)

    def make_problem(damping: float, weight: float) -> CurveFitProblem:
        return CurveFitProblem(
            predict, jacobian, y_arr, params.vector(), sigma=sigma_arr, work=work, free=free,
            lower=lower, upper=upper, priors=priors, prior_weight=weight, geodesic=geodesic,
            ftol=ftol, gtol=gtol, initial_damping=damping,
        )

    weight_choice = None
    if prior_weight == "auto":
        if priors is None or free is None:
            raise InputError("prior_weight='auto' needs at least one prior and a free set")
        weight_choice = choose_weight(lambda w: make_problem(initial_damping, w), bounds=(1e-4, 1e4),
                                      max_cycles=min(max_cycles, 200), xtol=xtol)
        prior_weight = weight_choice.weight
    elif isinstance(prior_weight, str) or not 0 <= prior_weight < math.inf:  # inf: every score non-finite
        raise InputError(f"prior_weight must be a finite number >= 0 or 'auto', got {prior_weight!r}")

    def run(attempt: int) -> tuple[RefinementResult, CurveFitProblem]:
        problem = make_problem(initial_damping * 1e3**attempt, float(prior_weight))
        if not math.isfinite(problem.check(problem.x0).work):
            raise InputError("the model is not finite at the starting values: choose other starting values")
        refiner = Refiner(problem, max_cycles=max_cycles, xtol=xtol,
                          checkpoint=_attempt_checkpoint(checkpoint, attempt), **refine_options)
        return refiner.run(resume_from=resume_from), problem

    runs = []
    for attempt in range(max(0, restarts) + 1):
        result, problem = run(attempt)
        determined = result.usable and not problem.is_degenerate(result.x)
        runs.append((not determined, not result.usable, result.kept.work, attempt, result, problem))
        if determined or resume_from is not None:
            break
    *_, attempt, result, problem = min(runs, key=lambda r: r[:4])
    if checkpoint is not None:
        _keep_checkpoint_of(checkpoint, attempt, len(runs))
    if attempt > 0:
        result.message += (f" (restart {attempt}: the first run stopped where a parameter was not "
                           f"determined; restarted with initial damping {initial_damping * 1e3**attempt:g})")
    result.figures["restarts"] = len(runs) - 1
    if priors is not None:
        result.figures["prior_weight"] = float(prior_weight)
    if weight_choice is not None:
        result.figures["weight_choice"] = weight_choice.to_dict()
    covar = problem.covariance(result.x) if result.usable else None
    stderr = np.sqrt(np.diag(covar)) if covar is not None else None
    fitted = params.updated(np.asarray(result.x, dtype=float), stderr)
    note = ""
    if covar is None:
        note = "the fit did not end with a usable result"
    elif not np.all(np.isfinite(stderr)):  # say why rather than print a bare n/a
        note = ("no degrees of freedom left: as many parameters as working points"
                if problem.n_work <= len(names) else
                "the Jacobian is rank-deficient (or not finite) at the fit: not every parameter is "
                "determined by the data")
    return FitResult(
        **{f: getattr(result, f) for f in RefinementResult.__dataclass_fields__},
        params=fitted, covar=covar, free_flags=free_flags, ndata=n,
        nfree=int(free.sum()) if free is not None else 0, nvarys=len(names), model=text,
        stderr_note=note,
    )


def _attempt_checkpoint(checkpoint: Any, attempt: int) -> Path | None:
    """Where restart ``attempt`` writes its checkpoint: the caller's path for the first run, a sibling
    for each restart (the first run's state must survive a restart that turns out worse)."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    return path if attempt == 0 else path.with_name(f"{path.name}.restart{attempt}")


def _keep_checkpoint_of(checkpoint: Any, chosen: int, attempts: int) -> None:
    """Leave at the caller's path the checkpoint of the run whose result is returned (so that resuming
    from it continues that run), and remove the restarts' own files."""
    path = Path(checkpoint)
    for attempt in range(1, attempts):
        own = _attempt_checkpoint(path, attempt)
        if attempt != chosen:
            own.unlink(missing_ok=True)
        elif own.exists():
            os.replace(own, path)  # same folder: atomic
        else:  # the chosen restart wrote none: no checkpoint rather than another run's
            path.unlink(missing_ok=True)


def _as_parameters(values: Mapping[str, float]) -> Parameters:
    if not isinstance(values, Mapping):
        raise InputError("params must be Parameters or a mapping of names to starting values")
    params = Parameters()
    for name, value in values.items():
        params.add(name, value)
    return params


def _real_array(value: Any, what: str, dtype: Any) -> np.ndarray:
    """``value`` as a real array of ``dtype``; complex input is refused (numpy would drop the imaginary
    part with a mere warning), as is anything not numeric."""
    try:
        arr = np.asarray(value)
        if not np.iscomplexobj(arr):
            return arr.astype(dtype)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} is not numeric ({exc})") from None
    raise InputError(f"{what} is complex: a fit needs real numbers")


def _compile(model: str | ModelFunction, params: Parameters, columns: dict[str, np.ndarray],
             x: Any, n: int, dtype: Any) -> tuple[Callable, Callable, str]:
    """Prediction and Jacobian functions of the varied-parameter vector (``n`` points)."""
    names = params.varied
    fixed = params.values_dict()
    if isinstance(model, str):
        expr = Expression(model)
        if x is not None:  # the expression's column x; ignoring x= silently fitted another x
            if "x" in columns:
                raise InputError("x is given both as x= and as a data column: give it once")
            columns = {**columns, "x": _real_array(x, "x", dtype)}
            if columns["x"].shape != (n,):
                raise InputError(f"x has shape {columns['x'].shape}, the response has {n} points")
        reserved = sorted(nm for nm in params if nm in FUNCTIONS or nm in CONSTANTS or keyword.iskeyword(nm))
        if reserved:  # the expression reads these as its functions/constants, never as the parameter
            raise InputError(f"parameter name(s) {', '.join(reserved)} are reserved in model expressions "
                             "(functions, constants, keywords): rename them")
        clash = sorted(set(params) & set(columns))
        if clash:  # the parameter silently won over the column
            raise InputError(f"name(s) {', '.join(clash)} are both parameters and data columns")
        shadowed = sorted(expr.constants & set(columns))
        if shadowed:  # the model would read the constant, never the column
            raise InputError(f"data column(s) {', '.join(shadowed)} share a name with a constant the "
                             "model reads as such: rename the column")
        unknown = sorted(expr.names - set(params) - set(columns))
        if unknown:
            raise InputError(f"unknown name(s) in the model: {', '.join(unknown)} "
                             f"(parameters: {', '.join(params) or 'none'}; "
                             f"data columns: {', '.join(columns) or 'none'})")
        unused = sorted(set(params) - expr.names)
        if unused:
            raise InputError(f"parameter(s) not in the model: {', '.join(unused)}")

        columns64 = {k: np.asarray(v, dtype=float) for k, v in columns.items()}

        def evaluate(v: np.ndarray, cols: dict[str, np.ndarray]) -> np.ndarray:
            out = np.asarray(expr({**cols, **fixed, **dict(zip(names, v, strict=True))}))
            # a model without data columns (a constant) predicts one value for every point
            return np.broadcast_to(out, (n,)) if out.ndim == 0 else out

        def predict(v: np.ndarray) -> np.ndarray:
            return evaluate(v, columns)

        def predict64(v: np.ndarray) -> np.ndarray:
            return evaluate(v, columns64)

        return predict, _complex_step(predict64, len(names)), expr.text
    if not callable(model):
        raise InputError("the model must be an expression string or a callable f(x, **params)")
    signature = inspect.signature(model)
    missing = [nm for nm in params if nm not in signature.parameters]
    if missing and not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        raise InputError(f"parameter(s) {', '.join(missing)} are not arguments of {model.__name__}()")
    if x is not None and columns:  # one of them would be silently ignored
        raise InputError(f"x is given both as x= and as data column(s) {', '.join(columns)}: give it once")
    xs = x if x is not None else (columns if columns else None)
    name = getattr(model, "__name__", "model")

    def predict_callable(v: np.ndarray) -> np.ndarray:
        out = np.asarray(model(xs, **{**fixed, **dict(zip(names, v, strict=True))}))
        if out.dtype.kind == "c":  # the cast to real would drop the imaginary part with a mere warning
            raise InputError(f"{name}() returned complex values")
        if out.dtype.kind not in "biuf":
            raise InputError(f"{name}() returned {out.dtype} values, not real numbers")
        # long double stays long double: precision="extended" must not be cut back to double here
        out = out.astype(np.result_type(out.dtype, np.float64), copy=False)
        if out.ndim == 0:  # a constant model predicts one value for every point, as an expression does
            return np.broadcast_to(out, (n,))
        if out.shape != (n,):
            raise InputError(f"{name}() returned shape {out.shape} for {n} data points")
        return out

    return predict_callable, _central_difference(predict_callable), name


def _complex_step(predict: Callable[[np.ndarray], np.ndarray], p: int) -> Callable:
    """Jacobian by the complex step: exact to rounding, no subtraction error, no step to tune."""

    def jacobian(v: np.ndarray) -> np.ndarray:
        cols = []
        for j in range(p):
            h = 1e-30 * max(1.0, abs(float(v[j])))
            vc = np.asarray(v, dtype=complex)
            vc[j] += 1j * h
            cols.append(np.imag(predict(vc)) / h)
        return np.column_stack(cols)

    return jacobian


def _central_difference(predict: Callable[[np.ndarray], np.ndarray]) -> Callable:
    def jacobian(v: np.ndarray) -> np.ndarray:
        cols = []
        for j in range(v.size):
            h = np.cbrt(np.finfo(float).eps) * max(1.0, abs(float(v[j])))
            up, down = v.copy(), v.copy()
            up[j] += h
            down[j] -= h
            cols.append((predict(up) - predict(down)) / (2 * h))
        return np.column_stack(cols)

    return jacobian


def fit_nist(problem: Any, start: int = 1, **options: Any) -> FitResult:
    """Fit a :class:`~refinekit.fit.io.NistProblem` from its start 1 or 2, fitting every point."""
    data = dict(problem.data)
    y = data.pop("y")
    if problem.response == "log(y)":
        y = np.log(y)
    options.setdefault("free_fraction", 0.0)
    return fit(problem.model, problem.starts[start - 1], data, y, **options)


def parameter_names(expression: str, columns: Sequence[str]) -> list[str]:
    """Names in ``expression`` that are not data columns: the parameters it needs."""
    return sorted(Expression(expression).names - set(columns))
