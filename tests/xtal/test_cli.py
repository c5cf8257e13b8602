"""``refinekit xtal`` end to end on the bundled entry, and bad input: exit code 2, one line, nothing
written."""

from __future__ import annotations

import json

import gemmi
import numpy as np
import pytest
from typer.testing import CliRunner

from refinekit.cli import app
from refinekit.xtal.io import read_reflections
from refinekit.xtal.rfactors import checked_twin_law

runner = CliRunner()


def _one_line_error(res) -> str:
    assert res.exit_code == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refinekit: error: "), res.stderr
    return lines[0]


def test_rfactors_json(bundled):
    res = runner.invoke(app, ["xtal", "rfactors", str(bundled / "5wkd.pdb"), str(bundled / "r5wkdsf.ent"),
                              "--json"])
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert 0.15 < out["r_work"] < 0.23 and out["n_free"] == 22 and out["free_set"]["label"] == "FreeR_flag"


def test_refine_writes_every_output_and_keeps_the_free_flags_bit_exact(bundled, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["xtal", "refine", str(bundled / "5wkd.pdb"), str(bundled / "r5wkdsf.ent"),
                              "-o", str(out), "--cycles", "3", "--weight", "2", "--json"])
    assert res.exit_code == 0, res.stderr
    result = json.loads(res.stdout)
    for key in ("status", "kept_cycle", "best_cycle", "alarms", "history", "r_work", "r_free", "bond_rmsd",
                "angle_rmsd", "xray_weight", "free_set", "outputs"):
        assert key in result, key
    assert len(result["history"]) == 4 and all("r_free" in h and "bond_rmsz" in h for h in result["history"])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["5wkd_refined.cif", "5wkd_refined.json", "5wkd_refined.mtz", "5wkd_refined.pdb",
                     "5wkd_refined.png"]
    refined = gemmi.read_structure(str(out / "5wkd_refined.cif"))
    assert refined[0].count_atom_sites() > 80 and refined.cell.a == pytest.approx(50.347)
    assert any(a.atom.is_hydrogen() for a in refined[0].all())             # riding hydrogens written
    mtz = gemmi.read_mtz_file(str(out / "5wkd_refined.mtz"))
    doc = gemmi.cif.read(str(bundled / "r5wkdsf.ent"))
    source = gemmi.CifToMtz().convert_block_to_mtz(gemmi.as_refln_blocks(doc)[0])
    source.ensure_asu()
    flags_in = source.column_with_label("FreeR_flag").array
    flags_out = mtz.column_with_label("FreeR_flag").array
    assert np.array_equal(flags_in.view(np.uint32), flags_out.view(np.uint32))
    assert {"FWT", "PHWT", "DELFWT", "PHDELWT", "FC", "PHIC", "FOM"} <= {c.label for c in mtz.columns}
    fwt = mtz.column_with_label("FWT").array
    measured = np.isfinite(source.column_with_label("FP").array)
    assert np.all(np.isfinite(fwt[measured])) and np.nanmean(fwt) > 0


def test_hydrogens_can_be_stripped_from_the_output(bundled, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["xtal", "refine", str(bundled / "5wkd.pdb"), str(bundled / "r5wkdsf.ent"),
                              "-o", str(out), "--cycles", "1", "--weight", "2", "--strip-hydrogens"])
    assert res.exit_code == 0, res.stderr
    refined = gemmi.read_structure(str(out / "5wkd_refined.pdb"))
    assert not any(a.atom.is_hydrogen() for a in refined[0].all())


