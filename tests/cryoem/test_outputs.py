"""The files the cryo-EM commands write, as RELION, ChimeraX and cryoSPARC read them."""

from __future__ import annotations

import io

import mrcfile
import numpy as np
import starfile

from refinekit.cryoem.geometry import euler_to_matrix
from refinekit.cryoem.io import particles_star_blocks, read_particles, write_star

from .conftest import write_stack_and_star

OPTICS_STAR = """
data_optics
loop_
_rlnOpticsGroupName
_rlnOpticsGroup
_rlnMtfFileName
_rlnMicrographOriginalPixelSize
_rlnVoltage
_rlnSphericalAberration
_rlnAmplitudeContrast
_rlnImagePixelSize
_rlnImageSize
k3_300kV 7 mtf_k3_300kV.star 0.885 300 2.7 0.1 2.0 16
k2_200kV 3 mtf_k2_200kV.star 0.885 200 2.7 0.1 2.0 16

data_particles
loop_
_rlnImageName
_rlnDefocusU
_rlnOpticsGroup
""" + "".join(f"{i + 1}@stack.mrcs {15000 + i} {7 if i < 3 else 3}\n" for i in range(6))


def test_written_star_keeps_the_input_optics_groups(tmp_path):
    """The optics table was rebuilt from voltage, Cs and Q0 alone: rlnMtfFileName and
    rlnMicrographOriginalPixelSize were dropped, and groups renumbered in the order of their voltage."""
    images = np.random.default_rng(0).normal(size=(6, 16, 16)).astype(np.float32)
    stack = read_particles(write_stack_and_star(tmp_path, OPTICS_STAR, images))
    out = tmp_path / "out"
    out.mkdir()
    write_star(out / "particles.star", particles_star_blocks(stack, out))
    blocks = starfile.read(out / "particles.star", always_dict=True)
    optics, particles = blocks["optics"], blocks["particles"]
    assert optics["rlnOpticsGroup"].tolist() == [7, 3]
    assert optics["rlnOpticsGroupName"].tolist() == ["k3_300kV", "k2_200kV"]
    assert optics["rlnMtfFileName"].tolist() == ["mtf_k3_300kV.star", "mtf_k2_200kV.star"]
    assert np.allclose(optics["rlnMicrographOriginalPixelSize"], 0.885)
    assert optics["rlnVoltage"].tolist() == [300.0, 200.0]
    assert particles["rlnOpticsGroup"].tolist() == [7, 7, 7, 3, 3, 3]
    back = read_particles(out / "particles.star")
    assert back.ctf.voltage.tolist() == stack.ctf.voltage.tolist()


def test_simulated_and_refined_files_are_what_relion_and_chimerax_read(small_simulation, tmp_path):
    """Every MRC passes mrcfile.validate with the pixel size in its header; the stack is a stack; the
    true poses read back by starfile and read_particles to the same rotation matrices."""
    folder, sim = small_simulation
    for name in ("particles.mrcs", "truth.mrc", "initial_reference.mrc"):
        report = io.StringIO()
        assert mrcfile.validate(folder / name, print_file=report), report.getvalue()
        with mrcfile.open(folder / name) as mrc:
            header = mrc.header
            assert int(header.mode) == 2
            assert np.allclose(mrc.voxel_size.tolist(), sim.pixel_size, rtol=1e-6)
            assert (int(header.mapc), int(header.mapr), int(header.maps)) == (1, 2, 3)
            assert float(header.dmax) == float(mrc.data.max())
            stack = name.endswith(".mrcs")
            assert int(header.ispg) == (0 if stack else 1)
            assert int(header.nz) == (len(sim) if stack else mrc.data.shape[0])
    truth = read_particles(folder / "truth.star")
    assert np.abs(truth.rotations - sim.rotations).max() < 1e-6
    assert np.abs(truth.origins - sim.origins).max() < 1e-5
    particles = starfile.read(folder / "truth.star", always_dict=True)["particles"]
    angles = [particles[c].to_numpy() for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")]
    assert np.abs(euler_to_matrix(*angles) - sim.rotations).max() < 1e-6


def test_refined_maps_keep_the_references_origin(small_simulation, tmp_path):
    """EMDB maps start at -box/2 (nstart): the refined maps carry the reference's origin so that they
    overlay it in ChimeraX (they were written at origin 0)."""
    from typer.testing import CliRunner

    from refinekit.cli import app
    from refinekit.cryoem import read_map

    folder, _ = small_simulation
    reference = tmp_path / "reference.mrc"
    with mrcfile.open(folder / "initial_reference.mrc") as mrc:
        data, voxel = mrc.data.copy(), float(mrc.voxel_size.x)
    with mrcfile.new(reference) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel
        mrc.header.nxstart = mrc.header.nystart = mrc.header.nzstart = -16
        mrc.header.origin = (1.5, 0.0, 0.0)
    expected = (1.5 - 16 * voxel, -16 * voxel, -16 * voxel)
    assert np.allclose(read_map(reference).origin, expected)
    out = tmp_path / "refined"
    res = CliRunner().invoke(app, ["cryoem", "refine", str(folder / "particles.star"), "--reference",
                                   str(reference), "-o", str(out), "--max-iterations", "1"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    for name in ("map.mrc", "half_map_1.mrc", "half_map_2.mrc", "mask.mrc"):
        with mrcfile.open(out / name) as mrc:
            assert np.allclose([float(mrc.header.origin[a]) for a in "xyz"], expected), name
    assert np.allclose(read_map(out / "map.mrc").origin, expected)
