"""Reading reflections: columns found by name and type, free-flag conventions, French-Wilson."""

from __future__ import annotations

import math

import gemmi
import numpy as np
import pytest
from scipy import integrate

from refinekit.core import InputError
from refinekit.xtal.io import read_reflections
from refinekit.xtal.reflections import french_wilson, infer_free_convention


def _mtz_with_flags(bundled, tmp_path, label, transform, name="flags.mtz"):
    """The bundled data as MTZ, with the free flags rewritten by ``transform(is_free) -> values``."""
    doc = gemmi.cif.read(str(bundled / "r5wkdsf.ent"))
    mtz = gemmi.CifToMtz().convert_block_to_mtz(gemmi.as_refln_blocks(doc)[0])
    flags = mtz.column_with_label("FreeR_flag").array
    values = np.where(np.isnan(flags), np.nan, transform(flags == 0)).astype(np.float32)
    data = np.array(mtz, copy=True)
    data[:, mtz.column_with_label("FreeR_flag").idx] = values
    mtz.set_data(data)
    mtz.column_with_label("FreeR_flag").label = label
    path = tmp_path / name
    mtz.write_to_file(str(path))
    return path


def test_ccp4_flags_are_read_as_such(bundled):
    data = read_reflections(bundled / "r5wkdsf.ent")
    assert data.info["free_label"] == "FreeR_flag" and data.info["free_value"] == 0
    assert data.info["columns"] == ["FP", "SIGFP"] and int(data.free.sum()) == 22 and len(data) == 367


@pytest.mark.parametrize(("label", "free_value", "work_value"), [
    ("R-free-flags", 1, 0),      # PHENIX / CNS: 1 is free
    ("FREE", 0, 1),              # CCP4 two-valued
    ("FreeRflag", -1, 1),        # SHELX: -1 is free
])
def test_two_valued_conventions_find_the_same_free_set(bundled, tmp_path, label, free_value, work_value):
    reference = read_reflections(bundled / "r5wkdsf.ent")
    path = _mtz_with_flags(bundled, tmp_path, label, lambda free: np.where(free, free_value, work_value))
    data = read_reflections(path)
    assert data.info["free_label"] == label and data.info["free_value"] == free_value
    assert np.array_equal(data.free, reference.free) and np.array_equal(data.hkl, reference.hkl)


def test_flags_without_a_rare_value_are_refused(bundled, tmp_path):
    path = _mtz_with_flags(bundled, tmp_path, "FREE", lambda free: np.arange(free.size) % 2)
    with pytest.raises(InputError, match="cannot tell which free-flag value"):
        read_reflections(path)


def test_a_missing_free_set_is_made_seeded_and_said(bundled, tmp_path):
    path = _mtz_with_flags(bundled, tmp_path, "SOMETHING", lambda free: np.zeros(free.size))
    mtz = gemmi.read_mtz_file(str(path))
    mtz.remove_column(mtz.column_with_label("SOMETHING").idx)
    mtz.write_to_file(str(path))
    first = read_reflections(path, seed=7)
    again = read_reflections(path, seed=7)
    other = read_reflections(path, seed=8)
    assert first.info["free_source"] == "made" and "seed 7" in first.info["free_convention"]
    assert np.array_equal(first.free, again.free) and not np.array_equal(first.free, other.free)
    assert 0.02 < first.free.mean() < 0.09                # 5 % of all reflections, a few of the measured


def test_status_only_sf_cif_gives_the_free_set(bundled, tmp_path):
    lines = (bundled / "r5wkdsf.ent").read_text().splitlines()
    out, in_loop, col_flag = [], False, None
    tags = []
    for line in lines:
        if line.startswith("_refln."):
            in_loop = True
            tags.append(line.strip())
            if line.strip() == "_refln.pdbx_r_free_flag":
                col_flag = len(tags) - 1
                continue
            out.append(line)
        elif in_loop and line.strip() and not line.startswith(("#", "loop_", "_")):
            parts = line.split()
            del parts[col_flag]
            out.append(" ".join(parts))
        else:
            out.append(line)
    path = tmp_path / "status.cif"
    path.write_text("\n".join(out) + "\n")
    data = read_reflections(path)
    assert int(data.free.sum()) == 22 and data.info["free_source"] == "file"


