"""Autofocus: coarse-then-fine search on a simulated stage and on stacks on disk."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from refinekit.core import InputError
from refinekit.focus.autofocus import autofocus, autofocus_stack
from refinekit.focus.measures import METRICS, sharpness
from refinekit.focus.render import render_stack

from .conftest import make_stack, texture

SCENE = texture((96, 96), seed=11, colour=False)


class Stage:
    """A simulated microscope stage: the image at ``z`` is the scene defocused by ``|z - focus|``."""

    def __init__(self, focus: float, blur_rate: float = 1.2, seed: int = 0) -> None:
        self.focus = focus
        self.blur_rate = blur_rate
        self.rng = np.random.default_rng(seed)
        self.visited: list[float] = []

    def __call__(self, z: float) -> np.ndarray:
        self.visited.append(z)
        depth = np.full(SCENE.shape, self.focus)
        frame = render_stack(SCENE, depth, [z], blur_rate=self.blur_rate, photons=None, read_noise=0.002,
                             seed=int(self.rng.integers(1 << 30)))[0]
        return np.clip(frame, 0, 1)


@pytest.mark.parametrize("metric", METRICS)
def test_stage_focus_found_to_a_fraction_of_the_fine_step(metric: str) -> None:
    stage = Stage(focus=13.37)
    found = autofocus(stage, (0.0, 40.0), fine_step=1.0, metric=metric)  # type: ignore[arg-type]
    assert found.result.status.label == "converged"
    assert abs(found.z - 13.37) < 0.35
    assert abs(found.best.z - 13.37) <= 0.5 + 1e-9  # the best sample is the nearest fine position
    assert found.n_acquired < 20  # an exhaustive fine scan would take 41 images
    assert len(stage.visited) == len(set(stage.visited)) == found.n_acquired  # nothing taken twice
    stages = [s.stage for s in found.samples]
    assert stages[0] == "coarse" and "fine" in stages


def test_search_record_runs_coarse_to_fine_on_the_engine() -> None:
    found = autofocus(Stage(focus=7.2), (0.0, 30.0), fine_step=0.5, coarse_step=6.0)
    widths = [record.figures["z"] for record in found.result.history]
    assert len(found.result.history) >= 3  # coarse guess, fine scans, sub-step fit
    assert found.result.history[-1].figures["sharpness"] >= 0.98 * found.best.value
    assert abs(widths[-1] - 7.2) < 0.2


def test_focus_beyond_the_range_is_reported() -> None:
    found = autofocus(Stage(focus=25.0), (0.0, 20.0), fine_step=1.0)
    assert found.best.z == 20.0 and "end of the range" in found.message


def test_bad_search_parameters() -> None:
    with pytest.raises(InputError, match="range"):
        autofocus(Stage(1.0), (5.0, 5.0), fine_step=1.0)
    with pytest.raises(InputError, match="steps"):
        autofocus(Stage(1.0), (0.0, 5.0), fine_step=2.0, coarse_step=1.0)
    with pytest.raises(InputError, match="metric"):
        autofocus(Stage(1.0), (0.0, 5.0), fine_step=1.0, metric="entropy")  # type: ignore[arg-type]


def test_a_failing_stage_is_one_error() -> None:
    def broken(z: float) -> np.ndarray:
        raise RuntimeError("stage did not answer")

    with pytest.raises(InputError, match="stage did not answer"):
        autofocus(broken, (0.0, 5.0), fine_step=1.0)


def test_stack_on_disk_reads_only_some_frames(tmp_path: Path) -> None:
    stack = make_stack(size=64, n=25, low=16.6, high=16.8, seed=3)
    stack.write(tmp_path)
    found = autofocus_stack([tmp_path])
    assert found.names[found.best_frame] == "frame_17.png"
    assert abs(found.z - 16.7) < 0.5
    assert found.n_acquired < 15


def test_metrics_rank_a_blur_series() -> None:
    images = [cv2.GaussianBlur(SCENE, (0, 0), s) for s in (0.5, 1.0, 2.0, 4.0)]
    for metric in METRICS:
        values = [sharpness(image, metric) for image in images]  # type: ignore[arg-type]
        assert values == sorted(values, reverse=True), metric


def test_featureless_view_is_reported() -> None:
    found = autofocus(lambda z: np.full((32, 32), 0.5, np.float32), (0.0, 10.0), fine_step=1.0)
    assert "no focus found" in found.message
    assert not found.focused and not found.success and found.to_dict()["focus_found"] is False


@pytest.mark.parametrize("bad", [None, np.zeros(5), np.zeros((0, 0)), np.zeros((4, 4, 2))])
def test_a_stage_returning_no_image_is_one_error(bad: object) -> None:
    """None, a 1-D or empty array reached OpenCV and raised its traceback (cv2.error)."""
    with pytest.raises(InputError, match=r"acquire\(0\) must return a grey or colour image"):
        autofocus(lambda z: bad, (0.0, 5.0), fine_step=1.0)  # type: ignore[arg-type, return-value]


def test_a_negative_fine_step_is_refused() -> None:
    """The default coarse step took the square root of it first: a bare 'math domain error'."""
    with pytest.raises(InputError, match="steps"):
        autofocus(Stage(1.0), (0.0, 5.0), fine_step=-1.0)
    with pytest.raises(InputError, match="max_side"):
        autofocus_stack(np.zeros((3, 8, 8), np.float32), max_side=0)
