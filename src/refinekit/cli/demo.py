"""``refinekit demo``: run every installed application on bundled data; write one HTML report."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import typer

from ..core.atomic import atomic_write_text
from ..core.result import jsonable
from .common import handle_errors

#: Domains with a demo, in report order. Each is ``refinekit.<name>.demo`` with a function
#: ``section(workdir: pathlib.Path) -> refinekit.report.Section``.
DEMOS = ("fit", "linalg", "xtal", "cryoem", "focus")


@handle_errors
def demo_command(
    out: Path = typer.Option(Path("demo-output"), "--out", "-o", help="Folder for the report and outputs."),
    only: list[str] = typer.Option([], "--only", help="Run only these applications (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary to stdout."),
) -> None:
    """Run every installed application on data bundled with refinekit; write OUT/report.html."""
    from ..core import InputError
    from ..report import Section, render_report

    unknown = sorted(set(only) - set(DEMOS))
    if unknown:
        raise InputError(f"unknown application(s) for --only: {', '.join(unknown)} "
                         f"(known: {', '.join(DEMOS)})")
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", path=out)
    out.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = []
    summary: dict[str, dict] = {}
    for name in DEMOS:
        if only and name not in only:
            continue
        try:
            module = importlib.import_module(f"refinekit.{name}.demo")
        except ModuleNotFoundError as exc:
            if exc.name in (f"refinekit.{name}", f"refinekit.{name}.demo"):
                continue  # this application is not built yet
            summary[name] = {"ok": False, "skipped": f"needs {exc.name} (pip install 'refinekit[{name}]')"}
            continue
        typer.echo(f"demo: {name} ...", err=True)
        workdir = out / name
        workdir.mkdir(exist_ok=True)
        start = time.perf_counter()
        section = module.section(workdir)
        seconds = time.perf_counter() - start
        sections.append(section)
        summary[name] = {"ok": section.ok, "summary": section.summary, "seconds": round(seconds, 2),
                         **section.figures}
        typer.echo(f"demo: {name} done in {seconds:.1f} s: {section.summary}", err=True)
    report = out / "report.html"
    render_report(sections, report)
    atomic_write_text(out / "summary.json", json.dumps(jsonable(summary), indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(jsonable({"report": str(report), "sections": summary}), indent=2))
    else:
        typer.echo(f"wrote {report}")
    if not all(s.get("ok", False) for s in summary.values()):
        raise typer.Exit(1)
