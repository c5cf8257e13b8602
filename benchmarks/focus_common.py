"""Shared by the focus benchmarks: running a command in a fresh process and measuring its CPU time
(user + system, all threads) and peak resident memory; finding the focusweave baseline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "focus"

#: Runs focusweave's Python API on a list of frames and saves the result (run in focusweave's venv).
FOCUSWEAVE_RUNNER = """
import sys
from pathlib import Path
from focusweave import FocusStackConfig, run, save_image
frames = [Path(p) for p in sys.argv[2:]]
result = run(FocusStackConfig(images=frames))
save_image(result.image, Path(sys.argv[1]))
"""

#: Runs the refinekit command line in this interpreter.
REFINEKIT_RUNNER = ("import sys; from refinekit.cli import main; "
                    "sys.argv = ['refinekit', *sys.argv[1:]]; main()")


@dataclass
class Measured:
    cpu_s: float
    wall_s: float
    peak_gib: float


def measure(command: list[str]) -> Measured:
    """Run ``command`` to completion; its CPU time and peak RSS come from ``wait4`` (that child only)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({process.returncode}): {stderr[-500:]}")
    return Measured(usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss / 2 ** 20)


def focusweave_python(explicit: str | None) -> str | None:
    """The interpreter that has focusweave: --focusweave-python, $FOCUSWEAVE_PYTHON, a venv at
    /tmp/focusweave-venv, or this interpreter if it can import focusweave."""
    candidates = [explicit, os.environ.get("FOCUSWEAVE_PYTHON"), "/tmp/focusweave-venv/bin/python",
                  "/tmp/fwvenv/bin/python", sys.executable]
    for candidate in candidates:
        if candidate and (Path(candidate).exists() or shutil.which(candidate)):
            check = subprocess.run([candidate, "-c", "import focusweave"], capture_output=True)
            if check.returncode == 0:
                return candidate
    return None


def focusweave_version(python: str) -> str:
    out = subprocess.run([python, "-c", "import focusweave; print(focusweave.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "?"


NO_BASELINE = ("focusweave not found: make it with\n  python3 -m venv /tmp/focusweave-venv && "
               "/tmp/focusweave-venv/bin/pip install focusweave\nand pass --focusweave-python "
               "/tmp/focusweave-venv/bin/python")
