"""The examples in the focus domain's docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["", "align", "api", "autofocus", "defocus", "depth", "fusion", "io", "measures", "order", "render"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"refinekit.focus.{name}" if name else "refinekit.focus")
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried > 0, f"refinekit.focus.{name} has no docstring examples"
    assert failures == 0
