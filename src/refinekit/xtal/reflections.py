"""Observed reflections: amplitudes, their sigmas, the free set, and what the data say about themselves
(resolution, centric flags, epsilon). French-Wilson conversion of intensities lives here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gemmi
import numpy as np

from ..core import FreeFlags, InputError


@dataclass
class ReflectionData:
    """Merged observations in the reciprocal asymmetric unit, one row per measured reflection.

    ``rows`` maps each observation to its row in ``mtz`` (the data as read, kept for output, where the
    free-flag column is written back unchanged). ``flags`` holds one free flag per observation with
    the convention found in the file; ``free`` is True for the free (test) set.
    """

    cell: gemmi.UnitCell
    spacegroup: gemmi.SpaceGroup
    hkl: np.ndarray
    f_obs: np.ndarray
    sigma: np.ndarray
    flags: FreeFlags
    mtz: gemmi.Mtz
    rows: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hkl = np.ascontiguousarray(self.hkl, dtype=np.int32)
        ops = self.spacegroup.operations()
        self.s2 = np.asarray(self.cell.calculate_1_d2_array(self.hkl), dtype=float)   # 1/d^2
        self.centric = ops.centric_flag_array(self.hkl).astype(bool)
        self.epsilon = ops.epsilon_factor_without_centering_array(self.hkl).astype(float)

    @property
    def free(self) -> np.ndarray:
        return self.flags.free

    @property
    def work(self) -> np.ndarray:
        return self.flags.work

    @property
    def d_min(self) -> float:
        return float(1.0 / np.sqrt(self.s2.max()))

    @property
    def d_max(self) -> float:
        return float(1.0 / np.sqrt(self.s2.min()))

    def __len__(self) -> int:
        return int(self.hkl.shape[0])

    def bins(self, n_per_bin: int = 600, max_bins: int = 20, min_bins: int = 1) -> np.ndarray:
        """Resolution bins of about equal counts in 1/d^2 (0 = lowest resolution), per reflection."""
        return resolution_bins(self.s2, n_per_bin=n_per_bin, max_bins=max_bins, min_bins=min_bins)


def resolution_bins(s2: np.ndarray, *, n_per_bin: int = 600, max_bins: int = 20,
                    min_bins: int = 1) -> np.ndarray:
    """Bin index per reflection: equal-count bins in ``s2`` (= 1/d^2), lowest resolution first.

    >>> resolution_bins(np.array([0.1, 0.4, 0.2, 0.3]), n_per_bin=2).tolist()
    [0, 1, 0, 1]
    """
    n = s2.size
    n_bins = int(np.clip(n // max(n_per_bin, 1), min_bins, max_bins))
    n_bins = max(1, min(n_bins, n))
    order = np.argsort(s2, kind="stable")
    bins = np.empty(n, dtype=np.int64)
    bins[order] = (np.arange(n) * n_bins) // max(n, 1)
    return bins


# ---------------------------------------------------------------------------------- free flags
def infer_free_convention(values: np.ndarray) -> tuple[int, str]:
    """Which flag value marks the free set, and a sentence saying why.

    CCP4 flags run 0..19 with 0 free; two-valued flags (CNS/PHENIX 0/1, SHELX 1/-1) mark the free set
    with the rarer value.

    >>> infer_free_convention(np.array([0, 3, 19, 7, 0, 12]))[0]
    0
    >>> infer_free_convention(np.array([1, 0, 0, 0, 0, 0, 0, 0]))[0]
    1
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise InputError("the free-flag column holds no values")
    distinct, counts = np.unique(finite.astype(np.int64), return_counts=True)
    if distinct.size == 1:
        raise InputError(f"every reflection has the same free flag ({distinct[0]}): no free set")
    if distinct.size == 2:
        rare = int(distinct[np.argmin(counts)])
        share = counts.min() / counts.sum()
        if share > 0.4:
            raise InputError(f"cannot tell which free-flag value marks the free set: {distinct[0]} and "
                             f"{distinct[1]} are about equally common")
        return rare, (f"two-valued flags {distinct[0]}/{distinct[1]}, the rarer value {rare} is free "
                      f"({100 * share:.1f} %)")
    if 0 in distinct:
        share = counts[distinct == 0][0] / counts.sum()
        return 0, (f"CCP4 convention, flags {distinct.min()}..{distinct.max()}, 0 is free "
                   f"({100 * share:.1f} %)")
    rare = int(distinct[np.argmin(counts)])
    return rare, f"flags {distinct.min()}..{distinct.max()} without 0; the rarest value {rare} is free"


