"""Make the small monomer-library subset bundled for the xtal demo (src/refinekit/data/xtal/monomers).

It keeps, from a CCP4 monomer library (the one in ../shared/data/xtal/monomers by default): the
dictionaries of the residues of the demo models (5WKD, rnase_model, 1SAR), ener_lib.cif, and a
mon_lib_list.cif cut down to the blocks that gemmi needs for them (library header, their comp_list
rows, the peptide links and every modification). Then it checks that gemmi builds the same
restraints from the subset as from the full library, for each model.

Run: .venv/bin/python benchmarks/xtal_make_demo_monlib.py [MONLIB]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import gemmi

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "refinekit" / "data" / "xtal" / "monomers"
DATA = ROOT / "src" / "refinekit" / "data" / "xtal"
MODELS = [DATA / "5wkd.pdb", DATA / "rnase" / "rnase_model.pdb", DATA / "rnase" / "1sar.pdb"]
LINKS = {"TRANS", "CIS", "PTRANS", "PCIS", "NMTRANS", "NMCIS", "gap", "p", "SS"}


def restraint_counts(monlib: Path, names: list[str], model: Path) -> tuple[int, ...]:
    st = gemmi.read_structure(str(model))
    st.setup_entities()
    lib = gemmi.read_monomer_lib(str(monlib), names)
    topo = gemmi.prepare_topology(st, lib, h_change=gemmi.HydrogenChange.ReAddButWater)
    return (len(topo.bonds), len(topo.angles), len(topo.torsions), len(topo.chirs), len(topo.planes),
            st[0].count_atom_sites())


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "xtal" / "monomers"
    names = sorted({name for model in MODELS
                    for name in gemmi.read_structure(str(model))[0].get_all_residue_names()})
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "list").mkdir(parents=True)
    for name in names:
        (OUT / name[0].lower()).mkdir(exist_ok=True)
        shutil.copy(source / name[0].lower() / f"{name}.cif", OUT / name[0].lower() / f"{name}.cif")
    shutil.copy(source / "ener_lib.cif", OUT / "ener_lib.cif")
    doc = gemmi.cif.read(str(source / "list" / "mon_lib_list.cif"))
    out = gemmi.cif.Document()
    for block in doc:
        keep = (block.name in ("lib", "link_list", "mod_list") or block.name.startswith("mod_")
                or block.name.removeprefix("link_") in LINKS)
        if block.name == "comp_list":
            table = block.find_mmcif_category("_chem_comp.")
            tags = [tag.removeprefix("_chem_comp.") for tag in table.tags]
            loop = out.add_new_block("comp_list").init_loop("_chem_comp.", tags)
            for row in table:
                if gemmi.cif.as_string(row[0]) in names:
                    loop.add_row([row[i] for i in range(len(tags))])
        elif keep:
            out.add_copied_block(block)
    out.write_file(str(OUT / "list" / "mon_lib_list.cif"))
    for model in MODELS:
        full, subset = restraint_counts(source, names, model), restraint_counts(OUT, names, model)
        print(f"{model.name}: restraints (bonds, angles, torsions, chirals, planes, atoms): full", full,
              "subset", subset)
        if full != subset:
            raise SystemExit(f"{model.name}: the subset gives other restraints than the full library")


if __name__ == "__main__":
    main()
