"""The linalg docstring examples run, and the demo section works on the bundled matrix."""

from __future__ import annotations

import doctest
import hashlib
import importlib
import json

import pytest

MODULES = ["refinekit.linalg", "refinekit.linalg.api", "refinekit.linalg.bounds", "refinekit.linalg.gmres",
           "refinekit.linalg.precision", "refinekit.linalg.io", "refinekit.linalg.torch_backend"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name.endswith("torch_backend"):
        pytest.importorskip("torch")
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_bundled_matrix_is_the_documented_copy():
    from refinekit.linalg.demo import matrix_path

    path = matrix_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == "bbd019f5fcdab81a491061e3cc5b3167d3c6e9aa6afd0e0ef845961af2382ad6"
    assert "BSD-3-Clause" in (path.parent / "1138_bus.mtx.license").read_text()


def test_demo_section(tmp_path):
    from refinekit.linalg.demo import section

    result = section(tmp_path)
    assert result.ok, result.summary
    assert "<img" in result.body and "1138_bus" in result.summary
    data = json.loads((tmp_path / "linalg.json").read_text())
    assert [run["precision"] for run in data["runs"]] == ["single", "half", "bfloat16"]
    single = data["runs"][0]
    assert single["path"] == "ir" and single["forward_error"] <= single["forward_error_bound"]
    assert single["forward_error"] <= data["double_forward_error"] * 10
