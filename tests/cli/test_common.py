"""What every command shares (cli/common.py): errors as one line on stderr with an exit code."""

from __future__ import annotations

from typer.testing import CliRunner

from refinekit.cli import app


def test_an_operating_system_error_is_one_line_not_a_traceback(tmp_path):
    """A file name longer than the system allows (OSError ENAMETOOLONG, which Path.is_dir raises) was a
    traceback; any OSError is the system's own message in one line, naming the file."""
    import numpy as np

    np.save(a := tmp_path / "a.npy", np.eye(2))
    np.save(b := tmp_path / "b.npy", np.ones(2))
    too_long = tmp_path / ("x" * 300 + ".npy")
    res = CliRunner().invoke(app, ["linalg", "solve", str(a), str(b), "-o", str(too_long)],
                             catch_exceptions=False)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "file name too long" in lines[0] and "xxxx" in lines[0], res.stderr
