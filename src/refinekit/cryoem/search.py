"""Projection matching as matrix products: a global search over a uniform grid of orientations and
shifts, and a local pattern search around each particle's pose.

For particle ``i`` (transform ``X_i``, CTF ``C_i``), a shift ``o`` and a reference projection ``P_j``,
the score is the noise-weighted correlation with the CTF-modulated projection::

    s_ijo = sum_k w_k C_ik Re(conj(X_ik e^{-2 pi i k.o / B}) P_jk) / sqrt(sum_k w_k C_ik^2 |P_jk|^2)

with ``w_k = 1 / sigma^2(|k|)`` the inverse noise power. The numerator of all particles x shifts
against all orientations is one real matrix product ``[Re Z | Im Z] @ [Re P | Im P]^T`` and the
denominator another, ``(w C^2) @ |P|^2^T``; ``s^2 / 2`` is the log-likelihood of the particle under
white Gaussian noise with the projection's scale fitted, so the best score is the most likely pose.
The scale (and contrast) of the images never matters.

Given the noise scale ``mu = mean(1 / sigma^2)`` (the weights passed are ``w / mu``) the searches rank
poses by the log-posterior instead, ``mu max(s, 0)^2 - |o|^2 / (2 sigma_o^2)``: the log-likelihood
plus a Gaussian prior on the origin (RELION's offset prior; ``sigma_o`` estimated from the data). At
low SNR the prior keeps noise from winning at large shifts, where there are many poses to win at.

The local search evaluates, per particle, a 3x3x3 cube of rotations ``exp([w]x) A`` (``w`` in
``{-d, 0, d}^3``) times a 3x3 grid of shifts, moves to the best, refines it by a least-squares
quadratic through the 27 (and 9) scores, halves ``d`` and repeats: a batched matrix product per level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import Array, Backend
from .ctf import CTFParameters
from .fourier import FourierPoints, FourierVolume, centred_fft2, half_plane_points
from .fsc import spherical_mask
from .geometry import axis_angle_matrix, cube_perturbations


@dataclass
class Poses:
    """Orientations (RELION matrices), origins (pixels) and scores of particles."""

    rotations: np.ndarray
    origins: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        self.rotations = np.asarray(self.rotations, dtype=np.float64)
        self.origins = np.asarray(self.origins, dtype=np.float64)
        self.scores = np.asarray(self.scores, dtype=np.float64)

    def copy(self) -> Poses:
        return Poses(self.rotations.copy(), self.origins.copy(), self.scores.copy())

    def subset(self, index: np.ndarray) -> Poses:
        return Poses(self.rotations[index], self.origins[index], self.scores[index])


class ParticleTransforms:
    """Particle images prepared for matching, on a backend: the transforms of the images masked by a
    soft circle (for alignment) and unmasked (for reconstruction) on the half-plane points up to
    Nyquist (ordered by radius, so that a frequency limit is a prefix), and the CTF there."""

    def __init__(
        self,
        images: np.ndarray,
        ctf: CTFParameters,
        pixel_size: float,
        mask_radius: float,
        backend: Backend,
        batch: int = 512,
    ) -> None:
        n, box = images.shape[0], images.shape[-1]
        self.box, self.n, self.pixel_size, self.backend = box, n, float(pixel_size), backend
        self.points = half_plane_points(box, box / 2 - 0.5)
        mask = spherical_mask(box, mask_radius, edge=max(2.0, 0.05 * box), ndim=2)
        outside = mask < 1e-3
        k = len(self.points)
        masked = np.empty((n, k), dtype=np.complex64)
        unmasked = np.empty((n, k), dtype=np.complex64)
        dc = np.empty(n, dtype=np.float64)
        ctf_values = np.empty((n, k), dtype=np.float32)
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            chunk = np.asarray(images[start:stop], dtype=np.float64)
            # the solvent level (outside the mask) is the zero of the masked image
            background = chunk[:, outside].mean(axis=1) if outside.any() else chunk.mean(axis=(1, 2))
            full = centred_fft2(chunk).reshape(stop - start, -1)
            unmasked[start:stop] = full[:, self.points.flat]
            dc[start:stop] = full[:, 0].real
            full_masked = centred_fft2((chunk - background[:, None, None]) * mask).reshape(stop - start, -1)
            masked[start:stop] = full_masked[:, self.points.flat]
            ctf_values[start:stop] = ctf.evaluate(
                self.points.kx, self.points.ky, box, pixel_size, slice(start, stop)
            )
        self.ctf_dc = ctf.evaluate(np.zeros(1), np.zeros(1), box, pixel_size)[:, 0]
        self.dc = dc
        self.masked = backend.asarray(masked, "complex64")
        self.unmasked = backend.asarray(unmasked, "complex64")
        self.ctf = backend.asarray(ctf_values, "float32")

    def limit(self, r_max: float) -> int:
        """Number of points (a prefix) with radius <= ``r_max``."""
        return int(np.searchsorted(self.points.radius, r_max + 1e-9, side="right"))

    def prefix(self, count: int) -> FourierPoints:
        p = self.points
        return FourierPoints(p.box, p.kx[:count], p.ky[:count], p.flat[:count], p.shell[:count])


def phase_parts(be: Backend, origins: Array, kx: Array, ky: Array, box: int) -> tuple[Array, Array]:
    """cos and sin of ``-2 pi k.o / box`` for origins ``(..., 2)``: shape ``(..., K)``."""
    angle = (origins[..., 0:1] * kx + origins[..., 1:2] * ky) * float(-2 * np.pi / box)
    return be.cos(angle), be.sin(angle)


def _weighted(
    data: ParticleTransforms, index: slice | Array, count: int, weights: Array
) -> tuple[Array, Array, Array]:
    """``Y = w C X`` (real and imaginary parts) and ``w C^2`` for particles ``index`` on ``count`` points."""
    x = data.masked[index, :count]
    c = data.ctf[index, :count]
    wc = c * weights[None, :count]
    return wc * x.real, wc * x.imag, wc * c


def norm_of_particles(data: ParticleTransforms, count: int, weights: Array, index: np.ndarray) -> np.ndarray:
    """``sqrt(sum_k w_k |X_ik|^2)`` for particles ``index``: divides a score into a correlation."""
    be = data.backend
    out = np.empty(index.size)
    for start in range(0, index.size, 1024):
        x = data.masked[be.asarray(index[start : start + 1024], "int64"), :count]
        power = (x.real * x.real + x.imag * x.imag) * weights[None, :count]
        out[start : start + 1024] = be.to_numpy(power.sum(1)).astype(np.float64)
    return np.sqrt(np.maximum(out, 1e-30))


def shift_grid(max_shift: float, step: float) -> np.ndarray:
    """Origins (pixels) on a square grid of ``step`` within a disc of radius ``max_shift``."""
    n = int(np.floor(max_shift / step + 1e-9))
    axis = np.arange(-n, n + 1) * float(step)
    gx, gy = np.meshgrid(axis, axis, indexing="xy")
    keep = np.hypot(gx, gy) <= max_shift + 1e-9
    return np.stack([gx[keep], gy[keep]], axis=1)


@dataclass(frozen=True)
class Likelihood:
    """How scores become log-posteriors (nats): ``scale * max(s, 0)^2`` (``scale`` = mean inverse noise
    power, the factor the weights were divided by) minus ``|o|^2 / (2 shift_sigma^2)`` (pixels; no
    prior where ``shift_sigma`` is None)."""

    scale: float
    shift_sigma: float | None = None

    def shift_penalty(self, origins: np.ndarray) -> np.ndarray:
        """``|o|^2 / (2 shift_sigma^2)`` for origins ``(..., 2)`` (zeros without a prior)."""
        origins = np.asarray(origins, dtype=np.float64)
        if self.shift_sigma is None:
            return np.zeros(origins.shape[:-1])
        return (origins * origins).sum(-1) / (2 * self.shift_sigma**2)

    def of_scores(self, scores: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """Log-posteriors of correlation scores ``scores`` at ``origins`` (broadcast)."""
        s = np.maximum(np.asarray(scores, dtype=np.float64), 0.0)
        return self.scale * s * s - self.shift_penalty(origins)

    def to_scores(self, log_posterior: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """The correlation scores of log-posteriors (the inverse of :meth:`of_scores` where ``s >= 0``)."""
        value = np.asarray(log_posterior, dtype=np.float64) + self.shift_penalty(origins)
        return np.sqrt(np.maximum(value, 0.0) / self.scale)


def global_search(
    volume: FourierVolume,
    data: ParticleTransforms,
    index: np.ndarray,
    grid: np.ndarray,
    origins: np.ndarray,
    r_max: float,
    weights: np.ndarray,
    candidates: int = 1,
    max_elements: int = 1 << 23,
    likelihood: Likelihood | None = None,
) -> Poses:
    """The best ``candidates`` of ``grid`` rotations (each at its best of ``origins``) for each particle
    ``index``, on frequencies up to ``r_max`` (Fourier pixels), by two matrix products per batch of
    particles. The result holds ``index.size * candidates`` poses, particle by particle, best first.
    Scores are correlations, or log-posteriors where a ``likelihood`` is given."""
    be = data.backend
    count = data.limit(r_max)
    points = data.prefix(count)
    w = be.asarray(weights[points.shell], "float32")
    proj = volume.slices(grid, points)  # (J, K)
    proj_cat_t = be.concatenate([proj.real, proj.imag], axis=1).T  # (2K, J)
    power_t = (proj.real * proj.real + proj.imag * proj.imag).T  # (K, J)
    kx, ky = be.asarray(points.kx, "float32"), be.asarray(points.ky, "float32")
    cos_t, sin_t = phase_parts(be, be.asarray(origins, "float32"), kx, ky, data.box)  # (T, K)
    n_rot, n_shift = grid.shape[0], origins.shape[0]
    m = max(1, min(int(candidates), n_rot))
    batch = max(1, max_elements // (n_rot * n_shift))
    best_rot = np.empty((index.size, m), dtype=np.int64)
    best_shift = np.empty((index.size, m), dtype=np.int64)
    best_score = np.empty((index.size, m))
    with_prior = likelihood is not None and likelihood.shift_sigma is not None
    if with_prior:
        penalty = be.asarray(likelihood.shift_penalty(origins), "float32")[None, :, None]  # (1, T, 1)
    for start in range(0, index.size, batch):
        sel = be.asarray(index[start : start + batch], "int64")
        b = int(sel.shape[0])
        yr, yi, wc2 = _weighted(data, sel, count, w)
        zr = yr[:, None, :] * cos_t[None] - yi[:, None, :] * sin_t[None]  # (b, T, K)
        zi = yr[:, None, :] * sin_t[None] + yi[:, None, :] * cos_t[None]
        cross = be.concatenate([zr, zi], axis=2).reshape(b * n_shift, 2 * count) @ proj_cat_t
        norm = be.sqrt(be.maximum(wc2 @ power_t, 1e-30))  # (b, J)
        cross = cross.reshape(b, n_shift, n_rot)
        if with_prior:
            # the prior depends on the shift, the norm on the rotation: the log-posterior of every
            # (shift, rotation) is formed before maximising over shifts
            s = be.maximum(cross / norm[:, None, :], 0.0)
            cross = s * s * float(likelihood.scale) - penalty
            per_rot = be.max(cross, 1)
        else:
            # the norm does not depend on the shift: maximise the cross term over shifts first, so
            # that the (b, T, J) block is read once (on a GPU this is what the search's speed is bound by)
            per_rot = be.max(cross, 1) / norm  # (b, J)
        if m == 1:
            rot, value = be.argmax_max(per_rot, 1)
            rot, value = rot[:, None], value[:, None]
        else:
            rot, value = be.topk(per_rot, m)
        shift, _ = be.argmax_max(be.take_last(cross, rot), 1)  # (b, m)
        best_rot[start : start + b] = be.to_numpy(rot)
        best_shift[start : start + b] = be.to_numpy(shift)
        best_score[start : start + b] = be.to_numpy(value)
    if likelihood is not None and not with_prior:
        best_score = likelihood.of_scores(best_score, np.zeros(2))
    return Poses(grid[best_rot.ravel()].copy(), origins[best_shift.ravel()].copy(), best_score.ravel())


# ------------------------------------------------------------------------------ local search
def _quadratic_design(points: np.ndarray) -> np.ndarray:
    """Least-squares operator from scores on ``points`` (``(m, d)``, unit grid) to a full quadratic's
    coefficients ``[c, g_1..g_d, h_11, .., h_dd, h_12, ...]``."""
    d = points.shape[1]
    cols = [np.ones(points.shape[0])] + [points[:, a] for a in range(d)]
    cols += [points[:, a] ** 2 for a in range(d)]
    cols += [points[:, a] * points[:, b] for a in range(d) for b in range(a + 1, d)]
    return np.linalg.pinv(np.stack(cols, axis=1))


def _quadratic_peak(scores: np.ndarray, design_pinv: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Peak offsets (grid units) of quadratics fitted to ``scores`` (``(n, m)``); ``ok`` where the fit
    has a maximum inside the cube ``[-1, 1]^d``."""
    coef = scores @ design_pinv.T
    g = coef[:, 1 : 1 + d]
    hess = np.zeros((scores.shape[0], d, d))
    for a in range(d):
        hess[:, a, a] = 2 * coef[:, 1 + d + a]
    k = 1 + 2 * d
    for a in range(d):
        for b in range(a + 1, d):
            hess[:, a, b] = hess[:, b, a] = coef[:, k]
            k += 1
    eig = np.linalg.eigvalsh(hess)
    ok = np.all(eig < 0, axis=1)
    offset = np.zeros((scores.shape[0], d))
    if ok.any():
        offset[ok] = np.linalg.solve(hess[ok], -g[ok][:, :, None])[:, :, 0]
    ok &= np.all(np.abs(offset) <= 1.0, axis=1)
    offset[~ok] = 0.0
    return offset, ok


