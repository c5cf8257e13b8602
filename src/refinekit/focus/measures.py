"""Focus measures: how sharp an image is, per pixel (for depth) or as one number (for autofocus).

Per pixel: Tenengrad (squared Sobel gradient), sum-modified-Laplacian and squared Laplacian, each on a
slightly pre-blurred grey image (the pre-blur keeps pixel noise from looking like texture).
Whole image: variance of the Laplacian, Tenengrad, normalised variance (variance / mean), the three
classic autofocus metrics (Groen et al. 1985; Sun et al. 2004).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

PixelMeasure = Literal["tenengrad", "sml", "laplacian"]
Metric = Literal["laplacian", "tenengrad", "normalized_variance"]
METRICS: tuple[str, ...] = ("laplacian", "tenengrad", "normalized_variance")


def to_grey(image: np.ndarray) -> np.ndarray:
    """Luma (Rec. 601) of an RGB image as float32; a grey image is returned as float32."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image.astype(np.float32, copy=False)
    import cv2

    return cv2.cvtColor(image.astype(np.float32, copy=False), cv2.COLOR_RGB2GRAY)


def pixel_focus(grey: np.ndarray, measure: PixelMeasure = "tenengrad", pre_blur: float = 1.0) -> np.ndarray:
    """Per-pixel focus measure of a grey float image (not yet averaged over a window).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0); sharp = rng.random((64, 64)).astype(np.float32)
    >>> import cv2; soft = cv2.GaussianBlur(sharp, (0, 0), 2)
    >>> bool(pixel_focus(sharp).mean() > 5 * pixel_focus(soft).mean())
    True
    """
    import cv2

    grey = np.asarray(grey, dtype=np.float32)
    if pre_blur > 0:
        grey = cv2.GaussianBlur(grey, (0, 0), pre_blur, borderType=cv2.BORDER_REFLECT)
    if measure == "tenengrad":
        gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
        gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
        return cv2.add(cv2.multiply(gx, gx), cv2.multiply(gy, gy))
    if measure == "sml":
        kernel = np.array([[-1.0, 2.0, -1.0]], dtype=np.float32)
        mx = np.abs(cv2.filter2D(grey, cv2.CV_32F, kernel, borderType=cv2.BORDER_REFLECT))
        my = np.abs(cv2.filter2D(grey, cv2.CV_32F, kernel.T, borderType=cv2.BORDER_REFLECT))
        return mx + my
    if measure == "laplacian":
        lap = cv2.Laplacian(grey, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT)
        return cv2.multiply(lap, lap)
    raise ValueError(f"unknown focus measure {measure!r} (tenengrad, sml, laplacian)")


def sharpness(image: np.ndarray, metric: Metric = "laplacian", pre_blur: float = 1.0) -> float:
    """One number for how sharp ``image`` is (larger is sharper), for autofocus.

    ``laplacian``: variance of the Laplacian; ``tenengrad``: mean squared Sobel gradient;
    ``normalized_variance``: intensity variance divided by the mean (robust to illumination changes).

    >>> import numpy as np, cv2
    >>> rng = np.random.default_rng(0); sharp = rng.random((64, 64)).astype(np.float32)
    >>> soft = cv2.GaussianBlur(sharp, (0, 0), 2)
    >>> all(sharpness(sharp, m) > sharpness(soft, m) for m in METRICS)
    True
    """
    import cv2

    grey = to_grey(image)
    if pre_blur > 0:
        grey = cv2.GaussianBlur(grey, (0, 0), pre_blur, borderType=cv2.BORDER_REFLECT)
    if metric == "laplacian":
        laplacian = cv2.Laplacian(grey, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT)
        return float(np.var(laplacian, dtype=np.float64))
    if metric == "tenengrad":
        return float(np.mean(pixel_focus(grey, "tenengrad", pre_blur=0.0), dtype=np.float64))
    if metric == "normalized_variance":
        mean = float(np.mean(grey, dtype=np.float64))
        return float(np.var(grey, dtype=np.float64)) / mean if mean > 0 else 0.0
    raise ValueError(f"unknown sharpness metric {metric!r} ({', '.join(METRICS)})")
