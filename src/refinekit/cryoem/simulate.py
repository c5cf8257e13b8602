"""Simulated particles: Fourier-slice projections of a map at random orientations, CTF, shift, noise.

The image formation follows the conventions the reconstruction uses (RELION's, see
:mod:`refinekit.cryoem.geometry`), but it is computed more finely: the map is padded 3 times (the
refinement pads 2 times), which keeps the projections within about 2 % of the exact ones shell by
shell. The tests check it against exact discrete Fourier sums and by reconstructing the map from the
true orientations.

SNR is the variance of the noise-free (CTF-modulated, shifted) images over the variance of the noise,
both over all pixels of all images. Images are written with noise of unit standard deviation (what
RELION's normalisation gives).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..core import InputError
from .ctf import CTFParameters
from .fourier import FourierVolume, centred_ifft2, fft_indices, half_plane_points, shift_phases
from .fsc import lowpass, resolution_to_shell
from .geometry import axis_angle_matrix, random_rotations


def resample_map(volume: np.ndarray, box: int) -> np.ndarray:
    """The map on ``box`` voxels over the same physical extent (Fourier cropping or padding, which keeps
    the centre ``box // 2`` and the voxel values' scale).

    >>> import numpy as np
    >>> v = np.random.default_rng(0).normal(size=(12, 12, 12))
    >>> resample_map(v, 12).round(10).tolist() == v.round(10).tolist(), resample_map(v, 8).shape
    (True, (8, 8, 8))
    """
    volume = np.asarray(volume, dtype=float)
    old = volume.shape[0]
    if box == old:
        return volume.copy()
    transform = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(volume)))
    out = np.zeros((box,) * 3, dtype=complex)
    common = min(old, box)
    src = old // 2 - common // 2
    dst = box // 2 - common // 2
    region = slice(src, src + common)
    out[dst : dst + common, dst : dst + common, dst : dst + common] = transform[region, region, region]
    result = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(out)).real)
    return result * (box / old) ** 3


def band_limit(volume: np.ndarray) -> np.ndarray:
    """The map with every Fourier component at or beyond Nyquist (radius ``box / 2``) removed."""
    box = volume.shape[0]
    f = fft_indices(box)
    radius = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)
    return np.fft.ifftn(np.fft.fftn(volume) * (radius < box / 2 - 0.5)).real


def rotate_map(volume: np.ndarray, rotation: np.ndarray, order: int = 3) -> np.ndarray:
    """The map rotated actively by ``rotation`` about the box centre: ``V'(r) = V(R^T r)`` (cubic
    spline interpolation)."""
    box = volume.shape[0]
    reverse = np.eye(3)[::-1]  # (x, y, z) <-> array order (z, y, x)
    matrix = reverse @ np.asarray(rotation).T @ reverse
    centre = np.full(3, box // 2, dtype=float)
    return ndimage.affine_transform(
        volume, matrix, offset=centre - matrix @ centre, order=order, mode="constant"
    )


def starting_reference(
    volume: np.ndarray, pixel_size: float, resolution: float = 40.0, rotation_deg: float = 0.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """An initial reference as the tests and benchmarks use it: the map low-passed to ``resolution`` A
    and rotated by ``rotation_deg`` about a random axis. Returns the map and the rotation ``Q``."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    # the same rotation in (-180, 180]: a huge angle would overflow the rotation's formula
    rotation_deg = math.remainder(rotation_deg, 360.0)
    rotation = axis_angle_matrix(np.radians(rotation_deg) * axis)
    smooth = lowpass(volume, resolution_to_shell(resolution, volume.shape[0], pixel_size), 2.0)
    rotated = rotate_map(smooth, rotation) if rotation_deg else smooth
    return rotated, rotation


@dataclass
class SimulatedParticles:
    """Simulated images with their truth: rotations (RELION matrices), origins (pixels), CTF."""

    images: np.ndarray
    pixel_size: float
    ctf: CTFParameters
    rotations: np.ndarray
    origins: np.ndarray
    volume: np.ndarray
    snr: float
    noise_sigma: float

    def __len__(self) -> int:
        return int(self.images.shape[0])


