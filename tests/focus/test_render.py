"""The renderer's physics, checked against the defocus model it shares with the depth estimate."""

from __future__ import annotations

import numpy as np

from refinekit.focus.defocus import BlurTable, blur, disk_otf, radius_grid
from refinekit.focus.render import render_stack, smooth_surface

from .conftest import texture


def test_a_flat_scene_is_the_image_blurred_by_its_defocus() -> None:
    scene = texture((64, 64), seed=1, colour=False)
    frames = render_stack(scene, np.full((64, 64), 2.5), [0.0, 2.5, 4.0], blur_rate=1.5, sigma0=0.5,
                          photons=None, read_noise=0.0)
    for frame, defocus in zip(frames, (2.5, 0.0, 1.5), strict=True):
        inner = (slice(8, -8), slice(8, -8))  # the two pad their borders differently
        assert np.abs(frame - blur(scene, 1.5 * defocus, 0.5))[inner].max() < 5e-4


def test_noise_has_the_poisson_and_read_variance() -> None:
    flat = np.full((128, 128), 0.5, np.float32)
    frames = render_stack(flat, np.zeros((128, 128)), [0.0], photons=1000.0, read_noise=0.01, seed=3)
    expected = 0.5 / 1000.0 + 0.01 ** 2
    assert abs(float(frames[0].var()) / expected - 1.0) < 0.05


def test_disk_transfer_function_has_its_first_zero_where_theory_puts_it() -> None:
    # 2 J1(x) / x first vanishes at x = 3.8317: frequency 3.8317 / (2 pi r)
    radius = 3.0
    f0 = 3.8317 / (2 * np.pi * radius)
    values = disk_otf(radius, 0.0, np.array([[f0 - 0.01], [f0], [f0 + 0.01]]), np.zeros((1, 1))).ravel()
    assert abs(values[1]) < 1e-4 and values[0] > 0 > values[2]


def test_blur_table_interpolates_between_radii() -> None:
    scene = texture((48, 48), seed=2, colour=False)
    table = BlurTable(scene, max_radius=6.0)
    assert table.radii[0] == 0.0 and table.max_radius >= 6.0
    direct = blur(scene, 1.6)
    assert np.abs(table.predict(np.full(scene.shape, 1.6)) - direct).max() < 0.01
    assert np.all(np.diff(radius_grid(30.0)) > 0)


def test_surface_is_scaled_to_its_range() -> None:
    surface = smooth_surface((20, 30), -1.0, 3.0, seed=4)
    assert surface.min() == -1.0 and surface.max() == 3.0
