"""Projection matching and gold-standard refinement against known answers."""

from __future__ import annotations

import numpy as np
import pytest

from refinekit.core import Status
from refinekit.cryoem import (
    RefineOptions,
    compare_poses,
    orientation_grid,
    random_rotations,
    reconstruct_particles,
    refine_particles,
    simulate_particles,
    stack_from_simulation,
    starting_reference,
)
from refinekit.cryoem.backend import NumpyBackend, get_backend
from refinekit.cryoem.datasets import bundled_map
from refinekit.cryoem.fourier import FourierVolume
from refinekit.cryoem.fsc import crossing_shell
from refinekit.cryoem.geometry import angular_distance, axis_angle_matrix
from refinekit.cryoem.reconstruct import backproject_particles
from refinekit.cryoem.search import ParticleTransforms, Poses, global_search, local_search, shift_grid
from refinekit.cryoem.simulate import resample_map


@pytest.fixture(scope="module")
def emd1832_24():
    density = bundled_map("emd_1832")
    return resample_map(density.data.astype(float), 24), density.pixel_size * 40 / 24


def test_global_search_finds_noise_free_poses(emd1832_24):
    volume, pixel = emd1832_24
    sim = simulate_particles(volume, pixel, 40, 1e8, seed=1, max_shift=2.0)
    data = ParticleTransforms(sim.images, sim.ctf, pixel, 11, NumpyBackend())
    grid = orientation_grid(2)
    poses = global_search(
        FourierVolume(sim.volume), data, np.arange(40), grid.matrices, shift_grid(2.0, 0.5), 11.0, np.ones(13)
    )
    errors = angular_distance(poses.rotations, sim.rotations)
    assert np.all(errors < grid.step)  # the nearest grid orientation, or next to it
    assert np.all(np.abs(poses.origins - sim.origins) <= 0.5)  # the nearest grid shift, or next to it
    refined = local_search(
        FourierVolume(sim.volume),
        data,
        np.arange(40),
        poses,
        [7.3, 3.7, 1.8, 0.9, 0.45],
        [0.5, 0.25, 0.125, 0.06, 0.03],
        11.0,
        np.ones(13),
    )
    assert np.median(angular_distance(refined.rotations, sim.rotations)) < 0.3
    assert np.median(np.linalg.norm(refined.origins - sim.origins, axis=1)) < 0.05


