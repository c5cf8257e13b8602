"""The command line: ``refinekit <domain> <verb>``, built with typer.

Each domain's commands live in ``refinekit.cli.<domain>`` as a ``typer.Typer`` named ``app``; they
import their heavy dependencies inside the commands, so that ``refinekit --help`` stays quick.
"""

from __future__ import annotations

import importlib
import os

import typer

# OpenCV writes its own warnings to stderr (a truncated PNG: "PNG input buffer is incomplete") before
# the command's one-line error; the command says what went wrong
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

from .. import __version__
from .demo import demo_command
from .fit import fit_command

DOMAINS = ("linalg", "xtal", "cryoem", "focus")

app = typer.Typer(
    name="refinekit",
    help="Iterative refinement you can trust: guess, check, correct, repeat.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"refinekit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", callback=_version,
                                 is_eager=True),
) -> None:
    """Iterative refinement you can trust: guess, check, correct, repeat.

    Exit codes: 0 a usable result (alarms are reported), 1 no usable result (e.g. diverged),
    2 bad input or usage.
    """


app.command("fit", no_args_is_help=True)(fit_command)
app.command("demo")(demo_command)

for _domain in DOMAINS:
    try:
        _module = importlib.import_module(f".{_domain}", __name__)
    except ModuleNotFoundError as _exc:  # the domain is not built (yet)
        if _exc.name != f"{__name__}.{_domain}":
            raise
        continue
    app.add_typer(_module.app, name=_domain)


def main() -> None:
    app()
