"""Fixtures for the cryo-EM tests: small simulated datasets written as RELION files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from refinekit.cryoem import simulate_particles, starting_reference, write_simulation
from refinekit.cryoem.datasets import bundled_map
from refinekit.cryoem.simulate import resample_map


@pytest.fixture(scope="session")
def small_simulation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """300 particles (32 px, 8.55 A/px, SNR 0.3) of the bundled EMD-1832 map, written as STAR + MRCS,
    with a starting reference low-passed to 40 A and rotated by 25 degrees."""
    density = bundled_map("emd_1832")
    volume = resample_map(density.data.astype(float), 32)
    pixel = density.pixel_size * 40 / 32
    sim = simulate_particles(volume, pixel, 300, 0.3, seed=11)
    reference, _ = starting_reference(sim.volume, pixel, 40.0, 25.0, seed=12)
    out = tmp_path_factory.mktemp("sim32")
    write_simulation(out, sim, reference=reference)
    return out, sim


def write_stack_and_star(
    folder: Path,
    star_text: str,
    images: np.ndarray | None = None,
    stack_name: str = "stack.mrcs",
    pixel: float = 2.0,
) -> Path:
    """A STAR file (text given) and, unless ``images`` is None, its stack beside it."""
    from refinekit.cryoem.io import write_mrc

    if images is not None:
        write_mrc(folder / stack_name, images, pixel)
    star = folder / "particles.star"
    star.write_text(star_text)
    return star
