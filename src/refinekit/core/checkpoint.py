"""Checkpoints: the refiner's state after a cycle, written atomically, from which a run resumes.

The state is pickled (models are whatever a problem uses). Load checkpoints you wrote yourself only:
unpickling runs code, as with any pickle.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes
from .errors import InputError

FORMAT = "refinekit-checkpoint"
VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    payload = {"format": FORMAT, "version": VERSION, **state}
    atomic_write_bytes(path, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read checkpoint ({exc.strerror or exc})", path=path) from None
    try:
        state = pickle.loads(data)
    except Exception:
        raise InputError("corrupt or truncated checkpoint", path=path) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError("not a refinekit checkpoint", path=path)
    if state.get("version") != VERSION:
        raise InputError(f"checkpoint version {state.get('version')} is not {VERSION}", path=path)
    return state
