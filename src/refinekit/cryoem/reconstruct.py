"""Reconstruction from posed particles: CTF-weighted Fourier insertion, a Wiener-type regulariser from
the FSC, gold-standard half maps.

Each image's transform, centred by its origin, enters the 3D transform at its central slice as
``w C X`` with weight ``w C^2`` (``w`` the inverse noise power per shell). The map is
``D / (W + lambda)``: ``lambda`` per shell is the inverse signal power, estimated from the half-map FSC
as ``lambda = mean(W) / SSNR`` with ``SSNR = FSC / (1 - FSC)`` (the prior that keeps shells without
signal from inventing detail). With no FSC yet, ``lambda`` is a small fraction of ``mean(W)``, which only
keeps sparsely sampled voxels from blowing up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import Backend, NumpyBackend
from .fourier import BackProjector
from .fsc import FSCReport, gold_standard_fsc
from .search import ParticleTransforms, phase_parts

#: lambda / mean(W) where nothing is known of the signal: a 5 % shrinkage where the data are average.
MINIMAL_REGULARISATION = 0.05


def backproject_particles(
    data: ParticleTransforms,
    index: np.ndarray,
    rotations: np.ndarray,
    origins: np.ndarray,
    noise_weights: np.ndarray,
    pad: int = 2,
    pose_weights: np.ndarray | None = None,
    batch: int = 256,
) -> BackProjector:
    """A back-projector holding particles ``index`` (unmasked images) at ``rotations`` and ``origins``
    (in ``index`` order), weighted by ``noise_weights`` per shell and, where given, by ``pose_weights``
    per entry (a particle may then appear several times, at its likely poses: the expectation over
    poses of its contribution)."""
    be = data.backend
    bp = BackProjector(data.box, pad, be)
    points = data.points
    kx, ky = be.asarray(points.kx, "float32"), be.asarray(points.ky, "float32")
    w = be.asarray(noise_weights[points.shell], "float32")
    for start in range(0, index.size, batch):
        sel_np = index[start : start + batch]
        sel = be.asarray(sel_np, "int64")
        x = data.unmasked[sel]
        c = data.ctf[sel] * w[None]
        p = np.ones(sel_np.size) if pose_weights is None else np.asarray(pose_weights[start : start + batch])
        if pose_weights is not None:
            c = c * be.asarray(p, "float32")[:, None]
        cos_t, sin_t = phase_parts(
            be, be.asarray(origins[start : start + batch], "float32"), kx, ky, data.box
        )
        xr = x.real * cos_t - x.imag * sin_t
        xi = x.real * sin_t + x.imag * cos_t
        values = be.complex(c * xr, c * xi)
        bp.insert(rotations[start : start + batch], points, values, c * data.ctf[sel])
        w0 = float(noise_weights[0])
        c0 = data.ctf_dc[sel_np]
        bp.insert_dc(float(np.sum(p * w0 * c0 * data.dc[sel_np])), float(np.sum(p * w0 * c0 * c0)))
    return bp


def regularisation_from_fsc(
    fsc: np.ndarray | None, mean_weight: np.ndarray, floor: float = MINIMAL_REGULARISATION
) -> np.ndarray:
    """``lambda`` per shell: ``mean(W) / SSNR`` with ``SSNR = FSC / (1 - FSC)`` (FSC clipped to
    [0.001, 0.999]), and never below ``floor * mean(W)``; ``floor * mean(W)`` without an FSC."""
    mean_weight = np.asarray(mean_weight, dtype=float)
    if fsc is None:
        return floor * mean_weight
    f = np.clip(np.asarray(fsc, dtype=float), 1e-3, 0.999)
    ssnr = f / (1 - f)
    return np.maximum(mean_weight / ssnr, floor * mean_weight)


@dataclass
class Reconstruction:
    """The two half maps as reconstructed (``half_maps``, only the minimal regulariser: what the FSC is
    measured on and post-processing starts from), the same Wiener-filtered with the FSC
    (``filtered_half_maps``: the next references), the full map from both halves (Wiener-filtered), the
    FSC and the full map's ``lambda`` per shell."""

    half_maps: tuple[np.ndarray, np.ndarray]
    filtered_half_maps: tuple[np.ndarray, np.ndarray]
    full_map: np.ndarray
    fsc: FSCReport
    regularisation: np.ndarray


def reconstruct_halves(
    bp1: BackProjector,
    bp2: BackProjector,
    pixel_size: float,
) -> Reconstruction:
    """Half maps, their (unmasked) FSC, the half maps Wiener-filtered with that FSC, and the full map
    from both halves.

    The FSC is measured on the half maps with the minimal regulariser: a Wiener filter that damps a shell
    more where it has less signal would leave the masked FSC of the weak shells to be made of what the
    mask spreads from the strong ones.
    """
    # each half is regularised with its own data weight, so that nothing of one half's images reaches
    # the other's map (the FSC, shell by shell, is what the halves share: the signal-to-noise prior)
    weights = (bp1.weight_by_shell(), bp2.weight_by_shell())
    raw = (
        bp1.reconstruct(regularisation_from_fsc(None, weights[0])),
        bp2.reconstruct(regularisation_from_fsc(None, weights[1])),
    )
    report = gold_standard_fsc(raw[0], raw[1], pixel_size)
    lam = [regularisation_from_fsc(report.unmasked, w) for w in weights]
    filtered = (bp1.reconstruct(lam[0]), bp2.reconstruct(lam[1]))
    # the full map: lambda = 1 / (signal power), which does not depend on how much data there is
    lam_full = 0.5 * (lam[0] + lam[1])
    full = bp1.merged_with(bp2).reconstruct(lam_full)
    return Reconstruction(raw, filtered, full, report, lam_full)


def reconstruct_single(bp: BackProjector) -> np.ndarray:
    """A map from one set with the minimal regulariser only (no FSC to set a better one)."""
    return bp.reconstruct(regularisation_from_fsc(None, bp.weight_by_shell()))


def default_backend(backend: Backend | None) -> Backend:
    return backend or NumpyBackend()
