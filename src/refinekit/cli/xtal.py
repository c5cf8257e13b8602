"""``refinekit xtal refine|rfactors``: crystallographic refinement against amplitudes."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from .common import ProgressBar, check_output_folder, emit, exit_code, handle_errors

app = typer.Typer(help="Crystallography: refine an atomic model against structure-factor amplitudes, "
                       "with R_work/R_free and the overfitting alarm.", no_args_is_help=True)


def _labels(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


@app.command("rfactors", no_args_is_help=True)
@handle_errors
def rfactors_command(
    model: Path = typer.Argument(..., help="Model: PDB or mmCIF (gzip allowed)."),
    data: Path = typer.Argument(..., help="Reflections: MTZ or structure-factor mmCIF."),
    labels: str | None = typer.Option(None, "--labels", help="Data columns, e.g. FP,SIGFP or I,SIGI."),
    free_label: str | None = typer.Option(None, "--free-label", help="Free-flag column (found by name if "
                                                                       "not given)."),
    twin: str = typer.Option("auto", "--twin", help="auto, none, or a twin law such as -h,k,-l."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON to stdout."),
) -> None:
    """R_work, R_free and CC of MODEL against DATA, the model as it stands."""
    from ..xtal import r_factors

    result = r_factors(model, data, labels=_labels(labels), free_label=free_label, twin=twin)
    emit(result.to_dict(), result.report(), as_json)


@app.command("refine", no_args_is_help=True)
@handle_errors
def refine_command(
    model: Path = typer.Argument(..., help="Model: PDB or mmCIF (gzip allowed)."),
    data: Path = typer.Argument(..., help="Reflections: MTZ or structure-factor mmCIF."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: <model>_refined "
                                                                 "in the current folder)."),
    cycles: int = typer.Option(10, "--cycles", help="At most this many refinement cycles."),
    target: str = typer.Option("ml", "--target", help="X-ray target: ml (sigma-A likelihood) or ls."),
    monlib: Path | None = typer.Option(None, "--monlib", help="CCP4 monomer library folder (default: "
                                                                "$CLIBD_MON, else the bundled subset)."),
    weight: str = typer.Option("auto", "--weight", help="X-ray weight against the restraints: auto "
                                                        "(chosen by R_free) or a number (1 = Bayesian)."),
    labels: str | None = typer.Option(None, "--labels", help="Data columns, e.g. FP,SIGFP or I,SIGI."),
    free_label: str | None = typer.Option(None, "--free-label", help="Free-flag column."),
    free_fraction: float = typer.Option(0.05, "--free-fraction", help="Free fraction of a free set made "
                                                                      "where the data have none."),
    seed: int = typer.Option(0, "--seed", help="Seed of a free set made here."),
    twin: str = typer.Option("auto", "--twin", help="auto, none, or a twin law such as -h,k,-l."),
    hydrogens: bool = typer.Option(True, "--hydrogens/--no-hydrogens", help="Riding hydrogens from the "
                                                                           "dictionaries."),
    write_hydrogens: bool = typer.Option(True, "--write-hydrogens/--strip-hydrogens",
                                         help="Keep the riding hydrogens in the output model."),
    occupancy: bool = typer.Option(False, "--occupancy", help="Also refine occupancies of partially "
                                                              "occupied atoms."),
    keep_going: bool = typer.Option(False, "--keep-going", help="Do not stop when the overfitting alarm "
                                                                "fires (the best model is kept anyway)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON to stdout."),
) -> None:
    """Refine MODEL against DATA: coordinates and B-factors, restraints from the monomer library,
    R_work/R_free every cycle; where the overfitting alarm fires, the best model by R_free is kept."""
    from ..core import InputError, output_folder
    from ..xtal import prepare_refinement, write_outputs
    from ..xtal.api import output_stem

    if cycles < 0:
        raise InputError(f"--cycles must be >= 0, got {cycles}")
    if target not in ("ml", "ls"):
        raise InputError(f"--target must be ml or ls, got {target!r}")
    if not 0 < free_fraction < 0.5:
        raise InputError(f"--free-fraction must be between 0 and 0.5, got {free_fraction}")
    weight_value: float | None = None
    if weight != "auto":
        try:
            weight_value = float(weight)
        except ValueError:
            raise InputError(f"--weight must be auto or a positive number, got {weight!r}") from None
        if not (math.isfinite(weight_value) and weight_value > 0):
            raise InputError(f"--weight must be a finite positive number, got {weight}")
    out_dir = out if out is not None else Path(output_stem(model) + "_refined")
    # everything is read and checked before anything is written
    job = prepare_refinement(model, data, monlib=monlib, labels=_labels(labels), free_label=free_label,
                             free_fraction=free_fraction, seed=seed, twin=twin, hydrogens=hydrogens,
                             occupancy=occupancy, target=target)
    outputs = job.output_paths(out_dir)
    check_output_folder(out_dir, list(outputs.values()), [model, data])
    result = job.run(cycles=cycles, weight=weight_value, stop_on_overfit=not keep_going,
                     callbacks=[ProgressBar("refining")])
    if not result.usable:
        emit(result.to_dict(), result.report(), as_json)
        raise typer.Exit(exit_code(result))
    with output_folder(out_dir):  # a failed write leaves no folder it made
        written = write_outputs(job, result, outputs, keep_hydrogens=write_hydrogens)
    payload = result.to_dict()
    payload["outputs"] = {k: str(v) for k, v in written.items()}
    text = result.report() + "\n" + "\n".join(f"wrote       : {p}" for p in written.values())
    emit(payload, text, as_json)
    raise typer.Exit(exit_code(result))

