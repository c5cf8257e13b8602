"""Edge cases of the engine: runs that check nothing, callbacks that stop with a status, free scores
on some cycles only, malformed free flags, and weight scans whose trials break down."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from refinekit.core import (
    FreeFlags,
    InputError,
    OverfitMonitor,
    RefinementProblem,
    Scores,
    Status,
    StopRefinement,
    choose_weight,
    refine,
)

from .test_refiner import Scripted

WORK = [1.0, 0.8, 0.6, 0.5, 0.45, 0.40, 0.35, 0.3, 0.25]
FREE = [1.1, 0.9, 0.7, 0.72, 0.75, 0.80, 0.85, 0.9, 0.95]


def test_a_run_that_checked_no_model_still_reports_and_writes_json():
    class StopsAtOnce(Scripted):
        def check(self, x):
            raise StopRefinement(Status.NON_FINITE, "nothing could be checked")

    result = refine(StopsAtOnce(WORK), restore_best=True)
    assert not result.history and "kept the model" not in result.message
    data = json.loads(result.to_json())
    assert data["status"] == "non_finite" and data["work"] is None and data["history"] == []
    assert "no model was checked" in result.report(full=True)


def test_a_callback_raising_stop_refinement_ends_the_run_with_its_status():
    def enough(record):
        if record.cycle == 2:
            raise StopRefinement(Status.CONVERGED, "the callback saw enough")

    result = refine(Scripted(WORK, FREE), max_cycles=8, xtol=0, callbacks=[enough])
    assert result.status is Status.CONVERGED and result.message == "the callback saw enough"
    assert result.n_cycles == 2 and result.x[0] == 2.0


def test_cycles_without_a_free_score_do_not_compete_with_those_that_have_one():
    # the free set is scored on even cycles only: work scores on odd cycles must not become "best"
    free = [f if k % 2 == 0 else None for k, f in enumerate(FREE)]
    result = refine(Scripted(WORK, free), max_cycles=8, xtol=0)
    assert result.best_cycle == result.kept_cycle == 2 and result.x[0] == 2.0
    # patience counts the cycles that had a free score: 4, 6 and 8
    assert result.status is Status.OVERFITTING and [a.cycle for a in result.alarms] == [8]


def test_the_first_free_score_replaces_a_best_work_score():
    monitor = OverfitMonitor(patience=2)
    monitor.update(0, 0.1, None)  # a low work score before the free set was scored
    monitor.update(1, 0.5, 0.9)
    assert monitor.best_cycle == 1 and monitor.best_score == 0.9


def test_negative_overfit_margins_are_refused():
    with pytest.raises(InputError, match="min_delta"):
        OverfitMonitor(min_delta=-0.01)
    with pytest.raises(InputError, match="rel_delta"):
        refine(Scripted(WORK, FREE), rel_delta=math.nan)


def test_continuing_a_run_whose_check_stopped_it_labels_the_unchecked_model_correctly():
    class Budget(Scripted):
        stopped = False

        def check(self, x):
            if int(x[0]) == 3 and not self.stopped:
                self.stopped = True
                raise StopRefinement(Status.MAX_CYCLES, "out of budget")
            return super().check(x)

    problem = Budget(WORK)
    short = refine(problem, max_cycles=8, xtol=0)
    assert short.n_cycles == 3 and len(short.history) == 3 and short.x_last[0] == 3.0
    continued = refine(problem, max_cycles=6, xtol=0, resume_from=short)
    assert [r.cycle for r in continued.history] == list(range(7))
    assert [r.work for r in continued.history] == WORK[:7] and continued.x[0] == 6.0


@pytest.mark.parametrize("values", [[0.0, 0.5, 1.0], [0.0, math.nan], [1e30, 0.0],
                                    np.array([2**64 - 1, 0], dtype=np.uint64), ["a", "1"], [None, 1]])
def test_free_flags_that_are_not_integers_are_refused_not_truncated(values):
    with pytest.raises(InputError, match="integers"):
        FreeFlags(np.asarray(values))


def test_free_flags_accept_integral_floats_and_booleans():
    assert FreeFlags(np.array([0.0, 1.0, 2.0]), 0.0).values.tolist() == [0, 1, 2]
    assert FreeFlags(np.array([True, False])).free.tolist() == [False, True]


@pytest.mark.parametrize("text", [
    "# refinekit free flags: n=2 free_value=0 junk\n0\n1\n",           # a header item without '='
    "# refinekit free flags: n=2 free_value=0\n0\n100000000000000000000000\n",  # beyond 64 bits
])
def test_a_corrupt_free_flag_file_is_an_input_error(tmp_path, text):
    path = tmp_path / "flags.txt"
    path.write_text(text)
    with pytest.raises(InputError, match="corrupt free-flag file"):
        FreeFlags.load(path)


class Ridge(RefinementProblem):
    """A trial whose deviation figure grows as the weight falls; below ``breaks`` it breaks down."""

    def __init__(self, weight, breaks=None):
        self.weight, self.breaks = weight, breaks

    def initial(self):
        return np.array([1.0])

    def check(self, x):
        if self.breaks == "at once":
            raise StopRefinement(Status.NON_FINITE, "nothing could be checked")
        if self.breaks is not None and self.weight < self.breaks:
            return Scores(work=math.nan)
        return Scores(work=1.0, free=1.0 + self.weight, figures={"bond_rmsd": 0.05 / self.weight})

    def correct(self, x, scores):
        return np.zeros(1)


def test_choose_weight_never_prefers_a_broken_trial_to_one_outside_the_bounds():
    # every sane trial breaks the bound; the broken ones have no figures, hence no "excess"
    choice = choose_weight(lambda w: Ridge(w, breaks=0.5), bounds=(0.01, 1.0), n_grid=3,
                           max_deviation={"bond_rmsd": 0.01})
    assert choice.weight == pytest.approx(1.0) and "closest" in choice.message


@pytest.mark.parametrize("breaks", ["at once", 1e9])
def test_choose_weight_says_so_when_every_trial_broke_down(breaks):
    choice = choose_weight(lambda w: Ridge(w, breaks=breaks), bounds=(0.01, 1.0), n_grid=3)
    assert "every trial refinement broke down" in choice.message
    assert all(not t.feasible for t in choice.trials)
