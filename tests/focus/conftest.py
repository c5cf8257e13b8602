"""Shared fixtures: focal stacks rendered with the same physics as the data (thin-lens disk blur,
Gaussian in-focus blur, Poisson and read noise), with exact truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from refinekit.focus.render import render_stack, smooth_surface

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "focus"


def texture(shape: tuple[int, int], seed: int = 0, colour: bool = True) -> np.ndarray:
    """A scene with detail at every scale: multi-octave noise plus a few sharp-edged shapes."""
    rng = np.random.default_rng(seed)
    h, w = shape
    image = np.zeros((h, w), np.float32)
    for sigma, amplitude in ((0.7, 0.35), (2.0, 0.35), (6.0, 0.3)):
        layer = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma)
        image += amplitude * layer / max(float(layer.std()), 1e-6)
    for _ in range(4):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(4, max(5, h // 6))
        cv2.circle(image, (int(cx), int(cy)), int(r), float(rng.uniform(-1, 1)), -1)
    image = 0.5 + 0.18 * image
    if colour:
        tint = rng.uniform(0.7, 1.0, 3).astype(np.float32)
        image = np.stack([image * t for t in tint], axis=2)
    return np.clip(image, 0.02, 0.98).astype(np.float32)


@dataclass
class Rendered:
    truth: np.ndarray
    depth: np.ndarray
    frames: np.ndarray
    z: np.ndarray
    blur_rate: float

    def quantised(self, bits: int = 8) -> np.ndarray:
        top = 255 if bits == 8 else 65535
        dtype = np.uint8 if bits == 8 else np.uint16
        return np.clip(np.rint(np.clip(self.frames, 0, 1) * top), 0, top).astype(dtype)

    def write(self, folder: Path, bits: int = 8, prefix: str = "frame", ext: str = ".png") -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for k, frame in enumerate(self.quantised(bits)):
            path = folder / f"{prefix}_{k:02d}{ext}"
            data = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) if frame.ndim == 3 else frame
            assert cv2.imwrite(str(path), data)
            paths.append(path)
        return paths


def make_stack(size: int = 128, n: int = 9, *, low: float = 1.5, high: float = 6.5, seed: int = 0,
               blur_rate: float = 1.5, colour: bool = True, photons: float | None = 2000.0,
               warps: list[np.ndarray] | None = None) -> Rendered:
    truth = texture((size, size), seed, colour)
    depth = smooth_surface((size, size), low, high, seed=seed)
    z = np.arange(n, dtype=np.float64)
    frames = render_stack(truth, depth, z, blur_rate=blur_rate, photons=photons, warps=warps, seed=seed + 1)
    return Rendered(truth, depth, frames, z, blur_rate)


@pytest.fixture(scope="session")
def stack9() -> Rendered:
    """9 colour frames, 128 x 128, depth 1.5-6.5 frames, 1.5 px blur per frame of defocus."""
    return make_stack()


@pytest.fixture(scope="session")
def stack9_dir(stack9: Rendered, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stack9")
    stack9.write(folder)
    return folder


def psnr(image: np.ndarray, truth: np.ndarray, border: int = 8) -> float:
    b = (slice(border, -border), slice(border, -border))
    error = np.mean((np.clip(image, 0, 1)[b] - truth[b]) ** 2, dtype=np.float64)
    return float(10 * np.log10(1.0 / error))


def crop_rmse(a: np.ndarray, b: np.ndarray, border: int = 8) -> float:
    s = (slice(border, -border), slice(border, -border))
    return float(np.sqrt(np.mean((a[s] - b[s]) ** 2, dtype=np.float64)))


def shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path
