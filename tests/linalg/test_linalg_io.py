"""Matrix Market files as other programs write them (SuiteSparse, NIST Matrix Market, Fortran, Windows
editors) read as scipy reads the plain file, and what ``refinekit linalg solve -o x.mtx`` writes read back
bit for bit by scipy and by a reader of plain columns."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from typer.testing import CliRunner

from refinekit.cli import app
from refinekit.linalg.io import read_array, write_array

from .linalg_helpers import real_matrix_path

PLAIN = "%%MatrixMarket matrix coordinate real general\n3 3 4\n1 1 4.0\n2 1 -1.5\n2 2 3.0\n3 3 0.25\n"
EXPECTED = np.array([[4.0, 0.0, 0.0], [-1.5, 3.0, 0.0], [0.0, 0.0, 0.25]])


def _dense(value) -> np.ndarray:
    return value.toarray() if hasattr(value, "toarray") else np.asarray(value)


def _plain_columns(path: Path) -> np.ndarray:
    """A dense ``array`` file read as plain text, without scipy: size line, then values column by column."""
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("%")]
    rows, cols = map(int, lines[0].split())
    values = np.array([float(line) for line in lines[1:]])
    assert values.size == rows * cols, (values.size, rows, cols)
    return values.reshape(cols, rows).T


VARIANTS = {
    "bom": b"\xef\xbb\xbf" + PLAIN.encode(),
    "bom_crlf": b"\xef\xbb\xbf" + PLAIN.replace("\n", "\r\n").encode(),
    "upper_case_banner": PLAIN.replace("%%MatrixMarket matrix coordinate real general",
                                       "%%MATRIXMARKET MATRIX COORDINATE REAL GENERAL").encode(),
    "mixed_case_fields": PLAIN.replace("matrix coordinate real general", "MATRIX Coordinate REAL General").encode(),
    "comments_among_entries": (PLAIN.replace("3 3 4\n", "% c\n\n3 3 4\n% after the size line\n")
                               .replace("2 2 3.0\n", "\n% between entries\n2 2 3.0\n") + "% at the end\n").encode(),
    "fortran_exponents": PLAIN.replace("4.0", "0.4D+01").replace("-1.5", "-1.5d0").replace("0.25", "2.5D-1").encode(),
    "crlf": PLAIN.replace("\n", "\r\n").encode(),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_matrix_market_as_other_programs_write_it(tmp_path, name):
    path = tmp_path / f"{name}.mtx"
    path.write_bytes(VARIANTS[name])
    assert np.array_equal(_dense(read_array(path)), EXPECTED)
    assert np.array_equal(read_array(path, sparse=False), EXPECTED)


def test_gzip_compressed_matrix_market(tmp_path):
    """NIST's Matrix Market serves ``.mtx.gz``; scipy.io.mmread reads it, and so do we."""
    path = tmp_path / "a.mtx.gz"
    path.write_bytes(gzip.compress(PLAIN.encode()))
    assert np.array_equal(_dense(read_array(path)), EXPECTED)
    rhs = tmp_path / "b.mtx"
    scipy.io.mmwrite(rhs, np.ones((3, 1)))
    out = tmp_path / "x.mtx"
    res = CliRunner().invoke(app, ["linalg", "solve", str(path), str(rhs), "-o", str(out), "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    assert np.allclose(EXPECTED @ scipy.io.mmread(out), 1.0, rtol=1e-15)


@pytest.mark.parametrize(("text", "expected"), [
    ("%%MatrixMarket matrix coordinate real symmetric\n2 2 2\n1 1 2\n2 1 -1\n", [[2, -1], [-1, 0]]),
    ("%%MatrixMarket matrix coordinate real skew-symmetric\n2 2 1\n2 1 3\n", [[0, -3], [3, 0]]),
    ("%%MatrixMarket matrix coordinate integer general\n2 2 2\n1 1 7\n2 2 -2\n", [[7, 0], [0, -2]]),
    ("%%MatrixMarket matrix array real general\n2 2\n1\n2\n3\n4\n", [[1, 3], [2, 4]]),  # column-major
    ("%%MatrixMarket matrix array real symmetric\n2 2\n1\n2\n3\n", [[1, 2], [2, 3]]),
    ("%%MatrixMarket matrix coordinate real general\n2 2 3\n1 1 1\n1 1 2\n2 2 1\n", [[3, 0], [0, 1]]),  # summed
])
def test_symmetry_field_and_format(tmp_path, text, expected):
    path = tmp_path / "a.mtx"
    path.write_text(text)
    assert np.array_equal(_dense(read_array(path)), expected)


@pytest.mark.parametrize("x", [np.array([3.0]), np.array([[1.0, 2.0], [2.0, 1.0]]),
                               np.array([[0.0, 2.0], [-2.0, 0.0]]), np.eye(3)])
def test_written_solution_is_general_whatever_its_symmetry(tmp_path, x):
    """scipy.io.mmwrite left to itself writes a symmetric (1x1, or n x n from n right-hand sides) x as its lower
    triangle only; a reader of plain columns then gets too few values."""
    path = tmp_path / "x.mtx"
    write_array(path, x)
    assert path.read_text().splitlines()[0] == "%%MatrixMarket matrix array real general"
    expected = x[:, None] if x.ndim == 1 else x
    assert np.array_equal(_plain_columns(path), expected)
    assert np.array_equal(scipy.io.mmread(path), expected)


def test_written_solution_round_trips_bit_for_bit(tmp_path):
    x = np.array([0.1, 1 / 3, -2.0 / 7, 1e-310, 5e-324, np.nextafter(1.0, 2.0), 1.7976931348623157e308, -1e300])
    path = tmp_path / "x.mtx"
    write_array(path, x)
    for back in (scipy.io.mmread(path)[:, 0], _plain_columns(path)[:, 0]):
        assert back.view(np.int64).tolist() == x.view(np.int64).tolist()
    assert not any(word in path.read_text().lower() for word in ("inf", "nan"))


def test_symmetric_stored_real_matrix_is_solved_as_the_full_matrix(tmp_path):
    """1138_bus stores only its lower triangle: x must solve the full symmetric matrix."""
    path = real_matrix_path("1138_bus")
    lines = [line for line in path.read_text().splitlines()[1:] if not line.startswith("%")]
    n = int(lines[0].split()[0])
    entries = np.loadtxt(lines[1:])
    rows, cols = entries[:, 0].astype(int) - 1, entries[:, 1].astype(int) - 1
    full = np.zeros((n, n))
    full[rows, cols] = entries[:, 2]
    full[cols, rows] = entries[:, 2]
    b = np.random.default_rng(3).standard_normal((n, 2))
    rhs, out = tmp_path / "b.mtx", tmp_path / "x.mtx"
    scipy.io.mmwrite(rhs, b, precision=17)
    res = CliRunner().invoke(app, ["linalg", "solve", str(path), str(rhs), "-o", str(out), "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["nrhs"] == 2
    x, reference = _plain_columns(out), np.linalg.solve(full, b)
    assert np.linalg.norm(x - reference) <= 1e-8 * np.linalg.norm(reference)
