"""Orientations: RELION's Euler angles, rotation matrices, HEALPix-style grids, and pose comparison.

Conventions (RELION's, so that angles written here read back in RELION and cryoSPARC):

- Coordinates are ``(x, y, z)``; arrays are indexed ``[z, y, x]`` (MRC order) with the centre of a box
  of ``B`` voxels at index ``B // 2``.
- The Euler angles ``(rot, tilt, psi)`` in degrees define ``A = (Rz(rot) Ry(tilt) Rz(psi))^T`` with
  ``Rz``, ``Ry`` active rotations; this is RELION's ``Euler_angles2matrix``. ``A`` rotates the map, which
  is then projected along ``z``: the projection is ``P(x, y) = integral of V(A^T (x, y, z)) dz`` and, by
  the Fourier-slice theorem, ``P^(kx, ky) = V^(A^T (kx, ky, 0))``. The viewing direction in map
  coordinates is ``A^T e_z = (sin tilt cos rot, sin tilt sin rot, cos tilt)``.
- Rotation arrays have shape ``(..., 3, 3)`` and are the matrices ``A``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


# ------------------------------------------------------------------------------------------- Euler
def _rot_z(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    out = np.zeros((*angle.shape, 3, 3))
    out[..., 0, 0], out[..., 0, 1], out[..., 1, 0], out[..., 1, 1] = c, -s, s, c
    out[..., 2, 2] = 1.0
    return out


def _rot_y(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    out = np.zeros((*angle.shape, 3, 3))
    out[..., 0, 0], out[..., 0, 2], out[..., 2, 0], out[..., 2, 2] = c, s, -s, c
    out[..., 1, 1] = 1.0
    return out


def euler_to_matrix(rot: np.ndarray | float, tilt: np.ndarray | float, psi: np.ndarray | float) -> np.ndarray:
    """RELION's rotation matrix ``A`` for Euler angles in degrees (any broadcastable shapes).

    >>> import numpy as np
    >>> A = euler_to_matrix(30.0, 0.0, 0.0)      # tilt 0: a view down z, rotated in the plane
    >>> np.allclose(A @ A.T, np.eye(3)), round(float(A[2, 2]), 6)
    (True, 1.0)
    >>> np.round(euler_to_matrix(0.0, 90.0, 0.0).T @ [0, 0, 1], 6).tolist()   # viewing direction
    [1.0, 0.0, 0.0]
    """
    rot, tilt, psi = np.broadcast_arrays(*(np.radians(np.asarray(a, dtype=float)) for a in (rot, tilt, psi)))
    forward = _rot_z(rot) @ _rot_y(tilt) @ _rot_z(psi)
    return np.swapaxes(forward, -1, -2)


def matrix_to_euler(matrices: np.ndarray) -> np.ndarray:
    """Euler angles ``(rot, tilt, psi)`` in degrees (RELION ranges: tilt in [0, 180], the others in
    (-180, 180]) of rotation matrices ``A``; at tilt 0 or 180 the angle is given to psi, rot = 0.

    >>> import numpy as np
    >>> angles = np.array([[10.0, 70.0, -120.0], [-170.0, 150.0, 35.0]])
    >>> np.allclose(matrix_to_euler(euler_to_matrix(*angles.T)), angles)
    True
    """
    forward = np.swapaxes(np.asarray(matrices, dtype=float), -1, -2)  # Rz(rot) Ry(tilt) Rz(psi)
    sin_tilt = np.hypot(forward[..., 0, 2], forward[..., 1, 2])
    tilt = np.arctan2(sin_tilt, forward[..., 2, 2])
    regular = sin_tilt > 1e-7
    rot = np.where(regular, np.arctan2(forward[..., 1, 2], forward[..., 0, 2]), 0.0)
    psi = np.where(
        regular,
        np.arctan2(forward[..., 2, 1], -forward[..., 2, 0]),
        np.arctan2(forward[..., 1, 0], forward[..., 1, 1]),
    )
    return np.degrees(np.stack([rot, tilt, psi], axis=-1))


# ------------------------------------------------------------------------------- rotation helpers
def axis_angle_matrix(vectors: np.ndarray) -> np.ndarray:
    """Rotation matrices ``exp([w]x)`` of rotation vectors ``w`` (radians; shape ``(..., 3)``)."""
    w = np.asarray(vectors, dtype=float)
    theta = np.linalg.norm(w, axis=-1)[..., None, None]
    k = np.zeros((*w.shape[:-1], 3, 3))
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -w[..., 2], w[..., 1], -w[..., 0]
    k[..., 1, 0], k[..., 2, 0], k[..., 2, 1] = w[..., 2], -w[..., 1], w[..., 0]
    small = theta < 1e-8
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1.0 - theta**2 / 6, np.sin(safe) / safe)
    b = np.where(small, 0.5 - theta**2 / 24, (1 - np.cos(safe)) / safe**2)
    return np.eye(3) + a * k + b * (k @ k)


def angular_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees of the rotation taking ``b`` to ``a`` (the geodesic distance on SO(3)).

    >>> round(float(angular_distance(euler_to_matrix(0, 0, 10), euler_to_matrix(0, 0, 0))), 6)
    10.0
    """
    trace = np.einsum("...ij,...ij->...", np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    return np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))


