"""``refinekit.xtal.refine_structure``: read, check, choose the restraint weight by R_free, refine on the
engine, and write the refined model, map coefficients, per-cycle statistics and the plot."""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gemmi
import numpy as np

from .. import __version__
from ..core import (
    Alarm,
    InputError,
    RefinementResult,
    Refiner,
    Status,
    WeightChoice,
    WeightTrial,
    atomic_write_bytes,
    atomic_write_files,
)
from ..core.result import _fmt, jsonable
from ..core.weights import _excess
from .io import (
    check_model_matches_data,
    load_monomer_library,
    model_texts,
    mtz_bytes,
    read_model,
    read_reflections,
)
from .model import AtomicModel
from .problem import XtalRefinementProblem
from .rfactors import free_set_bias_warning, parse_twin_law, r_factors_of, twin_free_set_warning
from .targets import map_coefficients
from .twin import TwinModel

#: the weight search: a trial of WEIGHT_TRIAL_CYCLES cycles from the starting model at each weight,
#: scored by its lowest R_free among those whose geometry stays within MAX_DEVIATION; the chosen trial
#: goes on to the end of the run
WEIGHT_TRIALS = (2.0, 4.0, 8.0)
WEIGHT_TRIAL_CYCLES = 2
MAX_DEVIATION = {"bond_rmsd": 0.02, "angle_rmsd": 2.5}
#: R_free must rise by more than this (and stay up for `patience` cycles) to raise the alarm: smaller
#: moves are within the cycle-to-cycle noise of a converged refinement
OVERFIT_MIN_DELTA = 0.001
DEFAULT_ADP_WEIGHT = 0.1
#: what :func:`output_stem` takes off a model file's name
MODEL_SUFFIXES = (".gz", ".cif", ".pdb", ".ent", ".mmcif")


def output_stem(path: str | os.PathLike[str]) -> str:
    """The model file's name without its model suffixes, the stem of the output names.

    >>> output_stem("models/5wkd.pdb.gz")
    '5wkd'
    """
    name = Path(path).name
    for suffix in MODEL_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


@dataclass
class XtalRefinementResult(RefinementResult):
    """A :class:`~refinekit.core.RefinementResult` plus what crystallographers report: the weight and how
    it was chosen, the free set, the data, twinning and warnings. ``structure`` is the returned (best)
    model."""

    weight: float = 1.0
    weight_choice: dict[str, Any] | None = None
    target: str = "ml"
    free_set: dict[str, Any] = field(default_factory=dict)
    data_info: dict[str, Any] = field(default_factory=dict)
    twin: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    structure: gemmi.Structure | None = field(default=None, repr=False)
    map_coefficients: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        history = out.pop("history")
        out.update({"xray_weight": self.weight, "target": self.target, "weight_choice": self.weight_choice,
                    "free_set": self.free_set, "data": self.data_info, "twin": self.twin,
                    "atoms": self.counts})
        out["history"] = history
        return out

    def report(self, full: bool = True) -> str:
        lines = [f"target      : {self.target}, X-ray weight {_fmt(self.weight)}"
                 + (f" ({self.weight_choice['message']})" if self.weight_choice else " (given)"),
                 f"free set    : {self.free_set.get('label')} ({self.free_set.get('convention')})",
                 f"atoms       : {self.counts.get('refined_atoms')} refined, "
                 f"{self.counts.get('hydrogens')} riding hydrogens"]
        # what the reader chose or left out of the data file (columns, blocks, rows by status)
        lines += [f"note        : {note}" for note in self.data_info.get("notes", [])]
        if self.twin.get("law"):
            fraction = self.twin.get("fraction", math.nan)
            lines.append(f"twin        : {self.twin['law']}, fraction {fraction:.3f}")
        first, kept = self.history[0], self.kept
        lines.append(f"R_work      : {first.figures.get('r_work', math.nan):.4f} -> "
                     f"{kept.figures.get('r_work', math.nan):.4f}")
        lines.append(f"R_free      : {first.figures.get('r_free', math.nan):.4f} -> "
                     f"{kept.figures.get('r_free', math.nan):.4f}  (kept cycle {self.kept_cycle}, lowest "
                     f"R_free at cycle {self.best_cycle})")
        return "\n".join(lines) + "\n" + RefinementResult.report(self, full)


