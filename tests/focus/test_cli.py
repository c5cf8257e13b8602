"""``refinekit focus fuse`` / ``autofocus`` end to end: outputs, the JSON, and bad input (exit 2, one
line on stderr, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from refinekit.cli import app

from .conftest import Rendered, make_stack, psnr

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return make_stack(size=96, n=7, low=1.0, high=5.0, seed=12)


@pytest.fixture()
def frames(rendered: Rendered, tmp_path: Path) -> Path:
    folder = tmp_path / "stack"
    rendered.write(folder)
    return folder


def test_fuse_json_without_depth_has_the_shared_fields(frames: Path, tmp_path: Path) -> None:
    """Fusion alone runs no loop, but its JSON has every top-level field of the shared contract."""
    res = invoke("focus", "fuse", frames, "-o", tmp_path / "fused.png", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    shared = {"status", "success", "message", "n_cycles", "best_cycle", "kept_cycle", "work", "free",
              "alarms", "history"}
    assert shared <= set(data) and data["work"] is None and data["history"] == []


def test_fuse_with_depth_writes_every_output(frames: Path, rendered: Rendered, tmp_path: Path) -> None:
    out, depth = tmp_path / "fused.png", tmp_path / "depth.tif"
    res = invoke("focus", "fuse", frames, "-o", out, "--depth", depth, "--zstep", "2.5", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["frames"] == 7 and data["bits"] == 8 and data["depth"]["zstep_um"] == 2.5
    assert {"weight", "weight_trials", "free_frames", "free", "blur_rate"} <= set(data["depth"])
    assert all({"weight", "free"} <= set(t) for t in data["depth"]["weight_trials"])
    fused = cv2.cvtColor(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    assert fused.dtype == np.uint8 and psnr(fused / 255.0, rendered.truth) > 30
    depth_um = tifffile.imread(depth)
    assert depth_um.dtype == np.float32 and depth_um.shape == (96, 96)
    inner = (slice(8, -8), slice(8, -8))
    assert np.sqrt(np.mean((depth_um[inner] / 2.5 - rendered.depth[inner]) ** 2)) < 0.3
    confidence = tifffile.imread(tmp_path / "depth_confidence.tif")
    assert confidence.min() >= 0 and confidence.max() <= 1
    for png in ("depth.png", "depth_3d.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary files left behind


def test_sixteen_bit_in_sixteen_bit_out(rendered: Rendered, tmp_path: Path) -> None:
    paths = rendered.write(tmp_path / "s16", bits=16)
    out = tmp_path / "fused.tif"
    res = invoke("focus", "fuse", *paths, "-o", out, "--no-align")
    assert res.exit_code == 0, res.stderr
    fused = tifffile.imread(out)
    assert fused.dtype == np.uint16 and fused.shape == (96, 96, 3)
    assert "written" in res.stdout


def test_autofocus_command(rendered: Rendered, frames: Path) -> None:
    res = invoke("focus", "autofocus", frames, "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["best_frame"] in {"frame_01.png", "frame_02.png", "frame_03.png", "frame_04.png"}
    assert data["n_acquired"] <= data["n_frames"] and len(data["samples"]) == data["n_acquired"]
    assert data["success"] is True and data["focus_found"] is True
    text = invoke("focus", "autofocus", frames, "--metric", "tenengrad")
    assert text.exit_code == 0 and "sharpest frame" in text.stdout


def _bad(case: str, folder: Path, tmp_path: Path) -> tuple[list[object], str]:
    frames = sorted(folder.iterdir())
    out = tmp_path / "out.png"
    if case == "single":
        return [frames[0], "-o", out], "at least 2 frames"
    if case == "sizes":
        odd = tmp_path / "odd.png"
        cv2.imwrite(str(odd), np.zeros((50, 60, 3), np.uint8))
        return [*frames, odd, "-o", out], "one size"
    if case == "depths":
        deep = tmp_path / "deep.png"
        cv2.imwrite(str(deep), np.zeros((96, 96, 3), np.uint16))
        return [*frames, deep, "-o", out], "mixed bit depths"
    if case == "unreadable":
        junk = tmp_path / "junk.png"
        junk.write_bytes(b"\x89PNG but then nothing sensible" * 3)
        return [*frames, junk, "-o", out], "junk.png"
    if case == "empty":
        empty = tmp_path / "empty.jpg"
        empty.write_bytes(b"")
        return [*frames, empty, "-o", out], "empty file"
    if case == "overwrite":
        return [*frames, "-o", frames[0]], "overwrite the input"
    if case == "symlink":
        link = tmp_path / "link.png"
        link.symlink_to(frames[0])
        return [folder, "-o", link], "overwrite the input"
    if case == "depth_symlink":
        link = tmp_path / "d_confidence.tif"
        link.symlink_to(frames[3])
        return [folder, "-o", out, "--depth", tmp_path / "d.tif"], "overwrite the input"
    if case == "depth_format":
        return [*frames, "-o", out, "--depth", tmp_path / "depth.png"], ".tif"
    if case == "collision":
        return [*frames, "-o", tmp_path / "d.png", "--depth", tmp_path / "d.tif"], "overwritten"
    if case == "no_folder":
        return [*frames, "-o", tmp_path / "missing" / "out.png"], "does not exist"
    if case == "zstep":
        return [*frames, "-o", out, "--zstep", "-1"], "--zstep"
    if case == "twice":
        return [folder, frames[2], "-o", out], f"{frames[2].name}: the same frame is given twice"
    if case == "nan":
        rng = np.random.default_rng(0)
        tifs = [tmp_path / f"f{k}.tif" for k in range(3)]
        for k, path in enumerate(tifs):
            frame = rng.random((32, 32)).astype(np.float32)
            frame[5, 7] = np.nan if k == 1 else frame[5, 7]
            tifffile.imwrite(path, frame)
        return [*tifs, "-o", tmp_path / "out.tif"], "f1.tif: 1 pixel value(s) are NaN or infinite"
    if case == "weight_inf":
        return [*frames, "-o", out, "--depth", tmp_path / "d.tif", "--weight", "inf"], "--weight"
    if case == "zstep_inf":
        return [*frames, "-o", out, "--depth", tmp_path / "d.tif", "--zstep", "inf"], "--zstep"
    if case == "jpeg16":
        deep = [tmp_path / f"w{k}.png" for k in range(2)]
        for path in deep:
            cv2.imwrite(str(path), np.zeros((8, 8), np.uint16))
        return [*deep, "-o", tmp_path / "out.jpg"], "uint16"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["single", "sizes", "depths", "unreadable", "empty", "overwrite",
                                  "depth_format", "collision", "no_folder", "zstep", "jpeg16", "twice",
                                  "nan", "weight_inf", "zstep_inf", "symlink", "depth_symlink"])
def test_bad_input_is_one_line_exit_2_nothing_written(case: str, frames: Path, tmp_path: Path) -> None:
    args, needle = _bad(case, frames, tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    before_bytes = {p: p.read_bytes() for p in before if p.is_file()}
    res = invoke("focus", "fuse", *args)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refinekit: error:") and needle in lines[0], lines
    assert {p for p in tmp_path.rglob("*")} == before
    assert all(p.read_bytes() == data for p, data in before_bytes.items())


def test_a_full_disk_on_a_later_output_leaves_no_output(frames: Path, tmp_path: Path,
                                                       full_disk_on_third_fsync: list[int]) -> None:
    """The fused image and the depth outputs are all or nothing: a disk that filled up on the third
    file left the fused image and the depth map of a failed run behind."""
    calls = full_disk_on_third_fsync
    out = tmp_path / "out"
    out.mkdir()
    res = invoke("focus", "fuse", frames, "-o", out / "fused.png", "--depth", out / "depth.tif")
    assert res.exit_code == 1 and "no space left on device" in res.stderr, res.stderr
    assert len(calls) >= 3 and list(out.iterdir()) == []


def test_autofocus_of_a_featureless_stack_finds_no_focus(tmp_path: Path) -> None:
    """An all-black stack has no sharpest frame: exit 1 (no result), success false in the JSON (it
    was exit 0 with success true and a "no focus found" message)."""
    paths = []
    for k in range(5):
        cv2.imwrite(str(path := tmp_path / f"black_{k}.png"), np.zeros((40, 40), np.uint8))
        paths.append(path)
    res = invoke("focus", "autofocus", *paths, "--json")
    assert res.exit_code == 1, res.stderr
    data = json.loads(res.stdout)
    assert data["success"] is False and data["focus_found"] is False and "no focus found" in data["message"]


def test_autofocus_bad_input(tmp_path: Path) -> None:
    res = invoke("focus", "autofocus", tmp_path / "none.png", tmp_path / "nada.png")
    assert res.exit_code == 2 and "no such file" in res.stderr
    res = invoke("focus", "autofocus", tmp_path, "--metric", "entropy")
    assert res.exit_code == 2 and "--metric" in res.stderr


def test_a_png_cut_short_is_one_line_in_a_real_process(frames: Path, tmp_path: Path) -> None:
    """A PNG or JPEG whose header reads but whose body is cut short fails only when decoded; libpng's
    own message must not reach stderr beside the error, nor libjpeg return half an image (CliRunner
    cannot see a library's stderr: a real process)."""
    import subprocess
    import sys

    first = next(iter(sorted(frames.iterdir())))
    jpeg = tmp_path / "whole.jpg"
    cv2.imwrite(str(jpeg), cv2.imread(str(first)))
    for name, whole in (("cut.png", first.read_bytes()), ("cut.jpg", jpeg.read_bytes())):
        cut = tmp_path / name
        cut.write_bytes(whole[: len(whole) // 2])
        out = tmp_path / "out.png"
        res = subprocess.run([sys.executable, "-m", "refinekit", "focus", "fuse", frames, cut, "-o", out],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 2
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("refinekit: error:"), lines
        assert name in lines[0] and "truncated" in lines[0], lines
        assert not out.exists()


def test_a_damaged_tiff_is_one_line_in_a_real_process(tmp_path: Path) -> None:
    """A TIFF cut short after its first tags: tifffile logs each tag it cannot read, and with logging
    not set up Python prints those records to stderr (CliRunner and pytest's log capture would hide
    them: a real process)."""
    import subprocess
    import sys

    frames = [tmp_path / f"f{k}.tif" for k in range(3)]
    for k, path in enumerate(frames):
        tifffile.imwrite(path, np.full((32, 32), k / 4, np.float32))
    frames[1].write_bytes(frames[1].read_bytes()[:200])
    out = tmp_path / "out.tif"
    res = subprocess.run([sys.executable, "-m", "refinekit", "focus", "fuse", *frames, "-o", out],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refinekit: error:") and "f1.tif" in lines[0], lines
    assert not out.exists()
