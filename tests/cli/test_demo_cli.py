"""``refinekit demo``: one self-contained HTML report; bad options are refused."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refinekit.cli import app
from refinekit.cli import demo as demo_cli
from refinekit.report.html import Section, pre

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


# The tests below stand fake applications in for the real demos (seconds instead of half a minute).

class _Checked(HTMLParser):
    """Counts the html/head/body tags and notes any tag closed out of order or left open."""

    VOID = frozenset({"br", "img", "meta", "hr", "input", "link", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.bad: list[str] = []
        self.counts: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.bad.append(tag)


def _well_formed(html: str) -> None:
    parser = _Checked()
    parser.feed(html)
    parser.close()
    assert parser.bad == [] and parser.open == []
    assert [parser.counts.get(t) for t in ("html", "head", "body")] == [1, 1, 1]


def _fake(monkeypatch, name: str, section) -> list[Path]:
    """Stand ``section`` in for refinekit.<name>.demo; returns the workdirs it was called with."""
    calls: list[Path] = []

    def run(workdir: Path) -> Section:
        calls.append(workdir)
        return section(workdir)

    monkeypatch.setitem(sys.modules, f"refinekit.{name}.demo", types.SimpleNamespace(section=run))
    return calls


def _ok(workdir: Path) -> Section:
    (workdir / "out.txt").write_text("new")
    return Section("fit & <friends>", "fine", pre("x < y"), figures={"answer": 42})


def test_demo_reports_the_other_sections_when_one_fails(tmp_path, monkeypatch):
    _fake(monkeypatch, "fit", _ok)

    def broken(workdir: Path) -> Section:
        raise RuntimeError('boom <b> & "quoted"')

    _fake(monkeypatch, "linalg", broken)
    out = tmp_path / "demo"
    (out / "fit").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")  # unrelated files stay; older outputs are replaced
    (out / "report.html").write_text("old report")
    res = runner.invoke(app, ["demo", "--only", "fit", "--only", "linalg", "--out", str(out), "--json"])
    assert res.exit_code == 1 and "linalg failed" in res.stderr and "RuntimeError" in res.stderr
    payload = json.loads(res.stdout)
    assert payload["sections"]["fit"]["ok"] is True and payload["sections"]["linalg"]["ok"] is False
    summary = json.loads((out / "summary.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert summary == payload["sections"]
    html = (out / "report.html").read_text()
    _well_formed(html)
    assert "fit &amp; &lt;friends&gt;" in html and "x &lt; y" in html
    assert "boom &lt;b&gt; &amp; &quot;quoted&quot;" in html and "<b>" not in html
    assert (out / "notes.txt").read_text() == "mine" and (out / "fit" / "out.txt").read_text() == "new"
    assert sorted(p.name for p in out.iterdir()) == ["fit", "linalg", "notes.txt", "report.html", "summary.json"]


def test_demo_figures_do_not_replace_the_commands_own_keys(tmp_path, monkeypatch):
    _fake(monkeypatch, "fit", lambda w: Section("t", "s", "", figures={"seconds": 99.0, "ok": False, "x": 1}))
    res = runner.invoke(app, ["demo", "--only", "fit", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.stderr
    fit = json.loads(res.stdout)["sections"]["fit"]
    assert fit["ok"] is True and fit["seconds"] < 99 and fit["x"] == 1  # cryoem's "seconds" replaced it


def test_demo_a_missing_dependency_is_in_the_report_too(tmp_path, monkeypatch):
    _fake(monkeypatch, "fit", _ok)
    real = importlib.import_module

    def import_module(name: str, *args):
        if name == "refinekit.xtal.demo":
            raise ModuleNotFoundError("No module named 'gemmi'", name="gemmi")
        return real(name, *args)

    monkeypatch.setattr(demo_cli, "importlib", types.SimpleNamespace(import_module=import_module))
    res = runner.invoke(app, ["demo", "--only", "fit", "--only", "xtal", "--out", str(tmp_path)])
    assert res.exit_code == 1
    assert "skipped" in json.loads((tmp_path / "summary.json").read_text())["xtal"]
    html = (tmp_path / "report.html").read_text()
    assert "needs gemmi" in html


def test_demo_refuses_bad_output_places_before_running_anything(tmp_path, monkeypatch):
    calls = _fake(monkeypatch, "fit", _ok)
    _fake(monkeypatch, "linalg", _ok)
    out = tmp_path / "demo"
    out.mkdir()
    (out / "linalg").write_text("a file where the linalg outputs go")
    res = runner.invoke(app, ["demo", "--only", "fit", "--only", "linalg", "--out", str(out)])
    assert res.exit_code == 2 and "not a folder" in res.stderr and calls == []
    assert sorted(p.name for p in out.iterdir()) == ["linalg"]
    (out / "linalg").unlink()
    # a read-only folder (chmod does not stop root, who may run the tests)
    monkeypatch.setattr(demo_cli, "os", types.SimpleNamespace(access=lambda *a: False, W_OK=2, X_OK=1))
    res = runner.invoke(app, ["demo", "--only", "fit", "--out", str(out)])
    assert res.exit_code == 2 and "not writable" in res.stderr and calls == []


def test_demo_interrupted_exits_130_without_a_report(tmp_path, monkeypatch):
    def interrupted(workdir: Path) -> Section:
        raise KeyboardInterrupt

    _fake(monkeypatch, "fit", _ok)
    _fake(monkeypatch, "linalg", interrupted)
    res = runner.invoke(app, ["demo", "--only", "fit", "--only", "linalg", "--out", str(tmp_path)])
    assert res.exit_code == 130 and "interrupted" in res.stderr
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "summary.json").exists()
    assert not list(tmp_path.glob(".*"))  # no staged files left behind


def test_python_m_refinekit_and_a_quick_help_without_heavy_imports():
    res = subprocess.run([sys.executable, "-m", "refinekit", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("refinekit ")
    code = ("import sys\nfrom refinekit.cli import main\nsys.argv = ['refinekit', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'gemmi', 'cv2', 'matplotlib', 'mrcfile', 'scipy') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.splitlines()[-1] == "[]", res.stdout + res.stderr
    importlib.import_module("refinekit.__main__")  # importing it runs nothing (it exited here)
