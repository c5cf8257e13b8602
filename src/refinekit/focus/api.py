"""``refinekit.focus.fuse_stack``: a focal stack in, an all-in-focus image and a depth map out.

One streaming pass over the frames (each decoded once, visited outward from the reference frame):
align, add to the pyramid fusion, and, for the depth map, record the frame's focus measure and grey
image on the (coarser) depth grid. Then the depth map is refined on that grid and scaled up.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core import InputError
from .align import MOTIONS, Aligner, FrameWarp, Motion
from .depth import DepthEstimate, estimate_depth, focus_map
from .fusion import PyramidFusion
from .io import Stack, as_stack, to_dtype
from .measures import to_grey
from .order import focus_order, focus_signature


@dataclass
class FocusResult:
    """What :func:`fuse_stack` returns.

    ``fused``: the all-in-focus image, float32 in [0, 1] (``fused_native()`` gives the input's bit
    depth). ``order``: the input frame indices in the order used (focus order). ``warps``: one per
    frame in that order. ``depth``: the depth estimate on the depth grid (None unless asked for);
    ``depth_map`` / ``confidence``: depth (frame units: frame ``k`` of ``order`` is at ``k``) and
    confidence at full size; ``zstep``: µm per frame, if known.
    """

    fused: np.ndarray
    dtype: np.dtype
    names: list[str]
    order: list[int]
    warps: list[FrameWarp]
    depth: DepthEstimate | None = None
    depth_map: np.ndarray | None = None
    confidence: np.ndarray | None = None
    zstep: float | None = None
    sorted: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    alarms: list[str] = field(default_factory=list)

    def fused_native(self) -> np.ndarray:
        """The fused image at the input's bit depth."""
        return to_dtype(np.clip(self.fused, 0.0, 1.0) if self.dtype != np.float32 else self.fused, self.dtype)

    def depth_um(self) -> np.ndarray | None:
        """Depth in µm (frame units times ``zstep``), or None without a z-step or a depth map."""
        if self.depth_map is None or self.zstep is None:
            return None
        return self.depth_map * np.float32(self.zstep)

    @property
    def usable(self) -> bool:
        return self.depth is None or self.depth.result.usable

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "frames": len(self.order), "shape": list(self.fused.shape), "bits": _bits(self.dtype),
            "order": [self.names[i] for i in self.order], "sorted": self.sorted,
            "alignment": [{"frame": self.names[i], **w.to_dict()} for i, w in zip(self.order, self.warps,
                                                                                  strict=True)],
            "alarms": list(self.alarms), "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }
        if self.depth is not None:
            depth = self.depth.summary()
            depth["grid"] = list(self.depth.depth.shape)
            depth["zstep_um"] = self.zstep
            if self.zstep is not None:
                depth["depth_min_um"] = depth["depth_min"] * self.zstep
                depth["depth_max_um"] = depth["depth_max"] * self.zstep
            out["depth"] = depth
        return out


