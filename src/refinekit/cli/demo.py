"""``refinekit demo``: run every installed application on bundled data; write one HTML report."""

from __future__ import annotations

import importlib
import json
import os
import time
import traceback
from pathlib import Path

import typer

from ..core.result import jsonable
from .common import emit, handle_errors

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
    from ..core.atomic import atomic_write_files
    from ..report import Section, pre, render_html

    unknown = sorted(set(only) - set(DEMOS))
    if unknown:
        raise InputError(f"unknown application(s) for --only: {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(DEMOS)})")
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", path=out)
    names = [name for name in DEMOS if not only or name in only]
    # bad output places are refused before anything runs (exit 2, nothing written), not after minutes
    for name in names:
        if (out / name).exists() and not (out / name).is_dir():
            raise InputError("exists and is not a folder", path=out / name)
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK | os.X_OK):  # EROFS too
        raise InputError("the folder is not writable", path=out)
    sections: list[Section] = []
    summary: dict[str, dict] = {}
    for name in names:
        try:
            module = importlib.import_module(f"refinekit.{name}.demo")
        except ModuleNotFoundError as exc:
            if exc.name in (f"refinekit.{name}", f"refinekit.{name}.demo"):
                continue  # this application is not built yet
            reason = f"needs {exc.name} (pip install 'refinekit[{name}]')"
            summary[name] = {"ok": False, "summary": f"skipped: {reason}", "skipped": reason}
            sections.append(Section(name, f"skipped: {reason}", "", ok=False))  # the report says so too
            continue
        typer.echo(f"demo: {name} ...", err=True)
        workdir = out / name
        workdir.mkdir(exist_ok=True)
        start = time.perf_counter()
        try:
            section = module.section(workdir)
        except Exception as exc:  # one broken application must not cost the others' report
            seconds = time.perf_counter() - start
            error = " ".join(f"{type(exc).__name__}: {exc}".split())
            typer.echo(f"demo: {name} failed after {seconds:.1f} s: {error}", err=True)
            sections.append(Section(name, f"failed: {error}", pre(traceback.format_exc()), ok=False))
            summary[name] = {"ok": False, "summary": f"failed: {error}", "seconds": round(seconds, 2),
                             "error": error}
            continue
        seconds = time.perf_counter() - start
        sections.append(section)
        entry = {"ok": section.ok, "summary": section.summary, "seconds": round(seconds, 2)}
        # a domain's figure of the same name (cryoem's "seconds") must not replace these
        entry.update((k, v) for k, v in section.figures.items() if k not in entry)
        summary[name] = entry
        typer.echo(f"demo: {name} done in {seconds:.1f} s: {section.summary}", err=True)
    report = out / "report.html"
    # together, so that an interrupt or a full disk never leaves a report beside another run's summary
    summary_json = json.dumps(jsonable(summary), indent=2, allow_nan=False) + "\n"
    atomic_write_files({report: render_html(sections), out / "summary.json": summary_json})
    emit({"report": str(report), "sections": summary}, f"wrote {report}", as_json)
    failed = [name for name, s in summary.items() if not s.get("ok", False)]
    if failed:
        typer.echo(f"demo: not ok: {', '.join(failed)}", err=True)
        raise typer.Exit(1)
