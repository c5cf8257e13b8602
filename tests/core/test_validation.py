"""Free sets: splitters, persistent flags, and the overfitting alarm (with keep-best)."""

from __future__ import annotations

import numpy as np
import pytest

from refinekit.core import (
    FreeFlags,
    HalfSets,
    HoldOut,
    InputError,
    KFold,
    OverfitMonitor,
    RefinementProblem,
    Scores,
    Status,
    refine,
)


def test_holdout_is_seeded_disjoint_and_of_the_asked_size():
    work, free = next(HoldOut(0.05, seed=1).split(1000))
    assert free.size == 50 and work.size == 950
    assert np.intersect1d(work, free).size == 0 and np.union1d(work, free).size == 1000
    again = next(HoldOut(0.05, seed=1).split(1000))[1]
    other = next(HoldOut(0.05, seed=2).split(1000))[1]
    assert np.array_equal(free, again) and not np.array_equal(free, other)


def test_holdout_keeps_at_least_one_free_and_one_working_point():
    flags = HoldOut(0.05).flags(3)
    assert flags.free.sum() == 1 and flags.work.sum() == 2
    with pytest.raises(InputError):
        HoldOut(0.05).flags(1)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(InputError):
            HoldOut(bad)


def test_kfold_covers_every_point_exactly_once():
    folds = list(KFold(20, seed=0).split(1003))
    assert len(folds) == 20
    counts = np.zeros(1003, int)
    for work, free in folds:
        counts[free] += 1
        assert np.intersect1d(work, free).size == 0
    assert np.all(counts == 1)
    sizes = [f.size for _, f in folds]
    assert max(sizes) - min(sizes) <= 1


def test_half_sets_are_balanced_and_independent():
    half1, half2 = next(HalfSets(seed=3).split(101))
    assert abs(half1.size - half2.size) <= 1 and np.intersect1d(half1, half2).size == 0
    flags = HalfSets(seed=3).flags(101)
    assert set(np.unique(flags.values)) == {1, 2}


def test_free_flags_round_trip_and_refuse_mismatch(tmp_path):
    flags = KFold(20, seed=5).flags(500)
    path = tmp_path / "flags.txt"
    flags.save(path)
    loaded = FreeFlags.load(path, n=500)
    assert np.array_equal(loaded.values, flags.values) and loaded.free_value == 0
    with pytest.raises(InputError, match="500 observations but the data have 499"):
        FreeFlags.load(path, n=499)
    lines = path.read_text().splitlines()
    (tmp_path / "short.txt").write_text("\n".join(lines[:-10]) + "\n")
    with pytest.raises(InputError, match="truncated"):
        FreeFlags.load(tmp_path / "short.txt")
    (tmp_path / "junk.txt").write_text(lines[0] + "\n1\nx\n")
    with pytest.raises(InputError, match="corrupt"):
        FreeFlags.load(tmp_path / "junk.txt")
    (tmp_path / "other.txt").write_text("0\n1\n")
    with pytest.raises(InputError, match="not a refinekit free-flag file"):
        FreeFlags.load(tmp_path / "other.txt")
    with pytest.raises(InputError, match="cannot read"):
        FreeFlags.load(tmp_path / "missing.txt")


def test_monitor_fires_when_free_rises_while_work_falls():
    monitor = OverfitMonitor(patience=3)
    work = [1.0, 0.8, 0.6, 0.5, 0.45, 0.40, 0.35]
    free = [1.1, 0.9, 0.7, 0.72, 0.75, 0.80, 0.85]
    fired = [monitor.update(k, w, f) for k, (w, f) in enumerate(zip(work, free, strict=True))]
    assert [k for k, a in enumerate(fired) if a] == [5]
    assert monitor.best_cycle == 2 and "rose from 0.7" in fired[5].message


@pytest.mark.parametrize(
    ("work", "free"),
    [
        ([1.0, 0.8, 0.6, 0.5, 0.45, 0.40], [1.1, 0.9, 0.7, 0.65, 0.6, 0.55]),  # both fall
        ([1.0, 0.8, 0.6, 0.7, 0.8, 0.9], [1.1, 0.9, 0.7, 0.75, 0.8, 0.85]),  # both rise: not overfitting
        ([1.0, 0.8, 0.6, 0.5, 0.45, 0.40], [1.1, 0.9, 0.7, 0.7002, 0.7003, 0.7004]),  # within rel_delta
    ],
)
def test_monitor_stays_silent_otherwise(work, free):
    monitor = OverfitMonitor(patience=3)
    assert not any(monitor.update(k, w, f) for k, (w, f) in enumerate(zip(work, free, strict=True)))


class Trajectory(RefinementProblem):
    def __init__(self, work, free):
        self.work, self.free = work, free

    def initial(self):
        return np.array([0.0])

    def check(self, x):
        k = int(x[0])
        return Scores(work=self.work[k], free=self.free[k])

    def correct(self, x, scores):
        return np.array([1.0])


WORK = [1.0, 0.8, 0.6, 0.5, 0.45, 0.40, 0.35, 0.3, 0.25]
FREE = [1.1, 0.9, 0.7, 0.72, 0.75, 0.80, 0.85, 0.9, 0.95]


def test_engine_stops_on_overfitting_and_restores_the_best_model():
    result = refine(Trajectory(WORK, FREE), max_cycles=8, xtol=0)
    assert result.status is Status.OVERFITTING and result.success
    assert result.best_cycle == result.kept_cycle == 2 and result.x[0] == 2.0 and result.x_last[0] == 5.0
    assert [(a.kind, a.cycle) for a in result.alarms] == [("overfitting", 5)]
    assert "kept the model of cycle 2" in result.message
    assert result.to_dict()["free"] == 0.7


def test_engine_can_record_the_alarm_and_go_on():
    result = refine(Trajectory(WORK, FREE), max_cycles=8, xtol=0, stop_on_overfit=False)
    assert result.status is Status.MAX_CYCLES and result.n_cycles == 8
    assert [a.cycle for a in result.alarms] == [5] and result.x[0] == 2.0
    last = refine(Trajectory(WORK, FREE), max_cycles=8, xtol=0, stop_on_overfit=False, restore_best=False)
    assert last.x[0] == 8.0 and last.kept_cycle == 8 and last.best_cycle == 2


def test_a_converged_run_without_alarm_returns_its_last_model_even_if_free_wobbles():
    work = [1.0, 0.5, 0.3, 0.29, 0.289]
    free = [1.1, 0.6, 0.4, 0.39, 0.3901]  # the last free score is a hair above the best
    result = refine(Trajectory(work, free), max_cycles=4, xtol=0)
    assert not result.alarms and result.best_cycle == 3
    assert result.kept_cycle == 4 and result.x[0] == 4.0 and result.to_dict()["free"] == 0.3901


def test_monitor_stays_silent_while_the_free_score_is_below_the_work_score():
    # a right-sized model on its way to the minimum: the free score wobbles but never exceeds the work score
    monitor = OverfitMonitor(patience=3)
    work = [1.06, 0.46, 0.0166, 0.0160, 0.0157, 0.0154]
    free = [1.07, 0.48, 0.0142, 0.0147, 0.0151, 0.0153]
    assert not any(monitor.update(k, w, f) for k, (w, f) in enumerate(zip(work, free, strict=True)))
