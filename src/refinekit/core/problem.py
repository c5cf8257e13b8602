"""What a domain provides to the engine: a :class:`Problem` (and, optionally, :class:`Restraint` terms).

The loop is guess -> check -> correct -> repeat. A problem supplies the guess (:meth:`Problem.initial`),
the check (:meth:`Problem.check`, scores on the work and the free set), the correction
(:meth:`Problem.correct`) and how a correction is applied (:meth:`Problem.apply`). Everything else
(stop rules, the free-set monitor, keep-best, records, checkpoints) is the engine's.

A model can be anything a problem likes; the engine only measures corrections, with
:meth:`Problem.step_size`, and checks finiteness, with :meth:`Problem.is_finite`. Models are treated as
values: :meth:`Problem.apply` returns a new model and never changes the old one (the engine keeps the
best model by reference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(slots=True)
class Scores:
    """How wrong a model is: ``work`` (the data that guide corrections), ``free`` (held-out data).

    Both are "lower is better". ``free`` is None where a problem has no free set. ``restraint`` is the
    weighted restraint penalty; where it is None and the problem has restraints, the engine fills it in.
    ``figures`` holds the domain's own statistics (``r_work``, ``bond_rmsd``, ``backward_error``, ...),
    keys in snake_case.
    """

    work: float
    free: float | None = None
    restraint: float | None = None
    figures: dict[str, float] = field(default_factory=dict)

    def is_finite(self) -> bool:
        values = [self.work, self.free, self.restraint]
        return all(v is None or math.isfinite(v) for v in values)


@runtime_checkable
class Restraint(Protocol):
    """Prior knowledge as a weighted term beside the data: ``weight * penalty(model)``.

    ``statistics`` returns deviation figures (e.g. ``{"bond_rmsd": 0.012}``); ``gradient`` is used by
    the problem's own correction step (the engine does not differentiate anything).
    """

    name: str
    weight: float

    def penalty(self, model: Any) -> float: ...

    def gradient(self, model: Any) -> Any: ...

    def statistics(self, model: Any) -> Mapping[str, float]: ...


@runtime_checkable
class Problem(Protocol):
    """The protocol the engine runs. Subclass :class:`RefinementProblem` to get the optional parts."""

    def initial(self) -> Any: ...

    def check(self, model: Any) -> Scores: ...

    def correct(self, model: Any, scores: Scores) -> Any: ...

    def apply(self, model: Any, step: Any) -> Any: ...


class RefinementProblem:
    """A convenient base for problems whose model and correction are numpy arrays.

    Override :meth:`initial`, :meth:`check` and :meth:`correct`; the rest has sensible defaults:
    ``apply`` adds the step, ``step_size`` is ``||step|| / ||model||``, ``is_finite`` checks every
    element, and ``state_dict``/``load_state_dict`` (the problem's own state, for checkpoints) are empty.
    """

    restraints: Sequence[Restraint] = ()

    def initial(self) -> Any:
        raise NotImplementedError

    def check(self, model: Any) -> Scores:
        raise NotImplementedError

    def correct(self, model: Any, scores: Scores) -> Any:
        raise NotImplementedError

    def apply(self, model: Any, step: Any) -> Any:
        return model + step

    def step_size(self, model: Any, step: Any) -> float:
        """Relative size of a correction, ``||step|| / ||model||`` (``||step||`` where the model is 0)."""
        return relative_norm(step, model)

    def is_finite(self, model: Any) -> bool:
        return bool(np.all(np.isfinite(model)))

    def state_dict(self) -> dict[str, Any]:
        """The problem's internal state that a resumed run needs (a damping factor, a random state)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def relative_norm(step: Any, model: Any) -> float:
    """``||step||_2 / ||model||_2``, or ``||step||_2`` where the model is zero."""
    step_norm, model_norm = _norm(step), _norm(model)
    return step_norm / model_norm if model_norm > 0 else step_norm


def _norm(a: Any) -> float:
    a = np.asarray(a).ravel()
    if a.dtype.kind == "f":  # what np.linalg.norm does, without its generality (this runs every cycle)
        return math.sqrt(float(a.dot(a)))
    return float(np.linalg.norm(a))


def evaluate_restraints(restraints: Sequence[Restraint], model: Any) -> tuple[float, dict[str, float]]:
    """Total weighted penalty of ``restraints`` at ``model`` and their merged deviation statistics."""
    total = 0.0
    stats: dict[str, float] = {}
    for restraint in restraints:
        total += float(restraint.weight) * float(restraint.penalty(model))
        stats.update({k: float(v) for k, v in restraint.statistics(model).items()})
    return total, stats
