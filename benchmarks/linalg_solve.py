"""refinekit.linalg.solve against numpy.linalg.solve, LAPACK dgesv (scipy) and LAPACK dsgesv, in one run.

Matrices: ``U diag(s) V^T`` with Haar-random orthogonal ``U``, ``V`` and singular values ``s`` of one of
two spectra (``--spectra``): ``geometric``, spread geometrically from 1 to ``1/kappa`` (LAPACK's randsvd
mode 3: a quarter to a half of them below float32's reach once kappa >= 1e8, the hard case for
GMRES-IR), or ``few-small``, all 1 but five spread geometrically from 1e-2 to ``1/kappa`` (a handful of
near-null directions, where GMRES-IR with float32 factors converges in a few iterations); ``b = A x``
with ``x ~ N(0, 1)``. For each case every solver runs
``--repeats`` times, interleaved (so that a slow spell of the machine hits all alike); the table gives
median times, ratios to dgesv, and the forward error ``||x - x*||_inf / ||x*||_inf`` against a solution
computed with long-double residuals. dsgesv is LAPACK's own mixed-precision solver (single LU, double
refinement), called through the function pointer scipy.linalg.cython_lapack exports.

Each thread setting runs in a subprocess whose environment fixes the BLAS threads before numpy is
imported (1, and all cores); the subprocess also unsets OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which
some machines set and which slow current numpy (the caller's environment is untouched). The BLAS
libraries in use are reported.

    python benchmarks/linalg_solve.py [--sizes 500 2000 4000] [--kappas 1e2 1e6 1e8] [--repeats 5]
                                      [--spectra geometric few-small] [--threads 1 all] [--markdown out.md]
                                      [--floor]

``--floor`` adds a column "BLAS floor / dgesv": the time of the LAPACK and BLAS calls that plain
refinement makes (refinekit's own preparation of A and float32 LU, the first solve, then per correction
a residual and a solve, one float32 product for ``|A||x|`` and the last residual, as many corrections as
refinekit made), in a bare Python loop without the engine or any test: what refinekit would cost if
nothing but its arithmetic showed. Where refinekit left plain refinement, the column is empty. A second
column, "sgetrf / dgesv", times the float32 LU alone (LAPACK sgetrf of a float32 copy made beforehand,
which scipy copies once more): the floor of any solver that factors in float32 first.

numpy and scipy each load their own OpenBLAS, whose threads spin for a while after each call: with more
than one thread, the harness waits 0.25 s after each numpy.linalg.solve (untimed) so that numpy's
spinning threads do not slow the scipy-based solver timed next. The load average of the machine is
printed beside each table (before and after its runs): on a shared machine, quote ratios from quiet
runs only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SOLVERS = ("numpy.linalg.solve", "dgesv", "dsgesv", "refinekit", "refinekit+bounds")


# ------------------------------------------------------------------------------------------ worker
def _dsgesv():
    """LAPACK's dsgesv through scipy's cython_lapack capsule (scipy has no Python wrapper for it)."""
    import ctypes

    from scipy.linalg import cython_lapack

    capsule = cython_lapack.__pyx_capi__["dsgesv"]
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    pointer = api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))
    ip, dp, fp = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_float)
    function = ctypes.CFUNCTYPE(None, ip, ip, dp, ip, ip, dp, ip, dp, ip, dp, fp, ip, ip)(pointer)

    def dsgesv(a, b):
        import numpy as np

        n, k = b.shape
        a_f = np.array(a, order="F")  # copied, as dgesv's caller must
        b_f = np.array(b, order="F")
        x = np.empty((n, k), order="F")
        work = np.empty((n, k), order="F")
        swork = np.empty(n * (n + k), dtype=np.float32)
        ipiv = np.empty(n, dtype=np.int32)
        iters, info = ctypes.c_int(0), ctypes.c_int(0)
        cn, ck = ctypes.c_int(n), ctypes.c_int(k)

        def ptr(array, kind):
            return array.ctypes.data_as(kind)

        function(ctypes.byref(cn), ctypes.byref(ck), ptr(a_f, dp), ctypes.byref(cn), ptr(ipiv, ip),
                 ptr(b_f, dp), ctypes.byref(cn), ptr(x, dp), ctypes.byref(cn), ptr(work, dp), ptr(swork, fp),
                 ctypes.byref(iters), ctypes.byref(info))
        return x, iters.value, info.value

    return dsgesv


def _blas_info() -> str:
    import numpy as np
    import scipy

    def describe(config) -> str:
        blas = config.get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()

    try:
        numpy_blas = describe(np.show_config(mode="dicts"))
    except Exception:  # older numpy: no dicts mode
        numpy_blas = "?"
    try:
        scipy_blas = describe(scipy.show_config(mode="dicts"))
    except Exception:
        scipy_blas = "?"
    return f"numpy: {numpy_blas}; scipy: {scipy_blas}"


def singular_values(n: int, kappa: float, spectrum: str):
    """The singular values of a test matrix of condition ``kappa`` (see the module)."""
    import numpy as np

    if spectrum == "geometric":
        return np.logspace(0, -np.log10(kappa), n)
    if spectrum == "few-small":
        values = np.ones(n)
        few = min(5, n)
        values[n - few:] = np.logspace(-2, -np.log10(kappa), few) if kappa > 100 else 1.0 / kappa
        return values
    raise ValueError(f"unknown spectrum {spectrum!r}")


def _matrices(n: int, kappas: list[float], spectra: list[str], seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    left, _ = np.linalg.qr(rng.standard_normal((n, n)))
    right, _ = np.linalg.qr(rng.standard_normal((n, n)))
    for spectrum in spectra:
        for kappa in kappas:
            yield spectrum, kappa, (left * singular_values(n, kappa, spectrum)) @ right.T


def _reference(a, b):
    import numpy as np
    import scipy.linalg

    factors = scipy.linalg.lu_factor(a)
    x = scipy.linalg.lu_solve(factors, b).astype(np.longdouble)
    a_long, b_long = a.astype(np.longdouble), b.astype(np.longdouble)
    for _ in range(8):
        x += scipy.linalg.lu_solve(factors, (b_long - a_long @ x).astype(np.float64))
    return x.astype(np.float64)


def worker(sizes: list[int], kappas: list[float], spectra: list[str], repeats: int, seed: int,
           floor: bool = False) -> list[dict]:
    import numpy as np
    import scipy.linalg.lapack as lapack

    from refinekit.linalg import solve

    dsgesv = _dsgesv()
    threads = int(os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    rows = []
    for n in sizes:
        for spectrum, kappa, a in _matrices(n, kappas, spectra, seed):
            b = (a @ np.random.default_rng(seed + 1).standard_normal(n))[:, None]
            reference = _reference(a, b[:, 0])
            runs = {
                "numpy.linalg.solve": lambda a=a, b=b: (np.linalg.solve(a, b), {}),
                "dgesv": lambda a=a, b=b: (lapack.dgesv(a, b)[2], {}),
                "dsgesv": lambda a=a, b=b: _dsgesv_run(dsgesv, a, b),
                "refinekit": lambda a=a, b=b: _refinekit_run(solve, a, b, False),
                "refinekit+bounds": lambda a=a, b=b: _refinekit_run(solve, a, b, True),
            }
            if floor:
                _, first = _refinekit_run(solve, a, b, False)
                if first["path"] == "ir":
                    runs["BLAS floor"] = lambda a=a, b=b, c=first["iterations"]: _floor_run(a, b, c)
                # the float32 LU alone, of a float32 copy made beforehand (A^T in Fortran order, as
                # refinekit factors it): the part of every float32-first solver that no code can trim
                low = np.asfortranarray(a.T, dtype=np.float32)
                runs["sgetrf"] = lambda low=low: (None, lapack.sgetrf(low)[2])
            for run in runs.values():  # warm up (allocations, first-call costs)
                run()
            times: dict[str, list[float]] = {name: [] for name in runs}
            details: dict[str, dict] = {}
            errors: dict[str, float] = {}
            for _ in range(repeats):
                for name, run in runs.items():
                    tick = time.perf_counter()
                    x, info = run()
                    times[name].append(time.perf_counter() - tick)
                    if name == "numpy.linalg.solve" and threads > 1:
                        # numpy and scipy each load their own OpenBLAS; the threads of one spin for a
                        # while after each call and would slow the other's next call: let them sleep
                        time.sleep(0.25)
                    if x is not None:
                        errors[name] = float(np.max(np.abs(x[:, 0] - reference)) / np.max(np.abs(reference)))
                    details[name] = info
            rows.append({"n": n, "kappa": kappa, "spectrum": spectrum,
                         "times": {k: float(np.median(v)) for k, v in times.items()},
                         "errors": errors, "details": details})
            print(f"  n={n} kappa={kappa:.0e} {spectrum} done", file=sys.stderr, flush=True)
    return rows


def _dsgesv_run(dsgesv, a, b):
    import numpy as np

    x, iterations, info = dsgesv(a, b)
    return x, {"iter": iterations, "info": info, "finite": bool(np.all(np.isfinite(x)))}


def _floor_run(a, b, corrections: int):
    """The LAPACK and BLAS calls of refinekit's plain refinement with ``corrections`` corrections, in a bare
    loop (see the module)."""
    from refinekit.linalg.systems import DenseSystem

    system = DenseSystem(a, b, "single")
    factors = system.factor_low()
    x = system.solve_with(factors, b)
    for cycle in range(corrections):
        r = system.residual(x)
        if cycle == 1:
            system.magnitudes(x)
        x = x + system.solve_with(factors, r)
    system.residual(x)
    return x, {}


def _refinekit_run(solve, a, b, bounds: bool):
    result = solve(a, b, error_bounds=bounds)
    info = {"path": result.path, "iterations": result.iterations, "success": result.success,
            "inner": sum(attempt.inner_iterations for attempt in result.attempts)}
    if bounds:
        info["bound"] = result.forward_error_bound
    return result.x, info


# ------------------------------------------------------------------------------------------ driver
def run_setting(threads: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    count = str(os.cpu_count() or 1) if threads == "all" else threads
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = count
    command = [sys.executable, __file__, "--worker", "--sizes", *map(str, args.sizes), "--kappas",
               *map(str, args.kappas), "--spectra", *args.spectra, "--repeats", str(args.repeats),
               "--seed", str(args.seed), *(["--floor"] if args.floor else [])]
    print(f"threads={count}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    load_before = os.getloadavg()[0]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    sys.stderr.write(out.stderr)
    data = json.loads(out.stdout)
    data["threads"] = count
    data["floor"] = args.floor
    data["load"] = (load_before, os.getloadavg()[0])
    return data


def table(setting: dict) -> str:
    load = setting.get("load", (float("nan"), float("nan")))
    floor = setting.get("floor", False)
    lines = [f"#### BLAS threads: {setting['threads']} ({setting['blas']}; load average {load[0]:.1f} "
             f"before, {load[1]:.1f} after)", "",
             "| n | spectrum | kappa | dgesv s | numpy s | dsgesv s (iter) | refinekit s (path, corrections"
             "/GMRES its) | refinekit+bounds s | refinekit / dgesv | +bounds / dgesv | dsgesv / dgesv | "
             "fwd err dgesv | fwd err numpy | fwd err dsgesv | fwd err refinekit | bound |"
             + (" BLAS floor / dgesv | sgetrf / dgesv |" if floor else ""),
             "|---" * 16 + "|" + ("---|---|" if floor else "")]
    for row in setting["rows"]:
        t, e, d = row["times"], row["errors"], row["details"]
        inner = d["refinekit"].get("inner", 0)
        floor_cell = ""
        if floor:
            floor_cell = f" {t['BLAS floor'] / t['dgesv']:.2f} |" if "BLAS floor" in t else " |"
            floor_cell += f" {t['sgetrf'] / t['dgesv']:.2f} |"
        lines.append(
            f"| {row['n']} | {row.get('spectrum', 'geometric')} | {row['kappa']:.0e} | {t['dgesv']:.4f} | "
            f"{t['numpy.linalg.solve']:.4f} | "
            f"{t['dsgesv']:.4f} ({d['dsgesv']['iter']}{'' if d['dsgesv']['finite'] else ', NaN'}) | "
            f"{t['refinekit']:.4f} ({d['refinekit']['path']}, {d['refinekit']['iterations']}"
            f"{f'/{inner}' if inner else ''}) | "
            f"{t['refinekit+bounds']:.4f} | **{t['refinekit'] / t['dgesv']:.2f}** | "
            f"{t['refinekit+bounds'] / t['dgesv']:.2f} | {t['dsgesv'] / t['dgesv']:.2f} | "
            f"{e['dgesv']:.1e} | {e['numpy.linalg.solve']:.1e} | {e['dsgesv']:.1e} | {e['refinekit']:.1e} | "
            f"{d['refinekit+bounds']['bound']:.1e} |" + floor_cell)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 4000])
    parser.add_argument("--kappas", type=float, nargs="+", default=[1e2, 1e6, 1e8])
    parser.add_argument("--spectra", nargs="+", default=["geometric"], choices=["geometric", "few-small"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", nargs="+", default=["1", "all"])
    parser.add_argument("--markdown", default=None, help="also write the tables to this file")
    parser.add_argument("--floor", action="store_true",
                        help="also time refinekit's BLAS calls alone, without the engine (see the module)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        rows = worker(args.sizes, args.kappas, args.spectra, args.repeats, args.seed, args.floor)
        json.dump({"blas": _blas_info(), "rows": rows}, sys.stdout)
        return
    command = "python benchmarks/linalg_solve.py " + " ".join(sys.argv[1:])
    tables = [table(run_setting(threads, args)) for threads in args.threads]
    text = f"Command: `{command}`\n\n" + "\n\n".join(tables) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
