"""Figures of the focus domain (matplotlib): the height map in 3D, the depth map, the free-slice
curve of the smoothness-weight choice."""

from __future__ import annotations

from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def height_map_figure(depth: np.ndarray, image: np.ndarray | None = None, *, zstep: float | None = None,
                      cells: int = 120, title: str = "height map", last_frame_nearest: bool = False) -> Any:
    """A 3D surface of ``depth`` (frame units, or µm with ``zstep``) coloured by ``image``.

    Height is measured up from the deepest point. By default the first frame is taken to be focused
    nearest the lens (focus moving into the specimen), so small depths are drawn high;
    ``last_frame_nearest`` turns that round.
    """
    import cv2

    plt = _pyplot()
    h, w = depth.shape
    scale = min(1.0, cells / max(h, w))
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    small = cv2.resize(depth.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    height = small - float(small.min()) if last_frame_nearest else float(small.max()) - small
    height = height * (zstep or 1.0)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    fig = plt.figure(figsize=(7.5, 5.5))
    ax = fig.add_subplot(projection="3d")
    if image is not None:
        colours = cv2.resize(np.clip(image, 0, 1).astype(np.float32), size, interpolation=cv2.INTER_AREA)
        if colours.ndim == 2:
            colours = np.repeat(colours[..., None], 3, axis=2)
        ax.plot_surface(x, -y, height, facecolors=colours, rstride=1, cstride=1, linewidth=0,
                        antialiased=False, shade=False)
    else:
        ax.plot_surface(x, -y, height, cmap="viridis", linewidth=0)
    ax.set_zlabel("height (µm)" if zstep else "height (frames)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.view_init(elev=35, azim=-60)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def depth_figure(depth: np.ndarray, confidence: np.ndarray | None = None, *, zstep: float | None = None,
                 title: str = "depth map") -> Any:
    """The depth map (and confidence, if given) as images with colour bars."""
    plt = _pyplot()
    panels = 2 if confidence is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), squeeze=False)
    shown = axes[0, 0].imshow(depth * (zstep or 1.0), cmap="viridis")
    axes[0, 0].set_title(title)
    fig.colorbar(shown, ax=axes[0, 0], label="depth (µm)" if zstep else "depth (frames)", shrink=0.8)
    if confidence is not None:
        shown = axes[0, 1].imshow(confidence, cmap="magma", vmin=0, vmax=1)
        axes[0, 1].set_title("confidence")
        fig.colorbar(shown, ax=axes[0, 1], shrink=0.8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def free_slice_figure(trials: list[dict[str, Any]], chosen: float, *, title: str = "free-slice curve") -> Any:
    """Free-slice prediction error against the smoothness weight, the chosen weight marked."""
    plt = _pyplot()
    ordered = sorted(trials, key=lambda t: t["weight"])
    weights = [t["weight"] for t in ordered]
    free = [t["free"] for t in ordered]
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    ax.semilogx(weights, free, "o-", color="#1f5fa8", label="free slices (held-out frames)")
    ax.axvline(chosen, color="#b3261e", linestyle="--", label=f"chosen weight {chosen:.3g}")
    ax.set_xlabel("smoothness weight")
    ax.set_ylabel("RMS prediction error of held-out frames")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """A figure as PNG bytes (and closed)."""
    import io

    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()
