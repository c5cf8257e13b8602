"""Preparing particles: Fourier cropping (binning) of images and stacks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..core import InputError
from .io import ParticleStack


def fourier_crop_images(images: np.ndarray, box: int, batch: int = 256) -> np.ndarray:
    """Images resampled to ``box`` pixels over the same physical extent by cropping their centred
    transforms (the centre ``box // 2`` and the values' scale are kept).

    >>> import numpy as np
    >>> img = np.random.default_rng(0).normal(size=(2, 16, 16))
    >>> fourier_crop_images(img, 8).shape, bool(np.allclose(fourier_crop_images(img, 16), img, atol=1e-6))
    ((2, 8, 8), True)
    """
    images = np.asarray(images)
    old = images.shape[-1]
    if box == old:
        return images.astype(np.float32)
    if box > old:
        raise InputError(f"cannot crop {old}-pixel images to a larger box {box}")
    out = np.empty((images.shape[0], box, box), dtype=np.float32)
    start = old // 2 - box // 2
    region = slice(start, start + box)
    for first in range(0, images.shape[0], batch):
        chunk = np.asarray(images[first : first + batch], dtype=np.float64)
        transform = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(chunk, axes=(-2, -1))), axes=(-2, -1))
        cropped = transform[:, region, region]
        # taking the real part keeps the Hermitian part of the cropped transform (for an even box, the
        # Nyquist row and column have no mates inside the crop)
        back = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(cropped, axes=(-2, -1))), axes=(-2, -1)).real
        out[first : first + batch] = back * (box / old) ** 2
    return out


def downsample_stack(stack: ParticleStack, box: int) -> ParticleStack:
    """The stack on ``box``-pixel images (Fourier cropping): pixel size scaled up, origins (pixels)
    scaled down, CTF parameters unchanged (they are physical)."""
    if box < 8:
        raise InputError(f"the box must be at least 8 pixels, got {box}")
    if box >= stack.box:
        return stack
    factor = stack.box / box
    return replace(
        stack,
        images=fourier_crop_images(stack.images, box),
        pixel_size=stack.pixel_size * factor,
        origins=None if stack.origins is None else stack.origins / factor,
    )
