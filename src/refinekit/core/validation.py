"""The free set: splitters that pick it, free flags that keep it, and the overfitting monitor.

Splitters follow scikit-learn: tiny objects whose ``split(n)`` yields ``(work_indices, free_indices)``.
What they pick is kept as :class:`FreeFlags`, which are data: saved beside the results, loaded back
for the next run, and never silently re-picked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .errors import InputError
from .result import Alarm

IndexPair = tuple[np.ndarray, np.ndarray]


# ---------------------------------------------------------------------------------------- flags
@dataclass(frozen=True)
class FreeFlags:
    """One integer flag per observation; observations whose flag equals ``free_value`` are free.

    This is the CCP4 convention (flags 0..19, 0 free) generalised: a hold-out split uses 0/1, a
    k-fold split 0..k-1 (cycle ``free_value`` through them for complete cross-validation), a half-set
    split 1/2 (``rlnRandomSubset``).
    """

    values: np.ndarray
    free_value: int = 0

    def __post_init__(self) -> None:
        values = np.asarray(self.values)
        if values.ndim != 1:
            raise InputError("free flags must be a one-dimensional array")
        try:
            if values.dtype.kind not in "biuf":  # strings, Python objects
                values = values.astype(np.float64)
            with np.errstate(invalid="ignore"):
                flags = values.astype(np.int64, copy=False)
            free_value = int(self.free_value)
        except (TypeError, ValueError, OverflowError):
            raise InputError("free flags must be integers") from None
        # a cast would truncate 0.5 to 0 and wrap NaN or huge values: flags are labels, never rounded
        if not np.array_equal(flags, values) or free_value != self.free_value:
            raise InputError("free flags must be integers that fit in 64 bits")
        object.__setattr__(self, "values", flags)
        object.__setattr__(self, "free_value", free_value)

    def __len__(self) -> int:
        return self.values.size

    @property
    def free(self) -> np.ndarray:
        """Boolean mask of the free observations."""
        return self.values == self.free_value

    @property
    def work(self) -> np.ndarray:
        """Boolean mask of the working observations."""
        return self.values != self.free_value

    @property
    def free_fraction(self) -> float:
        return float(self.free.mean()) if self.values.size else 0.0

    def with_free_value(self, value: int) -> FreeFlags:
        """The same flags with another subset free (k-fold cross-validation)."""
        return FreeFlags(self.values, int(value))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the flags as text, one integer per line after a header (atomically)."""
        with atomic_write(path, "w", encoding="ascii") as fh:
            fh.write(f"# refinekit free flags: n={self.values.size} free_value={self.free_value}\n")
            np.savetxt(fh, self.values, fmt="%d")

    @classmethod
    def load(cls, path: str | os.PathLike[str], n: int | None = None) -> FreeFlags:
        """Read flags written by :meth:`save`; ``n``, if given, is the number of observations they
        must match (a mismatch is an error, never a reason to pick new flags)."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="ascii").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read free flags ({_reason(exc)})", path=path) from None
        if not lines or not lines[0].startswith("# refinekit free flags:"):
            raise InputError("not a refinekit free-flag file (header missing)", path=path)
        try:
            header = dict(item.split("=", 1) for item in lines[0].split(":", 1)[1].split())
            count = int(header["n"])
            free_value = int(header["free_value"])
            values = np.array([int(line) for line in lines[1:] if line.strip()], dtype=np.int64)
        except (KeyError, ValueError, OverflowError):  # a header item without '=', a flag > 2**63
            raise InputError("corrupt free-flag file", path=path) from None
        if values.size != count:
            raise InputError(f"truncated free-flag file: {values.size} flags, header says {count}",
                             path=path)
        if n is not None and count != n:
            raise InputError(f"free flags are for {count} observations but the data have {n}",
                             path=path)
        return cls(values, free_value)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


# ------------------------------------------------------------------------------------ splitters
class HoldOut:
    """A random free set of ``fraction`` of the observations (default 5 %), seeded.

    At least one observation is free and at least one works, whatever ``n``.
    """

    def __init__(self, fraction: float = 0.05, seed: int | None = 0) -> None:
        if not 0.0 < fraction < 1.0:
            raise InputError(f"free fraction must be between 0 and 1 (exclusive), got {fraction}")
        self.fraction = float(fraction)
        self.seed = seed

    def split(self, n: int) -> Iterator[IndexPair]:
        flags = self.flags(n)
        yield np.flatnonzero(flags.work), np.flatnonzero(flags.free)

    def flags(self, n: int) -> FreeFlags:
        if n < 2:
            raise InputError(f"cannot set aside a free set from {n} observation(s)")
        n_free = min(max(1, round(self.fraction * n)), n - 1)
        rng = np.random.default_rng(self.seed)
        values = np.ones(n, dtype=np.int64)
        values[rng.choice(n, size=n_free, replace=False)] = 0
        return FreeFlags(values, free_value=0)

    def get_n_splits(self) -> int:
        return 1


class KFold:
    """``n_splits`` disjoint free sets that together cover the data (complete cross-validation)."""

    def __init__(self, n_splits: int = 20, seed: int | None = 0) -> None:
        if n_splits < 2:
            raise InputError(f"k-fold needs at least 2 splits, got {n_splits}")
        self.n_splits = int(n_splits)
        self.seed = seed

    def split(self, n: int) -> Iterator[IndexPair]:
        flags = self.flags(n)
        for k in range(self.n_splits):
            fold = flags.with_free_value(k)
            yield np.flatnonzero(fold.work), np.flatnonzero(fold.free)

    def flags(self, n: int) -> FreeFlags:
        if n < self.n_splits:
            raise InputError(f"cannot make {self.n_splits} folds from {n} observations")
        rng = np.random.default_rng(self.seed)
        values = np.empty(n, dtype=np.int64)
        values[rng.permutation(n)] = np.arange(n) % self.n_splits
        return FreeFlags(values, free_value=0)

    def get_n_splits(self) -> int:
        return self.n_splits


class HalfSets:
    """Two independent halves for gold-standard validation (flags 1 and 2, as ``rlnRandomSubset``).

    ``split`` yields ``(half_1, half_2)`` once: each half is refined on its own and the other is its
    independent check.
    """

    def __init__(self, seed: int | None = 0) -> None:
        self.seed = seed

    def split(self, n: int) -> Iterator[IndexPair]:
        flags = self.flags(n)
        yield np.flatnonzero(flags.values == 1), np.flatnonzero(flags.values == 2)

    def flags(self, n: int) -> FreeFlags:
        if n < 2:
            raise InputError(f"cannot split {n} observation(s) into two halves")
        rng = np.random.default_rng(self.seed)
        values = np.empty(n, dtype=np.int64)
        values[rng.permutation(n)] = 1 + np.arange(n) % 2
        return FreeFlags(values, free_value=2)

    def get_n_splits(self) -> int:
        return 1


# ----------------------------------------------------------------------------- overfit monitor
class OverfitMonitor:
    """Watches work and free scores; raises the overfitting alarm and remembers the best cycle.

    The best cycle is the one with the lowest free score (the lowest work score where there is no
    free score). The alarm fires once, when the free score has not improved on its best for
    ``patience`` cycles, stands more than ``max(min_delta, rel_delta * |best|)`` above it, the work
    score has meanwhile fallen below its value at the best cycle, and the free score is now worse than
    the work score: the model fits the data it saw better than the data it did not, and more so than
    before. Work and free scores must be the same measure on different data (as R_work and R_free).

    The last condition keeps the alarm quiet on a right-sized model still on its way to the minimum,
    whose free score can wobble by chance while it stays below the work score.

    Once a cycle has had a free score, cycles without one (a problem that scores the free set only
    now and then) are passed over: a work score never competes with free scores.
    """

    def __init__(self, patience: int = 3, min_delta: float = 0.0, rel_delta: float = 1e-3) -> None:
        if patience < 1:
            raise InputError(f"patience must be at least 1, got {patience}")
        if not (min_delta >= 0 and rel_delta >= 0):  # a negative margin fires on a flat free score
            raise InputError(f"min_delta and rel_delta must be >= 0, got {min_delta} and {rel_delta}")
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.rel_delta = float(rel_delta)
        self.reset()

    def reset(self) -> None:
        self.best_cycle: int | None = None
        self.best_score = np.inf
        self.best_work = np.inf
        self.wait = 0
        self.alarm: Alarm | None = None
        self.has_free = False  # whether the best score is a free score

    def _threshold(self) -> float:
        return max(self.min_delta, self.rel_delta * abs(self.best_score))

    def update(self, cycle: int, work: float, free: float | None) -> Alarm | None:
        """Take one cycle's scores; return the alarm at the cycle it fires, else None."""
        if free is None and self.has_free:
            return None
        score = work if free is None else free
        # the first free score replaces a best work score: the two are different measures
        first_free = free is not None and not self.has_free
        if self.best_cycle is None or score < self.best_score or first_free:
            self.best_cycle, self.best_score, self.best_work = cycle, score, work
            self.has_free = free is not None
            self.wait = 0
            return None
        self.wait += 1
        if (
            free is not None
            and self.alarm is None
            and self.wait >= self.patience
            and free > self.best_score + self._threshold()
            and work < self.best_work
            and free > work
        ):
            self.alarm = Alarm(
                "overfitting",
                cycle,
                f"free score rose from {self.best_score:.4g} (cycle {self.best_cycle}) to {free:.4g} "
                f"while the work score fell from {self.best_work:.4g} to {work:.4g}",
            )
            return self.alarm
        return None

    def state_dict(self) -> dict:
        return dict(best_cycle=self.best_cycle, best_score=self.best_score,
                    best_work=self.best_work, wait=self.wait, alarm=self.alarm, has_free=self.has_free)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
