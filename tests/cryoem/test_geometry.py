"""Orientations: RELION's Euler convention, HEALPix grids, pose registration."""

from __future__ import annotations

import numpy as np
import pytest

from refinekit.cryoem.geometry import (
    angular_distance,
    axis_angle_matrix,
    compare_poses,
    euler_to_matrix,
    healpix_directions,
    matrix_to_euler,
    orientation_grid,
    random_rotations,
)


def test_euler_round_trip_and_ranges():
    rng = np.random.default_rng(0)
    angles = np.stack([rng.uniform(-180, 180, 500), rng.uniform(0, 180, 500), rng.uniform(-180, 180, 500)], 1)
    matrices = euler_to_matrix(*angles.T)
    assert np.allclose(matrices @ np.swapaxes(matrices, 1, 2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(matrices), 1.0)
    back = matrix_to_euler(matrices)
    assert np.allclose(back, angles, atol=1e-7)
    assert np.all((back[:, 1] >= 0) & (back[:, 1] <= 180))


def test_relion_matrix_entries():
    # RELION's Euler_angles2matrix, written out for rot=30, tilt=50, psi=70
    a, b, g = np.radians([30.0, 50.0, 70.0])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    expected = np.array(
        [
            [cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
            [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
            [sb * ca, sb * sa, cb],
        ]
    )
    assert np.allclose(euler_to_matrix(30.0, 50.0, 70.0), expected)


@pytest.mark.parametrize("tilt", [0.0, 180.0])
def test_euler_degenerate_tilt(tilt):
    matrix = euler_to_matrix(25.0, tilt, 40.0)
    back = matrix_to_euler(matrix)
    assert back[0] == 0.0
    assert np.allclose(euler_to_matrix(*back), matrix, atol=1e-12)


def test_viewing_direction_is_spherical_coordinates():
    rot, tilt = 40.0, 65.0
    direction = euler_to_matrix(rot, tilt, 123.0).T @ [0, 0, 1]
    r, t = np.radians(rot), np.radians(tilt)
    assert np.allclose(direction, [np.sin(t) * np.cos(r), np.sin(t) * np.sin(r), np.cos(t)])


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_healpix_is_uniform(order):
    directions = healpix_directions(order)
    assert directions.shape == (12 * 4**order, 3)
    assert np.allclose(np.linalg.norm(directions, axis=1), 1.0)
    # equal-area pixels: the centres' mean is the origin and their covariance is isotropic
    assert np.allclose(directions.mean(axis=0), 0.0, atol=1e-12)
    assert np.allclose(np.cov(directions.T, bias=True), np.eye(3) / 3, atol=0.06 if order == 0 else 0.01)
    # no two centres coincide; nearest-neighbour spacing stays near the nominal step
    cos = np.clip(directions @ directions.T, -1, 1)
    np.fill_diagonal(cos, -1)
    nearest = np.degrees(np.arccos(cos.max(axis=1)))
    step = np.degrees(np.sqrt(4 * np.pi / directions.shape[0]))
    assert nearest.min() > 0.5 * step and nearest.max() < 1.5 * step


def test_orientation_grid_covers_so3():
    grid = orientation_grid(2)
    rng = np.random.default_rng(1)
    probes = random_rotations(300, rng)
    # every random rotation lies within ~ one grid step of a grid orientation
    distance = np.array([angular_distance(grid.matrices, p).min() for p in probes])
    assert distance.max() < grid.step
    assert np.median(distance) < 0.6 * grid.step


def test_axis_angle_matrix():
    assert np.allclose(axis_angle_matrix(np.zeros(3)), np.eye(3))
    v = np.array([0.3, -0.2, 0.5])
    rotation = axis_angle_matrix(v)
    assert np.isclose(angular_distance(rotation, np.eye(3)), np.degrees(np.linalg.norm(v)))
    assert np.allclose(rotation @ v, v)  # the axis is fixed


def test_compare_poses_recovers_global_rotation_and_errors():
    rng = np.random.default_rng(2)
    truth = random_rotations(200, rng)
    offset = euler_to_matrix(20.0, 35.0, -50.0)
    # per-particle errors of exactly 2 degrees, in random directions, plus five lost particles
    axes = rng.normal(size=(200, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    estimated = axis_angle_matrix(np.radians(2.0) * axes) @ truth @ offset
    estimated[:5] = random_rotations(5, rng)
    origins_true = rng.normal(size=(200, 2))
    translation = np.array([1.0, -2.0, 0.5])
    origins = origins_true - np.einsum("nij,j->ni", truth[:, :2, :], translation) + 0.1
    result = compare_poses(estimated, origins, truth, origins_true)
    assert angular_distance(result.registration, offset) < 0.3
    assert abs(result.median_error_deg - 2.0) < 0.2
    assert result.fraction_within(5.0) == pytest.approx(195 / 200)
    assert np.allclose(result.translation_px, translation, atol=0.05)
    assert result.median_shift_error_px == pytest.approx(np.hypot(0.1, 0.1), abs=0.05)
