"""Structure factors of an atomic model by FFT, and the gradient of any amplitude target with respect to
the atoms' coordinates, B-factors and occupancies by one more FFT.

gemmi puts the model's electron density on a grid (``DensityCalculatorX``, IT92 form factors, every
symmetry copy, an extra "blur" B that lets a coarse grid sample sharp atoms without aliasing) and
Fourier-transforms it; the blur is taken out again in reciprocal space. The gradient follows Agarwal
(1978): for a target ``T(Fc)`` with complex derivatives ``dT/dFc(h)``, ``dT/dp = sum_x M(x) d rho(x)/dp``
where ``M`` is the Fourier synthesis of the derivatives (one FFT, gemmi) and ``rho`` the blurred density
of one atom; the sum runs over the grid points near the atom (numpy, vectorised over atoms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gemmi
import numpy as np

#: B = 8 pi^2 U
U_TO_B = 8.0 * math.pi**2
#: density below which an atom's Gaussians are cut off, as gemmi's DensityCalculator does
DENSITY_CUTOFF = 1e-5
#: the (looser) cutoffs of the refinement: the density of its structure factors (relative error of
#: Fc about 3e-4, below that of the grid sampling) and the gradient integration (relative error of
#: the gradient about 5e-3, which a line search does not notice); measured on rnase_model
REFINE_DENSITY_CUTOFF = 3e-5
GRADIENT_CUTOFF = 3e-4
#: the occupancy derivative integrates the whole density, tails included: a tighter cutoff
OCCUPANCY_GRADIENT_CUTOFF = 1e-4


@dataclass
class AtomArrays:
    """What the structure-factor calculation needs of each atom: position (Cartesian, Å), isotropic B
    (Å²), occupancy, and its five form-factor Gaussians (IT92 ``a1..a4, c`` with ``b1..b4, 0``)."""

    xyz: np.ndarray
    b_iso: np.ndarray
    occ: np.ndarray
    gauss_a: np.ndarray
    gauss_b: np.ndarray

    @classmethod
    def from_atoms(cls, atoms: list[gemmi.Atom]) -> AtomArrays:
        xyz = np.array([a.pos.tolist() for a in atoms], dtype=float).reshape(-1, 3)
        b_iso = np.array([a.b_iso for a in atoms], dtype=float)
        occ = np.array([a.occ for a in atoms], dtype=float)
        gauss_a, gauss_b = form_factor_gaussians([a.element for a in atoms])
        return cls(xyz, b_iso, occ, gauss_a, gauss_b)


def form_factor_gaussians(elements: list[gemmi.Element]) -> tuple[np.ndarray, np.ndarray]:
    """IT92 coefficients as five Gaussians per atom: ``(a1..a4, c)`` and ``(b1..b4, 0)``."""
    cache: dict[str, tuple[list[float], list[float]]] = {}
    a_rows, b_rows = [], []
    for el in elements:
        if el.name not in cache:
            coefs = el.it92.get_coefs()
            cache[el.name] = ([*list(coefs[0:4]), coefs[8]], [*list(coefs[4:8]), 0.0])
        a, b = cache[el.name]
        a_rows.append(a)
        b_rows.append(b)
    shape = (len(elements), 5)
    return (np.array(a_rows, dtype=float).reshape(shape), np.array(b_rows, dtype=float).reshape(shape))


def reflection_multiplicity_factor(spacegroup: gemmi.SpaceGroup, hkl: np.ndarray) -> np.ndarray:
    """Weights that make a Fourier synthesis of asymmetric-unit coefficients the derivative map of a
    sum over those reflections: epsilon (without centring) for special reflections, and 2 for centric
    ones, whose Friedel mate is already a symmetry mate (so the synthesis counts them half as often)."""
    ops = spacegroup.operations()
    eps = ops.epsilon_factor_without_centering_array(hkl).astype(float)
    centric = ops.centric_flag_array(hkl).astype(bool)
    return eps * np.where(centric, 2.0, 1.0)


class StructureFactorCalculator:
    """Fc at a fixed set of reflections (asymmetric unit) from a gemmi model, by FFT.

    The grid (``d_min / (2 rate)`` spacing) and the blur are fixed at construction, so every call
    samples the density the same way and gradients stay consistent with values.

    >>> import gemmi, numpy as np
    >>> st = gemmi.read_pdb_string(
    ...     "CRYST1   20.000   20.000   20.000  90.00  90.00  90.00 P 1\\n"
    ...     "ATOM      1  C   ALA A   1       1.000   2.000   3.000  1.00 10.00           C\\n")
    >>> hkl = np.array([[1, 0, 0], [0, 2, 1]], dtype=np.int32)
    >>> calc = StructureFactorCalculator(st.cell, st.find_spacegroup(), hkl, d_min=2.0, b_min=10.0)
    >>> fc = calc.atomic(st[0])
    >>> exact = [st.cell.calculate_1_d2(h.tolist()) for h in hkl]  # 1/d^2
    >>> f0 = [gemmi.Element("C").it92.calculate_sf(s / 4) * np.exp(-10.0 * s / 4) for s in exact]
    >>> bool(np.allclose(np.abs(fc), f0, rtol=1e-3))
    True
    """

    def __init__(self, cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup, hkl: np.ndarray, d_min: float,
                 *, b_min: float = 5.0, rate: float = 1.5, cutoff: float = DENSITY_CUTOFF) -> None:
        self.cell = cell
        self.spacegroup = spacegroup
        self.hkl = np.ascontiguousarray(hkl, dtype=np.int32)
        self.d_min = float(d_min)
        self.rate = float(rate)
        dc = gemmi.DensityCalculatorX()
        dc.d_min = self.d_min
        dc.rate = rate
        dc.cutoff = cutoff
        dc.grid.unit_cell = cell
        dc.grid.spacegroup = spacegroup
        spacing = self.d_min / (2 * rate)
        # as gemmi's refmac-compatible blur, but for the lowest B the refinement may reach, fixed for
        # the whole run so that the sampling never changes under the optimiser
        dc.blur = max(U_TO_B / 1.1 * spacing**2 - b_min, 0.0)
        dc.initialize_grid()
        self.dc = dc
        self.shape = tuple(dc.grid.shape)
        self.s2 = np.asarray(cell.calculate_1_d2_array(self.hkl), dtype=float)
        self.orth = np.array(cell.orth.mat.tolist(), dtype=float)
        self.frac = np.array(cell.frac.mat.tolist(), dtype=float)
        # a reflection may be asked for twice (a twin mate that is also observed): derivatives add up
        self._unique, self._inverse = np.unique(self.hkl, axis=0, return_inverse=True)
        self._inverse = self._inverse.reshape(-1)
        self._unique = np.ascontiguousarray(self._unique, dtype=np.int32)
        s2_unique = np.asarray(cell.calculate_1_d2_array(self._unique), dtype=float)
        self._unique_weight = (reflection_multiplicity_factor(spacegroup, self._unique)
                               * np.exp(dc.blur * 0.25 * s2_unique))
        self._offsets: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @property
    def blur(self) -> float:
        return float(self.dc.blur)

    # ------------------------------------------------------------------------------- forward
    def atomic(self, model: gemmi.Model) -> np.ndarray:
        """Fc of the atoms of ``model`` at ``self.hkl`` (complex128, electrons)."""
        dc = self.dc
        dc.initialize_grid()
        dc.add_model_density_to_grid(model)
        dc.grid.symmetrize_sum()
        recip = gemmi.transform_map_to_f_phi(dc.grid, half_l=True)
        return recip.get_value_by_hkl(self.hkl, unblur=dc.blur).astype(np.complex128)

    def solvent(self, model: gemmi.Model, masker: gemmi.SolventMasker) -> np.ndarray:
        """F of a flat bulk-solvent mask (1 in the solvent, 0 in the molecule) at ``self.hkl``.

        The mask is a step function: it needs a finer grid than the blurred atoms do (a spacing of
        d_min/3.3, at most 0.6 Å); even so R_free moves by about 0.001 with the grid.
        """
        grid = gemmi.FloatGrid()
        grid.spacegroup = self.spacegroup
        grid.set_unit_cell(self.cell)
        grid.set_size_from_spacing(min(self.d_min / 3.3, 0.6), gemmi.GridSizeRounding.Up)
        masker.put_mask_on_float_grid(grid, model)
        recip = gemmi.transform_map_to_f_phi(grid, half_l=True)
        return recip.get_value_by_hkl(self.hkl).astype(np.complex128)

    # ------------------------------------------------------------------------------ gradient
    def derivative_map(self, d_target_d_fc: np.ndarray) -> np.ndarray:
        """The real-space map M whose overlap with an atom's density derivative is the target's
        derivative (``d_target_d_fc`` is dT/dA + i dT/dB at ``self.hkl``)."""
        n_unique = self._unique.shape[0]
        summed = (np.bincount(self._inverse, weights=d_target_d_fc.real, minlength=n_unique)
                  + 1j * np.bincount(self._inverse, weights=d_target_d_fc.imag, minlength=n_unique))
        coef = (summed * self._unique_weight).astype(np.complex64)
        asu = gemmi.ComplexAsuData(self.cell, self.spacegroup, self._unique, coef)
        recip = asu.get_f_phi_on_grid(list(self.shape), half_l=True)
        grid = gemmi.transform_f_phi_grid_to_map(recip)
        # gemmi's synthesis divides by the cell volume and its analysis multiplies by V/N: both are
        # undone; the synthesis counts each reflection twice (h and its Friedel mate), and the
        # integration below visits one copy of each atom where the density has one per centring
        # translation
        n_centring = len(self.spacegroup.operations().cen_ops)
        scale = self.cell.volume**2 / grid.point_count * 0.5 * n_centring
        return np.asarray(grid.array, dtype=np.float64) * scale

    def gradient(self, d_target_d_fc: np.ndarray, atoms: AtomArrays, *, want_occ: bool = False,
                 exact: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """dT/dxyz (n, 3), dT/dB (n) and, with ``want_occ``, dT/docc (n) of every atom (see
        :meth:`integrate` for ``exact``)."""
        dmap = self.derivative_map(d_target_d_fc)
        if exact:
            return self.integrate(dmap, atoms, want_occ=want_occ, exact=True, cutoff=DENSITY_CUTOFF)
        return self.integrate(dmap, atoms, want_occ=want_occ,
                              cutoff=OCCUPANCY_GRADIENT_CUTOFF if want_occ else GRADIENT_CUTOFF)

    def integrate(self, dmap: np.ndarray, atoms: AtomArrays, *, want_occ: bool = False,
                  cutoff: float = GRADIENT_CUTOFF, exact: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Overlap of ``dmap`` with each atom's density derivatives (see :meth:`gradient`).

        By default each form factor is approximated by two Gaussians (fitted once per element over
        the data's resolution range, see :func:`two_gaussian_fit`): the gradient then costs 2.5 times
        less, and its relative error (about 1e-3) is far below what a line search notices.
        ``exact=True`` uses the five IT92 terms, as the structure factors do.
        """
        n = atoms.xyz.shape[0]
        g_xyz = np.zeros((n, 3))
        g_b = np.zeros(n)
        g_occ = np.zeros(n) if want_occ else None
        if n == 0:
            return g_xyz, g_b, g_occ
        shape = np.array(self.shape)
        gauss_a, gauss_b = (atoms.gauss_a, atoms.gauss_b) if exact else self._two_gaussians(atoms)
        n_gauss = gauss_a.shape[1]
        b_total = np.maximum(atoms.b_iso[:, None] + self.blur + gauss_b, 1e-3)          # (n, k)
        alpha = 4.0 * math.pi**2 / b_total                                               # exp(-alpha r^2)
        amp = gauss_a * (alpha / math.pi) ** 1.5                                         # per unit occupancy
        radius = _cutoff_radius(amp, alpha, cutoff)
        classes = np.ceil(radius / 0.5) * 0.5
        # the map padded periodically by the largest reach, so that no index needs wrapping
        _, _, reach = self._box(float(classes.max()))
        padded = np.pad(dmap.astype(np.float32), [(int(r), int(r)) for r in reach], mode="wrap")
        strides = np.array([padded.shape[1] * padded.shape[2], padded.shape[2], 1], dtype=np.int64)
        flat = padded.reshape(-1)
        frac = atoms.xyz @ self.frac.T
        grid_pos = frac * shape
        nearest = np.floor(grid_pos + 0.5)
        base = (np.mod(nearest, shape).astype(np.int64) + reach) @ strides
        shift = ((nearest - grid_pos) / shape) @ self.orth.T                          # grid point - atom
        f32 = np.float32
        jobs = []
        for r_class in np.unique(classes):
            members = np.flatnonzero(classes == r_class)
            offsets, cart, _ = self._box(float(r_class))
            chunk = max(1, int(400_000 // max(len(offsets), 1)))
            jobs += [(members[start:start + chunk], offsets, cart) for start in range(0, members.size, chunk)]

        def run(job: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
            idx, offsets, cart = job
            cart = cart.astype(f32)
            sh = shift[idx].astype(f32)                                             # (k, 3)
            # |cart + shift|^2 axis by axis: no (k, m, 3) array, and no BLAS call (a threaded BLAS
            # on busy cores made this step twice as slow)
            d2 = (cart[None, :, 0] + sh[:, 0, None]) ** 2
            d2 += (cart[None, :, 1] + sh[:, 1, None]) ** 2
            d2 += (cart[None, :, 2] + sh[:, 2, None]) ** 2
            values = flat[base[idx, None] + (offsets @ strides)[None, :]]
            values *= d2 <= (radius[idx, None] ** 2).astype(f32)
            s_xyz = np.zeros(d2.shape, dtype=f32)
            s_b = np.zeros(d2.shape, dtype=f32)
            s_0 = np.zeros(d2.shape, dtype=f32) if want_occ else None
            a_k = alpha[idx].astype(f32)
            amp_k = amp[idx].astype(f32)
            inv_b = (1.0 / b_total[idx]).astype(f32)
            for k in range(n_gauss):
                e = np.exp(-a_k[:, k, None] * d2)
                e *= amp_k[:, k, None]
                s_xyz += a_k[:, k, None] * e
                s_b += e * (a_k[:, k, None] * d2 - f32(1.5)) * inv_b[:, k, None]
                if s_0 is not None:
                    s_0 += e
            occ = atoms.occ[idx]
            s_xyz *= values
            # sum_m w_m (cart_m + shift) = w @ cart + (sum_m w_m) shift
            moment = (np.einsum("km,mi->ki", s_xyz, cart, dtype=np.float64)
                      + s_xyz.sum(axis=1, dtype=np.float64)[:, None] * sh)
            g_xyz[idx] = 2.0 * occ[:, None] * moment
            g_b[idx] = occ * np.einsum("km,km->k", values, s_b, dtype=np.float64)
            if g_occ is not None and s_0 is not None:
                g_occ[idx] = np.einsum("km,km->k", values, s_0, dtype=np.float64)

        # (two threads over the chunks were measured twice as slow on two shared cores: one thread)
        for job in jobs:
            run(job)
        return g_xyz, g_b, g_occ

    def _two_gaussians(self, atoms: AtomArrays) -> tuple[np.ndarray, np.ndarray]:
        """Per-atom two-Gaussian form factors, fitted once per distinct IT92 coefficient set."""
        if not hasattr(self, "_fits"):
            self._fits: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        keys = [row.tobytes() for row in atoms.gauss_a]
        out_a = np.empty((len(keys), 2))
        out_b = np.empty((len(keys), 2))
        cache: dict[bytes, int] = {}
        for k, key in enumerate(keys):
            if key not in self._fits:
                self._fits[key] = two_gaussian_fit(atoms.gauss_a[k], atoms.gauss_b[k], 1.0 / self.d_min,
                                                   self.blur)
            out_a[k], out_b[k] = self._fits[key]
            cache[key] = k
        return out_a, out_b

    def _box(self, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Integer grid offsets within ``radius`` (plus half a grid cell's diagonal), their Cartesian
        vectors, and the reach of the box along each axis."""
        if radius not in self._offsets:
            shape = np.array(self.shape)
            cell_vectors = self.orth / shape                       # columns: one grid step along u, v, w
            half_diag = 0.5 * float(np.linalg.norm(cell_vectors.sum(axis=1)))
            # steps along each axis that reach `radius`: the rows of the inverse are the normals of
            # the grid planes, 1/|row| their spacing
            inverse = np.linalg.inv(cell_vectors)
            reach = np.ceil((radius + half_diag) * np.linalg.norm(inverse, axis=1)).astype(np.int64)
            ranges = [np.arange(-r, r + 1) for r in reach]
            offsets = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
            cart = offsets @ cell_vectors.T
            keep = np.einsum("mi,mi->m", cart, cart) <= (radius + half_diag) ** 2
            self._offsets[radius] = (offsets[keep], cart[keep], reach)
        return self._offsets[radius]


def two_gaussian_fit(a: np.ndarray, b: np.ndarray, s_max: float, blur: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussians ``sum a'_k exp(-b'_k s^2/4)`` that match ``sum a_k exp(-b_k s^2/4)`` for
    ``s <= s_max`` where it matters: weighted by the blur, as the blurred density sees it."""
    from scipy.optimize import least_squares

    s2 = np.linspace(0.0, s_max**2, 64)
    target = np.sum(a[None, :] * np.exp(-b[None, :] * s2[:, None] / 4), axis=1)
    weight = np.exp(-blur * s2 / 4)

    def residual(p: np.ndarray) -> np.ndarray:
        model = p[0] * np.exp(-p[2] * s2 / 4) + p[1] * np.exp(-p[3] * s2 / 4)
        return (model - target) * weight

    total = float(np.sum(a))
    wide = float(np.sum(a * b) / max(total, 1e-12))
    start = np.array([0.7 * total, 0.3 * total, 1.5 * wide + 1.0, 0.2 * wide + 0.1])
    fit = least_squares(residual, start, bounds=([0, 0, 0, 0], [np.inf, np.inf, 500, 500]))
    return fit.x[:2], fit.x[2:]


def _cutoff_radius(amp: np.ndarray, alpha: np.ndarray, cutoff: float) -> np.ndarray:
    """Radius beyond which ``sum_k amp_k exp(-alpha_k r^2)`` stays below ``cutoff`` (bisection)."""
    lo = np.zeros(amp.shape[0])
    hi = np.full(amp.shape[0], 12.0)
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        above = np.sum(np.abs(amp) * np.exp(-alpha * (mid**2)[:, None]), axis=1) > cutoff
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    return hi
