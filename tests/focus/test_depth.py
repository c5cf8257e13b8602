"""Depth map: focus-curve fit, the smoothness solver, the engine problem, free slices, weight choice."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg

from refinekit.core import InputError, refine
from refinekit.focus.defocus import BlurTable
from refinekit.focus.depth import (
    DepthProblem,
    EdgeAwareSmoothness,
    FreeSliceScore,
    _laplacian,
    estimate_blur_rate,
    estimate_depth,
    fit_focus_peak,
    focus_map,
    solve_smooth,
)
from refinekit.focus.measures import to_grey

from .conftest import Rendered, crop_rmse, make_stack


def test_gaussian_focus_curves_give_their_centres_on_uneven_positions() -> None:
    z = np.array([0.0, 1.0, 2.5, 3.0, 4.5, 6.0])
    centres = np.array([[1.2, 2.7], [3.4, 5.1]])
    volume = np.exp(-(z[:, None, None] - centres[None]) ** 2 / (2 * 1.3 ** 2)) + 0 * centres
    depth, confidence = fit_focus_peak(volume, z)
    assert np.allclose(depth, centres, atol=1e-9)
    assert np.all(confidence > 0.5)


def test_peaks_on_the_first_or_last_frame_are_not_trusted() -> None:
    z = np.arange(5.0)
    volume = np.exp(-(z[:, None, None] - np.array([[-1.0, 2.0]])[None]) ** 2)
    depth, confidence = fit_focus_peak(volume, z)
    assert depth[0, 0] == 0.0 and confidence[0, 0] <= 0.1 < confidence[0, 1]


def test_frame_positions_must_increase() -> None:
    with pytest.raises(InputError, match="increase"):
        fit_focus_peak(np.ones((3, 2, 2)), [0.0, 2.0, 1.0])


def test_cascadic_solver_matches_a_direct_solve() -> None:
    rng = np.random.default_rng(0)
    guide = rng.random((70, 90))
    target = rng.normal(5, 1, (70, 90))
    weight = rng.random((70, 90)) ** 2
    smoothness = EdgeAwareSmoothness(guide, 3.0)
    matrix = (3.0 * _laplacian(smoothness.wx, smoothness.wy) + sparse.diags(weight.ravel() + 1e-9)).tocsc()
    direct = sparse_linalg.spsolve(matrix, (weight * target).ravel()).reshape(target.shape)
    assert np.abs(solve_smooth(target, weight, smoothness, coarsest=400, iterations=400) - direct).max() < 1e-4
    # the default (20 iterations per grid) is close on this deliberately rough problem (random target,
    # guide and weights; measured RMS 0.014 for a solution spread of 0.57)
    default = solve_smooth(target, weight, smoothness, coarsest=400)
    assert np.sqrt(np.mean((default - direct) ** 2)) < 0.03


def test_restraint_gradient_is_the_derivative_of_its_penalty() -> None:
    rng = np.random.default_rng(1)
    restraint = EdgeAwareSmoothness(rng.random((6, 7)), 2.0)
    depth = rng.random((6, 7))
    gradient = restraint.gradient(depth)
    step = 1e-6
    for index in [(0, 0), (3, 4), (5, 6)]:
        bumped = depth.copy()
        bumped[index] += step
        numeric = (restraint.penalty(bumped) - restraint.penalty(depth)) / step
        assert numeric == pytest.approx(gradient[index], rel=1e-4, abs=1e-8)
    assert restraint.with_weight(5.0).weight == 5.0 and restraint.weight == 2.0


def test_robust_refinement_removes_wrong_peaks() -> None:
    rng = np.random.default_rng(2)
    truth = np.add.outer(np.linspace(2, 6, 60), np.linspace(0, 1, 60))
    measured = truth + rng.normal(0, 0.2, truth.shape)
    wrong = rng.random(truth.shape) < 0.05  # 5 % of pixels peaked on a wrong frame
    measured[wrong] += rng.choice([-4.0, 4.0], wrong.sum())
    problem = DepthProblem(measured, np.ones_like(truth), EdgeAwareSmoothness(np.zeros_like(truth), 3.0))
    result = refine(problem, xtol=1e-4, restore_best=False)
    plain = problem.initial()  # the non-robust (least-squares) solution
    assert result.status.label == "converged"
    assert crop_rmse(result.x, truth, 4) < 0.5 * crop_rmse(plain, truth, 4)
    assert crop_rmse(result.x, truth, 4) < 0.1


@pytest.fixture(scope="module")
def stack256() -> Rendered:
    return make_stack(size=256, n=11, low=1.5, high=8.5, seed=3)


@pytest.fixture(scope="module")
def grid_data(stack256: Rendered) -> tuple[np.ndarray, np.ndarray]:
    frames = np.clip(stack256.frames, 0, 1)
    greys = np.stack([to_grey(f) for f in frames])
    volume = np.stack([focus_map(g, g.shape) for g in greys])
    return volume, greys


def test_free_slices_prefer_the_true_depth(stack256: Rendered, grid_data: tuple) -> None:
    _, greys = grid_data
    table = BlurTable(to_grey(stack256.truth), max_radius=20)
    score = FreeSliceScore(table, greys[[3, 6]], np.array([3.0, 6.0]), stack256.blur_rate, border=10)
    true = score(stack256.depth)
    assert true < score(stack256.depth + 0.5)
    assert true < score(np.full_like(stack256.depth, stack256.depth.mean()))
    assert true < 0.02  # about the noise level: the model explains the frames


def test_blur_rate_is_recovered(stack256: Rendered, grid_data: tuple) -> None:
    _, greys = grid_data
    table = BlurTable(to_grey(stack256.truth), max_radius=20)
    work = [0, 1, 2, 4, 5, 7, 8, 9, 10]
    rate = estimate_blur_rate(table, greys[work], np.asarray(work, float), stack256.depth, border=10)
    assert rate == pytest.approx(stack256.blur_rate, rel=0.05)


def test_free_slice_choice_finds_a_good_weight(stack256: Rendered, grid_data: tuple) -> None:
    volume, greys = grid_data
    z = np.arange(11.0)
    chosen = estimate_depth(volume, greys, z)
    assert chosen.choice is not None and chosen.free_frames == [2, 5, 8]
    assert chosen.blur_rate == pytest.approx(stack256.blur_rate, rel=0.1)
    trials = {t.weight: t.free for t in chosen.choice.trials}
    assert trials[max(trials)] > min(trials.values())  # heavy smoothing predicts held-out frames worse
    error = crop_rmse(chosen.depth, stack256.depth, 12)
    fixed = {w: crop_rmse(estimate_depth(volume, greys, z, weight=w).depth, stack256.depth, 12)
             for w in (0.1, 1.0, 10.0, 100.0)}
    # measured: chosen 0.069; fixed weights 0.59, 0.36, 0.08, 0.09
    assert error < 0.15
    assert error < 1.5 * min(fixed.values())


def test_short_stacks_get_an_unvalidated_weight() -> None:
    stack = make_stack(size=48, n=4, low=0.5, high=2.5, seed=9)
    greys = np.stack([to_grey(np.clip(f, 0, 1)) for f in stack.frames])
    volume = np.stack([focus_map(g, g.shape) for g in greys])
    estimate = estimate_depth(volume, greys, np.arange(4.0))
    assert estimate.choice is None and estimate.free_frames == []
    assert "not validated" in estimate.message


def test_free_frames_must_be_interior() -> None:
    with pytest.raises(InputError, match="interior"):
        estimate_depth(np.ones((6, 8, 8)), np.ones((6, 8, 8)), np.arange(6.0), free_frames=[0, 3])
