"""The defocus blur model: a pixel ``Δz`` frames out of focus is spread over a disk of radius
``blur_rate * |Δz|`` pixels (geometric optics, thin lens), convolved with a Gaussian of ``sigma0``
pixels (diffraction, pixel size, the in-focus blur).

The model predicts a frame from an all-in-focus image and a depth map; that prediction is how held-out
frames (the free slices) score a depth map. Blurs are computed in the Fourier domain: the optical
transfer function of a uniform disk of radius ``r`` is ``2 J1(2 pi r f) / (2 pi r f)``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import j1


def disk_otf(radius: float, sigma0: float, fy: np.ndarray, fx: np.ndarray) -> np.ndarray:
    """Transfer function of the disk(``radius``) * Gaussian(``sigma0``) blur at frequencies (cycles/px).

    >>> f = np.array([0.0, 0.1]); otf = disk_otf(2.0, 0.0, f[:, None], np.zeros((1, 1)))
    >>> [round(float(v), 4) for v in otf.ravel()]
    [1.0, 0.8152]
    """
    rho = np.sqrt(fy * fy + fx * fx)
    out = np.exp(-2.0 * np.pi ** 2 * sigma0 ** 2 * rho ** 2) if sigma0 > 0 else np.ones_like(rho)
    if radius > 1e-6:
        arg = 2.0 * np.pi * radius * rho
        safe = np.where(arg > 1e-8, arg, 1.0)
        out = out * np.where(arg > 1e-8, 2.0 * j1(safe) / safe, 1.0)
    return out


def _pad_width(max_radius: float, sigma0: float) -> int:
    return int(np.ceil(max_radius + 4 * sigma0)) + 4


class Spectrum:
    """The Fourier transform of a (reflect-padded) grey or multi-channel image, ready to be blurred
    with any number of radii at the cost of one product and one inverse FFT each."""

    def __init__(self, image: np.ndarray, max_radius: float, sigma0: float = 0.0) -> None:
        image = np.asarray(image, dtype=np.float32)
        self.shape = image.shape
        self.pad = _pad_width(max_radius, sigma0)
        pad = [(self.pad, self.pad), (self.pad, self.pad)] + [(0, 0)] * (image.ndim - 2)
        padded = np.pad(image, pad, mode="reflect" if min(image.shape[:2]) > self.pad else "edge")
        self.padded_shape = padded.shape[:2]
        self.spectrum = np.fft.rfft2(padded, axes=(0, 1))
        self.fy = np.fft.fftfreq(self.padded_shape[0])[:, None]
        self.fx = np.fft.rfftfreq(self.padded_shape[1])[None, :]
        self.sigma0 = float(sigma0)

    def otf(self, radius: float) -> np.ndarray:
        return disk_otf(radius, self.sigma0, self.fy, self.fx)

    def blurred(self, radius: float) -> np.ndarray:
        """The image blurred by disk(``radius``) * Gaussian(``sigma0``), same shape as the input."""
        otf = self.otf(radius).astype(self.spectrum.real.dtype, copy=False)
        if self.spectrum.ndim == 3:
            otf = otf[:, :, None]
        out = np.fft.irfft2(self.spectrum * otf, s=self.padded_shape, axes=(0, 1))
        p = self.pad
        return out[p:p + self.shape[0], p:p + self.shape[1]].astype(np.float32)


def blur(image: np.ndarray, radius: float, sigma0: float = 0.0) -> np.ndarray:
    """``image`` blurred by a disk of ``radius`` px convolved with a Gaussian of ``sigma0`` px.

    >>> img = np.zeros((32, 32), np.float32); img[16, 16] = 1
    >>> out = blur(img, 3.0)
    >>> round(float(out.sum()), 4), round(float(out[16, 16] * np.pi * 3.0 ** 2), 1)   # ~ 1 / area inside
    (1.0, 1.1)
    >>> bool(abs(out[16, 21]) < 0.1 * out[16, 16])                                   # ~ 0 outside
    True
    """
    return Spectrum(image, radius, sigma0).blurred(radius)


def radius_grid(max_radius: float, fine_step: float = 0.25, growth: float = 1.06) -> np.ndarray:
    """Blur radii at which the model is tabulated: steps of ``fine_step`` px up to 4 px, then growing
    by ``growth`` per step (a blur's effect changes with its relative, not absolute, size)."""
    radii = list(np.arange(0.0, min(max_radius, 4.0) + 1e-9, fine_step))
    while radii[-1] < max_radius:
        radii.append(max(radii[-1] * growth, radii[-1] + fine_step))
    return np.asarray(radii, dtype=np.float64)


class BlurTable:
    """An all-in-focus (grey) image blurred at a grid of radii; :meth:`predict` interpolates between
    them per pixel, so a frame's prediction for any depth map costs a gather, not a convolution.

    The per-pixel interpolation assumes that depth changes slowly over a blur disk (no occlusion),
    the same assumption as the rendering model.
    """

    def __init__(self, image: np.ndarray, max_radius: float, sigma0: float = 0.0) -> None:
        self.radii = radius_grid(max(float(max_radius), 0.5))
        spectrum = Spectrum(image, float(self.radii[-1]), sigma0)
        self.table = np.stack([spectrum.blurred(r) for r in self.radii])
        self._flat = self.table.reshape(-1)
        self._plane = self.table[0].size
        self._pixels = np.arange(self._plane)
        self._positions = np.arange(self.radii.size, dtype=np.float64)

    @property
    def max_radius(self) -> float:
        return float(self.radii[-1])

    def predict(self, radius_map: np.ndarray) -> np.ndarray:
        """The image as seen through a blur of ``radius_map[y, x]`` px at each pixel."""
        return self.predict_at(np.ravel(radius_map), self._pixels).reshape(radius_map.shape)

    def predict_at(self, radius: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """:meth:`predict` at some pixels only: ``pixels`` are flat indices, ``radius`` their blurs."""
        position = np.interp(radius, self.radii, self._positions)
        lower = np.minimum(position.astype(np.intp), self.radii.size - 2)
        frac = (position - lower).astype(np.float32)
        flat = lower * self._plane + pixels
        below = self._flat.take(flat)
        above = self._flat.take(flat + self._plane)
        return below + frac * (above - below)
