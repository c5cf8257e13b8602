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