def test_intensities_are_converted_by_french_wilson(bundled, tmp_path):
    reference = read_reflections(bundled / "r5wkdsf.ent")
    doc = gemmi.cif.read(str(bundled / "r5wkdsf.ent"))
    mtz = gemmi.CifToMtz().convert_block_to_mtz(gemmi.as_refln_blocks(doc)[0])
    f = mtz.column_with_label("FP").array
    s = mtz.column_with_label("SIGFP").array
    intensity, sig_i = f**2, 2 * f * s
    out = gemmi.Mtz(with_base=True)
    out.spacegroup = mtz.spacegroup
    out.set_cell_for_all(mtz.cell)
    out.add_dataset("x")
    for label, kind in (("I", "J"), ("SIGI", "Q"), ("FreeR_flag", "I")):
        out.add_column(label, kind)
    out.set_data(np.column_stack([mtz.make_miller_array(), intensity, sig_i,
                                  mtz.column_with_label("FreeR_flag").array]).astype(np.float32))
    path = tmp_path / "i.mtz"
    out.write_to_file(str(path))
    data = read_reflections(path)
    assert data.info["intensities"] is True and data.info["columns"] == ["I", "SIGI"]
    strong = reference.f_obs > 4 * reference.sigma
    same = np.isin(data.hkl.view("i4,i4,i4"), reference.hkl[strong].view("i4,i4,i4")).ravel()
    # for strong reflections the posterior mean of F is sqrt(I) to within a small fraction of sigma
    ratio = data.f_obs[same] / np.sort(reference.f_obs[strong])[np.argsort(np.argsort(data.f_obs[same]))]
    assert np.median(np.abs(ratio - 1)) < 0.02


@pytest.mark.parametrize(("i_obs", "sigma", "centric"), [(-3.0, 2.0, False), (0.5, 2.0, False),
                                                         (40.0, 4.0, False), (1.0, 3.0, True)])
def test_french_wilson_agrees_with_direct_integration(i_obs, sigma, centric):
    var = 10.0                                     # Wilson's Sigma
    f, _, kept = french_wilson(np.array([i_obs]), np.array([sigma]), np.array([0.1]), np.array([centric]),
                               np.ones(1), mean_intensity=np.array([var]))

    def post(x, power):
        like = math.exp(-0.5 * ((i_obs - x * x) / sigma) ** 2)
        prior_f = math.exp(-x * x / (2 * var)) if centric else x * math.exp(-x * x / var)
        return x**power * like * prior_f

    top = math.sqrt(max(i_obs, 0) + 12 * sigma + 12 * var)
    norm = integrate.quad(post, 0, top, args=(0,), limit=200)[0]
    mean = integrate.quad(post, 0, top, args=(1,), limit=200)[0] / norm
    assert kept[0] and f[0] == pytest.approx(mean, rel=2e-3)


def test_infer_free_convention_examples():
    assert infer_free_convention(np.array([0.0, 1.0, 2.0, 19.0]))[0] == 0
    assert infer_free_convention(np.array([1.0] * 19 + [0.0]))[0] == 0
    with pytest.raises(InputError):
        infer_free_convention(np.array([3.0, 3.0]))


def _edited_sf_cif(bundled, tmp_path, edit, name="edited.cif"):
    """The bundled SF mmCIF with its _refln loop rewritten: ``edit(tags, rows)`` returns new (tags, rows),
    the tags without their ``_refln.`` prefix and the rows as lists of strings."""
    head, loop = (bundled / "r5wkdsf.ent").read_text().split("loop_\n", 1)
    lines = [line for line in loop.splitlines() if line.strip() and not line.startswith("#")]
    tags = [line.strip().removeprefix("_refln.") for line in lines if line.startswith("_refln.")]
    rows = [line.split() for line in lines if not line.startswith("_")]
    tags, rows = edit(tags, rows)
    path = tmp_path / name
    path.write_text(head + "loop_\n" + "".join(f"_refln.{t}\n" for t in tags)
                    + "".join(" ".join(r) + "\n" for r in rows))
    return path


def _without(tags, rows, name):
    i = tags.index(name)
    return tags[:i] + tags[i + 1:], [r[:i] + r[i + 1:] for r in rows]


def test_status_x_reflections_with_values_are_left_out(bundled, tmp_path):
    def edit(tags, rows):
        marked = [r for r in rows if r[tags.index("status")] == "o"][:30]
        for r in marked:
            r[tags.index("status")] = "x"            # unreliable, not used: though it has a value
        return tags, rows
    data = read_reflections(_edited_sf_cif(bundled, tmp_path, edit))
    assert len(data) == 367 - 30 and int(data.free.sum()) == 22
    assert any("30 reflections" in note for note in data.info["notes"])


