"""GPU check and benchmark of refinekit.linalg (device="cuda"), in one short run for a borrowed GPU.

1. The torch tests of tests/linalg/test_linalg_torch.py on the GPU (REFINEKIT_TORCH_DEVICE=cuda).
2. Correctness on the GPU: the real SuiteSparse matrices (../shared/data/linalg, if present; else the
   bundled 1138_bus) in every precision: success, error bound >= true error, backward error.
3. Speed: ``solve(A, b, device="cuda", precision=p)`` against ``torch.linalg.solve`` in float64 (and in
   float32, for scale), on ``U diag(s) V^T`` matrices of condition ``kappa``, n = 4096 ... 16384, medians
   of ``--repeats`` runs after a warm-up, with ``torch.cuda.synchronize()`` around each. The goal
   (issue 3): n >= 16384, >= 5x faster than the float64 solve at a float64 backward error.

Without CUDA it says so and exits 0, having done nothing.

    python benchmarks/linalg_gpu.py [--sizes 4096 8192 16384] [--kappas 1e2 1e4]
                                    [--precisions single tf32 half bfloat16] [--repeats 3] [--block 256]
                                    [--skip-tests] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from linalg_solve import _reference  # this script's folder is on sys.path when it is run as a script

REPO = Path(__file__).resolve().parents[1]


def run_tests() -> int:
    env = dict(os.environ, REFINEKIT_TORCH_DEVICE="cuda")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               str(REPO / "tests/linalg/test_linalg_torch.py")]
    print("$ REFINEKIT_TORCH_DEVICE=cuda " + " ".join(command[1:]), flush=True)
    return subprocess.run(command, env=env, cwd=REPO).returncode


def check_real_matrices(precisions: list[str], device: str) -> list[dict]:
    import numpy as np
    import scipy.io

    from refinekit.linalg import solve

    folder = REPO.parent / "shared" / "data" / "linalg"
    paths = sorted(folder.glob("*.mtx")) or [REPO / "src/refinekit/data/linalg/1138_bus.mtx"]
    rows = []
    for path in paths:
        a = scipy.io.mmread(path).toarray()
        b = a @ np.random.default_rng(12345).standard_normal(a.shape[0])
        reference = _reference(a, b)  # long-double residuals: the true solution to well beyond double
        for precision in precisions:
            result = solve(a, b, device=device, precision=precision)
            error = float(np.max(np.abs(result.x - reference)) / np.max(np.abs(reference)))
            rows.append({"matrix": path.stem, "precision": precision, "path": result.path,
                         "success": result.success, "error": error, "bound": result.forward_error_bound,
                         "bound_holds": error <= result.forward_error_bound,
                         "backward_error": result.backward_error})
            print(f"  {path.stem:14s} {precision:8s} {result.path:8s} success={result.success!s:5s} "
                  f"error {error:.1e} bound {result.forward_error_bound:.1e} "
                  f"{'ok' if error <= result.forward_error_bound else 'BOUND VIOLATED'}", flush=True)
    return rows


def benchmark(sizes: list[int], kappas: list[float], precisions: list[str], repeats: int,
              device_name: str) -> list[dict]:
    import torch

    from refinekit.linalg import solve

    device = torch.device("cpu" if device_name == "torch-cpu" else device_name)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []

    def timed(function):
        synchronize()
        tick = time.perf_counter()
        out = function()
        synchronize()
        return time.perf_counter() - tick, out

    for n in sizes:
        generator = torch.Generator(device=device).manual_seed(n)
        left, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, device=device, generator=generator))
        right, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, device=device, generator=generator))
        x_true = torch.randn(n, 1, dtype=torch.float64, device=device, generator=generator)
        for kappa in kappas:
            exponent = -torch.log10(torch.tensor(kappa)).item()
            s = torch.logspace(0, exponent, n, dtype=torch.float64, device=device)
            a = (left * s) @ right.T
            b = a @ x_true
            norm_a = a.abs().sum(dim=1).max()

            def quality(x, a=a, b=b, norm_a=norm_a, x_true=x_true):
                x = x.to(torch.float64)
                backward = float((b - a @ x).abs().max() / (norm_a * x.abs().max() + b.abs().max()))
                forward = float((x - x_true).abs().max() / x_true.abs().max())
                return backward, forward

            candidates = {
                "torch fp64": lambda a=a, b=b: torch.linalg.solve(a, b),
                "torch fp32": lambda a=a, b=b: torch.linalg.solve(a.float(), b.float()),
            }
            for precision in precisions:
                candidates[f"refinekit {precision}"] = (
                    lambda a=a, b=b, p=precision: solve(a, b, precision=p, error_bounds=False,
                                                        device=device_name))
            results = {}
            for name, function in candidates.items():
                try:
                    function()  # warm-up: kernels, allocator
                    times, out = [], None
                    for _ in range(repeats):
                        seconds, out = timed(function)
                        times.append(seconds)
                except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError only from torch 2.4
                    print(f"  n={n} {name}: out of memory", flush=True)
                    torch.cuda.empty_cache()
                    continue
                x = out.x if hasattr(out, "x") else out
                backward, forward = quality(x)
                entry = {"seconds": sorted(times)[len(times) // 2], "backward_error": backward,
                         "forward_error": forward}
                if hasattr(out, "path"):
                    entry.update(path=out.path, iterations=out.iterations, success=out.success)
                results[name] = entry
            base = results.get("torch fp64", {}).get("seconds")
            for name, entry in results.items():
                speedup = base / entry["seconds"] if base else float("nan")
                entry["speedup_vs_fp64"] = speedup
                print(f"  n={n} kappa={kappa:.0e} {name:20s} {entry['seconds']:.4f} s  x{speedup:5.2f}  "
                      f"backward {entry['backward_error']:.1e} forward {entry['forward_error']:.1e} "
                      f"{entry.get('path', '')} {entry.get('iterations', '')}", flush=True)
            rows.append({"n": n, "kappa": kappa, "results": results})
            del a, b, candidates, quality  # the closures hold A too: free it before the next one
            torch.cuda.empty_cache()
        del left, right
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--kappas", type=float, nargs="+", default=[1e2, 1e4])
    parser.add_argument("--precisions", nargs="+", default=["single", "tf32", "half", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block", type=int, default=None, help="column block of the blocked 16-bit/TF32 LU")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--json", default=None, help="write all figures to this file")
    parser.add_argument("--dry-run-cpu", action="store_true",
                        help="run everything on torch's CPU backend (to check this script without a GPU)")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("torch is not installed: nothing to do")
        return
    device = "torch-cpu" if args.dry_run_cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to do (run this on a machine with a GPU)")
        return
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)"
    print(f"device: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    if args.block is not None:
        from refinekit.linalg import torch_backend

        torch_backend.DEFAULT_BLOCK = args.block
    record: dict = {"device": name, "torch": torch.__version__,
                    "command": "python benchmarks/linalg_gpu.py " + " ".join(sys.argv[1:])}
    if not args.skip_tests and device == "cuda":
        record["tests_returncode"] = run_tests()
    print("correctness on the real matrices:", flush=True)
    record["real_matrices"] = check_real_matrices(args.precisions, device)
    print("speed:", flush=True)
    record["benchmark"] = benchmark(args.sizes, args.kappas, args.precisions, args.repeats, device)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    violated = [r for r in record["real_matrices"]
                if not r["bound_holds"] or (r["success"] and r["bound"] >= 1)]
    sys.exit(1 if violated or record.get("tests_returncode", 0) else 0)


if __name__ == "__main__":
    main()
