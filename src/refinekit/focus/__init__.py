"""Through-focus microscopy: from a focal stack, an all-in-focus image, a depth map and the sharpest
focus position.

- :func:`fuse_stack`: align (ECC), fuse (Laplacian pyramid, soft selection), and optionally a depth
  map refined under an edge-aware smoothness restraint whose weight is chosen on held-out frames.
- :func:`autofocus` / :func:`autofocus_stack`: the coarse-then-fine search, over a stage callable
  ``acquire(z) -> image`` or a stack on disk.
- :func:`read_stack`, :func:`render_stack`: the edges (files in, known-answer stacks out).

>>> import numpy as np
>>> from refinekit.focus import fuse_stack, render_stack, smooth_surface
>>> rng = np.random.default_rng(0)
>>> scene = rng.random((64, 64)).astype(np.float32)
>>> frames = render_stack(scene, smooth_surface((64, 64), 1, 4), np.arange(6), photons=None, read_noise=0)
>>> fused = fuse_stack(np.clip(frames, 0, 1)).fused
>>> bool(np.abs(fused - scene).mean() < min(np.abs(f - scene).mean() for f in frames))
True
"""

from .align import Aligner, FrameWarp
from .api import FocusResult, fuse_stack, sort_frames
from .autofocus import AutofocusProblem, AutofocusResult, FocusSample, autofocus, autofocus_stack
from .defocus import BlurTable, blur, disk_otf
from .depth import (
    DepthEstimate,
    DepthProblem,
    EdgeAwareSmoothness,
    FreeSliceScore,
    estimate_blur_rate,
    estimate_depth,
    fit_focus_peak,
    focus_map,
    solve_smooth,
)
from .fusion import PyramidFusion, fuse
from .io import ArrayStack, FrameStack, read_stack, write_image
from .measures import METRICS, pixel_focus, sharpness
from .order import focus_order, focus_signature
from .render import render_stack, smooth_surface

__all__ = [
    "METRICS",
    "Aligner",
    "ArrayStack",
    "AutofocusProblem",
    "AutofocusResult",
    "BlurTable",
    "DepthEstimate",
    "DepthProblem",
    "EdgeAwareSmoothness",
    "FocusResult",
    "FocusSample",
    "FrameStack",
    "FrameWarp",
    "FreeSliceScore",
    "PyramidFusion",
    "autofocus",
    "autofocus_stack",
    "blur",
    "disk_otf",
    "estimate_blur_rate",
    "estimate_depth",
    "fit_focus_peak",
    "focus_map",
    "focus_order",
    "focus_signature",
    "fuse",
    "fuse_stack",
    "pixel_focus",
    "read_stack",
    "render_stack",
    "sharpness",
    "smooth_surface",
    "solve_smooth",
    "sort_frames",
    "write_image",
]
