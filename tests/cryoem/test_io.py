"""Reading and writing: the three real RELION stacks, STAR round trips, and bad input refused."""

from __future__ import annotations

import numpy as np
import pytest

from refinekit.core import InputError
from refinekit.cryoem import euler_to_matrix, read_map, read_particles, reconstruct_particles, write_map
from refinekit.cryoem.io import particles_star_blocks, write_star
from refinekit.cryoem.preprocess import downsample_stack

from .conftest import write_stack_and_star


def particles_dir(shared_data):
    return shared_data / "cryoem" / "particles"


def test_relion31_stack(shared_data):
    stack = read_particles(particles_dir(shared_data) / "cryodrgn_relion31_5" / "relion31.star")
    assert len(stack) == 5 and stack.box == 256
    assert stack.pixel_size == pytest.approx(2.806)
    assert np.all(stack.ctf.voltage == 300) and np.all(stack.ctf.cs == 0.01)
    assert np.all(stack.ctf.amplitude_contrast == 0.1)
    assert stack.ctf.defocus_u[0] == pytest.approx(13108.082418)
    assert stack.ctf.defocus_v[0] == pytest.approx(12845.582418)
    assert stack.ctf.defocus_angle[0] == pytest.approx(-160.39)
    assert np.allclose(stack.rotations[0], euler_to_matrix(-102.30296, 82.318041, 124.706463))
    assert np.allclose(stack.euler_angles[4], [162.855018, 84.493794, 140.014019])
    assert np.allclose(stack.origins[0] * 2.806, [0.019324, -0.64686])
    assert np.all(stack.subsets == 1)
    assert stack.images.dtype == np.float32 and np.isfinite(stack.images).all()


def test_aspire_stack_with_two_optics_groups(shared_data):
    stack = read_particles(particles_dir(shared_data) / "aspire_sample17" / "sample_particles_relion31.star")
    assert len(stack) == 17 and stack.box == 200
    assert stack.pixel_size == pytest.approx(1.4)
    # optics group 1 is at 300 kV, group 2 (particles 9..17) at 200 kV
    assert np.all(stack.ctf.voltage[:8] == 300) and np.all(stack.ctf.voltage[8:] == 200)
    assert stack.ctf.defocus_u[0] == pytest.approx(21186.804688)
    assert np.allclose(stack.euler_angles[0], [109.18664, 122.200343, 71.118492])
    assert np.allclose(stack.origins[3] * 1.4, [-0.0504, -0.3004])
    assert stack.subsets.tolist()[:5] == [2, 2, 1, 1, 1]


def test_empiar_relion30_stack(shared_data):
    stack = read_particles(particles_dir(shared_data) / "empiar10076_7" / "empiar_10076_7.star")
    assert len(stack) == 7 and stack.box == 320
    assert stack.pixel_size == pytest.approx(5 * 1e4 / 38168)  # detector 5 um / magnification
    assert np.all(stack.ctf.amplitude_contrast == 0.07)
    assert stack.ctf.defocus_v[6] == pytest.approx(14792.7)
    assert stack.rotations is None and stack.origins is None and stack.subsets is None


@pytest.mark.parametrize(
    "path", ["cryodrgn_relion31_5/relion31.star", "aspire_sample17/sample_particles_relion31.star"]
)
def test_reconstruction_from_the_given_angles(shared_data, path):
    stack = downsample_stack(read_particles(particles_dir(shared_data) / path), 64)
    assert stack.box == 64
    full, halves, fsc = reconstruct_particles(stack)
    assert full.shape == (64, 64, 64) and np.isfinite(full).all() and full.std() > 0
    if halves is not None:
        assert fsc is not None and np.isfinite(fsc.unmasked).all()