# ------------------------------------------------------------------------------ French-Wilson
def french_wilson(intensity: np.ndarray, sigma: np.ndarray, s2: np.ndarray, centric: np.ndarray,
                  epsilon: np.ndarray, *, mean_intensity: np.ndarray | None = None, n_nodes: int = 96
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Amplitudes from intensities by French & Wilson (1978): the posterior mean of F given I, with a
    Wilson prior whose mean intensity is estimated from the data in resolution shells.

    ``mean_intensity`` (Wilson's Sigma per reflection) is estimated from the data where not given.
    Returns ``(F, sigma_F, kept)``; ``kept`` is False for reflections too negative to trust
    (``I/sigma - sigma/(epsilon Sigma) < -4``, as ctruncate).

    >>> i = np.array([100.0, 1.0, -2.0]); s = np.array([5.0, 2.0, 2.0])
    >>> f, sf, kept = french_wilson(i, s, np.full(3, 0.1), np.zeros(3, bool), np.ones(3))
    >>> bool(abs(f[0] - 10.0) < 0.2), bool(f[1] > 0 and f[2] > 0), kept.tolist()
    (True, True, [True, True, True])
    """
    intensity = np.asarray(intensity, dtype=float)
    sigma = np.asarray(sigma, dtype=float)
    mean_i = (_wilson_mean_intensity(intensity, s2, epsilon) if mean_intensity is None
              else np.asarray(mean_intensity, dtype=float))
    var = epsilon * mean_i                                   # epsilon * Sigma(s)
    h = intensity / sigma - sigma / np.where(centric, 2.0 * var, var)
    kept = h >= -4.0
    f = np.zeros_like(intensity)
    sf = np.zeros_like(intensity)
    # the posterior of F lies where the likelihood is not negligible: F^2 within I +- 7 sigma
    lo = np.sqrt(np.maximum(intensity - 7.0 * sigma, 0.0))
    hi = np.sqrt(np.maximum(intensity, 0.0) + 7.0 * sigma)
    nodes = np.linspace(0.0, 1.0, n_nodes)
    for start in range(0, intensity.size, 20000):
        sl = slice(start, start + 20000)
        grid = lo[sl, None] + (hi[sl] - lo[sl])[:, None] * nodes[None, :]      # F values
        j = grid**2
        log_lik = -0.5 * ((intensity[sl, None] - j) / sigma[sl, None]) ** 2
        with np.errstate(divide="ignore"):
            log_prior = np.where(centric[sl, None], -j / (2.0 * var[sl, None]),
                                 np.log(grid) - j / var[sl, None])
        log_post = log_lik + log_prior
        log_post -= np.max(log_post, axis=1, keepdims=True)
        post = np.exp(log_post)
        norm = np.trapezoid(post, grid, axis=1)
        mean = np.trapezoid(post * grid, grid, axis=1) / norm
        second = np.trapezoid(post * j, grid, axis=1) / norm
        f[sl] = mean
        sf[sl] = np.sqrt(np.maximum(second - mean**2, 0.0))
    return f, sf, kept


def _wilson_mean_intensity(intensity: np.ndarray, s2: np.ndarray, epsilon: np.ndarray) -> np.ndarray:
    """Mean of I/epsilon per resolution shell, interpolated at every reflection (positive)."""
    bins = resolution_bins(s2, n_per_bin=300, max_bins=60)
    n_bins = int(bins.max()) + 1
    counts = np.bincount(bins, minlength=n_bins).astype(float)
    centres = np.bincount(bins, weights=s2, minlength=n_bins) / counts
    means = np.bincount(bins, weights=intensity / epsilon, minlength=n_bins) / counts
    positive = means > 0
    if not np.any(positive):
        raise InputError("the intensities average to zero or less in every resolution shell")
    # a shell of all-weak data still has some signal: never let the prior collapse to zero
    floor = 1e-3 * float(np.max(means[positive]))
    means = np.maximum(means, floor)
    return np.interp(s2, centres, means)
