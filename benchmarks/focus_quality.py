"""Quality on the rendered synthetic-ihc stack (exact all-in-focus image and depth known): PSNR and
SSIM of the all-in-focus image, RMSE of the depth map, for refinekit and the focusweave baseline
(pip; no depth map) in the same run. Scores use the data's 20-pixel border crop.

    python benchmarks/focus_quality.py [--focusweave-python /tmp/focusweave-venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from focus_common import (
    DATA,
    FOCUSWEAVE_RUNNER,
    NO_BASELINE,
    REFINEKIT_RUNNER,
    focusweave_python,
    focusweave_version,
    measure,
)

BORDER = 20


def psnr(image: np.ndarray, truth: np.ndarray) -> float:
    inner = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    return float(10 * np.log10(1.0 / np.mean((image[inner] - truth[inner]) ** 2)))


def ssim(image: np.ndarray, truth: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03, range 1), averaged
    over colour channels, on the cropped interior."""
    import cv2

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for channel in range(image.shape[2]):
        x = image[..., channel].astype(np.float64)
        y = truth[..., channel].astype(np.float64)

        def smooth(a: np.ndarray) -> np.ndarray:
            return cv2.GaussianBlur(a, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

        mx, my = smooth(x), smooth(y)
        vx, vy, cxy = smooth(x * x) - mx * mx, smooth(y * y) - my * my, smooth(x * y) - mx * my
        index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        values.append(index[BORDER:-BORDER, BORDER:-BORDER].mean())
    return float(np.mean(values))


def read_rgb(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(path)[..., :3].astype(np.float64) / 255.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "synthetic-ihc")
    parser.add_argument("--focusweave-python", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    frames = sorted(str(p) for p in args.data.glob("frame_*.png"))
    truth = read_rgb(args.data / "truth_aif.png")
    truth_depth = np.load(args.data / "truth_depth.npy")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        out, depth = Path(tmp) / "refinekit.png", Path(tmp) / "depth.tif"
        timing = measure([sys.executable, "-c", REFINEKIT_RUNNER, "focus", "fuse", *frames, "-o", str(out),
                          "--depth", str(depth)])
        import tifffile

        fused = read_rgb(out)
        depth_map = tifffile.imread(depth)
        inner = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
        depth_rmse = float(np.sqrt(np.mean((depth_map - truth_depth)[inner] ** 2)))
        rows["refinekit"] = {"psnr_db": psnr(fused, truth), "ssim": ssim(fused, truth),
                             "depth_rmse_frames": depth_rmse,
                             "cpu_s": timing.cpu_s, "peak_gib": timing.peak_gib}
        python = focusweave_python(args.focusweave_python)
        if python is None:
            print(NO_BASELINE, file=sys.stderr)
        else:
            baseline = Path(tmp) / "focusweave.png"
            timing = measure([python, "-c", FOCUSWEAVE_RUNNER, str(baseline), *frames])
            image = read_rgb(baseline)
            if image.shape != truth.shape:
                raise SystemExit(f"focusweave output {image.shape} differs from the truth {truth.shape}")
            rows[f"focusweave {focusweave_version(python)}"] = {
                "psnr_db": psnr(image, truth), "ssim": ssim(image, truth), "depth_rmse_frames": None,
                "cpu_s": timing.cpu_s, "peak_gib": timing.peak_gib}
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"synthetic-ihc ({len(frames)} frames 512x512, {BORDER}-px border crop)")
    print(f"{'tool':<20} {'PSNR dB':>8} {'SSIM':>7} {'depth RMSE':>11} {'CPU s':>7} {'peak GiB':>9}")
    for name, row in rows.items():
        depth_text = "-" if row["depth_rmse_frames"] is None else f"{row['depth_rmse_frames']:.3f}"
        print(f"{name:<20} {row['psnr_db']:8.2f} {row['ssim']:7.4f} {depth_text:>11} {row['cpu_s']:7.2f} "
              f"{row['peak_gib']:9.3f}")


if __name__ == "__main__":
    main()
