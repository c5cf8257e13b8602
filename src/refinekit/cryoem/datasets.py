"""The maps bundled with refinekit (CC0, from the EMDB; see ``refinekit/data/cryoem/README.md``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..core import InputError
from .io import DensityMap, read_map

BUNDLED_MAPS = {"emd_1832": "emd_1832_40px.mrc", "emd_5625": "emd_5625_32px.mrc"}


def bundled_map_path(name: str = "emd_1832") -> Path:
    """Path of a bundled map: ``"emd_1832"`` (40 px, 9.12 A) or ``"emd_5625"`` (32 px, 7.40 A)."""
    if name not in BUNDLED_MAPS:
        raise InputError(f"no bundled map {name!r} (there are: {', '.join(BUNDLED_MAPS)})")
    return Path(str(resources.files("refinekit") / "data" / "cryoem" / BUNDLED_MAPS[name]))


def bundled_map(name: str = "emd_1832") -> DensityMap:
    """A bundled map with its voxel size.

    >>> m = bundled_map("emd_1832")
    >>> m.box, round(m.pixel_size, 2)
    (40, 9.12)
    """
    return read_map(bundled_map_path(name))
