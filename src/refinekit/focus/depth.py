"""The depth map: where along the stack each pixel is sharpest, refined under an edge-aware
smoothness restraint whose weight is chosen by free-slice cross-validation.

1. Focus curve: a windowed focus measure per frame; at each pixel the frame where it peaks and a
   Gaussian (log-parabola) through the peak and its neighbours give a sub-frame position ``depth0``;
   the curve's contrast ``1 - min/max`` is the confidence (near 0 where texture is too weak to tell).
2. Refinement (a :class:`~refinekit.core.Problem` run by the engine): minimise
   ``sum c * rho(depth - depth0) + weight * sum_edges g * (depth_p - depth_q)^2`` with a Cauchy
   ``rho`` (iteratively reweighted least squares: each correction re-solves the weighted problem, so
   wrong peaks lose their say) and edge weights ``g`` that fall across edges of the all-in-focus image
   (surfaces are mostly smooth, but not across object outlines).
3. Free slices: some frames are held out. The depth map and the all-in-focus image made without them
   predict them through the defocus blur model (:mod:`refinekit.focus.defocus`); the prediction error
   is the free score, and :func:`refinekit.core.choose_weight` picks the smoothness weight that
   minimises it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg

from ..core import (
    FreeFlags,
    InputError,
    RefinementProblem,
    RefinementResult,
    Scores,
    WeightChoice,
    choose_weight,
    refine,
)
from .defocus import BlurTable
from .fusion import fuse
from .measures import PixelMeasure, pixel_focus

# ------------------------------------------------------------------------------- focus curve


def focus_map(grey: np.ndarray, grid_shape: tuple[int, int], *, window: float = 4.0,
              measure: PixelMeasure = "tenengrad", pre_blur: float = 1.0) -> np.ndarray:
    """One frame's focus measure on the depth grid: computed at full resolution, area-averaged to
    ``grid_shape`` and smoothed over a Gaussian window of ``window`` grid pixels."""
    import cv2

    energy = pixel_focus(grey, measure, pre_blur)
    if energy.shape != tuple(grid_shape):
        energy = cv2.resize(energy, (grid_shape[1], grid_shape[0]), interpolation=cv2.INTER_AREA)
    if window > 0:
        energy = cv2.GaussianBlur(energy, (0, 0), window, borderType=cv2.BORDER_REFLECT)
    return energy


def fit_focus_peak(volume: np.ndarray, z: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-frame position of each pixel's focus peak, and a confidence in [0, 1].

    ``volume[k]`` is the focus measure of the frame at position ``z[k]`` (increasing, any spacing).
    The position is the vertex of the parabola through ``log(measure)`` at the best frame and its two
    neighbours (a Gaussian focus curve), kept between those neighbours. The confidence is the focus
    curve's contrast ``1 - min / max``, cut to a tenth where the peak lies on the first or last frame
    (the surface may lie beyond the stack).

    >>> import numpy as np
    >>> z = np.arange(5.0)
    >>> curve = np.exp(-(z - 2.3) ** 2 / 2)[:, None, None] * np.ones((5, 2, 2))
    >>> depth, confidence = fit_focus_peak(curve, z)
    >>> round(float(depth[0, 0]), 6), bool(confidence[0, 0] > 0.9)
    (2.3, True)
    """
    volume = np.asarray(volume, dtype=np.float32)
    z = np.asarray(z, dtype=np.float64)
    n = volume.shape[0]
    if n < 3 or z.size != n:
        raise InputError(f"a focus curve needs at least 3 frames with one position each, got {n}")
    if np.any(np.diff(z) <= 0):
        raise InputError("frame positions must increase through the stack")
    best = np.argmax(volume, axis=0)
    centre = np.clip(best, 1, n - 2)
    rows, cols = np.indices(best.shape, sparse=True)
    log_volume = np.log(np.maximum(volume, np.float32(1e-30)))
    ya = log_volume[centre - 1, rows, cols].astype(np.float64)
    yb = log_volume[centre, rows, cols].astype(np.float64)
    yc = log_volume[centre + 1, rows, cols].astype(np.float64)
    za, zb, zc = z[centre - 1], z[centre], z[centre + 1]
    slope_left = (yb - ya) / (zb - za)
    slope_right = (yc - yb) / (zc - zb)
    mid_left, mid_right = 0.5 * (za + zb), 0.5 * (zb + zc)
    change = slope_right - slope_left
    concave = change < 0
    # the vertex is where the (linear) slope between the two mid-points crosses zero
    vertex = mid_left - slope_left * (mid_right - mid_left) / np.where(concave, change, -1.0)
    depth = np.where(concave, np.clip(vertex, za, zc), z[best])
    peak, floor = volume.max(axis=0), volume.min(axis=0)
    confidence = np.clip(1.0 - floor / np.maximum(peak, np.float32(1e-30)), 0.0, 1.0).astype(np.float64)
    confidence = np.where((best == 0) | (best == n - 1), 0.1 * confidence, confidence)
    return depth, confidence