def _bad_model(bundled, tmp_path, kind):
    text = (bundled / "5wkd.pdb").read_text()
    path = tmp_path / f"{kind}.pdb"
    if kind == "garbage":
        path.write_bytes(b"\x00\x01 not a model \xff")
    elif kind == "truncated":
        cut = text.index("ATOM      5")
        path.write_text(text[: cut + 40])
    elif kind == "no_atoms":
        path.write_text("".join(line + "\n" for line in text.splitlines() if line.startswith("CRYST1")))
    elif kind == "cell":
        path.write_text(text.replace("CRYST1   50.347", "CRYST1   57.347"))
    elif kind == "spacegroup":
        path.write_text(text.replace("C 1 2 1", "P 1 2 1"))
    elif kind == "no_dictionary":
        path.write_text(text.replace("ASN A 302", "XQZ A 302"))
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("garbage", "cannot read the model"), ("truncated", "truncated"), ("no_atoms", "no atoms"),
    ("cell", "unit cell"), ("spacegroup", "space group"), ("no_dictionary", "XQZ"),
])
def test_bad_models_are_refused_with_one_line_and_nothing_written(bundled, tmp_path, kind, message):
    model = _bad_model(bundled, tmp_path, kind)
    out = tmp_path / "out"
    for verb in (["refine", "-o", str(out), "--weight", "2"], ["rfactors"]):
        args = ["xtal", verb[0], str(model), str(bundled / "r5wkdsf.ent"), *verb[1:]]
        if kind == "no_dictionary" and verb[0] == "rfactors":
            continue                           # R-factors need no dictionaries
        line = _one_line_error(runner.invoke(app, args))
        assert message in line, line
    assert not out.exists()


def test_bad_reflection_files_are_refused(bundled, tmp_path):
    truncated = tmp_path / "cut.mtz"
    doc = gemmi.cif.read(str(bundled / "r5wkdsf.ent"))
    mtz = gemmi.CifToMtz().convert_block_to_mtz(gemmi.as_refln_blocks(doc)[0])
    mtz.write_to_file(str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:3000])
    no_amplitudes = tmp_path / "calc.mtz"
    mtz.remove_column(mtz.column_with_label("SIGFP").idx)
    mtz.remove_column(mtz.column_with_label("FP").idx)
    mtz.write_to_file(str(no_amplitudes))
    cases = [(truncated, "cannot read the MTZ"), (no_amplitudes, "no amplitude"),
             (tmp_path / "missing.mtz", "no such file")]
    for data, message in cases:
        out = tmp_path / "out"
        line = _one_line_error(runner.invoke(app, ["xtal", "refine", str(bundled / "5wkd.pdb"), str(data),
                                                   "-o", str(out)]))
        assert message in line, line
        assert not out.exists()