class RefinementJob:
    """Inputs read and checked, ready to refine: everything that can fail on bad input fails here."""

    def __init__(self, model_path: str | os.PathLike[str], data_path: str | os.PathLike[str], *,
                 monlib: str | os.PathLike[str] | None = None, labels: list[str] | None = None,
                 free_label: str | None = None, free_fraction: float = 0.05, seed: int = 0,
                 twin: str = "auto", hydrogens: bool = True, occupancy: bool = False, target: str = "ml",
                 adp_weight: float = DEFAULT_ADP_WEIGHT) -> None:
        if target not in ("ml", "ls"):
            raise InputError(f"unknown target {target!r} (ml or ls)")
        self.model_path, self.data_path = Path(model_path), Path(data_path)
        #: what the run does with the model other than as given, said with the result
        self.notes: list[str] = []
        self.structure = read_model(model_path, self.notes)
        atoms = [cra.atom for cra in self.structure[0].all()]
        n_aniso = sum(1 for atom in atoms if atom.aniso.nonzero())
        if n_aniso:
            self.notes.append(f"{n_aniso} atoms have anisotropic B-factors (ANISOU): refinement is "
                              f"isotropic, so they start from their equivalent isotropic B and are written "
                              f"isotropic")
        self.data = read_reflections(data_path, labels=labels, free_label=free_label,
                                     free_fraction=free_fraction, seed=seed)
        check_model_matches_data(self.structure, self.data, model_path, data_path)
        if all(atom.is_hydrogen() for atom in atoms):
            # hydrogens ride on heavy atoms: without any, the refined model would have no atoms
            raise InputError("the model has only hydrogen atoms: nothing to refine", path=model_path)
        self.monlib, self.monlib_dir = load_monomer_library(self.structure[0].get_all_residue_names(), monlib)
        self.hydrogens = hydrogens
        self.occupancy = occupancy
        self.target = target
        self.adp_weight = float(adp_weight)
        # building the model checks the topology (dictionaries, links) once, before any output
        self.first_model = AtomicModel(self.structure, self.monlib, hydrogens=hydrogens,
                                       refine_occupancy=occupancy)
        self.twin_info: dict[str, Any] = {}
        self.twin_law: gemmi.Op | None = None
        self.twin_fraction = 0.25
        if twin != "none":
            self._decide_twin(twin)
        self.problems: dict[float, XtalRefinementProblem] = {}

    def _decide_twin(self, twin: str) -> None:
        self.twin_info = r_factors_of(self.first_model.structure, self.data, twin=twin, grid_rate=1.25).twin
        if self.twin_info.get("law"):
            self.twin_law = parse_twin_law(self.twin_info["law"])
            self.twin_fraction = float(self.twin_info["fraction"])

    # ------------------------------------------------------------------------------ problems
    def make_problem(self, weight: float) -> XtalRefinementProblem:
        """A fresh problem (its own copy of the model) with X-ray weight ``weight``."""
        model = (self.first_model if not self.problems
                 else AtomicModel(self.structure, self.monlib, hydrogens=self.hydrogens,
                                  refine_occupancy=self.occupancy))
        twin = (TwinModel.for_data(self.data, self.twin_law, self.twin_fraction)
                if self.twin_law is not None else None)
        problem = XtalRefinementProblem(model, self.data, target=self.target, weight=weight,
                                        adp_weight=self.adp_weight, twin=twin)
        calibrated = [p for p in self.problems.values() if p._calibrated]
        if calibrated:
            # the Fisher's shortfall is the X-ray target's, whatever the weight: measured once per job
            problem.curvature_factor = calibrated[0].curvature_factor.copy()
            problem._calibrated = True
        self.problems[weight] = problem
        return problem

    def output_paths(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        stem = output_stem(self.model_path)
        out = Path(out_dir)
        return {"mmcif": out / f"{stem}_refined.cif", "pdb": out / f"{stem}_refined.pdb",
                "mtz": out / f"{stem}_refined.mtz", "json": out / f"{stem}_refined.json",
                "plot": out / f"{stem}_refined.png"}

    # ----------------------------------------------------------------------------------- run
    def run(self, *, cycles: int = 10, weight: float | None = None, stop_on_overfit: bool = True,
            callbacks: Iterable[Any] = (), patience: int = 3) -> XtalRefinementResult:
        """Refine; with ``weight=None`` the weight is chosen by R_free from short trial refinements,
        and the run continues the chosen trial (its cycles count)."""
        options = dict(xtol=1e-3, patience=patience, min_delta=OVERFIT_MIN_DELTA, restore_best=True)
        callbacks = list(callbacks)
        choice_dict = None
        if weight is None and cycles > 0:
            choice, problems = self._choose_weight(cycles, options, stop_on_overfit)
            weight = choice.weight
            choice_dict = choice.to_dict()
            problem = problems[weight]
            trial = choice.results[weight]
            if trial.status is Status.OVERFITTING:
                result = trial              # the alarm fired within the trial: the run ends there
            else:
                refiner = Refiner(problem, max_cycles=cycles, stop_on_overfit=stop_on_overfit,
                                  callbacks=callbacks, **options)
                # the chosen trial goes on where it stopped: its cycles are the run's first cycles
                result = refiner.run(resume_from=trial)
        else:
            if weight is None:  # cycles == 0: the starting model is scored, no weight to choose
                choice_dict = {"weight": 1.0, "message": "not chosen: no cycles were run"}
            weight = 1.0 if weight is None else float(weight)
            problem = self.make_problem(weight)
            result = Refiner(problem, max_cycles=cycles, stop_on_overfit=stop_on_overfit, callbacks=callbacks,
                             **options).run()
        return self._finish(problem, result, weight, choice_dict)

    def _choose_weight(self, cycles: int, options: dict[str, Any], stop_on_overfit: bool
                       ) -> tuple[WeightChoice, dict[float, XtalRefinementProblem]]:
        """Trials of :data:`WEIGHT_TRIAL_CYCLES` cycles from the starting model at each weight of
        :data:`WEIGHT_TRIALS`, each scored by its lowest R_free after cycle 0; the weights whose trial
        broke the geometry bounds are out, unless all did. The trials are forks of one problem: the
        starting model's mask, scales and contacts are computed once, the first step's gradient is
        shared, and the step calibration of the first trial is taken over by the others."""
        trial_cycles = min(WEIGHT_TRIAL_CYCLES, cycles)
        weights = sorted(WEIGHT_TRIALS)
        middle = weights[len(weights) // 2]
        first = self.make_problem(middle)
        first.initial()
        problems = {w: (first if w == middle else first.fork(w)) for w in weights}
        self.problems.update(problems)      # the forks too: a later make_problem takes over their calibration
        trials, results = [], {}
        for w in [middle] + [w for w in weights if w != middle]:
            problem = problems[w]
            if w != middle and first._calibrated and not problem._calibrated:
                problem.curvature_factor = first.curvature_factor.copy()
                problem._calibrated = True
            res = Refiner(problem, max_cycles=trial_cycles, stop_on_overfit=stop_on_overfit,
                          **options).run()
            own = [r for r in res.history if r.cycle > 0] or res.history
            best = min(own, key=lambda r: r.free if r.free is not None else math.inf)
            figures = {k: float(best.figures.get(k, math.nan)) for k in MAX_DEVIATION}
            feasible = res.usable and all(figures[k] <= bound for k, bound in MAX_DEVIATION.items())
            trials.append(WeightTrial(w, float(best.free), float(best.work), dict(best.figures), feasible,
                                      res.status.label))
            results[w] = res
        trials.sort(key=lambda t: t.weight)
        feasible = [t for t in trials if t.feasible and math.isfinite(t.free)]
        bounds = ", ".join(f"{k} <= {v:g}" for k, v in MAX_DEVIATION.items())
        if feasible:
            chosen = min(feasible, key=lambda t: t.free)
            message = (f"weight {chosen.weight:.4g} gave the lowest R_free {chosen.free:.4f} of "
                       f"{len(trials)} trials of {trial_cycles} cycles within {bounds}")
        else:
            chosen = min(trials, key=lambda t: _excess(t, MAX_DEVIATION))
            message = (f"no weight kept the deviations within bounds ({bounds}): chose the one closest "
                       "to them")
        return WeightChoice(chosen.weight, trials, message, results), problems

    def _finish(self, problem: XtalRefinementProblem, result: RefinementResult, weight: float,
                choice: dict[str, Any] | None) -> XtalRefinementResult:
        data = self.data
        x = result.x
        f_model = problem.f_model_of(x)
        sigmaa = problem.sigmaa_for(x)
        two, diff, fom = map_coefficients(data, f_model, sigmaa)
        problem.model.set_parameters(x)
        if result.history and result.kept.cycle == 0:
            # the kept model is the starting one: written as read (with its riding hydrogens), not from
            # the parameters, whose B-factors were clipped to the refinement's bounds
            structure = problem.model.initial_structure.clone()
        else:
            structure = problem.model.structure.clone()
        alarms = list(result.alarms)
        first = result.history[0]
        bias = free_set_bias_warning(first.figures.get("r_work", math.nan),
                                     first.figures.get("r_free", math.nan), int(np.count_nonzero(data.free)))
        if bias:
            alarms.insert(0, Alarm("biased_free_set", 0, bias))
        twin_warning = twin_free_set_warning(self.twin_info)
        if twin_warning:
            alarms.insert(0, Alarm("twin_free_set", None, twin_warning))
        alarms[:0] = [Alarm("model_input", None, note) for note in self.notes]
        if data.info.get("free_source") == "made":
            alarms.insert(0, Alarm("free_set_made", None, "the data had no free set: one was made here "
                                   f"({data.info.get('free_convention')}) and written to the output MTZ"))
        twin = dict(self.twin_info)
        if problem.twin is not None:
            twin["fraction"] = problem.twin.fraction
        free = {"label": data.info.get("free_label"), "convention": data.info.get("free_convention"),
                "free_value": data.info.get("free_value"), "source": data.info.get("free_source"),
                "n_free": int(np.count_nonzero(data.free)), "n_work": int(np.count_nonzero(data.work))}
        info = {k: v for k, v in data.info.items() if k != "made_flags"}
        info.update(d_min=data.d_min, d_max=data.d_max, monomer_library=str(self.monlib_dir))
        out = XtalRefinementResult(
            x=result.x, status=result.status, message=result.message, n_cycles=result.n_cycles,
            history=result.history, best_cycle=result.best_cycle, kept_cycle=result.kept_cycle, alarms=alarms,
            x_last=result.x_last, x_best=result.x_best,
            figures=dict(result.figures), weight=weight, weight_choice=choice, target=self.target,
            free_set=free, data_info=info, twin=twin, counts=problem.model.count(), structure=structure,
            map_coefficients={"FWT": two, "DELFWT": diff, "FOM": fom, "FC": f_model})
        if problem.scale is not None:
            out.figures["scale"] = problem.scale.to_dict()
        return out


def prepare_refinement(model_path: str | os.PathLike[str], data_path: str | os.PathLike[str],
                       **options: Any) -> RefinementJob:
    """Read and check the inputs (one-line :class:`~refinekit.core.InputError` on bad input)."""
    return RefinementJob(model_path, data_path, **options)


def write_outputs(job: RefinementJob, result: XtalRefinementResult, paths: dict[str, Path], *,
                  keep_hydrogens: bool = True) -> dict[str, Path]:
    """Write the refined model (mmCIF, PDB), the MTZ (data, free flags as read, 2mFo-DFc and mFo-DFc map
    coefficients), the JSON and the plot, all or nothing: every file is made in memory first, then all
    are written atomically together. Returns what was written."""
    st = result.structure.clone() if result.structure is not None else job.structure.clone()
    if not keep_hydrogens:
        st.remove_hydrogens()
    _annotate(st, result)
    # a failure on the MTZ, the plot or a full disk must not leave the model files of a failed command
    files: dict[str | os.PathLike[str], bytes | str] = dict(model_texts(st, paths["mmcif"], paths["pdb"]))
    coef = result.map_coefficients
    columns = {
        "FC": ("F", np.abs(coef["FC"])), "PHIC": ("P", np.degrees(np.angle(coef["FC"]))),
        "FWT": ("F", np.abs(coef["FWT"])), "PHWT": ("P", np.degrees(np.angle(coef["FWT"]))),
        "DELFWT": ("F", np.abs(coef["DELFWT"])), "PHDELWT": ("P", np.degrees(np.angle(coef["DELFWT"]))),
        "FOM": ("W", coef["FOM"]),
    }
    files[paths["mtz"]] = mtz_bytes(job.data, columns)
    files[paths["json"]] = json.dumps(jsonable(result.to_dict()), indent=2, allow_nan=False) + "\n"
    plot_path = paths.get("plot")
    if plot_path is not None:
        files[plot_path] = plot_png(result, title=f"{job.model_path.name}: {result.status.label}")
    atomic_write_files(files)
    return dict(paths)


def plot_r_factors(result: XtalRefinementResult, ax: Any = None, title: str | None = None) -> Any:
    """R_work and R_free per cycle; the kept cycle, the lowest R_free and every alarm marked."""
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    cycles = [r.cycle for r in result.history]
    ax.plot(cycles, [r.figures.get("r_work", math.nan) for r in result.history], "o-", color="tab:blue",
            ms=4, label="R_work")
    ax.plot(cycles, [r.figures.get("r_free", math.nan) for r in result.history], "s-", color="tab:red",
            ms=4, label="R_free")
    ax.axvline(result.kept_cycle, color="0.3", ls="--", lw=1, label=f"kept model (cycle {result.kept_cycle})")
    colours = {"overfitting": "tab:orange", "biased_free_set": "tab:purple"}
    for alarm in result.alarms:
        if alarm.cycle is not None:
            ax.axvline(alarm.cycle, color=colours.get(alarm.kind, "tab:gray"), lw=2.5, alpha=0.6,
                       label=f"{alarm.kind.replace('_', ' ')} alarm (cycle {alarm.cycle})")
    ax.set_xlabel("cycle")
    ax.set_ylabel("R factor")
    ax.set_xticks(cycles if len(cycles) <= 16 else cycles[:: max(1, len(cycles) // 12)])
    ax.set_title(title or f"{result.status.label}: {result.n_cycles} cycles")
    ax.legend(fontsize="small")
    return ax


def plot_png(result: XtalRefinementResult, title: str | None = None) -> bytes:
    """:func:`plot_r_factors` as the bytes of a PNG file (rendered in memory, the figure closed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ax = plot_r_factors(result, title=title)
    buffer = io.BytesIO()
    try:
        ax.figure.savefig(buffer, format="png", dpi=120)
    finally:
        plt.close(ax.figure)
    return buffer.getvalue()


def write_plot(result: XtalRefinementResult, path: str | os.PathLike[str], title: str | None = None) -> None:
    """:func:`plot_r_factors` as a PNG file, written atomically."""
    # rendered in memory, then written atomically: a failed savefig leaves no partial file behind
    atomic_write_bytes(path, plot_png(result, title=title))


def _annotate(st: gemmi.Structure, result: XtalRefinementResult) -> None:
    """Replace the input's record of its refinement (program, R factors, resolution) with this one's."""
    best = result.kept.figures
    r_work = float(best.get("r_work", math.nan))
    r_free = float(best.get("r_free", math.nan))
    d_min = float(result.data_info.get("d_min", math.nan))
    d_max = float(result.data_info.get("d_max", math.nan))
    # the input's refinement program (REFMAC, PHENIX...) did not make this model: refinekit did
    software = gemmi.SoftwareItem()
    software.name = "refinekit"
    software.version = __version__
    software.classification = gemmi.SoftwareItem.Classification.Refinement
    st.meta.software = [s for s in st.meta.software
                        if s.classification != gemmi.SoftwareItem.Classification.Refinement] + [software]
    info = gemmi.RefinementInfo() if hasattr(gemmi, "RefinementInfo") else None
    if info is not None:
        info.id = "1"
        info.r_work = r_work
        info.r_free = r_free
        info.resolution_high = d_min
        info.resolution_low = d_max
        st.meta.refinement = [info]
    # the PDB writer copies the input's REMARKs verbatim and makes no REMARK 3 of its own: the input's
    # would give the old program and R factors, so it is replaced by this refinement's
    others = [line for line in st.raw_remarks if not line.startswith("REMARK   3")]
    at = next((i for i, line in enumerate(others) if line[6:10].strip().isdigit() and int(line[6:10]) > 3),
              len(others))
    st.raw_remarks = others[:at] + _remark3(r_work, r_free, d_min, d_max) + others[at:]


def _remark3(r_work: float, r_free: float, d_min: float, d_max: float) -> list[str]:
    """PDB REMARK 3 lines (the wwPDB layout, which gemmi and others read back) of this refinement."""
    def value(v: float, digits: int) -> str:
        return f"{v:.{digits}f}" if math.isfinite(v) else "NULL"

    body = ["", "REFINEMENT.", f"  PROGRAM     : REFINEKIT {__version__}", "",
            " DATA USED IN REFINEMENT.", f"  RESOLUTION RANGE HIGH (ANGSTROMS) : {value(d_min, 2)}",
            f"  RESOLUTION RANGE LOW  (ANGSTROMS) : {value(d_max, 2)}", "",
            " FIT TO DATA USED IN REFINEMENT.", f"  R VALUE            (WORKING SET) : {value(r_work, 3)}",
            f"  FREE R VALUE                     : {value(r_free, 3)}"]
    return [f"REMARK   3 {text}".rstrip().ljust(80) for text in body]


def refine_structure(model_path: str | os.PathLike[str], data_path: str | os.PathLike[str],
                     out_dir: str | os.PathLike[str] | None = None, *, cycles: int = 10,
                     weight: float | None = None, **options: Any) -> XtalRefinementResult:
    """Refine a model against amplitudes; write the outputs to ``out_dir`` if given.

    >>> import pathlib, tempfile
    >>> data = pathlib.Path(__file__).parent.parent / "data" / "xtal"
    >>> res = refine_structure(data / "5wkd.pdb", data / "r5wkdsf.ent", cycles=2, weight=2.0)
    >>> res.history[0].figures["r_work"] > 0.1, len(res.history)
    (True, 3)
    """
    job = prepare_refinement(model_path, data_path, **options)
    result = job.run(cycles=cycles, weight=weight)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_outputs(job, result, job.output_paths(out))
    return result


__all__ = ["RefinementJob", "XtalRefinementResult", "output_stem", "plot_r_factors", "prepare_refinement",
           "refine_structure", "write_outputs", "write_plot"]
