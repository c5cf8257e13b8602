"""Fit a two-exponential decay with a free set, then look at the work/free history.

    python examples/fit_with_free_set.py [--plot decay.png]
"""

from __future__ import annotations

import argparse

import numpy as np

from refinekit.fit import Parameters, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", help="write the work/free convergence plot to this PNG")
    args = parser.parse_args()

    rng = np.random.default_rng(42)
    t = np.linspace(0, 6, 120)
    y = 4.0 * np.exp(-0.7 * t) + 1.5 * np.exp(-3.0 * t) + rng.normal(0, 0.02, t.size)

    params = (Parameters()
              .add("a1", 1.0, min=0).add("k1", 0.3, min=0)
              .add("a2", 1.0, min=0).add("k2", 5.0, min=0))
    result = fit("a1*exp(-k1*t) + a2*exp(-k2*t)", params, {"t": t}, y, free_fraction=0.1, seed=1)
    print(result.report(full=True))
    if args.plot:
        ax = result.plot(title="two-exponential decay")
        ax.figure.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
