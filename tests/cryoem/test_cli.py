"""``refinekit cryoem simulate | refine | reconstruct`` end to end, and bad input: exit 2, one line on
stderr, nothing written."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from refinekit.cli import app
from refinekit.cryoem import compare_poses, read_map, read_particles
from refinekit.cryoem.datasets import bundled_map_path
from refinekit.cryoem.io import write_map, write_mrc

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_simulate_then_refine(tmp_path):
    sim_dir = tmp_path / "sim"
    res = invoke(
        "cryoem",
        "simulate",
        bundled_map_path("emd_1832"),
        "-n",
        240,
        "--snr",
        0.5,
        "--box",
        32,
        "--start-rotation",
        20,
        "-o",
        sim_dir,
        "--seed",
        3,
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["box"] == 32 and summary["pixel_size_a"] == pytest.approx(9.12 * 40 / 32, rel=1e-5)
    for name in ("particles.mrcs", "particles.star", "truth.star", "truth.mrc", "initial_reference.mrc"):
        assert (sim_dir / name).is_file()
    particles = read_particles(sim_dir / "particles.star")
    assert particles.rotations is None and len(particles) == 240
    assert np.std(particles.images) == pytest.approx(np.sqrt(1 + 0.5), rel=0.05)  # unit noise, SNR 0.5

    out = tmp_path / "refined"
    res = invoke(
        "cryoem",
        "refine",
        sim_dir / "particles.star",
        "--reference",
        sim_dir / "initial_reference.mrc",
        "-o",
        out,
        "--json",
        "--max-iterations",
        8,
    )
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["status"] in ("converged", "max_cycles") and data["resolution_a"] < 40
    for key in ("resolution_a", "resolution_masked_a", "resolution_corrected_a", "history", "outputs"):
        assert key in data
    assert all("median_angle_change_deg" in h and "resolution_a" in h for h in data["history"][1:])
    for name in (
        "map.mrc",
        "half_map_1.mrc",
        "half_map_2.mrc",
        "mask.mrc",
        "particles.star",
        "fsc.csv",
        "fsc.png",
        "iterations.json",
    ):
        assert (out / name).is_file(), name
    refined = read_particles(out / "particles.star")
    truth = read_particles(sim_dir / "truth.star")
    assert np.array_equal(refined.images, particles.images)  # image names point back at the stack
    assert set(refined.subsets.tolist()) == {1, 2}
    comparison = compare_poses(refined.rotations, refined.origins, truth.rotations, truth.origins)
    assert comparison.median_error_deg < 3.0
    assert read_map(out / "map.mrc").pixel_size == pytest.approx(particles.pixel_size, rel=1e-5)
    table = (out / "fsc.csv").read_text().splitlines()
    assert table[0].startswith("shell,resolution_a,fsc_unmasked,fsc_masked") and len(table) == 1 + 17
    assert json.loads((out / "iterations.json").read_text())["n_cycles"] == data["n_cycles"]

    # reconstruct from the refined STAR: the map agrees with the refinement's
    res = invoke("cryoem", "reconstruct", out / "particles.star", "-o", tmp_path / "again.mrc", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["resolution_a"] == pytest.approx(data["resolution_a"], rel=0.15)


@pytest.fixture()
def dataset(tmp_path, small_simulation) -> Path:
    """A private copy of the small simulated dataset."""
    folder, _ = small_simulation
    copy = tmp_path / "data"
    shutil.copytree(folder, copy)
    return copy


def refine_args(data: Path, out: Path, star: str = "particles.star", ref: str = "initial_reference.mrc"):
    return ("cryoem", "refine", data / star, "--reference", data / ref, "-o", out)


def test_refine_options_reach_the_refinement(dataset, tmp_path):
    """--no-solvent-flatten keeps the references at the unmasked crossing; the default may go beyond."""
    crossings = {}
    for flag in ("--solvent-flatten", "--no-solvent-flatten"):
        out = tmp_path / flag.strip("-")
        res = invoke(*refine_args(dataset, out), "--max-iterations", 3, "--no-marginalise", flag, "--json")
        assert res.exit_code == 0, res.stderr
        history = json.loads(res.stdout)["history"]
        crossings[flag] = [
            (h["fsc_crossing_shell"], after["reference_shell"]) for h, after in itertools.pairwise(history[1:])
        ]
        assert all("marginalised" in h and h["marginalised"] == 0 for h in history[1:])
    assert all(used == unmasked for unmasked, used in crossings["--no-solvent-flatten"])
    assert all(used >= unmasked for unmasked, used in crossings["--solvent-flatten"])


def expect_bad_input(res, before: dict, folder: Path, out: Path | None = None, needle: str = "") -> None:
    assert res.exit_code == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refinekit: error:"), res.stderr
    assert needle in lines[0]
    assert snapshot(folder) == before  # nothing written, nothing touched
    if out is not None:
        assert not out.exists()


def edit_star(data: Path, old: str, new: str, name: str = "bad.star") -> None:
    text = (data / "particles.star").read_text()
    assert old in text
    (data / name).write_text(text.replace(old, new))


def test_missing_stack(dataset, tmp_path):
    (dataset / "particles.mrcs").rename(dataset / "moved.mrcs")
    before = snapshot(dataset)
    out = tmp_path / "out"
    expect_bad_input(invoke(*refine_args(dataset, out)), before, dataset, out, "does not exist")


def test_box_mismatch(dataset, tmp_path):
    write_map(dataset / "small.mrc", np.ones((24, 24, 24), dtype=np.float32), None)
    before = snapshot(dataset)
    out = tmp_path / "out"
    expect_bad_input(invoke(*refine_args(dataset, out, ref="small.mrc")), before, dataset, out, "24 voxels")


def test_pixel_size_mismatch(dataset, tmp_path):
    start = read_map(dataset / "initial_reference.mrc")
    write_map(dataset / "other.mrc", start.data, start.pixel_size * 1.5)
    before = snapshot(dataset)
    out = tmp_path / "out"
    expect_bad_input(invoke(*refine_args(dataset, out, ref="other.mrc")), before, dataset, out, "voxel size")


def test_nan_image(dataset, tmp_path):
    stack = read_particles(dataset / "particles.star")
    images = stack.images.copy()
    images[7, 1, 1] = np.nan
    write_mrc(dataset / "particles.mrcs", images, stack.pixel_size)
    before = snapshot(dataset)
    out = tmp_path / "out"
    expect_bad_input(invoke(*refine_args(dataset, out)), before, dataset, out, "image 8 contains NaN")


def test_empty_stack(dataset, tmp_path):
    write_mrc(dataset / "particles.mrcs", np.zeros((0, 32, 32), dtype=np.float32), 8.55)
    before = snapshot(dataset)
    out = tmp_path / "out"
    expect_bad_input(invoke(*refine_args(dataset, out)), before, dataset, out)


def test_absent_and_contradictory_columns(dataset, tmp_path):
    out = tmp_path / "out"
    edit_star(dataset, "_rlnDefocusU", "_rlnSomethingElse")
    before = snapshot(dataset)
    expect_bad_input(invoke(*refine_args(dataset, out, star="bad.star")), before, dataset, out, "rlnDefocusU")
    text = (dataset / "particles.star").read_text()
    optics_row = next(line for line in text.splitlines() if line.startswith("1 opticsGroup1"))
    edit_star(dataset, optics_row, optics_row.replace(" 32 2", " 64 2"), "size.star")
    before = snapshot(dataset)
    expect_bad_input(
        invoke(*refine_args(dataset, out, star="size.star")), before, dataset, out, "rlnImageSize"
    )


def test_one_sided_subsets(dataset, tmp_path):
    text = (dataset / "particles.star").read_text().splitlines()
    header_end = max(i for i, line in enumerate(text) if line.startswith("_rln"))
    count = int(text[header_end].split("#")[1])
    text.insert(header_end + 1, f"_rlnRandomSubset #{count + 1}")
    text = [line + " 1" if "@" in line else line for line in text]
    (dataset / "one.star").write_text("\n".join(text) + "\n")
    before = snapshot(dataset)
    out = tmp_path / "out"
    expect_bad_input(invoke(*refine_args(dataset, out, star="one.star")), before, dataset, out, "both halves")


def test_outputs_never_over_inputs(dataset):
    # the output folder is the input folder and the reference is called map.mrc: refused
    shutil.copy(dataset / "initial_reference.mrc", dataset / "map.mrc")
    before = snapshot(dataset)
    res = invoke(
        "cryoem", "refine", dataset / "particles.star", "--reference", dataset / "map.mrc", "-o", dataset
    )
    expect_bad_input(res, before, dataset, None, "overwrite")


def test_output_folder_is_a_file(dataset, tmp_path):
    target = tmp_path / "a_file"
    target.write_text("x")
    before = snapshot(dataset)
    res = invoke(*refine_args(dataset, target))
    expect_bad_input(res, before, dataset, None, "not a folder")


def test_simulate_bad_input(tmp_path):
    out = tmp_path / "sim"
    for args, needle in (
        ((tmp_path / "missing.mrc", "-n", 10, "--snr", 1), "no such"),
        ((bundled_map_path("emd_1832"), "-n", 10, "--snr", 0), "--snr"),
        ((bundled_map_path("emd_1832"), "-n", 0, "--snr", 1), "-n"),
        ((bundled_map_path("emd_1832"), "-n", 10, "--snr", 1, "--start-lowpass", 5), "Nyquist"),
        ((bundled_map_path("emd_1832"), "-n", 10, "--snr", "inf"), "--snr"),
        ((bundled_map_path("emd_1832"), "-n", 10, "--snr", 1, "--seed", -1), "--seed"),
        ((bundled_map_path("emd_1832"), "-n", 10, "--snr", 1, "--voltage", 0), "--voltage"),
        ((bundled_map_path("emd_1832"), "-n", 10, "--snr", 1, "--start-rotation", "nan"), "--start-rotation"),
    ):
        res = invoke("cryoem", "simulate", *args, "-o", out)
        assert res.exit_code == 2 and needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert not out.exists()
    nopix = tmp_path / "nopix.mrc"
    write_map(nopix, np.ones((16, 16, 16), dtype=np.float32), None)
    res = invoke("cryoem", "simulate", nopix, "-n", 10, "--snr", 1, "-o", out)
    assert res.exit_code == 2 and "--pixel-size" in res.stderr and not out.exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [(("--seed", "-1"), "--seed"), (("--initial-lowpass", "inf"), "low-pass"), (("--max-iterations", "0"), "")],
)
def test_refine_bad_options(dataset, tmp_path, extra, needle):
    before = snapshot(dataset)
    out = tmp_path / "refined"
    res = invoke(*refine_args(dataset, out), *extra)
    expect_bad_input(res, before, dataset, out, needle)


def test_reconstruct_needs_angles(dataset, tmp_path):
    before = snapshot(dataset)
    res = invoke("cryoem", "reconstruct", dataset / "particles.star", "-o", tmp_path / "m.mrc")
    expect_bad_input(res, before, dataset, tmp_path / "m.mrc", "rlnAngleRot")


def test_simulate_refuses_non_finite_or_unphysical_options(tmp_path):
    """--defocus-max inf failed with a traceback; --cs nan and --max-shift inf were blamed on the map
    ("projects to blank images"); --pixel-size inf on the low-pass."""
    out = tmp_path / "sim"
    base = (bundled_map_path("emd_1832"), "-n", 4, "--snr", 1, "--box", 16, "--start-lowpass", 60)
    for extra, needle in (
        (("--defocus-max", "inf"), "defocus range"),
        (("--cs", "nan"), "--cs"),
        (("--cs", -2.7), "--cs"),
        (("--max-shift", "inf"), "--max-shift"),
        (("--pixel-size", "inf"), "--pixel-size"),
    ):
        res = invoke("cryoem", "simulate", *base, *extra, "-o", out)
        assert res.exit_code == 2 and needle in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()


def test_simulate_refuses_a_map_too_small_without_box(tmp_path):
    """A 4-voxel map made a 4-pixel simulation (which refine then cannot use); 2 voxels was blamed on
    "blank images" without naming the map."""
    out = tmp_path / "sim"
    for size in (2, 4):
        tiny = tmp_path / f"tiny{size}.mrc"
        write_map(tiny, np.random.default_rng(0).normal(size=(size,) * 3).astype(np.float32) + 1, 10.0)
        res = invoke("cryoem", "simulate", tiny, "-n", 4, "--snr", 1, "--start-lowpass", 100, "-o", out)
        assert res.exit_code == 2 and f"{tiny}: the map is {size} voxels" in res.stderr, res.stderr
        assert not out.exists()


def test_simulate_refuses_a_constant_map_naming_it(tmp_path):
    flat = tmp_path / "flat.mrc"
    write_map(flat, np.full((20, 20, 20), 3.0, np.float32), 5.0)
    out = tmp_path / "sim"
    res = invoke("cryoem", "simulate", flat, "-n", 4, "--snr", 1, "--start-lowpass", 40, "-o", out)
    assert res.exit_code == 2 and f"{flat}: the map is constant" in res.stderr, res.stderr
    assert not out.exists()


def test_huge_start_rotation_is_a_rotation():
    """The angle overflowed the rotation formula (NaN in the matrix and the reference)."""
    from refinekit.cryoem import starting_reference

    volume = np.zeros((16, 16, 16))
    volume[5:11, 6:10, 7:9] = 1.0
    reference, rotation = starting_reference(volume, 4.0, 20.0, 1e300, seed=1)
    same, expected = starting_reference(volume, 4.0, 20.0, float(np.remainder(1e300, 360.0)), seed=1)
    assert np.isfinite(rotation).all() and np.allclose(rotation @ rotation.T, np.eye(3))
    assert np.allclose(rotation, expected) and np.allclose(reference, same)


def test_too_few_particles_names_the_file(dataset, tmp_path):
    text = (dataset / "particles.star").read_text().splitlines()
    kept = [line for line in text if "@" not in line or line.startswith(("000001@", "000002@", "000003@"))]
    (dataset / "three.star").write_text("\n".join(kept) + "\n")
    before = snapshot(dataset)
    out = tmp_path / "out"
    res = invoke(*refine_args(dataset, out, star="three.star"))
    expect_bad_input(res, before, dataset, out, f"{dataset / 'three.star'}: 3 particle(s)")


def test_refine_refuses_images_too_small(tmp_path):
    """2-pixel images failed with a traceback deep in the FSC."""
    from .conftest import write_stack_and_star

    rng = np.random.default_rng(0)
    text = "data_\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnVoltage\n_rlnSphericalAberration\n"
    text += "_rlnAmplitudeContrast\n_rlnPixelSize\n"
    text += "".join(f"{i + 1}@stack.mrcs 20000 300 2.7 0.1 10\n" for i in range(12))
    star = write_stack_and_star(tmp_path, text, rng.normal(size=(12, 2, 2)).astype(np.float32), pixel=10.0)
    write_map(tmp_path / "ref.mrc", rng.normal(size=(2, 2, 2)).astype(np.float32), 10.0)
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    res = invoke("cryoem", "refine", star, "--reference", tmp_path / "ref.mrc", "-o", out,
                 "--initial-lowpass", 100)
    expect_bad_input(res, before, tmp_path, out, "at least 8")


@pytest.mark.parametrize(("device", "needle"), [("cuda:7", "torch sees 1"), ("cuda:abc", "not a CUDA device")])
def test_refine_refuses_a_cuda_device_torch_does_not_have(dataset, tmp_path, monkeypatch, device, needle):
    """With CUDA present, a bad index or name passed the checks and failed with a traceback later."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    before = snapshot(dataset)
    out = tmp_path / "out"
    res = invoke(*refine_args(dataset, out), "--device", device, "--max-iterations", 1)
    expect_bad_input(res, before, dataset, out, needle)


