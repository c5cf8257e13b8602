"""The files ``refinekit xtal refine`` writes: faithful to the input model (atom by atom), and readable by
other programs (mmCIF that passes gemmi's checks, PDB records of this refinement)."""

from __future__ import annotations

from pathlib import Path

import gemmi
import pytest

from refinekit.xtal import refine_structure


def _atoms(path: Path) -> dict[tuple[object, ...], tuple[object, ...]]:
    """The heavy atoms of the first model by (chain, number, icode, residue, atom, altloc)."""
    st = gemmi.read_structure(str(path), merge_chain_parts=True)
    return {(ch.name, res.seqid.num, res.seqid.icode, res.name, atom.name, atom.altloc):
            (res.het_flag, atom.element.name, atom.charge, round(atom.occ, 2), round(atom.b_iso, 2),
             atom.pos)
            for ch in st[0] for res in ch for atom in res if not atom.is_hydrogen()}


def _edited_5wkd(bundled: Path, tmp_path: Path) -> Path:
    """5WKD with B-factors outside refinement's bounds ([2, 300]) and a charged atom."""
    lines, n = [], 0
    for line in (bundled / "5wkd.pdb").read_text().splitlines():
        if line.startswith("ATOM"):
            n += 1
            b = {1: 1.0, 2: 350.0, 3: 0.5}.get(n)
            if b is not None:
                line = f"{line[:60]}{b:6.2f}{line[66:78]}{'1+' if n == 1 else line[78:80]}"
        lines.append(line)
    path = tmp_path / "edited.pdb"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_zero_cycles_write_the_model_as_read(bundled, tmp_path):
    model = _edited_5wkd(bundled, tmp_path)
    refine_structure(model, bundled / "r5wkdsf.ent", tmp_path / "out", cycles=0)
    before = _atoms(model)
    for suffix in ("cif", "pdb"):
        after = _atoms(tmp_path / "out" / f"edited_refined.{suffix}")
        assert after.keys() == before.keys()
        for key, (het, element, charge, occ, b, pos) in before.items():
            assert after[key][:5] == (het, element, charge, occ, b), (suffix, key)
            assert after[key][5].dist(pos) < 1e-3, (suffix, key)


def test_mmcif_from_a_pdb_model_has_label_seq_id_and_passes_gemmi_checks(bundled, tmp_path):
    refine_structure(bundled / "5wkd.pdb", bundled / "r5wkdsf.ent", tmp_path, cycles=0)
    doc = gemmi.cif.read(str(tmp_path / "5wkd_refined.cif"))
    doc.check_for_missing_values()
    doc.check_for_duplicates()
    table = doc.sole_block().find("_atom_site.", ["group_PDB", "label_seq_id"])
    polymer = [row[1] for row in table if row[0] == "ATOM"]
    assert polymer and "." not in polymer and "?" not in polymer
    st = gemmi.read_structure(str(tmp_path / "5wkd_refined.cif"))
    assert [res.label_seq for res in st[0]["A"] if not res.is_water()] == list(range(1, 8))


def test_written_models_credit_this_refinement(bundled, tmp_path):
    result = refine_structure(bundled / "5wkd.pdb", bundled / "r5wkdsf.ent", tmp_path, cycles=0)
    r_work = result.kept.figures["r_work"]
    pdb_text = (tmp_path / "5wkd_refined.pdb").read_text()
    remark3 = [line for line in pdb_text.splitlines() if line.startswith("REMARK   3")]
    # the input's REMARK 3 (REFMAC, R 0.184) is gone, replaced by this refinement's
    assert not any("REFMAC" in line or "0.184" in line for line in remark3)
    assert max(len(line) for line in pdb_text.splitlines()) <= 80
    for suffix in ("pdb", "cif"):
        st = gemmi.read_structure(str(tmp_path / f"5wkd_refined.{suffix}"))
        assert st.meta.refinement[0].r_work == pytest.approx(r_work, abs=6e-4), suffix
        programs = [sw.name.lower() for sw in st.meta.software
                    if sw.classification == gemmi.SoftwareItem.Classification.Refinement]
        assert programs == ["refinekit"], suffix
