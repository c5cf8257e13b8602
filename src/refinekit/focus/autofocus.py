"""Autofocus: the coarse-then-fine search for the sharpest focus position, run by the engine.

The search is a refinement of one position: the guess is the best of a coarse scan over the whole
range; each correction scans around the best position so far with a step a third of the previous
one, down to the fine step; the last correction fits a Gaussian (a parabola in log sharpness) through
the best sample and its neighbours for a sub-step position. Every model is checked by acquiring an
image there, so the returned position is one whose sharpness was measured (where the fit's position
measures worse than the best sample, the best sample is returned and the message says so).

``acquire(z) -> image`` can drive a real stage; :func:`autofocus_stack` runs the same search over a
stack on disk, reading only the frames the search visits.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core import InputError, RefinementProblem, RefinementResult, Scores, Status, StopRefinement, refine
from .io import Stack, as_stack
from .measures import METRICS, Metric, sharpness

Acquire = Callable[[float], np.ndarray]


@dataclass
class FocusSample:
    """One acquisition: position, sharpness, and the search stage that asked for it."""

    z: float
    value: float
    stage: str

    def to_dict(self) -> dict[str, Any]:
        return {"z": self.z, "value": self.value, "stage": self.stage}


class AutofocusProblem(RefinementProblem):
    """The coarse-then-fine search as a :class:`~refinekit.core.Problem`: the model is
    ``[z, half_width]`` (the best position so far and the half-width still to search).

    ``snap`` rounds positions to the nearest multiple (1 for frame indices); ``max_acquisitions``
    bounds the number of images taken. Work score: ``-log(sharpness at z)``.
    """

    def __init__(self, acquire: Acquire, z_range: tuple[float, float], *, coarse_step: float,
                 fine_step: float, metric: Metric = "laplacian", snap: float | None = None,
                 max_acquisitions: int = 200, pre_blur: float = 1.0) -> None:
        lo, hi = float(z_range[0]), float(z_range[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise InputError(f"the focus range must be finite with low < high, got {z_range}")
        if not (coarse_step > 0 and fine_step > 0 and fine_step <= coarse_step):
            raise InputError(f"steps must satisfy 0 < fine ({fine_step}) <= coarse ({coarse_step})")
        if metric not in METRICS:
            raise InputError(f"unknown sharpness metric {metric!r} ({', '.join(METRICS)})")
        self.acquire = acquire
        self.low, self.high = lo, hi
        self.coarse_step, self.fine_step = float(coarse_step), float(fine_step)
        self.metric: Metric = metric
        self.snap = snap
        self.max_acquisitions = int(max_acquisitions)
        self.pre_blur = float(pre_blur)
        self.samples: dict[float, FocusSample] = {}
        self.acquired: list[FocusSample] = []
        self.fitted: float | None = None
        self._stage = "coarse"

    # ---------------------------------------------------------------------- sampling
    def _place(self, z: float) -> float:
        z = min(max(float(z), self.low), self.high)
        if self.snap:
            z = self.low + round((z - self.low) / self.snap) * self.snap
        return round(z, 9)

    def value(self, z: float) -> float:
        """Sharpness at ``z`` (acquired once, then remembered)."""
        z = self._place(z)
        if z not in self.samples:
            if len(self.acquired) >= self.max_acquisitions:
                raise StopRefinement(Status.MAX_CYCLES, f"stopped after {self.max_acquisitions} acquisitions")
            try:
                image = self.acquire(z)
            except InputError:
                raise
            except Exception as exc:
                raise InputError(f"acquire({z:g}) failed: {type(exc).__name__}: {exc}") from None
            image = _check_image(image, z)
            value = sharpness(image, self.metric, self.pre_blur)
            if not math.isfinite(value):
                raise InputError(f"acquire({z:g}) gave an image whose sharpness is not finite")
            sample = FocusSample(z, value, self._stage)
            self.samples[z] = sample
            self.acquired.append(sample)
        return self.samples[z].value

    def best_sample(self) -> FocusSample:
        return max(self.samples.values(), key=lambda s: (s.value, -s.z))

    # ---------------------------------------------------------------------- the loop
    def initial(self) -> np.ndarray:
        n = max(2, math.floor((self.high - self.low) / self.coarse_step + 1e-9) + 1)
        for z in np.linspace(self.low, self.low + (n - 1) * self.coarse_step, n):
            self.value(z)
        self.value(self.high)  # the scan always covers the whole range
        return np.array([self.best_sample().z, self.coarse_step])

    def check(self, model: np.ndarray) -> Scores:
        value = self.value(float(model[0]))
        best = self.best_sample()
        return Scores(work=-math.log(max(value, 1e-300)),
                      figures={"z": float(model[0]), "sharpness": value, "best_sampled_z": best.z,
                               "n_acquired": float(len(self.acquired))})

    def correct(self, model: np.ndarray, scores: Scores) -> np.ndarray:
        z, width = float(model[0]), float(model[1])
        if width <= 0:
            raise StopRefinement(Status.CONVERGED, f"sub-step fit done: sharpest at z = {z:.6g}")
        if width > self.fine_step * (1 + 1e-9):
            self._stage = "fine"
            step = max(width / 3.0, self.fine_step)
            centre = self.best_sample().z
            reach = int(width / step + 1e-9)  # the peak lies within one previous step of the centre
            for k in range(1, reach + 1):
                self.value(centre - k * step)
                self.value(centre + k * step)
            return np.array([self.best_sample().z - z, step - width])
        self._stage = "fit"
        self.fitted = self._fit()
        return np.array([self.fitted - z, -width])

    def _fit(self) -> float:
        """Vertex of the parabola through log-sharpness at the best sample and its two neighbours."""
        positions = sorted(self.samples)
        best = self.best_sample().z
        i = positions.index(best)
        if i == 0 or i == len(positions) - 1:
            return best  # the peak is at the end of the range: nothing to fit on one side
        za, zb, zc = positions[i - 1], best, positions[i + 1]
        ya, yb, yc = (math.log(max(self.samples[p].value, 1e-300)) for p in (za, zb, zc))
        left, right = (yb - ya) / (zb - za), (yc - yb) / (zc - zb)
        curvature = right - left
        if curvature >= 0:
            return best
        mid_left, mid_right = 0.5 * (za + zb), 0.5 * (zb + zc)
        vertex = mid_left - left * (mid_right - mid_left) / curvature
        return float(min(max(vertex, za), zc))

    def step_size(self, model: np.ndarray, step: np.ndarray) -> float:
        return float(np.max(np.abs(step))) / (self.high - self.low)


def _check_image(image: object, z: float) -> np.ndarray:
    """What ``acquire`` gave, refused unless an image (an OpenCV traceback otherwise)."""
    array = np.asarray(image) if image is not None else np.zeros(0)
    grey_or_colour = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))
    if not grey_or_colour or array.size == 0 or array.dtype.kind not in "uifb":
        got = "None" if image is None else f"an array of shape {array.shape} and type {array.dtype}"
        raise InputError(f"acquire({z:g}) must return a grey or colour image, got {got}")
    return array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array


@dataclass
class AutofocusResult:
    """Where focus is sharpest: ``z`` (a sub-step estimate), the best measured sample, every
    acquisition in order, and the engine's record of the search. ``focused`` is False where every
    sample was equally sharp (a featureless or saturated view): then ``z`` is no focus position."""

    z: float
    best: FocusSample
    samples: list[FocusSample]
    metric: str
    result: RefinementResult
    message: str
    names: list[str] = field(default_factory=list)
    focused: bool = True

    @property
    def success(self) -> bool:
        """The search converged on a focus (a featureless view has none, however the search ended)."""
        return self.result.success and self.focused

    @property
    def n_acquired(self) -> int:
        return len(self.samples)

    @property
    def best_frame(self) -> int:
        """The index of the sharpest sampled frame (stacks)."""
        return round(self.best.z)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"z": self.z, "best_z": self.best.z, "best_value": self.best.value,
                               "metric": self.metric, "n_acquired": self.n_acquired,
                               "status": self.result.status.label, "message": self.message,
                               "focus_found": self.focused,
                               "samples": [s.to_dict() for s in self.samples]}
        if self.names:
            out["best_frame"] = self.names[self.best_frame]
            out["n_frames"] = len(self.names)
        return out


def autofocus(acquire: Acquire, z_range: tuple[float, float], *, fine_step: float,
              coarse_step: float | None = None, metric: Metric = "laplacian", snap: float | None = None,
              max_acquisitions: int = 200, callbacks: Sequence[Any] = ()) -> AutofocusResult:
    """Coarse-then-fine search for the sharpest position of ``acquire(z) -> image`` over ``z_range``.

    ``coarse_step`` defaults to about ``sqrt(range * fine_step)`` (a balance between the coarse scan
    and the fine scans). ``metric``: ``laplacian`` (variance of the Laplacian), ``tenengrad``,
    ``normalized_variance``.

    >>> import numpy as np, cv2
    >>> rng = np.random.default_rng(0); scene = rng.random((64, 64)).astype(np.float32)
    >>> def acquire(z):                                   # a stage whose best focus is at z = 3.7
    ...     return cv2.GaussianBlur(scene, (0, 0), 0.3 + 0.8 * abs(z - 3.7))
    >>> found = autofocus(acquire, (0, 20), fine_step=0.5)
    >>> round(found.z, 1), found.n_acquired < 20
    (3.7, True)
    """
    lo, hi = float(z_range[0]), float(z_range[1])
    if coarse_step is None:
        # a negative fine step is refused by the problem (sqrt raised a bare ValueError here)
        coarse_step = max(fine_step, math.sqrt(max(hi - lo, 0.0) * max(fine_step, 0.0)))
    problem = AutofocusProblem(acquire, (lo, hi), coarse_step=coarse_step, fine_step=fine_step,
                               metric=metric, snap=snap, max_acquisitions=max_acquisitions)
    result = refine(problem, max_cycles=64, xtol=0.0, restore_best=False, callbacks=callbacks)
    best = problem.best_sample()
    z = float(result.x[0])
    message = result.message
    if problem.fitted is not None and problem.value(z) < best.value * (1 - 1e-9) and not snap:
        message += f"; the fitted position {z:.6g} measured less sharp than the sample at {best.z:.6g}, " \
                   "which is returned"
        z = best.z
    values = [sample.value for sample in problem.acquired]
    focused = max(values) > min(values) * (1 + 1e-9)
    if not focused:
        message += "; every sample is equally sharp (a featureless or saturated view): no focus found"
    elif best.z in (problem.low, problem.high):
        message += "; the sharpest sample is at the end of the range (the focus may lie beyond it)"
    return AutofocusResult(z, best, list(problem.acquired), metric, result, message, focused=focused)


def autofocus_stack(frames: Stack | np.ndarray | Sequence[str | os.PathLike[str]], *,
                    metric: Metric = "laplacian",
                    coarse_step: int | None = None, max_side: int = 1024,
                    callbacks: Sequence[Any] = ()) -> AutofocusResult:
    """The autofocus search over a stack on disk (positions are frame indices, in the order given);
    only visited frames are read, at most ``max_side`` pixels across."""
    import cv2

    if not max_side >= 8:
        raise InputError(f"max_side must be at least 8 pixels, got {max_side}")
    stack = as_stack(frames)
    n = len(stack)

    def acquire(z: float) -> np.ndarray:
        image = stack.read_float(round(z))
        scale = min(1.0, max_side / max(image.shape[:2]))
        if scale < 1.0:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        return image

    if coarse_step is None:
        coarse_step = max(1, round(math.sqrt(n - 1)))
    found = autofocus(acquire, (0, n - 1), fine_step=1.0, coarse_step=float(min(coarse_step, n - 1)),
                      metric=metric, snap=1.0, max_acquisitions=n, callbacks=callbacks)
    found.names = stack.names
    return found
