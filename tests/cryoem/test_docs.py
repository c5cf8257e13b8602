"""The cryo-EM docstring examples run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "refinekit.cryoem",
    "refinekit.cryoem.api",
    "refinekit.cryoem.backend",
    "refinekit.cryoem.ctf",
    "refinekit.cryoem.datasets",
    "refinekit.cryoem.fourier",
    "refinekit.cryoem.fsc",
    "refinekit.cryoem.geometry",
    "refinekit.cryoem.preprocess",
    "refinekit.cryoem.problem",
    "refinekit.cryoem.simulate",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
