"""The overfitting alarm on the real datasets (slow: a full refinement each; run with -m slow).

A reference program (servalcat, 10 cycles) lets R_free rise while R_work falls on 1sar, on 3zt9 and on
1l2h refined without its twin law; on rnase_model R_free falls from 0.293 to 0.191. The alarm must
fire where R_free rises and stay silent on rnase_model.

On 3zt9 refinekit's default run no longer lets R_free rise: the rise came from the atoms' B-factors
drifting against the overall scale (measured: with the scaling of before, R_free 0.1887 -> 0.1955 with
the drift, 0.1950 -> 0.1881 -> 0.1888 without it), which refinekit now prevents. There the alarm is
tested where 3zt9 does overfit, with a loose geometry weight, and the default run must end below the
best R_free servalcat passes through (0.1902).
"""

from __future__ import annotations

import pytest

from refinekit.core import Status
from refinekit.xtal import prepare_refinement

pytestmark = pytest.mark.slow


def _run(xtal_data, model, data, **options):
    job = prepare_refinement(xtal_data / model, xtal_data / data, monlib=xtal_data / "monomers",
                             twin=options.pop("twin", "auto"))
    return job.run(cycles=10, **options)


def test_alarm_is_silent_on_rnase_model_whose_r_free_falls(xtal_data):
    res = _run(xtal_data, "1sar/rnase_model.pdb", "1sar/rnase18_Nat_Complexes.mtz")
    assert not res.alarms and res.status is not Status.OVERFITTING
    free = [r.free for r in res.history]
    assert free[0] > 0.28 and min(free) < 0.20 and res.kept.figures["bond_rmsd"] < 0.02


@pytest.mark.parametrize(("model", "data", "twin", "weight"), [
    ("3zt9/3zt9.cif.gz", "3zt9/r3zt9sf.ent.gz", "auto", 16.0),
    ("1l2h/1l2h.cif.gz", "1l2h/1l2h.mtz.gz", "none", None),
    ("1sar/1sar.pdb", "1sar/rnase18_Nat_Complexes.mtz", "auto", None),
])
def test_alarm_fires_where_r_free_rises_and_the_best_model_is_kept(xtal_data, model, data, twin, weight):
    res = _run(xtal_data, model, data, twin=twin, weight=weight)
    assert res.status is Status.OVERFITTING and any(a.kind == "overfitting" for a in res.alarms)
    assert res.kept_cycle == res.best_cycle
    assert res.kept.free == min(r.free for r in res.history)
    assert res.history[-1].free > res.kept.free and res.history[-1].work < res.kept.work


def test_3zt9_ends_below_the_best_r_free_of_the_reference_program(xtal_data):
    res = _run(xtal_data, "3zt9/3zt9.cif.gz", "3zt9/r3zt9sf.ent.gz")
    assert res.status.usable and res.kept.free < 0.1902
    assert res.kept.free <= min(r.free for r in res.history) + 0.002


def test_twin_refinement_of_1l2h_beats_refinement_without_the_law(xtal_data):
    res = _run(xtal_data, "1l2h/1l2h.cif.gz", "1l2h/1l2h.mtz.gz")
    assert res.twin["law"] == "-h,k,-l" and 0.25 < res.twin["fraction"] < 0.45
    assert res.kept.figures["r_free"] < 0.20 and res.kept.figures["r_work"] < 0.16
