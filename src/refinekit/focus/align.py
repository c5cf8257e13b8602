"""Frame alignment: an affine (or similarity, rigid, translation) warp of every frame onto a reference
frame, by OpenCV's enhanced-correlation-coefficient maximisation (ECC; Evangelidis & Psarakis 2008).

Focus breathing changes the magnification through a stack and handheld stacks shift, so frames are
registered before fusion. The warp is estimated on a downscaled grey copy (ECC is insensitive to the
contrast changes that defocus brings), then scaled up. Frames are visited outward from the reference,
each starting from its neighbour's warp, so that far-defocused frames start close to their answer.
A warp whose largest displacement is below ``min_shift`` pixels is not applied: resampling would only
blur an already aligned frame. A warp whose ECC correlation is below ``min_correlation`` is not applied
either: on frames with nothing in common (noise, a view moved by half the frame) ECC can still
"converge", at correlations of 0.02-0.3, to a warp that is garbage; real stacks, even far-defocused
frames, correlate above 0.7.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

Motion = Literal["affine", "similarity", "rigid", "translation"]
MOTIONS: tuple[str, ...] = get_args(Motion)


@dataclass
class FrameWarp:
    """One frame's warp: a 2x3 matrix taking reference pixel coordinates to frame coordinates
    (OpenCV's inverse map), its ECC correlation, and whether it is applied."""

    matrix: np.ndarray
    correlation: float | None = None
    applied: bool = False
    failed: str | None = None

    def max_shift(self, shape: tuple[int, int]) -> float:
        """Largest displacement (px) of the frame's corners under the warp."""
        h, w = shape
        corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], dtype=np.float64)
        moved = corners @ self.matrix.T
        return float(np.max(np.hypot(*(moved - corners[:, :2]).T)))

    def to_dict(self) -> dict:
        return {"matrix": self.matrix.round(6).tolist(), "correlation": self.correlation,
                "applied": self.applied, "failed": self.failed}


