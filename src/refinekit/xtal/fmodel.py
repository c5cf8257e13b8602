"""The model's structure factors as the data see them: atoms + flat bulk solvent, scaled anisotropically.

``Fmodel(h) = k_overall exp(-h' B* h / 4) (Fc(h) + k_sol exp(-B_sol s^2/4) Fmask(h))``; the four
kinds of parameters are fitted to the working amplitudes by gemmi's ``Scaling`` (Levenberg-Marquardt,
unweighted least squares: :func:`fit_scale`, what ``rfactors`` reports), and with a twin law ``|F|``
becomes ``sqrt((1-a)|Fm(h)|^2 + a|Fm(T h)|^2)``.

Refinement scales further (:func:`fit_scale_robust`, :func:`refine_binned_scale`): the same parameters
by a robust loss, then per resolution shell an isotropic factor and the solvent scale ``k_mask >= 0``
(Afonine et al. 2013): ``Fmodel(h) = k_aniso(h) k_iso(s) (Fc(h) + k_mask(s) Fmask(h))``, all fitted to
the working set only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gemmi
import numpy as np

from .reflections import ReflectionData, resolution_bins


@dataclass
class Scale:
    """Fitted scale parameters: per-reflection overall factor ``k_aniso`` (includes k_overall) and the
    solvent factor ``k_mask``, with the numbers behind them for reporting."""

    k_aniso: np.ndarray
    k_mask: np.ndarray
    k_overall: float
    b_aniso: tuple[float, ...]
    k_sol: float
    b_sol: float
    #: with resolution-binned scales: d_min of each bin, its isotropic scale and its solvent scale
    bins: dict[str, list[float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"k_overall": self.k_overall, "b_aniso": list(self.b_aniso),
                               "k_sol": self.k_sol, "b_sol": self.b_sol}
        if self.bins is not None:
            out["bins"] = self.bins
        return out


def fit_scale(data: ReflectionData, fc: np.ndarray, fmask: np.ndarray | None,
              use: np.ndarray | None = None) -> Scale:
    """Fit overall anisotropic scale and bulk-solvent parameters to the reflections ``use`` (the
    working set by default) with gemmi's Scaling."""
    use = data.work if use is None else use
    order = np.lexsort((data.hkl[:, 2], data.hkl[:, 1], data.hkl[:, 0]))   # gemmi merges sorted arrays
    hkl = data.hkl[order]
    scaling = gemmi.Scaling(data.cell, data.spacegroup)
    scaling.use_solvent = fmask is not None
    calc = gemmi.ComplexAsuData(data.cell, data.spacegroup, hkl, fc[order].astype(np.complex64))
    mask = None
    if fmask is not None:
        mask = gemmi.ComplexAsuData(data.cell, data.spacegroup, hkl, fmask[order].astype(np.complex64))
    sel = use[order]
    obs = gemmi.ValueSigmaAsuData(
        data.cell, data.spacegroup, hkl[sel],
        np.stack([data.f_obs[order][sel], data.sigma[order][sel]], axis=1).astype(np.float32))
    scaling.prepare_points(calc, obs, mask)
    scaling.fit_isotropic_b_approximately()
    scaling.fit_parameters()
    k_aniso = np.asarray(scaling.get_overall_scale_factor(data.hkl), dtype=float)
    if fmask is not None:
        k_mask = scaling.k_sol * np.exp(-scaling.b_sol * 0.25 * data.s2)
    else:
        k_mask = np.zeros(len(data))
    b = scaling.b_overall
    return Scale(k_aniso, k_mask, float(scaling.k_overall), (b.u11, b.u22, b.u33, b.u12, b.u13, b.u23),
                 float(scaling.k_sol) if fmask is not None else 0.0,
                 float(scaling.b_sol) if fmask is not None else 0.0)


#: the robust scale fit: residuals |Fo - |Fm|| beyond this many times their median count linearly, not
#: quadratically (soft-L1 loss), so that a few badly fitting reflections do not set the scale
ROBUST_SCALE = 1.0


