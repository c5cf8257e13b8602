"""Speed and memory on the PCB stack (7 JPEG frames, 2048x1536): the whole command (start, read,
align, fuse, write) in a fresh process per run, refinekit and the focusweave baseline interleaved
in the same run; medians of ``--repeats`` runs of CPU time (user + system, all threads) and peak RSS.

    python benchmarks/focus_performance.py [--repeats 5] [--depth] [--focusweave-python PATH]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from focus_common import (
    DATA,
    FOCUSWEAVE_RUNNER,
    NO_BASELINE,
    REFINEKIT_RUNNER,
    focusweave_python,
    focusweave_version,
    measure,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "pcb")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", action="store_true", help="also time refinekit with --depth")
    parser.add_argument("--focusweave-python", default=None)
    args = parser.parse_args()
    frames = sorted(str(p) for p in args.data.iterdir() if p.suffix.lower() in (".jpg", ".png", ".tif"))
    python = focusweave_python(args.focusweave_python)
    if python is None:
        print(NO_BASELINE, file=sys.stderr)
    runs: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        commands = {"refinekit fuse": [sys.executable, "-c", REFINEKIT_RUNNER, "focus", "fuse", *frames,
                                       "-o", f"{tmp}/refinekit.png"]}
        if args.depth:
            commands["refinekit fuse --depth"] = [*commands["refinekit fuse"], "--depth", f"{tmp}/depth.tif"]
        if python is not None:
            commands[f"focusweave {focusweave_version(python)}"] = [python, "-c", FOCUSWEAVE_RUNNER,
                                                                    f"{tmp}/focusweave.png", *frames]
        for _ in range(args.repeats):  # interleaved, so that machine load affects all alike
            for name, command in commands.items():
                runs.setdefault(name, []).append(measure(command))
    print(f"{args.data.name}: {len(frames)} frames; {platform.processor() or platform.machine()}, "
          f"{__import__('os').cpu_count()} cores; median of {args.repeats} runs")
    print(f"{'tool':<24} {'CPU s':>7} {'wall s':>7} {'peak GiB':>9}")
    medians = {}
    for name, measured in runs.items():
        cpu = statistics.median(m.cpu_s for m in measured)
        wall = statistics.median(m.wall_s for m in measured)
        peak = statistics.median(m.peak_gib for m in measured)
        medians[name] = (cpu, peak)
        print(f"{name:<24} {cpu:7.2f} {wall:7.2f} {peak:9.3f}")
    baseline = next((v for k, v in medians.items() if k.startswith("focusweave")), None)
    if baseline is not None:
        cpu, peak = medians["refinekit fuse"]
        print(f"refinekit fuse / focusweave: CPU x{cpu / baseline[0]:.2f}, "
              f"peak memory x{peak / baseline[1]:.2f}")


if __name__ == "__main__":
    main()
