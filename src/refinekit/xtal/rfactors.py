"""R-factors of a model as it stands: Fc by FFT, flat bulk solvent, anisotropic scaling, optionally a
twin law; plus what the numbers say about the free set."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import gemmi
import numpy as np

from ..core import InputError
from .fmodel import agreement, fit_scale
from .io import check_model_matches_data, read_model, read_reflections
from .reflections import ReflectionData
from .sfcalc import StructureFactorCalculator
from .twin import TwinModel, candidate_twin_laws, free_mates_in_work, h_test_fraction

#: a free set smaller than this says little about bias
MIN_FREE_FOR_BIAS_TEST = 200
#: a twin law is used (with --twin auto) where it lowers R_work by more than this
TWIN_R_GAIN = 0.02
#: above this R_work the model hardly explains the data: an unrelated model gets 0.59 (Wilson 1950), about
#: 0.5 after the bulk-solvent and per-shell scaling (3zt9 and 1sar at a random origin shift: 0.51, 0.52)
UNRELATED_R_WORK = 0.45


@dataclass
class RFactorReport:
    """What ``refinekit xtal rfactors`` reports: agreement, scale, free set, twinning, warnings."""

    r_work: float
    r_free: float
    cc_work: float
    cc_free: float
    n_work: int
    n_free: int
    d_min: float
    d_max: float
    scale: dict[str, Any]
    free_set: dict[str, Any]
    data: dict[str, Any]
    twin: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"r_work": self.r_work, "r_free": self.r_free, "cc_work": self.cc_work,
                "cc_free": self.cc_free,
                "n_work": self.n_work, "n_free": self.n_free, "d_min": self.d_min, "d_max": self.d_max,
                "scale": self.scale, "free_set": self.free_set, "data": self.data, "twin": self.twin,
                "warnings": self.warnings}

    def report(self) -> str:
        lines = [f"R_work      : {self.r_work:.4f}  ({self.n_work} reflections)",
                 f"R_free      : {self.r_free:.4f}  ({self.n_free} reflections)",
                 f"CC_work     : {self.cc_work:.4f}",
                 f"CC_free     : {self.cc_free:.4f}",
                 f"resolution  : {self.d_max:.2f} - {self.d_min:.2f} Å",
                 f"data        : {', '.join(self.data['columns'])}"
                 + (" (intensities, French-Wilson)" if self.data.get("intensities") else ""),
                 f"free set    : {self.free_set['label']} ({self.free_set['convention']})",
                 f"bulk solvent: k_sol {self.scale['k_sol']:.3f}, B_sol {self.scale['b_sol']:.1f}"]
        # what the reader chose or left out of the file (columns, blocks, rows by status): to know
        lines += [f"note        : {note}" for note in self.data.get("notes", [])]
        if self.twin.get("law"):
            lines.append(f"twin        : {self.twin['law']}, fraction {self.twin['fraction']:.3f} "
                         f"(untwinned R {self.twin['untwinned_r_work']:.4f}/"
                         f"{self.twin['untwinned_r_free']:.4f})")
        elif self.twin.get("candidates"):
            laws = ", ".join(f"{c['law']} (H-test {c['h_test_fraction']:.2f})"
                             for c in self.twin["candidates"])
            lines.append(f"twin laws   : possible {laws}; not used")
        for warning in self.warnings:
            lines.append(f"WARNING     : {warning}")
        return "\n".join(lines)


def free_set_bias_warning(r_work: float, r_free: float, n_free: int) -> str | None:
    """A sentence when R_free is about R_work for a model that looks refined: the free reflections
    have probably been refined against (or the free set is not independent)."""
    if n_free < MIN_FREE_FOR_BIAS_TEST or not (math.isfinite(r_work) and math.isfinite(r_free)):
        return None
    if r_work < 0.25 and r_free - r_work < max(0.005, 0.05 * r_work):
        return (f"R_free ({r_free:.4f}) is about R_work ({r_work:.4f}) for a refined-looking model: the free "
                f"set was probably used in earlier refinement, so R_free is not an independent check")
    return None


def twin_free_set_warning(twin_info: dict[str, Any]) -> str | None:
    """A sentence when a twin law is used and many free reflections have working twin mates."""
    share = twin_info.get("free_mates_in_work") if twin_info.get("law") else None
    if share is not None and share > 0.1:
        return (f"{100 * share:.0f} % of the free reflections have their twin mate ({twin_info['law']}) in "
                f"the working set: with a twin the free set should be chosen in twin-related pairs, so "
                f"R_free is biased low")
    return None


def r_factors(model_path: str | os.PathLike[str], data_path: str | os.PathLike[str], *,
              labels: list[str] | None = None, free_label: str | None = None, twin: str = "auto",
              grid_rate: float = 1.5) -> RFactorReport:
    """R_work, R_free and CC of the model in ``model_path`` against ``data_path``, the model as it
    stands (its hydrogens, anisotropic B-factors and occupancies are used as they are).

    ``twin`` is ``"auto"`` (use the best candidate twin law if it lowers R_work by more than 0.02),
    ``"none"``, or a law in hkl form such as ``"-h,k,-l"`` (one the lattice does not have is an InputError).

    >>> import pathlib
    >>> data = pathlib.Path(__file__).parent.parent / "data" / "xtal"
    >>> rep = r_factors(data / "5wkd.pdb", data / "r5wkdsf.ent", twin="none")
    >>> 0.15 < rep.r_work < 0.22, rep.free_set["label"]
    (True, 'FreeR_flag')
    """
    notes: list[str] = []
    st = read_model(model_path, notes)
    data = read_reflections(data_path, labels=labels, free_label=free_label)
    check_model_matches_data(st, data, model_path, data_path)
    report = r_factors_of(st, data, twin=twin, grid_rate=grid_rate)
    report.warnings[:0] = notes
    return report


def r_factors_of(st: gemmi.Structure, data: ReflectionData, *, twin: str = "auto",
                 grid_rate: float = 1.5) -> RFactorReport:
    """As :func:`r_factors`, for a structure and data already read."""
    calc = StructureFactorCalculator(data.cell, data.spacegroup, data.hkl, data.d_min, b_min=calc_b_min(st),
                                     rate=grid_rate)
    fc = calc.atomic(st[0])
    masker = gemmi.SolventMasker(gemmi.AtomicRadiiSet.Refmac)
    fmask = calc.solvent(st[0], masker)
    scale = fit_scale(data, fc, fmask)
    fm_abs = np.abs(scale.k_aniso * (fc + scale.k_mask * fmask))
    agree = agreement(data, fm_abs)
    twin_info: dict[str, Any] = {}
    if twin != "none":
        twin_info = _twin_analysis(st, data, calc, masker, agree, twin)
        if twin_info.get("law"):
            agree = twin_info.pop("_agreement")
            scale = twin_info.pop("_scale")
    free = {"label": data.info.get("free_label"), "convention": data.info.get("free_convention"),
            "free_value": data.info.get("free_value"), "source": data.info.get("free_source"),
            "n_free": agree.n_free, "fraction": agree.n_free / max(agree.n_free + agree.n_work, 1)}
    warnings = []
    twin_warning = twin_free_set_warning(twin_info)
    if twin_warning:
        warnings.append(twin_warning)
    bias = free_set_bias_warning(agree.r_work, agree.r_free, agree.n_free)
    if bias:
        warnings.append(bias)
    if agree.n_free < MIN_FREE_FOR_BIAS_TEST:
        noise = agree.r_free / math.sqrt(2 * max(agree.n_free, 1))
        warnings.append(f"only {agree.n_free} free reflections: R_free is noisy (about ±{noise:.3f})")
    if data.info.get("free_source") == "made":
        warnings.append("the data had no free set: one was made here (R_free of a model refined against all "
                        "reflections is not a free R)")
    if agree.r_work > UNRELATED_R_WORK:
        warnings.append(f"R_work {agree.r_work:.3f} is about what a model unrelated to the data gets: is the "
                        f"model in the data's setting and origin (and the right one)?")
    return RFactorReport(agree.r_work, agree.r_free, agree.cc_work, agree.cc_free, agree.n_work, agree.n_free,
                         data.d_min, data.d_max, scale.to_dict(), free,
                         {k: v for k, v in data.info.items() if k != "made_flags"}, twin_info, warnings)


def _twin_analysis(st: gemmi.Structure, data: ReflectionData, calc: StructureFactorCalculator,
                   masker: gemmi.SolventMasker, plain: Any, twin: str) -> dict[str, Any]:
    laws = candidate_twin_laws(data) if twin == "auto" else [checked_twin_law(twin, data)]
    info: dict[str, Any] = {"candidates": []}
    best = None
    n = len(data)
    for law in laws:
        h_frac, n_pairs = h_test_fraction(data, law)
        model = TwinModel.for_data(data, law)
        both = StructureFactorCalculator(data.cell, data.spacegroup,
                                         np.concatenate([data.hkl, model.mate_hkl]), data.d_min,
                                         b_min=calc_b_min(st), rate=calc.rate)
        fc_all = both.atomic(st[0])
        fmask_all = both.solvent(st[0], masker)
        scale = model.fit(data, fc_all[:n], fmask_all[:n], fc_all[n:], fmask_all[n:])
        f_own = scale.k_aniso * (fc_all[:n] + scale.k_mask * fmask_all[:n])
        f_mate = model.mate_scale(scale) * (fc_all[n:] + model.mate_k_mask(scale) * fmask_all[n:])
        agree = agreement(data, model.amplitudes(f_own, f_mate))
        entry = {"law": model.describe(), "h_test_fraction": h_frac, "h_test_pairs": n_pairs,
                 "model_fraction": model.fraction, "r_work": agree.r_work, "r_free": agree.r_free,
                 "free_mates_in_work": free_mates_in_work(data, law)}
        info["candidates"].append(entry)
        if best is None or agree.r_work < best[1].r_work:
            best = (model, agree, scale, entry["free_mates_in_work"])
    if best is not None:
        model, agree, scale, mates_in_work = best
        forced = twin != "auto"
        if forced or (plain.r_work - agree.r_work > TWIN_R_GAIN and model.fraction > 0.05):
            info.update(law=model.describe(), fraction=model.fraction, untwinned_r_work=plain.r_work,
                        untwinned_r_free=plain.r_free, _agreement=agree, _scale=scale,
                        free_mates_in_work=mates_in_work)
    return info


def parse_twin_law(text: str) -> gemmi.Op:
    """A twin law written on hkl (``-h,k,-l``) or xyz (``-x,y,-z``)."""
    try:
        return gemmi.Op(text.strip())
    except (RuntimeError, ValueError):
        raise InputError(f"cannot read the twin law {text!r} (write it as e.g. -h,k,-l)") from None


def checked_twin_law(text: str, data: ReflectionData) -> gemmi.Op:
    """:func:`parse_twin_law`, refused (InputError) unless it is a twin law of the data's lattice: an
    operation of the lattice's symmetry that is not one of the space group's (the identity is not a
    twin law)."""
    law = parse_twin_law(text)
    if law.rot not in [op.rot for op in candidate_twin_laws(data, all_ops=True)]:
        laws = ", ".join(op.as_hkl().triplet() for op in candidate_twin_laws(data))
        raise InputError(f"{text.strip()} is not a twin law of the data's lattice (space group "
                         f"{data.spacegroup.xhm()}): "
                         + (f"its twin laws are {laws}" if laws else "it has none"))
    return law


def calc_b_min(st: gemmi.Structure) -> float:
    b_values = [cra.atom.b_iso for cra in st[0].all()]
    return float(np.clip(min(b_values, default=10.0), 1.0, 10.0))
