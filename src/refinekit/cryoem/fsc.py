"""Fourier shell correlation, resolution, masks, and the phase-randomisation correction.

The FSC between two independently refined half maps measures resolution honestly: a shell correlates
only through the signal the halves share. The 0.143 threshold (Rosenthal & Henderson 2003) is where the
full map's FSC against the truth is 0.5. A mask raises the FSC by removing solvent noise but also adds
correlation of its own; Chen et al. (2013) measure that by randomising the phases of both halves
beyond the shell where the unmasked FSC falls and masking again: ``FSC_true = (FSC_masked -
FSC_random) / (1 - FSC_random)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .fourier import fft_indices


def frequency_shells(box: int) -> np.ndarray:
    """Rounded radius of every point of a ``box^3`` fft-layout transform."""
    f = fft_indices(box)
    return np.rint(np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)).astype(int)


def fourier_shell_correlation(map1: np.ndarray, map2: np.ndarray) -> np.ndarray:
    """FSC per shell ``0 .. box // 2`` of two maps of one box.

    >>> import numpy as np
    >>> v = np.random.default_rng(0).normal(size=(16, 16, 16))
    >>> bool(np.allclose(fourier_shell_correlation(v, 2 * v), 1.0))
    True
    """
    if map1.shape != map2.shape:
        raise ValueError(f"maps differ in shape: {map1.shape} and {map2.shape}")
    if map1.ndim != 3 or len(set(map1.shape)) != 1:
        raise ValueError(f"the FSC needs cubic 3D maps, got shape {map1.shape}")
    # a NaN spreads to every Fourier coefficient, and the NaN shells below would read as FSC 0: a
    # resolution of one shell instead of an error
    if not (np.all(np.isfinite(map1)) and np.all(np.isfinite(map2))):
        raise ValueError("a map contains NaN or Inf values")
    box = map1.shape[0]
    f1, f2 = np.fft.fftn(map1), np.fft.fftn(map2)
    shells = frequency_shells(box).ravel()
    n = box // 2 + 1
    inside = shells < n
    s = shells[inside]
    cross = np.bincount(s, weights=(f1 * np.conj(f2)).real.ravel()[inside], minlength=n)
    p1 = np.bincount(s, weights=(np.abs(f1) ** 2).ravel()[inside], minlength=n)
    p2 = np.bincount(s, weights=(np.abs(f2) ** 2).ravel()[inside], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        fsc = cross / np.sqrt(p1 * p2)
    return np.nan_to_num(fsc, nan=0.0)


def crossing_shell(fsc: np.ndarray, threshold: float = 0.143) -> float:
    """The (linearly interpolated) shell where the FSC first falls below ``threshold``, searched from
    shell 1; the last shell where it never does.

    >>> crossing_shell(np.array([1.0, 0.9, 0.5, 0.1, 0.0]), 0.3)
    2.5
    """
    for s in range(1, fsc.size):
        if fsc[s] < threshold:
            above = fsc[s - 1]
            return float(s - 1 + (above - threshold) / (above - fsc[s])) if above != fsc[s] else float(s)
    return float(fsc.size - 1)


def shell_to_resolution(shell: float, box: int, pixel_size: float) -> float:
    """Resolution in Angstrom of a (fractional) shell: ``box * pixel_size / shell``."""
    return box * pixel_size / shell if shell > 0 else float("inf")


def resolution_to_shell(resolution: float, box: int, pixel_size: float) -> float:
    return box * pixel_size / resolution


def resolution(fsc: np.ndarray, box: int, pixel_size: float, threshold: float = 0.143) -> float:
    """Resolution (Angstrom) where ``fsc`` crosses ``threshold``."""
    return shell_to_resolution(crossing_shell(fsc, threshold), box, pixel_size)


# ------------------------------------------------------------------------------------- filters
def lowpass(volume: np.ndarray, shell: float, edge: float = 2.0) -> np.ndarray:
    """Low-pass filter to ``shell`` (in Fourier pixels) with a raised-cosine edge ``edge`` shells wide
    centred on it (works for 2D and 3D arrays)."""
    box = volume.shape[0]
    f = fft_indices(box)
    grids = np.meshgrid(*([f] * volume.ndim), indexing="ij")
    radius = np.sqrt(sum(g * g for g in grids))
    filt = raised_cosine(radius, shell, edge)
    return np.fft.ifftn(np.fft.fftn(volume) * filt).real


def raised_cosine(radius: np.ndarray, cutoff: float, edge: float) -> np.ndarray:
    """1 below ``cutoff - edge/2``, 0 above ``cutoff + edge/2``, a cosine between."""
    if edge <= 0:
        return (radius <= cutoff).astype(float)
    t = np.clip((radius - (cutoff - edge / 2)) / edge, 0.0, 1.0)
    return 0.5 * (1 + np.cos(np.pi * t))


# --------------------------------------------------------------------------------------- masks
def spherical_mask(box: int, radius: float, edge: float = 3.0, ndim: int = 3) -> np.ndarray:
    """A soft sphere (circle for ``ndim=2``) of ``radius`` pixels about the centre, cosine edge
    ``edge`` pixels wide outside the radius."""
    x = np.arange(box) - box // 2
    grids = np.meshgrid(*([x] * ndim), indexing="ij")
    r = np.sqrt(sum(g * g for g in grids))
    t = np.clip((r - radius) / max(edge, 1e-9), 0.0, 1.0)
    return 0.5 * (1 + np.cos(np.pi * t))


def solvent_mask(
    volume: np.ndarray,
    pixel_size: float,
    *,
    lowpass_resolution: float = 15.0,
    threshold: float | None = None,
    extend: float = 3.0,
    edge: float = 6.0,
) -> np.ndarray:
    """A soft mask around the density: the map low-passed to ``lowpass_resolution`` A, thresholded
    (default: half-way between the solvent level and the 99.5th percentile, an Otsu-free choice that
    holds for single particles in a box), its largest component kept, dilated by ``extend`` pixels and
    given a cosine edge ``edge`` pixels wide."""
    box = volume.shape[0]
    smooth = lowpass(volume, resolution_to_shell(lowpass_resolution, box, pixel_size), 2.0)
    if threshold is None:
        solvent = float(np.median(smooth[spherical_mask(box, box / 2 - 1, 0.5) < 0.5])) if box > 4 else 0.0
        high = float(np.percentile(smooth, 99.5))
        threshold = solvent + 0.25 * (high - solvent)
    binary = smooth > threshold
    labels, count = ndimage.label(binary)
    if count > 1:
        sizes = ndimage.sum(binary, labels, range(1, count + 1))
        binary = labels == (1 + int(np.argmax(sizes)))
    if not binary.any():
        return spherical_mask(box, box / 2 - edge - 1, edge)
    distance = ndimage.distance_transform_edt(~binary)
    t = np.clip((distance - extend) / max(edge, 1e-9), 0.0, 1.0)
    return 0.5 * (1 + np.cos(np.pi * t))


def phase_randomised(volume: np.ndarray, from_shell: int, rng: np.random.Generator) -> np.ndarray:
    """The map with the phases of every shell ``>= from_shell`` replaced by random ones (amplitudes
    kept; the random phases are odd, ``phi(-k) = -phi(k)``, so the map stays real)."""
    transform = np.fft.fftn(volume)
    phases = rng.uniform(0, 2 * np.pi, size=transform.shape)
    odd = phases - np.roll(np.flip(phases), 1, axis=(0, 1, 2))  # phi(k) - phi(-k): still uniform mod 2 pi
    outer = frequency_shells(volume.shape[0]) >= from_shell
    transform[outer] = np.abs(transform[outer]) * np.exp(1j * odd[outer])
    return np.fft.ifftn(transform).real


@dataclass
class FSCReport:
    """The FSC curves of two half maps: unmasked, masked, with phases randomised beyond
    ``randomised_from`` and masked, and the masked curve corrected by the randomised one."""

    box: int
    pixel_size: float
    unmasked: np.ndarray
    masked: np.ndarray | None = None
    randomised: np.ndarray | None = None
    corrected: np.ndarray | None = None
    randomised_from: int | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def shells(self) -> np.ndarray:
        return np.arange(self.unmasked.size)

    @property
    def resolutions(self) -> np.ndarray:
        """Resolution in Angstrom of each shell (inf at shell 0)."""
        with np.errstate(divide="ignore"):
            return np.where(self.shells > 0, self.box * self.pixel_size / np.maximum(self.shells, 1), np.inf)

    def resolution(self, which: str = "unmasked", threshold: float = 0.143) -> float:
        curve = getattr(self, which)
        if curve is None:
            return float("nan")
        return resolution(curve, self.box, self.pixel_size, threshold)

    def crossing(self, which: str = "unmasked", threshold: float = 0.143) -> float:
        curve = getattr(self, which)
        return crossing_shell(curve, threshold) if curve is not None else float("nan")

    def table(self) -> list[dict[str, float | None]]:
        rows = []
        for s in range(self.unmasked.size):
            row: dict[str, float | None] = {
                "shell": s,
                "resolution_a": None if s == 0 else float(self.box * self.pixel_size / s),
                "fsc_unmasked": float(self.unmasked[s]),
            }
            for name in ("masked", "randomised", "corrected"):
                curve = getattr(self, name)
                row[f"fsc_{name}"] = None if curve is None else float(curve[s])
            rows.append(row)
        return rows


def gold_standard_fsc(
    half1: np.ndarray,
    half2: np.ndarray,
    pixel_size: float,
    mask: np.ndarray | None = None,
    *,
    randomise_below: float = 0.8,
    seed: int = 0,
) -> FSCReport:
    """The unmasked FSC and, with a ``mask``, the masked and phase-randomisation-corrected ones.

    Phases are randomised from the first shell where the unmasked FSC falls below
    ``randomise_below``; the correction applies two shells beyond it (below, the masked curve stands).
    """
    if not 0 < pixel_size < np.inf:
        raise ValueError(f"the pixel size must be positive and finite, got {pixel_size}")
    if mask is not None and np.shape(mask) != np.shape(half1):
        raise ValueError(f"the mask's shape {np.shape(mask)} differs from the maps' {np.shape(half1)}")
    box = half1.shape[0]
    unmasked = fourier_shell_correlation(half1, half2)
    report = FSCReport(box, pixel_size, unmasked)
    if mask is None:
        return report
    masked = fourier_shell_correlation(half1 * mask, half2 * mask)
    below = np.nonzero(unmasked[1:] < randomise_below)[0]
    start = int(below[0] + 1) if below.size else unmasked.size - 1
    rng = np.random.default_rng(seed)
    randomised = fourier_shell_correlation(
        phase_randomised(half1, start, rng) * mask, phase_randomised(half2, start, rng) * mask
    )
    corrected = masked.copy()
    beyond = np.arange(masked.size) >= start + 2
    with np.errstate(invalid="ignore", divide="ignore"):
        fixed = (masked - randomised) / (1 - randomised)
    corrected[beyond] = np.nan_to_num(fixed[beyond], nan=0.0)
    report.masked, report.randomised, report.corrected = masked, randomised, corrected
    report.randomised_from = start
    return report
