"""Putting frames in focus order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from refinekit.focus.api import fuse_stack, sort_frames
from refinekit.focus.io import read_stack

from .conftest import crop_rmse, make_stack, psnr


def test_shuffled_stack_is_put_back_in_focus_order(tmp_path: Path) -> None:
    stack = make_stack(size=96, n=9, seed=4)
    paths = stack.write(tmp_path)
    shuffled = [paths[i] for i in (5, 0, 8, 3, 1, 7, 2, 6, 4)]
    order = sort_frames(read_stack(shuffled))
    recovered = [int(shuffled[i].stem.split("_")[1]) for i in order]
    assert recovered in (list(range(9)), list(range(8, -1, -1)))


def test_sorted_fusion_and_depth_match_the_ordered_stack(tmp_path: Path) -> None:
    stack = make_stack(size=96, n=7, low=1.0, high=5.0, seed=5)
    paths = stack.write(tmp_path)
    shuffled = [paths[i] for i in (3, 6, 0, 4, 1, 5, 2)]
    result = fuse_stack(shuffled, sort=True, depth=True, weight=10.0)
    names = [result.names[i] for i in result.order]
    assert names in ([p.name for p in paths], [p.name for p in reversed(paths)])
    reference = fuse_stack(paths, depth=True, weight=10.0)
    assert abs(psnr(result.fused, stack.truth) - psnr(reference.fused, stack.truth)) < 0.2
    depth = result.depth_map if names[0] == paths[0].name else 6.0 - result.depth_map
    assert crop_rmse(depth, reference.depth_map) < 0.1
    assert np.isfinite(result.depth_map).all()
