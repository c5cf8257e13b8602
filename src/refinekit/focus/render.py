"""Rendering a focal stack from an all-in-focus image and a depth map, with the physics of the data:
thin-lens defocus (a disk of radius ``blur_rate * |z - depth|`` px, convolved with a Gaussian of
``sigma0`` px), layered scatter rendering without occlusion, Poisson and read noise, and optional
misalignment (shift, rotation, focus breathing) per frame.

Stacks rendered here are the known answers of the tests: the truth image and depth are exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core import InputError
from .defocus import Spectrum


def render_stack(
    image: np.ndarray,
    depth: np.ndarray,
    z: Sequence[float] | np.ndarray,
    *,
    blur_rate: float = 1.5,
    sigma0: float = 0.5,
    layer: float = 0.25,
    photons: float | None = 2000.0,
    read_noise: float = 0.004,
    warps: Sequence[np.ndarray] | None = None,
    seed: int | None = 0,
) -> np.ndarray:
    """Frames focused at positions ``z`` (in the units of ``depth``) of a scene with texture ``image``
    (``(H, W)`` or ``(H, W, 3)`` in [0, 1]) and height ``depth`` (``(H, W)``).

    Each frame is the sum over depth layers (spacing ``layer``, tent weights) of the layer's texture
    blurred for that layer's defocus. ``photons`` is the photon count at white (Poisson noise; None
    for none), ``read_noise`` the standard deviation of additive Gaussian noise. ``warps``: one 2x3
    affine matrix per frame to misalign the frames: frame pixel ``(x, y)`` shows the scene at
    ``warp @ (x, y, 1)`` (an aligner finds the inverse warp). Returns float32 frames
    ``(len(z), H, W[, 3])``, not clipped or quantised.

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> texture = rng.random((32, 32)).astype(np.float32)
    >>> frames = render_stack(texture, np.full((32, 32), 1.0), [0, 1, 2], photons=None, read_noise=0)
    >>> sharpest = int(np.argmax([np.var(np.diff(f, axis=1)) for f in frames]))
    >>> frames.shape, sharpest
    ((3, 32, 32), 1)
    """
    image = np.asarray(image, dtype=np.float32)
    depth = np.asarray(depth, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    if depth.shape != image.shape[:2]:
        raise InputError(f"depth map {depth.shape} does not match the image {image.shape[:2]}")
    if layer <= 0 or blur_rate < 0 or sigma0 < 0:
        raise InputError("layer must be > 0, blur_rate and sigma0 >= 0")
    lo, hi = float(depth.min()), float(depth.max())
    levels = np.arange(np.floor(lo / layer) * layer, hi + layer, layer)
    max_radius = blur_rate * float(max(abs(z.max() - lo), abs(hi - z.min())))
    # sum every frame's layers in the Fourier domain: one inverse transform per frame, and one
    # transfer function per distinct defocus radius
    spectra: np.ndarray | None = None
    otfs: dict[float, np.ndarray] = {}
    for level in levels:
        weight = np.clip(1.0 - np.abs(depth - level) / layer, 0.0, None)
        if not weight.any():
            continue
        weight = weight[..., None] if image.ndim == 3 else weight
        spectrum = Spectrum(image * weight.astype(np.float32), max_radius, sigma0)
        if spectra is None:
            spectra = np.zeros((z.size, *spectrum.spectrum.shape), dtype=np.complex128)
        for k, zk in enumerate(z):
            radius = round(blur_rate * abs(zk - level), 9)
            if radius not in otfs:
                otfs[radius] = spectrum.otf(radius)
            otf = otfs[radius]
            spectra[k] += spectrum.spectrum * (otf[:, :, None] if image.ndim == 3 else otf)
    assert spectra is not None
    p = spectrum.pad
    frames = np.stack([np.fft.irfft2(s, s=spectrum.padded_shape, axes=(0, 1))[p:p + image.shape[0],
                                                                               p:p + image.shape[1]]
                       for s in spectra])
    if warps is not None:
        import cv2

        if len(warps) != z.size:
            raise InputError(f"{len(warps)} warps for {z.size} frames")
        h, w = image.shape[:2]
        for k, warp in enumerate(warps):
            frames[k] = cv2.warpAffine(frames[k], np.asarray(warp, dtype=np.float64), (w, h),
                                       flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                                       borderMode=cv2.BORDER_REFLECT)
    rng = np.random.default_rng(seed)
    if photons is not None:
        frames = rng.poisson(np.clip(frames, 0, None) * photons) / photons
    if read_noise > 0:
        frames = frames + rng.normal(0.0, read_noise, frames.shape)
    return frames.astype(np.float32)


def smooth_surface(shape: tuple[int, int], low: float, high: float, *, bumps: int = 3,
                   seed: int | None = 0) -> np.ndarray:
    """A smooth height map (tilted plane plus Gaussian bumps) scaled to [``low``, ``high``].

    >>> d = smooth_surface((16, 24), 2.0, 12.0)
    >>> d.shape, float(d.min()), float(d.max())
    ((16, 24), 2.0, 12.0)
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    y /= max(h - 1, 1)
    x /= max(w - 1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    surface = np.cos(angle) * x + np.sin(angle) * y
    for _ in range(bumps):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        width = rng.uniform(0.1, 0.25)
        surface += rng.uniform(-1, 1) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * width ** 2))
    surface -= surface.min()
    surface /= max(surface.max(), 1e-12)
    return (low + (high - low) * surface).astype(np.float32)