_CUBE = cube_perturbations(1.0)  # the 27 points of {-1, 0, 1}^3
_STAR = _CUBE[np.abs(_CUBE).sum(axis=1) <= 1]  # centre and the 6 face neighbours (centre at 3)
_CUBE19 = _CUBE[np.abs(_CUBE).sum(axis=1) <= 2]  # ... and the 12 edge neighbours (centre at 9)
_SQUARE = np.stack(np.meshgrid([-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0], indexing="ij"), -1).reshape(-1, 2)
_CUBE19_PINV = _quadratic_design(_CUBE19)
_SQUARE_PINV = _quadratic_design(_SQUARE)


def local_search(
    volume: FourierVolume,
    data: ParticleTransforms,
    index: np.ndarray,
    poses: Poses,
    angle_steps_deg: list[float],
    shift_steps: list[float],
    r_max: float,
    weights: np.ndarray,
    batch: int = 64,
    max_moves: int = 3,
    likelihood: Likelihood | None = None,
) -> Poses:
    """Refine ``poses`` (in the order of ``index``) by a pattern search (of the correlation, or of the
    log-posterior where a ``likelihood`` is given; the returned scores are the same kind).

    At each level a cube of 27 rotations ``exp([w]x) A`` (``w`` in ``{-d, 0, d}^3``,
    ``d = angle_steps_deg[l]``) times a square of 9 origins (``shift_steps[l]`` pixels apart) is scored
    around each pose; a particle whose best is not the centre moves there and is scored again (up to
    ``max_moves`` times), one whose best is the centre goes to the next, finer level. At the last level
    the centre's neighbourhood is refined by fitting quadratics through the 27 and the 9 scores.
    """
    be = data.backend
    count = data.limit(r_max)
    points = data.prefix(count)
    w = be.asarray(weights[points.shell], "float32")
    kx, ky = be.asarray(points.kx, "float32"), be.asarray(points.ky, "float32")
    rotations = poses.rotations.copy()
    origins = poses.origins.copy()
    scores = poses.scores.copy()
    n_levels = len(angle_steps_deg)
    for level, (angle_step, shift_step) in enumerate(zip(angle_steps_deg, shift_steps, strict=True)):
        final = level == n_levels - 1
        # moves use the 7-point star (7 projections per pose); the last level scores the 19-point
        # cube, enough for a full quadratic with cross terms
        stencil = _CUBE19 if final else _STAR
        centre_l = int(np.flatnonzero(np.abs(stencil).sum(axis=1) == 0)[0])
        delta = np.radians(angle_step)
        perturb = axis_angle_matrix(stencil * delta)
        shifts = _SQUARE * shift_step
        active = np.arange(index.size)
        for move in range(max_moves + 1):
            if active.size == 0:
                break
            still = []
            for start in range(0, active.size, batch):
                pos = active[start : start + batch]
                score = _score_neighbourhood(
                    volume,
                    data,
                    be,
                    index[pos],
                    rotations[pos],
                    origins[pos],
                    perturb,
                    shifts,
                    points,
                    kx,
                    ky,
                    w,
                    count,
                )
                if likelihood is not None:
                    trial = origins[pos][:, None, :] + shifts[None]  # (b, 9, 2)
                    score = likelihood.of_scores(score, trial[:, :, None, :])
                b = pos.size
                n_l = stencil.shape[0]
                flat = score.reshape(b, -1).argmax(axis=1)
                t_best, l_best = flat // n_l, flat % n_l
                rows = np.arange(b)
                scores[pos] = score[rows, t_best, l_best]
                centre = (t_best == 4) & (l_best == centre_l)
                rot_offset = np.zeros((b, 3))
                shift_offset = np.zeros((b, 2))
                if final:
                    rot_offset, rot_ok = _quadratic_peak(score[rows, t_best, :], _CUBE19_PINV, 3)
                    shift_offset, shift_ok = _quadratic_peak(score[rows, :, l_best], _SQUARE_PINV, 2)
                    rot_offset[~(centre & rot_ok)] = 0.0
                    shift_offset[~(centre & shift_ok)] = 0.0
                step_vec = np.where(centre[:, None], rot_offset, stencil[l_best]) * delta
                shift_vec = np.where(centre[:, None], shift_offset, _SQUARE[t_best]) * shift_step
                rotations[pos] = axis_angle_matrix(step_vec) @ rotations[pos]
                origins[pos] = origins[pos] + shift_vec
                if move < max_moves:
                    still.append(pos[~centre])
            active = np.concatenate(still) if still else np.zeros(0, dtype=np.int64)
    return Poses(rotations, origins, scores)