def _bits(dtype: np.dtype) -> int:
    return {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(np.dtype(dtype), 32)


def grid_shape(shape: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The depth grid for an image: downscaled so that its longer side is at most ``max_side``."""
    scale = min(1.0, max_side / max(shape))
    return max(4, round(shape[0] * scale)), max(4, round(shape[1] * scale))


def visit_order(n: int, reference: int) -> list[tuple[int, int | None]]:
    """(position, neighbour nearer the reference) from the reference outward: up, then down.

    >>> visit_order(5, 2)
    [(2, None), (3, 2), (4, 3), (1, 2), (0, 1)]
    """
    out: list[tuple[int, int | None]] = [(reference, None)]
    out += [(k, k - 1) for k in range(reference + 1, n)]
    out += [(k, k + 1) for k in range(reference - 1, -1, -1)]
    return out


def sort_frames(stack: Stack) -> list[int]:
    """Indices of ``stack``'s frames in focus order (reads every frame once, at low resolution)."""
    return focus_order([focus_signature(stack.read_float(i)) for i in range(len(stack))])


def fuse_stack(
    frames: Stack | np.ndarray | Sequence[str | os.PathLike[str]],
    *,
    align: bool = True,
    motion: Motion = "affine",
    sort: bool = False,
    depth: bool = False,
    zstep: float | None = None,
    weight: float | None = None,
    depth_max_side: int = 512,
    sharpness: float = 6.0,
    smoothing: float = 2.5,
    callbacks: Sequence[Any] = (),
) -> FocusResult:
    """All-in-focus image (and, with ``depth=True``, a depth map) of a focal stack.

    ``frames``: a :class:`~refinekit.focus.io.FrameStack`, anything
    :func:`~refinekit.focus.io.read_stack` takes, or an array of frames ``(n, H, W[, 3])``.
    ``sort``: put frames in focus order first (for stacks in acquisition order). ``align``: register
    every frame onto the middle one (``motion``: affine, similarity, rigid or translation).
    ``zstep``: µm between frames, for the depth in µm. ``weight``: a fixed smoothness weight for the
    depth map (default: chosen by free-slice cross-validation). ``depth_max_side``: the depth map is
    estimated on a grid at most this many pixels across and scaled up. ``sharpness``,
    ``smoothing``: see :class:`~refinekit.focus.fusion.PyramidFusion`.

    >>> import numpy as np, tempfile, pathlib, cv2
    >>> from refinekit.focus.render import render_stack, smooth_surface
    >>> rng = np.random.default_rng(0)
    >>> texture = cv2.GaussianBlur(rng.random((96, 96)).astype(np.float32), (0, 0), 1.0)
    >>> frames = render_stack(texture, smooth_surface((96, 96), 1, 5), np.arange(7), seed=1)
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for k, f in enumerate(frames):
    ...     _ = cv2.imwrite(str(folder / f"z{k}.png"), np.uint8(np.clip(f, 0, 1) * 255 + 0.5))
    >>> result = fuse_stack([folder], depth=True)
    >>> result.fused.shape, result.depth_map.shape, result.dtype.name
    ((96, 96), (96, 96), 'uint8')
    """
    started = time.perf_counter()
    if motion not in MOTIONS:
        raise InputError(f"motion must be one of {', '.join(MOTIONS)}, got {motion!r}")
    # NaN sharpness gave an all-NaN image without a word; smoothing <= 0 an OpenCV traceback
    if not (np.isfinite(sharpness) and sharpness >= 0):
        raise InputError(f"sharpness must be a finite number >= 0, got {sharpness}")
    if not (np.isfinite(smoothing) and smoothing > 0):
        raise InputError(f"smoothing must be a finite number > 0, got {smoothing}")
    if not depth_max_side >= 8:
        raise InputError(f"depth_max_side must be at least 8 pixels, got {depth_max_side}")
    stack = as_stack(frames)
    if zstep is not None and not (np.isfinite(zstep) and zstep > 0):
        raise InputError(f"the z-step must be a positive number of µm, got {zstep}")
    if depth and len(stack) < 3:
        raise InputError(f"a depth map needs at least 3 frames, the stack has {len(stack)}")
    timings: dict[str, float] = {}
    order = list(range(len(stack)))
    if sort:
        order = sort_frames(stack)
        timings["sort"] = time.perf_counter() - started
    n = len(order)
    reference = n // 2
    fusion = PyramidFusion(stack.shape, stack.channels, sharpness=sharpness, smoothing=smoothing)
    aligner = Aligner(motion=motion)
    grid = grid_shape(stack.shape, depth_max_side)
    volume = np.zeros((n, *grid), np.float32) if depth else None
    greys = np.zeros((n, *grid), np.float32) if depth else None
    warps: dict[int, FrameWarp] = {}
    alarms: list[str] = []
    tick = time.perf_counter()
    for position, neighbour in visit_order(n, reference):
        image = stack.read_float(order[position])
        valid = None
        if align and position == reference:
            aligner.set_reference(image, index=position)
            warps[position] = aligner.warps[position]
        elif align:
            warp = aligner.estimate(image, index=position, start_from=neighbour)
            if warp.failed:
                alarms.append(f"frame {stack.names[order[position]]} not aligned: {warp.failed}")
            image, valid = aligner.apply(image, warp)
            warps[position] = warp
        else:
            warps[position] = FrameWarp(np.eye(2, 3))
        fusion.add(image, valid)
        if volume is not None and greys is not None:
            grey = to_grey(image)
            measure = focus_map(grey, grid)
            if valid is not None:
                measure *= _to_grid(valid.astype(np.float32), grid) > 0.999
            volume[position] = measure
            greys[position] = _to_grid(grey, grid)
        del image
    timings["fuse"] = time.perf_counter() - tick
    fused = fusion.result()
    result = FocusResult(fused, stack.dtype, stack.names, order, [warps[k] for k in range(n)],
                         zstep=zstep, sorted=sort, alarms=alarms)
    if volume is not None and greys is not None:
        tick = time.perf_counter()
        guide = _to_grid(to_grey(np.clip(fused, 0, 1)), grid)
        estimate = estimate_depth(volume, greys, np.arange(n, dtype=np.float64), guide=guide,
                                  weight=weight, callbacks=callbacks)
        result.depth = estimate
        result.depth_map = _to_shape(estimate.depth.astype(np.float32), stack.shape)
        result.confidence = np.clip(_to_shape(estimate.confidence.astype(np.float32), stack.shape), 0, 1)
        if not estimate.result.usable:
            alarms.append(f"depth refinement: {estimate.result.message}")
        timings["depth"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started
    result.timings = timings
    return result


def _to_grid(image: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    import cv2

    if image.shape[:2] == tuple(grid):
        return image.astype(np.float32, copy=False)
    return cv2.resize(image, (grid[1], grid[0]), interpolation=cv2.INTER_AREA)


def _to_shape(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    if image.shape[:2] == tuple(shape):
        return image
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
