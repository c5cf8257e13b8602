"""The linalg section of ``refinekit demo``: a real matrix (HB/1138_bus, bundled) solved with single-,
half- and bfloat16-precision factors and double-precision residuals, against a double solve."""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_write_text
from ..core.result import jsonable
from ..report.html import Section, figure_to_html, pre, table_html
from .api import SolveResult, solve
from .io import read_array

MATRIX = "1138_bus"
PRECISIONS = ("single", "half", "bfloat16")


def matrix_path() -> Path:
    return Path(str(resources.files("refinekit") / "data" / "linalg" / f"{MATRIX}.mtx"))


def reference_solution(a: np.ndarray, b: np.ndarray, sweeps: int = 10) -> np.ndarray:
    """``A^-1 b`` to beyond double's accuracy: refinement with the double LU and long-double residuals
    (the yardstick for the forward errors below, not a method refinekit offers)."""
    import scipy.linalg

    factors = scipy.linalg.lu_factor(a)
    x = scipy.linalg.lu_solve(factors, b).astype(np.longdouble)
    a_long, b_long = a.astype(np.longdouble), b.astype(np.longdouble)
    for _ in range(sweeps):
        x += scipy.linalg.lu_solve(factors, (b_long - a_long @ x).astype(np.float64))
    return x.astype(np.float64)


def _forward_error(x: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(x - reference)) / np.max(np.abs(reference)))


def _plot(results: dict[str, SolveResult], double_error: float, double_backward: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    colours = {"single": "tab:blue", "half": "tab:red", "bfloat16": "tab:green"}
    markers = {"ir": "o", "gmres-ir": "s", "double": "^"}
    for precision, result in results.items():
        cycle = 0
        for attempt in result.attempts:
            if not attempt.history:
                continue
            cycles = np.arange(cycle, cycle + len(attempt.history))
            steps = [np.nan if r.step is None else r.step for r in attempt.history]
            etas = [r.work for r in attempt.history]
            label = f"{precision}: {attempt.path}"
            left.semilogy(cycles, steps, marker=markers[attempt.path], color=colours[precision], ms=4,
                          label=label)
            right.semilogy(cycles, etas, marker=markers[attempt.path], color=colours[precision], ms=4,
                           label=label)
            cycle += len(attempt.history)
    left.axhline(double_error, color="0.3", ls="--", lw=1, label="double solve: forward error")
    left.axhline(2.0**-53, color="0.6", ls=":", lw=1, label="unit roundoff")
    right.axhline(double_backward, color="0.3", ls="--", lw=1, label="double solve: backward error")
    left.set(xlabel="cycle (all routes tried, in order)", ylabel="||d|| / ||x||",
             title=f"{MATRIX}: relative correction per cycle")
    right.set(xlabel="cycle (all routes tried, in order)", ylabel="normwise backward error",
              title=f"{MATRIX}: backward error per cycle")
    left.legend(fontsize="x-small")
    right.legend(fontsize="x-small")
    return fig


def section(workdir: Path) -> Section:
    """Solve the bundled matrix in each precision; table, convergence plot and a JSON summary."""
    import scipy.linalg

    a = read_array(matrix_path(), sparse=False)
    n = a.shape[0]
    b = a @ np.random.default_rng(2024).standard_normal(n)
    reference = reference_solution(a, b)

    tick = time.perf_counter()
    x_double = scipy.linalg.solve(a, b)
    double_seconds = time.perf_counter() - tick
    double_error = _forward_error(x_double, reference)
    double_backward = float(np.max(np.abs(b - a @ x_double))
                            / (np.max(np.abs(a).sum(axis=1)) * np.max(np.abs(x_double)) + np.max(np.abs(b))))

    results: dict[str, SolveResult] = {}
    rows = [["double LU (scipy.linalg.solve)", "-", "-", "-", double_backward, double_error, None, "-",
             f"{1e3 * double_seconds:.1f}"]]
    ok = True
    summary_rows = []
    for precision in PRECISIONS:
        tick = time.perf_counter()
        result = solve(a, b, precision=precision)
        seconds = time.perf_counter() - tick
        results[precision] = result
        error = _forward_error(result.x, reference)
        bounded = error <= result.forward_error_bound
        ok &= result.success and bounded and error <= 10 * max(double_error, n * 2.0**-53)
        routes = " -> ".join(f"{t.path} ({t.status})" for t in result.attempts)
        rows.append([f"{precision} factors", result.path, routes, result.iterations, result.backward_error,
                     error, result.forward_error_bound, "yes" if bounded else "NO", f"{1e3 * seconds:.1f}"])
        summary_rows.append({"precision": precision, "path": result.path, "success": result.success,
                             "iterations": result.iterations, "backward_error": result.backward_error,
                             "forward_error": error, "forward_error_bound": result.forward_error_bound})

    parts = [
        f"<p>HB/1138_bus (SuiteSparse; a power-network admittance matrix, n = {n}, condition number about "
        "8.6e6), solved densely for b = A x with x ~ N(0, 1). Each run factors the equilibrated matrix "
        "once in the low precision and refines x with double-precision residuals; where plain refinement "
        "stops contracting it switches to GMRES-IR, and then to a double LU. Forward errors are against "
        "a solution computed with long-double residuals. Half and bfloat16 are emulated on the CPU "
        "(factors carrying 11 and 8 significant bits): their accuracy, not their speed.</p>",
        table_html(["solver", "route that produced x", "routes tried", "corrections", "backward error",
                    "forward error (true)", "forward error bound", "bound holds", "time / ms"], rows),
        figure_to_html(_plot(results, double_error, double_backward),
                       "relative correction and backward error per cycle", width=940),
        pre(results["single"].report(full=True)),
    ]
    record = {"matrix": MATRIX, "n": n, "double_forward_error": double_error, "runs": summary_rows}
    atomic_write_text(workdir / "linalg.json", json.dumps(jsonable(record), indent=2) + "\n")
    single, half = results["single"], results["half"]
    summary = (f"{MATRIX} (n={n}): single factors -> {single.path} in {single.iterations} corrections, "
               f"forward error {_forward_error(single.x, reference):.1e} (double LU {double_error:.1e}); "
               f"half -> {half.path}; every error bound held")
    if not ok:
        summary = f"{MATRIX}: a run failed, missed its bound or lost accuracy against the double LU"
    return Section("linalg: mixed-precision iterative refinement of Ax = b", summary, "".join(parts), ok,
                   {"matrix": MATRIX, "n": n, "single_path": single.path,
                    "single_iterations": single.iterations,
                    "single_forward_error": _forward_error(single.x, reference),
                    "double_forward_error": double_error, "half_path": half.path})
