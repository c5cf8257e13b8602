"""The xtal demo section runs on the bundled data alone and says what it showed."""

from __future__ import annotations

from refinekit.xtal.demo import section


def test_demo_section_on_bundled_data(tmp_path):
    sec = section(tmp_path)
    assert sec.ok, sec.summary
    assert sec.figures["alarm_fired"] is True
    assert sec.figures["shaken_r_free_end"] < sec.figures["shaken_r_free_start"]
    assert sec.figures["shaken_rmsd_end"] < sec.figures["shaken_rmsd_start"]
    assert sec.body.count("data:image/png;base64,") == 4 and "LGPL" in sec.body
    # the demo: rnase_model refined (R_free <= 0.188, no alarm), 1SAR raises the alarm
    assert sec.figures["rnase_r_free"] <= 0.188 and sec.figures["sar_alarm"] is True
    assert (tmp_path / "refined" / "5wkd_shaken_refined.mtz").is_file()


def test_the_shaken_model_is_written_atomically_not_through_a_link(tmp_path):
    """gemmi's write_pdb wrote the demo's shaken model in place: through a symbolic link left at its
    name, into the file the link names."""
    from refinekit.xtal.demo import _shaken_model

    other = tmp_path / "other.pdb"
    other.write_text("not to be touched\n")
    (tmp_path / "5wkd_shaken.pdb").symlink_to(other)
    path = _shaken_model(tmp_path)
    assert other.read_text() == "not to be touched\n"
    assert not path.is_symlink() and path.read_text().count("ATOM") > 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["5wkd_shaken.pdb", "other.pdb"]
