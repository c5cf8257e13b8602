"""Work/free convergence plots (matplotlib, imported only when a plot is asked for)."""

from __future__ import annotations

from typing import Any


def plot_history(result: Any, ax: Any = None, *, log: bool | None = None,
                 title: str | None = None, xlabel: str = "cycle") -> Any:
    """Plot work and free score per cycle; mark the kept cycle and every alarm. Returns the axes."""
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    cycles = [r.cycle for r in result.history]
    work = [r.work for r in result.history]
    free = [r.free for r in result.history]
    ax.plot(cycles, work, "o-", color="tab:blue", label="work", ms=4)
    if any(f is not None for f in free):
        ax.plot(cycles, [float("nan") if f is None else f for f in free], "s-",
                color="tab:red", label="free", ms=4)
    positive = [v for v in work + free if v is not None and v > 0]
    if log is None:
        log = bool(positive) and max(positive) / min(positive) > 100
    if log:
        ax.set_yscale("log")
    ax.axvline(result.kept_cycle, color="0.4", ls="--", lw=1, label=f"kept (cycle {result.kept_cycle})")
    for alarm in result.alarms:
        if alarm.cycle is not None:
            ax.axvline(alarm.cycle, color="tab:orange", lw=2, alpha=0.7, label=f"{alarm.kind} alarm")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("score (lower is better)")
    ax.set_title(title or f"{result.status.label}: {result.n_cycles} cycles")
    ax.legend(fontsize="small")
    return ax
