"""``refinekit linalg solve`` end to end: Matrix Market and .npy in and out, the JSON contract, and bad
input (exit code 2, one line on stderr, no output file)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from typer.testing import CliRunner

from refinekit.cli import app

from .linalg_helpers import U, forward_errors, real_matrix_path, reference_solution

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["linalg", "solve", *[str(a) for a in args]], catch_exceptions=False)


@pytest.fixture()
def west(tmp_path) -> tuple[Path, Path, np.ndarray]:
    """west0479 and b = A x (x ~ N(0, 1)) as Matrix Market files, and the true solution."""
    path = real_matrix_path("west0479")
    a = scipy.io.mmread(path).toarray()
    b = a @ np.random.default_rng(7).standard_normal(a.shape[0])
    b_path = tmp_path / "b.mtx"
    scipy.io.mmwrite(b_path, b[:, None], precision=17)
    return path, b_path, reference_solution(a, scipy.io.mmread(b_path)[:, 0])


def assert_one_line_error(res, *words: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refinekit: error:"), res.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in res.stderr + res.stdout


def test_issue_example_matrix_market(west, tmp_path):
    matrix, rhs, reference = west
    out = tmp_path / "x.mtx"
    res = invoke(matrix, rhs, "-o", out, "--precision", "single", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["success"] is True and data["path"] == "ir" and data["sparse"] is True
    assert data["output"] == str(out) and data["n"] == 479 and data["nrhs"] == 1
    x = scipy.io.mmread(out)
    assert x.shape == (479, 1)
    normwise, _ = forward_errors(x[:, 0], reference)
    assert normwise <= data["forward_error_bound"] < 1e-6
    assert data["backward_error"] <= np.sqrt(479) * U


def test_npy_dense_text_report(west, tmp_path):
    matrix, rhs, reference = west
    a_npy, b_npy, out = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "x.npy"
    np.save(a_npy, scipy.io.mmread(matrix).toarray())
    np.save(b_npy, scipy.io.mmread(rhs)[:, 0])
    res = invoke(a_npy, b_npy, "-o", out, "--precision", "half")
    assert res.exit_code == 0, res.stderr
    assert "status      : converged (success)" in res.stdout and "written to" in res.stdout
    x = np.load(out)
    assert x.shape == (479,)
    assert forward_errors(x, reference)[0] < 1e-8


def test_singular_matrix_is_bad_input(tmp_path):
    a = tmp_path / "a.mtx"
    scipy.io.mmwrite(a, np.array([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 1.0]]))
    b = tmp_path / "b.npy"
    np.save(b, np.ones(3))
    out = tmp_path / "x.npy"
    assert_one_line_error(invoke(a, b, "-o", out), "singular", str(a))
    assert not out.exists()


def test_numerically_singular_matrix_is_bad_input(tmp_path):
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    a = (u * np.logspace(0, -18, 30)) @ u.T
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", np.ones(30))
    out = tmp_path / "x.npy"
    assert_one_line_error(invoke(tmp_path / "a.npy", tmp_path / "b.npy", "-o", out), "singular",
                          str(tmp_path / "a.npy"))
    assert not out.exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(("case", "words"), [
    ("non_square", ("square",)),
    ("mismatch", ("rows",)),
    ("nan_a", ("NaN",)),
    ("nan_b", ("NaN",)),
    ("inf_a", ("NaN or Inf",)),
    ("truncated", ("truncated",)),
    ("garbage_npy", (".npy",)),
    ("missing", ("no such file",)),
    ("empty", ("empty",)),
    ("pattern", ("pattern",)),
    ("complex", ("complex matrices",)),
    ("not_mm", ("Matrix Market",)),
    ("extension", ("unknown format",)),
    ("scalar_a", ("got shape ()",)),
    ("scalar_b", ("b has shape ()",)),
])
def test_bad_input(tmp_path, case, words):
    good_a = tmp_path / "good_a.npy"
    np.save(good_a, np.eye(3) * 2)
    good_b = tmp_path / "good_b.npy"
    np.save(good_b, np.ones(3))
    a, b = good_a, good_b
    if case == "non_square":
        np.save(a := tmp_path / "a.npy", np.ones((3, 4)))
    elif case == "mismatch":
        np.save(b := tmp_path / "b.npy", np.ones(4))
    elif case == "nan_a":
        np.save(a := tmp_path / "a.npy", np.array([[1.0, np.nan], [0.0, 1.0]]))
        np.save(b := tmp_path / "b.npy", np.ones(2))
    elif case == "nan_b":
        np.save(b := tmp_path / "b.npy", np.array([1.0, np.nan, 1.0]))
    elif case == "inf_a":
        a = _write(tmp_path / "a.mtx", "%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1 inf\n2 2 1.0\n")
        np.save(b := tmp_path / "b.npy", np.ones(2))
    elif case == "truncated":
        a = _write(tmp_path / "a.mtx", "%%MatrixMarket matrix coordinate real general\n3 3 3\n1 1 1.0\n2 2 1.0\n")
    elif case == "garbage_npy":
        (a := tmp_path / "a.npy").write_bytes(b"\x93NUMPY garbage that is not an array")
    elif case == "missing":
        a = tmp_path / "nowhere.mtx"
    elif case == "empty":
        a = _write(tmp_path / "a.mtx", "")
    elif case == "pattern":
        a = _write(tmp_path / "a.mtx", "%%MatrixMarket matrix coordinate pattern general\n2 2 2\n1 1\n2 2\n")
    elif case == "complex":
        a = _write(tmp_path / "a.mtx", "%%MatrixMarket matrix coordinate complex general\n1 1 1\n1 1 1.0 2.0\n")
    elif case == "not_mm":
        a = _write(tmp_path / "a.mtx", "1 2 3\n4 5 6\n")
    elif case == "extension":
        a = _write(tmp_path / "a.csv", "1,0\n0,1\n")
    elif case == "scalar_a":
        np.save(a := tmp_path / "a.npy", np.array(2.0))
    elif case == "scalar_b":
        np.save(b := tmp_path / "b.npy", np.array(1.0))
    out = tmp_path / "x.mtx"
    assert_one_line_error(invoke(a, b, "-o", out), *words)
    assert not out.exists()


def test_output_must_not_overwrite_an_input(tmp_path):
    np.save(a := tmp_path / "a.npy", np.eye(2))
    np.save(b := tmp_path / "b.npy", np.ones(2))
    assert_one_line_error(invoke(a, b, "-o", b), "overwrite")
    assert_one_line_error(invoke(a, b, "-o", tmp_path / "x.txt"), ".mtx or .npy")
    assert_one_line_error(invoke(a, b, "-o", tmp_path / "no" / "x.npy"), "does not exist")
    assert np.array_equal(np.load(b), np.ones(2))


def test_bad_option_is_bad_input(tmp_path):
    np.save(a := tmp_path / "a.npy", np.eye(2))
    np.save(b := tmp_path / "b.npy", np.ones(2))
    assert_one_line_error(invoke(a, b, "-o", tmp_path / "x.npy", "--precision", "quad"), "precision")
    assert_one_line_error(invoke(a, b, "-o", tmp_path / "x.npy", "--precision", "tf32"), "tf32")


def test_sparse_matrix_whose_row_sum_overflows_is_bad_input(tmp_path):
    """Refused as the dense path refuses it: one line, no warning from scipy's sum, nothing written."""
    a = _write(tmp_path / "a.mtx", "%%MatrixMarket matrix coordinate real general\n2 2 3\n"
                                   "1 1 1e308\n1 2 1e308\n2 2 1.0\n")
    np.save(b := tmp_path / "b.npy", np.ones(2))
    out = tmp_path / "x.npy"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = invoke(a, b, "-o", out)
    assert_one_line_error(res, "row's sum overflows", str(a))
    assert not caught, [str(w.message) for w in caught]
    assert not out.exists()


def test_right_hand_side_near_the_top_of_double_range(tmp_path):
    np.save(a := tmp_path / "a.npy", np.eye(3))
    np.save(b := tmp_path / "b.npy", np.array([1e308, 1.0, 1.0]))
    out = tmp_path / "x.npy"
    res = invoke(a, b, "-o", out, "--json")
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert json.loads(res.stdout)["success"] is True
    assert np.array_equal(np.load(out), [1e308, 1.0, 1.0])


def test_sixteen_bit_on_a_sparse_matrix_names_the_file_and_the_way_out(tmp_path):
    a = _write(tmp_path / "a.mtx", "%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1 2.0\n2 2 4.0\n")
    np.save(b := tmp_path / "b.npy", np.ones(2))
    out = tmp_path / "x.npy"
    assert_one_line_error(invoke(a, b, "-o", out, "--precision", "half"), str(a), "--dense")
    assert not out.exists()
    res = invoke(a, b, "-o", out, "--precision", "half", "--dense")
    assert res.exit_code == 0, res.stderr
    assert np.array_equal(np.load(out), [0.5, 0.25])
