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


def _model_with_atom_field(bundled, tmp_path, start, end, value):
    """5wkd with columns ``start:end`` of every atom record set to ``value``."""
    lines = (bundled / "5wkd.pdb").read_text().splitlines(keepends=True)
    path = tmp_path / "edited.pdb"
    path.write_text("".join(line[:start] + value.rjust(end - start) + line[end:]
                            if line.startswith(("ATOM", "HETATM")) else line for line in lines))
    return path


@pytest.mark.parametrize(("field", "value", "message"), [
    ((30, 38), "nan", "non-finite coordinate"), ((60, 66), "nan", "non-finite B-factor"),
    ((54, 60), "nan", "non-finite occupancy"), ((60, 66), "-50.00", "negative B-factor"),
    ((54, 60), "-1.00", "negative occupancy"), ((54, 60), "0.00", "zero occupancy"),
])
def test_models_with_non_finite_or_negative_atom_values_are_refused(bundled, tmp_path, field, value, message):
    # a RuntimeError traceback (singular scale fit) before, or R-factors of negative scatterers
    model = _model_with_atom_field(bundled, tmp_path, *field, value)
    out = tmp_path / "out"
    for verb in (["refine", "-o", str(out), "--weight", "2"], ["rfactors"]):
        line = _one_line_error(runner.invoke(app, ["xtal", verb[0], str(model), str(bundled / "r5wkdsf.ent"),
                                                   *verb[1:]]))
        assert message in line and "edited.pdb" in line, line
    assert not out.exists()


def test_a_model_millions_of_cells_from_the_origin_is_refused(bundled, tmp_path):
    from refinekit.core import InputError
    from refinekit.xtal import prepare_refinement

    # refinement never ended before (riding hydrogens landed far from the atoms, and the contact search
    # visited every lattice translation between them)
    model = _model_with_atom_field(bundled, tmp_path, 30, 38, "99999999")
    with pytest.raises(InputError, match="unit cells from the origin"):
        prepare_refinement(model, bundled / "r5wkdsf.ent")
    assert "from the origin" in _one_line_error(runner.invoke(app, ["xtal", "rfactors", str(model),
                                                                    str(bundled / "r5wkdsf.ent")]))


def test_a_model_of_hydrogens_only_is_refused_by_refine(xtal_data, monlib, tmp_path):
    st = gemmi.read_structure(str(xtal_data / "3zt9" / "3zt9.cif.gz"))
    st.remove_ligands_and_waters()
    for chain in st[0]:
        for residue in chain:
            for i in reversed(range(len(residue))):
                if not residue[i].is_hydrogen():
                    del residue[i]
    st.remove_empty_chains()
    model = tmp_path / "h_only.pdb"
    model.write_text(st.make_pdb_string())
    out = tmp_path / "out"
    line = _one_line_error(runner.invoke(app, ["xtal", "refine", str(model), str(xtal_data / "3zt9" / "r3zt9sf.ent.gz"),
                                               "-o", str(out), "--monlib", str(monlib), "--weight", "2"]))
    assert "only hydrogen atoms" in line, line          # a RuntimeError traceback before
    assert not out.exists()


def _mtz_with_column(bundled, tmp_path, label, change):
    mtz = gemmi.CifToMtz().convert_block_to_mtz(
        gemmi.as_refln_blocks(gemmi.cif.read(str(bundled / "r5wkdsf.ent")))[0])
    table = np.array(mtz.array)
    column = mtz.column_with_label(label).idx
    table[:, column] = change(table[:, column])
    mtz.set_data(table)
    path = tmp_path / f"edited_{label}.mtz"
    mtz.write_to_file(str(path))
    return path


@pytest.mark.parametrize(("label", "change", "message"), [
    ("FP", lambda x: np.where(np.arange(x.size) % 2 == 0, np.inf, x), "203 reflections have infinite values"),
    ("SIGFP", lambda x: np.where(np.arange(x.size) % 3 == 0, -np.inf, x), "infinite values in columns FP/SIGFP"),
    ("FP", np.zeros_like, "every reflection has the same FP (0)"),
    ("FreeR_flag", lambda x: np.where(np.arange(x.size) % 2 == 0, np.inf, x), "not integers (e.g. inf)"),
    ("FreeR_flag", lambda x: x + 0.5, "not integers (e.g. "),
    ("FreeR_flag", lambda x: np.full_like(x, 1e30), "not integers (e.g. 1e+30)"),
    ("FreeR_flag", np.zeros_like, "same free flag (0)"),
])
def test_corrupt_data_columns_are_refused_with_the_file_named(bundled, tmp_path, label, change, message):
    # before: infinite values and infinite or fractional flags were dropped or truncated silently, all-zero
    # amplitudes gave R = inf, and the free-flag errors did not name the file
    data = _mtz_with_column(bundled, tmp_path, label, change)
    for line in _refused_by_both_verbs(bundled, tmp_path, data=data):
        assert message in line and data.name in line, line


