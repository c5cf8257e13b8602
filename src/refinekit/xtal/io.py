"""The edges of the xtal domain: reading models, reflection data and restraint dictionaries, and
writing refined models, MTZ files with map coefficients, and JSON. Readers raise
:class:`refinekit.core.InputError` with a one-line message naming the file; writers are atomic.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import gemmi
import numpy as np

from ..core import FreeFlags, InputError, KFold
from ..core.errors import first_line
from .reflections import ReflectionData, french_wilson, infer_free_convention

#: amplitude columns that hold model values, never observations
_CALCULATED = re.compile(r"^(FC|FCALC|FC_ALL|FC_ALL_LS|FWT|DELFWT|2FOFCWT|FOFCWT|FMODEL|F-MODEL|FPART"
                         r"|FMASK|FOM|FCAL|FC_.*|F_CALC.*|PH.*|.*WT|.*_CALC)$", re.IGNORECASE)
_FREE_LABEL = re.compile(r"free|test|rfree", re.IGNORECASE)
#: _refln.status values of reflections not to refine against (mmCIF dictionary): systematically absent,
#: unreliable, beyond the high- or low-resolution cutoff
_STATUS_NOT_USED = ("-", "x", "h", "l")
#: MTZ column types that never hold free flags (those are integers, type I)
_NOT_FREE_FLAGS = {"H": "Miller index", "F": "amplitude", "J": "intensity", "Q": "standard deviation",
                   "P": "phase", "W": "weight", "D": "anomalous difference", "G": "F(+)/F(-) amplitude",
                   "K": "I(+)/I(-) intensity", "L": "standard deviation of F(+)/F(-)",
                   "M": "standard deviation of I(+)/I(-)", "E": "normalised amplitude",
                   "A": "Hendrickson-Lattman coefficient", "B": "batch number", "Y": "M/ISYM"}

#: where the bundled restraint dictionaries live (the subset the demo needs; LGPL-3, see NOTICE there)
BUNDLED_MONOMERS = Path(__file__).resolve().parent.parent / "data" / "xtal" / "monomers"


# ------------------------------------------------------------------------------------ models
def read_model(path: str | os.PathLike[str], notes: list[str] | None = None) -> gemmi.Structure:
    """Read a PDB or mmCIF model (optionally gzipped): the first model, with entities set up.

    What was left out of the file (the models after the first) is said in ``notes`` where given.
    Raises InputError for a file that cannot be read, looks truncated, or has no atoms.
    """
    path = Path(path)
    _require_file(path)
    head = _head(path)
    if b"\0" in head:
        raise InputError("cannot read the model (a binary file, not PDB or mmCIF)", path=path)
    if _looks_like_pdb(head):
        _check_pdb_not_truncated(path)
    try:
        st = gemmi.read_structure(str(path), merge_chain_parts=True)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"cannot read the model ({first_line(exc)})", path=path) from None
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError("the model has no atoms (is it a PDB or mmCIF file?)", path=path)
    if len(st) > 1 and notes is not None:
        notes.append(f"the file has {len(st)} models (an ensemble): only the first (model {st[0].num}) is "
                     f"used, the others are ignored")
    while len(st) > 1:      # refinement is of the first model; NMR-style ensembles are not refined
        del st[len(st) - 1]
    _check_atom_values(st, path)
    st.setup_entities()
    return st


def _check_atom_values(st: gemmi.Structure, path: Path) -> None:
    """Refuse non-finite or negative coordinates, B-factors and occupancies, and a model whose every
    atom has zero occupancy: they reach the structure factors as NaN or zero (a singular scale fit)."""
    cras = list(st[0].all())
    # one pass over the atoms: x, y, z, B, the six ANISOU elements, occupancy
    values = np.array([(*a.pos.tolist(), a.b_iso, *a.aniso.elements_pdb(), a.occ)
                       for a in (cra.atom for cra in cras)], dtype=float).reshape(-1, 11)
    xyz, b_iso, aniso, occ = values[:, :3], values[:, 3], values[:, 4:10], values[:, 10]
    checks = [(~np.all(np.isfinite(xyz), axis=1), "a non-finite coordinate"),
              (~np.isfinite(b_iso) | ~np.all(np.isfinite(aniso), axis=1), "a non-finite B-factor"),
              (~np.isfinite(occ), "a non-finite occupancy"),
              (b_iso < 0, "a negative B-factor"),
              (occ < 0, "a negative occupancy")]
    for bad, what in checks:
        if np.any(bad):
            first = int(np.argmax(bad))
            raise InputError(f"{np.count_nonzero(bad)} atom(s) have {what} (the first: {cras[first]})",
                             path=path)
    if not np.any(occ > 0):
        raise InputError("every atom has zero occupancy: the model scatters nothing", path=path)


def _head(path: Path, size: int = 4096) -> bytes:
    """The first bytes of a file, through gzip where it is compressed."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            return fh.read(size)
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read the file ({first_line(exc)})", path=path) from None