def test_status_only_flags_keep_reflections_below_threshold(bundled, tmp_path):
    def edit(tags, rows):
        tags, rows = _without(tags, rows, "pdbx_r_free_flag")
        for i, r in enumerate(rows):
            if r[tags.index("status")] == "o" and i % 5 == 0:
                r[tags.index("status")] = "<"        # measured, weak: a working reflection
        return tags, rows
    data = read_reflections(_edited_sf_cif(bundled, tmp_path, edit))
    assert len(data) == 367 and int(data.free.sum()) == 22 and data.info["free_source"] == "file"


def test_status_without_free_reflections_makes_a_free_set(bundled, tmp_path):
    def edit(tags, rows):
        tags, rows = _without(tags, rows, "pdbx_r_free_flag")
        for r in rows:
            r[tags.index("status")] = r[tags.index("status")].replace("f", "o")
        return tags, rows
    data = read_reflections(_edited_sf_cif(bundled, tmp_path, edit))
    assert data.info["free_source"] == "made" and len(data) == 367
    assert any("no free set" in note for note in data.info["notes"])


def test_several_blocks_read_the_first_and_say_so(bundled, tmp_path):
    text = (bundled / "r5wkdsf.ent").read_text()
    second = text.replace("data_r5wkdsf", "data_r5wkdsfB", 1).replace(" 12.66  8.21 ", " 99.99  8.21 ")
    path = tmp_path / "two.cif"
    path.write_text(text + "\n" + second)
    reference = read_reflections(bundled / "r5wkdsf.ent")
    data = read_reflections(path)
    assert data.info["block"] == "r5wkdsf" and np.array_equal(data.f_obs, reference.f_obs)
    assert any("r5wkdsfB" in note and "2 blocks" in note for note in data.info["notes"])


def test_the_cell_is_that_of_the_observations_dataset(bundled, tmp_path):
    doc = gemmi.cif.read(str(bundled / "r5wkdsf.ent"))
    base = gemmi.CifToMtz().convert_block_to_mtz(gemmi.as_refln_blocks(doc)[0])
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = base.spacegroup
    mtz.set_cell_for_all(base.cell)
    for name in ("native", "derivative"):
        mtz.add_dataset(name)
    columns = [("FP", "F", 1), ("SIGFP", "Q", 1), ("FreeR_flag", "I", 1), ("FDER", "F", 2), ("SIGFDER", "Q", 2)]
    for label, kind, dataset in columns:
        mtz.add_column(label, kind, dataset_id=dataset)
    source = [base.column_with_label(lab).array for lab in ("FP", "SIGFP", "FreeR_flag", "FP", "SIGFP")]
    mtz.set_data(np.column_stack([base.make_miller_array(), *source]).astype(np.float32))
    native = [p * 1.003 for p in base.cell.parameters[:3]] + list(base.cell.parameters[3:])
    mtz.datasets[1].cell = gemmi.UnitCell(*native)        # measured a little apart from the global cell
    path = tmp_path / "datasets.mtz"
    mtz.write_to_file(str(path))
    data = read_reflections(path)
    assert data.cell.parameters == pytest.approx(native, abs=1e-3)
    assert any("FDER" in note for note in data.info["notes"])
    assert read_reflections(path, labels=["FDER", "SIGFDER"]).cell.a == pytest.approx(base.cell.a, abs=1e-3)


def test_friedel_mates_apart_are_refused_as_such(bundled, tmp_path):
    def friedel(tags, rows):
        mates = [[str(-int(v)) if t in ("index_h", "index_k", "index_l") else v
                  for t, v in zip(tags, r, strict=True)] for r in rows]
        return tags, rows + mates
    with pytest.raises(InputError, match="Friedel mates"):
        read_reflections(_edited_sf_cif(bundled, tmp_path, friedel, "friedel.cif"))

    def rotated(tags, rows):        # C2: (-h,k,-l) is the same reflection by a rotation, unmerged
        mates = [[str(-int(v)) if t in ("index_h", "index_l") else v for t, v in zip(tags, r, strict=True)]
                 for r in rows]
        return tags, rows + mates
    with pytest.raises(InputError, match="the data are not merged"):
        read_reflections(_edited_sf_cif(bundled, tmp_path, rotated, "unmerged.cif"))