def test_star_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 16, 16)).astype(np.float32)
    text = """data_optics
loop_
_rlnOpticsGroup
_rlnImagePixelSize
_rlnVoltage
_rlnSphericalAberration
_rlnAmplitudeContrast
_rlnImageSize
1 2.5 300 2.7 0.1 16
data_particles
loop_
_rlnImageName
_rlnDefocusU
_rlnDefocusV
_rlnDefocusAngle
_rlnOpticsGroup
_rlnMicrographName
""" + "".join(f"{i + 1}@stack.mrcs {15000 + i} {14900 + i} {10 * i} 1 mic{i % 2}.mrc\n" for i in range(6))
    star = write_stack_and_star(tmp_path, text, images)
    stack = read_particles(star)
    rotations = euler_to_matrix(rng.uniform(-180, 180, 6), rng.uniform(0, 180, 6), rng.uniform(-180, 180, 6))
    origins = rng.normal(size=(6, 2))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    blocks = particles_star_blocks(
        stack, out_dir, rotations=rotations, origins=origins, subsets=np.array([1, 2, 1, 2, 1, 2])
    )
    write_star(out_dir / "particles.star", blocks)
    back = read_particles(out_dir / "particles.star")
    assert np.allclose(back.images, images)
    assert np.allclose(back.rotations, rotations, atol=1e-5)
    assert np.allclose(back.origins, origins, atol=1e-5)
    assert back.subsets.tolist() == [1, 2, 1, 2, 1, 2]
    assert back.pixel_size == 2.5 and np.allclose(back.ctf.defocus_v, stack.ctf.defocus_v)
    assert list(back.particles["rlnMicrographName"]) == [f"mic{i % 2}.mrc" for i in range(6)]


def test_map_round_trip(tmp_path):
    volume = np.random.default_rng(1).normal(size=(12, 12, 12)).astype(np.float32)
    write_map(tmp_path / "m.mrc", volume, 3.5)
    back = read_map(tmp_path / "m.mrc")
    assert np.array_equal(back.data, volume) and back.pixel_size == pytest.approx(3.5)
    assert (tmp_path / "m.mrc").stat().st_mode & 0o044  # readable by others, as open() would make it


STAR_HEADER = (
    "data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnVoltage\n_rlnSphericalAberration\n"
    "_rlnAmplitudeContrast\n_rlnPixelSize\n"
)


def rows(n: int, stack: str = "stack.mrcs") -> str:
    return "".join(f"{i + 1}@{stack} 15000 300 2.7 0.1 2.0\n" for i in range(n))


