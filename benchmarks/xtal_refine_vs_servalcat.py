"""refinekit xtal refine against servalcat (refine_xtal_norefmac, 10 cycles), side by side, same machine,
same data, same monomer library.

For each dataset both programs run as subprocesses (wall time, median of --repeats runs); the table has
each program's R_work/R_free per cycle as it reports them, the best R_free it passed through, the final
geometry, and both final models' R-factors by one yardstick (``refinekit xtal rfactors``, riding
hydrogens added), because the two programs scale differently when they report.

servalcat is GPL-free (MPL-2.0) but is not a refinekit dependency: install it in a separate venv and give
its executable with --servalcat (default: $SERVALCAT, else `servalcat` on PATH).

Run: .venv/bin/python benchmarks/xtal_refine_vs_servalcat.py [--repeats 3] [--datasets rnase 3zt9 1sar]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("REFINEKIT_SHARED_DATA", ROOT.parent / "shared" / "data")) / "xtal"
DATASETS = {
    "rnase": ("1sar/rnase_model.pdb", "1sar/rnase18_Nat_Complexes.mtz"),
    "3zt9": ("3zt9/3zt9.cif.gz", "3zt9/r3zt9sf.ent.gz"),
    "1sar": ("1sar/1sar.pdb", "1sar/rnase18_Nat_Complexes.mtz"),
}
REFINEKIT = [sys.executable, "-c", "from refinekit.cli import main; main()"]


def run(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    return time.perf_counter() - start, proc


def servalcat_run(exe: str, model: Path, data: Path, workdir: Path) -> dict:
    seconds, proc = run([exe, "refine_xtal_norefmac", "--model", str(model), "--hklin", str(data),
                         "--monlib", str(DATA / "monomers"), "-s", "xray", "--ncycle", "10"], workdir)
    if proc.returncode != 0:
        raise SystemExit(f"servalcat failed: {proc.stderr[-500:]}")
    log = proc.stdout
    r = [(float(a), float(b)) for a, b in re.findall(r"Rwork = ([\d.]+) Rfree = ([\d.]+)", log)]
    bonds = re.findall(r"Bond distances, non H\s+\d+\s+([\d.]+)", log)
    angles = re.findall(r"Bond angles, non H\s+\d+\s+([\d.]+)", log)
    pdbs = sorted(workdir.glob("*_refined.pdb"))
    return {"seconds": seconds, "r_work": [a for a, _ in r], "r_free": [b for _, b in r],
            "bond_rmsd": float(bonds[-1]) if bonds else None,
            "angle_rmsd": float(angles[-1]) if angles else None, "model": pdbs[-1] if pdbs else None}


def refinekit_run(model: Path, data: Path, workdir: Path, extra: list[str]) -> dict:
    out = workdir / "out"
    seconds, proc = run([*REFINEKIT, "xtal", "refine", str(model), str(data), "--monlib",
                         str(DATA / "monomers"), "-o", str(out), "--cycles", "10", "--json", *extra], workdir)
    if proc.returncode not in (0,):
        raise SystemExit(f"refinekit failed: {proc.stderr[-500:]}")
    res = json.loads(proc.stdout)
    hist = res["history"]
    return {"seconds": seconds, "r_work": [h["r_work"] for h in hist], "r_free": [h["r_free"] for h in hist],
            "bond_rmsd": res["bond_rmsd"], "angle_rmsd": res["angle_rmsd"], "weight": res["xray_weight"],
            "kept_cycle": res["kept_cycle"], "alarms": [a["kind"] for a in res["alarms"]],
            "model": Path(res["outputs"]["pdb"])}


def same_yardstick(model: Path, data: Path) -> tuple[float, float]:
    """R_work/R_free of a model by refinekit's rfactors, riding hydrogens added (both refine with them)."""
    from refinekit.xtal.io import check_model_matches_data, load_monomer_library, read_model, read_reflections
    from refinekit.xtal.model import AtomicModel
    from refinekit.xtal.rfactors import r_factors_of

    st = read_model(model)
    reflections = read_reflections(data)
    check_model_matches_data(st, reflections, model, data)
    lib, _ = load_monomer_library(st[0].get_all_residue_names(), DATA / "monomers")
    rep = r_factors_of(AtomicModel(st, lib).structure, reflections, twin="none")
    return rep.r_work, rep.r_free


