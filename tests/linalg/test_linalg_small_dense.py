"""The lean paths of small dense solves (one right-hand side, one block of statistics, the inline check)
give the numbers of the general helpers they stand in for, bit for bit, and keep every stop."""

from __future__ import annotations

import numpy as np

from refinekit.core import Status, refine
from refinekit.linalg import solve
from refinekit.linalg import systems as systems_module
from refinekit.linalg.problem import IterativeRefinementProblem, LUCorrector
from refinekit.linalg.systems import DenseSystem, powers_of_two_for, product

from .linalg_helpers import with_condition


def _system(n: int = 60, seed: int = 3) -> tuple[np.ndarray, np.ndarray, DenseSystem]:
    rng = np.random.default_rng(seed)
    a = with_condition(n, 1e4, seed=seed)
    b = rng.standard_normal((n, 1))
    return a, b, DenseSystem(a, b, "single")


def test_residual_magnitudes_and_solve_of_one_column_match_the_general_helpers():
    a, b, system = _system()
    x = np.linalg.solve(a, b) * (1 + 1e-9)
    r = system.residual(x)
    assert np.array_equal(r, product(a, x, alpha=-1.0, add=b))

    abs_x = np.abs(x)
    scale = powers_of_two_for(abs_x.max(axis=0))
    general = product(system.abs_low, (abs_x * scale).astype(np.float32)) / scale + np.abs(b)
    assert np.array_equal(system.magnitudes(x), general)

    factors = system.factor_low()
    r_norm = np.abs(r).max(axis=0)
    column_scale = powers_of_two_for(r_norm)
    expected = factors.solve_normalised(r, column_scale, factors.multiplier / column_scale)
    assert np.array_equal(system.solve_with(factors, r, r_norm), expected)
    assert np.array_equal(system.solve_with(factors, r), expected)


def test_inline_check_reports_the_helpers_backward_errors():
    *_, system = _system()
    factors = system.factor_low()
    problem = IterativeRefinementProblem(system, LUCorrector(system, factors, "ir"))
    x = problem.initial()
    problem._last_step = 0.0  # take |A||x| at once
    scores = problem.check(x)
    r = system.residual(x)
    assert scores.work == float(system.backward_errors(x, r).max())
    assert scores.figures["componentwise_backward_error"] == system.largest_ratio(r, system.magnitudes(x))


def test_one_block_statistics_match_the_blocked_pass(monkeypatch):
    a, b, one = _system(n=300)
    monkeypatch.setattr(systems_module, "ONE_BLOCK_BYTES", 0)
    blocked = DenseSystem(a, b, "single")
    assert np.array_equal(one.low, blocked.low) and np.array_equal(one.abs_low, blocked.abs_low)
    assert one.norm_inf == blocked.norm_inf or abs(one.norm_inf / blocked.norm_inf - 1) < 1e-6
    scaled = a * np.logspace(-6, 6, 300)[:, None]  # rows far apart: row scaling in both
    blocked_scaled = DenseSystem(scaled, b, "single")
    monkeypatch.undo()
    one_scaled = DenseSystem(scaled, b, "single")
    assert one_scaled.scaling.row is not None
    assert np.array_equal(one_scaled.scaling.row, blocked_scaled.scaling.row)
    assert np.array_equal(one_scaled.low, blocked_scaled.low)


def test_non_finite_lu_correction_stops_the_run():
    *_, system = _system()
    factors = system.factor_low()
    corrector = LUCorrector(system, factors, "ir")
    x0 = corrector.initial()
    factors.lu[0, 0] = np.nan  # the starting model is finite, its correction is not
    run = refine(IterativeRefinementProblem(system, corrector, x0), max_cycles=5, stagnation=0.5)
    assert run.status is Status.NON_FINITE and "non-finite correction" in run.message
    assert run.x is x0


def test_zero_right_hand_side_takes_the_general_backward_error():
    a = with_condition(40, 1e2)
    result = solve(a, np.zeros(40), error_bounds=False)
    assert result.success and not np.any(result.x) and result.backward_error == 0.0


def test_the_smallest_systems_converge_by_plain_refinement():
    """For n = 1-2 a backward error at rounding level reaches ~1.95 u, above sqrt(n) u: with that as
    the converged level, one well-conditioned solve in 8 (n = 1) to 40 (n = 2) was sent on to GMRES-IR.
    Every one of these converges by plain refinement, at a rounding-level backward error."""
    rng = np.random.default_rng(0)
    for n in (1, 2, 3):
        for trial in range(200):
            a = rng.standard_normal((n, n)) + 3 * np.sqrt(n) * np.eye(n)
            b = rng.standard_normal(n) if trial % 2 else rng.integers(-5, 5, n).astype(float)
            result = solve(a, b, error_bounds=False)
            assert result.success and result.path == "ir", (n, trial, result.attempts)
            assert result.backward_error <= 2 * 2.0**-53
