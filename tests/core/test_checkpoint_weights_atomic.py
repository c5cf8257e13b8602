"""Checkpoints resume to the same result; restraint weights are chosen by the free score; outputs are
written atomically."""

from __future__ import annotations

import numpy as np
import pytest

from refinekit.core import (
    InputError,
    RefinementProblem,
    Scores,
    atomic_write_text,
    choose_weight,
    load_checkpoint,
    refine,
)
from refinekit.fit import fit


class Interrupt(Exception):
    pass


def _decay_data():
    rng = np.random.default_rng(7)
    t = np.linspace(0, 5, 80)
    y = 4.0 * np.exp(-0.7 * t) + 1.2 * np.exp(-3.1 * t) + rng.normal(0, 0.01, t.size)
    return t, y


def test_a_run_resumed_from_its_checkpoint_ends_exactly_as_an_uninterrupted_run(tmp_path):
    t, y = _decay_data()
    start = {"a": 1.0, "k": 0.1, "b": 1.0, "m": 5.0}
    model = "a*exp(-k*t) + b*exp(-m*t)"
    full = fit(model, start, {"t": t}, y, free_fraction=0.1, restarts=0)
    assert full.n_cycles > 6

    path = tmp_path / "run.ckpt"

    def crash_at_five(record):
        if record.cycle == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(model, start, {"t": t}, y, free_fraction=0.1, restarts=0, checkpoint=path,
            callbacks=[crash_at_five])
    state = load_checkpoint(path)
    assert state["cycle"] == 5 and len(state["history"]) == 5
    resumed = fit(model, start, {"t": t}, y, free_fraction=0.1, restarts=0, resume_from=path)
    assert resumed.status is full.status and resumed.n_cycles == full.n_cycles
    assert np.array_equal(resumed.x, full.x)
    assert [r.work for r in resumed.history] == [r.work for r in full.history]
    assert [r.free for r in resumed.history] == [r.free for r in full.history]


