"""``refinekit linalg solve A.mtx b.mtx -o x.mtx [--precision single] [--json]``"""

from __future__ import annotations

from pathlib import Path

import typer

from .common import EXIT_NO_RESULT, EXIT_OK, ProgressBar, check_outputs, emit, handle_errors

app = typer.Typer(help="Linear systems by mixed-precision iterative refinement.", no_args_is_help=True,
                  rich_markup_mode=None)


def _shape(shape: tuple[int, ...]) -> str:
    """``3x4`` for a shape; ``()`` for a 0-d array, which ``'x'.join`` would leave blank."""
    return "x".join(map(str, shape)) if shape else repr(shape)


@app.command("solve", no_args_is_help=True)
@handle_errors
def solve_command(
    matrix: Path = typer.Argument(..., help="The matrix A: Matrix Market (.mtx, .mtx.gz) or numpy (.npy)."),
    rhs: Path = typer.Argument(..., help="The right-hand side b (n values, or n rows of k columns)."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write x (.mtx or .npy)."),
    precision: str = typer.Option("auto", "--precision", "-p",
                                  help="Factorization precision: auto, single, half, bfloat16 (dense A "
                                       "only: a .npy, an array .mtx, or --dense), double."),
    method: str = typer.Option("auto", "--method", help="auto (IR, then GMRES-IR, then double), ir, "
                                                         "gmres-ir or double."),
    tol: float | None = typer.Option(None, "--tol", help="Relative correction at which refinement has "
                                                         "converged (default: unit roundoff of double)."),
    max_iter: int | None = typer.Option(None, "--max-iter", help="At most this many corrections per route."),
    dense: bool = typer.Option(False, "--dense", help="Densify a sparse (coordinate) A instead of using "
                                                      "the sparse LU."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON to stdout."),
) -> None:
    """Solve A x = b: factor A in low precision, refine x with double-precision residuals.

    A coordinate Matrix Market A is solved as a sparse matrix (SuperLU), anything else densely.
    Exit codes: 0 solved (x written), 1 no route reached a usable solution (nothing written), 2 bad
    input, including a matrix that is singular (or so nearly singular that no digit of x is certain).
    """
    import numpy as np

    from ..core import InputError
    from ..linalg import solve
    from ..linalg.io import read_array, write_array
    from ..linalg.precision import SparsePrecisionError
    from ..linalg.systems import MatrixError

    check_outputs([output], [matrix, rhs])
    if output.suffix.lower() not in (".mtx", ".npy"):
        raise InputError("the output must be a .mtx or .npy file", path=output)
    a = read_array(matrix, what="matrix", sparse=not dense)
    b = read_array(rhs, what="right-hand side", sparse=False)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise InputError(f"A must be a square matrix, got shape {_shape(a.shape)}", path=matrix)
    if b.ndim not in (1, 2) or b.shape[0] != a.shape[0]:
        raise InputError(f"b has shape {_shape(b.shape)} but A is {a.shape[0]}x{a.shape[1]}: "
                         f"b needs {a.shape[0]} rows", path=rhs)
    try:
        result = solve(a, b, precision=precision, method=method, tol=tol, max_iter=max_iter,
                       callbacks=[ProgressBar("refining")])
    except MatrixError as exc:  # singular, overflowing: the solver knows no file, name it
        raise InputError(str(exc), path=matrix) from None
    except SparsePrecisionError as exc:
        raise InputError(f"{exc} (give --dense to factor it as a dense matrix)", path=matrix) from None
    if not result.trusted and result.status.success:
        raise InputError(f"A is singular to working precision: {result.alarms[-1].message}", path=matrix)
    payload = result.to_dict()
    payload.update({"matrix": str(matrix), "rhs": str(rhs), "n": int(a.shape[0]),
                    "nrhs": 1 if b.ndim == 1 else int(b.shape[1]), "sparse": not isinstance(a, np.ndarray)})
    if result.success:
        write_array(output, result.x)
        payload["output"] = str(output)
        code = EXIT_OK
    else:
        payload["output"] = None
        code = EXIT_NO_RESULT
    text = result.report()
    text += f"\nsolution    : {'written to ' + str(output) if result.success else 'not written'}"
    emit(payload, text, as_json)
    raise typer.Exit(code)
