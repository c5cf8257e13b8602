"""``refinekit fit`` end to end: results, the JSON contract, free flags, and bad input (exit 2, one line,
nothing written)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from refinekit.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def misra(tmp_path) -> Path:
    """NIST's Misra1a (bundled with refinekit) as a CSV file (y, x)."""
    from refinekit.fit import read_nist
    from refinekit.fit.demo import nist_directory

    problem = read_nist(nist_directory() / "Misra1a.dat")
    path = tmp_path / "misra1a.csv"
    rows = ["y,x"] + [f"{y!r},{x!r}" for y, x in zip(problem.data["y"].astype(float).tolist(),
                                                      problem.data["x"].astype(float).tolist(), strict=True)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_the_issue_example_certifies_misra1a(misra):
    res = invoke("fit", misra, "--model", "b1*(1-exp(-b2*x))", "--param", "b1=500", "--param", "b2=1e-4",
                 "--free-fraction", "0", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    for key in ("status", "success", "message", "n_cycles", "best_cycle", "alarms", "history", "parameters"):
        assert key in data
    assert data["status"] == "converged" and data["success"] is True
    assert data["parameters"]["b1"]["value"] == pytest.approx(2.3894212918e02, rel=1e-7)
    assert data["parameters"]["b2"]["value"] == pytest.approx(5.5015643181e-04, rel=1e-7)
    assert data["parameters"]["b1"]["stderr"] == pytest.approx(2.7070075241e00, rel=1e-6)
    assert data["chisqr"] == pytest.approx(1.2455138894e-01, rel=1e-7)
    assert all({"work", "free", "step", "time"} <= set(h) for h in data["history"])


def test_text_output_plot_and_free_flags(misra, tmp_path):
    flags, plot = tmp_path / "flags.txt", tmp_path / "fit.png"
    res = invoke("fit", misra, "-m", "b1*(1-exp(-b2*x))", "-p", "b1=500", "-p", "b2=1e-4",
                 "--free-fraction", "0.2", "--free-flags", flags, "--plot", plot)
    assert res.exit_code == 0, res.stderr
    assert "free flags  : made" in res.stdout and "b1" in res.stdout and "+/-" in res.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = flags.read_text()
    again = invoke("fit", misra, "-m", "b1*(1-exp(-b2*x))", "-p", "b1=500", "-p", "b2=1e-4",
                   "--free-fraction", "0.2", "--seed", "99", "--free-flags", flags, "--json")
    data = json.loads(again.stdout)
    assert data["free_set"]["source"] == "loaded" and flags.read_text() == saved  # never re-picked
    assert data["nfree"] == 3 and data["free"] is not None


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


GOOD = "x,y\n" + "".join(f"{x},{2 * math.exp(-0.5 * x) + 0.01 * math.sin(7 * x):.6f}\n" for x in range(12))


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, [], "no such file"),
        ("", [], "empty CSV file"),
        ("x,y\n", [], "no data rows"),
        ("x,y\n1,2\n3\n", [], "line 3: 1 fields, the header has 2"),
        ("x,y\n1,2\n3,abc\n", [], "line 3, column 'y': not a number: 'abc'"),
        ("x,y\n1,2\n3,nan\n", [], "non-finite value 'nan'"),
        ("x,y\n1,2\n3,inf\n", [], "non-finite value 'inf'"),
        (b"\x00\x01\x02binary", [], "binary content"),
        ("1,2\n3,4\n", [], "header of column names"),
        ("x,x\n1,2\n", [], "duplicate column"),
        (GOOD, ["--y", "z"], "no response column 'z'"),
        (GOOD, ["-m", "a*exp(-k*x)", "-p", "a=1"], "no starting value for parameter(s) k"),
        (GOOD, ["-m", "a*exp(-k*x)", "-p", "a=1", "-p", "k=1", "-p", "q=2"], "not in the model: q"),
        (GOOD, ["-m", "a*exp(-k*x", "-p", "a=1", "-p", "k=1"], "does not parse"),
        (GOOD, ["-m", "a*gamma(k*x)", "-p", "a=1", "-p", "k=1"], "unknown function 'gamma'"),
        (GOOD, ["-m", "a*exp(-k*x)", "-p", "a=1", "-p", "k=1,min=2"], "outside its bounds"),
        (GOOD, ["-m", "a*exp(-k*x)", "-p", "a=1", "-p", "k=1,min=2,max=0"], "impossible bounds"),
        (GOOD, ["-m", "a*exp(-k*x)", "-p", "a=1", "-p", "k=zz"], "not a number"),
        (GOOD, ["-m", "a*exp(-k*x)", "-p", "a=1", "-p", "k=1", "--free-fraction", "1.5"], "free-fraction"),
        (GOOD, ["-m", "a*exp(-k*x)", "-p", "a=1", "-p", "k=1", "--plot", "out.jpg"], "must be a .png"),
        (GOOD, ["-m", "a*exp(-k*x)", "-p", "a=1", "-p", "k=1", "--plot", "nodir/out.png"], "does not exist"),
        (GOOD, ["-m", "a*exp(k*x)", "-p", "a=1", "-p", "k=1e4"], "not finite at the starting values"),
        (GOOD, ["-m", "a*exp(-k*x)", "-p", "a=1", "-p", "x=1"], "not in the model: x|data column"),
        ("x,y\n1,1_000\n2,3\n3,4\n", [], "not a number: '1_000'"),
        (GOOD, ["--sigma", "y"], "--sigma and --y name the same column"),
        ("x,y,s\n1,2,0.1\n2,3,0\n3,4,0.1\n", ["--sigma", "s"], "data.csv: sigma column 's'"),
        (GOOD, ["--seed", "-1"], "--seed must be >= 0"),
        (GOOD, ["-m", "a*exp(-k*x)", "-p", "a=1", "-p", "k=1,prior=1:0.1", "--prior-weight", "inf"],
         "--prior-weight must be a finite number"),
        (GOOD.replace("x,y", "e,y"), ["-m", "a*exp(-k*e)", "-p", "a=1", "-p", "k=1"],
         "data.csv: data column(s) e share a name with a constant"),
        (GOOD, ["-m", "a*exp(-k*x)", "-p", "a=1", "-p", "k=1", "--free-flags", "f.png", "--plot", "f.png"],
         "--plot and --free-flags name the same file"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, monkeypatch, content, args, message):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data.csv" if content is None else write(tmp_path, "data.csv", content)
    before = sorted(p.name for p in tmp_path.iterdir())
    if not any(a in ("-m", "--model") for a in args):
        args = ["-m", "a*exp(-k*x)", "-p", "a=1", "-p", "k=1", *args]
    res = invoke("fit", data, *args)
    assert res.exit_code == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refinekit: error:"), res.stderr
    assert message.split("|")[0] in lines[0] or any(m in lines[0] for m in message.split("|")), lines[0]
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_output_never_overwrites_an_input(tmp_path):
    data = write(tmp_path, "data.png", GOOD)  # a CSV with an unlucky name
    res = invoke("fit", data, "-m", "a*exp(-k*x)", "-p", "a=1", "-p", "k=1", "--plot", data)
    assert res.exit_code == 2 and "would overwrite the input" in res.stderr
    assert data.read_text() == GOOD


def test_mismatched_free_flags_are_refused(tmp_path):
    data = write(tmp_path, "data.csv", GOOD)
    flags = tmp_path / "flags.txt"
    from refinekit.core import HoldOut

    HoldOut(0.2).flags(30).save(flags)
    res = invoke("fit", data, "-m", "a*exp(-k*x)", "-p", "a=1", "-p", "k=1", "--free-flags", flags)
    assert res.exit_code == 2 and "free flags are for 30 observations but the data have 12" in res.stderr


@pytest.mark.parametrize("body", ["n=12 free_value=0 junk\n" + "1\n" * 12,
                                  "n=12 free_value=0\n" + "1\n" * 11 + "9" * 30 + "\n"])
def test_corrupt_free_flags_are_refused(tmp_path, body):
    data = write(tmp_path, "data.csv", GOOD)
    flags = write(tmp_path, "flags.txt", "# refinekit free flags: " + body)
    res = invoke("fit", data, "-m", "a*exp(-k*x)", "-p", "a=1", "-p", "k=1", "--free-flags", flags)
    assert res.exit_code == 2 and res.stderr.strip() == f"refinekit: error: {flags}: corrupt free-flag file"


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_an_overflow_at_the_start_is_the_one_line_error_and_no_warning(tmp_path):
    """exp(60*x) overflows when its residuals are squared: numpy's warnings must not reach stderr
    beside the error (here they would fail the test)."""
    data = write(tmp_path, "data.csv", GOOD)
    res = invoke("fit", data, "-m", "a*exp(-k*x)", "-p", "a=1", "-p", "k=-60")
    assert res.exit_code == 2 and "not finite at the starting values" in res.stderr


def test_version_and_usage_errors():
    res = invoke("--version")
    assert res.exit_code == 0 and res.stdout.startswith("refinekit ")
    assert invoke("fit", "x.csv").exit_code == 2  # --model missing: a usage error
    assert invoke("nonsense").exit_code == 2


def test_exit_code_says_whether_the_result_is_usable():
    from refinekit.cli.common import exit_code
    from refinekit.core import RefinementResult, Status

    def result(status):
        return RefinementResult(x=np.zeros(1), status=status, message="", n_cycles=0, history=[], best_cycle=0)

    assert [exit_code(result(s)) for s in Status] == [0, 0, 0, 0, 0, 1, 1]
