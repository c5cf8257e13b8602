"""Poses ranked by log-posterior (a Gaussian prior on the origins) and the expectation over poses in
the reconstruction."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from refinekit.cryoem import orientation_grid, simulate_particles
from refinekit.cryoem.backend import NumpyBackend
from refinekit.cryoem.datasets import bundled_map
from refinekit.cryoem.fourier import FourierVolume
from refinekit.cryoem.geometry import angular_distance
from refinekit.cryoem.problem import pose_weights
from refinekit.cryoem.reconstruct import backproject_particles
from refinekit.cryoem.search import Likelihood, ParticleTransforms, Poses, global_search, shift_grid
from refinekit.cryoem.simulate import resample_map


@pytest.fixture(scope="module")
def noise_free():
    density = bundled_map("emd_1832")
    pixel = density.pixel_size * 40 / 24
    volume = resample_map(density.data.astype(float), 24)
    sim = simulate_particles(volume, pixel, 30, 1e8, seed=11, max_shift=1.5)
    return sim, ParticleTransforms(sim.images, sim.ctf, pixel, 11, NumpyBackend())


def test_log_posterior_round_trip():
    like = Likelihood(scale=40.0, shift_sigma=1.5)
    scores = np.array([0.2, 0.5, 0.9])
    origins = np.array([[0.0, 0.0], [1.0, -2.0], [3.0, 0.5]])
    posterior = like.of_scores(scores, origins)
    # the prior costs |o|^2 / (2 sigma^2) nats
    assert posterior[0] == pytest.approx(40.0 * 0.04)
    assert posterior[1] == pytest.approx(40.0 * 0.25 - 5.0 / 4.5)
    assert np.allclose(like.to_scores(posterior, origins), scores)
    assert np.all(Likelihood(40.0).shift_penalty(origins) == 0)


def test_search_with_a_prior_finds_noise_free_poses(noise_free):
    """On noise-free images the likelihood dominates any sane prior: the same poses as without it."""
    sim, data = noise_free
    grid = orientation_grid(2)
    shifts = shift_grid(2.0, 0.5)
    args = (FourierVolume(sim.volume), data, np.arange(30), grid.matrices, shifts, 11.0, np.ones(13))
    plain = global_search(*args)
    like = Likelihood(1e4 / float(plain.scores.max()) ** 2, shift_sigma=1.0)  # ~1e4 nats against ~1
    posterior = global_search(*args, likelihood=like)
    assert np.median(angular_distance(plain.rotations, sim.rotations)) < grid.step
    # each particle's pose is its best by correlation (poses tied to rounding may swap)
    assert np.allclose(like.to_scores(posterior.scores, posterior.origins), plain.scores, rtol=1e-5)
    assert np.median(angular_distance(plain.rotations, posterior.rotations)) < 1e-6


def test_a_strong_prior_pulls_origins_to_the_centre(noise_free):
    """Where the likelihood spans about one nat and the prior is far narrower than the shifts, the
    prior decides: every origin at the centre."""
    sim, data = noise_free
    grid = orientation_grid(1)
    args = (FourierVolume(sim.volume), data, np.arange(30), grid.matrices, shift_grid(2.0, 0.5), 11.0, np.ones(13))
    scale = 1.0 / float(global_search(*args).scores.max()) ** 2
    free = global_search(*args, likelihood=Likelihood(scale))
    pulled = global_search(*args, likelihood=Likelihood(scale, shift_sigma=0.1))
    assert np.mean(np.linalg.norm(pulled.origins, axis=1)) < np.mean(np.linalg.norm(free.origins, axis=1))
    assert np.all(np.linalg.norm(pulled.origins, axis=1) == 0)


def test_pose_weights_are_a_posterior_over_distinct_modes():
    rng = np.random.default_rng(0)
    n, m = 5, 4
    grid = orientation_grid(1).matrices
    picks = rng.choice(len(grid), size=(n, m), replace=False)
    rotations = grid[picks.ravel()]
    scores = rng.normal(size=n * m) * 3
    # particle 0's second candidate repeats its first: one mode found twice
    rotations[1] = rotations[0]
    candidates = Poses(rotations, np.zeros((n * m, 2)), scores)
    best = scores.reshape(n, m).argmax(axis=1) + np.arange(n) * m
    final = candidates.subset(best)
    index = np.arange(100, 100 + n)
    particles, at_rotations, _, weight = pose_weights(index, candidates, best, final)
    assert set(particles.tolist()) <= set(index.tolist())
    for p in index:
        mine = particles == p
        assert weight[mine].sum() == pytest.approx(1.0)
        # no two poses of one particle within 2 degrees (duplicates merged into the better one)
        rot = at_rotations[mine]
        distances = angular_distance(rot[:, None], rot[None, :])
        assert np.all(distances[~np.eye(len(rot), dtype=bool)] > 2.0)
    # weights follow exp(score - best) among the kept modes
    s = scores.reshape(n, m)[1]
    expected = np.exp(s - s.max())
    expected /= expected.sum()
    expected = expected[expected >= 1e-3]
    assert np.allclose(np.sort(weight[particles == 101]), np.sort(expected / expected.sum()))


def test_weighted_insertion_is_the_expectation(noise_free):
    """A particle entered twice at one pose with weights 0.3 and 0.7 is the particle entered once."""
    sim, data = noise_free
    index = np.arange(10)
    once = backproject_particles(data, index, sim.rotations[index], sim.origins[index], np.ones(13))
    twice_index = np.concatenate([index, index])
    twice = backproject_particles(
        data,
        twice_index,
        sim.rotations[twice_index],
        sim.origins[twice_index],
        np.ones(13),
        pose_weights=np.concatenate([np.full(10, 0.3), np.full(10, 0.7)]),
    )
    for name in ("data_re", "data_im", "weight"):  # float32 products: equal to rounding
        a, b = getattr(twice, name), getattr(once, name)
        assert np.max(np.abs(a - b)) <= 1e-6 * np.max(np.abs(b))
    assert twice.dc_weight == pytest.approx(once.dc_weight)


def test_solvent_flattened_references_follow_the_masked_resolution():
    """With solvent flattening, the references are cut by the solvent mask and low-passed at the
    corrected masked crossing where that is higher; without it, at the unmasked crossing."""
    from refinekit.cryoem import RefineOptions, refine_particles, stack_from_simulation, starting_reference
    from refinekit.cryoem.problem import ProjectionMatching

    density = bundled_map("emd_1832")
    pixel = density.pixel_size * 40 / 24
    sim = simulate_particles(resample_map(density.data.astype(float), 24), pixel, 120, 1.0, seed=7)
    start, _ = starting_reference(sim.volume, pixel, 40.0)
    for flatten in (True, False):
        result = refine_particles(
            stack_from_simulation(sim), start, RefineOptions(max_iterations=3, solvent_flatten=flatten)
        )
        states = result.history
        for before, after in itertools.pairwise(states[1:]):
            used = after.figures["reference_shell"]
            unmasked = before.figures["fsc_crossing_shell"]
            assert used >= unmasked if flatten else used == unmasked
        state = result.x
        problem = ProjectionMatching(stack_from_simulation(sim), start, RefineOptions(solvent_flatten=flatten))
        reference = problem.reference_for(state, 0, state.crossing)
        outside = state.mask < 1e-6
        if flatten:
            assert np.all(reference[outside] == 0)
        else:
            assert np.any(reference[outside] != 0)


def test_outputs_are_all_or_nothing(tmp_path):
    """A refinement whose particles.star cannot be written (in-memory images have no file to name)
    writes nothing at all, not the maps first."""
    from refinekit.core import InputError
    from refinekit.cryoem import RefineOptions, refine_particles, stack_from_simulation, write_refinement

    density = bundled_map("emd_1832")
    pixel = density.pixel_size * 40 / 24
    sim = simulate_particles(resample_map(density.data.astype(float), 24), pixel, 40, 1.0, seed=3)
    result = refine_particles(stack_from_simulation(sim), sim.volume, RefineOptions(max_iterations=1))
    out = tmp_path / "refined"
    with pytest.raises(InputError):
        write_refinement(out, result, stack_from_simulation(sim))
    assert not out.exists()