def test_local_search_recovers_perturbed_poses(emd1832_24):
    volume, pixel = emd1832_24
    sim = simulate_particles(volume, pixel, 30, 1e8, seed=2)
    data = ParticleTransforms(sim.images, sim.ctf, pixel, 11, NumpyBackend())
    rng = np.random.default_rng(3)
    axes = rng.normal(size=(30, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    start = Poses(axis_angle_matrix(np.radians(4.0) * axes) @ sim.rotations, sim.origins + 0.6, np.zeros(30))
    refined = local_search(
        FourierVolume(sim.volume),
        data,
        np.arange(30),
        start,
        [2.0, 1.0, 0.5, 0.25],
        [0.5, 0.25, 0.12, 0.06],
        11.0,
        np.ones(13),
    )
    assert np.median(angular_distance(refined.rotations, sim.rotations)) < 0.3
    assert np.median(np.linalg.norm(refined.origins - sim.origins, axis=1)) < 0.05
    assert np.all(refined.scores >= start.scores)


def test_refinement_reaches_the_true_pose_resolution(small_simulation):
    """From a 40 A start rotated by 25 degrees: poses found (after registration) and a half-map
    resolution within one shell of the reconstruction from the true poses."""
    folder, sim = small_simulation
    from refinekit.cryoem import read_map

    start = read_map(folder / "initial_reference.mrc").data
    result = refine_particles(stack_from_simulation(sim), start, RefineOptions(max_iterations=8))
    assert result.usable and result.status in (Status.CONVERGED, Status.MAX_CYCLES)
    poses = result.x.poses
    comparison = compare_poses(poses.rotations, poses.origins, sim.rotations, sim.origins)
    assert comparison.median_error_deg < 2.5
    assert comparison.fraction_within(5.0) > 0.9
    assert comparison.median_shift_error_px < 0.3
    assert (
        abs(float(angular_distance(comparison.registration, np.eye(3))) - 25.0) < 1.0
    )  # the start's rotation
    # the same halves reconstructed at the true poses
    _, _, true_fsc = reconstruct_particles(stack_from_simulation(sim, result.subsets), sim.rotations, sim.origins)
    assert abs(result.x.crossing - crossing_shell(true_fsc.unmasked)) <= 1.0
    # every iteration is recorded with its figures
    for record in result.history[1:]:
        assert {"resolution_a", "median_angle_change_deg", "mean_score"} <= set(record.figures)
    # ... and summarised in result.states (FSC, resolution), without a copy of every iteration's maps
    assert [s.iteration for s in result.states] == list(range(len(result.history)))
    for summary, record in zip(result.states[1:], result.history[1:], strict=True):
        assert summary.fsc is not None and summary.resolution == record.figures["resolution_a"]
        assert not any(isinstance(value, np.ndarray) for value in vars(summary).values())


def test_halves_are_refined_independently(emd1832_24):
    """With one iteration (no FSC yet shared), half 1's poses and map (before the FSC-derived Wiener
    filter, the one thing the halves share) do not depend on half 2's images."""
    volume, pixel = emd1832_24
    sim = simulate_particles(volume, pixel, 80, 1.0, seed=4)
    start, _ = starting_reference(sim.volume, pixel, 40.0)
    stack = stack_from_simulation(sim)
    stack.subsets = np.tile([1, 2], 40)
    options = RefineOptions(max_iterations=1)
    first = refine_particles(stack, start, options).x_last
    scrambled = stack_from_simulation(sim)
    scrambled.subsets = stack.subsets
    scrambled.images = scrambled.images.copy()
    scrambled.images[1::2] = np.random.default_rng(5).normal(size=scrambled.images[1::2].shape)
    second = refine_particles(scrambled, start, options).x_last
    half1 = stack.subsets == 1
    assert np.array_equal(first.poses.rotations[half1], second.poses.rotations[half1])
    assert np.array_equal(first.raw_half_maps[0], second.raw_half_maps[0])
    assert not np.array_equal(first.raw_half_maps[1], second.raw_half_maps[1])


def test_torch_backend_agrees_with_numpy(emd1832_24):
    pytest.importorskip("torch")
    volume, pixel = emd1832_24
    sim = simulate_particles(volume, pixel, 24, 2.0, seed=6)
    grid = orientation_grid(1)
    out = {}
    for name in ("numpy", "torch"):
        be = get_backend(name, "cpu")
        data = ParticleTransforms(sim.images, sim.ctf, pixel, 11, be)
        fv = FourierVolume(sim.volume, 2, be)
        index = np.arange(24)
        poses = global_search(fv, data, index, grid.matrices, shift_grid(2.0, 1.0), 8.0, np.ones(13))
        poses = local_search(fv, data, index, poses, [8.0, 4.0, 2.0], [0.5, 0.25, 0.12], 8.0, np.ones(13))
        bp = backproject_particles(data, index, poses.rotations, poses.origins, np.ones(13))
        out[name] = (poses, bp.reconstruct(np.full(13, 1.0)))
    (p_np, map_np), (p_t, map_t) = out["numpy"], out["torch"]
    assert np.median(angular_distance(p_np.rotations, p_t.rotations)) < 1e-3
    assert np.allclose(p_np.scores, p_t.scores, rtol=1e-3)
    assert np.allclose(map_np, map_t, atol=1e-4 * np.abs(map_np).max())


def test_stop_rules_say_why(emd1832_24):
    volume, pixel = emd1832_24
    sim = simulate_particles(volume, pixel, 120, 1.0, seed=7)
    start, _ = starting_reference(sim.volume, pixel, 40.0)
    capped = refine_particles(stack_from_simulation(sim), start, RefineOptions(max_iterations=2))
    assert capped.status is Status.MAX_CYCLES and capped.n_cycles == 2
    done = refine_particles(stack_from_simulation(sim), start, RefineOptions(max_iterations=12))
    assert done.status is Status.CONVERGED
    assert "resolution" in done.message and "orientations changed" in done.message
    assert done.n_cycles >= 4  # two global, at least two local iterations
    last = done.history[-1].figures
    assert last["median_angle_change_deg"] < 1.0


def test_bad_options_are_refused(emd1832_24):
    from refinekit.core import InputError

    volume, pixel = emd1832_24
    sim = simulate_particles(volume, pixel, 10, 1.0, seed=8)
    with pytest.raises(InputError, match="Nyquist"):
        refine_particles(stack_from_simulation(sim), sim.volume, RefineOptions(initial_lowpass=pixel))
    with pytest.raises(InputError, match="global_candidates"):
        refine_particles(stack_from_simulation(sim), sim.volume, RefineOptions(global_candidates=0))
    with pytest.raises(InputError, match="voxels across"):
        refine_particles(stack_from_simulation(sim), sim.volume[:20, :20, :20])
    with pytest.raises(InputError, match="device"):
        get_backend(device="tpu")


def test_random_rotations_are_uniform():
    rotations = random_rotations(4000, np.random.default_rng(9))
    # the angle of a uniform rotation has density (1 - cos t) / pi: mean angle pi/2 + 2/pi
    angles = np.radians(angular_distance(rotations, np.eye(3)))
    assert abs(angles.mean() - (np.pi / 2 + 2 / np.pi)) < 0.03


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"final_angle_step": 0.0}, "final_angle_step"),  # halved the local step forever: a hang
        ({"final_angle_step": -1.0}, "final_angle_step"),
        ({"max_shift": -1.0}, "max_shift"),  # ZeroDivisionError
        ({"max_shift": float("nan")}, "max_shift"),  # cannot convert float NaN to integer
        ({"max_shift": 100.0}, "max_shift"),
        ({"resolution_tolerance": float("nan")}, "resolution_tolerance"),  # never converged, silently
        ({"angle_tolerance": -1.0}, "angle_tolerance"),
        ({"ambiguity_z": float("nan")}, "ambiguity_z"),
        ({"max_iterations": float("nan")}, "max_iterations"),  # passed "< 1"
        ({"global_order": 2.0}, "global_order"),  # TypeError in the HEALPix grid
        ({"seed": -1}, "seed"),
    ],
)
def test_out_of_range_options_are_refused(options, needle):
    from refinekit.core import InputError

    with pytest.raises(InputError, match=needle):
        RefineOptions(**options).check(24, 8.0)
    RefineOptions().check(24, 8.0)


