"""The loop: guess -> check -> correct -> repeat, with an honest stop.

Every cycle the engine scores the current model (work, free, restraints), records the scores, tests
the stop rules, and only then asks the problem for a correction. Cycle ``k``'s record is the model
after ``k`` corrections, so the returned model has always been checked.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .callbacks import Callback, as_callback
from .checkpoint import load_checkpoint, save_checkpoint
from .errors import InputError
from .problem import Problem, Scores, evaluate_restraints, relative_norm
from .result import Alarm, CycleRecord, RefinementResult
from .status import Status, StopRefinement
from .validation import OverfitMonitor


class Refiner:
    """Runs a :class:`~refinekit.core.problem.Problem` until a stop rule fires.

    Parameters
    ----------
    max_cycles:
        At most this many corrections.
    xtol:
        Converged when the relative correction (``problem.step_size``, by default
        ``||step|| / ||model||``) is at or below ``xtol``.
    stagnation:
        Stagnated when a correction is more than ``stagnation`` times the previous one (the
        corrections stopped shrinking). None (the default) turns the rule off: a damped
        least-squares step may grow before it shrinks, a fixed-point iteration may not.
    divergence:
        Diverged when the work score rises above ``divergence`` times its lowest value.
    patience, min_delta, rel_delta:
        The overfitting alarm (:class:`~refinekit.core.validation.OverfitMonitor`).
    stop_on_overfit:
        End the run when the alarm fires (status ``overfitting``); otherwise only record it.
    restore_best:
        Where the overfitting alarm fired, or the run diverged or broke down, return the best model
        by free score (by work score without a free set) rather than the last.
    callbacks:
        :class:`~refinekit.core.callbacks.Callback` objects or functions ``f(record)``; a true
        return value (or ``StopIteration``) stops the run with status ``callback``; a
        :class:`~refinekit.core.status.StopRefinement` it raises, with that exception's status.
    checkpoint:
        A path: the state is written there (atomically) after every ``checkpoint_every`` cycles;
        :meth:`run` with ``resume_from`` continues such a run to the same result.
    """

    def __init__(
        self,
        problem: Problem,
        *,
        max_cycles: int = 50,
        xtol: float = 1e-8,
        stagnation: float | None = None,
        divergence: float = 1e3,
        patience: int = 3,
        min_delta: float = 0.0,
        rel_delta: float = 1e-3,
        stop_on_overfit: bool = True,
        restore_best: bool = True,
        callbacks: Iterable[Any] = (),
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 1,
    ) -> None:
        if max_cycles < 0:
            raise InputError(f"max_cycles must be >= 0, got {max_cycles}")
        if not xtol >= 0:
            raise InputError(f"xtol must be >= 0, got {xtol}")
        if stagnation is not None and not stagnation > 0:
            raise InputError(f"stagnation ratio must be > 0, got {stagnation}")
        if not divergence > 1:
            raise InputError(f"divergence factor must be > 1, got {divergence}")
        self.problem = problem
        self.max_cycles = int(max_cycles)
        self.xtol = float(xtol)
        self.stagnation = stagnation
        self.divergence = float(divergence)
        self.monitor = OverfitMonitor(patience, min_delta, rel_delta)
        self.stop_on_overfit = stop_on_overfit
        self.restore_best = restore_best
        self.callbacks: list[Callback] = [as_callback(c) for c in callbacks]
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every = max(1, int(checkpoint_every))

    # ------------------------------------------------------------------------------------ run
    def run(self, resume_from: str | os.PathLike[str] | RefinementResult | None = None) -> RefinementResult:
        """Run the loop from the problem's initial model, or continue a run: from a checkpoint file, or
        from a finished result of the same problem (its last model is checked again as the same
        cycle, with the monitor replayed over the cycles before, so that it counts the cycles already
        run; the problem's own state is taken as it is)."""
        problem = self.problem
        step_size = getattr(problem, "step_size", relative_norm)
        is_finite = getattr(problem, "is_finite", None)
        restraints = getattr(problem, "restraints", ()) or ()

        if resume_from is not None:
            state = (self._continuation(resume_from) if isinstance(resume_from, RefinementResult)
                     else load_checkpoint(resume_from))
            x, cycle = state["x"], state["cycle"]
            history: list[CycleRecord] = state["history"]
            alarms: list[Alarm] = state["alarms"]
            best_x, lowest_work = state["best_x"], state["lowest_work"]
            last_step, prev_step = state["last_step"], state["prev_step"]
            self.monitor.load_state_dict(state["monitor"])
            if hasattr(problem, "load_state_dict") and state["problem"] is not None:
                problem.load_state_dict(state["problem"])
        else:
            self.monitor.reset()
            x, cycle = problem.initial(), 0
            history, alarms = [], []
            best_x, lowest_work = x, math.inf
            last_step = prev_step = None

        for cb in self.callbacks:
            cb.on_start(problem, self.max_cycles)

        status: Status | None = None
        message = ""
        checked_x = None
        tick = time.perf_counter()
        while True:
            # ---- check
            try:
                scores = problem.check(x)
            except StopRefinement as stop:
                status, message = stop.status, stop.message
                break
            if scores.restraint is None and restraints:
                penalty, stats = evaluate_restraints(restraints, x)
                scores.restraint = penalty
                scores.figures = {**stats, **scores.figures}
            now = time.perf_counter()
            record = CycleRecord(cycle, scores.work, scores.free, last_step, now - tick,
                                 scores.restraint, scores.figures)
            tick = now
            history.append(record)
            checked_x = x

            # ---- stop?
            status, message = self._stop_rule(record, scores, x, is_finite, lowest_work, prev_step)
            if status is None or status is Status.CONVERGED:
                alarm = self.monitor.update(cycle, scores.work, scores.free)
                if self.monitor.best_cycle == cycle:
                    best_x = x
                lowest_work = min(lowest_work, scores.work)
                if alarm is not None:
                    alarms.append(alarm)
                    if status is None and self.stop_on_overfit:
                        status = Status.OVERFITTING
                        message = f"overfitting: {alarm.message}"
            stop_status, stop_message = self._ask_callbacks(record, x)
            if status is None and stop_status is not None:
                status, message = stop_status, stop_message
            if status is None and cycle >= self.max_cycles:
                status = Status.MAX_CYCLES
                message = f"stopped after the maximum of {self.max_cycles} cycles without converging"
            if status is not None:
                break

            # ---- correct
            try:
                step = problem.correct(x, scores)
            except StopRefinement as stop:
                status, message = stop.status, stop.message
                break
            size = float(step_size(x, step))
            if not math.isfinite(size):
                status = Status.NON_FINITE
                message = f"non-finite correction at cycle {cycle + 1}"
                break
            x = problem.apply(x, step)
            prev_step, last_step = last_step, size
            cycle += 1
            if self.checkpoint is not None and cycle % self.checkpoint_every == 0:
                save_checkpoint(self.checkpoint, {
                    "x": x, "cycle": cycle, "history": history, "alarms": alarms,
                    "best_x": best_x, "lowest_work": lowest_work, "last_step": last_step,
                    "prev_step": prev_step, "monitor": self.monitor.state_dict(),
                    "problem": problem.state_dict() if hasattr(problem, "state_dict") else {},
                })

        # a check that stopped the run (StopRefinement) leaves its model unrecorded: the last model
        # with a record is the one to return
        last_checked = x if checked_x is None else checked_x
        best_cycle = self.monitor.best_cycle
        if best_cycle is None:  # not even the starting model was finite
            best_cycle, best_x = max(len(history) - 1, 0), last_checked
        # Keep the best model where the free set says the later ones are worse (the alarm) or where the
        # run broke down; otherwise the last model, which is what the loop converged to.
        restore = self.restore_best and (bool(alarms) or not status.usable)
        kept_cycle, returned = (best_cycle, best_x) if restore else (max(len(history) - 1, 0), last_checked)
        if restore and history and kept_cycle != len(history) - 1:
            message += f"; kept the model of cycle {kept_cycle}"
        result = RefinementResult(
            x=returned, status=status, message=message, n_cycles=cycle, history=history,
            best_cycle=best_cycle, kept_cycle=kept_cycle, alarms=alarms, x_last=x, x_best=best_x,
        )
        for cb in self.callbacks:
            cb.on_end(result)
        return result

    def _continuation(self, result: RefinementResult) -> dict[str, Any]:
        """The state just before ``result``'s last check, rebuilt from its history."""
        if not result.history:
            raise InputError("cannot continue a run that checked no model")
        last = result.history[-1]
        # a check that stopped the run (StopRefinement) left x_last, the model of cycle n_cycles,
        # unchecked: it is checked now as that cycle after every recorded one (the size of the
        # correction that made it was not kept: its record has no step)
        unchecked = result.n_cycles > last.cycle
        before = result.history if unchecked else result.history[:-1]
        monitor = OverfitMonitor(self.monitor.patience, self.monitor.min_delta, self.monitor.rel_delta)
        for record in before:
            monitor.update(record.cycle, record.work, record.free)
        state = {"x": result.x_last, "history": list(before), "monitor": monitor.state_dict(),
                 "lowest_work": min((r.work for r in before), default=math.inf), "problem": None}
        if unchecked:
            return {**state, "cycle": result.n_cycles, "alarms": list(result.alarms),
                    "best_x": result.x_best, "last_step": None, "prev_step": last.step}
        # the best model before the last cycle; if the last cycle was the best, its re-check makes it so
        best_x = result.x_best if result.best_cycle < last.cycle else result.x_last
        return {
            **state, "cycle": last.cycle, "best_x": best_x,
            "alarms": [a for a in result.alarms if a.cycle is not None and a.cycle < last.cycle],
            "last_step": last.step, "prev_step": before[-1].step if before else None,
        }

    # ---------------------------------------------------------------------------- stop rules
    def _stop_rule(
        self, record: CycleRecord, scores: Scores, x: Any, is_finite: Any, lowest_work: float,
        prev_step: float | None,
    ) -> tuple[Status | None, str]:
        if not scores.is_finite():
            return Status.NON_FINITE, f"non-finite score at cycle {record.cycle}"
        if is_finite is not None and not is_finite(x):
            return Status.NON_FINITE, f"non-finite model at cycle {record.cycle}"
        step = record.step
        if step is not None and step <= self.xtol:
            return Status.CONVERGED, (
                f"converged: relative correction {step:.3g} <= tolerance {self.xtol:.3g}"
            )
        if lowest_work > 0 and scores.work > self.divergence * lowest_work:
            return Status.DIVERGED, (
                f"diverged: work score {scores.work:.4g} rose above {self.divergence:g} x its "
                f"lowest value {lowest_work:.4g}"
            )
        if (self.stagnation is not None and step is not None and prev_step is not None
                and step > self.stagnation * prev_step):
            return Status.STAGNATED, (
                f"stagnated: correction {step:.3g} is more than {self.stagnation:g} x the "
                f"previous one ({prev_step:.3g})"
            )
        return None, ""

    def _ask_callbacks(self, record: CycleRecord, x: Any) -> tuple[Status | None, str]:
        """Show every callback the record; the first that asks to stop names the status and reason
        (``callback``, or the status of a :class:`StopRefinement` it raised)."""
        status: Status | None = None
        message = ""
        for cb in self.callbacks:
            try:
                stop = cb.on_cycle(record, x)
            except StopIteration:
                stop = True
            except StopRefinement as raised:  # a callback may end the run as a problem can
                if status is None:
                    status, message = raised.status, raised.message
                continue
            if stop and status is None:
                name = getattr(cb, "name", type(cb).__name__)
                status, message = Status.CALLBACK, f"stopped by callback {name} at cycle {record.cycle}"
        return status, message


def refine(problem: Problem, **options: Any) -> RefinementResult:
    """Run ``problem`` with a :class:`Refiner` made from ``options``; see :class:`Refiner`.

    >>> import numpy as np
    >>> from refinekit.core import RefinementProblem, Scores, refine
    >>> class Sqrt2(RefinementProblem):          # Newton's iteration for x**2 = 2
    ...     def initial(self): return np.array([1.0])
    ...     def check(self, x): return Scores(work=abs(float(x[0] ** 2 - 2)))
    ...     def correct(self, x, scores): return -(x ** 2 - 2) / (2 * x)
    >>> result = refine(Sqrt2(), xtol=1e-15)
    >>> result.status.label, round(float(result.x[0]), 12)
    ('converged', 1.414213562373)
    """
    resume_from = options.pop("resume_from", None)
    return Refiner(problem, **options).run(resume_from=resume_from)
