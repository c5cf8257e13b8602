"""``refinekit focus fuse FRAMES... -o fused.png`` and ``refinekit focus autofocus FRAMES...``"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from .common import ProgressBar, check_outputs, emit, handle_errors

app = typer.Typer(help="Through-focus microscopy: all-in-focus fusion, depth map, autofocus.",
                  no_args_is_help=True)


def _inputs(frames: list[Path]) -> list[Path]:
    """The files behind FRAMES (folders expanded), for the rule that outputs never overwrite inputs."""
    out: list[Path] = []
    for item in frames:
        out.extend(sorted(p for p in item.iterdir() if p.is_file()) if item.is_dir() else [item])
    return out


@app.command("fuse", no_args_is_help=True)
@handle_errors
def fuse_command(
    frames: list[Path] = typer.Argument(..., help="Frame images, folders of images, or multi-page TIFFs."),
    output: Path = typer.Option(..., "--output", "-o", help="All-in-focus image (same bit depth as input)."),
    depth: Path | None = typer.Option(
        None, "--depth",
        help="Depth map as float32 TIFF (.tif); beside it: STEM.png (coloured), STEM_3d.png (height map), "
             "STEM_confidence.tif.",
    ),
    zstep: float | None = typer.Option(None, "--zstep", help="µm between frames: depth also in µm."),
    sort: bool = typer.Option(False, "--sort", help="Put frames in focus order first (acquisition order)."),
    align: bool = typer.Option(True, "--align/--no-align", help="Register frames onto the middle frame."),
    motion: str = typer.Option("affine", "--motion", help="affine, similarity, rigid or translation."),
    weight: float | None = typer.Option(
        None, "--weight", help="Fixed depth smoothness weight (default: chosen on held-out frames)."),
    depth_max_side: int = typer.Option(512, "--depth-max-side", help="Depth grid size (px, longer side)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON to stdout."),
) -> None:
    """Fuse a focal stack into one all-in-focus image; optionally estimate its depth map."""
    from ..core import InputError
    from ..focus.align import MOTIONS
    from ..focus.io import check_image_format, read_stack

    if motion not in MOTIONS:
        raise InputError(f"--motion must be one of {', '.join(MOTIONS)}, got {motion!r}")
    # inf passes "> 0" but is no number of µm, nor a weight the depth solve can use
    if zstep is not None and not (math.isfinite(zstep) and zstep > 0):
        raise InputError(f"--zstep must be a positive number of µm, got {zstep}")
    if weight is not None and not (math.isfinite(weight) and weight > 0):
        raise InputError(f"--weight must be a finite number > 0, got {weight}")
    if depth_max_side < 16:
        raise InputError(f"--depth-max-side must be at least 16, got {depth_max_side}")
    outputs = [output]
    if depth is not None:
        if depth.suffix.lower() not in (".tif", ".tiff"):
            raise InputError("the depth map is written as float32 TIFF: give a .tif path", path=depth)
        outputs += _depth_siblings(depth)
    resolved = [p.resolve() for p in outputs]
    if len(set(resolved)) != len(resolved):
        raise InputError(f"output {output} would be overwritten by the depth outputs of --depth {depth}")
    check_outputs(outputs, _inputs(frames))
    stack = read_stack(frames)
    check_image_format(output, stack.dtype)

    from ..focus.api import fuse_stack

    result = fuse_stack(stack, align=align, motion=motion, sort=sort, depth=depth is not None,  # type: ignore[arg-type]
                        zstep=zstep, weight=weight, depth_max_side=depth_max_side,
                        callbacks=[ProgressBar("depth")])
    blobs = {output: _encode(result.fused_native(), output)}
    if depth is not None:
        blobs.update(_depth_outputs(result, depth))
    from ..core import atomic_write_files

    atomic_write_files(blobs)  # all or nothing: a full disk on the third file leaves none of them
    message = f"fused {len(result.order)} frames"
    if result.depth is not None:
        message += f"; depth map: {result.depth.summary()['message']}"
    payload = _contract(result.depth.result if result.depth is not None else None, result.to_dict(), message)
    payload["output"] = str(output)
    payload["written"] = [str(p) for p in blobs]
    emit(payload, _fuse_text(result, list(blobs)), as_json)
    raise typer.Exit(0 if result.usable else 1)


def _depth_siblings(depth: Path) -> list[Path]:
    stem = depth.with_suffix("")
    return [depth, Path(f"{stem}.png"), Path(f"{stem}_3d.png"), Path(f"{stem}_confidence.tif")]


def _encode(image, path: Path) -> bytes:
    from ..focus.io import encode_image

    return encode_image(image, path)


def _depth_outputs(result, depth: Path) -> dict[Path, bytes]:
    import numpy as np

    from ..focus.io import depth_png
    from ..focus.plots import figure_png, height_map_figure

    assert result.depth_map is not None and result.confidence is not None
    tif, png, render, confidence = _depth_siblings(depth)
    values = result.depth_um() if result.zstep is not None else result.depth_map
    fig = height_map_figure(result.depth.depth, np.clip(result.fused, 0, 1), zstep=result.zstep,
                            title=f"height map ({len(result.order)} frames)")
    return {
        tif: _encode(np.asarray(values, dtype=np.float32), tif),
        png: _encode(depth_png(result.depth_map, result.confidence), png),
        render: figure_png(fig),
        confidence: _encode(np.asarray(result.confidence, dtype=np.float32), confidence),
    }


def _fuse_text(result, written: list[Path]) -> str:
    lines = [f"frames      : {len(result.order)} ({result.fused.shape[1]}x{result.fused.shape[0]}, "
             f"{result.to_dict()['bits']}-bit)" + (", sorted by focus" if result.sorted else "")]
    applied = sum(w.applied for w in result.warps)
    lines.append(f"alignment   : {applied} of {len(result.warps)} frames warped onto the middle frame")
    if result.depth is not None:
        d = result.depth
        lo, hi = float(d.depth.min()), float(d.depth.max())
        unit = f" = {lo * result.zstep:.4g} .. {hi * result.zstep:.4g} µm" if result.zstep else ""
        grid = f"{d.depth.shape[1]}x{d.depth.shape[0]}"
        lines.append(f"depth       : {lo:.3f} .. {hi:.3f} frames{unit} on a {grid} grid, "
                     f"{d.result.status.label} after {d.result.n_cycles} cycles")
        if d.choice is not None:
            lines.append(f"smoothness  : weight {d.weight:.4g} chosen on held-out frames {d.free_frames} "
                         f"(free RMS error {d.free_score:.5g}, blur {d.blur_rate:.3g} px/frame)")
            for t in d.choice.trials:
                mark = " <-" if t.weight == d.weight else ""
                lines.append(f"  weight {t.weight:10.4g}  free {t.free:.6g}{mark}")
        else:
            lines.append(f"smoothness  : weight {d.weight:.4g} ({d.message or 'given'})")
    for alarm in result.alarms:
        lines.append(f"ALARM       : {alarm}")
    lines.append("written     : " + ", ".join(str(p) for p in written))
    return "\n".join(lines)


@app.command("autofocus", no_args_is_help=True)
@handle_errors
def autofocus_command(
    frames: list[Path] = typer.Argument(..., help="Frame images, folders of images, or multi-page TIFFs."),
    metric: str = typer.Option("laplacian", "--metric",
                               help="Sharpness: laplacian (variance), tenengrad, normalized_variance."),
    coarse_step: int | None = typer.Option(None, "--coarse-step", help="Frames between coarse samples."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON to stdout."),
) -> None:
    """Find the sharpest frame of a stack: coarse scan, fine scans, sub-frame fit (reads few frames)."""
    from ..core import InputError
    from ..focus.autofocus import autofocus_stack
    from ..focus.measures import METRICS

    if metric not in METRICS:
        raise InputError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if coarse_step is not None and coarse_step < 1:
        raise InputError(f"--coarse-step must be at least 1, got {coarse_step}")
    found = autofocus_stack(frames, metric=metric, coarse_step=coarse_step)  # type: ignore[arg-type]
    payload = _contract(found.result, found.to_dict(), found.message)
    payload["success"] = found.success  # a featureless stack has no focus, however the search ended
    best = found.names[found.best_frame]
    text = (f"sharpest frame : {best} (index {found.best_frame} of {len(found.names)})\n"
            f"focus position : {found.z:.3f} frames (sub-frame fit)\n"
            f"sharpness      : {found.best.value:.6g} ({metric})\n"
            f"frames read    : {found.n_acquired} of {len(found.names)}\n"
            f"status         : {found.result.status.label}: {found.message}")
    emit(payload, text, as_json)
    raise typer.Exit(0 if found.result.usable and found.focused else 1)


def _contract(refinement: Any, figures: dict[str, Any], message: str) -> dict[str, Any]:
    """The JSON every refinekit command shares: the engine's top-level fields (status, success,
    message, n_cycles, best_cycle, alarms, history) with this command's figures beside them. Fusion
    alone runs no loop: it reports a converged run of no cycles. Alarms become kind/cycle/message."""
    if refinement is not None:
        out = refinement.to_dict()
        out["message"] = message or out["message"]
    else:
        out = {"status": "converged", "success": True,
               "message": f"{message} (fusion only: no refinement loop)", "n_cycles": 0,
               "best_cycle": 0, "kept_cycle": 0, "work": None, "free": None, "alarms": [], "history": []}
    history = out.pop("history")
    alarms = list(out.get("alarms", []))
    for key, value in figures.items():
        if key == "alarms":
            alarms += [a if isinstance(a, dict) else {"kind": "focus", "cycle": None, "message": str(a)}
                       for a in value]
        else:
            out[key] = value
    out["alarms"] = alarms
    out["history"] = history
    return out