# ------------------------------------------------------------------------ smoothness restraint
class EdgeAwareSmoothness:
    """Restraint ``weight * mean over neighbour pairs of g * (depth_p - depth_q)^2``.

    ``g = exp(-(guide_p - guide_q)^2 / (2 edge_scale^2))`` is near 1 inside smooth image regions and
    falls across edges of ``guide`` (the all-in-focus image), so depth may step where the image does.
    ``edge_scale`` defaults to a tenth of the guide's 1-99 % intensity range. :meth:`with_weight`
    gives the same restraint at another weight, sharing the (weight-free) grid operators.

    >>> import numpy as np
    >>> guide = np.zeros((4, 4)); guide[:, 2:] = 1.0            # an edge between columns 1 and 2
    >>> r = EdgeAwareSmoothness(guide, weight=2.0)
    >>> step = np.where(np.arange(4) >= 2, 1.0, 0.0) * np.ones((4, 1))
    >>> ramp = np.arange(4.0) / 3 * np.ones((4, 1))
    >>> r.penalty(step) < r.penalty(ramp)                       # a step at the edge costs (almost) nothing
    True
    """

    name = "smoothness"

    def __init__(self, guide: np.ndarray, weight: float = 1.0, edge_scale: float | None = None) -> None:
        guide = np.asarray(guide, dtype=np.float64)
        if edge_scale is None:
            lo, hi = np.percentile(guide, [1, 99])
            edge_scale = 0.1 * max(float(hi - lo), 1e-6)
        self.guide = guide
        self.weight = float(weight)
        self.edge_scale = float(edge_scale)
        self.wx, self.wy = _edge_weights(guide, self.edge_scale)
        self._n = guide.size
        self._grids: list[tuple[tuple[int, int], sparse.csr_matrix]] = []

    def with_weight(self, weight: float) -> EdgeAwareSmoothness:
        twin = object.__new__(EdgeAwareSmoothness)
        twin.__dict__.update(self.__dict__)
        twin.weight = float(weight)
        return twin

    def penalty(self, depth: np.ndarray) -> float:
        dx = np.diff(depth, axis=1)
        dy = np.diff(depth, axis=0)
        return float((np.sum(self.wx * dx * dx) + np.sum(self.wy * dy * dy)) / self._n)

    def gradient(self, depth: np.ndarray) -> np.ndarray:
        return 2.0 * (_laplacian(self.wx, self.wy) @ np.ravel(depth)).reshape(depth.shape) / self._n

    def statistics(self, depth: np.ndarray) -> dict[str, float]:
        """``depth_roughness``: root-mean-square edge-weighted step between neighbours (frames)."""
        return {"depth_roughness": float(np.sqrt(self.penalty(depth) / 2.0))}

    def grids(self, coarsest: int) -> list[tuple[tuple[int, int], sparse.csr_matrix]]:
        """(shape, graph Laplacian) of the guide on the grid and on grids halved until at most
        ``coarsest`` pixels remain (the guide averaged over 2x2 blocks)."""
        if not self._grids:
            guide = self.guide
            grids = [(guide.shape, _laplacian(self.wx, self.wy))]
            while guide.size > coarsest and min(guide.shape) >= 8:
                guide = _halve(guide, "mean")
                grids.append((guide.shape, _laplacian(*_edge_weights(guide, self.edge_scale))))
            self._grids = grids
        return self._grids


