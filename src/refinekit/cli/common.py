"""What every command shares: one-line errors with exit code 2, JSON or text output, a progress bar
on stderr, and the rule that outputs never overwrite inputs.

Exit codes: 0 a usable result (alarms are reported, not fatal); 1 the run produced no usable result
(it diverged or broke down); 2 bad input or usage.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import typer

from ..core import Callback, CycleRecord, InputError
from ..core.errors import os_error_text
from ..core.result import jsonable

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_NO_RESULT, EXIT_BAD_INPUT = 0, 1, 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """Print ``refinekit: error: message`` (one line) to stderr and exit with ``code``."""
    text = " ".join(str(message).split())
    typer.echo(f"refinekit: error: {text}", err=True)
    raise typer.Exit(code)


def handle_errors(function: F) -> F:
    """Turn bad input into one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except InputError as exc:
            fail(str(exc))
        except FileNotFoundError as exc:
            fail(f"{exc.filename}: no such file")
        except IsADirectoryError as exc:
            fail(f"{exc.filename}: is a directory")
        except PermissionError as exc:
            fail(f"{exc.filename}: permission denied")
        except OSError as exc:  # a name too long, a read-only or full disk...: the system's one line
            where = f"{exc.filename}: " if exc.filename else ""
            fail(f"{where}{os_error_text(exc)}",
                 EXIT_NO_RESULT if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO) else EXIT_BAD_INPUT)
        except MemoryError:
            fail("out of memory", EXIT_NO_RESULT)
        except KeyboardInterrupt:
            typer.echo("refinekit: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def emit(payload: dict[str, Any], text: str, as_json: bool) -> None:
    """Print ``payload`` as JSON or ``text`` to stdout."""
    if as_json:
        typer.echo(json.dumps(jsonable(payload), indent=2, allow_nan=False))
    else:
        typer.echo(text)


def check_outputs(outputs: Iterable[Path | str | None], inputs: Iterable[Path | str | None]) -> None:
    """Refuse an output path that names an input file, or whose folder does not exist."""
    ins = [Path(p) for p in inputs if p is not None]
    for out in outputs:
        if out is None:
            continue
        out = Path(out)
        for src in ins:
            if _same_file(out, src):
                raise InputError(f"output {out} would overwrite the input {src}")
        parent = out.parent if str(out.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(f"output folder {parent} does not exist", path=out)
        if out.is_dir():
            raise InputError("output path is a directory", path=out)


def check_output_folder(out_dir: Path | str, outputs: Iterable[Path | str | None],
                        inputs: Iterable[Path | str | None]) -> None:
    """Before a run: ``out_dir`` is a folder or can be made, and where it exists already no output in
    it would replace an input (see :func:`check_outputs`)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("the output folder exists and is not a folder", path=out_dir)
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if not out_dir.exists() and not parent.is_dir():
        raise InputError(f"the folder {parent} for the outputs does not exist", path=out_dir)
    if out_dir.is_dir():
        check_outputs(outputs, inputs)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


class ProgressBar(Callback):
    """A rich progress bar on stderr, one tick per cycle, showing the work and free scores."""

    def __init__(self, description: str = "refining", enabled: bool | None = None) -> None:
        self.description = description
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress: Any = None
        self._task: Any = None

    def on_start(self, problem: Any, max_cycles: int) -> None:
        if not self.enabled or self._progress is not None:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("cycle {task.completed}/{task.total}"),
            TextColumn("{task.fields[scores]}"), TimeElapsedColumn(),
            console=Console(stderr=True), transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=max_cycles, scores="")

    def on_cycle(self, record: CycleRecord, model: Any) -> bool | None:
        if self._progress is not None:
            free = "" if record.free is None else f" free {record.free:.4g}"
            self._progress.update(self._task, completed=record.cycle, scores=f"work {record.work:.4g}{free}")
        return None

    def on_end(self, result: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def exit_code(result: Any) -> int:
    return EXIT_OK if result.usable else EXIT_NO_RESULT
