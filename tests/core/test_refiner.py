"""The loop and its stop rules, on small problems whose behaviour is known exactly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from refinekit.core import (
    Callback,
    InputError,
    RefinementProblem,
    Refiner,
    Scores,
    Status,
    StopRefinement,
    refine,
)


class Newton(RefinementProblem):
    """Newton's iteration for x**2 = a: quadratic convergence, known answer sqrt(a)."""

    def __init__(self, a: float = 2.0, x0: float = 1.0) -> None:
        self.a, self.x0 = a, x0

    def initial(self):
        return np.array([self.x0])

    def check(self, x):
        return Scores(work=abs(float(x[0] ** 2 - self.a)))

    def correct(self, x, scores):
        return -(x**2 - self.a) / (2 * x)


class Scripted(RefinementProblem):
    """Work and free scores read from lists, one per cycle; the model is the cycle number."""

    def __init__(self, work, free=None, steps=None):
        self.work, self.free = list(work), free
        self.steps = steps

    def initial(self):
        return np.array([0.0])

    def check(self, x):
        k = int(x[0])
        return Scores(work=self.work[k], free=None if self.free is None else self.free[k])

    def correct(self, x, scores):
        return np.array([1.0])

    def step_size(self, x, step):
        return 1.0 if self.steps is None else self.steps[int(x[0]) + 1]


def test_newton_converges_to_the_known_root_and_records_every_cycle():
    result = refine(Newton(2.0), xtol=1e-15)
    assert result.status is Status.CONVERGED and result.success and result.usable
    assert result.x[0] == pytest.approx(math.sqrt(2), rel=1e-15)
    assert len(result.history) == result.n_cycles + 1
    assert result.history[0].step is None and result.history[0].cycle == 0
    assert all(r.step is not None and r.time >= 0 for r in result.history[1:])
    # quadratic convergence: each correction is far smaller than the previous one
    steps = [r.step for r in result.history[1:4]]
    assert steps[1] < steps[0] ** 1.5 and steps[2] < steps[1] ** 1.5


def test_max_cycles_is_not_success_but_usable():
    result = refine(Newton(2.0, x0=100.0), max_cycles=2)
    assert result.status is Status.MAX_CYCLES
    assert not result.success and result.usable
    assert result.n_cycles == 2 and len(result.history) == 3
    assert "maximum of 2 cycles" in result.message


def test_non_finite_correction_is_caught_and_the_last_finite_model_returned():
    class NanAtThree(Newton):
        def correct(self, x, scores):
            return np.array([np.nan]) if len(self.seen) == 3 else super().correct(x, scores)

        def check(self, x):
            self.seen.append(float(x[0]))
            return super().check(x)

    problem = NanAtThree(2.0, x0=10.0)
    problem.seen = []
    result = refine(problem, xtol=0)
    assert result.status is Status.NON_FINITE
    assert not result.success and not result.usable
    assert np.all(np.isfinite(result.x)) and result.x[0] == problem.seen[-1]
    assert "non-finite" in result.message


def test_non_finite_score_is_caught_every_cycle():
    result = refine(Scripted([3.0, 2.0, math.nan, 1.0]), max_cycles=10, xtol=0)
    assert result.status is Status.NON_FINITE and result.n_cycles == 2
    assert result.best_cycle == 1 and result.x[0] == 1.0


def test_divergence():
    result = refine(Scripted([1.0, 0.5, 2.0, 800.0, 1e9]), max_cycles=10, xtol=0, divergence=1e3)
    assert result.status is Status.DIVERGED and result.n_cycles == 3  # 800 > 1e3 x 0.5
    assert not result.usable and result.best_cycle == 1


def test_stagnation_when_corrections_stop_shrinking():
    steps = [None, 1e-1, 1e-2, 1e-3, 0.9e-3, 1e-4]
    result = refine(Scripted([5, 4, 3, 2, 1, 0.5], steps=steps), max_cycles=5, xtol=0, stagnation=0.5)
    assert result.status is Status.STAGNATED and result.n_cycles == 4
    assert "0.0009" in result.message and not result.success


def test_stagnation_rule_is_off_by_default():
    steps = [None, 1e-1, 1e-2, 1e-3, 0.9e-3, 1e-4]
    result = refine(Scripted([5, 4, 3, 2, 1, 0.5], steps=steps), max_cycles=5, xtol=0)
    assert result.status is Status.MAX_CYCLES


