"""Helpers of the linalg tests: real matrices, matrices of set condition number, reference solutions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.linalg

from ..conftest import SHARED_DATA

LINALG_DATA = SHARED_DATA / "linalg"
REAL_MATRICES = ("1138_bus", "adder_dcop_05", "fs_183_6", "hangGlider_2", "mahindas", "nnc1374", "rajat19",
                 "west0479")
U = 2.0**-53


def real_matrix_path(name: str) -> Path:
    path = LINALG_DATA / f"{name}.mtx"
    if not path.is_file():
        pytest.skip(f"real matrix {name} not found at {path}")
    return path


def load_real(name: str, sparse: bool = False):
    matrix = scipy.io.mmread(real_matrix_path(name))
    return matrix.tocsr() if sparse else matrix.toarray()


def with_condition(n: int, kappa: float, seed: int = 0) -> np.ndarray:
    """``U diag(s) V^T`` with Haar-random orthogonal ``U``, ``V`` and singular values spread
    geometrically from 1 to ``1/kappa``: 2-norm condition number ``kappa`` (to rounding)."""
    rng = np.random.default_rng(seed)
    left, _ = np.linalg.qr(rng.standard_normal((n, n)))
    right, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (left * np.logspace(0, -np.log10(kappa), n)) @ right.T


def few_small(n: int, kappa: float, seed: int = 0, count: int = 5) -> np.ndarray:
    """``U diag(s) V^T`` with all singular values 1 but ``count`` spread geometrically from 1e-2 to
    ``1/kappa``: a handful of near-null directions (benchmarks/linalg_solve.py's ``few-small``)."""
    rng = np.random.default_rng(seed)
    left, _ = np.linalg.qr(rng.standard_normal((n, n)))
    right, _ = np.linalg.qr(rng.standard_normal((n, n)))
    values = np.ones(n)
    values[n - count:] = np.logspace(-2, -np.log10(kappa), count)
    return (left * values) @ right.T


def reference_solution(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The solution of ``a x = b`` (for these very ``a`` and ``b``) to far beyond double's accuracy:
    refinement with the double LU and residuals in long double (64-bit significand on x86), which
    converges where ``kappa * 2**-53 < 1`` and leaves an error near ``kappa * 2**-64``, rounded to
    double at the end."""
    lu = scipy.linalg.lu_factor(a)
    x = scipy.linalg.lu_solve(lu, b).astype(np.longdouble)
    a_long, b_long = a.astype(np.longdouble), b.astype(np.longdouble)
    for _ in range(12):
        correction = scipy.linalg.lu_solve(lu, (b_long - a_long @ x).astype(np.float64))
        x += correction
        if np.max(np.abs(correction)) <= 1e-3 * U * np.max(np.abs(x)):
            break
    return x.astype(np.float64)


def forward_errors(x: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Normwise (infinity norm) and componentwise relative errors of ``x``."""
    x, reference = np.asarray(x, dtype=float), np.asarray(reference, dtype=float)
    normwise = float(np.max(np.abs(x - reference)) / np.max(np.abs(reference)))
    nonzero = reference != 0
    componentwise = float(np.max(np.abs(x - reference)[nonzero] / np.abs(reference[nonzero])))
    return normwise, componentwise


def bounded_errors(x: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Normwise and componentwise errors of ``x`` relative to ``x`` itself, as the solver's forward-error
    bounds (and LAPACK's FERR) define them; they differ from :func:`forward_errors` where ``x`` is far
    off."""
    x, reference = np.asarray(x, dtype=float), np.asarray(reference, dtype=float)
    error = np.abs(x - reference)
    with np.errstate(divide="ignore", invalid="ignore"):
        componentwise = np.where(error > 0, error / np.abs(x), 0.0)
    return float(np.max(error) / np.max(np.abs(x))), float(np.max(componentwise))


def right_hand_side(a: np.ndarray, seed: int = 12345) -> np.ndarray:
    """``b = A x`` for ``x ~ N(0, 1)`` (as SOURCE.md's DSGESV runs)."""
    return a @ np.random.default_rng(seed).standard_normal(a.shape[0])