def _score_neighbourhood(
    volume: FourierVolume,
    data: ParticleTransforms,
    be: Backend,
    sel_np: np.ndarray,
    rotations: np.ndarray,
    origins: np.ndarray,
    perturb: np.ndarray,
    shifts: np.ndarray,
    points: FourierPoints,
    kx: Array,
    ky: Array,
    w: Array,
    count: int,
) -> np.ndarray:
    """Scores ``(b, 9, 27)`` of particles ``sel_np`` at 9 origins x 27 rotations around their poses."""
    b = sel_np.size
    sel = be.asarray(sel_np, "int64")
    candidates = perturb[None] @ rotations[:, None]  # (b, 27, 3, 3)
    proj = volume.slices(candidates.reshape(-1, 3, 3), points).reshape(b, perturb.shape[0], count)
    trial_origins = be.asarray(origins[:, None, :] + shifts[None], "float32")  # (b, 9, 2)
    cos_t, sin_t = phase_parts(be, trial_origins, kx, ky, data.box)  # (b, 9, K)
    yr, yi, wc2 = _weighted(data, sel, count, w)
    zr = yr[:, None, :] * cos_t - yi[:, None, :] * sin_t
    zi = yr[:, None, :] * sin_t + yi[:, None, :] * cos_t
    z_cat = be.concatenate([zr, zi], axis=2)  # (b, 9, 2K)
    p_cat = be.concatenate([proj.real, proj.imag], axis=2)  # (b, 27, 2K)
    cross = z_cat @ (p_cat.transpose(1, 2) if be.name == "torch" else p_cat.transpose(0, 2, 1))
    power = proj.real * proj.real + proj.imag * proj.imag
    norm = be.sqrt(be.maximum(be.einsum("bk,blk->bl", wc2, power), 1e-30))
    return be.to_numpy(cross / norm[:, None, :]).astype(np.float64)