def _edge_weights(guide: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    gx = np.diff(guide, axis=1)
    gy = np.diff(guide, axis=0)
    return np.exp(-gx * gx / (2 * scale * scale)), np.exp(-gy * gy / (2 * scale * scale))


def _laplacian(wx: np.ndarray, wy: np.ndarray) -> sparse.csr_matrix:
    """The weighted graph Laplacian of the 4-neighbour grid (edge weights ``wx``, ``wy``)."""
    h, w = wx.shape[0], wx.shape[1] + 1
    index = np.arange(h * w).reshape(h, w)
    a = np.concatenate([index[:, :-1].ravel(), index[:-1, :].ravel()])
    b = np.concatenate([index[:, 1:].ravel(), index[1:, :].ravel()])
    weights = np.concatenate([wx.ravel(), wy.ravel()])
    degree = np.bincount(a, weights, h * w) + np.bincount(b, weights, h * w)
    rows = np.concatenate([a, b, np.arange(h * w)])
    cols = np.concatenate([b, a, np.arange(h * w)])
    return sparse.csr_matrix((np.concatenate([-weights, -weights, degree]), (rows, cols)),
                             shape=(h * w, h * w))


def _halve(array: np.ndarray, reduce: str) -> np.ndarray:
    h, w = array.shape
    padded = np.pad(array, ((0, h % 2), (0, w % 2)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2)
    return blocks.sum(axis=(1, 3)) if reduce == "sum" else blocks.mean(axis=(1, 3))


def _pcg(matrix: sparse.csr_matrix, rhs: np.ndarray, x: np.ndarray, iterations: int) -> np.ndarray:
    """Conjugate gradients with a Jacobi preconditioner, a fixed number of iterations (the start is
    already close: it is the interpolated coarser solution)."""
    scratch = np.empty_like(rhs)

    def dot(a: np.ndarray, b: np.ndarray) -> float:
        # an elementwise product and a sum, not BLAS: a multithreaded BLAS dot spins its threads,
        # which costs far more CPU than it saves on vectors of this size
        return float(np.multiply(a, b, out=scratch).sum(dtype=np.float64))

    inverse_diagonal = 1.0 / matrix.diagonal()
    residual = rhs - matrix @ x
    z = inverse_diagonal * residual
    direction = z.copy()
    rz = dot(residual, z)
    for _ in range(iterations):
        if rz <= 1e-30:
            break
        product = matrix @ direction
        alpha = rz / dot(direction, product)
        x += alpha * direction
        residual -= alpha * product
        np.multiply(inverse_diagonal, residual, out=z)
        rz_next = dot(residual, z)
        direction *= rz_next / rz
        direction += z
        rz = rz_next
    return x


def solve_smooth(target: np.ndarray, data_weight: np.ndarray, smoothness: EdgeAwareSmoothness,
                 *, coarsest: int = 4096, iterations: int = 20) -> np.ndarray:
    """Minimiser of ``sum data_weight * (x - target)^2 + w * sum g * (x_p - x_q)^2`` (w, g: the
    restraint's weight and edge weights).

    Cascadic multigrid: the problem is solved exactly (sparse LU) on a grid coarsened until it has at
    most ``coarsest`` pixels (data weights summed over 2x2 blocks, the guide averaged: the energy of
    a smooth map is then the same on every grid), and each finer grid starts from the interpolated
    coarser solution and runs ``iterations`` of Jacobi-preconditioned conjugate gradients.
    """
    import cv2

    grids = smoothness.grids(coarsest)
    levels = [(np.asarray(target, np.float64), np.asarray(data_weight, np.float64) + 1e-9)]
    for _ in grids[1:]:
        t, c = levels[-1]
        c_small = _halve(c, "sum")
        levels.append((_halve(c * t, "sum") / c_small, c_small))
    solution: np.ndarray | None = None
    for (shape, laplacian), (t, c) in reversed(list(zip(grids, levels, strict=True))):
        matrix = (smoothness.weight * laplacian + sparse.diags(c.ravel())).tocsr()
        rhs = (c * t).ravel()
        if solution is None:
            solution = sparse_linalg.spsolve(matrix.tocsc(), rhs).reshape(shape)
            continue
        start = cv2.resize(solution.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        # single precision halves the memory traffic of the iterations; depth needs ~4 digits
        solution = _pcg(matrix.astype(np.float32), rhs.astype(np.float32), start.ravel(),
                        iterations).reshape(shape).astype(np.float64)
    assert solution is not None
    return solution


# -------------------------------------------------------------------------------- free slices
class FreeSliceScore:
    """The free score of a depth map: root-mean-square error (intensity, [0, 1] scale) of held-out
    frames predicted from the all-in-focus image made without them (``table``), blurred per pixel by
    ``blur_rate * |depth - z|`` px.

    ``border`` pixels at the edges are left out; inside, pixels on a lattice of ``stride`` are scored
    (neighbouring errors are strongly correlated through the blur, so a sparser lattice loses little
    and costs a fraction); by default the stride keeps about 16 000 pixels per frame.
    """

    def __init__(self, table: BlurTable, frames: np.ndarray, z: np.ndarray, blur_rate: float,
                 border: int = 0, stride: int | None = None) -> None:
        frames = np.asarray(frames, dtype=np.float32)
        h, w = frames.shape[1:]
        b = int(border)
        if stride is None:
            stride = max(1, int(np.sqrt(max(h - 2 * b, 1) * max(w - 2 * b, 1) / 16384.0)))
        rows = np.arange(b, h - b, stride)
        cols = np.arange(b, w - b, stride)
        if rows.size == 0 or cols.size == 0:
            raise InputError(f"the border ({b} px) leaves no pixels of a {w}x{h} image to score")
        self.pixels = (rows[:, None] * w + cols[None, :]).ravel()
        # spatial blocks (about 8 x 8 of them) for the standard error of score differences
        block_rows = np.minimum(np.arange(rows.size) * 8 // rows.size, 7)
        block_cols = np.minimum(np.arange(cols.size) * 8 // cols.size, 7)
        self.blocks = (block_rows[:, None] * 8 + block_cols[None, :]).ravel()
        self.observed = frames.reshape(frames.shape[0], -1)[:, self.pixels]
        self.table = table
        self.z = np.asarray(z, dtype=np.float64)
        self.blur_rate = float(blur_rate)
        self.stride = int(stride)

    def per_frame(self, depth: np.ndarray) -> list[float]:
        sampled = np.ravel(depth)[self.pixels]
        out = []
        for observed, position in zip(self.observed, self.z, strict=True):
            predicted = self.table.predict_at(self.blur_rate * np.abs(sampled - position), self.pixels)
            out.append(float(np.sqrt(np.mean(np.square(predicted - observed), dtype=np.float64))))
        return out

    def __call__(self, depth: np.ndarray) -> float:
        return float(np.sqrt(np.mean(np.square(self.per_frame(depth)))))

    def block_errors(self, depth: np.ndarray) -> np.ndarray:
        """Mean squared prediction error per (held-out frame, spatial block), flattened."""
        sampled = np.ravel(depth)[self.pixels]
        out = []
        for observed, position in zip(self.observed, self.z, strict=True):
            predicted = self.table.predict_at(self.blur_rate * np.abs(sampled - position), self.pixels)
            squared = np.square(predicted - observed, dtype=np.float64)
            counts = np.bincount(self.blocks, minlength=64)
            out.append(np.bincount(self.blocks, squared, minlength=64)[counts > 0] / counts[counts > 0])
        return np.concatenate(out)


def estimate_blur_rate(table: BlurTable, frames: np.ndarray, z: np.ndarray, depth: np.ndarray,
                       *, border: int = 0) -> float:
    """The defocus blur (px per frame) that best predicts ``frames`` from ``table`` and ``depth``."""
    from scipy.optimize import minimize_scalar

    spread = float(max(np.max(np.abs(depth - z.min())), np.max(np.abs(depth - z.max())), 1e-6))
    upper = max(table.max_radius / spread, 0.2)
    score = FreeSliceScore(table, frames, z, 1.0, border)

    def error(rate: float) -> float:
        score.blur_rate = rate
        return score(depth)

    grid = np.geomspace(0.05, upper, 12)
    values = [error(r) for r in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    found = minimize_scalar(error, bounds=(lo, hi), method="bounded", options={"xatol": 1e-3})
    return float(found.x)


# ---------------------------------------------------------------------------------- problem
class DepthProblem(RefinementProblem):
    """Depth refinement for the engine: robust data term, edge-aware smoothness, free slices.

    ``initial`` is the plain weighted least-squares solution; each correction reweights the data
    (Cauchy weights ``c / (1 + (r / robust_scale)^2)``, ``r = depth - depth0``) and re-solves, a
    fixed-point (IRLS) iteration that the engine stops when the correction is small. The work score is
    the robust root-mean-square residual (frames); the free score, where ``free`` is given, the
    free-slice prediction error.

    >>> import numpy as np
    >>> from refinekit.core import refine
    >>> rng = np.random.default_rng(0)
    >>> truth = np.add.outer(np.linspace(2, 6, 40), np.linspace(0, 2, 40))
    >>> noisy = truth + rng.normal(0, 0.3, truth.shape)
    >>> noisy[5, 5] = 40.0                                          # a wrong peak
    >>> problem = DepthProblem(noisy, np.ones_like(truth), EdgeAwareSmoothness(np.zeros_like(truth), 5.0))
    >>> result = refine(problem, xtol=1e-4, restore_best=False)
    >>> bool(np.sqrt(np.mean((result.x - truth) ** 2)) < 0.1), result.status.label
    (True, 'converged')
    """

    def __init__(self, depth0: np.ndarray, confidence: np.ndarray, smoothness: EdgeAwareSmoothness,
                 free: FreeSliceScore | None = None, robust_scale: float = 1.0) -> None:
        self.depth0 = np.asarray(depth0, dtype=np.float64)
        self.confidence = np.asarray(confidence, dtype=np.float64)
        if self.depth0.shape != self.confidence.shape or self.depth0.shape != smoothness.guide.shape:
            raise InputError("depth, confidence and guide must have one shape")
        self.smoothness = smoothness
        self.restraints = (smoothness,)
        self.free = free
        self.robust_scale = float(robust_scale)

    def initial(self) -> np.ndarray:
        return solve_smooth(self.depth0, self.confidence, self.smoothness)

    def _data_weight(self, depth: np.ndarray) -> np.ndarray:
        r = (depth - self.depth0) / self.robust_scale
        return self.confidence / (1.0 + r * r)

    def check(self, depth: np.ndarray) -> Scores:
        r = (depth - self.depth0) / self.robust_scale
        loss = self.robust_scale ** 2 * np.log1p(r * r)
        total = float(np.sum(self.confidence))
        work = float(np.sqrt(np.sum(self.confidence * loss) / max(total, 1e-12)))
        outliers = float(np.sum(self.confidence * (np.abs(r) > 2.0)) / max(total, 1e-12))
        free = None if self.free is None else self.free(depth)
        return Scores(work=work, free=free, figures={"depth_outlier_fraction": outliers})

    def correct(self, depth: np.ndarray, scores: Scores) -> np.ndarray:
        return solve_smooth(self.depth0, self._data_weight(depth), self.smoothness) - depth


# ----------------------------------------------------------------------------------- pipeline
@dataclass
class DepthEstimate:
    """A depth map (frame units, on the depth grid), its confidence, and how it was obtained.

    ``weight``: the smoothness weight used; ``choice``: the free-slice weight choice (None where the
    weight was given or the stack is too short to hold frames out); ``free_frames``: indices of the
    held-out frames; ``blur_rate``: the fitted defocus blur (grid px per frame); ``result``: the
    engine's result of the final refinement on all frames.
    """

    depth: np.ndarray
    confidence: np.ndarray
    weight: float
    result: RefinementResult
    choice: WeightChoice | None = None
    free_frames: list[int] = field(default_factory=list)
    blur_rate: float | None = None
    free_score: float | None = None
    message: str = ""

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.result.status.label, "message": self.message or self.result.message,
            "weight": self.weight, "free_frames": self.free_frames, "blur_rate": self.blur_rate,
            "free": self.free_score, "n_cycles": self.result.n_cycles,
            "depth_min": float(np.min(self.depth)), "depth_max": float(np.max(self.depth)),
            "confidence_mean": float(np.mean(self.confidence)),
        }
        if self.choice is not None:
            out["weight_trials"] = [{"weight": t.weight, "free": t.free, "work": t.work,
                                     "status": t.status} for t in self.choice.trials]
        return out


def _apply_rule(choice: WeightChoice, scorer: FreeSliceScore, rule: str) -> tuple[float, float, str]:
    """(weight, its free score, message) from the trials of a weight choice under ``rule``."""
    feasible = [t for t in choice.trials if t.feasible and np.isfinite(t.free)]
    best = min(feasible, key=lambda t: t.free)
    if rule == "min":
        return best.weight, best.free, choice.message
    reference = scorer.block_errors(choice.results[best.weight].x)
    chosen = best
    for trial in sorted(feasible, key=lambda t: t.weight):
        if trial.weight <= best.weight:
            continue
        difference = scorer.block_errors(choice.results[trial.weight].x) - reference
        standard_error = float(difference.std(ddof=1) / np.sqrt(difference.size))
        if float(difference.mean()) <= standard_error:
            chosen = trial
    message = (f"weight {chosen.weight:.4g}: the largest of {len(choice.trials)} trial weights whose "
               f"free score ({chosen.free:.5g}) is within one standard error of the lowest "
               f"({best.free:.5g}, weight {best.weight:.4g})")
    weights = [t.weight for t in choice.trials]
    if chosen.weight == max(weights) or best.weight == min(weights):
        message += "; the choice is at a bound of the weight range: widen the bounds"
    return chosen.weight, chosen.free, message


def default_free_frames(n_frames: int, every: int = 3) -> list[int]:
    """Held-out frames: every ``every``-th interior frame (2, 5, 8, ... for ``every`` = 3), never the
    first or last (a held-out end frame would be predicted by extrapolation). Empty below 5 frames.

    >>> default_free_frames(15), default_free_frames(7), default_free_frames(4)
    ([2, 5, 8, 11], [2, 5], [])
    """
    if n_frames < 5:
        return []
    return [k for k in range(2, n_frames - 1, every)]


def estimate_depth(
    volume: np.ndarray,
    greys: np.ndarray,
    z: Sequence[float] | np.ndarray,
    *,
    guide: np.ndarray | None = None,
    weight: float | None = None,
    free_frames: Iterable[int] | FreeFlags | None = None,
    bounds: tuple[float, float] = (0.01, 1000.0),
    robust_scale: float = 1.0,
    border: int | None = None,
    n_grid: int = 6,
    n_golden: int = 2,
    trial_cycles: int = 2,
    max_cycles: int = 10,
    rule: str = "one_se",
    callbacks: Sequence[Any] = (),
) -> DepthEstimate:
    """Depth map from a focus volume (``volume[k]``: windowed focus measure of frame ``k`` at position
    ``z[k]``) and the frames' grey images on the same grid (``greys``, for the free slices).

    With ``weight`` None the smoothness weight is chosen by free-slice cross-validation between
    ``bounds``: ``free_frames`` (default :func:`default_free_frames`) are held out, and each trial
    weight is scored by how well the depth and all-in-focus image made without them predict them.
    ``rule``: ``min`` takes the weight of the lowest free score; ``one_se`` (default) the largest
    weight whose free score is not worse than the lowest by more than one standard error of the
    paired difference (over spatial blocks of the held-out frames) - the one-standard-error rule of
    cross-validation: the smoother surface unless the held-out frames say it predicts them worse.
    The final depth map is then refined on all frames with the chosen weight. ``guide`` (the fused
    all-in-focus grey image on the grid; made from ``greys`` if not given) steers the edge weights.
    """
    volume = np.asarray(volume, dtype=np.float32)
    greys = np.asarray(greys, dtype=np.float32)
    z = np.asarray(z, dtype=np.float64)
    n = volume.shape[0]
    if greys.shape != volume.shape or z.size != n:
        raise InputError("focus volume, grey frames and positions must describe the same frames")
    border = max(2, min(volume.shape[1:]) // 25) if border is None else border
    if rule not in ("min", "one_se"):
        raise InputError(f"unknown weight rule {rule!r} (min, one_se)")
    if isinstance(free_frames, FreeFlags):
        free_list = [int(i) for i in np.flatnonzero(free_frames.free)]
    elif free_frames is None:
        free_list = default_free_frames(n) if weight is None else []
    else:
        free_list = sorted({int(i) for i in free_frames})
    if any(not 0 < i < n - 1 for i in free_list):
        raise InputError(f"free frames must be interior frames (1..{n - 2}), got {free_list}")

    choice: WeightChoice | None = None
    blur_rate: float | None = None
    free_score: float | None = None
    message = ""
    if weight is None and len(free_list) > 0 and n - len(free_list) >= 3:
        work = [k for k in range(n) if k not in free_list]
        depth0_w, confidence_w = fit_focus_peak(volume[work], z[work])
        aif_w = fuse(greys[work])
        table = BlurTable(aif_w, max_radius=min(max(aif_w.shape) / 6.0, 40.0))
        smooth_w = EdgeAwareSmoothness(aif_w, 10.0)
        start = solve_smooth(depth0_w, confidence_w, smooth_w)
        blur_rate = estimate_blur_rate(table, greys[work], z[work], start, border=border)
        scorer = FreeSliceScore(table, greys[free_list], z[free_list], blur_rate, border)

        def make_problem(w: float) -> DepthProblem:
            return DepthProblem(depth0_w, confidence_w, smooth_w.with_weight(w), scorer,
                                robust_scale)

        choice = choose_weight(make_problem, bounds=bounds, n_grid=n_grid, n_golden=n_golden,
                               max_cycles=trial_cycles, xtol=1e-3)
        weight, free_score, message = _apply_rule(choice, scorer, rule)
    elif weight is None:
        weight = float(np.sqrt(bounds[0] * bounds[1]))
        message = (f"too few frames ({n}) to hold any out: smoothness weight {weight:.3g} "
                   "(geometric middle of the bounds) was not validated")
    if not (np.isfinite(weight) and weight > 0):  # inf makes the smoothness system singular
        raise InputError(f"the smoothness weight must be a finite number > 0, got {weight}")

    depth0, confidence = fit_focus_peak(volume, z)
    if guide is None:
        guide = fuse(greys)
    problem = DepthProblem(depth0, confidence, EdgeAwareSmoothness(guide, float(weight)), None, robust_scale)
    result = refine(problem, max_cycles=max_cycles, xtol=1e-3, restore_best=False, callbacks=callbacks)
    return DepthEstimate(result.x, confidence, float(weight), result, choice, free_list, blur_rate,
                         free_score, message)
