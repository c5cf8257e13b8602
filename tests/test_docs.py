"""The documentation's examples run: the docstrings of the public modules and the README's Python."""

from __future__ import annotations

import doctest
import importlib
import re

import pytest

from .conftest import REPO

MODULES = [
    "refinekit.core.atomic", "refinekit.core.errors", "refinekit.core.refiner", "refinekit.fit.api", "refinekit.fit.expression",
    "refinekit.fit.parameters",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
