"""Hemihedral twinning: candidate twin laws (gemmi), the twin fraction from the data alone (Yeates'
H test) and from the model (least squares on amplitudes), and the twinned amplitudes
``sqrt((1-a)|Fm(h)|^2 + a|Fm(T h)|^2)`` with their derivatives for refinement.
"""

from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np
from scipy import optimize

from .fmodel import Scale, fit_scale
from .reflections import ReflectionData


def candidate_twin_laws(data: ReflectionData, max_obliquity: float = 3.0, *, all_ops: bool = False
                        ) -> list[gemmi.Op]:
    """Twin laws the lattice allows beyond the space group's own symmetry (merohedral and, within
    ``max_obliquity`` degrees, pseudo-merohedral): one per coset, or with ``all_ops`` every operation
    of each coset (the same law written each way a law can be written)."""
    return list(gemmi.find_twin_laws(data.cell, data.spacegroup, max_obliquity, all_ops))


def twin_mates(data: ReflectionData, law: gemmi.Op) -> np.ndarray:
    """The twin mate T h of every reflection, in the reciprocal asymmetric unit."""
    asu = gemmi.ReciprocalAsu(data.spacegroup)
    ops = data.spacegroup.operations()
    mates = np.array([law.apply_to_hkl(h) for h in data.hkl.tolist()], dtype=np.int32).reshape(-1, 3)
    return np.array([asu.to_asu(h, ops)[0] for h in mates.tolist()], dtype=np.int32).reshape(-1, 3)


def h_test_fraction(data: ReflectionData, law: gemmi.Op) -> tuple[float, int]:
    """Yeates' H test: for acentric pairs of observed twin mates, ``<|I1 - I2| / (I1 + I2)> = 1/2 - a``.
    Returns the estimated fraction and the number of pairs used."""
    mates = twin_mates(data, law)
    index = {tuple(h): k for k, h in enumerate(data.hkl.tolist())}
    partner = np.array([index.get(tuple(h), -1) for h in mates.tolist()])
    own = np.arange(len(data))
    use = (partner >= 0) & (partner != own) & ~data.centric
    if not np.any(use):
        return float("nan"), 0
    i1 = data.f_obs[use] ** 2
    i2 = data.f_obs[partner[use]] ** 2
    sig1 = 2 * data.sigma[use] * data.f_obs[use]                  # sigma(I) = 2 F sigma(F)
    sig2 = 2 * data.sigma[partner[use]] * data.f_obs[partner[use]]
    strong = (i1 > sig1) & (i2 > sig2)
    h = np.abs(i1 - i2)[strong] / (i1 + i2)[strong]
    if h.size == 0:
        return float("nan"), 0
    return float(np.clip(0.5 - h.mean(), 0.0, 0.5)), int(h.size)


def free_mates_in_work(data: ReflectionData, law: gemmi.Op) -> float:
    """Fraction of the free reflections whose twin mate is a working reflection. In a twin, a free
    reflection's intensity is partly its mate's: where the mate is refined against, R_free is not free
    (free sets for twins are chosen in twin-related groups)."""
    mates = twin_mates(data, law)
    index = {tuple(h): k for k, h in enumerate(data.hkl.tolist())}
    free = np.flatnonzero(data.free)
    partner = np.array([index.get(tuple(mates[k]), -1) for k in free])
    own = partner == free
    in_work = (partner >= 0) & ~own & data.work[np.maximum(partner, 0)]
    counted = ~own
    return float(in_work.sum() / max(counted.sum(), 1))


