"""Fixtures of the xtal tests: the bundled 5WKD entry and the real datasets in ../shared/data/xtal."""

from __future__ import annotations

from pathlib import Path

import pytest

import refinekit

BUNDLED = Path(refinekit.__file__).resolve().parent / "data" / "xtal"


@pytest.fixture(scope="session")
def bundled() -> Path:
    return BUNDLED


@pytest.fixture(scope="session")
def xtal_data(shared_data: Path) -> Path:
    """../shared/data/xtal (skips where absent)."""
    path = shared_data / "xtal"
    if not path.is_dir():
        pytest.skip(f"xtal datasets not found at {path}")
    return path


@pytest.fixture(scope="session")
def monlib(xtal_data: Path) -> Path:
    return xtal_data / "monomers"
