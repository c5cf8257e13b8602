"""All-in-focus fusion: a Laplacian pyramid per frame, blended level by level with soft weights.

At every pyramid level each frame's weight is its local focus energy raised to a power
(``sharpness``), normalised over frames: a soft selection that tends to the sharpest frame where one
frame is clearly sharpest and averages (so denoises) where several agree. The energy is the squared
finest band, smoothed at each level over ``smoothing`` pixels of that level: weights that vary only
as fast as the level's own detail are what keeps the blend free of halos around bright edges over
an out-of-focus background. All channels share the weights, so colours stay true.

The blend is streamed: frames are added one at a time to running sums (a numerically safe soft-max,
rescaled whenever a larger weight appears), so memory does not grow with the number of frames.
"""

from __future__ import annotations

import math

import numpy as np


def auto_levels(shape: tuple[int, int]) -> int:
    """Pyramid depth for an image: the coarsest level is about 16-32 pixels across."""
    return int(min(8, max(1, math.floor(math.log2(max(min(shape), 2))) - 4)))


def laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Bands ``L_0 .. L_{levels-1}`` (finest first) and the Gaussian residual ``G_levels`` last."""
    import cv2

    bands = []
    current = image
    for _ in range(levels):
        smaller = cv2.pyrDown(current, borderType=cv2.BORDER_REFLECT101)
        up = cv2.pyrUp(smaller, dstsize=(current.shape[1], current.shape[0]),
                       borderType=cv2.BORDER_REFLECT101)
        bands.append(cv2.subtract(current, up))
        current = smaller
    bands.append(current)
    return bands


def collapse_pyramid(bands: list[np.ndarray]) -> np.ndarray:
    import cv2

    image = bands[-1]
    for band in reversed(bands[:-1]):
        image = cv2.add(cv2.pyrUp(image, dstsize=(band.shape[1], band.shape[0]),
                                  borderType=cv2.BORDER_REFLECT101), band)
    return image


class PyramidFusion:
    """Streaming Laplacian-pyramid fusion: :meth:`add` frames one by one, then :meth:`result`.

    >>> import numpy as np, cv2
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.random((64, 64)).astype(np.float32)
    >>> left, right = truth.copy(), truth.copy()          # each frame sharp on one half only
    >>> left[:, 32:] = cv2.GaussianBlur(truth, (0, 0), 3)[:, 32:]
    >>> right[:, :32] = cv2.GaussianBlur(truth, (0, 0), 3)[:, :32]
    >>> fusion = PyramidFusion((64, 64), channels=1)
    >>> fusion.add(left); fusion.add(right)
    >>> error = np.abs(fusion.result() - truth)[8:-8, 8:-8].mean()
    >>> bool(error < 0.25 * np.abs(left - truth)[8:-8, 8:-8].mean())
    True
    """

    def __init__(self, shape: tuple[int, int], channels: int = 3, *, levels: int | None = None,
                 sharpness: float = 6.0, smoothing: float = 2.5) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.channels = int(channels)
        self.levels = auto_levels(self.shape) if levels is None else int(levels)
        self.sharpness = float(sharpness)
        self.smoothing = float(smoothing)
        self.n_frames = 0
        # per level: per channel, the sum of weight * band (weights relative to _max), kept as
        # separate planes so that every update is a single-channel, in-place OpenCV operation
        self._num: list[list[np.ndarray]] = []
        self._den: list[np.ndarray] = []  # per level: sum of weights
        self._max: list[np.ndarray] = []  # per level: largest log-weight so far
        self._top: list[np.ndarray] = []  # per channel: coverage-weighted sum of the coarsest levels
        self._top_weight = np.zeros(0, np.float32)  # number of frames covering each coarsest pixel

    def add(self, frame: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Blend in one frame (float32 in [0, 1], grey or RGB). ``valid`` (bool/0-1 mask, optional)
        marks pixels the frame really covers (after alignment); elsewhere its weight is nil."""
        import cv2

        frame = np.asarray(frame, dtype=np.float32)
        if frame.shape[:2] != self.shape or (1 if frame.ndim == 2 else frame.shape[2]) != self.channels:
            raise ValueError(f"frame shape {frame.shape} does not fit the fusion's {self.shape} x "
                             f"{self.channels}")
        planes = cv2.split(frame) if frame.ndim == 3 else [frame]
        pyramids = [laplacian_pyramid(plane, self.levels) for plane in planes]
        energy = np.zeros(self.shape, np.float32)
        for pyramid in pyramids:
            cv2.accumulateSquare(pyramid[0], energy)
        coverage = None if valid is None else np.asarray(valid, dtype=np.float32)
        first = self.n_frames == 0
        tiny = np.float32(1e-30)
        for level in range(self.levels):
            if level > 0:
                energy = cv2.pyrDown(energy, borderType=cv2.BORDER_REFLECT101)
                if coverage is not None:
                    coverage = cv2.pyrDown(coverage, borderType=cv2.BORDER_REFLECT101)
            local = cv2.GaussianBlur(energy, (0, 0), self.smoothing, borderType=cv2.BORDER_REFLECT101)
            logit = cv2.log(np.maximum(local, tiny)) * np.float32(self.sharpness)
            if coverage is not None:
                # pixels the frame does not cover (extrapolated by the warp) lose to any covered frame
                logit = cv2.add(logit, cv2.log(np.maximum(coverage, tiny)) * np.float32(4.0))
            if first:
                self._max.append(logit)
                self._den.append(np.ones_like(logit))
                self._num.append([pyramid[level] for pyramid in pyramids])
                continue
            # online soft-max: rescale the running sums wherever this frame's weight is the new largest
            new_max = cv2.max(self._max[level], logit)
            old_scale = cv2.exp(cv2.subtract(self._max[level], new_max))
            weight = cv2.exp(cv2.subtract(logit, new_max))
            self._max[level] = new_max
            den = self._den[level]
            cv2.multiply(den, old_scale, dst=den)
            cv2.add(den, weight, dst=den)
            for num, pyramid in zip(self._num[level], pyramids, strict=True):
                cv2.multiply(num, old_scale, dst=num)
                cv2.accumulateProduct(pyramid[level], weight, num)
        # the coarsest level is a plain average over the frames that cover each pixel
        if coverage is None:
            cover_top = np.ones(pyramids[0][-1].shape, np.float32)
        else:
            cover_top = np.clip(cv2.pyrDown(coverage, borderType=cv2.BORDER_REFLECT101), 0, 1)
        if first:
            self._top = [pyramid[-1] * cover_top for pyramid in pyramids]
            self._top_weight = cover_top
        else:
            for top, pyramid in zip(self._top, pyramids, strict=True):
                cv2.accumulateProduct(pyramid[-1], cover_top, top)
            cv2.add(self._top_weight, cover_top, dst=self._top_weight)
        self.n_frames += 1

    def result(self) -> np.ndarray:
        """The fused image (float32, same channels as the frames; not clipped)."""
        import cv2

        if self.n_frames == 0:
            raise ValueError("no frames were added")
        top_weight = np.maximum(self._top_weight, np.float32(1e-6))
        planes = []
        for channel in range(self.channels):
            bands = [cv2.divide(num[channel], den) for num, den in zip(self._num, self._den, strict=True)]
            bands.append(cv2.divide(self._top[channel], top_weight))
            planes.append(collapse_pyramid(bands))
        return cv2.merge(planes) if self.channels > 1 else planes[0]


def fuse(frames: np.ndarray | list[np.ndarray], **options: float) -> np.ndarray:
    """Fuse frames already in memory (float32 in [0, 1]); see :class:`PyramidFusion` for ``options``.

    >>> import numpy as np
    >>> frames = np.stack([np.full((32, 32), v, np.float32) for v in (0.2, 0.4)])
    >>> round(float(fuse(frames).mean()), 4)
    0.3
    """
    frames = [np.asarray(f, dtype=np.float32) for f in frames]
    first = frames[0]
    fusion = PyramidFusion(first.shape[:2], 1 if first.ndim == 2 else first.shape[2], **options)
    for frame in frames:
        fusion.add(frame)
    return fusion.result()
