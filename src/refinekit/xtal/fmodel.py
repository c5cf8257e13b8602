"""The model's structure factors as the data see them: atoms + flat bulk solvent, scaled anisotropically.

``Fmodel(h) = k_overall exp(-h' B* h / 4) (Fc(h) + k_sol exp(-B_sol s^2/4) Fmask(h))``; the four
kinds of parameters are fitted to the working amplitudes by gemmi's ``Scaling`` (Levenberg-Marquardt,
weights 1/sigma), and with a twin law ``|F|`` becomes ``sqrt((1-a)|Fm(h)|^2 + a|Fm(T h)|^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gemmi
import numpy as np

from .reflections import ReflectionData


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

    def to_dict(self) -> dict[str, float | list[float]]:
        return {"k_overall": self.k_overall, "b_aniso": list(self.b_aniso), "k_sol": self.k_sol,
                "b_sol": self.b_sol}


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


def model_amplitudes(fc: np.ndarray, fmask: np.ndarray | None, scale: Scale) -> np.ndarray:
    """Complex Fmodel (scaled to the observations)."""
    total = fc if fmask is None else fc + scale.k_mask * fmask
    return scale.k_aniso * total


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


# ---------------------------------------------------------------------------------- twinning
def twinned_amplitudes(f_model: np.ndarray, f_model_mate: np.ndarray, fraction: float) -> np.ndarray:
    """Amplitudes of a hemihedral twin: ``sqrt((1-a)|F(h)|^2 + a|F(Th)|^2)``.

    >>> twinned_amplitudes(np.array([3.0]), np.array([4.0]), 0.5).round(4).tolist()
    [3.5355]
    """
    return np.sqrt((1.0 - fraction) * np.abs(f_model) ** 2 + fraction * np.abs(f_model_mate) ** 2)
