"""The focus section of ``refinekit demo``: a real PCB focal stack (10 frames, bundled, MIT) fused,
its depth map, height map and the free-slice curve that chose the smoothness weight; the autofocus
search over the same stack; and a known-answer check on a stack rendered with the same physics."""

from __future__ import annotations

import html
import time
from importlib import resources
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_write_bytes
from ..report.html import Section, figure_to_html, png_to_html, pre, table_html


def demo_stack() -> Path:
    """The bundled stack: PCB tact switch, 10 frames 512x384 (focus-stack examples, MIT)."""
    return Path(str(resources.files("refinekit") / "data" / "focus" / "pcb-depthmap"))


def known_answer(texture: np.ndarray, size: int = 192, frames: int = 11, seed: int = 0) -> dict[str, float]:
    """Render a stack from ``texture`` over a known smooth surface, run the pipeline on it in memory
    and score it against the truth (PSNR of the fused image, RMSE of the depth in frames)."""
    import cv2

    from .api import fuse_stack
    from .render import render_stack, smooth_surface

    h, w = texture.shape[:2]
    side = min(h, w)
    crop = np.ascontiguousarray(texture[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2])
    truth = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    depth = smooth_surface((size, size), 1.5, frames - 2.5, seed=seed)
    rendered = np.clip(render_stack(truth, depth, np.arange(frames), seed=seed + 1), 0, 1)
    result = fuse_stack(rendered, depth=True)
    b = size // 16
    inner = (slice(b, -b), slice(b, -b))
    error = np.clip(result.fused, 0, 1)[inner] - truth[inner]
    assert result.depth_map is not None
    return {"psnr_db": float(10 * np.log10(1 / np.mean(error ** 2))),
            "depth_rmse_frames": float(np.sqrt(np.mean((result.depth_map - depth)[inner] ** 2))),
            "best_frame_psnr_db": float(max(10 * np.log10(1 / np.mean((f[inner] - truth[inner]) ** 2))
                                            for f in rendered))}


def section(workdir: Path) -> Section:
    """Run the focus domain on the bundled stack; write its outputs to ``workdir``."""
    from .api import fuse_stack
    from .autofocus import autofocus_stack
    from .io import FrameStack, depth_png, encode_image, read_stack
    from .plots import depth_figure, figure_png, free_slice_figure, height_map_figure

    started = time.perf_counter()
    stack: FrameStack = read_stack([demo_stack()])
    result = fuse_stack(stack, depth=True)
    estimate = result.depth
    assert estimate is not None and result.depth_map is not None and result.confidence is not None
    fused = np.clip(result.fused, 0, 1)
    atomic_write_bytes(workdir / "fused.png", encode_image(result.fused_native(), "fused.png"))
    atomic_write_bytes(workdir / "depth.tif", encode_image(result.depth_map.astype(np.float32), "depth.tif"))
    atomic_write_bytes(workdir / "depth.png", encode_image(depth_png(result.depth_map, result.confidence),
                                                           "depth.png"))
    # this stack was taken from the board up to the top of the switch: the last frame is nearest
    height = height_map_figure(result.depth_map, fused, title="height map of the PCB switch",
                               last_frame_nearest=True)
    height_png = figure_png(height)
    atomic_write_bytes(workdir / "depth_3d.png", height_png)
    found = autofocus_stack(stack)
    check = known_answer(fused)
    seconds = time.perf_counter() - started

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.9))
    axes[0].imshow(np.clip(stack.read_float(0), 0, 1))
    axes[0].set_title(f"frame 1 of {len(stack)}")
    axes[1].imshow(fused)
    axes[1].set_title("all-in-focus (pyramid fusion)")
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    trials = [] if estimate.choice is None else [
        {"weight": t.weight, "free": t.free, "work": t.work} for t in estimate.choice.trials]
    parts = [
        "<p>A focal stack of a PCB tact switch (10 frames, bundled: PetteriAimonen/focus-stack examples, "
        "MIT). The frames are aligned (affine ECC onto the middle frame), fused by a Laplacian pyramid "
        "with soft per-level selection, and the depth map is refined from the per-pixel focus peak under an "
        "edge-aware smoothness restraint whose weight is chosen on held-out frames (the free slices): "
        "each trial weight's depth map and the all-in-focus image made without those frames predict "
        "them through the defocus blur model.</p>",
        figure_to_html(fig, "first frame and fused image", width=900),
        figure_to_html(depth_figure(result.depth_map, result.confidence, title="depth (frames)"),
                       "depth map and confidence", width=900),
        png_to_html(height_png, "3D height map", width=700),
    ]
    if trials:
        curve = free_slice_figure(trials, estimate.weight)
        parts.append(figure_to_html(curve, "free-slice curve", width=640))
        parts.append(table_html(["smoothness weight", "free-slice RMS error", "work (robust RMS, frames)"],
                                [[t["weight"], t["free"], t["work"]] for t in trials]))
    parts.append(pre(
        f"frames            : {len(stack)} ({stack.shape[1]}x{stack.shape[0]}, {stack.bits}-bit)\n"
        f"alignment         : {sum(w.applied for w in result.warps)} of {len(result.warps)} frames warped\n"
        f"held-out frames   : {estimate.free_frames}\n"
        f"blur per frame    : {estimate.blur_rate:.3g} px (fitted on the working frames)\n"
        f"smoothness weight : {estimate.weight:.4g} - {estimate.message}\n"
        f"depth refinement  : {estimate.result.status.label} after {estimate.result.n_cycles} cycles "
        f"({estimate.result.message})\n"
        f"autofocus         : sharpest frame {found.names[found.best_frame]} (z = {found.z:.2f}), "
        f"{found.n_acquired} of {len(stack)} frames read\n"
        f"known answer      : rendered 192x192 stack from the fused image: fused PSNR "
        f"{check['psnr_db']:.2f} dB (best single frame {check['best_frame_psnr_db']:.2f} dB), depth RMSE "
        f"{check['depth_rmse_frames']:.3f} frames\n"
        f"time              : {seconds:.1f} s"))
    parts.append(f"<p>Outputs in <code>{html.escape(str(workdir))}</code>: fused.png, depth.tif "
                 "(float32, frames), depth.png, depth_3d.png.</p>")
    ok = (result.usable and check["psnr_db"] > check["best_frame_psnr_db"]
          and check["depth_rmse_frames"] < 0.5)
    summary = (f"{len(stack)} frames fused; depth weight {estimate.weight:.3g} chosen on held-out frames; "
               f"known answer: {check['psnr_db']:.1f} dB, depth RMSE {check['depth_rmse_frames']:.2f} frames")
    figures = {"frames": len(stack), "weight": estimate.weight, "free": estimate.free_score,
               "autofocus_frame": found.names[found.best_frame],
               "known_answer_psnr_db": round(check["psnr_db"], 3),
               "known_answer_depth_rmse_frames": round(check["depth_rmse_frames"], 4)}
    return Section("Through-focus microscopy (focus)", summary, "".join(parts), ok, figures)
