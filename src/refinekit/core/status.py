"""Why a refinement stopped: one enumerated status per stop rule, each with a human message."""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """The stop reasons, in the spirit of ``scipy.optimize.OptimizeResult.status``.

    ``success`` is true where the returned model is the one the loop was asked for (it converged, or it
    stopped early on overfitting and kept the best model by free score). ``usable`` is true where the
    returned model is finite and came from a sane run, even if it did not converge.
    """

    CONVERGED = 0
    STAGNATED = 1
    MAX_CYCLES = 2
    OVERFITTING = 3
    CALLBACK = 4
    DIVERGED = 5
    NON_FINITE = 6

    @property
    def success(self) -> bool:
        return self in (Status.CONVERGED, Status.OVERFITTING)

    @property
    def usable(self) -> bool:
        return self not in (Status.DIVERGED, Status.NON_FINITE)

    @property
    def label(self) -> str:
        """The name used in JSON and reports: ``converged``, ``max_cycles``, ..."""
        return self.name.lower()


class StopRefinement(Exception):
    """Raised by a problem (or a callback) to end the run with a given status and message.

    A problem raises it when it knows better than the engine, e.g. a damped least-squares step that
    cannot lower the cost any more (``Status.CONVERGED``), or a factorization that broke down.
    """

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = Status(status)
        self.message = message
