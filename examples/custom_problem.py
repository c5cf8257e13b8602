"""Plug your own problem into the engine: a Jacobi iteration for a diagonally dominant system, with a
free set of equations held out, a callback that prints progress, and a checkpoint every cycle: the run
is interrupted at cycle 10 and resumed from its checkpoint, ending exactly as an uninterrupted run.

    python examples/custom_problem.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from refinekit.core import HoldOut, RefinementProblem, Scores, refine


class Jacobi(RefinementProblem):
    """x <- x + D^-1 (b - A x); the work score is the residual on the working equations."""

    def __init__(self, A: np.ndarray, b: np.ndarray, free_fraction: float = 0.1) -> None:
        self.A, self.b = A, b
        self.work, self.free = next(HoldOut(free_fraction, seed=0).split(b.size))

    def initial(self) -> np.ndarray:
        return np.zeros_like(self.b)

    def check(self, x: np.ndarray) -> Scores:
        r = self.b - self.A @ x
        return Scores(work=float(np.linalg.norm(r[self.work])), free=float(np.linalg.norm(r[self.free])))

    def correct(self, x: np.ndarray, scores: Scores) -> np.ndarray:
        return (self.b - self.A @ x) / np.diag(self.A)


def main() -> None:
    rng = np.random.default_rng(0)
    n = 200
    A = rng.normal(size=(n, n)) + np.diag(np.full(n, 3.0 * np.sqrt(n)))
    b = rng.normal(size=n)

    def show(record):
        if record.cycle % 5 == 0:
            print(f"cycle {record.cycle:3d}  work {record.work:.3e}  free {record.free:.3e}")

    options = {"xtol": 1e-12, "max_cycles": 200}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "jacobi.ckpt"
        # a callback returning True stops the run (status "callback"); the checkpoint has cycle 10
        stopped = refine(Jacobi(A, b), callbacks=[show, lambda record: record.cycle >= 10],
                         checkpoint=checkpoint, **options)
        print(f"interrupted: {stopped.status.label} at cycle {stopped.n_cycles}; resuming")
        result = refine(Jacobi(A, b), callbacks=[show], resume_from=checkpoint, **options)
    print(result.report())
    assert result.success and np.allclose(A @ result.x, b, atol=1e-9)
    uninterrupted = refine(Jacobi(A, b), **options)
    assert uninterrupted.n_cycles == result.n_cycles and np.array_equal(uninterrupted.x, result.x)


if __name__ == "__main__":
    main()
