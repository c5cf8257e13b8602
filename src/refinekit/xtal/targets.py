"""X-ray targets on amplitudes: least squares and maximum likelihood (sigma-A), with their derivatives
by |Fmodel| and the expected curvature used to scale the correction step.

Both are written so that a weight of 1 against the restraints is the Bayesian balance: the ML target
is twice the negative log-likelihood (the restraints are sums of squared Z-scores), and the LS target
divides each squared difference by its resolution shell's mean square difference.

ML (Read 1986; Pannu & Read 1996; Murshudov et al. 1997): with ``Fc = |Fmodel|``, per resolution bin a
scale ``D`` and an error variance ``S``, and the measurement error folded in,
acentric ``p(Fo) = 2 Fo / V exp(-(Fo^2 + D^2 Fc^2) / V) I0(2 Fo D Fc / V)`` with
``V = eps S + 2 sigma^2``; centric
``p(Fo) = sqrt(2 / (pi V)) exp(-(Fo^2 + D^2 Fc^2) / (2 V)) cosh(Fo D Fc / V)`` with ``V = eps S + sigma^2``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from .reflections import ReflectionData


@dataclass
class TargetTerms:
    """Per-reflection pieces of a target: its value summed over ``mask``, dT/d|Fm| and the expected
    curvature d2T/d|Fm|2 (zero outside the mask)."""

    value: float
    d_fm: np.ndarray
    curvature: np.ndarray


class SigmaA:
    """ML parameters D and S per resolution bin, fitted to a set of reflections."""

    def __init__(self, data: ReflectionData, *, n_per_bin: int = 500, max_bins: int = 20) -> None:
        self.data = data
        self.bins = data.bins(n_per_bin=n_per_bin, max_bins=max_bins)
        self.n_bins = int(self.bins.max()) + 1
        self.d = np.ones(self.n_bins)
        self.s = np.ones(self.n_bins)
        self.fitted = False

    def per_reflection(self) -> tuple[np.ndarray, np.ndarray]:
        """(D, V) at every reflection, V the total variance of the distribution."""
        data = self.data
        var = data.epsilon * self.s[self.bins] + np.where(data.centric, 1.0, 2.0) * data.sigma**2
        return self.d[self.bins], var

    def fit(self, fm_abs: np.ndarray, use: np.ndarray, *, iterations: int = 12) -> None:
        """Maximise the likelihood of the reflections ``use`` over D >= 0 and S > 0, bin by bin: damped
        Newton steps on (D, log S), all bins at once, each step kept only where it lowers its bin's
        -log-likelihood."""
        data = self.data
        fo, fc, bins = data.f_obs[use], fm_abs[use], self.bins[use]
        eps, cen, sig = data.epsilon[use], data.centric[use], data.sigma[use]
        n = self.n_bins
        meas = np.where(cen, 1.0, 2.0) * sig**2
        if not self.fitted:
            # start: D from the regression of Fo on Fc, S from what remains
            sum_fofc = np.bincount(bins, weights=fo * fc, minlength=n)
            sum_fcfc = np.bincount(bins, weights=fc * fc, minlength=n)
            self.d = np.clip(sum_fofc / np.maximum(sum_fcfc, 1e-30), 0.05, 2.0)
            counts = np.maximum(np.bincount(bins, minlength=n), 1)
            resid = (fo - self.d[bins] * fc) ** 2 / eps
            self.s = np.maximum(np.bincount(bins, weights=resid, minlength=n) / counts, 1e-6)
        d, log_s = self.d.copy(), np.log(self.s)

        def evaluate(d: np.ndarray, log_s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            s = np.exp(log_s)
            value, g_d, g_v = _ml_terms(fo, fc, d[bins], eps * s[bins] + meas, cen, want="params",
                                        per_reflection=True)
            return (np.bincount(bins, weights=value, minlength=n),
                    np.bincount(bins, weights=g_d, minlength=n),
                    np.bincount(bins, weights=g_v * eps * s[bins], minlength=n))

        f0, gd, gs = evaluate(d, log_s)
        for _ in range(iterations):
            # the 2x2 Hessian of every bin by differences of the analytic gradient
            hd = 1e-4 * np.maximum(d, 1e-2)
            _, gd_d, gs_d = evaluate(d + hd, log_s)
            _, gd_s, gs_s = evaluate(d, log_s + 1e-4)
            h11, h21 = (gd_d - gd) / hd, (gs_d - gs) / hd
            h12, h22 = (gd_s - gd) / 1e-4, (gs_s - gs) / 1e-4
            h12 = h21 = 0.5 * (h12 + h21)
            det = h11 * h22 - h12 * h21
            newton = (h11 > 0) & (det > 0)
            step_d = np.where(newton, -(h22 * gd - h12 * gs) / np.where(newton, det, 1.0),
                              -gd / np.maximum(np.abs(h11), 1e-12))
            step_s = np.where(newton, -(h11 * gs - h21 * gd) / np.where(newton, det, 1.0),
                              -gs / np.maximum(np.abs(h22), 1e-12))
            step_s = np.clip(step_s, -2.0, 2.0)
            scale = np.ones(n)
            accepted = np.zeros(n, dtype=bool)
            for _ in range(6):
                d_try = np.maximum(d + scale * step_d, 0.0)
                s_try = log_s + scale * step_s
                f1, gd1, gs1 = evaluate(d_try, s_try)
                better = (f1 <= f0) & ~accepted
                d = np.where(better, d_try, d)
                log_s = np.where(better, s_try, log_s)
                f0 = np.where(better, f1, f0)
                gd, gs = np.where(better, gd1, gd), np.where(better, gs1, gs)
                accepted |= better
                if accepted.all():
                    break
                scale = np.where(accepted, scale, 0.3 * scale)
            moved = np.abs(scale * step_d) + np.abs(scale * step_s)
            if np.all(~accepted | (moved < 1e-6)):
                break
        self.d, self.s = d, np.exp(log_s)
        self.fitted = True

    def figures(self) -> dict[str, float]:
        return {"sigmaa_d_mean": float(np.mean(self.d))}


def _ml_terms(fo: np.ndarray, fc: np.ndarray, d: np.ndarray, var: np.ndarray, centric: np.ndarray,
              want: str = "fc", per_reflection: bool = False) -> tuple[Any, np.ndarray, np.ndarray]:
    """-log-likelihood (summed, or per reflection), and either (d/dFc, curvature) or (d/dD, d/dV) per
    reflection."""
    acen = ~centric
    x = np.where(acen, 2.0, 1.0) * fo * d * fc / var
    # log I0(x) and I1/I0 (acentric); log cosh(x) and tanh(x) (centric)
    log_i0 = np.log(special.i0e(x)) + x
    m_a = special.i1e(x) / special.i0e(x)
    log_cosh = x + np.log1p(np.exp(-2.0 * x)) - math.log(2.0)
    m_c = np.tanh(x)
    with np.errstate(divide="ignore"):
        nll_a = np.log(var) - np.log(2.0 * np.maximum(fo, 1e-30)) + (fo**2 + (d * fc) ** 2) / var - log_i0
    nll_c = 0.5 * np.log(0.5 * math.pi * var) + (fo**2 + (d * fc) ** 2) / (2.0 * var) - log_cosh
    per = np.where(acen, nll_a, nll_c)
    value = per if per_reflection else float(np.sum(per))
    m = np.where(acen, m_a, m_c)
    k = np.where(acen, 2.0, 1.0)            # acentric terms carry a factor 2 in these formulas
    if want == "params":
        g_d = k * (d * fc**2 - m * fo * fc) / var
        g_v = np.where(acen, 1.0 / var - (fo**2 + (d * fc) ** 2) / var**2 + m * x / var,
                       0.5 / var - (fo**2 + (d * fc) ** 2) / (2 * var**2) + m * x / var)
        return value, g_d, g_v
    d_fc = k * (d * d * fc - m * fo * d) / var
    # expected curvature: the Fisher information of Fc, approximated by its Gaussian part times the
    # figure of merit squared (a sharp posterior phase gives the full k D^2 / V)
    curvature = k * d * d / var * np.maximum(m * m, 0.05)
    return value, d_fc, curvature


#: with at least this many free reflections, sigma-A is estimated from them (cross-validated, as Read
#: recommends and REFMAC does): then D and S measure the model's error honestly, and the X-ray term is
#: not made more confident by the very fit it drives
MIN_FREE_FOR_SIGMAA = 500


class MaximumLikelihood:
    """Twice the negative log-likelihood of the working amplitudes (sigma-A, Rice/Woolfson).

    ``estimate_on``: where D and S are fitted: ``"free"``, ``"work"``, or ``"auto"`` (the free set
    where it has at least :data:`MIN_FREE_FOR_SIGMAA` reflections).
    """

    name = "ml"

    def __init__(self, data: ReflectionData, *, estimate_on: str = "auto") -> None:
        self.data = data
        if estimate_on == "auto":
            estimate_on = "free" if np.count_nonzero(data.free) >= MIN_FREE_FOR_SIGMAA else "work"
        self.estimate_on = estimate_on
        if estimate_on == "free":
            n_free = int(np.count_nonzero(data.free))
            self.sigmaa = SigmaA(data, n_per_bin=max(1, 10 * len(data) // max(n_free, 1)), max_bins=10)
        else:
            self.sigmaa = SigmaA(data)

    def copy(self) -> MaximumLikelihood:
        """An independent copy (the data shared)."""
        other = copy.copy(self)
        other.sigmaa = copy.copy(self.sigmaa)
        return other

    def state(self) -> tuple[bytes, bytes]:
        """The fitted parameters, by value."""
        return self.sigmaa.d.tobytes(), self.sigmaa.s.tobytes()

    def prepare(self, fm_abs: np.ndarray) -> None:
        """Refit D and S for this model (once per cycle), to the working or the free set."""
        use = self.data.free if self.estimate_on == "free" else self.data.work
        self.sigmaa.fit(fm_abs, use)

    def terms(self, fm_abs: np.ndarray, mask: np.ndarray) -> TargetTerms:
        data = self.data
        d, var = self.sigmaa.per_reflection()
        value, d_fc, curv = _ml_terms(data.f_obs[mask], fm_abs[mask], d[mask], var[mask], data.centric[mask])
        full_d = np.zeros(len(data))
        full_c = np.zeros(len(data))
        full_d[mask] = 2.0 * d_fc
        full_c[mask] = 2.0 * curv
        return TargetTerms(2.0 * value, full_d, full_c)

    def value(self, fm_abs: np.ndarray, mask: np.ndarray) -> float:
        data = self.data
        d, var = self.sigmaa.per_reflection()
        value, _, _ = _ml_terms(data.f_obs[mask], fm_abs[mask], d[mask], var[mask], data.centric[mask],
                                want="params")
        return 2.0 * value


class LeastSquares:
    """Sum over the working set of (Fo - |Fm|)^2 / v, v the mean square difference of its shell."""

    name = "ls"

    def __init__(self, data: ReflectionData) -> None:
        self.data = data
        self.bins = data.bins(n_per_bin=500, max_bins=20)
        self.variance = np.ones(len(data))

    def copy(self) -> LeastSquares:
        return copy.copy(self)

    def state(self) -> int:
        return hash(self.variance.tobytes())

    def prepare(self, fm_abs: np.ndarray) -> None:
        data = self.data
        work = data.work
        n_bins = int(self.bins.max()) + 1
        diff2 = (data.f_obs - fm_abs) ** 2
        sums = np.bincount(self.bins[work], weights=diff2[work], minlength=n_bins)
        counts = np.maximum(np.bincount(self.bins[work], minlength=n_bins), 1)
        per_bin = np.maximum(sums / counts, 1e-12)
        self.variance = per_bin[self.bins]

    def terms(self, fm_abs: np.ndarray, mask: np.ndarray) -> TargetTerms:
        data = self.data
        diff = np.where(mask, data.f_obs - fm_abs, 0.0)
        value = float(np.sum(diff**2 / self.variance))
        return TargetTerms(value, -2.0 * diff / self.variance, np.where(mask, 2.0 / self.variance, 0.0))

    def value(self, fm_abs: np.ndarray, mask: np.ndarray) -> float:
        diff = self.data.f_obs[mask] - fm_abs[mask]
        return float(np.sum(diff**2 / self.variance[mask]))


def make_target(name: str, data: ReflectionData) -> MaximumLikelihood | LeastSquares:
    if name == "ml":
        return MaximumLikelihood(data)
    if name == "ls":
        return LeastSquares(data)
    raise ValueError(f"unknown target {name!r} (ml or ls)")


def map_coefficients(data: ReflectionData, f_model: np.ndarray, sigmaa: SigmaA
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sigma-A weighted map coefficients ``2mFo-DFc`` and ``mFo-DFc`` (complex, phases of Fmodel) and the
    figure of merit m. Centric reflections get ``mFo`` in the first map, as refmac writes them."""
    fm_abs = np.abs(f_model)
    d, var = sigmaa.per_reflection()
    k = np.where(data.centric, 1.0, 2.0)
    x = k * data.f_obs * d * fm_abs / var
    m = np.where(data.centric, np.tanh(x), special.i1e(x) / special.i0e(x))
    phase = np.where(fm_abs > 0, f_model / np.maximum(fm_abs, 1e-30), 1.0)
    two = np.where(data.centric, m * data.f_obs, 2.0 * m * data.f_obs - d * fm_abs) * phase
    diff = (m * data.f_obs - d * fm_abs) * phase
    return two, diff, m
