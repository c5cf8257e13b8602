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


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint32, np.complex64, object])
def test_array_stack_refuses_pixel_types_of_unknown_range(dtype: type) -> None:
    """Integer frames other than uint8/uint16 were cast to float as they were: values 0-1000 read as
    [0, 1] fractions gave a fused image up to 1000; complex frames lost their imaginary part."""
    frames = (np.random.default_rng(0).random((3, 8, 8)) * 100).astype(dtype)
    with pytest.raises(InputError, match="uint8"):
        ArrayStack(frames)


def test_bool_and_float64_frames_are_taken_as_fractions() -> None:
    frames = np.random.default_rng(0).random((3, 16, 16))
    assert ArrayStack(frames).dtype == np.float32
    assert float(ArrayStack(frames > 0.5).read_float(0).max()) == 1.0


@pytest.mark.parametrize(("option", "value"), [("sharpness", float("nan")), ("sharpness", -1.0),
                                               ("smoothing", 0.0), ("smoothing", float("inf")),
                                               ("depth_max_side", 0)])
def test_fusion_options_out_of_range_are_refused(option: str, value: float) -> None:
    """NaN sharpness gave an all-NaN image; smoothing 0 an OpenCV traceback; depth_max_side 0 a
    message about a border of the free slices."""
    frames = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    with pytest.raises(InputError, match=option):
        fuse_stack(frames, depth=True, **{option: value})


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