def _looks_like_pdb(head: bytes) -> bool:
    """PDB unless the file's first bytes (:func:`_head`) start as a CIF document does (whatever the
    file is called)."""
    text = head.lstrip()
    while text.startswith(b"#"):
        text = text.split(b"\n", 1)[-1].lstrip() if b"\n" in text else b""
    return not text.startswith(b"data_")


def _check_pdb_not_truncated(path: Path) -> None:
    """A PDB file cut short mid-record reads without error in most parsers: catch it here."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read the model ({first_line(exc)})", path=path) from None
    lines = data.rstrip(b"\n").split(b"\n")
    last = lines[-1].rstrip(b"\r") if lines else b""
    if last.startswith((b"ATOM", b"HETATM")) and len(last) < 54:
        raise InputError("the model file is truncated (its last atom record is incomplete)", path=path)


def check_model_matches_data(st: gemmi.Structure, data: ReflectionData, model_path: object,
                             data_path: object) -> None:
    """Refuse a model whose unit cell or space group differs from the data's; give a model without
    a cell the data's."""
    if not st.cell.is_crystal() or st.cell.a <= 1.0:
        st.cell = data.cell
        st.spacegroup_hm = data.spacegroup.xhm()
        st.setup_cell_images()
        _check_model_extent(st, model_path)
        return
    mine = np.array(st.cell.parameters)
    theirs = np.array(data.cell.parameters)
    if (np.any(np.abs(mine[:3] - theirs[:3]) > 0.02 * theirs[:3])
            or np.any(np.abs(mine[3:] - theirs[3:]) > 1.0)):
        raise InputError(
            f"unit cell of the model ({_cell_text(mine)}) does not match the data's ({_cell_text(theirs)}) "
            f"in {data_path}", path=model_path)
    model_sg = st.find_spacegroup()
    if model_sg is None:
        st.spacegroup_hm = data.spacegroup.xhm()
    elif model_sg.number != data.spacegroup.number:
        raise InputError(f"space group of the model ({model_sg.xhm()}) differs from the data's "
                         f"({data.spacegroup.xhm()}) in {data_path}", path=model_path)
    # the data's cell is the measured one; the model follows it (differences are within tolerance)
    st.cell = data.cell
    st.setup_cell_images()
    _check_model_extent(st, model_path)


#: real models lie within a cell or two of the origin: atoms farther than this (in unit cells along any
#: axis) have corrupt coordinates, and the riding hydrogens gemmi places on them land anywhere, so the
#: contact search of refinement, which visits every lattice translation within the model's reach, never ends
MAX_CELLS_FROM_ORIGIN = 100.0


def _check_model_extent(st: gemmi.Structure, model_path: object) -> None:
    box = st.calculate_fractional_box()     # of the atoms' fractional coordinates, in the data's cell
    far = max(abs(v) for v in (*box.minimum.tolist(), *box.maximum.tolist()))
    if far > MAX_CELLS_FROM_ORIGIN:
        raise InputError(f"atoms lie {far:.3g} unit cells from the origin (corrupt coordinates?)",
                         path=model_path)


