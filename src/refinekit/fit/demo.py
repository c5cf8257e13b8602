"""The fit section of ``refinekit demo``: NIST certification, one fit in detail, the overfitting alarm."""

from __future__ import annotations

import html
import math
from importlib import resources
from pathlib import Path

import numpy as np

from ..core import OverfitMonitor
from ..core.atomic import atomic_write_text
from ..report.html import Section, figure_to_html, pre, table_html
from .api import fit, fit_nist
from .io import read_nist


def nist_directory() -> Path:
    return Path(str(resources.files("refinekit") / "data" / "fit" / "nist-strd"))


def log_relative_error(estimate: float | None, certified: float) -> float:
    """Correct significant digits of ``estimate`` (NIST's LRE), capped at 15."""
    if estimate is None or not math.isfinite(estimate):
        return 0.0
    if estimate == certified:
        return 15.0
    return min(15.0, -math.log10(abs(estimate - certified) / abs(certified)))


def certify_all(precision: str = "extended") -> list[dict]:
    """Fit every bundled NIST problem from both starts; digits matched per case."""
    rows = []
    for path in sorted(nist_directory().glob("*.dat")):
        problem = read_nist(path)
        for start in (1, 2):
            res = fit_nist(problem, start, precision=precision)
            rows.append({
                "problem": problem.name, "start": start, "status": res.status.label, "cycles": res.n_cycles,
                "digits_params": min(log_relative_error(res.params[b].value, c)
                                     for b, c in problem.certified.items()),
                "digits_stderr": min(log_relative_error(res.params[b].stderr, c)
                                     for b, c in problem.certified_stderr.items()),
                "digits_rss": log_relative_error(res.chisqr, problem.certified_rss),
                "difficulty": problem.difficulty.split(" ")[0],
            })
    return rows


