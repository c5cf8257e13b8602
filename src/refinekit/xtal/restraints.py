"""Stereochemical restraints from the monomer library, vectorised: bonds, angles, torsions, chirality,
planes, non-bonded repulsion (with symmetry mates) and B-factor similarity of bonded atoms.

Every term is a squared, sigma-scaled deviation ``((value - ideal) / sigma)^2`` (so a model that fits its
dictionary has a penalty near one per restraint), with its exact gradient and its Gauss-Newton
curvature ``J^T J / sigma^2`` assembled as a sparse matrix for the correction step. gemmi builds the
topology (which restraints apply to which atoms); refinekit evaluates them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import gemmi
import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

#: refmac's defaults: sigma of chiral volumes (Å^3) and of non-bonded repulsion (Å)
CHIRAL_SIGMA = 0.2
NONBONDED_SIGMA = 0.2
#: sigma of B differences between bonded atoms (Å^2) and between atoms two bonds apart
ADP_SIGMA_BOND = 2.0
ADP_SIGMA_ANGLE = 3.0
#: torsions that refmac leaves out by default: the backbone's phi and psi, and ring constants (sigma 0)
_SKIPPED_TORSIONS = ("phi", "psi")
NONBONDED_CUTOFF = 4.0
#: the contact radius of an explicit hydrogen (ener_lib's 1.2 Å flags most 1-5 contacts of a
#: well-refined model as clashes)
HYDROGEN_RADIUS = 1.0


@dataclass
class Evaluation:
    """Penalty, gradient (per atom, Cartesian, and per B) and optionally the Gauss-Newton matrix."""

    value: float
    grad_xyz: np.ndarray
    grad_b: np.ndarray
    hessian_xyz: sparse.csr_matrix | None = None
    hessian_b: sparse.csr_matrix | None = None
    parts: dict[str, float] = field(default_factory=dict)


@dataclass
class NonbondedPairs:
    """Atom pairs closer than the cutoff, with the symmetry operation (Cartesian rotation, translation)
    that brings ``j`` next to ``i``; ``weight`` is 1/2 for pairs found from both ends."""

    i: np.ndarray
    j: np.ndarray
    rot: np.ndarray
    trans: np.ndarray
    d_min: np.ndarray
    weight: np.ndarray


class GeometryRestraints:
    """The restraints of one model, as index arrays into its atom list.

    Built from a gemmi topology by :meth:`from_topology`; atoms whose index is in ``skip`` (riding
    hydrogens) are left out of every term except non-bonded contacts.
    """

    def __init__(self, n_atoms: int) -> None:
        self.n_atoms = n_atoms
        empty2 = np.zeros((0, 2), dtype=np.int64)
        self.bond_idx, self.bond_ideal, self.bond_sigma = empty2, np.zeros(0), np.zeros(0)
        self.angle_idx = np.zeros((0, 3), np.int64)
        self.angle_ideal, self.angle_sigma = np.zeros(0), np.zeros(0)
        self.tors_idx = np.zeros((0, 4), np.int64)
        self.tors_ideal, self.tors_sigma, self.tors_period = np.zeros(0), np.zeros(0), np.zeros(0)
        self.chir_idx, self.chir_ideal = np.zeros((0, 4), np.int64), np.zeros(0)
        self.chir_both = np.zeros(0, dtype=bool)
        self.planes: list[tuple[np.ndarray, np.ndarray]] = []     # (idx (m, k), sigma (m,)) per size k
        self.adp_idx, self.adp_sigma = empty2, np.zeros(0)
        self.vdw_radius = np.full(n_atoms, 1.6)
        self.ion_radius = np.full(n_atoms, np.nan)
        self.hbond_role = np.zeros(n_atoms, dtype=np.int8)         # bit 1 donor, bit 2 acceptor, 4 H on donor
        self.is_metal = np.zeros(n_atoms, dtype=bool)
        self.altloc = np.zeros(n_atoms, dtype="U1")
        self.excluded_keys = np.zeros(0, dtype=np.int64)            # i * n + j of 1-2 and 1-3 pairs
        self.one_four_keys = np.zeros(0, dtype=np.int64)
        self.torsion_increment = np.full(n_atoms, -0.15)
        self.nonbonded: NonbondedPairs | None = None
        self.weights = {"bond": 1.0, "angle": 1.0, "torsion": 1.0, "chiral": 1.0, "plane": 1.0,
                        "nonbonded": 1.0}
        self._hessian_cache: dict = {}      # where the topology's terms land in the Gauss-Newton matrix

    # ------------------------------------------------------------------------------ building
    @classmethod
    def from_topology(cls, topo: gemmi.Topo, atoms: list[gemmi.Atom], monlib: gemmi.MonLib,
                      residues: list[gemmi.Residue], skip: np.ndarray | None = None) -> GeometryRestraints:
        """Index arrays for every restraint of ``topo``; ``atoms[k].serial == k + 1`` must hold."""
        n = len(atoms)
        self = cls(n)
        skip = np.zeros(n, dtype=bool) if skip is None else np.asarray(skip, dtype=bool)

        def index(atom_list: list[gemmi.Atom]) -> list[int] | None:
            out = [a.serial - 1 for a in atom_list]
            return None if any(skip[k] for k in out) else out

        bonds, bond_ideal, bond_sigma, graph = [], [], [], [set() for _ in range(n)]
        for b in topo.bonds:
            pair = [a.serial - 1 for a in b.atoms]
            graph[pair[0]].add(pair[1])
            graph[pair[1]].add(pair[0])
            if b.restr.esd > 0 and not (skip[pair[0]] or skip[pair[1]]):
                bonds.append(pair)
                bond_ideal.append(b.restr.value)
                bond_sigma.append(b.restr.esd)
        self.bond_idx = np.array(bonds, dtype=np.int64).reshape(-1, 2)
        self.bond_ideal, self.bond_sigma = np.array(bond_ideal), np.array(bond_sigma)

        angles, ang_ideal, ang_sigma = [], [], []
        for a in topo.angles:
            idx = index(a.atoms)
            if idx is not None and a.restr.esd > 0:
                angles.append(idx)
                ang_ideal.append(math.radians(a.restr.value))
                ang_sigma.append(math.radians(a.restr.esd))
        self.angle_idx = np.array(angles, dtype=np.int64).reshape(-1, 3)
        self.angle_ideal, self.angle_sigma = np.array(ang_ideal), np.array(ang_sigma)

        tors, t_ideal, t_sigma, t_period = [], [], [], []
        for t in topo.torsions:
            label = t.restr.label.lower()
            if t.restr.esd <= 0 or label.startswith(_SKIPPED_TORSIONS):
                continue
            idx = index(t.atoms)
            if idx is None:
                continue
            tors.append(idx)
            t_ideal.append(math.radians(t.restr.value))
            t_sigma.append(math.radians(t.restr.esd))
            t_period.append(max(int(t.restr.period), 1))
        self.tors_idx = np.array(tors, dtype=np.int64).reshape(-1, 4)
        self.tors_ideal, self.tors_sigma = np.array(t_ideal), np.array(t_sigma)
        self.tors_period = np.array(t_period, dtype=float)

        chirs, c_ideal, c_both = [], [], []
        for c in topo.chirs:
            idx = index(c.atoms)
            if idx is None:
                continue
            volume = topo.ideal_chiral_abs_volume(c)
            sign = c.restr.sign
            chirs.append(idx)
            c_both.append(sign == gemmi.ChiralityType.Both)
            c_ideal.append(-volume if sign == gemmi.ChiralityType.Negative else volume)
        self.chir_idx = np.array(chirs, dtype=np.int64).reshape(-1, 4)
        self.chir_ideal, self.chir_both = np.array(c_ideal), np.array(c_both, dtype=bool)

        by_size: dict[int, tuple[list[list[int]], list[float]]] = {}
        for p in topo.planes:
            members = [a.serial - 1 for a in p.atoms if not skip[a.serial - 1]]
            if len(members) >= 4 and p.restr.esd > 0:
                rows, sig = by_size.setdefault(len(members), ([], []))
                rows.append(members)
                sig.append(p.restr.esd)
        self.planes = [(np.array(rows, dtype=np.int64), np.array(sig)) for rows, sig in by_size.values()]

        # pairs the non-bonded term leaves to the bonded ones (1-2 and 1-3), and the 1-4 pairs, which
        # may come closer than other contacts
        excluded, one_four = [], []
        for i in range(n):
            first = graph[i]
            second = set().union(*(graph[k] for k in first)) - {i} if first else set()
            third = set().union(*(graph[k] for k in second)) - first - second - {i} if second else set()
            excluded += [i * n + j for j in first | second if j > i]
            one_four += [i * n + j for j in third if j > i]
        self.excluded_keys = np.unique(np.array(excluded, dtype=np.int64))
        self.one_four_keys = np.unique(np.array(one_four, dtype=np.int64))

        # B similarity: heavy atoms one and two bonds apart
        adp_pairs, adp_sigma = [], []
        for i, j in self.bond_idx:
            adp_pairs.append((i, j))
            adp_sigma.append(ADP_SIGMA_BOND)
        for i, _, k in self.angle_idx:
            adp_pairs.append((i, k))
            adp_sigma.append(ADP_SIGMA_ANGLE)
        self.adp_idx = np.array(adp_pairs, dtype=np.int64).reshape(-1, 2)
        self.adp_sigma = np.array(adp_sigma)

        self._set_contact_types(topo, atoms, monlib, residues)
        # a hydrogen can H-bond when its parent is a donor
        for k in range(n):
            if atoms[k].is_hydrogen():
                parents = [p for p in graph[k] if not atoms[p].is_hydrogen()]
                donor = bool(parents) and (self.hbond_role[parents[0]] & 1) > 0
                self.hbond_role[k] = 4 if donor else 0
                self.vdw_radius[k] = HYDROGEN_RADIUS
        return self

    def _set_contact_types(self, topo: gemmi.Topo, atoms: list[gemmi.Atom], monlib: gemmi.MonLib,
                           residues: list[gemmi.Residue]) -> None:
        ener = monlib.ener_lib.atoms
        types: dict[int, str] = {}
        for chain_info in topo.chain_infos:
            for res_info in chain_info.res_infos:
                res = res_info.res
                by_name: dict[str, str] = {}
                for altloc in {a.altloc for a in res} or {"\0"}:
                    try:
                        cc = res_info.get_final_chemcomp(altloc)
                    except (RuntimeError, ValueError):
                        continue
                    by_name.update({ca.id: ca.chem_type for ca in cc.atoms})
                for atom in res:
                    if atom.name in by_name:
                        types[atom.serial - 1] = by_name[atom.name]
        increments = {"O": -0.1, "N": -0.1, "C": -0.15}
        for k, atom in enumerate(atoms):
            self.altloc[k] = atom.altloc if atom.altloc != "\0" else ""
            self.is_metal[k] = atom.element.is_metal
            self.torsion_increment[k] = increments.get(atom.element.name, -0.15)
            chem = types.get(k)
            entry = ener[chem] if chem is not None and chem in ener else None
            if entry is not None and math.isfinite(entry.vdw_radius):
                # explicit hydrogens: the radius without them (vdwh_radius is for united atoms)
                radius = entry.vdw_radius
                hb = entry.hb_type
                self.ion_radius[k] = entry.ion_radius
            else:
                radius = atom.element.vdw_r
                hb = "N"
            self.vdw_radius[k] = radius
            self.hbond_role[k] = {"D": 1, "A": 2, "B": 3, "H": 4}.get(str(hb), 0)

    # ------------------------------------------------------------------------- contact list
    def update_contacts(self, xyz: np.ndarray, cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup,
                        cutoff: float = NONBONDED_CUTOFF) -> None:
        """Find the atom pairs (with symmetry mates) within ``cutoff``, less bonded ones; their
        minimum distances follow refmac's rules in spirit: vdW radii, less for H-bonds and metals."""
        self.nonbonded = find_contacts(xyz, cell, spacegroup, cutoff, self)
        self._contacts_xyz = np.array(xyz, dtype=float, copy=True)
        self._contacts_cutoff = float(cutoff)

    def contacts_valid_for(self, xyz: np.ndarray) -> bool:
        """True when the pairs found last still hold every pair that can be inside its minimum distance
        at ``xyz``: a pair left out was farther apart than the cutoff, and it takes each atom moving by
        half the gap between the cutoff and the largest minimum distance to close that."""
        ref = getattr(self, "_contacts_xyz", None)
        if ref is None or ref.shape != xyz.shape or self.nonbonded is None:
            return False
        slack = 0.5 * (self._contacts_cutoff - self.max_minimum_distance())
        if slack <= 0:
            return bool(np.array_equal(ref, xyz))
        moved2 = np.einsum("ij,ij->i", xyz - ref, xyz - ref)
        return bool(moved2.max(initial=0.0) < slack * slack)

    def max_minimum_distance(self) -> float:
        """The largest minimum distance any pair can have (two of the largest radii)."""
        if not hasattr(self, "_max_dmin"):
            radius = float(self.vdw_radius.max(initial=0.0))
            ionic = self.ion_radius[np.isfinite(self.ion_radius)]
            self._max_dmin = max(2.0 * radius, 2.0 * float(ionic.max(initial=0.0)))
        return self._max_dmin

    # ---------------------------------------------------------------------------- evaluation
    def evaluate(self, xyz: np.ndarray, b_iso: np.ndarray, *, adp_weight: float = 1.0,
                 with_hessian: bool = False, param_of_atom: np.ndarray | None = None,
                 n_params: int | None = None) -> Evaluation:
        """Total penalty, gradient and (optionally) Gauss-Newton matrices.

        The matrices are in parameter space: atom ``k`` moves parameter block ``param_of_atom[k]``
        (a riding hydrogen moves with its parent); ``n_params`` blocks in all.
        """
        n = self.n_atoms
        grad = np.zeros((n, 3))
        terms: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []   # (atom idx (m,k), J (m,k,3), w (m,))
        parts: dict[str, float] = {}
        w = self.weights

        _value, dist, unit = _bond_terms(xyz, self.bond_idx)
        if self.bond_idx.size:
            z = (dist - self.bond_ideal) / self.bond_sigma
            parts["bond"] = w["bond"] * float(z @ z)
            coef = w["bond"] * 2 * z / self.bond_sigma
            np.add.at(grad, self.bond_idx[:, 0], coef[:, None] * unit)
            np.add.at(grad, self.bond_idx[:, 1], -coef[:, None] * unit)
            if with_hessian:
                terms.append((self.bond_idx, np.stack([unit, -unit], axis=1), w["bond"] / self.bond_sigma**2))

        if self.angle_idx.size:
            theta, jac = _angle_terms(xyz, self.angle_idx)
            z = (theta - self.angle_ideal) / self.angle_sigma
            parts["angle"] = w["angle"] * float(z @ z)
            coef = w["angle"] * 2 * z / self.angle_sigma
            for k in range(3):
                np.add.at(grad, self.angle_idx[:, k], coef[:, None] * jac[:, k])
            if with_hessian:
                terms.append((self.angle_idx, jac, w["angle"] / self.angle_sigma**2))

        if self.tors_idx.size:
            phi, jac = _torsion_terms(xyz, self.tors_idx)
            delta = _periodic_deviation(phi, self.tors_ideal, self.tors_period)
            z = delta / self.tors_sigma
            parts["torsion"] = w["torsion"] * float(z @ z)
            coef = w["torsion"] * 2 * z / self.tors_sigma
            for k in range(4):
                np.add.at(grad, self.tors_idx[:, k], coef[:, None] * jac[:, k])
            if with_hessian:
                terms.append((self.tors_idx, jac, w["torsion"] / self.tors_sigma**2))

        if self.chir_idx.size:
            vol, jac = _chiral_terms(xyz, self.chir_idx)
            target = np.where(self.chir_both, np.sign(vol) * np.abs(self.chir_ideal), self.chir_ideal)
            z = (vol - target) / CHIRAL_SIGMA
            parts["chiral"] = w["chiral"] * float(z @ z)
            coef = w["chiral"] * 2 * z / CHIRAL_SIGMA
            for k in range(4):
                np.add.at(grad, self.chir_idx[:, k], coef[:, None] * jac[:, k])
            if with_hessian:
                terms.append((self.chir_idx, jac, np.full(len(z), w["chiral"] / CHIRAL_SIGMA**2)))

        plane_value = 0.0
        for idx, sigma in self.planes:
            dev, normal = _plane_terms(xyz, idx)
            z = dev / sigma[:, None]
            plane_value += float(np.sum(z * z))
            coef = w["plane"] * 2 * z / sigma[:, None]
            np.add.at(grad, idx.ravel(), (coef[:, :, None] * normal[:, None, :]).reshape(-1, 3))
            if with_hessian:
                # atom i's distance from the plane moves with every atom k of the group along the
                # normal, by (delta_ik - 1/n): the centroid moves too (the normal's turn adds nothing
                # at the best plane)
                m, k = idx.shape
                mix = np.eye(k)[None, :, :] - 1.0 / k                                # (1, i, k)
                jac = mix[:, :, :, None] * normal[:, None, None, :]                  # (m, i, k, 3)
                terms.append((np.repeat(idx, k, axis=0), jac.reshape(m * k, k, 3),
                              np.repeat(w["plane"] / sigma**2, k)))
        if self.planes:
            parts["plane"] = w["plane"] * plane_value

        n_fixed = len(terms)            # the topology's terms, then the contacts of the moment
        nb = self.nonbonded
        if nb is not None and nb.i.size:
            diff = xyz[nb.i] - (np.einsum("mab,mb->ma", nb.rot, xyz[nb.j]) + nb.trans)
            dist = np.sqrt(np.einsum("ma,ma->m", diff, diff))
            short = dist < nb.d_min
            if np.any(short):
                s = np.flatnonzero(short)
                unit = diff[s] / np.maximum(dist[s], 1e-6)[:, None]
                z = (dist[s] - nb.d_min[s]) / NONBONDED_SIGMA
                wt = w["nonbonded"] * nb.weight[s]
                parts["nonbonded"] = float(np.sum(wt * z * z))
                coef = wt * 2 * z / NONBONDED_SIGMA
                np.add.at(grad, nb.i[s], coef[:, None] * unit)
                # d|x_i - (R x_j + t)| / dx_j = -R^T u
                back = -np.einsum("mba,mb->ma", nb.rot[s], unit)
                np.add.at(grad, nb.j[s], coef[:, None] * back)
                if with_hessian:
                    terms.append((np.stack([nb.i[s], nb.j[s]], axis=1), np.stack([unit, back], axis=1),
                                  wt / NONBONDED_SIGMA**2))
            else:
                parts["nonbonded"] = 0.0

        grad_b = np.zeros(n)
        hess_b = None
        if self.adp_idx.size and adp_weight > 0:
            diff_b = b_iso[self.adp_idx[:, 0]] - b_iso[self.adp_idx[:, 1]]
            z = diff_b / self.adp_sigma
            parts["adp"] = adp_weight * float(z @ z)
            coef = adp_weight * 2 * z / self.adp_sigma
            np.add.at(grad_b, self.adp_idx[:, 0], coef)
            np.add.at(grad_b, self.adp_idx[:, 1], -coef)
            if with_hessian:
                key = (adp_weight, id(param_of_atom), n_params or n)
                cached = self._hessian_cache.get("adp")
                if cached is None or cached[0] != key:
                    cached = (key, _assemble_b_hessian(self.adp_idx, adp_weight / self.adp_sigma**2,
                                                       param_of_atom, n_params or n))
                    self._hessian_cache["adp"] = cached
                hess_b = cached[1]
        hess = (_assemble_hessian(terms, param_of_atom, n_params or n, fixed=n_fixed,
                                  cache=self._hessian_cache) if with_hessian else None)
        total = float(sum(parts.values()))
        return Evaluation(total, grad, grad_b, hess, hess_b, parts)

    # ---------------------------------------------------------------------------- statistics
    def statistics(self, xyz: np.ndarray) -> dict[str, float]:
        """RMS deviations from ideal (bonds Å, angles degrees, chiral volumes Å^3, planes Å) and RMS Z."""
        out: dict[str, float] = {}
        if self.bond_idx.size:
            _, dist, _ = _bond_terms(xyz, self.bond_idx)
            dev = dist - self.bond_ideal
            out["bond_rmsd"] = _rms(dev)
            out["bond_rmsz"] = _rms(dev / self.bond_sigma)
        if self.angle_idx.size:
            theta, _ = _angle_terms(xyz, self.angle_idx, with_jacobian=False)
            dev = theta - self.angle_ideal
            out["angle_rmsd"] = math.degrees(_rms(dev))
            out["angle_rmsz"] = _rms(dev / self.angle_sigma)
        if self.tors_idx.size:
            phi, _ = _torsion_terms(xyz, self.tors_idx, with_jacobian=False)
            dev = _periodic_deviation(phi, self.tors_ideal, self.tors_period)
            out["torsion_rmsz"] = _rms(dev / self.tors_sigma)
        if self.chir_idx.size:
            vol, _ = _chiral_terms(xyz, self.chir_idx, with_jacobian=False)
            target = np.where(self.chir_both, np.sign(vol) * np.abs(self.chir_ideal), self.chir_ideal)
            out["chiral_rmsd"] = _rms(vol - target)
        if self.planes:
            devs = np.concatenate([_plane_terms(xyz, idx)[0].ravel() for idx, _ in self.planes])
            out["plane_rmsd"] = _rms(devs)
        nb = self.nonbonded
        if nb is not None:
            diff = xyz[nb.i] - (np.einsum("mab,mb->ma", nb.rot, xyz[nb.j]) + nb.trans)
            dist = np.sqrt(np.einsum("ma,ma->m", diff, diff))
            # a clash: 0.4 Å inside the allowed distance (MolProbity's threshold), counted once
            out["clashes"] = float(np.sum(nb.weight * (dist < nb.d_min - 0.4)))
        return out