def _cell_text(p: np.ndarray) -> str:
    return " ".join(f"{v:.2f}" for v in p)


def load_monomer_library(resnames: Iterable[str], monlib: str | os.PathLike[str] | None = None
                         ) -> tuple[gemmi.MonLib, Path]:
    """Read the restraint dictionaries of ``resnames`` from a CCP4 monomer library folder (``monlib``,
    else $CLIBD_MON, else the small subset bundled with refinekit).

    A residue without a dictionary is an InputError that names it and says how to supply one.
    """
    folder = _monlib_folder(monlib)
    names = sorted(set(resnames))
    missing = [n for n in names if not _dictionary_path(folder, n).is_file()]
    if missing:
        raise InputError(
            f"no restraint dictionary for residue(s) {', '.join(missing)} in {folder}: make one (e.g. with "
            f"AceDRG or grade) and put it in a CCP4 monomer-library folder as <first letter>/<CODE>.cif "
            f"given with --monlib", path=None)
    try:
        lib = gemmi.read_monomer_lib(str(folder), names)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"cannot read the monomer library ({first_line(exc)})", path=folder) from None
    return lib, folder


def _monlib_folder(monlib: str | os.PathLike[str] | None) -> Path:
    if monlib is not None:
        folder = Path(monlib)
        if not folder.is_dir():
            raise InputError("the monomer library is not a folder", path=folder)
    elif os.environ.get("CLIBD_MON") and Path(os.environ["CLIBD_MON"]).is_dir():
        folder = Path(os.environ["CLIBD_MON"])
    else:
        folder = BUNDLED_MONOMERS
    if not (folder / "list" / "mon_lib_list.cif").is_file():
        raise InputError("not a CCP4 monomer library (list/mon_lib_list.cif is missing)", path=folder)
    return folder


def _dictionary_path(folder: Path, name: str) -> Path:
    return folder / name[0].lower() / f"{name}.cif"


