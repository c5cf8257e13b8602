"""Refinement on the engine: a shaken model goes back to where it was, the weight is chosen by R_free
and the run continues the chosen trial, and the overfitting alarm fires where the free set says so."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from refinekit.core import Status
from refinekit.xtal import prepare_refinement
from refinekit.xtal.api import WEIGHT_TRIAL_CYCLES, WEIGHT_TRIALS
from refinekit.xtal.io import read_model


def _shaken(bundled, tmp_path, rms=0.3, seed=5):
    st = read_model(bundled / "5wkd.pdb")
    rng = np.random.default_rng(seed)
    for cra in st[0].all():
        shift = rng.normal(0, rms / np.sqrt(3), 3)
        cra.atom.pos = cra.atom.pos + type(cra.atom.pos)(*shift)
    path = tmp_path / "shaken.pdb"
    st.write_pdb(str(path))
    return path


def _heavy_xyz(structure):
    return np.array([c.atom.pos.tolist() for c in structure[0].all() if not c.atom.is_hydrogen()])


@pytest.mark.parametrize("target", ["ml", "ls"])
def test_a_shaken_model_is_refined_back_towards_the_deposited_one(bundled, tmp_path, target):
    deposited = _heavy_xyz(read_model(bundled / "5wkd.pdb"))
    job = prepare_refinement(_shaken(bundled, tmp_path), bundled / "r5wkdsf.ent", target=target)
    start = _heavy_xyz(job.structure)
    result = job.run(cycles=12, weight=2.0, stop_on_overfit=False)
    end = _heavy_xyz(result.structure)
    before = np.sqrt(np.mean(np.sum((start - deposited) ** 2, axis=1)))
    after = np.sqrt(np.mean(np.sum((end - deposited) ** 2, axis=1)))
    # 370 reflections for 49 atoms: the data pull the atoms most of the way back, not all of it
    assert after < 0.75 * before and after < 0.22, (before, after)
    first, kept = result.history[0].figures, result.kept.figures
    assert kept["r_work"] < first["r_work"] - 0.05
    assert kept["bond_rmsd"] < 0.03 and kept["angle_rmsd"] < 3.0
    assert result.status.usable and result.weight == 2.0


def test_the_weight_is_chosen_by_r_free_and_the_chosen_trial_continues(bundled, tmp_path):
    job = prepare_refinement(_shaken(bundled, tmp_path), bundled / "r5wkdsf.ent")
    result = job.run(cycles=5)
    choice = result.weight_choice
    assert choice is not None and len(choice["trials"]) >= 3
    feasible = [t for t in choice["trials"] if t["feasible"]]
    if feasible:
        chosen = min(feasible, key=lambda t: t["free"])
    else:       # a shaken start may leave every short trial outside the geometry bounds
        assert "closest" in choice["message"]
        chosen = next(t for t in choice["trials"] if t["weight"] == result.weight)
    assert result.weight == chosen["weight"]
    # one history from cycle 0: the chosen trial's cycles, then the run that continued it; the trial
    # is scored by the lowest R_free of its cycles
    assert [r.cycle for r in result.history] == list(range(len(result.history)))
    assert len(result.history) == 6
    own = result.history[1: WEIGHT_TRIAL_CYCLES + 1]
    assert min(r.free for r in own) == pytest.approx(chosen["free"])
    assert sorted(t["weight"] for t in choice["trials"]) == sorted(WEIGHT_TRIALS)


def test_occupancies_of_partial_atoms_can_be_refined(bundled, tmp_path):
    job = prepare_refinement(bundled / "5wkd.pdb", bundled / "r5wkdsf.ent", occupancy=True)
    assert job.first_model.layout.n_occ >= 1          # the half-occupied water
    result = job.run(cycles=3, weight=2.0)
    occ = job.first_model.layout.occ(result.x)
    assert np.all((occ >= 0) & (occ <= 1)) and result.status.usable


def _conformer_sums(structure):
    sums: dict[tuple[str, str, str], float] = {}
    for cra in structure[0].all():
        if cra.atom.altloc != "\0" and not cra.atom.is_hydrogen():
            key = (cra.chain.name, str(cra.residue.seqid), cra.atom.name)
            sums[key] = sums.get(key, 0.0) + cra.atom.occ
    return sums


def test_occupancy_refinement_of_alternate_conformations_keeps_their_sums(xtal_data):
    # 3ZT9: residues in conformers A/B (0.41/0.59 ...) with riding hydrogens. Refined one by one, the
    # occupancies drifted off their sums of 1 and gemmi placed the hydrogens of the conformers anew
    # ("placing the riding hydrogens changed the number of atoms")
    entry = xtal_data / "3zt9"
    job = prepare_refinement(entry / "3zt9.cif.gz", entry / "r3zt9sf.ent.gz", monlib=xtal_data / "monomers",
                             occupancy=True, twin="none")
    model = job.first_model
    start = model.layout.occ(model.initial_parameters())
    result = job.run(cycles=3, weight=1.0)
    before, after = _conformer_sums(job.structure), _conformer_sums(result.structure)
    assert len(before) >= 15 and after.keys() == before.keys()
    assert max(abs(after[k] - before[k]) for k in before) < 1e-4
    occ = model.layout.occ(result.x)
    assert np.max(np.abs(occ - start)) > 0.005           # they were refined, not held
    # the atoms of one conformer of a residue move together
    groups = model.occ_constraints.group
    for g in np.unique(groups):
        assert np.ptp((occ - start)[groups == g]) < 1e-6
    assert result.status.usable and result.kept.figures["r_free"] < result.history[0].figures["r_free"]
    # its ANISOU records are made isotropic for the refinement, and the result says so
    assert any(a.kind == "model_input" and "anisotropic" in a.message for a in result.alarms)


def test_conformer_occupancies_are_projected_onto_their_sums_and_bounds():
    from refinekit.xtal.model import OCC_MIN, OccupancyConstraints

    st = gemmi.read_pdb_string(
        "ATOM      1  CA ASER A   1       1.000   1.000   1.000  0.40 10.00           C\n"
        "ATOM      2  CA BSER A   1       1.500   1.000   1.000  0.60 10.00           C\n"
        "HETATM    3  O   HOH A   2       5.000   5.000   5.000  0.50 10.00           O\n")
    cras = list(st[0].all())
    occ = np.array([c.atom.occ for c in cras])
    cons = OccupancyConstraints.of(cras, occ)
    # a step that would take A below zero: A stops at OCC_MIN, B takes the rest; the water is only clipped
    moved = cons.project(np.array([-0.2, 1.2, 1.3]))
    assert moved == pytest.approx([OCC_MIN, 1 - OCC_MIN, 1.0])
    step = cons.step(np.array([1.0, -2.0, 0.5]), np.array([1.0, 1.0, 1.0]))
    assert step[0] + step[1] == pytest.approx(0.0) and step[0] < 0 and step[2] == pytest.approx(-0.5)


def test_the_alarm_fires_on_1sar_and_the_deposited_model_is_kept(xtal_data):
    # 1SAR was refined against all these reflections: refinement can only fit their noise
    job = prepare_refinement(xtal_data / "1sar" / "1sar.pdb", xtal_data / "1sar" / "rnase18_Nat_Complexes.mtz",
                             monlib=xtal_data / "monomers")
    result = job.run(cycles=6, weight=3.0)
    assert result.status is Status.OVERFITTING
    kinds = [a.kind for a in result.alarms]
    assert kinds[0] == "biased_free_set" and "overfitting" in kinds
    free = [r.free for r in result.history]
    work = [r.work for r in result.history]
    assert free[-1] > free[0] + 0.01 and work[-1] < work[0]
    assert result.kept_cycle == result.best_cycle == int(np.argmin(free))


def test_the_result_carries_the_best_model(bundled):
    result = prepare_refinement(bundled / "5wkd.pdb", bundled / "r5wkdsf.ent").run(cycles=1, weight=2.0)
    assert result.x_best is not None and np.shape(result.x_best) == np.shape(result.x)


def test_no_cycles_scores_the_starting_model_and_says_no_weight_was_chosen(bundled):
    """With 0 cycles and no weight given, the report said "X-ray weight 1 (given)"."""
    result = prepare_refinement(bundled / "5wkd.pdb", bundled / "r5wkdsf.ent").run(cycles=0)
    assert result.n_cycles == 0 and len(result.history) == 1
    assert result.weight_choice["message"] == "not chosen: no cycles were run"
    assert "(given)" not in result.report() and "not chosen" in result.report()