@dataclass
class TwinModel:
    """One twin law and its fraction, with the mates of the observed reflections."""

    law: gemmi.Op
    mate_hkl: np.ndarray
    fraction: float = 0.25

    @classmethod
    def for_data(cls, data: ReflectionData, law: gemmi.Op, fraction: float = 0.25) -> TwinModel:
        return cls(law, twin_mates(data, law), fraction)

    def describe(self) -> str:
        return self.law.as_hkl().triplet()

    # ------------------------------------------------------------------------------ scaling
    def fit(self, data: ReflectionData, fc: np.ndarray, fmask: np.ndarray, fc_mate: np.ndarray,
            fmask_mate: np.ndarray, *, solvent: bool = True) -> Scale:
        """Scales (anisotropic, from gemmi, as if untwinned), then the twin fraction, the overall scale
        and the solvent parameters by least squares on the twinned working amplitudes."""
        base = fit_scale(data, fc, fmask if solvent else None)
        s2_mate = np.asarray(data.cell.calculate_1_d2_array(self.mate_hkl), dtype=float)
        aniso = base.k_aniso / base.k_overall
        aniso_mate = self._aniso_at(base, data) / base.k_overall
        work = data.work
        fo = data.f_obs[work]

        def amplitudes(p: np.ndarray) -> np.ndarray:
            k, frac, ksol, bsol = p
            km = ksol * np.exp(-bsol * 0.25 * data.s2) if solvent else 0.0
            km2 = ksol * np.exp(-bsol * 0.25 * s2_mate) if solvent else 0.0
            f1 = k * aniso * (fc + km * fmask)
            f2 = k * aniso_mate * (fc_mate + km2 * fmask_mate)
            return self.amplitudes(f1, f2, frac)

        def residual(p: np.ndarray) -> np.ndarray:
            return (amplitudes(p)[work] - fo) / data.sigma[work]

        start = [base.k_overall, self.fraction, base.k_sol if solvent else 0.0,
                 base.b_sol if solvent else 0.0]
        lower = [1e-6, 0.0, 0.0, 0.0] if solvent else [1e-6, 0.0, -1e-9, -1e-9]
        upper = [np.inf, 0.5, 1.0, 200.0] if solvent else [np.inf, 0.5, 1e-9, 1e-9]
        res = optimize.least_squares(residual, np.clip(start, lower, upper), bounds=(lower, upper),
                                     x_scale="jac", max_nfev=60)
        k, frac, ksol, bsol = res.x
        self.fraction = float(frac)
        self._k_aniso_mate = k * aniso_mate
        self._k_mask_mate = ksol * np.exp(-bsol * 0.25 * s2_mate) if solvent else np.zeros(len(s2_mate))
        k_mask = ksol * np.exp(-bsol * 0.25 * data.s2) if solvent else np.zeros(len(data))
        return Scale(k * aniso, k_mask, float(k), base.b_aniso, float(ksol), float(bsol))

    def _aniso_at(self, base: Scale, data: ReflectionData) -> np.ndarray:
        scaling = gemmi.Scaling(data.cell, data.spacegroup)
        scaling.b_overall = gemmi.SMat33d(*base.b_aniso)
        return base.k_overall * np.asarray(scaling.get_overall_scale_factor(self.mate_hkl), dtype=float)

    def mate_scale(self, scale: Scale) -> np.ndarray:
        return self._k_aniso_mate

    def mate_k_mask(self, scale: Scale) -> np.ndarray:
        return self._k_mask_mate

    # ------------------------------------------------------------------------- amplitudes
    def amplitudes(self, f_model: np.ndarray, f_mate: np.ndarray, fraction: float | None = None
                   ) -> np.ndarray:
        """Amplitudes of a hemihedral twin: ``sqrt((1-a)|F(h)|^2 + a|F(Th)|^2)``, ``a`` the twin fraction."""
        a = self.fraction if fraction is None else fraction
        return np.sqrt((1.0 - a) * np.abs(f_model) ** 2 + a * np.abs(f_mate) ** 2)

    def chain_rule(self, f_model: np.ndarray, f_mate: np.ndarray, f_twin: np.ndarray, d_ft: np.ndarray,
                   curvature: np.ndarray, scale: Scale) -> tuple[np.ndarray, np.ndarray]:
        """dT/dFc at the observed reflections followed by their mates (the calculator's order), and the
        curvature by |Fc| per observed reflection."""
        a = self.fraction
        inv = np.where(f_twin > 0, 1.0 / np.maximum(f_twin, 1e-30), 0.0)
        d_own = d_ft * (1.0 - a) * f_model * inv * scale.k_aniso
        d_mate = d_ft * a * f_mate * inv * self._k_aniso_mate
        curv = curvature * ((1.0 - a) ** 2 * scale.k_aniso**2 + a**2 * self._k_aniso_mate**2)
        return np.concatenate([d_own, d_mate]), curv