def test_problem_can_stop_the_run_with_its_own_status():
    class Stops(Newton):
        def correct(self, x, scores):
            raise StopRefinement(Status.CONVERGED, "the problem knows it is done")

    result = refine(Stops())
    assert result.status is Status.CONVERGED and result.message == "the problem knows it is done"
    assert result.n_cycles == 0


@pytest.mark.parametrize("how", ["return", "raise"])
def test_a_callback_can_stop_the_run(how):
    seen = []

    def stop_at_two(record):
        seen.append(record.cycle)
        if record.cycle == 2:
            if how == "raise":
                raise StopIteration
            return True
        return None

    result = refine(Newton(2.0, x0=50.0), callbacks=[stop_at_two], xtol=0)
    assert result.status is Status.CALLBACK and result.n_cycles == 2
    assert seen == [0, 1, 2] and "stop_at_two" in result.message and result.usable


def test_callback_objects_see_start_every_cycle_and_end():
    class Recorder(Callback):
        def __init__(self):
            self.events = []

        def on_start(self, problem, max_cycles):
            self.events.append(("start", max_cycles))

        def on_cycle(self, record, model):
            self.events.append(("cycle", record.cycle, float(model[0])))

        def on_end(self, result):
            self.events.append(("end", result.status.label))

    rec = Recorder()
    result = refine(Newton(), callbacks=[rec], max_cycles=3, xtol=0)
    assert rec.events[0] == ("start", 3) and rec.events[-1] == ("end", "max_cycles")
    assert [e[1] for e in rec.events if e[0] == "cycle"] == [0, 1, 2, 3]
    assert rec.events[2][2] == pytest.approx(1.5) and result.n_cycles == 3


def test_bad_options_are_refused():
    for kwargs in ({"max_cycles": -1}, {"xtol": -1.0}, {"stagnation": 0.0}, {"divergence": 1.0},
                   {"patience": 0}):
        with pytest.raises(InputError):
            Refiner(Newton(), **kwargs)


def test_json_contract():
    result = refine(Scripted([3.0, 2.0, 1.0], free=[3.5, 2.5, math.inf]), max_cycles=2, xtol=0)
    data = json.loads(result.to_json())
    for key in ("status", "success", "message", "n_cycles", "best_cycle", "alarms", "history"):
        assert key in data
    assert data["status"] == "non_finite" and data["success"] is False
    assert data["history"][2]["free"] is None  # inf is written as null, never as invalid JSON
    assert [h["cycle"] for h in data["history"]] == [0, 1, 2]
    assert set(data["history"][0]) >= {"cycle", "work", "free", "step", "time", "restraint"}


def test_report_and_plot():
    result = refine(Scripted([3.0, 2.0, 1.5, 1.4], free=[3.2, 2.4, 2.0, 2.1]), max_cycles=3, xtol=0)
    text = result.report(full=True)
    assert "max_cycles" in text and "kept cycle  : 3 (lowest free score at cycle 2)" in text and "3*" in text
    ax = result.plot()
    labels = [line.get_label() for line in ax.get_lines()]
    assert "work" in labels and "free" in labels and any("kept" in lbl for lbl in labels)


def test_a_check_that_stops_the_run_returns_the_last_checked_model():
    class RefusesCycleThree(Newton):
        def check(self, x):
            if self.calls == 3:
                raise StopRefinement(Status.DIVERGED, "the problem saw it go wrong")
            self.calls += 1
            return super().check(x)

    problem = RefusesCycleThree(2.0, x0=50.0)
    problem.calls = 0
    result = refine(problem, xtol=0)
    assert result.status is Status.DIVERGED and len(result.history) == 3 and result.n_cycles == 3
    assert result.kept_cycle == 2 and not result.usable
    # the returned model is one with a record: the best checked one (the run broke down)
    assert result.x[0] == pytest.approx(result.x_best[0]) and result.x_last[0] != result.x[0]


def test_a_run_that_checked_no_model_cannot_be_continued():
    class StopsAtOnce(Newton):
        def check(self, x):
            raise StopRefinement(Status.NON_FINITE, "nothing could be checked")

    stopped = refine(StopsAtOnce())
    assert not stopped.history
    with pytest.raises(InputError, match="checked no model"):
        refine(Newton(), resume_from=stopped)
