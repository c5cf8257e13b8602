"""Choosing a restraint weight by the free score, not by taste.

Short trial refinements over a range of weights (a scan on a log scale, then a golden-section search
in log-weight around the best), each scored by its best free score; optionally only among weights
whose restraint deviations stay within bounds (e.g. ``{"bond_rmsd": 0.02}``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError
from .problem import Problem
from .refiner import refine
from .result import RefinementResult
from .status import Status


@dataclass(slots=True)
class WeightTrial:
    """One trial refinement: its weight, best free and work score, deviation figures, feasibility."""

    weight: float
    free: float
    work: float
    figures: dict[str, float]
    feasible: bool
    status: str

    def to_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "free": self.free, "work": self.work,
                "feasible": self.feasible, "status": self.status, **self.figures}


@dataclass
class WeightChoice:
    """The chosen ``weight``, every trial (sorted by weight) and a sentence on how it was chosen."""

    weight: float
    trials: list[WeightTrial]
    message: str
    results: dict[float, RefinementResult] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "message": self.message,
                "trials": [t.to_dict() for t in self.trials]}


def choose_weight(
    make_problem: Callable[[float], Problem],
    *,
    bounds: tuple[float, float] = (1e-3, 1e3),
    n_grid: int = 7,
    n_golden: int = 6,
    max_deviation: Mapping[str, float] | None = None,
    max_cycles: int = 10,
    **refine_options: Any,
) -> WeightChoice:
    """Pick the weight ``w`` for which ``refine(make_problem(w))`` reaches the lowest free score.

    A golden-section search in log-weight between the grid neighbours of the best point then refines
    it: ``n_golden + 1`` more trials (the two inner points, then one per step); ``n_golden=0``: the
    grid alone.
    ``make_problem(w)`` builds a problem whose restraint (or data) weight is ``w``; what ``w`` weighs
    is the problem's business. Each trial runs at most ``max_cycles`` cycles. With ``max_deviation``,
    trials whose final figures exceed a bound are infeasible; if none is feasible the weight with the
    smallest relative excess is chosen and the message says so.
    """
    lo, hi = bounds
    if not (0 < lo < hi and math.isfinite(hi)):
        raise InputError(f"weight bounds must satisfy 0 < low < high, got {bounds}")
    if n_grid < 2:
        raise InputError(f"the weight scan needs at least 2 points, got {n_grid}")
    bounds_ = dict(max_deviation or {})
    trials: dict[float, WeightTrial] = {}
    results: dict[float, RefinementResult] = {}

    def trial(log_w: float) -> float:
        w = float(np.exp(log_w))
        key = round(log_w, 12)
        if key not in trials:
            res = refine(make_problem(w), max_cycles=max_cycles, **refine_options)
            if not res.history:  # its first check stopped the run: nothing was scored
                trials[key] = WeightTrial(w, math.nan, math.nan, {}, False, res.status.label)
                results[w] = res
                return math.inf
            best = res.best
            free = best.free if best.free is not None else best.work
            figures = {k: float(v) for k, v in best.figures.items() if k in bounds_}
            feasible = res.usable and all(figures.get(k, 0.0) <= b for k, b in bounds_.items())
            trials[key] = WeightTrial(w, float(free), float(best.work), dict(best.figures),
                                      feasible, res.status.label)
            results[w] = res
        t = trials[key]
        return t.free if t.feasible and math.isfinite(t.free) else math.inf

    grid = np.linspace(math.log(lo), math.log(hi), n_grid)
    values = [trial(g) for g in grid]
    i = int(np.argmin(values))
    if not math.isfinite(values[i]):
        ordered = sorted(trials.values(), key=lambda t: t.weight)
        # a trial that broke down has no deviation figures, hence no excess: it must not win
        sane = [t for t in ordered if _sane(t)]
        if not sane:
            return WeightChoice(ordered[0].weight, ordered,
                                "every trial refinement broke down (none reached a finite free score in a "
                                f"usable run); returned the lowest weight, {ordered[0].weight:.4g}, for "
                                "want of any", results)
        chosen = min(sane, key=lambda t: _excess(t, bounds_))
        return WeightChoice(chosen.weight, ordered,
                            "no weight kept the deviations within bounds; chose the one closest "
                            "to them", results)
    # golden-section search in log-weight between the grid neighbours of the best point
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, n_grid - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = (trial(c), trial(d)) if n_golden > 0 else (math.inf, math.inf)
    for _ in range(max(0, n_golden - 1)):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = trial(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = trial(d)
    feasible = [t for t in trials.values() if t.feasible and math.isfinite(t.free)]
    chosen = min(feasible, key=lambda t: t.free)
    ordered = sorted(trials.values(), key=lambda t: t.weight)
    message = (f"weight {chosen.weight:.4g} gave the lowest free score {chosen.free:.4g} "
               f"of {len(trials)} trial refinements")
    if bounds_:
        message += " within the deviation bounds " + ", ".join(f"{k} <= {v:g}"
                                                                for k, v in bounds_.items())
    return WeightChoice(chosen.weight, ordered, message, results)


def _sane(trial: WeightTrial) -> bool:
    """Whether the trial ran sanely to a finite free score (whatever its deviations)."""
    return Status[trial.status.upper()].usable and math.isfinite(trial.free)


def _excess(trial: WeightTrial, bounds: Mapping[str, float]) -> float:
    return sum(max(0.0, trial.figures.get(k, 0.0) / b - 1.0) for k, b in bounds.items() if b > 0)