def viewing_direction(matrices: np.ndarray) -> np.ndarray:
    """Unit viewing directions (map coordinates) of rotation matrices: ``A^T e_z``."""
    return np.asarray(matrices)[..., 2, :]


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rotations drawn uniformly from SO(3) (normalised Gaussian quaternions)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The rotation closest (Frobenius) to a 3x3 matrix (SVD, with the determinant kept at +1)."""
    u, _, vt = np.linalg.svd(matrix)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


# ------------------------------------------------------------------------------------------ grids
def healpix_directions(order: int) -> np.ndarray:
    """Centres of the ``12 * 4**order`` equal-area HEALPix pixels (ring scheme) as unit vectors.

    Górski et al. 2005, ApJ 622:759, eqs. 4-9: polar-cap rings of ``4 i`` pixels and equatorial rings
    of ``4 Nside`` pixels, ``Nside = 2**order``. Order 2 samples the sphere every ~15 degrees.

    >>> healpix_directions(0).shape, healpix_directions(2).shape
    ((12, 3), (192, 3))
    """
    if order < 0:
        raise ValueError(f"HEALPix order must be >= 0, got {order}")
    nside = 2**order
    z_list, phi_list = [], []
    for ring in range(1, 4 * nside):
        if ring < nside:  # north polar cap
            j = np.arange(1, 4 * ring + 1)
            z = np.full(j.size, 1 - ring**2 / (3 * nside**2))
            phi = np.pi / (2 * ring) * (j - 0.5)
        elif ring <= 3 * nside:  # equatorial belt
            j = np.arange(1, 4 * nside + 1)
            shift = (ring - nside + 1) % 2
            z = np.full(j.size, 4 / 3 - 2 * ring / (3 * nside))
            phi = np.pi / (2 * nside) * (j - shift / 2)
        else:  # south polar cap: the mirror of the north
            south = 4 * nside - ring
            j = np.arange(1, 4 * south + 1)
            z = np.full(j.size, -(1 - south**2 / (3 * nside**2)))
            phi = np.pi / (2 * south) * (j - 0.5)
        z_list.append(z)
        phi_list.append(phi)
    z = np.concatenate(z_list)
    phi = np.concatenate(phi_list)
    r = np.sqrt(np.clip(1 - z * z, 0, None))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def healpix_step(order: int) -> float:
    """The typical spacing (degrees) of HEALPix directions of ``order``: sqrt of a pixel's area."""
    return math.degrees(math.sqrt(4 * math.pi / (12 * 4**order)))


@dataclass(frozen=True)
class OrientationGrid:
    """A uniform grid of orientations: HEALPix directions times in-plane angles.

    ``matrices`` has shape ``(n_directions * n_psi, 3, 3)``; orientation ``j`` has direction
    ``j // n_psi`` and in-plane angle ``j % n_psi``.
    """

    order: int
    matrices: np.ndarray
    n_directions: int
    n_psi: int

    @property
    def step(self) -> float:
        """Angular step in degrees."""
        return healpix_step(self.order)

    def __len__(self) -> int:
        return self.matrices.shape[0]


def orientation_grid(order: int) -> OrientationGrid:
    """All orientations on HEALPix ``order`` directions with in-plane angles at the same step.

    >>> grid = orientation_grid(1)
    >>> grid.n_directions, grid.n_psi, len(grid)
    (48, 12, 576)
    """
    directions = healpix_directions(order)
    tilt = np.degrees(np.arccos(np.clip(directions[:, 2], -1, 1)))
    rot = np.degrees(np.arctan2(directions[:, 1], directions[:, 0]))
    n_psi = max(1, round(360.0 / healpix_step(order)))
    psi = np.arange(n_psi) * 360.0 / n_psi
    matrices = euler_to_matrix(rot[:, None], tilt[:, None], psi[None, :]).reshape(-1, 3, 3)
    return OrientationGrid(order, matrices, directions.shape[0], n_psi)