def fit_scale_robust(data: ReflectionData, fc: np.ndarray, fmask: np.ndarray | None,
                     use: np.ndarray | None = None, start: Scale | None = None) -> Scale:
    """The scale parameters of :func:`fit_scale` (overall k, anisotropic B within the crystal system's
    constraints, k_sol and B_sol), refined on the reflections ``use`` (the working set by default)
    with a robust loss on the unweighted amplitude differences: quadratic up to
    :data:`ROBUST_SCALE` times the median difference, linear beyond (soft L1). Starts from gemmi's
    least-squares fit (or from ``start``, a previous fit of the same data)."""
    use = data.work if use is None else use
    base = start if start is not None else fit_scale(data, fc, fmask, use)
    solvent = fmask is not None
    # the anisotropic scale is exp(sum_i p_i q_i(h)): gemmi's parameters of the crystal system, whose
    # log-scale is linear in them; q_i taken from gemmi one unit parameter at a time
    scaling = gemmi.Scaling(data.cell, data.spacegroup)
    scaling.use_solvent = False
    scaling.b_overall = gemmi.SMat33d(*base.b_aniso)
    p_b = np.array(scaling.parameters[1:], dtype=float)
    basis = []
    for i in range(p_b.size):
        unit = np.zeros(p_b.size + 1)
        unit[0], unit[1 + i] = 1.0, 1.0
        scaling.parameters = unit.tolist()
        basis.append(np.log(np.asarray(scaling.get_overall_scale_factor(data.hkl), dtype=float)))
    q = np.array(basis).reshape(p_b.size, len(data))[:, use].T                     # (n_use, n_b)
    fo, fcu = data.f_obs[use], fc[use]
    fmu = fmask[use] if solvent else np.zeros_like(fcu)
    quarter_s2 = 0.25 * data.s2[use]
    n_s = 2 if solvent else 0

    def parts(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        aniso = p[0] * np.exp(q @ p[1 + n_s:])
        if solvent:
            e_sol = np.exp(-p[2] * quarter_s2)
            total = fcu + (p[1] * e_sol) * fmu
        else:
            e_sol = np.ones_like(quarter_s2)
            total = fcu
        return aniso, e_sol, total, np.abs(total)

    def residual(p: np.ndarray) -> np.ndarray:
        aniso, _, _, amp = parts(p)
        return aniso * amp - fo

    def jacobian(p: np.ndarray) -> np.ndarray:
        aniso, e_sol, total, amp = parts(p)
        fm = aniso * amp
        jac = np.empty((fo.size, p.size))
        jac[:, 0] = fm / p[0]
        if solvent:
            along = (total.real * fmu.real + total.imag * fmu.imag) / np.maximum(amp, 1e-30) * aniso
            jac[:, 1] = e_sol * along
            jac[:, 2] = -quarter_s2 * p[1] * e_sol * along
        jac[:, 1 + n_s:] = fm[:, None] * q
        return jac

    p = np.concatenate([[base.k_overall], [base.k_sol, base.b_sol] if solvent else [], p_b])
    lower = np.concatenate([[1e-6], [0.0, 0.0] if solvent else [], np.full(p_b.size, -np.inf)])
    upper = np.concatenate([[np.inf], [1.0, 300.0] if solvent else [], np.full(p_b.size, np.inf)])
    p = np.clip(p, lower, upper)
    if fo.size > p.size:
        p = _soft_l1_fit(residual, jacobian, p, lower, upper)
    scaling.parameters = [p[0], *p[1 + n_s:]]
    k_aniso = np.asarray(scaling.get_overall_scale_factor(data.hkl), dtype=float)
    b = scaling.b_overall
    k_sol, b_sol = (float(p[1]), float(p[2])) if solvent else (0.0, 0.0)
    k_mask = k_sol * np.exp(-b_sol * 0.25 * data.s2) if solvent else np.zeros(len(data))
    return Scale(k_aniso, k_mask, float(p[0]), (b.u11, b.u22, b.u33, b.u12, b.u13, b.u23), k_sol, b_sol)


#: resolution-binned scales: about this many working reflections per bin, at most this many bins
BIN_REFLECTIONS = 1500
MAX_SCALE_BINS = 12


def refine_binned_scale(data: ReflectionData, fc: np.ndarray, fmask: np.ndarray | None, scale: Scale,
                        use: np.ndarray | None = None) -> Scale:
    """Refine, per resolution bin, an isotropic factor on top of ``scale`` and the bulk-solvent scale
    (k_mask >= 0 in place of ``k_sol exp(-B_sol s^2/4)``), each by the robust loss of
    :func:`fit_scale_robust` on the reflections ``use`` (the working set by default); between the bins'
    mean 1/d^2 both are interpolated linearly. This is the binned scaling of Afonine et al. (2013,
    Acta D69, 625): the flat mask's Fourier transform is right at low resolution only, and the
    exponential falloff of the solvent and of the anisotropic scale fit the data shell by shell."""
    use = data.work if use is None else use
    n_use = int(np.count_nonzero(use))
    n_bins = int(np.clip(n_use // BIN_REFLECTIONS, 1, MAX_SCALE_BINS))
    if n_bins < 3:
        return scale
    bins = resolution_bins(data.s2[use], n_per_bin=max(1, n_use // n_bins), max_bins=n_bins)
    s2u = data.s2[use]
    fo = data.f_obs[use]
    atoms = scale.k_aniso[use] * fc[use]
    solvent = (scale.k_aniso * fmask)[use] if fmask is not None else None
    k_iso = np.ones(n_bins)
    k_mask = np.zeros(n_bins)
    centres = np.zeros(n_bins)
    d_min = np.zeros(n_bins)
    for b in range(n_bins):
        sel = bins == b
        centres[b] = float(np.mean(s2u[sel]))
        d_min[b] = float(1.0 / np.sqrt(s2u[sel].max()))
        a, fo_b = atoms[sel], fo[sel]
        if solvent is None:
            m = np.zeros_like(a)
            start = np.array([1.0, 0.0])
        else:
            m = solvent[sel]
            start = np.array([1.0, float(np.mean(scale.k_mask[use][sel]))])

        def residual(q: np.ndarray, a: np.ndarray = a, m: np.ndarray = m, fo_b: np.ndarray = fo_b
                     ) -> np.ndarray:
            return q[0] * np.abs(a + q[1] * m) - fo_b

        def jacobian(q: np.ndarray, a: np.ndarray = a, m: np.ndarray = m) -> np.ndarray:
            total = a + q[1] * m
            amp = np.abs(total)
            along = (total.real * m.real + total.imag * m.imag) / np.maximum(amp, 1e-30)
            return np.stack([amp, q[0] * along], axis=1)

        upper = np.array([np.inf, np.inf if solvent is not None else 0.0])
        k_iso[b], k_mask[b] = _soft_l1_fit(residual, jacobian, start, np.array([1e-6, 0.0]), upper)
    k_iso_all = np.interp(data.s2, centres, k_iso)
    k_mask_all = np.interp(data.s2, centres, k_mask) if fmask is not None else np.zeros(len(data))
    return Scale(scale.k_aniso * k_iso_all, k_mask_all, scale.k_overall, scale.b_aniso, scale.k_sol,
                 scale.b_sol, bins={"d_min": d_min.tolist(), "k_iso": k_iso.tolist(),
                                    "k_mask": k_mask.tolist()})


def _soft_l1_fit(residual: Any, jacobian: Any, p: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                 *, iterations: int = 30) -> np.ndarray:
    """Minimise sum 2 (sqrt(1 + (r/c)^2) - 1) over ``p`` within bounds by Levenberg-Marquardt steps on
    reweighted least squares (weights 1/sqrt(1 + (r/c)^2)), ``c`` the median |r| at the start times
    :data:`ROBUST_SCALE`. Few parameters, many residuals: the normal equations are tiny."""
    r = residual(p)
    c = max(ROBUST_SCALE * float(np.median(np.abs(r))), 1e-12)

    def loss(r: np.ndarray) -> float:
        return float(np.sum(np.sqrt(1.0 + (r / c) ** 2) - 1.0))

    f = loss(r)
    lam = 1e-3
    for _ in range(iterations):
        jac = jacobian(p)
        w = 1.0 / np.sqrt(1.0 + (r / c) ** 2)
        a = jac.T @ (w[:, None] * jac)
        g = jac.T @ (w * r)
        diag = np.maximum(np.diag(a), 1e-30)
        improved = False
        for _ in range(8):
            step = np.linalg.solve(a + lam * np.diag(diag), -g)
            trial = np.clip(p + step, lower, upper)
            r_trial = residual(trial)
            f_trial = loss(r_trial)
            if f_trial < f:
                improved = True
                break
            lam *= 4.0
        if not improved:
            break
        done = f - f_trial <= 1e-9 * f
        p, r, f = trial, r_trial, f_trial
        lam = max(lam / 3.0, 1e-7)
        if done:
            break
    return p


@dataclass
class Agreement:
    """R-factors and amplitude correlations of a model against the data, per set."""

    r_work: float
    r_free: float
    cc_work: float
    cc_free: float
    n_work: int
    n_free: int
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, float]:
        return {"r_work": self.r_work, "r_free": self.r_free, "cc_work": self.cc_work,
                "cc_free": self.cc_free, "n_work": self.n_work, "n_free": self.n_free, **self.extra}


def agreement(data: ReflectionData, f_model_abs: np.ndarray) -> Agreement:
    """R = sum |Fo - |Fm|| / sum Fo and CC(Fo, |Fm|), on the working and the free set."""
    return Agreement(r_factor(data.f_obs, f_model_abs, data.work),
                     r_factor(data.f_obs, f_model_abs, data.free),
                     correlation(data.f_obs, f_model_abs, data.work),
                     correlation(data.f_obs, f_model_abs, data.free),
                     int(np.count_nonzero(data.work)), int(np.count_nonzero(data.free)))


def r_factor(f_obs: np.ndarray, f_model_abs: np.ndarray, mask: np.ndarray) -> float:
    """The crystallographic R-factor on the reflections ``mask``.

    >>> r_factor(np.array([10.0, 20.0]), np.array([11.0, 18.0]), np.array([True, True]))
    0.1
    """
    fo = f_obs[mask]
    if fo.size == 0:
        return float("nan")
    return float(np.sum(np.abs(fo - f_model_abs[mask])) / np.sum(fo))


def correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    if np.count_nonzero(mask) < 3:
        return float("nan")
    return float(np.corrcoef(a[mask], b[mask])[0, 1])