def test_reconstruction_refuses_poses_that_do_not_fit(emd1832_24):
    """A reflection reconstructed the mirror image with a fine FSC; NaN origins made a NaN map; wrong
    counts were IndexErrors; an origin off the image was wrapped round without a word."""
    from refinekit.core import InputError

    volume, pixel = emd1832_24
    sim = simulate_particles(volume, pixel, 12, 1.0, seed=3)
    stack = stack_from_simulation(sim, np.tile([1, 2], 6))
    rotations, origins = sim.rotations.copy(), sim.origins.copy()
    full, _, _ = reconstruct_particles(stack, rotations, origins)
    assert np.all(np.isfinite(full))
    for rot, org, needle in (
        (-rotations, origins, "not a rotation"),
        (2 * rotations, origins, "not a rotation"),
        (rotations[:5], origins, "rotations of shape"),
        (rotations, origins[:, :1], "origins of shape"),
        (rotations, np.full_like(origins, np.nan), "NaN"),
        (rotations, origins + 100, "more than half the 24-pixel box"),
    ):
        with pytest.raises(InputError, match=needle):
            reconstruct_particles(stack, rot, org)
    with pytest.raises(InputError, match="padding"):
        reconstruct_particles(stack, rotations, origins, pad=0)
    assert np.array_equal(rotations, sim.rotations) and np.array_equal(origins, sim.origins)


def test_refinement_outputs_are_all_or_none(emd1832_24, tmp_path, monkeypatch):
    """A failure on fsc.png (the 7th file) left four maps and particles.star in the folder, and
    fsc.png.tmp.png."""
    import matplotlib.figure

    from refinekit.cryoem import read_particles, write_refinement, write_simulation

    volume, pixel = emd1832_24
    sim = simulate_particles(volume, pixel, 12, 1.0, seed=4)
    write_simulation(tmp_path / "sim", sim)
    stack = read_particles(tmp_path / "sim" / "particles.star")  # a STAR can name its images
    result = refine_particles(stack, sim.volume, RefineOptions(max_iterations=1))

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space"):
        write_refinement(out, result, stack)
    assert not out.exists()
    out.mkdir()
    (out / "map.mrc").write_text("an older run's map")
    with pytest.raises(OSError, match="No space"):
        write_refinement(out, result, stack)
    assert [p.name for p in out.iterdir()] == ["map.mrc"] and (out / "map.mrc").read_text() == "an older run's map"
    monkeypatch.undo()
    paths = write_refinement(out, result, stack)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())
