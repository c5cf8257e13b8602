"""The crystallographic refinement problem on the engine: check = R_work/R_free and geometry of a model,
correct = one macro-cycle of restrained coordinate and B-factor refinement.

One correction: refit the scales (robust anisotropic fit, then per resolution shell; see
:mod:`.fmodel`) and the bulk solvent to the current model, move the scale's isotropic B into the atoms'
B-factors, refit the target's parameters (sigma-A); then a few Gauss-Newton steps on
``weight * X-ray target + restraints``, each solving ``(weight * F + R) delta = -g`` by conjugate
gradients, where ``g`` is the gradient (X-ray part by FFT), ``F`` the diagonal of the X-ray Fisher
information and ``R`` the exact Gauss-Newton matrix of the restraints (sparse); the B-factors' steps
keep their mean (the common B is the scale's), and a line search along ``delta`` keeps every step
downhill.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import gemmi
import numpy as np
from scipy import sparse
from scipy.sparse import linalg as splinalg

from ..core import RefinementProblem, Scores, Status, StopRefinement
from .fmodel import Scale, agreement, fit_scale, fit_scale_robust, refine_binned_scale
from .model import B_MAX, B_MIN, AtomicModel
from .reflections import ReflectionData
from .sfcalc import REFINE_DENSITY_CUTOFF, AtomArrays, StructureFactorCalculator
from .targets import LeastSquares, MaximumLikelihood, make_target
from .twin import TwinModel


@dataclass
class _Evaluation:
    """Everything computed for one parameter vector."""

    x: np.ndarray
    arrays: AtomArrays
    fc: np.ndarray
    fc_mate: np.ndarray | None = None


class XtalRefinementProblem(RefinementProblem):
    """Restrained refinement of coordinates and isotropic B-factors against amplitudes.

    ``weight`` multiplies the X-ray target against the restraints (1 is the Bayesian balance);
    ``steps_per_cycle`` Gauss-Newton steps make one correction.
    """

    def __init__(self, model: AtomicModel, data: ReflectionData, *, target: str = "ml", weight: float = 1.0,
                 adp_weight: float = 1.0, steps_per_cycle: int = 2, max_shift: float = 0.5,
                 twin: TwinModel | None = None, solvent: bool = True, grid_rate: float = 1.25,
                 absorb_overall_b: bool = True, robust_scale: bool = True, binned_scale: bool = True
                 ) -> None:
        self.model = model
        self.data = data
        self.target = make_target(target, data)
        self.weight = float(weight)
        self.adp_weight = float(adp_weight)
        self.steps_per_cycle = int(steps_per_cycle)
        self.max_shift = float(max_shift)
        self.twin = twin
        self.solvent = solvent
        self.absorb_overall_b = absorb_overall_b
        self.robust_scale = robust_scale
        self.binned_scale = binned_scale
        b_now = model.initial_parameters()[3 * model.n_heavy: 4 * model.n_heavy]
        self.calc = StructureFactorCalculator(data.cell, data.spacegroup, self._all_hkl(), data.d_min,
                                              b_min=float(np.clip(b_now.min(initial=B_MIN), B_MIN, 10.0)),
                                              rate=grid_rate, cutoff=REFINE_DENSITY_CUTOFF)
        self.masker = gemmi.SolventMasker(gemmi.AtomicRadiiSet.Refmac)
        self.n_ops = len(data.spacegroup.operations())   # copies of an atom in the cell (centring too)
        self._cache: _Evaluation | None = None
        self._fmask: np.ndarray | None = None
        self._scale: Scale | None = None
        self._scale_global: Scale | None = None     # the robust fit before the binned refinement
        self._fmask_x: np.ndarray | None = None     # the model of the mask
        self._scale_x: np.ndarray | None = None     # the model of the scales
        # X-ray and restraint terms of the last gradient, shared with forks (see :meth:`fork`)
        self._shared: dict[str, Any] = {}
        self._x0 = model.initial_parameters()
        # the diagonal Fisher information understates the X-ray curvature (by 1.5-2 in practice, more
        # for B): factors for the coordinate and B blocks, measured once along the first step and
        # nudged by every line search after
        self.curvature_factor = np.array([1.0, 1.0])
        self._calibrated = False
        self._xray_terms: tuple[float, np.ndarray] = (0.0, np.zeros(0))

    # ------------------------------------------------------------------------------ helpers
    def _all_hkl(self) -> np.ndarray:
        """Reflections whose Fc is needed: the observed ones, and their twin mates."""
        if self.twin is None:
            return self.data.hkl
        return np.concatenate([self.data.hkl, self.twin.mate_hkl])

    def _evaluate(self, x: np.ndarray) -> _Evaluation:
        if self._cache is not None and np.array_equal(self._cache.x, x):
            return self._cache
        self.model.set_parameters(x)
        arrays = self.model.atom_arrays()
        fc_all = self.calc.atomic(self.model.structure[0])
        n = len(self.data)
        fc, mate = fc_all[:n], (fc_all[n:] if self.twin is not None else None)
        self._cache = _Evaluation(x.copy(), arrays, fc, mate)
        return self._cache

    def _refresh_solvent_and_scale(self, ev: _Evaluation) -> None:
        """Bulk-solvent mask (unless this model's is there) and scale factors for the model ``ev``
        (once per cycle)."""
        if self._scale_x is not None and np.array_equal(self._scale_x, ev.x) and self._scale is not None:
            return                                  # this model's mask and scales are there already
        if not (self._fmask_x is not None and np.array_equal(self._fmask_x, ev.x)) or self._fmask is None:
            if self.solvent:
                self._place_model(ev.x)
                fmask_all = self.calc.solvent(self.model.structure[0], self.masker)
            else:
                fmask_all = np.zeros(self.calc.hkl.shape[0], dtype=complex)
            self._fmask_x = ev.x.copy()
        else:
            fmask_all = self._fmask
        n = len(self.data)
        self._fmask = fmask_all
        self._scale_x = ev.x.copy()
        if self.twin is None:
            fmask = fmask_all[:n] if self.solvent else None
            if self.robust_scale:
                start = self._scale_global
                self._scale_global = fit_scale_robust(self.data, ev.fc, fmask, start=start)
                self._scale = (refine_binned_scale(self.data, ev.fc, fmask, self._scale_global)
                               if self.binned_scale else self._scale_global)
            else:
                self._scale = fit_scale(self.data, ev.fc, fmask)
        else:
            self._scale = self.twin.fit(self.data, ev.fc, fmask_all[:n], ev.fc_mate, fmask_all[n:],
                                        solvent=self.solvent)

    def fork(self, weight: float) -> XtalRefinementProblem:
        """The same problem, in the same state, at another X-ray weight. The fork shares the model,
        the data and the structure-factor machinery (only one of them may run at a time: each puts
        its own parameters into the model when it needs them) and the weight-free parts of the last
        gradient; it has its own target parameters, scales and step calibration."""
        other = copy.copy(self)
        self._shared["pin_next"] = True
        self._shared.pop("pinned", None)
        other.weight = float(weight)
        other.target = self.target.copy()
        other.curvature_factor = self.curvature_factor.copy()
        if self.twin is not None:
            other.twin = copy.copy(self.twin)
        return other

    def _place_model(self, x: np.ndarray) -> None:
        """Make sure the gemmi model holds ``x`` (several problems may share one model)."""
        current = self.model.current_x
        if current is None or not np.array_equal(current, x):
            self.model.set_parameters(x)

    def _ensure_contacts(self, xyz: np.ndarray) -> None:
        """The non-bonded pairs of the model at ``xyz``: found again only when an atom has moved far
        enough since the last search for a pair outside its reach to have come within a minimum
        distance (in practice: for the same model, as several problems may share one)."""
        restraints = self.model.restraints
        if restraints.contacts_valid_for(xyz):
            return
        restraints.update_contacts(xyz, self.data.cell, self.data.spacegroup)

    def f_model(self, ev: _Evaluation) -> np.ndarray:
        """Complex Fmodel (untwinned) at the observed reflections."""
        assert self._scale is not None and self._fmask is not None
        n = len(self.data)
        return self._scale.k_aniso * (ev.fc + self._scale.k_mask * self._fmask[:n])

    def _fm_abs(self, ev: _Evaluation) -> np.ndarray:
        fm = self.f_model(ev)
        if self.twin is None:
            return np.abs(fm)
        return self.twin.amplitudes(fm, self._mate_model(ev))

    def _mate_model(self, ev: _Evaluation) -> np.ndarray:
        assert self.twin is not None and self._scale is not None and self._fmask is not None
        n = len(self.data)
        return self.twin.mate_scale(self._scale) * (ev.fc_mate + self.twin.mate_k_mask(self._scale)
                                                     * self._fmask[n:])

    # ----------------------------------------------------------------------------- protocol
    def initial(self) -> np.ndarray:
        x0 = self._x0.copy()
        ev = self._evaluate(x0)
        self._refresh_solvent_and_scale(ev)
        self._ensure_contacts(ev.arrays.xyz)
        return x0

    def check(self, x: np.ndarray) -> Scores:
        ev = self._evaluate(x)
        self._refresh_solvent_and_scale(ev)
        fm_abs = self._fm_abs(ev)
        agree = agreement(self.data, fm_abs)
        self._ensure_contacts(ev.arrays.xyz)
        stats = self.model.restraints.statistics(ev.arrays.xyz)
        restraint = self.model.restraints.evaluate(ev.arrays.xyz, ev.arrays.b_iso, adp_weight=self.adp_weight)
        figures = {"r_work": agree.r_work, "r_free": agree.r_free, "cc_work": agree.cc_work,
                   "cc_free": agree.cc_free, **stats,
                   "mean_b": float(np.mean(self.model.layout.b(x))),
                   "k_sol": self._scale.k_sol if self._scale else math.nan,
                   "b_sol": self._scale.b_sol if self._scale else math.nan}
        if self.twin is not None:
            figures["twin_fraction"] = self.twin.fraction
        return Scores(work=agree.r_work, free=agree.r_free, restraint=restraint.value, figures=figures)

    def step_size(self, x: np.ndarray, step: np.ndarray) -> float:
        """RMS coordinate shift of the correction, in Å."""
        lay = self.model.layout
        shifts = lay.xyz(step)
        return float(np.sqrt(np.mean(np.sum(shifts**2, axis=1)))) if shifts.size else 0.0

    def is_finite(self, x: np.ndarray) -> bool:
        return bool(np.all(np.isfinite(x)))

    def correct(self, x: np.ndarray, scores: Scores) -> np.ndarray:
        start = x
        if self.absorb_overall_b:
            x = self._absorb_overall_b(x)
        ev = self._evaluate(x)
        self.target.prepare(self._fm_abs(ev))
        self._ensure_contacts(ev.arrays.xyz)
        x_new = x.copy()
        for _ in range(self.steps_per_cycle):
            moved = self._gauss_newton_step(x_new)
            if moved is None:
                break
            x_new = moved
        if np.array_equal(x_new, x):
            raise StopRefinement(Status.CONVERGED, "converged: no step along the Gauss-Newton direction "
                                                   "lowers the target")
        return x_new - start

    def _absorb_overall_b(self, x: np.ndarray) -> np.ndarray:
        """Move the isotropic part of the overall scale's B into the atoms' B-factors (the scale keeps
        the anisotropic rest): the two are degenerate, and left alone the atoms' B drift down cycle
        after cycle while the scale's B grows (the least-squares scale and the likelihood's D pull
        them apart), until atoms reach the lower bound."""
        scale = self._scale
        if scale is None or self.model.n_heavy == 0:
            return x
        b_iso = float(np.mean(scale.b_aniso[:3]))
        lay = self.model.layout
        b_old = lay.b(x)
        b_new = np.clip(b_old + b_iso, B_MIN, B_MAX)
        if abs(b_iso) < 1e-3:
            return x
        x_new = x.copy()
        x_new[3 * lay.n: 4 * lay.n] = b_new
        ev = self._cache
        n = len(self.data)
        exact = np.allclose(b_new - b_old, b_iso) and ev is not None and np.array_equal(ev.x, x)
        if exact and self.twin is None:
            # every atom's Fc (riding hydrogens follow their parent's B) falls off by exp(-b s^2/4),
            # which the scale gives back: Fmodel is unchanged
            self.model.set_parameters(x_new)
            fall = np.exp(-b_iso * 0.25 * self.calc.s2[:n])
            arrays = ev.arrays
            arrays = AtomArrays(arrays.xyz, arrays.b_iso + b_iso, arrays.occ, arrays.gauss_a, arrays.gauss_b)
            self._cache = _Evaluation(x_new.copy(), arrays, ev.fc * fall, None)
            self._scale = _moved_b(scale, b_iso, fall)
            if self._scale_global is not None:
                self._scale_global = _moved_b(self._scale_global, b_iso, fall)
            self._scale_x = x_new.copy()
            self._fmask_x = x_new.copy()            # the mask does not depend on B
        else:
            ev = self._evaluate(x_new)
            self._fmask_x = x_new.copy()
            self._refresh_solvent_and_scale(ev)
        return x_new

    # --------------------------------------------------------------------------- the step
    def xray_value(self, x: np.ndarray) -> float:
        """The (unweighted) X-ray target, with this cycle's scales and mask."""
        return self.target.value(self._fm_abs(self._evaluate(x)), self.data.work)

    def total(self, x: np.ndarray) -> float:
        """weight * X-ray target + restraints, with this cycle's scales and mask."""
        ev = self._evaluate(x)
        geom = self.model.restraints.evaluate(ev.arrays.xyz, ev.arrays.b_iso, adp_weight=self.adp_weight)
        return self.weight * self.xray_value(x) + geom.value

    def value_and_gradient(self, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, Any]:
        """Total value, its gradient by the parameters, the X-ray Fisher diagonal, and the restraint
        evaluation (with Gauss-Newton matrices).

        The weight only scales the X-ray part: what does not depend on it is kept, so that forks at
        other weights (the weight trials) starting from the same model, scales and target
        parameters take it over instead of computing it again."""
        key = self._gradient_key(x)
        cached = [self._shared.get(k) for k in ("pinned", "gradient")]
        hit = next((c for c in cached if c is not None and c[0] == key), None)
        if hit is not None:
            xray_value, xray_grad, restr_grad, fisher, restr = hit[1]
        else:
            xray_value, xray_grad, restr_grad, fisher, restr = self._gradient_parts(x)
            entry = (key, (xray_value, xray_grad, restr_grad, fisher, restr))
            # the first gradient after a fork is where the forks start: kept for them
            self._shared["pinned" if self._shared.pop("pin_next", False) else "gradient"] = entry
        self._xray_terms = (xray_value, xray_grad)
        grad = self.weight * xray_grad + restr_grad
        return self.weight * xray_value + restr.value, grad, self.weight * fisher, restr

    def _gradient_key(self, x: np.ndarray) -> tuple[Any, ...]:
        """What the weight-free parts of the gradient depend on, by value."""
        scale = self._scale
        parts = [x.tobytes(), self.adp_weight, self.target.state()]
        if scale is not None:
            parts += [hash(scale.k_aniso.tobytes()), hash(scale.k_mask.tobytes())]
        if self._fmask is not None:
            parts.append(hash(self._fmask.tobytes()))
        if self.twin is not None:
            parts.append(id(self.twin))
        return (hash(parts[0]), *parts[1:])

    def _gradient_parts(self, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, Any]:
        ev = self._evaluate(x)
        model, data = self.model, self.data
        fm = self.f_model(ev)
        if self.twin is None:
            fm_abs = np.abs(fm)
            terms = self.target.terms(fm_abs, data.work)
            unit = np.where(fm_abs > 0, fm / np.maximum(fm_abs, 1e-30), 0.0)
            d_fc = self._scale.k_aniso * terms.d_fm * unit
            curvature_k2 = terms.curvature * self._scale.k_aniso**2
        else:
            mate = self._mate_model(ev)
            fm_abs = self.twin.amplitudes(fm, mate)
            terms = self.target.terms(fm_abs, data.work)
            d_fc, curvature_k2 = self.twin.chain_rule(fm, mate, fm_abs, terms.d_fm, terms.curvature,
                                                      self._scale)
        g_xyz, g_b, g_occ = self.calc.gradient(d_fc, ev.arrays, want_occ=model.layout.n_occ > 0)
        restr = model.restraints.evaluate(ev.arrays.xyz, ev.arrays.b_iso, adp_weight=self.adp_weight,
                                          with_hessian=True, param_of_atom=model.block,
                                          n_params=model.n_heavy)
        xray_grad = model.fold_gradient(g_xyz, g_b, g_occ)
        restr_grad = model.fold_gradient(restr.grad_xyz, restr.grad_b, None)
        return terms.value, xray_grad, restr_grad, self._fisher_diagonal(ev.arrays, curvature_k2), restr

    def _fisher_diagonal(self, arrays: AtomArrays, curvature_k2: np.ndarray) -> np.ndarray:
        """Expected curvature of the X-ray target by each parameter, on the assumption that the atoms'
        contributions have random phases: sum over reflections of W k^2 |dFc/dp|^2 / 2, with the
        reflections binned in 1/d^2 and IT92 form factors at the bin centres."""
        model = self.model
        s2 = self.calc.s2[: len(self.data)]
        n_shells = 40
        edges = np.linspace(0.0, s2.max() * (1 + 1e-9), n_shells + 1)
        shell = np.clip(np.digitize(s2, edges) - 1, 0, n_shells - 1)
        w_sum = np.bincount(shell, weights=curvature_k2, minlength=n_shells)
        centre = np.bincount(shell, weights=s2, minlength=n_shells) / np.maximum(
            np.bincount(shell, minlength=n_shells), 1)
        # f(s) exp(-B s^2/4) for every atom and shell: Gaussians of the IT92 fit
        b = arrays.b_iso[:, None, None]
        gauss = arrays.gauss_a[:, None, :] * np.exp(-(arrays.gauss_b[:, None, :] + b)
                                                    * centre[None, :, None] / 4)
        f2 = (arrays.occ[:, None] * gauss.sum(axis=2)) ** 2                    # (atoms, shells)
        base = 0.5 * self.n_ops * f2 * w_sum[None, :]
        xyz_diag = (4 * math.pi**2 / 3) * base @ centre                        # per Cartesian component
        b_diag = base @ (centre**2 / 16)
        n = model.n_heavy
        fx = np.zeros(n)
        fb = np.zeros(n)
        np.add.at(fx, model.block, xyz_diag)
        np.add.at(fb, model.block, b_diag)
        parts = [np.repeat(fx, 3), fb]
        if model.layout.n_occ:
            occ_diag = 0.5 * self.n_ops * (gauss.sum(axis=2) ** 2 * w_sum[None, :]).sum(axis=1)
            parts.append(occ_diag[model.heavy[model.occ_atoms]])
        return np.concatenate(parts)

    def _gauss_newton_step(self, x: np.ndarray) -> np.ndarray | None:
        value, grad, fisher, restr = self.value_and_gradient(x)
        delta = self._direction(grad, fisher, restr)
        if not self._calibrated:
            self._calibrate(x, fisher, delta)
            delta = self._direction(grad, fisher, restr)
        slope = float(grad @ delta)
        if not slope < 0:
            return None
        moved, alpha = self._line_search(x, delta, value, slope)
        if moved is not None:
            # a step much shorter than predicted means more curvature than the model has
            if alpha < 0.6:
                self.curvature_factor *= 1.3
            elif alpha > 1.2:
                self.curvature_factor /= 1.3
            self.curvature_factor = np.clip(self.curvature_factor, 0.3, 30.0)
        return moved

    def _direction(self, grad: np.ndarray, fisher: np.ndarray, restr: Any) -> np.ndarray:
        """The Gauss-Newton direction: (weight F + R) delta = -g by blocks (coordinates, B), limited
        so that no atom moves more than ``max_shift`` and no B more than 20 Å^2."""
        lay = self.model.layout
        n = lay.n
        c_xyz, c_b = self.curvature_factor
        h_xyz = restr.hessian_xyz + sparse.diags(c_xyz * fisher[: 3 * n])
        h_b = sparse.diags(c_b * fisher[3 * n: 4 * n])
        if restr.hessian_b is not None:
            h_b = h_b + restr.hessian_b
        delta = np.zeros_like(grad)
        delta[: 3 * n] = _solve(h_xyz.tocsr(), -grad[: 3 * n])
        delta[3 * n: 4 * n] = _solve(h_b.tocsr(), -grad[3 * n: 4 * n])
        if self.absorb_overall_b and n:
            # the B-factors' common shift is the overall scale's business (see _absorb_overall_b):
            # left to the X-ray target, it chases what the scale fit undoes every cycle
            delta[3 * n: 4 * n] -= float(np.mean(delta[3 * n: 4 * n]))
        if lay.n_occ:
            # conformers move together and keep their occupancy sums
            delta[4 * n:] = self.model.occ_constraints.step(grad[4 * n:], c_b * fisher[4 * n:])
        shifts = np.sqrt(np.sum(lay.xyz(delta) ** 2, axis=1))
        delta[: 3 * n] *= min(1.0, self.max_shift / max(float(shifts.max(initial=0.0)), 1e-12))
        delta[3 * n: 4 * n] *= min(1.0, 20.0 / max(float(np.abs(lay.b(delta)).max(initial=0.0)), 1e-12))
        return delta

    def _calibrate(self, x: np.ndarray, fisher: np.ndarray, delta: np.ndarray) -> None:
        """Measure the X-ray target's curvature along the coordinate part and the B part of the first
        step (one function value each) against what the Fisher diagonal predicts, and scale the
        Fisher blocks by the ratio."""
        n = self.model.layout.n
        xray0, xray_grad = self._xray_terms
        for k, block in enumerate([slice(0, 3 * n), slice(3 * n, 4 * n)]):
            part = np.zeros_like(delta)
            part[block] = delta[block]
            predicted = float(part[block] @ (fisher[block] / self.weight * part[block]))
            if not predicted > 0:
                continue
            actual = 2.0 * (self.xray_value(self._bounded(x + part)) - xray0 - float(xray_grad @ part))
            if actual > 0:
                ratio = actual / predicted / self.curvature_factor[k]
                self.curvature_factor[k] = float(np.clip(self.curvature_factor[k] * ratio, 0.3, 30.0))
        self._calibrated = True

    def _line_search(self, x: np.ndarray, delta: np.ndarray, f0: float, slope: float
                     ) -> tuple[np.ndarray | None, float]:
        """Armijo backtracking from the full step, with one quadratic refinement of the step length.
        Returns the best point found (None if none is lower) and its step length."""
        alpha = 1.0
        tried: list[float] = []
        best_x, best_f, best_alpha = None, f0, 0.0
        for _ in range(6):
            trial = self._bounded(x + alpha * delta)
            f1 = self.total(trial)
            tried.append(alpha)
            if f1 < best_f:
                best_x, best_f, best_alpha = trial, f1, alpha
            if f1 <= f0 + 1e-4 * alpha * slope:
                # the minimum of the parabola through f0, slope and f1, if it is further out
                denom = 2.0 * (f1 - f0 - slope * alpha)
                if denom > 0 and len(tried) == 1:
                    a_star = -slope * alpha**2 / denom
                    if 1.3 * alpha < a_star <= 3.0 * alpha:
                        trial2 = self._bounded(x + a_star * delta)
                        f2 = self.total(trial2)
                        tried.append(a_star)
                        if f2 < best_f:
                            best_x, best_f, best_alpha = trial2, f2, a_star
                break
            # backtrack to the parabola's minimum, but not by more than a factor of ten
            denom = 2.0 * (f1 - f0 - slope * alpha)
            a_new = -slope * alpha**2 / denom if denom > 0 else 0.5 * alpha
            alpha = float(np.clip(a_new, 0.1 * alpha, 0.5 * alpha))
        return best_x, best_alpha

    def _bounded(self, x: np.ndarray) -> np.ndarray:
        lay = self.model.layout
        out = x.copy()
        n = lay.n
        out[3 * n: 4 * n] = np.clip(out[3 * n: 4 * n], B_MIN, B_MAX)
        if lay.n_occ:
            out[4 * n:] = self.model.occ_constraints.project(out[4 * n:])
        return out

    # ---------------------------------------------------------------------------- outputs
    def f_model_of(self, x: np.ndarray) -> np.ndarray:
        """Complex Fmodel of ``x`` with freshly fitted scales (for map coefficients)."""
        ev = self._evaluate(x)
        self._refresh_solvent_and_scale(ev)
        return self.f_model(ev)

    def sigmaa_for(self, x: np.ndarray) -> Any:
        ev = self._evaluate(x)
        fm_abs = self._fm_abs(ev)
        if isinstance(self.target, MaximumLikelihood):
            self.target.prepare(fm_abs)
            return self.target.sigmaa
        helper = MaximumLikelihood(self.data)
        helper.prepare(fm_abs)
        return helper.sigmaa

    @property
    def scale(self) -> Scale | None:
        return self._scale


def _moved_b(scale: Scale, b_iso: float, fall: np.ndarray) -> Scale:
    """``scale`` with the isotropic B ``b_iso`` taken out (given to the atoms, whose Fc fall off by
    ``fall``) and the solvent scale made to fall off by as much, so that Fmodel stays the same."""
    aniso = np.array(scale.b_aniso, dtype=float)
    aniso[:3] -= b_iso
    return Scale(scale.k_aniso / fall, scale.k_mask * fall, scale.k_overall, tuple(aniso), scale.k_sol,
                 scale.b_sol + b_iso, scale.bins)


def _solve(matrix: sparse.spmatrix, rhs: np.ndarray) -> np.ndarray:
    """Preconditioned conjugate gradients (Jacobi), a loose tolerance: the line search follows."""
    diag = matrix.diagonal()
    inv = np.where(diag > 0, 1.0 / np.where(diag > 0, diag, 1.0), 0.0)
    precond = splinalg.LinearOperator(matrix.shape, matvec=lambda v: inv * v)
    solution, _ = splinalg.cg(matrix, rhs, rtol=1e-2, maxiter=100, M=precond)
    return solution


__all__ = ["LeastSquares", "MaximumLikelihood", "XtalRefinementProblem"]
