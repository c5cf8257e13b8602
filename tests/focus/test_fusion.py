"""All-in-focus fusion on stacks rendered with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from refinekit.focus.fusion import PyramidFusion, collapse_pyramid, fuse, laplacian_pyramid
from refinekit.focus.render import render_stack

from .conftest import Rendered, make_stack, psnr


def test_pyramid_is_exactly_invertible() -> None:
    rng = np.random.default_rng(3)
    image = rng.random((37, 53, 3)).astype(np.float32)
    assert np.allclose(collapse_pyramid(laplacian_pyramid(image, 4)), image, atol=1e-5)


def test_fusion_beats_every_single_frame(stack9: Rendered) -> None:
    frames = np.clip(stack9.frames, 0, 1)
    best_single = max(psnr(f, stack9.truth) for f in frames)
    fused = fuse(frames)
    # measured: best frame 29.9 dB, fused 32.8 dB on this stack
    assert psnr(fused, stack9.truth) > best_single + 2.0


def test_fusion_keeps_colour_true(stack9: Rendered) -> None:
    fused = fuse(np.clip(stack9.frames, 0, 1))
    inner = (slice(8, -8), slice(8, -8))
    ratio_truth = stack9.truth[inner].mean(axis=(0, 1))
    ratio_fused = fused[inner].mean(axis=(0, 1))
    assert np.allclose(ratio_fused / ratio_fused.sum(), ratio_truth / ratio_truth.sum(), atol=2e-3)


def test_streaming_does_not_depend_on_frame_order(stack9: Rendered) -> None:
    frames = np.clip(stack9.frames, 0, 1)
    forward = fuse(frames)
    shuffled = fuse(frames[[4, 0, 8, 2, 6, 1, 7, 3, 5]])
    assert np.max(np.abs(forward - shuffled)) < 1e-4


def test_no_halo_at_a_bright_edge_over_a_defocused_background() -> None:
    """A bright sharp-edged disc in focus in frame 1 over a dark textured background in focus in
    frame 4: frames focused on the background spread the disc's glow over it. Around the disc the
    fused image must be about as good as the best single frame there, far from the glow."""
    size = 96
    y, x = np.mgrid[0:size, 0:size]
    distance = np.sqrt((y - 48.0) ** 2 + (x - 48.0) ** 2)
    rng = np.random.default_rng(0)
    background = 0.08 + 0.04 * rng.random((size, size)).astype(np.float32)
    truth = np.where(distance < 20, 0.95, background).astype(np.float32)
    depth = np.where(distance < 20, 1.0, 4.0).astype(np.float32)
    frames = np.clip(render_stack(truth, depth, np.arange(6), blur_rate=2.0, photons=None, read_noise=0.0),
                     0, 1)
    fused = fuse(frames)
    ring = (distance > 21) & (distance < 35)  # background 1-15 px outside the disc

    def ring_rms(image: np.ndarray) -> float:
        return float(np.sqrt(np.mean((image[ring] - truth[ring]) ** 2)))

    per_frame = [ring_rms(f) for f in frames]
    # measured: frames 0.022 0.016 0.022 0.063 0.094 0.116, fused 0.018
    assert per_frame[4] > 0.08  # the background's own sharp frame carries a strong glow ...
    assert ring_rms(fused) < 0.3 * per_frame[4]  # ... which the fusion does not take over
    assert ring_rms(fused) < 1.5 * min(per_frame)
    assert float(np.min(fused[ring] - truth[ring])) > -0.06  # no dark undershoot ring


@pytest.mark.parametrize("channels", [1, 3])
def test_streaming_class_matches_function(channels: int) -> None:
    stack = make_stack(size=48, n=4, colour=channels == 3, seed=5)
    frames = np.clip(stack.frames, 0, 1)
    fusion = PyramidFusion(frames.shape[1:3], channels, levels=3)
    for frame in frames:
        fusion.add(frame)
    assert np.allclose(fusion.result(), fuse(frames, levels=3), atol=1e-6)


def test_pixels_a_frame_does_not_cover_get_no_weight() -> None:
    rng = np.random.default_rng(1)
    sharp = rng.random((64, 64)).astype(np.float32)
    other = (0.5 + 0.1 * (rng.random((64, 64)) - 0.5)).astype(np.float32)  # weaker texture
    fusion = PyramidFusion((64, 64), 1)
    fusion.add(sharp, np.zeros((64, 64), bool))  # the sharp frame covers nothing
    fusion.add(other)
    assert np.abs(fusion.result() - other).max() < 1e-3
