"""Image formation and reconstruction against known answers: exact Fourier sums, real-space sums,
RELION's CTF, and the map back from its own projections."""

from __future__ import annotations

import numpy as np
import pytest

from refinekit.cryoem.ctf import CTFParameters, electron_wavelength
from refinekit.cryoem.fourier import BackProjector, FourierVolume, centred_fft2, half_plane_points
from refinekit.cryoem.fsc import crossing_shell, fourier_shell_correlation
from refinekit.cryoem.geometry import euler_to_matrix, random_rotations
from refinekit.cryoem.reconstruct import backproject_particles, reconstruct_halves
from refinekit.cryoem.search import ParticleTransforms
from refinekit.cryoem.simulate import project_images, simulate_particles


def blobs(box: int, seed: int = 0, count: int = 6) -> np.ndarray:
    """A smooth, asymmetric test map: Gaussian blobs inside the box."""
    rng = np.random.default_rng(seed)
    x = np.arange(box) - box // 2
    z, y, xx = np.meshgrid(x, x, x, indexing="ij")
    volume = np.zeros((box,) * 3)
    for _ in range(count):
        centre = rng.uniform(-box / 5, box / 5, 3)
        width = rng.uniform(1.2, 2.5)
        volume += np.exp(
            -((xx - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) / (2 * width**2)
        )
    return volume


def textured(box: int, seed: int = 0) -> np.ndarray:
    """A test map with power at every frequency: white noise inside a soft sphere."""
    from refinekit.cryoem.fsc import spherical_mask
    from refinekit.cryoem.simulate import band_limit

    return band_limit(
        np.random.default_rng(seed).normal(size=(box,) * 3) * spherical_mask(box, box / 2 - 4, 2.0)
    )


def exact_slice(volume: np.ndarray, rotation: np.ndarray, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
    """V^(A^T (kx, ky, 0)) by the direct sum over voxels (no interpolation at all)."""
    box = volume.shape[0]
    x = np.arange(box) - box // 2
    z, y, xx = np.meshgrid(x, x, x, indexing="ij")
    coords = np.stack([xx.ravel(), y.ravel(), z.ravel()], axis=1)
    q = kx[:, None] * rotation[0][None] + ky[:, None] * rotation[1][None]
    return np.exp(-2j * np.pi * (q @ coords.T) / box) @ volume.ravel()


@pytest.mark.parametrize(("pad", "tolerance"), [(2, 0.04), (3, 0.015)])
def test_fourier_slice_matches_exact_sums(pad, tolerance):
    volume = blobs(20)
    points = half_plane_points(20, 9.5)
    rotations = random_rotations(4, np.random.default_rng(3))
    values = np.asarray(FourierVolume(volume, pad).slices(rotations, points))
    for rotation, got in zip(rotations, values, strict=True):
        exact = exact_slice(volume, rotation, points.kx, points.ky)
        assert np.linalg.norm(got - exact) / np.linalg.norm(exact) < tolerance


def project(volume: np.ndarray, rot: float, tilt: float, psi: float) -> np.ndarray:
    """A real-space image by the Fourier-slice projector (no CTF, no shift)."""
    rotation = euler_to_matrix(rot, tilt, psi)[None]
    return project_images(volume, rotation, None, np.zeros((1, 2)), 1.0, pad=3)[0]


def close(a: np.ndarray, b: np.ndarray, tol: float = 0.02) -> bool:
    return np.linalg.norm(a - b) / np.linalg.norm(b) < tol


def test_projection_conventions_against_real_space_sums():
    volume = blobs(24, seed=1)  # array [z, y, x]; blobs keep away from the edges
    # tilt 0: along z
    assert close(project(volume, 0, 0, 0), volume.sum(axis=0))
    # rot 0, tilt 90: A^T (x, y, z) = (z, y, -x): P[y, x] = sum_X V[Z=-x, Y=y, X]
    side = volume.sum(axis=2)  # [Z, Y]
    expected = np.roll(np.flip(side.T, axis=1), 1, axis=1)
    assert close(project(volume, 0, 90, 0), expected)
    # psi 90: A^T (x, y, z) = (-y, x, z): P[y, x] = S[Y=x, X=-y], S = sum over z
    top = volume.sum(axis=0)  # [Y, X]
    expected = np.roll(np.flip(top.T, axis=0), 1, axis=0)
    assert close(project(volume, 0, 0, 90), expected)
    # rot 90 then tilt 90 views along +y: A^T (x, y, z) = (-y, z, -x): P[y, x] = sum_Y V[Z=-x, Y, X=-y]
    expected = np.roll(np.flip(volume.sum(axis=1), axis=(0, 1)), 1, axis=(0, 1)).T
    assert close(project(volume, 90, 90, 0), expected)


def test_origin_convention_is_relions():
    # translating the image by +origin centres the particle: an image simulated with origin (2, -1)
    # has the particle at centre - origin
    volume = blobs(24, seed=2)
    centred = project_images(volume, np.eye(3)[None], None, np.zeros((1, 2)), 1.0)[0]
    moved = project_images(volume, np.eye(3)[None], None, np.array([[2.0, -1.0]]), 1.0)[0]
    assert close(moved, np.roll(centred, shift=(1, -2), axis=(0, 1)), 1e-4)


def test_ctf_relion_convention():
    assert float(electron_wavelength(300.0)) == pytest.approx(0.019687, abs=1e-6)
    assert float(electron_wavelength(200.0)) == pytest.approx(0.025079, abs=1e-6)
    box, pixel = 128, 1.0
    ctf = CTFParameters(20000.0, 20000.0, 0.0, 300.0, 0.0, 0.1)
    assert ctf.evaluate(np.zeros(1), np.zeros(1), box, pixel)[0, 0] == pytest.approx(0.1)  # +Q0 at k = 0
    # Cs = 0: CTF = sin(pi lambda dz s^2 + atan(Q0 / sqrt(1 - Q0^2))), first zero where the phase is pi
    lam = float(electron_wavelength(300.0))
    phase0 = np.arctan(0.1 / np.sqrt(1 - 0.01))
    s_first = np.sqrt((np.pi - phase0) / (np.pi * lam * 20000.0))
    k = s_first * box * pixel
    assert abs(ctf.evaluate(np.array([k]), np.zeros(1), box, pixel)[0, 0]) < 1e-9
    assert ctf.evaluate(np.array([0.5 * k]), np.zeros(1), box, pixel)[0, 0] > 0.5  # first lobe positive
    # astigmatism: defocus U acts along the defocus angle, V across it
    astig = CTFParameters(20000.0, 15000.0, 30.0, 300.0, 2.7, 0.1)
    along = np.radians(30.0)
    across = along + np.pi / 2
    u = CTFParameters(20000.0, 20000.0, 0.0, 300.0, 2.7, 0.1)
    v = CTFParameters(15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1)
    r = np.array([10.0])
    for angle, reference in ((along, u), (across, v)):
        kx, ky = r * np.cos(angle), r * np.sin(angle)
        assert astig.evaluate(kx, ky, box, pixel)[0, 0] == pytest.approx(
            reference.evaluate(kx, ky, box, pixel)[0, 0]
        )


def test_backprojection_returns_the_map():
    box = 20
    volume = textured(box, seed=4)
    rotations = random_rotations(600, np.random.default_rng(5))
    points = half_plane_points(box, box / 2 - 0.5)
    values = np.asarray(FourierVolume(volume, 3).slices(rotations, points))
    bp = BackProjector(box)
    bp.insert(rotations, points, values, np.ones(values.shape, dtype=np.float32))
    bp.insert_dc(float(volume.sum()) * len(rotations), float(len(rotations)))
    rec = bp.reconstruct(np.full(box // 2 + 1, 1e-6 * bp.weight_by_shell().mean()))
    fsc = fourier_shell_correlation(rec, volume)
    assert fsc[1 : box // 2].min() > 0.99
    # within the band (the gridding correction leaks a little beyond it), the mean aside (the padded
    # grid's lowest frequencies between the slices are never sampled), the map comes back to ~5 %
    from refinekit.cryoem.simulate import band_limit

    inside = band_limit(rec) - rec.mean()
    assert np.linalg.norm(inside - (volume - volume.mean())) / np.linalg.norm(volume) < 0.08


def test_simulated_particles_reconstruct_from_true_poses():
    # noise-free images with CTF: the CTF^2-weighted reconstruction gives the map back
    box = 24
    volume = textured(box, seed=6)
    sim = simulate_particles(volume, 6.0, 800, 1e6, seed=7)
    data = ParticleTransforms(
        sim.images,
        sim.ctf,
        6.0,
        box / 2 - 1,
        __import__("refinekit.cryoem.backend", fromlist=["NumpyBackend"]).NumpyBackend(),
    )
    halves = [np.arange(0, 800, 2), np.arange(1, 800, 2)]
    weights = np.ones(box // 2 + 1)
    bps = [backproject_particles(data, h, sim.rotations[h], sim.origins[h], weights) for h in halves]
    rec = reconstruct_halves(bps[0], bps[1], 6.0)
    truth_fsc = fourier_shell_correlation(rec.full_map, sim.volume)
    assert truth_fsc[1 : box // 2 - 1].min() > 0.98
    assert crossing_shell(rec.fsc.unmasked) >= box / 2 - 1.5  # the halves agree to Nyquist
    # shifted origins matter: the same images reconstructed with zero origins are worse
    bad = [
        backproject_particles(data, h, sim.rotations[h], np.zeros_like(sim.origins[h]), weights)
        for h in halves
    ]
    rec_bad = reconstruct_halves(bad[0], bad[1], 6.0)
    assert fourier_shell_correlation(rec_bad.full_map, sim.volume)[box // 4] < truth_fsc[box // 4] - 0.1


def test_centred_fft_of_a_centred_point_is_flat():
    image = np.zeros((1, 16, 16))
    image[0, 8, 8] = 1.0
    assert np.allclose(centred_fft2(image), 1.0)