def test_outputs_never_replace_an_input(bundled, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    data = out / "5wkd_refined.mtz"            # just what the refined MTZ would be called
    doc = gemmi.cif.read(str(bundled / "r5wkdsf.ent"))
    gemmi.CifToMtz().convert_block_to_mtz(gemmi.as_refln_blocks(doc)[0]).write_to_file(str(data))
    before = data.read_bytes()
    line = _one_line_error(runner.invoke(app, ["xtal", "refine", str(bundled / "5wkd.pdb"), str(data),
                                               "-o", str(out), "--weight", "2"]))
    assert "overwrite" in line and data.read_bytes() == before and sorted(out.iterdir()) == [data]


def test_bad_options_are_refused(bundled, tmp_path):
    base = ["xtal", "refine", str(bundled / "5wkd.pdb"), str(bundled / "r5wkdsf.ent"), "-o", str(tmp_path / "o")]
    assert "--target" in _one_line_error(runner.invoke(app, [*base, "--target", "xx"]))
    assert "--weight" in _one_line_error(runner.invoke(app, [*base, "--weight", "-1"]))
    assert "twin law" in _one_line_error(runner.invoke(app, [*base, "--twin", "nonsense"]))


def test_a_free_set_made_here_is_written_to_the_output_mtz(bundled, tmp_path):
    data = _no_flags_mtz(bundled, tmp_path)
    out = tmp_path / "out"
    res = runner.invoke(app, ["xtal", "refine", str(bundled / "5wkd.pdb"), str(data), "-o", str(out),
                              "--cycles", "1", "--weight", "2", "--seed", "3", "--json"])
    assert res.exit_code == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["free_set"]["source"] == "made"
    assert any(a["kind"] == "free_set_made" for a in result["alarms"])
    flags = gemmi.read_mtz_file(str(out / "5wkd_refined.mtz")).column_with_label("FreeR_flag").array
    assert set(np.unique(flags).astype(int)) == set(range(20))          # CCP4 convention, 0 free
    assert abs(np.mean(flags == 0) - 0.05) < 0.03


def _no_flags_mtz(bundled, tmp_path):
    doc = gemmi.cif.read(str(bundled / "r5wkdsf.ent"))
    mtz = gemmi.CifToMtz().convert_block_to_mtz(gemmi.as_refln_blocks(doc)[0])
    mtz.remove_column(mtz.column_with_label("FreeR_flag").idx)
    path = tmp_path / "noflags.mtz"
    mtz.write_to_file(str(path))
    return path


def _refused_by_both_verbs(bundled, tmp_path, *options, data=None):
    """The one error line of ``rfactors`` and of ``refine`` (which writes nothing) with ``options``."""
    out = tmp_path / "out"
    data = data or bundled / "r5wkdsf.ent"
    lines = []
    for verb in (["refine", "-o", str(out), "--weight", "2"], ["rfactors"]):
        args = ["xtal", verb[0], str(bundled / "5wkd.pdb"), str(data), *options, *verb[1:]]
        lines.append(_one_line_error(runner.invoke(app, args)))
    assert not out.exists()
    return lines


@pytest.mark.parametrize("law", ["k,h,l", "h,k,l", "-h,k,-l"])
def test_a_twin_law_the_lattice_does_not_have_is_refused(bundled, tmp_path, law):
    # C2 has no twin laws at all (an IndexError traceback from the structure factors before)
    for line in _refused_by_both_verbs(bundled, tmp_path, f"--twin={law}"):
        assert f"{law} is not a twin law" in line and "none" in line, line


def test_a_twin_law_of_another_lattice_is_refused_on_1l2h(xtal_data, tmp_path):
    # P43 with a = b: -h,k,-l is its twin law; k,h,l (improper) and the identity are not
    model, data = xtal_data / "1l2h" / "1l2h.cif.gz", xtal_data / "1l2h" / "1l2h.mtz.gz"
    for law in ("k,h,l", "h,k,l"):
        line = _one_line_error(runner.invoke(app, ["xtal", "rfactors", str(model), str(data), f"--twin={law}"]))
        assert f"{law} is not a twin law" in line and "-h,k,-l" in line, line
    reflections = read_reflections(data)
    for law in ("-h,k,-l", "h,-k,-l", "-x,y,-z"):      # the law, however it is written, is accepted
        checked_twin_law(law, reflections)


def test_a_free_label_naming_a_data_column_is_refused(bundled, tmp_path):
    for line in _refused_by_both_verbs(bundled, tmp_path, "--free-label", "FP"):
        assert "column FP" in line and "type is F" in line and "free-flag" in line, line


@pytest.mark.parametrize("weight", ["inf", "1e999", "nan", "0"])
def test_a_weight_that_is_not_finite_and_positive_is_refused(bundled, tmp_path, weight):
    out = tmp_path / "out"
    line = _one_line_error(runner.invoke(app, ["xtal", "refine", str(bundled / "5wkd.pdb"),
                                               str(bundled / "r5wkdsf.ent"), "-o", str(out), "--weight", weight]))
    assert "--weight" in line and weight in line, line
    assert not out.exists()


def test_a_free_fraction_out_of_range_is_refused_by_the_cli_and_the_library(bundled, tmp_path):
    from refinekit.core import InputError
    from refinekit.xtal import prepare_refinement

    data = _no_flags_mtz(bundled, tmp_path)
    out = tmp_path / "out"
    for fraction in ("0", "0.5", "-0.1"):
        line = _one_line_error(runner.invoke(app, ["xtal", "refine", str(bundled / "5wkd.pdb"), str(data),
                                                   "-o", str(out), "--free-fraction", fraction]))
        assert "--free-fraction" in line, line
    assert not out.exists()
    for fraction in (0, 0.5, float("nan")):        # ZeroDivisionError for 0 before
        with pytest.raises(InputError, match="free fraction"):
            prepare_refinement(bundled / "5wkd.pdb", data, free_fraction=fraction)
