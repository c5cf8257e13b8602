"""The real stacks in ../shared/data/focus (skipped where absent): the issue's quality goals on the
rendered synthetic-ihc stack, autofocus and ordering on a microscope stack in acquisition order,
ImageJ TIFF input, and focus breathing on the PCB stack."""

from __future__ import annotations

import numpy as np
import pytest

from refinekit.focus.api import fuse_stack, sort_frames
from refinekit.focus.autofocus import autofocus_stack
from refinekit.focus.io import read_stack
from refinekit.focus.measures import sharpness

from .conftest import crop_rmse, psnr, shared


def _ihc() -> tuple[list, np.ndarray, np.ndarray]:
    import imageio.v3 as iio

    folder = shared("synthetic-ihc")
    frames = [folder / f"frame_{k:02d}.png" for k in range(15)]
    truth = iio.imread(folder / "truth_aif.png").astype(np.float64) / 255.0
    return frames, truth, np.load(folder / "truth_depth.npy")


def test_synthetic_ihc_meets_the_quality_goals() -> None:
    frames, truth, depth = _ihc()
    result = fuse_stack(frames, depth=True)
    fused = result.fused_native().astype(np.float64) / 255.0
    # goals: PSNR >= 34.5 dB, depth RMSE <= 0.20 frames (measured 34.62 dB, 0.054 frames), scored
    # without a 20-pixel border (the data's convention)
    assert psnr(fused, truth, border=20) >= 34.5
    assert crop_rmse(result.depth_map, depth, border=20) <= 0.20
    assert result.depth is not None and result.depth.blur_rate == pytest.approx(1.5, rel=0.05)


def test_microscope_stack_in_acquisition_order() -> None:
    folder = shared("pseudoscorpion-microscope")
    stack = read_stack([folder])
    found = autofocus_stack(stack)
    # sharp at frames 03-05 and again at 13 (SOURCE.md); the search reads fewer than all 14
    assert found.names[found.best_frame][-6:-4] in {"03", "04", "05", "13"}
    assert found.n_acquired < len(stack)
    order = [stack.names[i][-6:-4] for i in sort_frames(stack)]
    # focus order: 13 (sharp again) sits with 03-05, and 06..11 (defocusing) form one monotone run
    position = {name: i for i, name in enumerate(order)}
    assert min(abs(position["13"] - position[k]) for k in ("03", "04", "05")) == 1
    run = [position[f"{k:02d}"] for k in range(6, 12)]
    assert run in (list(range(min(run), min(run) + 6)), list(range(max(run), max(run) - 6, -1)))


def test_imagej_tiff_stack_fuses_sharper_than_any_slice() -> None:
    path = shared("skeleton-zeiss-edf", "stack.tif")
    stack = read_stack([path])
    assert len(stack) == 3 and stack.channels == 3
    result = fuse_stack([path], depth=True)
    assert result.fused_native().dtype == np.uint8 and result.fused.shape == (116, 170, 3)
    fused = sharpness(np.clip(result.fused, 0, 1))
    assert all(fused > sharpness(stack.read_float(i)) for i in range(3))
    assert result.depth is not None and result.depth.choice is None  # 3 slices: none can be held out


def test_pcb_focus_breathing_is_registered() -> None:
    folder = shared("pcb")
    result = fuse_stack([folder])
    scales = [float(np.sqrt(abs(np.linalg.det(w.matrix[:, :2])))) for w in result.warps]
    # magnification changes steadily through the stack (about 2 % end to end)
    assert scales[3] == 1.0
    steps = np.diff(scales)
    assert np.all(steps > 0) or np.all(steps < 0)
    assert abs(scales[0] - scales[-1]) > 0.02
    assert not result.alarms
