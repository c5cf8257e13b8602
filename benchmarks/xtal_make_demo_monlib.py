"""Make the small monomer-library subset bundled for the xtal demo (src/refinekit/data/xtal/monomers).

It keeps, from a CCP4 monomer library (the one in ../shared/data/xtal/monomers by default): the
dictionaries of the residues of the demo models (5WKD, rnase_model, 1SAR), ener_lib.cif, and a
mon_lib_list.cif cut down to the blocks that gemmi needs for them (library header, their comp_list
rows, the peptide links and every modification). Then it checks that gemmi builds the same
restraints from the subset as from the full library, for each model.

The subset is built in a temporary folder beside the bundled one and put in its place only once it
has passed that check; the licence texts (COPYING, COPYING.LESSER) are carried over.

Run: .venv/bin/python benchmarks/xtal_make_demo_monlib.py [MONLIB]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import gemmi

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "refinekit" / "data" / "xtal" / "monomers"
DATA = ROOT / "src" / "refinekit" / "data" / "xtal"
MODELS = [DATA / "5wkd.pdb", DATA / "rnase" / "rnase_model.pdb", DATA / "rnase" / "1sar.pdb"]
LINKS = {"TRANS", "CIS", "PTRANS", "PCIS", "NMTRANS", "NMCIS", "gap", "p", "SS"}
LICENCES = ("COPYING", "COPYING.LESSER")


def restraint_counts(monlib: Path, names: list[str], model: Path) -> tuple[int, ...]:
    st = gemmi.read_structure(str(model))
    st.setup_entities()
    lib = gemmi.read_monomer_lib(str(monlib), names)
    topo = gemmi.prepare_topology(st, lib, h_change=gemmi.HydrogenChange.ReAddButWater)
    return (len(topo.bonds), len(topo.angles), len(topo.torsions), len(topo.chirs), len(topo.planes),
            st[0].count_atom_sites())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("monlib", nargs="?", type=Path,
                        default=ROOT.parent / "shared" / "data" / "xtal" / "monomers",
                        help="a CCP4 monomer library folder (default: ../shared/data/xtal/monomers)")
    source = parser.parse_args().monlib
    if not (source / "list" / "mon_lib_list.cif").is_file() or not (source / "ener_lib.cif").is_file():
        raise SystemExit(f"{source}: not a CCP4 monomer library (no list/mon_lib_list.cif or ener_lib.cif)")
    names = sorted({name for model in MODELS
                    for name in gemmi.read_structure(str(model))[0].get_all_residue_names()})
    with tempfile.TemporaryDirectory(dir=OUT.parent) as tmp:
        new = Path(tmp) / "monomers"
        _build_subset(source, names, new)
        for model in MODELS:
            full, subset = restraint_counts(source, names, model), restraint_counts(new, names, model)
            print(f"{model.name}: restraints (bonds, angles, torsions, chirals, planes, atoms): full", full,
                  "subset", subset)
            if full != subset:
                raise SystemExit(f"{model.name}: the subset gives other restraints than the full library")
        for name in LICENCES:
            if (OUT / name).is_file():
                shutil.copy(OUT / name, new / name)
        old = Path(tmp) / "old"
        if OUT.exists():
            OUT.rename(old)
        new.rename(OUT)


def _build_subset(source: Path, names: list[str], out: Path) -> None:
    (out / "list").mkdir(parents=True)
    for name in names:
        (out / name[0].lower()).mkdir(exist_ok=True)
        shutil.copy(source / name[0].lower() / f"{name}.cif", out / name[0].lower() / f"{name}.cif")
    shutil.copy(source / "ener_lib.cif", out / "ener_lib.cif")
    doc = gemmi.cif.read(str(source / "list" / "mon_lib_list.cif"))
    subset = gemmi.cif.Document()
    for block in doc:
        keep = (block.name in ("lib", "link_list", "mod_list") or block.name.startswith("mod_")
                or block.name.removeprefix("link_") in LINKS)
        if block.name == "comp_list":
            table = block.find_mmcif_category("_chem_comp.")
            tags = [tag.removeprefix("_chem_comp.") for tag in table.tags]
            loop = subset.add_new_block("comp_list").init_loop("_chem_comp.", tags)
            for row in table:
                if gemmi.cif.as_string(row[0]) in names:
                    loop.add_row([row[i] for i in range(len(tags))])
        elif keep:
            subset.add_copied_block(block)
    subset.write_file(str(out / "list" / "mon_lib_list.cif"))


if __name__ == "__main__":
    main()
