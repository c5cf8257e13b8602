"""The Python API on arrays, the JSON form of a result, and the demo section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from refinekit.core import InputError
from refinekit.core.result import jsonable
from refinekit.focus import ArrayStack, fuse_stack

from .conftest import make_stack, psnr


def test_arrays_in_any_integer_depth() -> None:
    stack = make_stack(size=64, n=5, low=1.0, high=3.0, seed=13)
    as16 = stack.quantised(16)
    result = fuse_stack(as16, zstep=0.5, depth=True, weight=5.0)
    assert result.fused_native().dtype == np.uint16
    assert psnr(result.fused, stack.truth) > 28
    assert result.depth_um() is not None and np.allclose(result.depth_um(), result.depth_map * 0.5)
    payload = json.loads(json.dumps(jsonable(result.to_dict()), allow_nan=False))
    assert payload["bits"] == 16 and payload["depth"]["weight"] == 5.0
    assert payload["depth"]["depth_max_um"] == pytest.approx(payload["depth"]["depth_max"] * 0.5)


def test_an_unknown_motion_is_refused_before_reading() -> None:
    with pytest.raises(InputError, match="motion must be one of affine, similarity, rigid, translation"):
        fuse_stack(["/nonexistent/frame.png"] * 3, motion="bogus")


def test_array_stack_checks_its_shape() -> None:
    with pytest.raises(InputError, match="shaped"):
        ArrayStack(np.zeros((3, 4)))
    with pytest.raises(InputError, match="at least 2"):
        ArrayStack(np.zeros((1, 4, 4)))


def test_demo_section(tmp_path: Path) -> None:
    from refinekit.focus.demo import section

    result = section(tmp_path)
    assert result.ok, result.summary
    assert result.figures["frames"] == 10
    # the known-answer check inside the demo: fusion beats the best frame, depth within 0.5 frames
    assert result.figures["known_answer_depth_rmse_frames"] < 0.5
    for name in ("fused.png", "depth.tif", "depth.png", "depth_3d.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "free-slice" in result.body