@dataclass
class Aligner:
    """Estimates and applies warps onto a reference frame (see the module docstring).

    ``max_side``: the grey copy used for estimation is downscaled so that its longer side is at most
    this many pixels. Call :meth:`set_reference` with the reference frame, then :meth:`align` with
    each other frame (visiting frames outward from the reference) and the index of its neighbour
    nearer the reference, whose warp is the starting guess.

    >>> import numpy as np, cv2
    >>> rng = np.random.default_rng(0)
    >>> world = cv2.GaussianBlur(rng.random((140, 180)).astype(np.float32), (0, 0), 2)
    >>> scene, shifted = world[10:130, 10:170], world[7:127, 12:172]   # moved 3 px down, 2 px left
    >>> aligner = Aligner(); aligner.set_reference(scene)
    >>> warp = aligner.estimate(shifted, index=1)
    >>> [round(float(v), 1) for v in warp.matrix[:, 2]]
    [-2.0, 3.0]
    """

    motion: Motion = "affine"
    max_side: int = 512
    min_shift: float = 0.25
    min_correlation: float = 0.5
    max_iterations: int = 100
    filter_size: int = 5
    warps: dict[int, FrameWarp] = field(default_factory=dict)

    def set_reference(self, frame: np.ndarray, index: int = 0) -> None:
        import cv2

        self.shape = frame.shape[:2]
        self.scale = min(1.0, self.max_side / max(self.shape))
        self._reference = self._small(frame)
        # leave the outer few percent out of the correlation: content that a frame's warp brings in
        # from beyond its edge (or an extrapolated border) would pull the estimate
        h, w = self._reference.shape
        margin = max(2, round(0.03 * max(h, w)))
        self._mask = np.zeros((h, w), np.uint8)
        self._mask[margin:h - margin, margin:w - margin] = 1
        self.reference_index = index
        self.warps = {index: FrameWarp(np.eye(2, 3), 1.0, False)}
        self._cv2 = cv2

    def _small(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        from .measures import to_grey

        grey = to_grey(frame)
        if self.scale < 1.0:
            size = (max(8, round(self.shape[1] * self.scale)), max(8, round(self.shape[0] * self.scale)))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        # normalise: ECC is gain-invariant already, this keeps its tolerances meaningful
        grey = grey - float(grey.mean())
        return grey / max(float(grey.std()), 1e-12)

    def estimate(self, frame: np.ndarray, index: int, start_from: int | None = None) -> FrameWarp:
        """The warp of ``frame`` onto the reference; ``start_from``: the neighbour whose warp starts it."""
        cv2 = self._cv2
        small = self._small(frame)
        sy = small.shape[0] / self.shape[0]
        sx = small.shape[1] / self.shape[1]
        start = self.warps.get(start_from if start_from is not None else self.reference_index)
        initial = _to_small(start.matrix if start is not None else np.eye(2, 3), sx, sy)
        # OpenCV's ECC has no similarity model (scale + rotation + shift, i.e. focus breathing): it is
        # fitted as affine and projected onto the nearest similarity
        mode = {"affine": cv2.MOTION_AFFINE, "similarity": cv2.MOTION_AFFINE,
                "rigid": cv2.MOTION_EUCLIDEAN, "translation": cv2.MOTION_TRANSLATION}[self.motion]
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, self.max_iterations, 1e-6)
        warp = FrameWarp(np.eye(2, 3))
        try:
            correlation, matrix = cv2.findTransformECC(self._reference, small, initial.astype(np.float32),
                                                       mode, criteria, self._mask, self.filter_size)
            full = _to_full(matrix.astype(np.float64), sx, sy)
            if self.motion == "similarity":
                full = _nearest_similarity(full)
            warp = FrameWarp(full, float(correlation))
            if not _plausible(full, self.shape):
                warp = FrameWarp(np.eye(2, 3), float(correlation), failed="implausible warp rejected")
            elif correlation < self.min_correlation:
                reason = f"ECC correlation {correlation:.2f} is below {self.min_correlation:g}"
                warp = FrameWarp(np.eye(2, 3), float(correlation),
                                 failed=f"{reason}: the frame does not match the reference")
        except cv2.error as exc:
            # OpenCV's message reads "... error: (-7:Iterations do not converge) ..."
            found = re.search(r"\(-?\d+:([^)]*)\)", str(exc))
            reason = found.group(1).strip() if found else "no convergence"
            warp = FrameWarp(np.eye(2, 3), None, failed=f"ECC failed: {reason.lower()}")
        warp.applied = warp.failed is None and warp.max_shift(self.shape) >= self.min_shift
        self.warps[index] = warp
        return warp

    def apply(self, frame: np.ndarray, warp: FrameWarp) -> tuple[np.ndarray, np.ndarray | None]:
        """``frame`` resampled onto the reference grid and a mask of the pixels it really covers
        (None where the warp is not applied)."""
        if not warp.applied:
            return frame, None
        cv2 = self._cv2
        h, w = self.shape
        flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
        out = cv2.warpAffine(frame, warp.matrix, (w, h), flags=flags, borderMode=cv2.BORDER_REFLECT101)
        ones = np.ones((h, w), np.uint8)
        valid = cv2.warpAffine(ones, warp.matrix, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        # a pixel is covered if its resampling footprint (4x4 for cubic) lies inside the frame
        return out, cv2.erode(valid, np.ones((3, 3), np.uint8)) > 0


def _to_small(matrix: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Full-resolution warp -> the same warp between the downscaled images.

    Pixel centres sit at integers, so a small coordinate is ``s * (x + 0.5) - 0.5``.
    """
    scale = np.array([sx, sy])
    half = np.full(2, 0.5)
    a = matrix[:, :2]
    a_small = a * scale[:, None] / scale[None, :]
    b_small = a_small @ half - scale * (a @ half) + scale * matrix[:, 2] + scale * half - half
    return np.column_stack([a_small, b_small])


def _to_full(matrix: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Warp between the downscaled images -> full-resolution warp (inverse of :func:`_to_small`)."""
    scale = np.array([sx, sy])
    half = np.full(2, 0.5)
    a_small = matrix[:, :2]
    a = a_small * scale[None, :] / scale[:, None]
    b = (matrix[:, 2] - a_small @ half + half) / scale + a @ half - half
    return np.column_stack([a, b])


def _nearest_similarity(matrix: np.ndarray) -> np.ndarray:
    """The similarity ``[[p, -q], [q, p]]`` nearest (Frobenius) to the linear part; shift kept."""
    (a, b), (c, d) = matrix[:, :2]
    p, q = 0.5 * (a + d), 0.5 * (c - b)
    return np.array([[p, -q, matrix[0, 2]], [q, p, matrix[1, 2]]])


def _plausible(matrix: np.ndarray, shape: tuple[int, int]) -> bool:
    """A focus stack moves little: scale within 25 %, shear and rotation small, shift < 1/4 frame."""
    a = matrix[:, :2]
    singular = np.linalg.svd(a, compute_uv=False)
    if not (0.75 < singular.min() and singular.max() < 1.33):
        return False
    return bool(np.all(np.abs(matrix[:, 2]) < 0.25 * np.array(shape[::-1]) + 0.3 * max(shape)))
