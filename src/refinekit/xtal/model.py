"""The atomic model under refinement: a gemmi structure, its topology from the monomer library, the
riding hydrogens, and the vector of refined parameters (coordinates and B-factors of non-hydrogen
atoms; optionally occupancies of partially occupied atoms).

Riding hydrogens are constrained, not refined: after every change of the heavy atoms gemmi places them
again from the dictionaries (``prepare_topology`` with ``ReAddButWater``), with their parent's B; their
scattering enters the structure factors and their derivatives are passed on to the parent atom.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import gemmi
import numpy as np

from ..core import InputError
from ..core.errors import first_line
from .restraints import GeometryRestraints
from .sfcalc import AtomArrays, form_factor_gaussians

B_MIN = 2.0
B_MAX = 300.0


@dataclass
class ParameterLayout:
    """Where each refined quantity sits in the parameter vector: ``3 * n`` coordinates, then ``n``
    B-factors, then ``n_occ`` occupancies (of the atoms ``occ_atoms``, indices into the heavy atoms)."""

    n: int
    n_occ: int = 0

    @property
    def size(self) -> int:
        return 4 * self.n + self.n_occ

    def xyz(self, x: np.ndarray) -> np.ndarray:
        return x[: 3 * self.n].reshape(self.n, 3)

    def b(self, x: np.ndarray) -> np.ndarray:
        return x[3 * self.n: 4 * self.n]

    def occ(self, x: np.ndarray) -> np.ndarray:
        return x[4 * self.n:]


#: refined occupancies stay at or above this: at zero gemmi drops the parent's riding hydrogens, and
#: the model would change its number of atoms under the optimiser
OCC_MIN = 0.01


@dataclass
class OccupancyConstraints:
    """How refined occupancies move together. The atoms of one conformer of a residue (same altloc)
    share one shift; where a residue has several conformers, their shifts sum to zero, so that the
    occupancies of the conformers of each atom keep their sum (1 in a usual model). A partially
    occupied atom without altloc is a group of its own, free."""

    group: np.ndarray       #: (n_occ,) the group of each refined occupancy
    group_site: np.ndarray  #: (n_groups,) the residue of each group
    atom_set: np.ndarray    #: (n_occ,) the conformers of one atom share a set
    set_sum: np.ndarray     #: (n_sets,) the occupancy sum each set keeps

    @classmethod
    def of(cls, cras: list[gemmi.CRA], occ: np.ndarray) -> OccupancyConstraints:
        groups: dict[tuple[object, ...], int] = {}
        sites: dict[tuple[object, ...], int] = {}
        sets: dict[tuple[object, ...], int] = {}
        group, atom_set, group_site = [], [], []
        for k, cra in enumerate(cras):
            residue = (cra.chain.name, str(cra.residue.seqid))
            if cra.atom.altloc == "\0":
                group_key: tuple[object, ...] = ("atom", k)
                site_key: tuple[object, ...] = ("atom", k)
            else:
                group_key, site_key = (*residue, cra.atom.altloc), residue
            if group_key not in groups:
                groups[group_key] = len(groups)
                group_site.append(sites.setdefault(site_key, len(sites)))
            group.append(groups[group_key])
            atom_set.append(sets.setdefault((*site_key, cra.atom.name), len(sets)))
        atom_set_arr = np.array(atom_set, dtype=np.int64)
        return cls(np.array(group, dtype=np.int64), np.array(group_site, dtype=np.int64), atom_set_arr,
                   np.bincount(atom_set_arr, weights=occ, minlength=len(sets)))

    def step(self, grad: np.ndarray, curvature: np.ndarray) -> np.ndarray:
        """The Newton step of the occupancies (gradient ``grad``, diagonal ``curvature``) within the
        constraints: per group G_g, H_g summed; the groups of a residue with several shift by
        -(G_g + lambda) / H_g, lambda making the shifts sum to zero."""
        if grad.size == 0:
            return np.zeros(0)
        g = np.bincount(self.group, weights=grad)
        h = np.maximum(np.bincount(self.group, weights=curvature), 1e-12)
        n_in_site = np.bincount(self.group_site)
        lam = -(np.bincount(self.group_site, weights=g / h) / np.bincount(self.group_site, weights=1.0 / h))
        lam = np.where(n_in_site > 1, lam, 0.0)[self.group_site]
        return (-(g + lam) / h)[self.group]

    def project(self, occ: np.ndarray) -> np.ndarray:
        """The nearest occupancies within [OCC_MIN, 1] whose sets keep their sums: each set's
        occupancies shifted alike (by bisection on the shift) and clipped."""
        if occ.size == 0:
            return occ.copy()
        n_sets = self.set_sum.size
        multi = (np.bincount(self.atom_set, minlength=n_sets) > 1)[self.atom_set]
        lo = np.full(n_sets, -1.0)
        hi = np.full(n_sets, 1.0)
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            moved = np.clip(occ + mid[self.atom_set], OCC_MIN, 1.0)
            above = np.bincount(self.atom_set, weights=moved, minlength=n_sets) > self.set_sum
            hi = np.where(above, mid, hi)
            lo = np.where(above, lo, mid)
        shift = np.where(multi, (0.5 * (lo + hi))[self.atom_set], 0.0)
        return np.clip(occ + shift, OCC_MIN, 1.0)


class AtomicModel:
    """A structure prepared for refinement (hydrogens placed, topology built, restraints indexed)."""

    def __init__(self, structure: gemmi.Structure, monlib: gemmi.MonLib, *, hydrogens: bool = True,
                 refine_occupancy: bool = False) -> None:
        st = structure.clone()
        st.remove_empty_chains()
        for cra in st[0].all():
            if cra.atom.aniso.nonzero():      # isotropic refinement: start from the equivalent B
                cra.atom.b_iso = float(cra.atom.b_eq()) if hasattr(cra.atom, "b_eq") else cra.atom.b_iso
                cra.atom.aniso = gemmi.SMat33f(0, 0, 0, 0, 0, 0)
        self.hydrogens = hydrogens
        if not hydrogens:
            st.remove_hydrogens()
        self.structure = st
        self.monlib = monlib
        self.warnings = io.StringIO()
        self.topo = self._prepare(st)
        self._refresh_atoms()
        heavy = ~self.is_h
        self.heavy = np.flatnonzero(heavy)
        self.n_heavy = int(self.heavy.size)
        self.parent = self._riding_parents()
        # parameter block of every atom: its own for heavy atoms, its parent's for riding hydrogens
        block = np.full(len(self.atoms), -1, dtype=np.int64)
        block[self.heavy] = np.arange(self.n_heavy)
        hyd = np.flatnonzero(self.is_h)
        block[hyd] = block[self.parent[hyd]]
        self.block = block
        heavy_occ = np.array([self.atoms[k].occ for k in self.heavy])
        # zero-occupancy atoms stay as they are: they mark unmodelled atoms, and gemmi drops the riding
        # hydrogens of a parent at zero occupancy
        self.occ_atoms = (np.flatnonzero((heavy_occ > 0.0) & (heavy_occ < 1.0)) if refine_occupancy
                          else np.zeros(0, dtype=np.int64))
        cras = list(self.structure[0].all())
        self.occ_constraints = OccupancyConstraints.of([cras[self.heavy[k]] for k in self.occ_atoms],
                                                       heavy_occ[self.occ_atoms])
        self.layout = ParameterLayout(self.n_heavy, int(self.occ_atoms.size))
        #: the parameters the structure holds now (None: as read)
        self.current_x: np.ndarray | None = None
        residues = [cra.residue for cra in st[0].all()]
        self.restraints = GeometryRestraints.from_topology(self.topo, self.atoms, monlib, residues,
                                                           skip=self.is_h)
        self.gauss_a, self.gauss_b = form_factor_gaussians([a.element for a in self.atoms])
        #: the structure as prepared (riding hydrogens placed, B-factors isotropic and not clipped to the
        #: refinement's bounds), before any parameters are put into it: the starting model as written
        self.initial_structure = st.clone()

    # ------------------------------------------------------------------------------ topology
    def _prepare(self, st: gemmi.Structure) -> gemmi.Topo:
        change = gemmi.HydrogenChange.ReAddButWater if self.hydrogens else gemmi.HydrogenChange.NoChange
        try:
            topo = gemmi.prepare_topology(st, self.monlib, h_change=change, warnings=self.warnings,
                                          ignore_unknown_links=True)
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"cannot build the restraints of the model ({first_line(exc)})") from None
        st.assign_serial_numbers()
        return topo

    def _refresh_atoms(self) -> None:
        self.atoms: list[gemmi.Atom] = [cra.atom for cra in self.structure[0].all()]
        self.is_h = np.array([a.is_hydrogen() for a in self.atoms], dtype=bool)

    def _riding_parents(self) -> np.ndarray:
        parent = np.full(len(self.atoms), -1, dtype=np.int64)
        for bond in self.topo.bonds:
            a, b = (at.serial - 1 for at in bond.atoms)
            if self.is_h[a] and not self.is_h[b]:
                parent[a] = b
            elif self.is_h[b] and not self.is_h[a]:
                parent[b] = a
        orphans = np.flatnonzero(self.is_h & (parent < 0))
        if orphans.size:
            names = ", ".join(self.atoms[k].name for k in orphans[:5])
            raise InputError(f"hydrogen atom(s) {names} are bonded to no heavy atom in the dictionaries")
        return parent

    # ---------------------------------------------------------------------------- parameters
    def initial_parameters(self) -> np.ndarray:
        xyz = np.array([self.atoms[k].pos.tolist() for k in self.heavy], dtype=float).reshape(-1, 3)
        b = np.array([self.atoms[k].b_iso for k in self.heavy], dtype=float)
        b = np.clip(b, B_MIN, B_MAX)
        occ = np.array([self.atoms[k].occ for k in self.heavy[self.occ_atoms]], dtype=float)
        return np.concatenate([xyz.ravel(), b, occ])

    def set_parameters(self, x: np.ndarray) -> None:
        """Put ``x`` into the structure and place the riding hydrogens again."""
        lay = self.layout
        self.current_x = np.array(x, dtype=float, copy=True)
        xyz, b, occ = lay.xyz(x), lay.b(x), lay.occ(x)
        for k, atom_index in enumerate(self.heavy):
            atom = self.atoms[atom_index]
            atom.pos = gemmi.Position(*xyz[k])
            atom.b_iso = float(b[k])
        for k, heavy_index in enumerate(self.occ_atoms):
            self.atoms[self.heavy[heavy_index]].occ = float(occ[k])
        if self.hydrogens and np.any(self.is_h):
            self.topo = self._prepare(self.structure)
            self._refresh_atoms()
            if len(self.atoms) != self.block.size:
                raise RuntimeError("placing the riding hydrogens changed the number of atoms")

    def atom_arrays(self) -> AtomArrays:
        xyz = np.array([a.pos.tolist() for a in self.atoms], dtype=float).reshape(-1, 3)
        b = np.array([a.b_iso for a in self.atoms], dtype=float)
        occ = np.array([a.occ for a in self.atoms], dtype=float)
        return AtomArrays(xyz, b, occ, self.gauss_a, self.gauss_b)

    def fold_gradient(self, g_xyz: np.ndarray, g_b: np.ndarray, g_occ: np.ndarray | None) -> np.ndarray:
        """Per-atom derivatives -> derivatives by the parameters (riding hydrogens pass theirs to the
        parent; a hydrogen's B follows its parent's)."""
        n = self.n_heavy
        px = np.zeros((n, 3))
        pb = np.zeros(n)
        np.add.at(px, self.block, g_xyz)
        np.add.at(pb, self.block, g_b)
        parts = [px.ravel(), pb]
        if self.layout.n_occ:
            occ_grad = np.zeros(self.layout.n_occ)
            if g_occ is not None:
                occ_grad = g_occ[self.heavy[self.occ_atoms]]
            parts.append(occ_grad)
        return np.concatenate(parts)

    def count(self) -> dict[str, int]:
        return {"atoms": len(self.atoms), "hydrogens": int(self.is_h.sum()), "refined_atoms": self.n_heavy,
                "refined_occupancies": int(self.layout.n_occ)}
