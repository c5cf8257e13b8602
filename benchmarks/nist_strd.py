"""NIST StRD nonlinear regression: 27 problems x 2 starts, certified digits, refinekit beside lmfit.

For each case: the smallest log relative error (LRE, correct significant digits) over the parameters
and the residual sum of squares, against NIST's certified values. A case counts as certified at >= 6
digits. refinekit runs with its defaults (free_fraction=0, as certified problems require) in double and
in extended precision; lmfit (if installed: pip install lmfit) runs ``minimize(method="leastsq")`` on the
same model expressions, with its defaults, as lmfit's own NIST tests do.

    python benchmarks/nist_strd.py [--data DIR]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path

import numpy as np

from refinekit.fit import Expression, fit_nist, read_nist
from refinekit.fit.demo import log_relative_error, nist_directory


def digits(values: dict[str, float], rss: float, problem) -> float:
    return min([log_relative_error(values[b], c) for b, c in problem.certified.items()]
               + [log_relative_error(rss, problem.certified_rss)])


def run_refinekit(problem, start: int, precision: str) -> tuple[float, float]:
    t = time.perf_counter()
    res = fit_nist(problem, start, precision=precision)
    seconds = time.perf_counter() - t
    return digits({n: p.value for n, p in res.params.items()}, res.chisqr, problem), seconds


def run_lmfit(problem, start: int) -> tuple[float, float]:
    import lmfit

    expr = Expression(problem.model)
    data = {k: np.asarray(v, dtype=float) for k, v in problem.data.items()}
    y = data.pop("y")
    if problem.response == "log(y)":
        y = np.log(y)
    params = lmfit.Parameters()
    for name, value in problem.starts[start - 1].items():
        params.add(name, value=value)

    def residual(p):
        return expr({**data, **p.valuesdict()}) - y

    t = time.perf_counter()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            out = lmfit.minimize(residual, params, method="leastsq")
            values = {n: out.params[n].value for n in problem.certified}
            rss = float(np.sum(residual(out.params) ** 2))
        except Exception:
            values, rss = {n: math.nan for n in problem.certified}, math.nan
    return digits(values, rss, problem), time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=nist_directory())
    args = parser.parse_args()
    try:
        import lmfit

        lmfit_version = lmfit.__version__
    except ImportError:
        lmfit_version = None
    solvers = ["refinekit double", "refinekit extended"] + (["lmfit leastsq"] if lmfit_version else [])
    counts = {s: [0, 0] for s in solvers}
    seconds = dict.fromkeys(solvers, 0.0)
    print(f"{'problem':10s} start  " + "  ".join(f"{s:>18s}" for s in solvers))
    for path in sorted(args.data.glob("*.dat")):
        problem = read_nist(path)
        for start in (1, 2):
            results = {
                "refinekit double": run_refinekit(problem, start, "double"),
                "refinekit extended": run_refinekit(problem, start, "extended"),
            }
            if lmfit_version:
                results["lmfit leastsq"] = run_lmfit(problem, start)
            for s, (d, t) in results.items():
                counts[s][start - 1] += d >= 6
                seconds[s] += t
            print(f"{problem.name:10s} {start:5d}  " + "  ".join(
                f"{results[s][0]:12.1f} {'ok' if results[s][0] >= 6 else '--':>5s}" for s in solvers))
    print()
    print(f"certified to >= 6 digits (parameters and RSS), lmfit {lmfit_version or 'not installed'}:")
    for s in solvers:
        c1, c2 = counts[s]
        print(f"  {s:20s} start 1: {c1:2d}/27  start 2: {c2:2d}/27  total {c1 + c2:2d}/54  "
              f"time {seconds[s]:.2f} s")


if __name__ == "__main__":
    main()
