"""Per-cycle callbacks: see every :class:`CycleRecord`; return True (or raise StopIteration) to stop.

A plain function ``f(record) -> bool | None`` is a callback; so is any object with the
:class:`Callback` methods, which also see the model and the final result.
"""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from .result import CycleRecord, RefinementResult, jsonable


class Callback:
    """Base class: override what you need. ``on_cycle`` returning True stops the run."""

    def on_start(self, problem: Any, max_cycles: int) -> None:
        """Called once before cycle 0 (and again when a run resumes from a checkpoint)."""

    def on_cycle(self, record: CycleRecord, model: Any) -> bool | None:
        """Called after every check, with the record of the cycle and the model it scored."""
        return None

    def on_end(self, result: RefinementResult) -> None:
        """Called once with the result."""


class FunctionCallback(Callback):
    """Adapts a plain function ``f(record)`` to the :class:`Callback` interface."""

    def __init__(self, function: Any) -> None:
        self.function = function
        self.name = getattr(function, "__name__", type(function).__name__)

    def on_cycle(self, record: CycleRecord, model: Any) -> bool | None:
        return self.function(record)


class JsonLinesLog(Callback):
    """Writes one JSON object per cycle to a stream (stderr by default): a log other tools can tail."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream

    def on_cycle(self, record: CycleRecord, model: Any) -> bool | None:
        stream = self.stream or sys.stderr
        stream.write(json.dumps(jsonable(record.to_dict())) + "\n")
        stream.flush()
        return None


def as_callback(obj: Any) -> Callback:
    if isinstance(obj, Callback):
        return obj
    if callable(obj):
        return FunctionCallback(obj)
    raise TypeError(f"a callback must be a Callback or a callable, got {type(obj).__name__}")
