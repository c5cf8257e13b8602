"""``refinekit fit DATA.csv --model EXPR --param NAME=VALUE ...``"""

from __future__ import annotations

import math
from pathlib import Path

import typer

from .common import ProgressBar, check_outputs, emit, exit_code, handle_errors


@handle_errors
def fit_command(
    data: Path = typer.Argument(..., help="CSV file with a header row."),
    model: str = typer.Option(..., "--model", "-m", help="Model expression, e.g. 'b1*(1-exp(-b2*x))'."),
    param: list[str] = typer.Option(
        [], "--param", "-p",
        help="NAME=VALUE[,min=LO][,max=HI][,fixed][,prior=MEAN:SIGMA]; one per parameter.",
    ),
    y: str = typer.Option("y", "--y", help="Name of the response column."),
    sigma: str | None = typer.Option(None, "--sigma", help="Column of per-point uncertainties."),
    free_fraction: float = typer.Option(
        0.05, "--free-fraction", help="Fraction held out as the free set; 0 fits all."),
    seed: int = typer.Option(0, "--seed", help="Seed of the free-set pick."),
    free_flags: Path | None = typer.Option(
        None, "--free-flags",
        help="Free-flag file: loaded if it exists (never re-picked), otherwise made and written there.",
    ),
    prior_weight: str = typer.Option(
        "1", "--prior-weight",
        help="Weight of the priors beside the data, or 'auto' (chosen by the free score)."),
    precision: str = typer.Option("double", "--precision", help="Residual precision: double or extended."),
    max_cycles: int = typer.Option(20000, "--max-cycles", help="At most this many corrections."),
    plot: Path | None = typer.Option(None, "--plot", help="Write the work/free convergence plot (PNG)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON to stdout."),
) -> None:
    """Fit a parametric model to DATA.csv by damped least squares, with a free set held out."""
    import numpy as np

    from ..core import FreeFlags, InputError
    from ..fit import Expression, fit, parse_param_spec, read_csv
    from ..fit.api import parameter_names
    from ..fit.parameters import Parameters

    check_outputs([plot, free_flags if free_flags and not free_flags.exists() else None], [data])
    if plot is not None and plot.suffix.lower() != ".png":
        raise InputError("the plot must be a .png file", path=plot)
    if plot is not None and free_flags is not None and plot.resolve() == free_flags.resolve():
        # the plot is written last: it would replace the free flags just saved (or loaded) there
        raise InputError("--plot and --free-flags name the same file", path=plot)
    if not 0 <= free_fraction < 1:
        raise InputError(f"--free-fraction must be in [0, 1), got {free_fraction}")
    if seed < 0:
        raise InputError(f"--seed must be >= 0, got {seed}")
    columns = read_csv(data)
    if y not in columns:
        raise InputError(f"no response column {y!r} (columns: {', '.join(columns)}); name it with --y",
                         path=data)
    if sigma is not None and sigma not in columns:
        raise InputError(f"no sigma column {sigma!r} (columns: {', '.join(columns)})", path=data)
    if sigma is not None and sigma == y:
        raise InputError(f"--sigma and --y name the same column {y!r}")
    if sigma is not None and not np.all(columns[sigma] > 0):
        rows = np.flatnonzero(~(columns[sigma] > 0))
        raise InputError(f"sigma column {sigma!r}: {rows.size} value(s) not positive (first in data row "
                         f"{rows[0] + 1}: {columns[sigma][rows[0]]:g})", path=data)

    specs = [parse_param_spec(s) for s in param]
    params = Parameters({p.name: p for p in specs})
    if len(params) != len(specs):
        raise InputError("a parameter is given twice with --param")
    variables = [c for c in columns if c not in (y, sigma)]
    needed = parameter_names(model, [*variables, y])
    if y in needed or y in _names(model):
        raise InputError(f"the model names the response column {y!r}")
    missing = [n for n in needed if n not in params]
    if missing:
        raise InputError(f"no starting value for parameter(s) {', '.join(missing)}: add --param NAME=VALUE "
                         f"(data columns: {', '.join(variables)})")
    clash = [n for n in params if n in columns]
    if clash:
        raise InputError(f"--param names data column(s) {', '.join(clash)}")
    shadowed = sorted(Expression(model).constants & set(columns))
    if shadowed:  # the model would read the constant, never the column
        raise InputError(f"data column(s) {', '.join(shadowed)} share a name with a constant the model "
                         "reads as such: rename the column", path=data)

    if prior_weight != "auto":
        try:
            prior_weight = float(prior_weight)
        except ValueError:
            raise InputError(f"--prior-weight must be a number or 'auto', got {prior_weight!r}") from None
        if not (math.isfinite(prior_weight) and prior_weight >= 0):  # inf: every score is non-finite
            raise InputError(f"--prior-weight must be a finite number >= 0 or 'auto', got {prior_weight}")
    flags = None
    flags_source = None
    if free_flags is not None and free_flags.exists():
        flags = FreeFlags.load(free_flags, n=len(columns[y]))
        flags_source = "loaded"
    elif free_flags is not None and free_fraction == 0:
        raise InputError("--free-flags needs a free set to write: --free-fraction is 0")

    y_values = columns.pop(y)
    sigma_values = columns.pop(sigma) if sigma is not None else None
    data_columns = {k: v for k, v in columns.items() if k in _names(model)}
    # overflow in a trial's scores is judged by the fit (a non-finite score, a rejected step); numpy's
    # warnings about it would only add lines to stderr beside the one-line error or the report
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        result = fit(
            model, params, data_columns, y_values, sigma=sigma_values, free_fraction=free_fraction,
            seed=seed, free_flags=flags, prior_weight=prior_weight, precision=precision,
            max_cycles=max_cycles, callbacks=[ProgressBar("fitting")],
        )
    if free_flags is not None and flags_source is None and result.free_flags is not None:
        result.free_flags.save(free_flags)
        flags_source = "made"
    if plot is not None:
        import matplotlib.pyplot as plt

        ax = result.plot(title=f"{data.name}: {result.status.label}")
        ax.figure.savefig(str(plot) + ".tmp.png", dpi=120)
        plt.close(ax.figure)
        Path(str(plot) + ".tmp.png").replace(plot)
    payload = result.to_dict()
    if result.free_flags is not None:
        payload["free_set"] = {"n_free": result.nfree, "fraction": result.free_flags.free_fraction,
                               "seed": None if flags_source == "loaded" else seed,
                               "source": flags_source or "made",
                               "path": str(free_flags) if free_flags else None}
    text = result.report()
    if "weight_choice" in result.figures:
        text += f"\nprior weight: {result.figures['weight_choice']['message']}"
    if flags_source:
        text += f"\nfree flags  : {flags_source} {free_flags}"
    emit(payload, text, as_json)
    raise typer.Exit(exit_code(result))


def _names(expression: str) -> set[str]:
    from ..fit import Expression

    return Expression(expression).names