def refinement_yardstick(model: Path, data: Path) -> tuple[float, float]:
    """R_work/R_free of a model as refinekit's refinement scores it (riding hydrogens, isotropic B,
    robust anisotropic and resolution-binned scales and bulk solvent): its cycle 0."""
    from refinekit.xtal import prepare_refinement

    job = prepare_refinement(model, data, monlib=DATA / "monomers", twin="none")
    problem = job.make_problem(1.0)
    scores = problem.check(problem.initial())
    return scores.work, scores.free


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--servalcat", default=os.environ.get("SERVALCAT") or shutil.which("servalcat"))
    args = parser.parse_args()
    if not args.servalcat:
        raise SystemExit("servalcat not found: pip install servalcat in another venv and give --servalcat")
    rows = []
    print(f"load average at the start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for name in args.datasets:
        model, data = (DATA / p for p in DATASETS[name])
        repeats = args.repeats if name == "rnase" else 1
        runs: dict[str, list[dict]] = {"servalcat": [], "refinekit (weight auto)": [],
                                       "refinekit (weight fixed)": []}
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                result = servalcat_run(args.servalcat, model, data, Path(tmp))
                result["yardstick"] = same_yardstick(result["model"], data)
                result["yardstick2"] = refinement_yardstick(result["model"], data)
                runs["servalcat"].append(result)
            with tempfile.TemporaryDirectory() as tmp:
                auto = refinekit_run(model, data, Path(tmp), [])
                auto["yardstick"] = same_yardstick(auto["model"], data)
                auto["yardstick2"] = refinement_yardstick(auto["model"], data)
                runs["refinekit (weight auto)"].append(auto)
            with tempfile.TemporaryDirectory() as tmp:
                fixed = refinekit_run(model, data, Path(tmp), ["--weight", f"{auto['weight']:.4g}"])
                fixed["yardstick"] = same_yardstick(fixed["model"], data)
                fixed["yardstick2"] = refinement_yardstick(fixed["model"], data)
                runs["refinekit (weight fixed)"].append(fixed)
        for program, results in runs.items():
            last = results[-1]
            free = last["r_free"]
            rows.append({
                "dataset": name, "program": program,
                "seconds": statistics.median(r["seconds"] for r in results), "runs": len(results),
                "r_work": f"{last['r_work'][0]:.4f} → {last['r_work'][-1]:.4f}",
                "r_free": f"{free[0]:.4f} → {free[-1]:.4f}",
                "best_r_free": f"{min(free):.4f} (cycle {free.index(min(free))})",
                "bond": last["bond_rmsd"], "angle": last["angle_rmsd"],
                "yardstick": f"{last['yardstick'][0]:.4f} / {last['yardstick'][1]:.4f}",
                "yardstick2": f"{last['yardstick2'][0]:.4f} / {last['yardstick2'][1]:.4f}",
                "all_seconds": " ".join(f"{r['seconds']:.1f}" for r in results),
                "note": (f"weight {last['weight']:.3g}, kept cycle {last['kept_cycle']}, alarms "
                         f"{', '.join(last['alarms']) or 'none'}") if "weight" in last else "",
                "free_per_cycle": " ".join(f"{f:.4f}" for f in free),
            })
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| dataset | program | wall s (median; runs) | R_work | R_free | lowest R_free | bond Å | "
          "angle ° | final model, yardstick A: rfactors (R_work / R_free) | "
          "yardstick B: refinekit's refinement scaling | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['program']} | {r['seconds']:.1f} ({r['all_seconds']}) | "
              f"{r['r_work']} | {r['r_free']} | {r['best_r_free']} | {r['bond']:.4f} | {r['angle']:.2f} | "
              f"{r['yardstick']} | {r['yardstick2']} | {r['note']} |")
    print()
    for r in rows:
        print(f"- {r['dataset']}, {r['program']}: R_free per cycle {r['free_per_cycle']}")
    print()
    for name in args.datasets:
        by = {r["program"]: r for r in rows if r["dataset"] == name}
        base = by["servalcat"]["seconds"]
        auto, fixed = by["refinekit (weight auto)"]["seconds"], by["refinekit (weight fixed)"]["seconds"]
        print(f"- {name}: time / servalcat's: weight auto {auto / base:.2f}, weight given {fixed / base:.2f}")


if __name__ == "__main__":
    main()
