"""The xtal demo section runs on the bundled data alone and says what it showed."""

from __future__ import annotations

from refinekit.xtal.demo import section


def test_demo_section_on_bundled_data(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINEKIT_SHARED_DATA", str(tmp_path / "absent"))     # bundled data only
    sec = section(tmp_path)
    assert sec.ok, sec.summary
    assert sec.figures["alarm_fired"] is True
    assert sec.figures["shaken_r_free_end"] < sec.figures["shaken_r_free_start"]
    assert sec.figures["shaken_rmsd_end"] < sec.figures["shaken_rmsd_start"]
    assert sec.body.count("data:image/png;base64,") == 2 and "LGPL" in sec.body
    assert (tmp_path / "refined" / "5wkd_shaken_refined.mtz").is_file()