BAD_CASES = {
    "missing stack": (STAR_HEADER + rows(2, "nowhere.mrcs"), 2, "does not exist"),
    "index beyond the stack": (STAR_HEADER + rows(3), 2, "stack holds 2"),
    "no defocus": (
        "data_particles\nloop_\n_rlnImageName\n_rlnPixelSize\n1@stack.mrcs 2.0\n",
        2,
        "rlnDefocusU",
    ),
    "no pixel size": (
        "data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnVoltage\n_rlnSphericalAberration\n"
        "_rlnAmplitudeContrast\n1@stack.mrcs 1e4 300 2.7 0.1\n",
        2,
        "pixel size",
    ),
    "origins disagree": (
        STAR_HEADER.replace(
            "_rlnPixelSize\n", "_rlnPixelSize\n_rlnOriginX\n_rlnOriginY\n_rlnOriginXAngst\n_rlnOriginYAngst\n"
        )
        + "1@stack.mrcs 15000 300 2.7 0.1 2.0 1 1 4 4\n",
        2,
        "disagree",
    ),
    "bad subset": (
        STAR_HEADER.replace("_rlnPixelSize\n", "_rlnPixelSize\n_rlnRandomSubset\n")
        + "1@stack.mrcs 15000 300 2.7 0.1 2.0 3\n",
        2,
        "rlnRandomSubset",
    ),
    "unknown optics group": (
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n_rlnVoltage\n"
        "_rlnSphericalAberration\n_rlnAmplitudeContrast\n1 2.0 300 2.7 0.1\n"
        "data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnOpticsGroup\n"
        "1@stack.mrcs 15000 2\n",
        2,
        "optics group",
    ),
    "image size contradicts the stack": (
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n_rlnVoltage\n"
        "_rlnSphericalAberration\n_rlnAmplitudeContrast\n_rlnImageSize\n"
        "1 2.0 300 2.7 0.1 32\ndata_particles\nloop_\n_rlnImageName\n"
        "_rlnDefocusU\n_rlnOpticsGroup\n1@stack.mrcs 15000 1\n",
        2,
        "rlnImageSize",
    ),
    "not a star file": ("just some text\n", 2, "not a STAR file"),
    "empty table": ("data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n", 2, "empty"),
    "no image names": ("data_particles\nloop_\n_rlnDefocusU\n15000\n", 2, "rlnImageName"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_star_input_is_refused(tmp_path, case):
    _assert_star_refused(tmp_path, *BAD_CASES[case])


def _assert_star_refused(tmp_path, text, n_images, needle):
    """A STAR file of ``text`` beside a stack of ``n_images`` random images is refused, on one line,
    with a message matching ``needle``."""
    images = np.random.default_rng(2).normal(size=(n_images, 16, 16)).astype(np.float32)
    star = write_stack_and_star(tmp_path, text, images)
    with pytest.raises(InputError, match=needle) as info:
        read_particles(star)
    assert "\n" not in str(info.value)


def test_nan_image_and_empty_stack_are_refused(tmp_path):
    images = np.ones((2, 16, 16), dtype=np.float32)
    images[1, 3, 4] = np.nan
    star = write_stack_and_star(tmp_path, STAR_HEADER + rows(2), images)
    with pytest.raises(InputError, match=r"image 2 contains NaN"):
        read_particles(star)
    star = write_stack_and_star(tmp_path, STAR_HEADER + rows(1), np.zeros((0, 16, 16), dtype=np.float32))
    with pytest.raises(InputError, match=r"empty|does not exist|not a stack"):
        read_particles(star)


def test_bad_maps_are_refused(tmp_path):
    from refinekit.cryoem.io import write_mrc

    write_mrc(tmp_path / "flat.mrc", np.zeros((4, 8, 8), dtype=np.float32), 1.0)
    with pytest.raises(InputError, match="not a cube"):
        read_map(tmp_path / "flat.mrc")
    bad = np.ones((8, 8, 8), dtype=np.float32)
    bad[0, 0, 0] = np.inf
    write_mrc(tmp_path / "inf.mrc", bad, 1.0)
    with pytest.raises(InputError, match="NaN or Inf"):
        read_map(tmp_path / "inf.mrc")
    (tmp_path / "text.mrc").write_text("hello")
    with pytest.raises(InputError, match=r"cannot read|not an MRC"):
        read_map(tmp_path / "text.mrc")
    with pytest.raises(InputError, match="no such"):
        read_map(tmp_path / "missing.mrc")


MORE_BAD_CASES = {
    "repeated column": (STAR_HEADER.replace("_rlnPixelSize\n", "_rlnDefocusU\n") + rows(1), 1, "twice"),
    "non-integer subset": (
        STAR_HEADER.replace("_rlnPixelSize\n", "_rlnPixelSize\n_rlnRandomSubset\n")
        + "1@stack.mrcs 15000 300 2.7 0.1 2.0 1.5\n",
        1,
        "rlnRandomSubset has a non-integer",
    ),
    "non-integer optics group": (
        BAD_CASES["unknown optics group"][0].replace("15000 2\n", "15000 1.5\n"),
        1,
        "rlnOpticsGroup has a non-integer",
    ),
    "optics group listed twice": (
        BAD_CASES["unknown optics group"][0].replace(
            "1 2.0 300 2.7 0.1\n", "1 2.0 300 2.7 0.1\n1 2.0 200 2.7 0.1\n"
        ),
        1,
        "more than once",
    ),
    "optics table without group numbers": (
        "data_optics\nloop_\n_rlnImagePixelSize\n_rlnVoltage\n_rlnSphericalAberration\n"
        "_rlnAmplitudeContrast\n2.0 300 2.7 0.1\ndata_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n"
        "1@stack.mrcs 15000\n",
        1,
        "no rlnOpticsGroup column",
    ),
    "negative defocus": (
        STAR_HEADER + "1@stack.mrcs 15000 300 2.7 0.1 2.0\n2@stack.mrcs -15000 300 2.7 0.1 2.0\n",
        2,
        "rlnDefocusU has a negative value in row 2",
    ),
    "negative Cs": (STAR_HEADER + "1@stack.mrcs 15000 300 -2.7 0.1 2.0\n", 1, "rlnSphericalAberration"),
    "negative CTF scale": (
        STAR_HEADER.replace("_rlnPixelSize\n", "_rlnPixelSize\n_rlnCtfScalefactor\n")
        + "1@stack.mrcs 15000 300 2.7 0.1 2.0 -1\n",
        1,
        "rlnCtfScalefactor must be positive",
    ),
}


@pytest.mark.parametrize("case", sorted(MORE_BAD_CASES))
def test_contradictory_or_unphysical_star_is_refused(tmp_path, case):
    """Each of these was read without a word (a value truncated, the last group kept, the CTF's sign
    flipped) or, for a repeated column, failed with a traceback."""
    _assert_star_refused(tmp_path, *MORE_BAD_CASES[case])


def test_star_that_is_not_utf8_is_refused(tmp_path):
    """starfile reads such a file as having no blocks: the error blamed a missing rlnImageName."""
    star = write_stack_and_star(tmp_path, STAR_HEADER + rows(1), np.ones((1, 16, 16), dtype=np.float32))
    star.write_bytes(star.read_bytes().replace(b"\n1@", b"\n# caf\xe9\n1@"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_particles(star)


def test_mrc_whose_size_disagrees_with_its_header_is_refused(tmp_path):
    """A wrong mode in the header was read (permissively) as other numbers; a truncated file was
    reported as 'no data could be read'."""
    import struct

    from refinekit.cryoem.io import write_mrc

    good = tmp_path / "good.mrc"
    write_mrc(good, np.random.default_rng(3).normal(size=(8, 8, 8)).astype(np.float32) + 2, 1.0)
    raw = good.read_bytes()
    (tmp_path / "mode0.mrc").write_bytes(raw[:12] + struct.pack("<i", 0) + raw[16:])  # int8, not float32
    with pytest.raises(InputError, match="larger than its header describes"):
        read_map(tmp_path / "mode0.mrc")
    (tmp_path / "long.mrc").write_bytes(raw + bytes(100))
    with pytest.raises(InputError, match="100 bytes larger"):
        read_map(tmp_path / "long.mrc")
    (tmp_path / "short.mrc").write_bytes(raw[:-100])
    with pytest.raises(InputError, match="truncated"):
        read_map(tmp_path / "short.mrc")
    star = write_stack_and_star(tmp_path, STAR_HEADER + rows(2), np.ones((2, 16, 16), dtype=np.float32))
    stack = tmp_path / "stack.mrcs"
    stack.write_bytes(stack.read_bytes()[:-10])
    with pytest.raises(InputError, match="particle stack is truncated"):
        read_particles(star)


def test_simulation_outputs_are_all_or_none(tmp_path, monkeypatch):
    """A failure on truth.mrc (a full disk) left particles.mrcs, particles.star and truth.star behind."""
    import refinekit.cryoem.io as cryoem_io
    from refinekit.cryoem import simulate_particles, write_simulation

    volume = np.zeros((16, 16, 16))
    volume[5:11, 6:10, 7:9] = 1.0
    sim = simulate_particles(volume, 5.0, 4, 1.0, seed=0)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cryoem_io, "write_map", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_simulation(tmp_path / "new", sim)
    assert not (tmp_path / "new").exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "truth.star").write_text("an older run's truth")
    with pytest.raises(OSError, match="No space"):
        write_simulation(old, sim)
    assert [p.name for p in old.iterdir()] == ["truth.star"]
    assert (old / "truth.star").read_text() == "an older run's truth"
    monkeypatch.undo()
    paths = write_simulation(old, sim)
    assert sorted(p.name for p in old.iterdir()) == sorted(p.name for p in paths.values())
    assert len(read_particles(paths["star"])) == 4  # the image names point at the final stack


def test_write_map_refuses_nan(tmp_path):
    """A NaN map was written without a word (and read_map then refused the file)."""
    volume = np.ones((8, 8, 8), dtype=np.float32)
    volume[2, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        write_map(tmp_path / "m.mrc", volume, 1.0)
    assert list(tmp_path.iterdir()) == []


OPTICS_31 = (
    "# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n_rlnVoltage #3\n"
    "_rlnSphericalAberration #4\n_rlnAmplitudeContrast #5\n_rlnImageSize #6\n"
)
PARTICLES_31 = (
    "\n# version 30001\n\ndata_particles\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n_rlnOpticsGroup #3\n"
)


def test_stack_paths_relative_to_the_relion_project_folder(tmp_path, monkeypatch):
    from refinekit.cryoem.io import write_mrc

    # RELION names stacks from its project folder, two levels above Refine3D/job020/run_data.star
    images = np.random.default_rng(3).normal(size=(3, 16, 16)).astype(np.float32)
    (tmp_path / "Extract" / "job012" / "Micrographs").mkdir(parents=True)
    (tmp_path / "Refine3D" / "job020").mkdir(parents=True)
    write_mrc(tmp_path / "Extract" / "job012" / "Micrographs" / "mic1.mrcs", images, 2.0)
    star = tmp_path / "Refine3D" / "job020" / "run_data.star"
    names = ["000002@Extract/job012/Micrographs/mic1.mrcs", "000001@Extract/job012/Micrographs/mic1.mrcs"]
    star.write_text(
        OPTICS_31 + "1 2.0 300 2.7 0.1 16\n" + PARTICLES_31 + "".join(f"{n} 15000 1\n" for n in names)
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the project folder
    stack = read_particles(star)
    assert np.allclose(stack.images, images[[1, 0]])
    star.write_text(
        OPTICS_31 + "1 2.0 300 2.7 0.1 16\n" + PARTICLES_31 + "1@Extract/job099/gone.mrcs 15000 1\n"
    )
    with pytest.raises(
        InputError, match=r"row 1: the particle stack Extract/job099/gone.mrcs does not exist.*project"
    ):
        read_particles(star)


def test_relion30_file_with_several_mrc_stacks_out_of_order(tmp_path):
    import mrcfile

    # data_ block, #N comments, zero-padded indices, a .mrc stack with a volume header, rows in another
    # order than the stacks, origins in pixels, pixel size from detector and magnification
    rng = np.random.default_rng(4)
    a = rng.normal(size=(4, 16, 16)).astype(np.float32)
    b = rng.normal(size=(3, 16, 16)).astype(np.float32)
    with mrcfile.new(tmp_path / "a.mrc") as mrc:
        mrc.set_data(a)
    star = write_stack_and_star(
        tmp_path,
        "# version 30001\n\ndata_\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n_rlnVoltage #3\n"
        "_rlnSphericalAberration #4\n_rlnAmplitudeContrast #5\n_rlnDetectorPixelSize #6\n"
        "_rlnMagnification #7\n_rlnOriginX #8\n_rlnOriginY #9\n_rlnClassNumber #10\n_rlnGroupNumber #11\n"
        + "".join(
            f"{n} 15000 300 2.7 0.1 5.0 25000 1.5 -2 1 1\n"
            for n in ("000003@a.mrc", "2@b.mrcs", "000001@a.mrc", "3@b.mrcs", "4@a.mrc")
        ),
        b,
        stack_name="b.mrcs",
    )
    stack = read_particles(star)
    assert np.allclose(stack.images, np.stack([a[2], b[1], a[0], b[2], a[3]]))
    assert stack.pixel_size == pytest.approx(2.0) and np.allclose(stack.origins, [1.5, -2])


def test_image_name_without_at_must_be_a_single_image(tmp_path):
    from refinekit.cryoem.io import write_mrc

    rng = np.random.default_rng(5)
    image = rng.normal(size=(16, 16)).astype(np.float32)
    write_mrc(tmp_path / "one.mrc", image, 2.0)
    write_map(tmp_path / "subtomo.mrc", rng.normal(size=(16, 16, 16)).astype(np.float32), 2.0)
    star = tmp_path / "particles.star"
    star.write_text(OPTICS_31 + "1 2.0 300 2.7 0.1 16\n" + PARTICLES_31 + "one.mrc 15000 1\n")
    assert np.allclose(read_particles(star).images[0], image)
    # a 3D file was read as its first section, without a word
    star.write_text(OPTICS_31 + "1 2.0 300 2.7 0.1 16\n" + PARTICLES_31 + "subtomo.mrc 15000 1\n")
    with pytest.raises(InputError, match="holds 16 sections"):
        read_particles(star)
    # RELION 4 pseudo-subtomograms and CTF-premultiplied images say so in the optics table
    for column, value in (("rlnImageDimensionality", 3), ("rlnCtfDataAreCtfPremultiplied", 1)):
        star.write_text(
            OPTICS_31 + f"_{column} #7\n1 2.0 300 2.7 0.1 16 {value}\n" + PARTICLES_31 + "one.mrc 15000 1\n"
        )
        with pytest.raises(InputError, match=f"{column} is {value}"):
            read_particles(star)


def test_unused_optics_group_with_another_pixel_size(tmp_path):
    images = np.random.default_rng(6).normal(size=(2, 16, 16)).astype(np.float32)
    optics = OPTICS_31 + "1 2.0 300 2.7 0.1 16\n2 1.0 300 2.7 0.1 32\n"
    # a subset keeps the optics table of the whole data set: group 2 has no particle here
    star = write_stack_and_star(
        tmp_path, optics + PARTICLES_31 + "1@stack.mrcs 15000 1\n2@stack.mrcs 15000 1\n", images
    )
    assert read_particles(star).pixel_size == 2.0
    star.write_text(optics + PARTICLES_31 + "1@stack.mrcs 15000 1\n2@stack.mrcs 15000 2\n")
    with pytest.raises(InputError, match="several pixel sizes"):
        read_particles(star)


def test_phase_shift_as_scipion_writes_it_is_used_and_written_for_relion(tmp_path):
    import starfile

    images = np.random.default_rng(7).normal(size=(2, 16, 16)).astype(np.float32)
    star = write_stack_and_star(
        tmp_path,
        OPTICS_31
        + "1 2.0 300 2.7 0.1 16\n"
        + PARTICLES_31
        + "_rlnCtfPhaseShift #4\n_rlnNrOfSignificantSamples #5\n_rlnTomoName #6\n"
        + "1@stack.mrcs 15000 1 90 3 TS_01\n2@stack.mrcs 15000 1 80 3 TS_01\n",
        images,
    )
    stack = read_particles(star)
    assert stack.ctf.phase_shift.tolist() == [90, 80]
    write_star(tmp_path / "out.star", particles_star_blocks(stack, tmp_path))
    written = starfile.read(tmp_path / "out.star")
    assert written["particles"]["rlnPhaseShift"].tolist() == [90, 80]
    assert "rlnCtfPhaseShift" not in written["particles"]
    assert read_particles(tmp_path / "out.star").ctf.phase_shift.tolist() == [90, 80]