def project_images(
    volume: np.ndarray,
    rotations: np.ndarray,
    ctf: CTFParameters | None,
    origins: np.ndarray,
    pixel_size: float,
    pad: int = 3,
    batch: int = 256,
) -> np.ndarray:
    """Noise-free images: central slices of ``volume`` at ``rotations``, times the CTF, translated so
    that translating them by ``origins`` (pixels) centres them."""
    box = volume.shape[0]
    fv = FourierVolume(volume, pad)
    points = half_plane_points(box, box / 2 - 0.5)
    mate = ((-points.ky % box) * box + (-points.kx % box)).astype(np.int64)
    dc = float(volume.sum())
    images = np.empty((rotations.shape[0], box, box), dtype=np.float32)
    for start in range(0, rotations.shape[0], batch):
        stop = min(rotations.shape[0], start + batch)
        values = np.asarray(fv.slices(rotations[start:stop], points), dtype=np.complex128)
        if ctf is not None:
            values = values * ctf.evaluate(points.kx, points.ky, box, pixel_size, slice(start, stop))
            dc_term = dc * ctf.evaluate(np.zeros(1), np.zeros(1), box, pixel_size, slice(start, stop))[:, 0]
        else:
            dc_term = np.full(stop - start, dc)
        # a particle displaced by s = -o from the centre: multiply by exp(-2 pi i k.s / box)
        values = values * np.conj(shift_phases(points.kx, points.ky, origins[start:stop], box))
        full = np.zeros((stop - start, box * box), dtype=np.complex128)
        full[:, points.flat] = values
        full[:, mate] = np.conj(values)
        full[:, 0] = dc_term
        images[start:stop] = centred_ifft2(full.reshape(-1, box, box))
    return images


def simulate_particles(
    volume: np.ndarray,
    pixel_size: float,
    n: int,
    snr: float,
    *,
    seed: int = 0,
    defocus_range: tuple[float, float] = (15000.0, 25000.0),
    astigmatism: float = 500.0,
    max_shift: float = 3.0,
    voltage: float = 300.0,
    cs: float = 2.7,
    amplitude_contrast: float = 0.1,
) -> SimulatedParticles:
    """Simulate ``n`` particle images of ``volume`` (its voxel size ``pixel_size`` A) at ``snr``.

    Orientations are uniform on SO(3); origins uniform in a disc of ``max_shift`` pixels; defocus
    uniform in ``defocus_range`` (A), with ``defocus_v`` up to ``astigmatism`` A below ``defocus_u``
    and a uniform astigmatism angle. The map is band-limited at Nyquist first (that is the truth the
    images carry, returned as ``volume``).

    >>> import numpy as np
    >>> vol = np.zeros((16, 16, 16)); vol[5:11, 6:10, 7:9] = 1.0
    >>> sim = simulate_particles(vol, 4.0, 20, 0.5, seed=1)
    >>> sim.images.shape, round(float(sim.images.std()), 1) > 0.9
    ((20, 16, 16), True)
    """
    if n < 1:
        raise InputError(f"the number of particles must be at least 1, got {n}")
    if not snr > 0:
        raise InputError(f"the SNR must be positive, got {snr}")
    if not pixel_size > 0:
        raise InputError(f"the pixel size must be positive, got {pixel_size}")
    rng = np.random.default_rng(seed)
    truth = band_limit(np.asarray(volume, dtype=float))
    box = truth.shape[0]
    rotations = random_rotations(n, rng)
    radius = max_shift * np.sqrt(rng.uniform(0, 1, n))
    angle = rng.uniform(0, 2 * np.pi, n)
    origins = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    defocus_u = rng.uniform(*defocus_range, n)
    ctf = CTFParameters(
        defocus_u=defocus_u,
        defocus_v=defocus_u - rng.uniform(0, astigmatism, n),
        defocus_angle=rng.uniform(0, 180, n),
        voltage=voltage,
        cs=cs,
        amplitude_contrast=amplitude_contrast,
    )
    clean = project_images(truth, rotations, ctf, origins, pixel_size)
    signal_variance = float(np.mean(clean.var(axis=(1, 2), dtype=np.float64)))
    if not signal_variance > 0:
        raise InputError("the map projects to blank images")
    sigma = np.sqrt(signal_variance / snr)
    noisy = clean + rng.normal(0.0, sigma, size=clean.shape).astype(np.float32)
    images = (noisy / sigma).astype(np.float32)
    del box
    return SimulatedParticles(
        images, float(pixel_size), ctf, rotations, origins, truth / sigma, float(snr), 1.0
    )


