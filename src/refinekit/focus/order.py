"""Putting frames in focus order when they came in acquisition order.

Two frames focused at nearby depths look alike: the same regions are sharp. Each frame's signature is
its (log) focus-measure map on a coarse grid; frames are ordered along the Fiedler vector of the
similarity graph of those signatures (spectral seriation, Atkins, Boman & Hendrickson 1998), which
recovers a one-dimensional order from pairwise similarities alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core import InputError
from .measures import pixel_focus, to_grey


def focus_signature(image: np.ndarray, side: int = 48) -> np.ndarray:
    """A frame's focus signature: log Tenengrad averaged over a grid of about ``side`` cells across."""
    import cv2

    grey = to_grey(image)
    scale = min(1.0, 4.0 * side / max(grey.shape))
    if scale < 1.0:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    energy = pixel_focus(grey, "tenengrad", pre_blur=1.0)
    h, w = energy.shape
    cells = (max(2, round(side * w / max(h, w))), max(2, round(side * h / max(h, w))))
    small = cv2.resize(energy, cells, interpolation=cv2.INTER_AREA)
    return np.log(small.astype(np.float64) + 1e-12).ravel()


def focus_order(signatures: Sequence[np.ndarray] | np.ndarray) -> list[int]:
    """Frame indices in focus order (spectral seriation), running in the direction from the first
    to the last frame given (the first frame comes before the last).

    >>> import numpy as np
    >>> base = np.linspace(0, 1, 50)
    >>> signatures = [np.exp(-(base - c) ** 2 / 0.02) for c in (0.5, 0.1, 0.9, 0.3, 0.7)]
    >>> focus_order(signatures)
    [1, 3, 0, 4, 2]
    """
    s = np.asarray(signatures, dtype=np.float64)
    # the pattern of relative sharpness, not the overall level: a frame as far in front of the scene
    # as another is behind it is as blurred overall, but sharp in the opposite regions
    s = s - s.mean(axis=1, keepdims=True)
    n = s.shape[0]
    if n < 2:
        raise InputError("ordering needs at least 2 frames")
    if n == 2:
        return [0, 1]
    distance = np.sqrt(np.mean((s[:, None, :] - s[None, :, :]) ** 2, axis=2))
    off_diagonal = distance[~np.eye(n, dtype=bool)]
    scale = float(np.median(off_diagonal)) or 1.0
    similarity = np.exp(-(distance / scale) ** 2)
    np.fill_diagonal(similarity, 0.0)
    laplacian = np.diag(similarity.sum(axis=1)) - similarity
    _, vectors = np.linalg.eigh(laplacian)
    fiedler = vectors[:, 1]
    order = _two_opt([int(i) for i in np.argsort(fiedler, kind="stable")], distance)
    if order.index(0) > order.index(n - 1):
        order.reverse()
    return order


def _two_opt(order: list[int], distance: np.ndarray) -> list[int]:
    """Shorten the open path through the frames by reversing segments while any reversal helps (the
    spectral order is right at large scale; this repairs local swaps among similar frames)."""
    n = len(order)
    improved = True
    while improved:
        improved = False
        for i in range(n - 1):
            for j in range(i + 1, n):
                before = (distance[order[i - 1], order[i]] if i > 0 else 0.0) + \
                         (distance[order[j], order[j + 1]] if j < n - 1 else 0.0)
                after = (distance[order[i - 1], order[j]] if i > 0 else 0.0) + \
                        (distance[order[i], order[j + 1]] if j < n - 1 else 0.0)
                if after < before - 1e-12:
                    order[i:j + 1] = order[i:j + 1][::-1]
                    improved = True
    return order
