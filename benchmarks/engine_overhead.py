"""Engine overhead on a cheap problem: the same check/correct/apply calls, in a bare loop and in the engine.

The problem is a damped Richardson iteration x <- x + w (b - A x) on a dense system sized so that one
cycle costs about ``--target-ms`` milliseconds; its check scores the residual on a work and a free
subset of the rows. The bare loop calls exactly the problem's methods; the engine adds what it does
every cycle (step size, finiteness checks, records, the free-set monitor, stop rules). Reported: the
median over ``--repeats`` interleaved runs of each, their ratio and the overhead per cycle.

    python benchmarks/engine_overhead.py [--target-ms 1.0] [--cycles 2000] [--repeats 7]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import platform
import statistics
import time

import numpy as np

from refinekit.core import HoldOut, RefinementProblem, Refiner, Scores


class Richardson(RefinementProblem):
    def __init__(self, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.A = np.eye(n) + rng.normal(0, 0.3 / np.sqrt(n), (n, n))
        self.b = rng.normal(size=n)
        work, free = next(HoldOut(0.05, seed=seed).split(n))
        self.work, self.free = work, free
        self.omega = 0.5

    def initial(self) -> np.ndarray:
        return np.zeros_like(self.b)

    def check(self, x: np.ndarray) -> Scores:
        r = self.b - self.A @ x
        self._r = r
        return Scores(work=float(np.linalg.norm(r[self.work])), free=float(np.linalg.norm(r[self.free])))

    def correct(self, x: np.ndarray, scores: Scores) -> np.ndarray:
        return self.omega * self._r


def bare_loop(problem: Richardson, cycles: int) -> float:
    start = time.perf_counter()
    x = problem.initial()
    for _ in range(cycles):
        scores = problem.check(x)
        x = problem.apply(x, problem.correct(x, scores))
    problem.check(x)
    return time.perf_counter() - start


def engine(problem: Richardson, cycles: int) -> float:
    start = time.perf_counter()
    result = Refiner(problem, max_cycles=cycles, xtol=0.0, stop_on_overfit=False).run()
    elapsed = time.perf_counter() - start
    assert result.n_cycles == cycles, result.message
    return elapsed


def calibrate(target_ms: float) -> int:
    n = 64
    while True:
        problem = Richardson(n)
        t = bare_loop(problem, 50) / 51
        if t * 1e3 >= target_ms or n > 8000:
            return n
        n = int(n * max(1.1, min(2.0, (target_ms / (t * 1e3)) ** 0.5)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-ms", type=float, default=1.0)
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    n = calibrate(args.target_ms)
    problem = Richardson(n)
    bare_loop(problem, 20)
    engine(problem, 20)  # warm up
    bare, eng = [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(problem, args.cycles))
        eng.append(engine(problem, args.cycles))
    b, e = statistics.median(bare), statistics.median(eng)
    print(f"machine: {platform.processor() or platform.machine()}, numpy {np.__version__}, 1 BLAS thread")
    print(f"problem: Richardson iteration, n={n}, {args.cycles} cycles, {args.repeats} interleaved repeats")
    print(f"bare loop : {b / args.cycles * 1e3:.4f} ms/cycle (median)")
    print(f"engine    : {e / args.cycles * 1e3:.4f} ms/cycle (median)")
    print(f"overhead  : {(e / b - 1) * 100:+.2f} %  ({(e - b) / args.cycles * 1e6:.1f} us/cycle)")


if __name__ == "__main__":
    main()
