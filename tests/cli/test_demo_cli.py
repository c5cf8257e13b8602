"""``refinekit demo``: one self-contained HTML report; bad options are refused."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from refinekit.cli import app

runner = CliRunner()


def test_demo_fit_section_writes_a_self_contained_report(tmp_path):
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--only", "fit", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["sections"]["fit"]["ok"] is True
    assert summary["sections"]["fit"]["nist_certified"] == 54
    html = (out / "report.html").read_text()
    assert "NIST StRD" in html and "overfitting" in html and html.count("data:image/png;base64,") >= 2
    assert "<script" not in html and 'src="http' not in html  # nothing fetched from elsewhere
    assert json.loads((out / "summary.json").read_text())["fit"]["ok"] is True


def test_demo_refuses_unknown_sections_and_a_file_as_folder(tmp_path):
    res = runner.invoke(app, ["demo", "--only", "nonsense", "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "unknown application" in res.stderr
    afile = tmp_path / "file"
    afile.write_text("x")
    res = runner.invoke(app, ["demo", "--out", str(afile)])
    assert res.exit_code == 2 and "not a folder" in res.stderr and afile.read_text() == "x"