# --------------------------------------------------------------------------------- geometry
def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values**2))) if values.size else 0.0


def _bond_terms(xyz: np.ndarray, idx: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    if idx.size == 0:
        return 0.0, np.zeros(0), np.zeros((0, 3))
    diff = xyz[idx[:, 0]] - xyz[idx[:, 1]]
    dist = np.sqrt(np.einsum("ma,ma->m", diff, diff))
    return 0.0, dist, diff / np.maximum(dist, 1e-9)[:, None]


def _angle_terms(xyz: np.ndarray, idx: np.ndarray, with_jacobian: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Angles at the middle atom and d(angle)/d(x) for the three atoms (m, 3, 3)."""
    u = xyz[idx[:, 0]] - xyz[idx[:, 1]]
    v = xyz[idx[:, 2]] - xyz[idx[:, 1]]
    lu = np.maximum(np.linalg.norm(u, axis=1), 1e-9)
    lv = np.maximum(np.linalg.norm(v, axis=1), 1e-9)
    uh, vh = u / lu[:, None], v / lv[:, None]
    cos = np.clip(np.einsum("ma,ma->m", uh, vh), -1.0, 1.0)
    theta = np.arccos(cos)
    if not with_jacobian:
        return theta, np.zeros((0, 3, 3))
    sin = np.maximum(np.sqrt(1.0 - cos**2), 1e-6)
    d0 = -(vh - cos[:, None] * uh) / (lu * sin)[:, None]
    d2 = -(uh - cos[:, None] * vh) / (lv * sin)[:, None]
    return theta, np.stack([d0, -(d0 + d2), d2], axis=1)


def _torsion_terms(xyz: np.ndarray, idx: np.ndarray, with_jacobian: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Dihedral angles (IUPAC sign) and their derivatives (Blondel & Karplus 1996), (m, 4, 3)."""
    p0, p1, p2, p3 = (xyz[idx[:, k]] for k in range(4))
    f = p0 - p1
    g = p1 - p2
    h = p3 - p2
    a = np.cross(f, g)
    b = np.cross(h, g)
    lg = np.maximum(np.linalg.norm(g, axis=1), 1e-9)
    a2 = np.maximum(np.einsum("ma,ma->m", a, a), 1e-12)
    b2 = np.maximum(np.einsum("ma,ma->m", b, b), 1e-12)
    y = np.einsum("ma,ma->m", np.cross(b, a), g) / lg
    x = np.einsum("ma,ma->m", a, b)
    phi = np.arctan2(y, x)
    if not with_jacobian:
        return phi, np.zeros((0, 4, 3))
    fg = np.einsum("ma,ma->m", f, g)
    hg = np.einsum("ma,ma->m", h, g)
    d0 = -(lg / a2)[:, None] * a
    d3 = (lg / b2)[:, None] * b
    d1 = -d0 + (fg / (a2 * lg))[:, None] * a - (hg / (b2 * lg))[:, None] * b
    d2 = -d3 - (fg / (a2 * lg))[:, None] * a + (hg / (b2 * lg))[:, None] * b
    return phi, np.stack([d0, d1, d2, d3], axis=1)


def _periodic_deviation(phi: np.ndarray, ideal: np.ndarray, period: np.ndarray) -> np.ndarray:
    """phi - ideal folded into (-pi/period, pi/period]: any of ``period`` minima counts."""
    span = 2.0 * math.pi / period
    return np.mod(phi - ideal + 0.5 * span, span) - 0.5 * span


def _chiral_terms(xyz: np.ndarray, idx: np.ndarray, with_jacobian: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Signed chiral volumes (a1-c) . ((a2-c) x (a3-c)) and their derivatives (m, 4, 3)."""
    c = xyz[idx[:, 0]]
    a1, a2, a3 = (xyz[idx[:, k]] - c for k in (1, 2, 3))
    vol = np.einsum("ma,ma->m", a1, np.cross(a2, a3))
    if not with_jacobian:
        return vol, np.zeros((0, 4, 3))
    d1 = np.cross(a2, a3)
    d2 = np.cross(a3, a1)
    d3 = np.cross(a1, a2)
    return vol, np.stack([-(d1 + d2 + d3), d1, d2, d3], axis=1)


def _plane_terms(xyz: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed distances of each atom from its group's least-squares plane (m, k), and the normals."""
    pts = xyz[idx]                                        # (m, k, 3)
    centred = pts - pts.mean(axis=1, keepdims=True)
    cov = np.einsum("mka,mkb->mab", centred, centred)
    _, vecs = np.linalg.eigh(cov)
    normal = vecs[:, :, 0]                                # the smallest eigenvalue's vector
    return np.einsum("mka,ma->mk", centred, normal), normal


def _assemble_hessian(terms: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                      param_of_atom: np.ndarray | None, n_blocks: int,
                      fixed: int = 0, cache: dict | None = None) -> sparse.csr_matrix:
    """Sum of 2 w J^T J over all terms (the Gauss-Newton part of the Hessian of w z^2, z = J dx), as a
    (3 n_blocks)^2 sparse matrix. The first ``fixed`` terms always involve the same atoms (the
    topology's): with a ``cache``, where their entries land in the matrix is worked out once."""
    size = 3 * n_blocks
    rows, vals = [], []
    for idx, jac, weight in terms:
        blocks = idx if param_of_atom is None else param_of_atom[idx]        # (m, k)
        m, k = blocks.shape
        r = (3 * blocks[:, :, None] + np.arange(3)[None, None, :]).reshape(m, 3 * k)
        jflat = jac.reshape(m, 3 * k)
        keep = np.all(blocks >= 0, axis=1)
        r, jflat, wt = r[keep], jflat[keep], weight[keep]
        rows.append(r)
        vals.append((2.0 * wt[:, None, None] * jflat[:, :, None] * jflat[:, None, :]).ravel())
    if not rows:
        return sparse.csr_matrix((size, size))
    out = None
    if cache is not None and fixed:
        shape_key = (n_blocks, tuple(r.shape for r in rows[:fixed]),
                     id(param_of_atom) if param_of_atom is not None else None)
        layout = cache.get("layout")
        if layout is None or layout[0] != shape_key:
            r_all = np.concatenate([np.repeat(r, r.shape[1], axis=1).ravel() for r in rows[:fixed]])
            c_all = np.concatenate([np.tile(r, (1, r.shape[1])).ravel() for r in rows[:fixed]])
            unique, inverse = np.unique(r_all * size + c_all, return_inverse=True)
            indptr = np.searchsorted(unique // size, np.arange(size + 1)).astype(np.int64)
            layout = (shape_key, inverse.reshape(-1), (unique % size).astype(np.int64), indptr)
            cache["layout"] = layout
        _, inverse, indices, indptr = layout
        data = np.bincount(inverse, weights=np.concatenate(vals[:fixed]), minlength=indices.size)
        out = sparse.csr_matrix((data, indices, indptr), shape=(size, size))
        rows, vals = rows[fixed:], vals[fixed:]
    if rows:
        rest = sparse.coo_matrix(
            (np.concatenate(vals), (np.concatenate([np.repeat(r, r.shape[1], axis=1).ravel() for r in rows]),
                                    np.concatenate([np.tile(r, (1, r.shape[1])).ravel() for r in rows]))),
            shape=(size, size)).tocsr()
        out = rest if out is None else out + rest
    return out


def _assemble_b_hessian(idx: np.ndarray, weight: np.ndarray, param_of_atom: np.ndarray | None,
                        n_blocks: int) -> sparse.csr_matrix:
    blocks = idx if param_of_atom is None else param_of_atom[idx]
    keep = np.all(blocks >= 0, axis=1)
    i, j, wt = blocks[keep, 0], blocks[keep, 1], 2.0 * weight[keep]
    rows = np.concatenate([i, j, i, j])
    cols = np.concatenate([i, j, j, i])
    vals = np.concatenate([wt, wt, -wt, -wt])
    return sparse.coo_matrix((vals, (rows, cols)), shape=(n_blocks, n_blocks)).tocsr()


# --------------------------------------------------------------------------------- contacts
def find_contacts(xyz: np.ndarray, cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup, cutoff: float,
                  restraints: GeometryRestraints) -> NonbondedPairs:
    """Non-bonded pairs within ``cutoff``, symmetry mates included, with their minimum distances.

    Every symmetry copy of the model (each operation, each lattice translation that can bring a copy
    within reach) is one block of points; one k-d tree query against the model finds all pairs.
    """
    n = xyz.shape[0]
    orth = np.array(cell.orth.mat.tolist())
    frac_m = np.array(cell.frac.mat.tolist())
    frac = xyz @ frac_m.T
    lo = xyz.min(axis=0) - cutoff
    hi = xyz.max(axis=0) + cutoff
    # how far (in cell fractions) the cutoff reaches along each axis
    reach = cutoff * np.linalg.norm(frac_m, axis=1)
    f_lo, f_hi = frac.min(axis=0) - reach, frac.max(axis=0) + reach
    points, owners, ops_r, ops_t = [], [], [], []
    for op in spacegroup.operations():
        rot_f = np.array(op.rot, dtype=float) / op.DEN
        tran_f = np.array(op.tran, dtype=float) / op.DEN
        moved = frac @ rot_f.T + tran_f
        rot_c = orth @ rot_f @ frac_m
        identity = op.triplet() == "x,y,z"
        first = np.floor(f_lo - moved.max(axis=0))
        last = np.ceil(f_hi - moved.min(axis=0))
        ranges = [np.arange(a, b + 1) for a, b in zip(first, last, strict=True)]
        for shift in np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3):
            if identity and not np.any(shift):
                continue
            copy = (moved + shift) @ orth.T
            inside = np.all((copy >= lo) & (copy <= hi), axis=1)
            if not np.any(inside):
                continue
            js = np.flatnonzero(inside)
            points.append(copy[js])
            owners.append(js)
            ops_r.append(np.broadcast_to(rot_c, (js.size, 3, 3)))
            ops_t.append(np.broadcast_to(orth @ (tran_f + shift), (js.size, 3)))
    tree = cKDTree(xyz)
    # pairs within the model itself (identity), each once
    same = tree.query_pairs(cutoff, output_type="ndarray")
    i_list, j_list = [same[:, 0]], [same[:, 1]]
    rot_list = [np.broadcast_to(np.eye(3), (same.shape[0], 3, 3))]
    trans_list = [np.zeros((same.shape[0], 3))]
    identity_list = [np.ones(same.shape[0], dtype=bool)]
    if points:
        copies = np.concatenate(points)
        owner = np.concatenate(owners)
        rot_all = np.concatenate(ops_r)
        trans_all = np.concatenate(ops_t)
        found = tree.sparse_distance_matrix(cKDTree(copies), cutoff, output_type="ndarray")
        ci, cj = found["i"].astype(np.int64), found["j"].astype(np.int64)
        i_list.append(ci)
        j_list.append(owner[cj])
        rot_list.append(rot_all[cj])
        trans_list.append(trans_all[cj])
        identity_list.append(np.zeros(ci.size, dtype=bool))
    i = np.concatenate(i_list).astype(np.int64)
    j = np.concatenate(j_list).astype(np.int64)
    rot = np.concatenate(rot_list)
    trans = np.concatenate(trans_list)
    is_identity = np.concatenate(identity_list)
    # bonded pairs (1-2, 1-3) within the asymmetric unit are the bonded terms' business
    lo_ij, hi_ij = np.minimum(i, j), np.maximum(i, j)
    keys = lo_ij * n + hi_ij
    bonded = is_identity & np.isin(keys, restraints.excluded_keys)
    one_four = is_identity & np.isin(keys, restraints.one_four_keys)
    alt = restraints.altloc
    other_conformer = (alt[i] != "") & (alt[j] != "") & (alt[i] != alt[j])
    keep = ~(bonded | other_conformer)
    i, j, rot, trans = i[keep], j[keep], rot[keep], trans[keep]
    is_identity, one_four = is_identity[keep], one_four[keep]
    # a pair across symmetry is found from both of its atoms: each copy carries half the weight
    weight = np.where(is_identity, 1.0, 0.5)
    d_min = _minimum_distances(restraints, i, j, one_four)
    return NonbondedPairs(i, j, np.ascontiguousarray(rot), np.ascontiguousarray(trans), d_min, weight)


def _minimum_distances(r: GeometryRestraints, i: np.ndarray, j: np.ndarray, one_four: np.ndarray
                       ) -> np.ndarray:
    """Closest approach allowed to each pair, by refmac's rules (as servalcat documents them): the sum
    of vdW radii; less by 0.3 Å for a donor-acceptor pair; the acceptor's radius + 0.1 Å for a polar
    hydrogen and an acceptor; the sum of ionic radii for a metal; and 0.1-0.15 Å less per atom for
    pairs three bonds apart."""
    r_i, r_j = r.vdw_radius[i], r.vdw_radius[j]
    d = r_i + r_j
    role_i, role_j = r.hbond_role[i], r.hbond_role[j]
    donor_i, acceptor_i = (role_i & 1) > 0, (role_i & 2) > 0
    donor_j, acceptor_j = (role_j & 1) > 0, (role_j & 2) > 0
    donor_acceptor = (donor_i & acceptor_j) | (acceptor_i & donor_j)
    d = np.where(donor_acceptor, r_i + r_j - 0.3, d)
    d = np.where((role_i == 4) & acceptor_j, r_j + 0.1, d)
    d = np.where((role_j == 4) & acceptor_i, r_i + 0.1, d)
    metal = r.is_metal[i] | r.is_metal[j]
    ionic = r.ion_radius[i] + r.ion_radius[j]
    d = np.where(metal & np.isfinite(ionic), ionic, d)
    torsion = r_i + r_j + r.torsion_increment[i] + r.torsion_increment[j]
    return np.where(one_four, torsion, d)