def cube_perturbations(step_rad: float) -> np.ndarray:
    """The 27 rotation vectors of a 3x3x3 grid ``{-step, 0, step}^3`` (radians), centre at index 13."""
    axis = np.array([-1.0, 0.0, 1.0]) * step_rad
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    return grid.reshape(-1, 3)


# ----------------------------------------------------------------------------- pose comparison
@dataclass(frozen=True)
class PoseComparison:
    """Estimated poses against true ones, after the best global rotation (and 3D shift) is removed.

    ``registration`` is ``G`` with ``A_est ~= A_true G``; ``errors_deg`` are the per-particle angles
    between ``A_est`` and ``A_true G``; ``shift_errors_px`` the in-plane origin errors after the best
    global 3D translation ``translation_px`` is removed.
    """

    registration: np.ndarray
    errors_deg: np.ndarray
    translation_px: np.ndarray
    shift_errors_px: np.ndarray

    @property
    def median_error_deg(self) -> float:
        return float(np.median(self.errors_deg))

    def fraction_within(self, degrees: float) -> float:
        return float(np.mean(self.errors_deg <= degrees))

    @property
    def median_shift_error_px(self) -> float:
        return float(np.median(self.shift_errors_px))

    def registered_rotations(self, estimated: np.ndarray) -> np.ndarray:
        """Estimated rotations carried into the truth's frame: ``A_est G^T``."""
        return np.asarray(estimated) @ self.registration.T

    def registered_origins(self, rotations_true: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """Estimated origins with the global translation removed (pixels)."""
        return np.asarray(origins) - _projected_translation(rotations_true, self.translation_px)

    def to_dict(self) -> dict[str, float]:
        return {
            "median_error_deg": self.median_error_deg,
            "fraction_within_5deg": self.fraction_within(5.0),
            "mean_error_deg": float(np.mean(self.errors_deg)),
            "median_shift_error_px": self.median_shift_error_px,
            "registration_angle_deg": float(angular_distance(self.registration, np.eye(3))),
        }


def _projected_translation(rotations: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """How a 3D translation of the map moves each particle's origin: ``-(A t)_xy``.

    A map translated by ``t`` projects, at ``A``, to an image translated by ``(A t)_xy``; the origin
    (the shift that re-centres the particle, RELION's sign) changes by minus that.
    """
    return -np.einsum("nij,j->ni", np.asarray(rotations)[:, :2, :], translation)


def compare_poses(
    rotations: np.ndarray,
    origins: np.ndarray | None,
    true_rotations: np.ndarray,
    true_origins: np.ndarray | None = None,
    *,
    inlier_deg: float = 10.0,
) -> PoseComparison:
    """Register estimated poses to the true ones and measure the errors.

    The map a refinement produces is known only up to a global rotation (and translation), so the
    errors are measured after the rotation ``G`` minimising ``sum ||A_est - A_true G||^2`` over the
    inliers (refitted twice on the particles within ``inlier_deg`` of the current fit, so that a few
    lost particles do not bias it). Origins are in pixels.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> truth = random_rotations(50, rng)
    >>> offset = euler_to_matrix(20, 30, 40)
    >>> round(compare_poses(truth @ offset, None, truth).median_error_deg, 6)
    0.0
    """
    est = np.asarray(rotations, dtype=float)
    true = np.asarray(true_rotations, dtype=float)
    inliers = np.ones(est.shape[0], dtype=bool)
    registration = np.eye(3)
    for _ in range(3):
        registration = nearest_rotation(np.einsum("nji,njk->ik", true[inliers], est[inliers]))
        errors = angular_distance(est, true @ registration)
        candidate = errors <= max(inlier_deg, 3 * float(np.median(errors)))
        if candidate.sum() >= 3:
            inliers = candidate
    errors = angular_distance(est, true @ registration)
    translation = np.zeros(3)
    shift_errors = np.zeros(est.shape[0])
    if origins is not None and true_origins is not None:
        diff = np.asarray(origins, dtype=float) - np.asarray(true_origins, dtype=float)
        # diff_n = -(A_n t)_xy: one linear least-squares fit for t over the inliers
        design = -true[inliers, :2, :].reshape(-1, 3)
        translation = np.linalg.lstsq(design, diff[inliers].reshape(-1), rcond=None)[0]
        residual = diff - _projected_translation(true, translation)
        shift_errors = np.linalg.norm(residual, axis=1)
    return PoseComparison(registration, errors, translation, shift_errors)
