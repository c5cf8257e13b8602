"""Structure factors by FFT against gemmi's direct summation, and FFT gradients against finite
differences, in space groups with and without centring and centric zones."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from refinekit.xtal.io import read_model, read_reflections
from refinekit.xtal.sfcalc import AtomArrays, StructureFactorCalculator


@pytest.fixture(scope="module")
def peptide(bundled):
    st = read_model(bundled / "5wkd.pdb")
    data = read_reflections(bundled / "r5wkdsf.ent")
    return st, data


def test_fft_structure_factors_match_direct_summation(peptide):
    st, data = peptide
    calc = StructureFactorCalculator(data.cell, data.spacegroup, data.hkl, data.d_min, rate=1.25)
    fft = calc.atomic(st[0])
    direct = gemmi.StructureFactorCalculatorX(st.cell)
    exact = np.array([direct.calculate_sf_from_model(st[0], h) for h in data.hkl.tolist()])
    assert np.sum(np.abs(fft - exact)) / np.sum(np.abs(exact)) < 1e-3


@pytest.mark.parametrize(("spacegroup", "exact", "tol"), [("C 1 2 1", True, 0.01), ("P 1", True, 0.01),
                                                        ("C 1 2 1", False, 0.03)])
def test_fft_gradient_matches_finite_differences(peptide, spacegroup, exact, tol):
    """exact: the five IT92 Gaussians as the structure factors; otherwise the two-Gaussian fits the
    refinement uses (a few per cent of error, which a line search does not notice)."""
    st, data = peptide
    st = st.clone()
    hkl = data.hkl
    if spacegroup == "P 1":     # the same atoms and all their mates, with reflections in P1
        st.setup_cell_images()
        chain = gemmi.Chain("A")
        for k, image in enumerate([gemmi.FTransform(), *list(st.cell.images)]):
            for source in st[0]:
                for res in source:
                    copy = res.clone()
                    for atom in copy:
                        frac = image.apply(st.cell.fractionalize(atom.pos))
                        atom.pos = st.cell.orthogonalize(frac)
                    copy.seqid = gemmi.SeqId(1000 * k + res.seqid.num, " ")
                    chain.add_residue(copy)
        model = gemmi.Model("1")
        model.add_chain(chain)
        st.spacegroup_hm = "P 1"
        del st[0]
        st.add_model(model)
        ops = data.spacegroup.operations()
        p1 = gemmi.SpaceGroup("P 1")
        asu = gemmi.ReciprocalAsu(p1)
        mates = [asu.to_asu(op.apply_to_hkl(h), p1.operations())[0] for op in ops for h in data.hkl.tolist()]
        hkl = np.unique(np.array(mates), axis=0).astype(np.int32)
    sg = gemmi.SpaceGroup(spacegroup)
    calc = StructureFactorCalculator(st.cell, sg, hkl, data.d_min, rate=1.25, b_min=5.0)
    atoms = [cra.atom for cra in st[0].all()]
    fc0 = calc.atomic(st[0])
    rng = np.random.default_rng(1)
    # an amplitude target's derivative points along Fc (valid for centric reflections too)
    weights = rng.normal(size=fc0.size) * fc0 / np.abs(fc0)

    def target() -> float:
        return float(np.sum(np.real(np.conj(weights) * calc.atomic(st[0]))))

    def numeric(atom: gemmi.Atom, attr: str, h: float) -> float:
        """The central difference of the target in the atom's ``attr`` (b_iso, occ), step ``h``."""
        v0 = getattr(atom, attr)
        setattr(atom, attr, v0 + h)
        up = target()
        setattr(atom, attr, v0 - h)
        down = target()
        setattr(atom, attr, v0)
        return (up - down) / (2 * h)

    g_xyz, g_b, g_occ = calc.gradient(weights, AtomArrays.from_atoms(atoms), want_occ=True, exact=exact)
    for j in (0, 7, 20):
        atom = atoms[j]
        p0 = gemmi.Position(atom.pos.x, atom.pos.y, atom.pos.z)
        for axis in range(3):
            step = [0.0, 0.0, 0.0]
            step[axis] = 1e-3
            atom.pos = gemmi.Position(p0.x + step[0], p0.y + step[1], p0.z + step[2])
            up = target()
            atom.pos = gemmi.Position(p0.x - step[0], p0.y - step[1], p0.z - step[2])
            down = target()
            atom.pos = p0
            expected = (up - down) / 2e-3
            assert g_xyz[j, axis] == pytest.approx(expected, rel=tol, abs=tol * np.abs(g_xyz[j]).max())
        assert g_b[j] == pytest.approx(numeric(atom, "b_iso", 0.05), rel=max(tol, 0.02),
                                       abs=0.02 * np.abs(g_b).max())
        assert g_occ[j] == pytest.approx(numeric(atom, "occ", 0.01), rel=tol)