def test_loading_a_bad_checkpoint_is_an_input_error(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x80\x05not a pickle")
    with pytest.raises(InputError, match="corrupt or truncated checkpoint"):
        load_checkpoint(bad)


class Ridge(RefinementProblem):
    """Ridge regression solved in one step; the free score is the held-out RMS error."""

    def __init__(self, A, y, work, free, weight):
        self.A, self.y, self.work, self.free, self.weight = A, y, work, free, weight

    def initial(self):
        return np.zeros(self.A.shape[1])

    def check(self, x):
        r = self.A @ x - self.y
        return Scores(work=float(np.sqrt(np.mean(r[self.work] ** 2))),
                      free=float(np.sqrt(np.mean(r[self.free] ** 2))),
                      restraint=self.weight * float(x @ x),
                      figures={"coef_norm": float(np.linalg.norm(x))})

    def correct(self, x, scores):
        A = self.A[self.work]
        target = np.linalg.solve(A.T @ A + self.weight * np.eye(A.shape[1]), A.T @ self.y[self.work])
        return target - x


def test_choose_weight_finds_the_free_minimum_of_a_ridge_regression():
    rng = np.random.default_rng(0)
    n, p = 60, 40
    A = rng.normal(size=(n, p))
    x_true = rng.normal(size=p) * 0.3
    y = A @ x_true + rng.normal(0, 1.0, n)
    work = np.ones(n, bool)
    work[rng.choice(n, 15, replace=False)] = False
    free = ~work

    def make(w):
        return Ridge(A, y, work, free, w)

    choice = choose_weight(make, bounds=(1e-4, 1e4), n_grid=9, n_golden=8, max_cycles=3, xtol=1e-12)
    frees = {t.weight: t.free for t in choice.trials}
    assert choice.weight in frees and frees[choice.weight] == min(frees.values())
    # the free score of the chosen weight beats both extremes clearly (no restraint / all restraint)
    assert frees[choice.weight] < 0.9 * frees[min(frees)] and frees[choice.weight] < frees[max(frees)]
    # a dense scan agrees with the golden-section search to within its resolution
    dense = np.exp(np.linspace(np.log(1e-4), np.log(1e4), 200))
    scanned = [refine(make(w), max_cycles=3, xtol=1e-12).best.free for w in dense]
    assert frees[choice.weight] <= min(scanned) * 1.01

    bounded = choose_weight(make, bounds=(1e-4, 1e4), max_cycles=3, max_deviation={"coef_norm": 1.0})
    chosen = next(t for t in bounded.trials if t.weight == bounded.weight)
    assert chosen.figures["coef_norm"] <= 1.0 and "coef_norm <= 1" in bounded.message


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    class Boom(Exception):
        pass

    from refinekit.core import atomic_write

    with pytest.raises(Boom), atomic_write(target) as fh:
        fh.write("partial")
        raise Boom
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_a_finished_run_continues_to_the_same_end_as_one_longer_run():
    from refinekit.fit.problem import CurveFitProblem  # a realistic problem with its own state

    t, y = _decay_data()

    def model(v):
        return v[0] * np.exp(-v[1] * t) + v[2] * np.exp(-v[3] * t)

    def jac(v):
        e1, e2 = np.exp(-v[1] * t), np.exp(-v[3] * t)
        return np.column_stack([e1, -v[0] * t * e1, e2, -v[2] * t * e2])

    work = np.ones(t.size, bool)
    work[::10] = False

    def problem():
        return CurveFitProblem(model, jac, y, np.array([1.0, 0.1, 1.0, 5.0]), work=work, free=~work)

    long = refine(problem(), max_cycles=12, xtol=0)
    p = problem()
    short = refine(p, max_cycles=5, xtol=0)
    continued = refine(p, max_cycles=12, xtol=0, resume_from=short)
    assert continued.n_cycles == long.n_cycles > 5 and continued.status is long.status
    assert [(a.kind, a.cycle) for a in continued.alarms] == [(a.kind, a.cycle) for a in long.alarms]
    assert np.array_equal(continued.x, long.x)
    assert [r.free for r in continued.history] == [r.free for r in long.history]
    assert continued.best_cycle == long.best_cycle and np.array_equal(continued.x_best, long.x_best)


def test_choose_weight_without_golden_steps_runs_only_the_grid():
    calls = []

    class Flat(RefinementProblem):
        def __init__(self, w):
            calls.append(w)
            self.w = w

        def initial(self):
            return np.zeros(1)

        def check(self, x):
            return Scores(work=1.0, free=(np.log(self.w) - 1.0) ** 2)

        def correct(self, x, scores):
            return np.zeros(1)

    choice = choose_weight(Flat, bounds=(1e-2, 1e2), n_grid=5, n_golden=0, max_cycles=1)
    assert len(calls) == 5 and len(choice.trials) == 5


def test_the_checkpoint_left_by_a_fit_with_restarts_is_the_returned_runs(tmp_path):
    """Every run of ``a*b*x`` ends on a ridge (a and b are not determined apart), so the fit restarts
    twice and keeps the first run; the checkpoint left at the caller's path is that run's (resuming it
    gives the returned x), and the restarts leave no files of their own."""
    x = np.linspace(0.5, 3.0, 20)
    y = 2.0 * x + np.random.default_rng(3).normal(0, 0.01, x.size)
    path = tmp_path / "fit.ckpt"
    result = fit("a*b*x", {"a": 0.5, "b": 0.7}, {"x": x}, y, free_fraction=0, checkpoint=path)
    assert result.figures["restarts"] == 2 and "restart" not in result.message
    assert sorted(tmp_path.iterdir()) == [path]
    resumed = fit("a*b*x", {"a": 0.5, "b": 0.7}, {"x": x}, y, free_fraction=0, resume_from=path)
    assert np.array_equal(resumed.x, result.x)
