"""The xtal section of ``refinekit demo``: a small PDB entry (5WKD, CC0, bundled) refined from a shaken
start with the weight chosen by R_free, and the same data refined with the restraints all but switched
off, where R_free rises, the alarm fires and the best model is kept; then the RNase Sa tutorial data
(bundled, LGPL-3): rnase_model refined with the default run, and the deposited 1SAR, the case the alarm
is for (a model already refined against its "free" reflections).
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import gemmi
import numpy as np

from ..core.atomic import atomic_write_text
from ..report import Section, figure_to_html, table_html
from ..report.html import pre
from .api import XtalRefinementResult, plot_r_factors, prepare_refinement, write_outputs
from .io import read_model
from .rfactors import r_factors

DATA = Path(__file__).resolve().parent.parent / "data" / "xtal"


def _shaken_model(workdir: Path, rms: float = 0.3, seed: int = 5) -> Path:
    st = read_model(DATA / "5wkd.pdb")
    rng = np.random.default_rng(seed)
    for cra in st[0].all():
        cra.atom.pos = cra.atom.pos + type(cra.atom.pos)(*rng.normal(0, rms / np.sqrt(3), 3))
    path = workdir / "5wkd_shaken.pdb"
    # atomically, like every output (gemmi's write_pdb writes in place, through a symbolic link too)
    atomic_write_text(path, st.make_pdb_string(gemmi.PdbWriteOptions()))
    return path


def _heavy(st: Any) -> np.ndarray:
    return np.array([c.atom.pos.tolist() for c in st[0].all() if not c.atom.is_hydrogen()])


def _history_rows(result: XtalRefinementResult) -> list[list[Any]]:
    rows = []
    for r in result.history:
        f = r.figures
        mark = " (kept)" if r.cycle == result.kept_cycle else ""
        rows.append([f"{r.cycle}{mark}", round(f["r_work"], 4), round(f["r_free"], 4),
                     round(f["bond_rmsd"], 4), round(f["angle_rmsd"], 2)])
    return rows


def _figure(result: XtalRefinementResult, title: str, alt: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4), layout="constrained")
    plot_r_factors(result, ax=ax, title=title)
    return figure_to_html(fig, alt)


def section(workdir: Path) -> Section:
    """Run the demo in ``workdir`` and return its report section."""
    start = time.perf_counter()
    workdir = Path(workdir)
    parts: list[str] = []
    figures: dict[str, Any] = {}
    ok = True

    deposited = r_factors(DATA / "5wkd.pdb", DATA / "r5wkdsf.ent", twin="none")
    parts.append("<h3>5WKD as deposited</h3>")
    parts.append(f"<p>PDB entry 5WKD (a seven-residue fibril segment, C2, 1.8 Å, {deposited.n_work} "
                 f"working and {deposited.n_free} free reflections; CC0, bundled). R-factors of the "
                 f"deposited model: R_work {deposited.r_work:.4f}, R_free {deposited.r_free:.4f} (REFMAC "
                 f"deposited 0.184 / 0.195). {html.escape(' '.join(deposited.warnings))}</p>")

    # 1. a shaken model refined back, weight chosen by R_free
    shaken = _shaken_model(workdir)
    job = prepare_refinement(shaken, DATA / "r5wkdsf.ent")
    refined = job.run(cycles=10)
    out = workdir / "refined"
    out.mkdir(exist_ok=True)
    written = write_outputs(job, refined, job.output_paths(out))
    truth = _heavy(read_model(DATA / "5wkd.pdb"))
    rmsd_start = float(np.sqrt(np.mean(np.sum((_heavy(job.structure) - truth) ** 2, axis=1))))
    rmsd_end = float(np.sqrt(np.mean(np.sum((_heavy(refined.structure) - truth) ** 2, axis=1))))
    first, kept = refined.history[0].figures, refined.kept.figures
    recovered = kept["r_free"] < first["r_free"] and rmsd_end < rmsd_start
    ok &= recovered
    parts.append("<h3>A shaken model refined back</h3>")
    choice = refined.weight_choice["message"] if refined.weight_choice else ""
    parts.append(f"<p>Every atom moved at random by {rmsd_start:.2f} Å RMS, then refined: coordinates and "
                 f"B-factors, riding hydrogens, restraints from the monomer library, ML target. "
                 f"{html.escape(choice)}. R_free {first['r_free']:.3f} → {kept['r_free']:.3f}, bond RMSD "
                 f"{kept['bond_rmsd']:.3f} Å; the atoms are {rmsd_end:.2f} Å (RMS) from the deposited "
                 f"ones.</p>")
    parts.append(_figure(refined, "5WKD, shaken start", "R_work and R_free per cycle"))
    header = ["cycle", "R_work", "R_free", "bond RMSD (Å)", "angle RMSD (°)"]
    parts.append(table_html(header, _history_rows(refined)))
    parts.append(pre("\n".join(f"{k:5}: {v.name}" for k, v in written.items())))
    figures.update(shaken_r_free_start=first["r_free"], shaken_r_free_end=kept["r_free"],
                   shaken_rmsd_start=rmsd_start, shaken_rmsd_end=rmsd_end)

    # 2. restraints all but off: the model fits the noise of the working reflections
    loose = prepare_refinement(DATA / "5wkd.pdb", DATA / "r5wkdsf.ent").run(cycles=10, weight=300.0,
                                                                            stop_on_overfit=False)
    fired = [a for a in loose.alarms if a.kind == "overfitting"]
    ok &= bool(fired) and loose.kept_cycle == loose.best_cycle
    parts.append("<h3>Restraints switched (almost) off: the overfitting alarm</h3>")
    verdict = (f"The alarm fired at cycle {fired[0].cycle}; the model of cycle {loose.kept_cycle} is kept."
               if fired else "The alarm did not fire.")
    work, free = [r.work for r in loose.history], [r.free for r in loose.history]
    parts.append(f"<p>The deposited model refined with an X-ray weight of 300 (restraints a small fraction "
                 f"of the target): R_work falls {work[0]:.3f} → {work[-1]:.3f} while R_free rises "
                 f"{free[0]:.3f} → {free[-1]:.3f}. {verdict}</p>")
    parts.append(_figure(loose, "5WKD, restraints almost off", "R_work falls while R_free rises"))
    figures.update(alarm_fired=bool(fired), alarm_cycle=fired[0].cycle if fired else None)

    # 3. real data: RNase Sa
    rnase_dir, monlib = DATA / "rnase", DATA / "monomers"
    if (rnase_dir / "rnase18_Nat_Complexes.mtz").is_file():
        mtz = rnase_dir / "rnase18_Nat_Complexes.mtz"
        rnase = prepare_refinement(rnase_dir / "rnase_model.pdb", mtz, monlib=monlib).run(cycles=10)
        sar = prepare_refinement(rnase_dir / "1sar.pdb", mtz, monlib=monlib).run(cycles=8, weight=4.0)
        ok &= not any(a.kind == "overfitting" for a in rnase.alarms)
        ok &= any(a.kind == "overfitting" for a in sar.alarms)
        parts.append("<h3>Real data: RNase Sa (CCP4i2 tutorial data, bundled)</h3>")
        alarms = html.escape("; ".join(f"{a.kind} at cycle {a.cycle}" for a in sar.alarms))
        parts.append(f"<p>rnase_model (a model with noise added) against the native data, the default "
                     f"run (X-ray weight {rnase.weight:g} chosen by R_free): R_free "
                     f"{rnase.history[0].free:.3f} → {rnase.kept.free:.3f}, bond RMSD "
                     f"{rnase.kept.figures['bond_rmsd']:.4f} Å, no alarm. The deposited "
                     f"1SAR against the same data: its R_free starts at R_work (the free reflections were "
                     f"refined against before free sets existed) and rises as refinement goes on: {alarms}; "
                     f"the model of cycle {sar.kept_cycle} is kept.</p>")
        parts.append(_figure(rnase, "rnase_model", "rnase_model: R_free falls"))
        parts.append(_figure(sar, "1SAR", "1SAR: R_free rises, alarm"))
        figures.update(rnase_r_free=rnase.kept.free,
                       sar_alarm=any(a.kind == "overfitting" for a in sar.alarms))
    else:
        parts.append("<p>(The bundled RNase Sa data are missing from this installation.)</p>")
    seconds = time.perf_counter() - start
    summary = (f"5WKD shaken {rmsd_start:.2f} Å: R_free {first['r_free']:.3f} → {kept['r_free']:.3f}; "
               f"restraints off: alarm {'fired' if fired else 'silent'}; {seconds:.0f} s")
    parts.append("<p>Monomer library subset bundled under the LGPL-3 (see "
                 "src/refinekit/data/xtal/NOTICE.md).</p>")
    return Section("Crystallographic refinement (xtal)", summary, "\n".join(parts), ok=bool(ok),
                   figures=figures)
