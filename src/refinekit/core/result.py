"""What a refinement returns: per-cycle records, alarms and one result object.

The JSON form (:meth:`RefinementResult.to_dict`) is a contract other tools rely on: top-level
``status``, ``success``, ``message``, ``n_cycles``, ``best_cycle``, ``kept_cycle``, ``alarms``
(``kind``, ``cycle``, ``message``), ``history`` (one record per cycle with ``work``, ``free``,
``step``, ``time`` and the domain's figures) and the domain's final figures at top level.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .status import Status


@dataclass(slots=True)
class CycleRecord:
    """Statistics of the model after ``cycle`` corrections (cycle 0 is the starting model).

    ``step`` is the relative size of the correction that produced this model (None at cycle 0);
    ``time`` the wall time of the cycle in seconds (check + correct + apply).
    """

    cycle: int
    work: float
    free: float | None
    step: float | None
    time: float
    restraint: float | None = None
    figures: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cycle": self.cycle,
            "work": self.work,
            "free": self.free,
            "step": self.step,
            "time": self.time,
            "restraint": self.restraint,
        }
        out.update(self.figures)
        return out


@dataclass(slots=True)
class Alarm:
    """Something the user must know about the result: ``kind`` (e.g. ``overfitting``), when, and why."""

    kind: str
    cycle: int | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "cycle": self.cycle, "message": self.message}


@dataclass
class RefinementResult:
    """The outcome of :func:`refinekit.core.refine`, with the names scipy users know.

    ``best_cycle`` is the cycle with the lowest free score (work score without a free set). ``x`` is
    the returned model, that of ``kept_cycle``: the best cycle where the overfitting alarm fired or the
    run broke down (and keep-best is on), otherwise the last cycle. ``x_last`` is always the last model
    reached, ``x_best`` the model of ``best_cycle``. ``figures`` holds extra domain figures of the
    returned model; a domain may add to it.
    """

    x: Any
    status: Status
    message: str
    n_cycles: int
    history: list[CycleRecord]
    best_cycle: int
    kept_cycle: int = -1
    alarms: list[Alarm] = field(default_factory=list)
    x_last: Any = None
    x_best: Any = None
    figures: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kept_cycle < 0:
            self.kept_cycle = max(len(self.history) - 1, 0)

    @property
    def success(self) -> bool:
        return self.status.success

    @property
    def usable(self) -> bool:
        """True where ``x`` can be used: finite, from a run that neither diverged nor broke down."""
        return self.status.usable

    @property
    def model(self) -> Any:
        return self.x

    @property
    def best(self) -> CycleRecord:
        """The record with the lowest free score."""
        return self.history[self.best_cycle]

    @property
    def kept(self) -> CycleRecord:
        """The record of the returned model ``x``."""
        return self.history[self.kept_cycle]

    @property
    def last(self) -> CycleRecord:
        return self.history[-1]

    # ------------------------------------------------------------------ output
    def _kept_or_none(self) -> CycleRecord | None:
        # a run whose first check stopped it (StopRefinement) has no record at all
        return self.history[self.kept_cycle] if self.history else None

    def to_dict(self) -> dict[str, Any]:
        kept = self._kept_or_none()
        out: dict[str, Any] = {
            "status": self.status.label,
            "success": self.success,
            "message": self.message,
            "n_cycles": self.n_cycles,
            "best_cycle": self.best_cycle,
            "kept_cycle": self.kept_cycle,
            "work": kept.work if kept else None,
            "free": kept.free if kept else None,
            "alarms": [a.to_dict() for a in self.alarms],
        }
        out.update(kept.figures if kept else {})
        out.update(self.figures)
        out["history"] = [r.to_dict() for r in self.history]
        return out

    def to_json(self, **kwargs: Any) -> str:
        """JSON text; non-finite numbers become null so that any JSON reader accepts it."""
        kwargs.setdefault("indent", 2)
        return json.dumps(_jsonable(self.to_dict()), allow_nan=False, **kwargs)

    def report(self, full: bool = False) -> str:
        """A brief text report (Ceres' BriefReport); ``full=True`` adds the per-cycle table."""
        kept = self._kept_or_none()
        lines = [
            f"status      : {self.status.label} ({'success' if self.success else 'no success'})",
            f"message     : {self.message}",
            f"cycles      : {self.n_cycles}",
        ]
        if kept is None:
            lines.append("kept cycle  : - (no model was checked)")
        else:
            lines += [
                f"kept cycle  : {self.kept_cycle} (lowest free score at cycle {self.best_cycle})",
                f"work score  : {_fmt(kept.work)}",
                f"free score  : {_fmt(kept.free)}",
            ]
        for key, value in {**(kept.figures if kept else {}), **self.figures}.items():
            if isinstance(value, int | float | np.floating | np.integer):
                lines.append(f"{key:<12}: {_fmt(value)}")
        for alarm in self.alarms:
            where = f" at cycle {alarm.cycle}" if alarm.cycle is not None else ""
            lines.append(f"ALARM       : {alarm.kind}{where}: {alarm.message}")
        if full:
            lines.append("")
            lines.append(history_table(self.history, self.kept_cycle))
        return "\n".join(lines)

    def plot(self, ax: Any = None, *, log: bool | None = None, title: str | None = None) -> Any:
        """Work and free score per cycle, with the kept cycle and the alarms marked (matplotlib)."""
        from .plotting import plot_history

        return plot_history(self, ax=ax, log=log, title=title)


def history_table(history: list[CycleRecord], kept_cycle: int | None = None) -> str:
    keys: list[str] = []
    for record in history:
        keys += [k for k in record.figures if k not in keys]
    header = ["cycle", "work", "free", "step", "time/s", "restraint", *keys]
    rows = [header]
    for r in history:
        mark = "*" if r.cycle == kept_cycle else " "
        rows.append(
            [f"{r.cycle}{mark}", _fmt(r.work), _fmt(r.free), _fmt(r.step), f"{r.time:.3g}",
             _fmt(r.restraint), *(_fmt(r.figures.get(k)) for k in keys)]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | np.integer):
        return str(int(value))
    value = float(value)
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.6g}"
    return f"{value:.4e}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Status):
        return value.label
    return value


def jsonable(value: Any) -> Any:
    """Make ``value`` JSON-safe: numpy scalars and arrays to Python, non-finite floats to None."""
    return _jsonable(value)
