"""R-factors of deposited models against their own data: the known answers of the field."""

from __future__ import annotations

import gemmi
import pytest

from refinekit.xtal import r_factors


def test_3zt9_reproduces_the_deposited_r_factors(xtal_data):
    # deposited (PHENIX): R_work 0.1520, R_free 0.1886; cctbx on these files: 0.1527 / 0.1870
    rep = r_factors(xtal_data / "3zt9" / "3zt9.cif.gz", xtal_data / "3zt9" / "r3zt9sf.ent.gz")
    assert rep.r_work == pytest.approx(0.153, abs=0.003)
    assert rep.r_free == pytest.approx(0.189, abs=0.003)
    assert rep.n_free == 922 and rep.free_set["free_value"] == 0
    assert "CCP4" in rep.free_set["convention"]
    assert rep.twin.get("law") is None and not rep.warnings


def test_1l2h_is_a_twin_and_its_r_factors_need_the_twin_law(xtal_data):
    # deposited (SHELXL, twinned): 0.154 / 0.193; cctbx with -h,k,-l: 0.1526 / 0.1930; untwinned ~0.25
    rep = r_factors(xtal_data / "1l2h" / "1l2h.cif.gz", xtal_data / "1l2h" / "1l2h.mtz.gz")
    assert rep.twin["law"] == "-h,k,-l"
    assert 0.25 < rep.twin["fraction"] < 0.45
    assert rep.r_work == pytest.approx(0.154, abs=0.005) and rep.r_free == pytest.approx(0.193, abs=0.005)
    assert rep.twin["untwinned_r_work"] > 0.24
    assert rep.data["intensities"] is True          # IMEAN converted by French-Wilson
    plain = r_factors(xtal_data / "1l2h" / "1l2h.cif.gz", xtal_data / "1l2h" / "1l2h.mtz.gz", twin="none")
    assert plain.r_work > 0.24 and plain.twin == {}


def test_the_biased_free_set_of_1sar_is_reported_and_a_fair_one_is_not(xtal_data):
    mtz = xtal_data / "1sar" / "rnase18_Nat_Complexes.mtz"
    biased = r_factors(xtal_data / "1sar" / "1sar.pdb", mtz)
    assert abs(biased.r_free - biased.r_work) < 0.008
    assert any("free set" in w for w in biased.warnings)
    # the perturbed tutorial model is far from refined: R_free about R_work is expected there
    fair = r_factors(xtal_data / "1sar" / "rnase_model.pdb", mtz)
    assert fair.r_work > 0.25 and not any("free set" in w for w in fair.warnings)


def test_the_bundled_entry_and_a_noisy_free_set_warning(bundled):
    rep = r_factors(bundled / "5wkd.pdb", bundled / "r5wkdsf.ent", twin="none")
    # deposited (REFMAC): 0.184 / 0.195 with 22 free reflections
    assert rep.r_work == pytest.approx(0.19, abs=0.015)
    assert rep.n_free == 22 and any("noisy" in w for w in rep.warnings)


def _moved_copy(bundled, tmp_path, shift, *, second_model=False):
    """5WKD with every atom moved by ``shift`` (fractional); with ``second_model`` the moved copy is a
    second model after the deposited one, as in an NMR-style ensemble."""
    st = gemmi.read_structure(str(bundled / "5wkd.pdb"))
    moved = st[0].clone()
    for cra in moved.all():
        cra.atom.pos = st.cell.orthogonalize(st.cell.fractionalize(cra.atom.pos) + gemmi.Fractional(*shift))
    if second_model:
        moved.num = 2
        st.add_model(moved)
    else:
        st[0] = moved
    path = tmp_path / "moved.pdb"
    st.write_pdb(str(path))
    return path


def test_a_model_at_a_wrong_origin_gives_a_bad_r_and_says_so(bundled, tmp_path):
    plain = r_factors(bundled / "5wkd.pdb", bundled / "r5wkdsf.ent", twin="none")
    assert not any("origin" in w for w in plain.warnings)
    # (1/2, 0, 0) is an origin of C2 too: the same structure, the same R
    same = r_factors(_moved_copy(bundled, tmp_path, (0.5, 0.0, 0.5)), bundled / "r5wkdsf.ent", twin="none")
    assert same.r_work == pytest.approx(plain.r_work, abs=1e-3)
    wrong = r_factors(_moved_copy(bundled, tmp_path, (0.13, 0.0, 0.29)), bundled / "r5wkdsf.ent", twin="none")
    assert wrong.r_work > 0.45 and any("origin" in w for w in wrong.warnings)


def test_only_the_first_model_of_an_ensemble_is_used_and_that_is_said(bundled, tmp_path):
    plain = r_factors(bundled / "5wkd.pdb", bundled / "r5wkdsf.ent", twin="none")
    ensemble = r_factors(_moved_copy(bundled, tmp_path, (0.13, 0.0, 0.29), second_model=True),
                         bundled / "r5wkdsf.ent", twin="none")
    assert ensemble.r_work == pytest.approx(plain.r_work, abs=1e-4)
    assert any("2 models" in w and "only the first" in w for w in ensemble.warnings)


def test_the_readers_notes_are_in_the_report(bundled):
    """What the reader chose (here: one of three observation columns) is printed as a note, not a
    warning, and stays in the JSON's data."""
    report = r_factors(bundled / "rnase" / "1sar.pdb", bundled / "rnase" / "rnase18_Nat_Complexes.mtz")
    notes = report.data["notes"]
    assert any("FGMP18" in note for note in notes)
    assert [line for line in report.report().splitlines() if line.startswith("note")] == [
        f"note        : {note}" for note in notes]
    assert not any("FGMP18" in warning for warning in report.warnings)