# -------------------------------------------------------------------------------- reflections
def read_reflections(path: str | os.PathLike[str], *, labels: Sequence[str] | None = None,
                     free_label: str | None = None, free_fraction: float = 0.05, seed: int = 0
                     ) -> ReflectionData:
    """Read merged data from an MTZ or a structure-factor mmCIF file (optionally gzipped).

    Amplitudes (F with SIGF) are used where present, else intensities (I with SIGI) are converted by
    French-Wilson. ``labels`` names the columns explicitly (``["FP", "SIGFP"]`` or ``["I", "SIGI"]``).
    The free-flag column is found by its name (FreeR_flag, FREE, R-free-flags, ...) and its convention
    by its values; where there is none, a free set of ``free_fraction`` is made (seeded, CCP4
    convention) and the result says so in ``info["free_source"]``.
    """
    path = Path(path)
    _require_file(path)
    info: dict[str, object] = {"path": str(path)}
    #: what was read other than the obvious way (a block or columns left out), said with the data
    notes: list[str] = []
    mtz, not_used = _read_as_mtz(path, info, notes)
    if mtz.nreflections == 0:
        raise InputError("the reflection file has no reflections", path=path)
    if len(mtz.batches) > 0:
        raise InputError("unmerged data (the MTZ has batches): merge them first", path=path)
    sg = mtz.spacegroup
    if sg is None:
        raise InputError("the reflection file has no space group", path=path)
    hkl_as_given = np.asarray(mtz.make_miller_array(), dtype=np.int32)
    # indices in the reciprocal asymmetric unit, so that symmetry mates are one reflection
    mtz.ensure_asu()
    hkl_all = np.asarray(mtz.make_miller_array(), dtype=np.int32)
    _, inverse, counts = np.unique(hkl_all, axis=0, return_inverse=True, return_counts=True)
    if counts.size != hkl_all.shape[0]:
        repeated = counts[inverse.ravel()] > 1
        if _friedel_mates_apart(sg, hkl_as_given[repeated], inverse.ravel()[repeated]):
            raise InputError("Friedel mates (h and -h) are separate reflections (anomalous data): merge them "
                             "into one mean value per reflection first", path=path)
        raise InputError("a reflection occurs more than once: the data are not merged", path=path)
    value_col, sigma_col, kind = _find_observation_columns(mtz, labels, path)
    info["columns"] = [value_col.label, sigma_col.label]
    if not labels:
        others = _other_observations(mtz, value_col)
        if others:
            notes.append(f"observations read from {value_col.label}/{sigma_col.label}; the file also has "
                         f"{', '.join(others)} (not used: choose with --labels)")
    # each MTZ dataset has its own cell (they differ slightly between crystals): the observations' one
    # holds, the file's global cell only where the dataset has none
    unit_cell = mtz.get_cell(value_col.dataset_id)
    cell = np.array(unit_cell.parameters)
    if not (np.all(np.isfinite(cell)) and np.all(cell[:3] > 1.0) and unit_cell.volume > 0):
        raise InputError(f"the reflection file has no valid unit cell ({_cell_text(cell)})", path=path)
    values = np.asarray(value_col.array, dtype=float)
    sigmas = np.asarray(sigma_col.array, dtype=float)
    absent = np.asarray(sg.operations().systematic_absences(hkl_all), dtype=bool)
    # NaN marks a missing value in MTZ; an infinity is a corrupt one, not to be dropped silently
    infinite = np.isinf(values) | np.isinf(sigmas)
    if np.any(infinite):
        raise InputError(f"{np.count_nonzero(infinite)} reflections have infinite values in columns "
                         f"{value_col.label}/{sigma_col.label}", path=path)
    observed = np.isfinite(values) & np.isfinite(sigmas) & (sigmas > 0) & ~absent
    if kind == "F":
        observed &= values >= 0
    if np.any(observed & not_used):
        notes.append(f"{np.count_nonzero(observed & not_used)} reflections with values have _refln.status "
                     f"{'/'.join(_STATUS_NOT_USED)} (absent, unreliable or outside the resolution cutoffs): "
                     f"left out")
        observed &= ~not_used
    rows = np.flatnonzero(observed)
    if rows.size < 10:
        raise InputError(f"only {rows.size} usable reflections in columns "
                         f"{value_col.label}/{sigma_col.label}", path=path)
    if np.ptp(values[rows]) == 0:       # all zero, say: R and CC would be inf and NaN
        raise InputError(f"every reflection has the same {value_col.label} ({values[rows[0]]:g}): the column "
                         f"holds no measurements", path=path)
    hkl = hkl_all[rows]
    free_col = _find_free_column(mtz, free_label, path)
    if free_col is not None:
        raw = np.asarray(free_col.array, dtype=float)
        flag_values = raw[rows]
        unflagged = ~np.isfinite(flag_values)
        if np.all(unflagged):
            raise InputError(f"the free-flag column {free_col.label} is empty", path=path)
        # NaN is a reflection without a flag; an infinity or a fraction is no flag at all
        not_integer = np.isinf(flag_values) | (np.isfinite(flag_values)
                                               & ((flag_values != np.round(flag_values))
                                                  | (np.abs(flag_values) > 2**31)))
        if np.any(not_integer):
            raise InputError(f"the free-flag column {free_col.label} holds {np.count_nonzero(not_integer)} "
                             f"values that are not integers (e.g. {flag_values[not_integer][0]:g})",
                             path=path)
        try:
            free_value, convention = infer_free_convention(flag_values)
        except InputError as exc:
            raise InputError(str(exc), path=path) from None
        if np.any(unflagged):   # an observation without a flag is kept out of both sets: drop it
            rows, hkl, flag_values = rows[~unflagged], hkl[~unflagged], flag_values[~unflagged]
        flags = FreeFlags(flag_values.astype(np.int64), free_value)
        info.update(free_label=free_col.label, free_value=free_value, free_convention=convention,
                    free_source="file")
    else:
        if not 0 < free_fraction < 0.5:
            raise InputError(f"the data have no free set and the free fraction of one made here must be "
                             f"between 0 and 0.5, got {free_fraction}", path=path)
        n_folds = max(2, round(1.0 / free_fraction))
        all_flags = KFold(n_folds, seed=seed).flags(mtz.nreflections)
        flags = FreeFlags(all_flags.values[rows], 0)
        info.update(free_label="FreeR_flag", free_value=0, free_source="made",
                    free_convention=f"made here: CCP4 convention 0..{n_folds - 1}, 0 free, seed {seed}",
                    made_flags=all_flags.values)
    values, sigmas = values[rows], sigmas[rows]
    data = ReflectionData(unit_cell, sg, hkl, values, sigmas, flags, mtz, rows, info)
    if kind == "I":
        try:
            f, sf, kept = french_wilson(values, sigmas, data.s2, data.centric, data.epsilon)
        except InputError as exc:
            raise InputError(str(exc), path=path) from None
        info["french_wilson"] = {"rejected": int(np.count_nonzero(~kept))}
        data = ReflectionData(unit_cell, sg, hkl[kept], f[kept], sf[kept],
                              FreeFlags(flags.values[kept], flags.free_value), mtz, rows[kept], info)
        info["intensities"] = True
    else:
        info["intensities"] = False
    if not np.any(data.free):
        raise InputError("the free set is empty among the measured reflections", path=path)
    if not np.any(data.work):
        raise InputError("every measured reflection is free: there is no working set", path=path)
    info["n_reflections"] = len(data)
    info["n_free"] = int(np.count_nonzero(data.free))
    info["notes"] = notes
    return data


