"""The issue's verification targets at full size (``pytest -m slow``; about a minute on 2 cores)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from refinekit.cryoem import (
    RefineOptions,
    compare_poses,
    fourier_shell_correlation,
    read_map,
    reconstruct_particles,
    refine_particles,
    resample_map,
    simulate_particles,
    stack_from_simulation,
    starting_reference,
)
from refinekit.cryoem.fsc import crossing_shell


def reconstruct_with(sim, subsets, rotations, origins):
    """The full map and the half maps' FSC at the given poses, with the given halves."""
    full_map, _, fsc = reconstruct_particles(stack_from_simulation(sim, subsets), rotations, origins)
    return SimpleNamespace(full_map=full_map, fsc=fsc)


@pytest.mark.slow
def test_ribosome_64px_snr01(shared_data):
    """70S ribosome at 64 px and 5 A/px, N = 2000, SNR 0.1, defocus 1.5-2.5 um, from the truth
    low-passed to 40 A and rotated by 30 degrees: median orientation error <= 1.5 degrees after
    registration, half-map 0.143 resolution within one shell of the true-orientation reconstruction,
    and the Rosenthal-Henderson check (half-map 0.143 = map-vs-truth 0.5, within one shell)."""
    density = read_map(shared_data / "cryoem" / "maps" / "aspire_clean70SRibosome_vol_65p.mrc")
    volume = resample_map(density.data.astype(float), 64)
    sim = simulate_particles(volume, 5.0, 2000, 0.1, seed=1)
    start, _ = starting_reference(sim.volume, 5.0, 40.0, 30.0, seed=2)
    result = refine_particles(stack_from_simulation(sim), start, RefineOptions())
    assert result.usable
    poses = result.x.poses
    comparison = compare_poses(poses.rotations, poses.origins, sim.rotations, sim.origins)
    assert comparison.median_error_deg <= 1.5
    assert comparison.fraction_within(5.0) >= 0.99
    assert comparison.median_shift_error_px <= 0.4
    true_rec = reconstruct_with(sim, result.subsets, sim.rotations, sim.origins)
    assert abs(result.x.crossing - crossing_shell(true_rec.fsc.unmasked)) <= 1.0
    registered = reconstruct_with(
        sim,
        result.subsets,
        comparison.registered_rotations(poses.rotations),
        comparison.registered_origins(sim.rotations, poses.origins),
    )
    vs_truth = fourier_shell_correlation(registered.full_map, sim.volume)
    assert abs(crossing_shell(registered.fsc.unmasked) - crossing_shell(vs_truth, 0.5)) <= 1.0