def posed_star(folder: Path, box: int, origin: float = 0.0) -> Path:
    """Six particles of ``box`` pixels with angles, both halves and an origin of ``origin`` pixels."""
    from .conftest import write_stack_and_star

    images = np.random.default_rng(0).normal(size=(6, box, box)).astype(np.float32)
    head = "data_\nloop_\n" + "".join(
        f"_{c}\n"
        for c in (
            "rlnImageName rlnDefocusU rlnVoltage rlnSphericalAberration rlnAmplitudeContrast rlnPixelSize "
            "rlnAngleRot rlnAngleTilt rlnAnglePsi rlnOriginX rlnOriginY rlnRandomSubset"
        ).split()
    )
    rows = "".join(
        f"{i + 1}@stack.mrcs 15000 300 2.7 0.1 2.0 {10 * i} {20 * i} 0 {origin} 0 {1 + i % 2}\n" for i in range(6)
    )
    return write_stack_and_star(folder, head + rows, images)


@pytest.mark.parametrize(
    ("box", "origin", "needle"), [(2, 0.0, "2 pixels across"), (16, 500.0, "origin (500, 0)")]
)
def test_reconstruct_refuses_tiny_images_and_origins_off_the_image(tmp_path, box, origin, needle):
    """2-pixel images made a map and reported "FSC 0.143: 4.00 A"; an origin of 500 pixels in a 16-pixel
    box (the Fourier shift wraps it round) made a map without a word."""
    data = tmp_path / "data"
    data.mkdir()
    star = posed_star(data, box, origin)
    before = snapshot(data)
    res = invoke("cryoem", "reconstruct", star, "-o", data / "m.mrc")
    expect_bad_input(res, before, data, data / "m.mrc", f"{star}: ")
    assert needle in res.stderr


def test_reconstruct_writes_the_map_and_half_maps_or_none(tmp_path, monkeypatch):
    """A full disk on the second half map left the map and the first half map behind."""
    import errno

    import refinekit.cryoem

    star = posed_star(tmp_path, 16)
    real = refinekit.cryoem.write_map
    calls = []

    def fail_third(path, volume, pixel_size):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, volume, pixel_size)

    monkeypatch.setattr(refinekit.cryoem, "write_map", fail_third)
    before = snapshot(tmp_path)
    res = invoke("cryoem", "reconstruct", star, "-o", tmp_path / "m.mrc")
    assert res.exit_code == 1 and "no space left" in res.stderr, res.stderr
    assert len(calls) == 3 and snapshot(tmp_path) == before  # no map, no half map, no temporary file
    monkeypatch.setattr(refinekit.cryoem, "write_map", real)
    res = invoke("cryoem", "reconstruct", star, "-o", tmp_path / "m.mrc")
    assert res.exit_code == 0, res.stderr
    assert sorted(set(snapshot(tmp_path)) - set(before)) == ["m.mrc", "m_half_map_1.mrc", "m_half_map_2.mrc"]