def write_simulation(
    outdir: str | os.PathLike[str],
    sim: SimulatedParticles,
    *,
    reference: np.ndarray | None = None,
    stem: str = "particles",
) -> dict[str, Path]:
    """Write ``particles.mrcs`` and ``particles.star`` (no poses), ``truth.star`` (the true angles and
    origins), ``truth.mrc`` (the map the images carry, on their scale) and, if given, the starting
    ``reference`` as ``initial_reference.mrc``, all of them or, on a failure, none. Returns the paths."""
    from ..core import atomic_outputs, output_folder

    out = Path(outdir)
    paths = {
        "stack": out / f"{stem}.mrcs",
        "star": out / f"{stem}.star",
        "truth_star": out / "truth.star",
        "truth_map": out / "truth.mrc",
    }
    if reference is not None:
        paths["reference"] = out / "initial_reference.mrc"
    # all or none: a failure on a late file (a full disk) must not leave a new stack beside an older
    # run's truth.star, nor a folder made for them
    with output_folder(out), atomic_outputs(list(paths.values())) as staged:
        _write_simulation_files(dict(zip(paths, staged, strict=True)), sim, reference, paths["stack"].name)
    return paths


def _write_simulation_files(
    paths: dict[str, Path], sim: SimulatedParticles, reference: np.ndarray | None, stack_name: str
) -> None:
    from .geometry import matrix_to_euler
    from .io import write_map, write_mrc, write_star

    n = len(sim)
    write_mrc(paths["stack"], sim.images, sim.pixel_size)
    optics = {
        "rlnOpticsGroup": [1],
        "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnVoltage": [float(sim.ctf.voltage[0])],
        "rlnSphericalAberration": [float(sim.ctf.cs[0])],
        "rlnAmplitudeContrast": [float(sim.ctf.amplitude_contrast[0])],
        "rlnImagePixelSize": [sim.pixel_size],
        "rlnImageSize": [int(sim.images.shape[-1])],
        "rlnImageDimensionality": [2],
    }
    particles = {
        "rlnImageName": [f"{i + 1:06d}@{stack_name}" for i in range(n)],
        "rlnMicrographName": ["simulated.mrc"] * n,
        "rlnOpticsGroup": np.ones(n, dtype=int),
        "rlnDefocusU": sim.ctf.defocus_u,
        "rlnDefocusV": sim.ctf.defocus_v,
        "rlnDefocusAngle": sim.ctf.defocus_angle,
    }
    comment = f"refinekit cryoem simulate: n={n} snr={sim.snr:g} pixel={sim.pixel_size:g} A"
    write_star(paths["star"], {"optics": optics, "particles": particles}, comment)
    euler = matrix_to_euler(sim.rotations)
    truth = dict(particles)
    truth.update(
        {
            "rlnAngleRot": euler[:, 0],
            "rlnAngleTilt": euler[:, 1],
            "rlnAnglePsi": euler[:, 2],
            "rlnOriginXAngst": sim.origins[:, 0] * sim.pixel_size,
            "rlnOriginYAngst": sim.origins[:, 1] * sim.pixel_size,
        }
    )
    write_star(paths["truth_star"], {"optics": optics, "particles": truth}, comment + " (true poses)")
    write_map(paths["truth_map"], sim.volume, sim.pixel_size)
    if reference is not None:
        write_map(paths["reference"], reference, sim.pixel_size)
