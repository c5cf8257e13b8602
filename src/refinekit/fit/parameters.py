"""Named parameters with bounds, a ``vary`` flag and an optional Gaussian prior (lmfit's shape)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..core.errors import InputError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Prior:
    """A Gaussian prior ``N(mean, sigma**2)`` on one parameter: a restraint ``((p - mean)/sigma)**2``."""

    mean: float
    sigma: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.sigma) and self.sigma > 0):
            raise InputError(
                f"a prior needs a finite mean and a positive sigma, got {self.mean}:{self.sigma}")


@dataclass(frozen=True, slots=True)
class Parameter:
    """One named parameter. ``stderr`` is filled in by a fit (None where it cannot be estimated)."""

    name: str
    value: float
    min: float = -math.inf
    max: float = math.inf
    vary: bool = True
    prior: Prior | None = None
    stderr: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):  # match() takes "a\n"
            raise InputError(f"invalid parameter name {self.name!r}")
        if not math.isfinite(self.value):
            raise InputError(f"parameter {self.name}: starting value must be finite, got {self.value}")
        if math.isnan(self.min) or math.isnan(self.max) or self.min >= self.max:
            raise InputError(f"parameter {self.name}: impossible bounds min={self.min} max={self.max}")
        if not self.min <= self.value <= self.max:
            raise InputError(
                f"parameter {self.name}: value {self.value} is outside its bounds [{self.min}, {self.max}]"
            )


class Parameters(Mapping[str, Parameter]):
    """An ordered collection of :class:`Parameter`, addressed by name.

    >>> p = Parameters().add("b1", 500).add("b2", 1e-4, min=0)
    >>> [(q.name, q.value, q.vary) for q in p.values()]
    [('b1', 500.0, True), ('b2', 0.0001, True)]
    """

    def __init__(self, params: Mapping[str, Parameter] | None = None) -> None:
        self._params: dict[str, Parameter] = dict(params or {})

    def add(self, name: str, value: float, *, min: float | None = -math.inf,
            max: float | None = math.inf, vary: bool = True,
            prior: Prior | tuple[float, float] | None = None) -> Parameters:
        """Add (or replace) a parameter; returns self so that calls chain. ``min``/``max`` of None mean
        unbounded (lmfit's convention, and what :meth:`to_dict` writes for an infinite bound)."""
        try:
            if prior is not None and not isinstance(prior, Prior):  # any (mean, sigma) pair, e.g. a list
                mean, sigma = prior
                prior = Prior(float(mean), float(sigma))
            lo = -math.inf if min is None else float(min)
            hi = math.inf if max is None else float(max)
            value = float(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"parameter {name}: {exc}") from None
        self._params[name] = Parameter(name, value, lo, hi, bool(vary), prior)
        return self

    def __getitem__(self, name: str) -> Parameter:
        return self._params[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __repr__(self) -> str:
        return f"Parameters({list(self._params.values())!r})"

    # ------------------------------------------------------------------ vectors
    @property
    def varied(self) -> list[str]:
        return [n for n, p in self._params.items() if p.vary]

    def vector(self) -> np.ndarray:
        """Values of the varied parameters, in order."""
        return np.array([self._params[n].value for n in self.varied], dtype=float)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        names = self.varied
        return (np.array([self._params[n].min for n in names], dtype=float),
                np.array([self._params[n].max for n in names], dtype=float))

    def values_dict(self, x: np.ndarray | None = None) -> dict[str, float]:
        """All parameter values by name, the varied ones taken from ``x`` where given."""
        out = {n: p.value for n, p in self._params.items()}
        if x is not None:
            out.update(zip(self.varied, (float(v) for v in x), strict=True))
        return out

    def updated(self, x: np.ndarray, stderr: np.ndarray | None = None) -> Parameters:
        """A copy with the varied parameters set from ``x`` (and their standard errors)."""
        new = dict(self._params)
        for i, name in enumerate(self.varied):
            err = None if stderr is None or not math.isfinite(stderr[i]) else float(stderr[i])
            new[name] = replace(new[name], value=float(x[i]), stderr=err)
        return Parameters(new)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            n: {"value": p.value, "stderr": p.stderr, "vary": p.vary,
                "min": p.min if math.isfinite(p.min) else None,
                "max": p.max if math.isfinite(p.max) else None,
                **({"prior": {"mean": p.prior.mean, "sigma": p.prior.sigma}} if p.prior else {})}
            for n, p in self._params.items()
        }


def parse_param_spec(spec: str) -> Parameter:
    """Parse the CLI's ``NAME=VALUE[,min=LO][,max=HI][,fixed][,prior=MEAN:SIGMA]``.

    >>> p = parse_param_spec("b2=1e-4,min=0,prior=1e-4:1e-5")
    >>> p.name, p.value, p.min, p.max, p.vary, p.prior
    ('b2', 0.0001, 0.0, inf, True, Prior(mean=0.0001, sigma=1e-05))
    """
    head, *options = [s.strip() for s in spec.split(",")]
    if "=" not in head:
        raise InputError(f"--param {spec!r}: expected NAME=VALUE")
    name, value = (s.strip() for s in head.split("=", 1))
    kwargs: dict[str, Any] = {}
    try:
        kwargs["value"] = float(value)
        for option in options:
            key, _, arg = option.partition("=")
            key = key.strip().lower()
            if ("vary" if key == "fixed" else key) in kwargs:  # "min=0,min=2" kept only the last
                raise InputError(f"--param {spec!r}: option {key!r} is given twice")
            if key in ("min", "max"):
                kwargs[key] = float(arg)
            elif key == "fixed" and not arg:
                kwargs["vary"] = False
            elif key == "prior":
                mean, _, sigma = arg.partition(":")
                kwargs["prior"] = Prior(float(mean), float(sigma))
            else:
                raise InputError(f"--param {spec!r}: unknown option {option!r} "
                                 "(use min=, max=, fixed, prior=MEAN:SIGMA)")
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"--param {spec!r}: not a number ({exc})") from None
    return Parameter(name, **kwargs)