def polynomial_data(seed: int = 2, n: int = 40, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A noisy quadratic: the right-sized model has 3 parameters."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, n)
    return x, 1 + 2 * x - 1.5 * x**2 + rng.normal(0, noise, n)


def polynomial(degree: int) -> str:
    return " + ".join(f"c{k}*x**{k}" for k in range(degree + 1))


def section(workdir: Path) -> Section:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts: list[str] = []
    # 1. NIST StRD certification
    rows = certify_all()
    certified = [r for r in rows if min(r["digits_params"], r["digits_rss"]) >= 6]
    by_start = {s: sum(1 for r in certified if r["start"] == s) for s in (1, 2)}
    parts.append("<h3>NIST StRD: 27 certified nonlinear regression problems, from both starting points</h3>"
                 f"<p>{len(certified)} of {len(rows)} cases certified to at least 6 significant digits in "
                 f"every parameter and the residual sum of squares (start 1: {by_start[1]}/27, start 2: "
                 f"{by_start[2]}/27). Residuals in extended precision, corrections in double.</p>")
    parts.append(table_html(
        ["problem", "difficulty", "start", "status", "cycles", "digits (params)", "digits (std. err.)",
         "digits (RSS)"],
        [[r["problem"], r["difficulty"], r["start"], r["status"], r["cycles"], f"{r['digits_params']:.1f}",
          f"{r['digits_stderr']:.1f}", f"{r['digits_rss']:.1f}"] for r in rows]))

    # 2. One fit in detail: Misra1a from the harder start
    misra = read_nist(nist_directory() / "Misra1a.dat")
    res = fit_nist(misra, 1)
    fig, ax = plt.subplots(figsize=(6, 3.4), layout="constrained")
    res.plot(ax=ax, title="Misra1a from start 1: RMS residual per cycle")
    parts.append("<h3>One fit in detail: Misra1a, y = b1*(1-exp(-b2*x)), from b1=500, b2=1e-4</h3>")
    parts.append(pre(res.report(full=False)))
    parts.append(figure_to_html(fig, "Misra1a convergence"))

    # 3. The overfitting alarm: a 13-parameter polynomial on noisy quadratic data, and the right model
    x, y = polynomial_data()
    flexible = fit(polynomial(12), {f"c{k}": 0.0 for k in range(13)}, {"x": x}, y, free_fraction=0.2,
                   seed=2, stop_on_overfit=False)
    right = fit(polynomial(2), {f"c{k}": 0.0 for k in range(3)}, {"x": x}, y, free_fraction=0.2, seed=2)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    flexible.plot(ax=axes[0], title="degree 12: work and free RMS per cycle")
    right.plot(ax=axes[1], title="degree 2: work and free RMS per cycle")
    grid = np.linspace(-1, 1, 400)
    from .expression import Expression

    for res_, label in ((flexible, "degree 12, last cycle"), (right, "degree 2")):
        values = dict(zip(res_.params.varied, res_.x_last, strict=True))
        axes[2].plot(grid, Expression(polynomial(res_.nvarys - 1))({"x": grid, **values}), label=label)
    kept = dict(zip(flexible.params.varied, flexible.x, strict=True))
    axes[2].plot(grid, Expression(polynomial(12))({"x": grid, **kept}), "--",
                 label=f"degree 12, kept cycle {flexible.kept_cycle}")
    free_mask = flexible.free_flags.free
    axes[2].plot(x[~free_mask], y[~free_mask], "k.", label="work points")
    axes[2].plot(x[free_mask], y[free_mask], "rs", mfc="none", label="free points")
    axes[2].set_ylim(y.min() - 1, y.max() + 1)
    axes[2].legend(fontsize="x-small")
    axes[2].set_title("fitted curves")
    alarm = flexible.alarms[0] if flexible.alarms else None
    parts.append("<h3>The overfitting alarm</h3><p>A 13-parameter polynomial fitted to 40 noisy points "
                 "of a quadratic, 20 % of them free. " + (
                     f"The alarm fired at cycle {alarm.cycle}: {html.escape(alarm.message)}. The model of "
                     f"cycle {flexible.kept_cycle} is kept." if alarm else "The alarm did not fire.")
                 + f" The right-sized model (3 parameters) raised {len(right.alarms)} alarm(s) and "
                 f"{right.status.label} ({html.escape(right.message)}).</p>")
    parts.append(figure_to_html(fig, "overfitting alarm", width=940))

    # the same monitor over model complexity: degree 0..10 fitted to convergence
    monitor = OverfitMonitor(patience=3)
    scan, fired_at = [], None
    for degree in range(11):
        res_d = fit(polynomial(degree), {f"c{k}": 0.0 for k in range(degree + 1)}, {"x": x}, y,
                    free_flags=flexible.free_flags, stop_on_overfit=False)
        last = res_d.last
        hit = monitor.update(degree, last.work, last.free)
        fired_at = degree if hit and fired_at is None else fired_at
        scan.append([degree, degree + 1, last.work, last.free, "ALARM" if hit else ""])
    parts.append(f"<p>The same monitor over model size (each degree fitted to convergence, same free set): "
                 f"the free RMS is lowest at degree {monitor.best_cycle}"
                 + (f"; the alarm fires at degree {fired_at}." if fired_at is not None else ".") + "</p>")
    parts.append(table_html(["degree", "parameters", "work RMS", "free RMS", "alarm"], scan))

    lines = ["\t".join(rows[0])] + ["\t".join(str(v) for v in r.values()) for r in rows]
    atomic_write_text(workdir / "nist.tsv", "\n".join(lines) + "\n")
    ok = len(certified) == len(rows) and alarm is not None and not right.alarms
    summary = (f"NIST StRD: {len(certified)}/{len(rows)} certified to >= 6 digits; overfitting alarm "
               f"{'fired' if alarm else 'did not fire'} on the too-flexible model and "
               f"{'stayed silent' if not right.alarms else 'fired'} on the right-sized one")
    return Section("fit: any parametric model", summary, "".join(parts), ok,
                   {"nist_certified": len(certified), "nist_cases": len(rows),
                    "overfit_alarm_cycle": alarm.cycle if alarm else None})