def test_data_without_a_unit_cell_are_refused(bundled, tmp_path):
    # a model without CRYST1 takes the data's cell: a RuntimeError traceback from the grid before
    text = (bundled / "r5wkdsf.ent").read_text()
    data = tmp_path / "nocell-sf.cif"
    data.write_text("".join(line for line in text.splitlines(keepends=True) if not line.startswith("_cell.")))
    model = tmp_path / "nocryst.pdb"
    model.write_text("".join(line for line in (bundled / "5wkd.pdb").read_text().splitlines(keepends=True)
                             if not line.startswith("CRYST1")))
    line = _one_line_error(runner.invoke(app, ["xtal", "rfactors", str(model), str(data)]))
    assert "nocell-sf.cif: the reflection file has no valid unit cell" in line, line


def test_negative_intensities_are_refused_with_the_file_named(xtal_data, tmp_path):
    mtz = gemmi.read_mtz_file(str(xtal_data / "1l2h" / "1l2h.mtz.gz"))
    table = np.array(mtz.array)
    column = mtz.column_with_label("IMEAN").idx
    table[:, column] = -np.abs(table[:, column]) - 1.0
    mtz.set_data(table)
    data = tmp_path / "negative.mtz"
    mtz.write_to_file(str(data))
    line = _one_line_error(runner.invoke(app, ["xtal", "rfactors", str(xtal_data / "1l2h" / "1l2h.cif.gz"),
                                               str(data)]))
    assert "negative.mtz: the intensities average to zero or less" in line, line


def test_a_plot_that_fails_to_render_leaves_no_file(bundled, tmp_path, monkeypatch):
    import matplotlib.figure

    from refinekit.xtal import prepare_refinement
    from refinekit.xtal.api import write_plot

    result = prepare_refinement(bundled / "5wkd.pdb", bundled / "r5wkdsf.ent").run(cycles=0, weight=2.0)

    def half_written(self, target, *args, **kwargs):
        if hasattr(target, "write"):
            target.write(b"\x89PNG partial")
        else:
            with open(target, "wb") as fh:
                fh.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_written)
    with pytest.raises(OSError):
        write_plot(result, tmp_path / "plot.png")
    assert list(tmp_path.iterdir()) == []        # a plot.png.tmp.png was left before


def test_a_full_disk_on_a_later_output_leaves_no_output_and_no_folder(bundled, tmp_path,
                                                                      full_disk_on_third_fsync):
    """The five outputs are all or nothing: a disk that filled up on the MTZ (the third file) left the
    mmCIF and the PDB of a failed run behind, in the folder the run had made."""
    calls = full_disk_on_third_fsync
    out = tmp_path / "out"
    res = runner.invoke(app, ["xtal", "refine", str(bundled / "5wkd.pdb"), str(bundled / "r5wkdsf.ent"),
                              "-o", str(out), "--cycles", "0", "--weight", "2"])
    assert res.exit_code == 1 and "no space left on device" in res.stderr, res.stderr
    assert len(calls) >= 3 and not out.exists()
    assert sorted(tmp_path.iterdir()) == []


def test_a_symlinked_output_naming_an_input_is_refused(bundled, tmp_path):
    model = tmp_path / "5wkd.pdb"
    model.write_bytes((bundled / "5wkd.pdb").read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    (out / "5wkd_refined.pdb").symlink_to(model)
    before = model.stat()
    line = _one_line_error(runner.invoke(app, ["xtal", "refine", str(model), str(bundled / "r5wkdsf.ent"),
                                               "-o", str(out), "--weight", "2"]))
    assert "overwrite the input" in line and model.stat().st_mtime_ns == before.st_mtime_ns
    assert [p.name for p in out.iterdir()] == ["5wkd_refined.pdb"]