def _read_as_mtz(path: Path, info: dict[str, object], notes: list[str]) -> tuple[gemmi.Mtz, np.ndarray]:
    """The file as MTZ, and per row whether its ``_refln.status`` says it is not to be used (all False
    for MTZ files)."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".mtz"):
        try:
            mtz = gemmi.read_mtz_file(str(path))
        except (RuntimeError, ValueError, OSError) as exc:
            raise InputError(f"cannot read the MTZ file ({first_line(exc)})", path=path) from None
        return mtz, np.zeros(mtz.nreflections, dtype=bool)
    try:
        doc = gemmi.cif.read(str(path))
        blocks = gemmi.as_refln_blocks(doc)
    except (RuntimeError, ValueError, OSError) as exc:
        raise InputError(f"cannot read the reflection file ({first_line(exc)})", path=path) from None
    blocks = [b for b in blocks if b.is_merged()] if blocks else []
    if not blocks:
        raise InputError("no merged reflections (_refln loop) in the file", path=path)
    block = blocks[0]
    info["block"] = block.block.name
    if len(blocks) > 1:
        # the PDB puts the data refined against first; the other blocks are other data sets or wavelengths
        notes.append(f"the file has {len(blocks)} blocks of merged reflections: the first "
                     f"({block.block.name}) is read, the others "
                     f"({', '.join(b.block.name for b in blocks[1:])}) are not")
    try:
        mtz = gemmi.CifToMtz().convert_block_to_mtz(block)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"cannot convert the reflections ({first_line(exc)})", path=path) from None
    not_used = np.zeros(mtz.nreflections, dtype=bool)
    if "_refln.status" not in block.default_loop.tags:
        return mtz, not_used
    status = np.array([gemmi.cif.as_string(v) for v in block.block.find_values("_refln.status")])
    if status.size != mtz.nreflections:      # rows not one to one: leave the status alone
        return mtz, not_used
    not_used = np.isin(status, _STATUS_NOT_USED)
    flag_col = mtz.column_with_label("FreeR_flag")
    if "_refln.pdbx_r_free_flag" not in block.default_loop.tags and flag_col is not None:
        # gemmi makes the flags from the status as o=1, f=0 and nothing for the rest; '<' (below a
        # sigma threshold) is measured and in the working set too, and without any 'f' there is no free set
        if not np.any(status == "f"):
            notes.append("_refln.status marks no free reflections ('f'): the file has no free set")
            mtz.remove_column(flag_col.idx)
        else:
            table = np.array(mtz, copy=True)
            table[:, flag_col.idx] = np.where(status == "f", 0.0, np.where(not_used, np.nan, 1.0))
            mtz.set_data(table)
    return mtz, not_used


def _find_observation_columns(mtz: gemmi.Mtz, labels: Sequence[str] | None, path: Path
                              ) -> tuple[gemmi.Mtz.Column, gemmi.Mtz.Column, str]:
    columns = {c.label: c for c in mtz.columns}
    if labels:
        if len(labels) != 2:
            raise InputError(f"--labels needs two column names (value,sigma), got {','.join(labels)}")
        missing = [lab for lab in labels if lab not in columns]
        if missing:
            raise InputError(f"no column {', '.join(missing)} (columns: {', '.join(columns)})", path=path)
        value, sigma = columns[labels[0]], columns[labels[1]]
        if value.type not in "FJ" or sigma.type != "Q":
            raise InputError(f"columns {labels[0]},{labels[1]} are not amplitude/intensity with sigma "
                             f"(types {value.type},{sigma.type})", path=path)
        return value, sigma, "F" if value.type == "F" else "I"
    for kind in ("F", "J"):
        for col in mtz.columns:
            if col.type != kind or (kind == "F" and _CALCULATED.match(col.label)):
                continue
            sigma = _sigma_of(col, columns)
            if sigma is not None:
                return col, sigma, "F" if kind == "F" else "I"
    anomalous = [c.label for c in mtz.columns if c.type in "GK"]
    hint = f" (only anomalous columns {', '.join(anomalous)}: merge Friedel pairs first)" if anomalous else ""
    raise InputError(f"no amplitude (F, SIGF) or intensity (I, SIGI) columns{hint}; columns: "
                     f"{', '.join(columns)}", path=path)


def _friedel_mates_apart(sg: gemmi.SpaceGroup, hkl: np.ndarray, group: np.ndarray) -> bool:
    """Whether some of the repeated reflections ``hkl`` (``group``: which unique reflection each is)
    are there as h and -h: anomalous data with Friedel mates kept apart, rather than unmerged data."""
    asu, ops = gemmi.ReciprocalAsu(sg), sg.operations()
    # gemmi's isym is odd for an index related to the asymmetric unit's by a rotation, even for its
    # Friedel mate: an acentric group with both has h and -h (for a centric one they are the same)
    friedel = np.array([asu.to_asu(h, ops)[1] % 2 == 0 for h in hkl.tolist()], dtype=bool)
    acentric = ~ops.centric_flag_array(hkl).astype(bool)
    n_groups = int(group.max()) + 1
    return bool(np.any((np.bincount(group, weights=friedel & acentric, minlength=n_groups) > 0)
                       & (np.bincount(group, weights=~friedel & acentric, minlength=n_groups) > 0)))


def _other_observations(mtz: gemmi.Mtz, chosen: gemmi.Mtz.Column) -> list[str]:
    """Labels of the observation columns (with a sigma) other than ``chosen``: other data sets."""
    columns = {c.label: c for c in mtz.columns}
    return [c.label for c in mtz.columns
            if c.type in "FJ" and c.label != chosen.label
            and not (c.type == "F" and _CALCULATED.match(c.label)) and _sigma_of(c, columns) is not None]


def _sigma_of(col: gemmi.Mtz.Column, columns: dict[str, gemmi.Mtz.Column]) -> gemmi.Mtz.Column | None:
    label = col.label
    candidates = [f"SIG{label}", f"SIG-{label}", f"{label}SIG", f"SIGMA{label}", f"SIG_{label}",
                  label.replace("F", "SIGF", 1), label.replace("I", "SIGI", 1)]
    if label.startswith(("F-", "I-")):                 # PHENIX: F-obs / SIGF-obs
        candidates.append("SIG" + label)
    for name in candidates:
        if name in columns and columns[name].type == "Q":
            return columns[name]
    # otherwise the Q column right after it, as most programs write them
    ordered = list(columns.values())
    for i, other in enumerate(ordered[:-1]):
        if other.label == label and ordered[i + 1].type == "Q":
            return ordered[i + 1]
    return None


def _find_free_column(mtz: gemmi.Mtz, label: str | None, path: Path) -> gemmi.Mtz.Column | None:
    columns = {c.label: c for c in mtz.columns}
    if label is not None:
        if label not in columns:
            raise InputError(f"no free-flag column {label} (columns: {', '.join(columns)})", path=path)
        kind = columns[label].type
        if kind in _NOT_FREE_FLAGS:
            raise InputError(f"column {label} is not a free-flag column: its type is {kind} "
                             f"({_NOT_FREE_FLAGS[kind]}); free flags are integers (type I)", path=path)
        return columns[label]
    integer = [c for c in mtz.columns if c.type == "I" and _FREE_LABEL.search(c.label)]
    if integer:
        return integer[0]
    other = [c for c in mtz.columns if c.type not in "HFJQPWDGK" and _FREE_LABEL.search(c.label)]
    return other[0] if other else None


# ------------------------------------------------------------------------------------ writing
def model_texts(st: gemmi.Structure, cif_path: str | os.PathLike[str] | None,
                pdb_path: str | os.PathLike[str] | None) -> dict[str | os.PathLike[str], str]:
    """``st`` as mmCIF and/or PDB text, keyed by the path each is for (``None`` paths left out).

    Polymer residues without a label_seq_id are given one (in ``st``)."""
    texts: dict[str | os.PathLike[str], str] = {}
    if cif_path is not None:
        # a model read from PDB has no label_seq_id: without it the mmCIF's polymer atoms (and struct_conn
        # partners) have '.', which the dictionary forbids; numbered as `gemmi convert` does, by SEQRES
        st.assign_label_seq_id(False)
        texts[cif_path] = st.make_mmcif_document(gemmi.MmcifOutputGroups(True)).as_string()
    if pdb_path is not None:
        texts[pdb_path] = st.make_pdb_string(gemmi.PdbWriteOptions())
    return texts


def mtz_bytes(data: ReflectionData, columns: dict[str, tuple[str, np.ndarray]]) -> bytes:
    """The observations, the free flags (as read: every row, unchanged) and extra per-observation
    ``columns`` (label -> (MTZ type, values for the observations)) as the bytes of an MTZ file."""
    src = data.mtz
    n = src.nreflections
    out = gemmi.Mtz(with_base=True)
    out.spacegroup = src.spacegroup
    out.set_cell_for_all(data.cell)
    out.title = "refinekit xtal refine"
    out.add_dataset("refinekit")
    out.datasets[-1].wavelength = src.datasets[-1].wavelength if len(src.datasets) else 0.0
    table = [np.asarray(src.make_miller_array(), dtype=np.float32)]
    labels: list[tuple[str, str]] = []
    for label in data.info.get("columns", []):
        col = src.column_with_label(label)
        labels.append((col.label, col.type))
        table.append(np.asarray(col.array, dtype=np.float32)[:, None])
    free_label = str(data.info.get("free_label", "FreeR_flag"))
    if data.info.get("free_source") == "file":
        col = src.column_with_label(free_label)
        flags = np.asarray(col.array, dtype=np.float32)      # bit-exact: the column as read
    else:
        flags = np.asarray(data.info["made_flags"], dtype=np.float32)
    labels.append((free_label, "I"))
    table.append(flags[:, None])
    for label, (mtz_type, values) in columns.items():
        full = np.full(n, np.nan, dtype=np.float32)
        full[data.rows] = values
        labels.append((label, mtz_type))
        table.append(full[:, None])
    for label, mtz_type in labels:
        out.add_column(label, mtz_type)
    out.set_data(np.hstack(table))
    out.history = ["refinekit xtal refine"]
    return out.write_to_bytes()


# ------------------------------------------------------------------------------------ helpers
def _require_file(path: Path) -> None:
    if not path.exists():
        raise InputError("no such file", path=path)
    if path.is_dir():
        raise InputError("is a directory", path=path)
    if not os.access(path, os.R_OK):
        raise InputError("permission denied", path=path)
    if path.stat().st_size == 0:
        raise InputError("the file is empty", path=path)
