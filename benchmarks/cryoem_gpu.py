"""Particles per second of the cryo-EM search kernels on a GPU (torch), beside numpy on the CPU.

For each box size: simulated particles of the bundled EMD-1832 map (resampled to the box), a global
search over the HEALPix order-2 grid (4800 orientations) x 29 shifts (1-pixel steps in a 3-pixel
disc) on frequencies up to a quarter of the box (r_max = box / 4 Fourier pixels), then one local
level (7 rotations x 9 shifts) on frequencies to r_max = box / 3, then the back-projection of every
particle up to Nyquist. The goal of issue 5: at least 5,000 particles/s for the global search at 64 px
on an H100. Each timing is the median of ``--repeats`` runs after a warm-up, with the device
synchronised.

    python benchmarks/cryoem_gpu.py                        # cuda, boxes 64 and 128, 8192 particles
    python benchmarks/cryoem_gpu.py --device cpu --backend numpy -n 512 --boxes 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from refinekit.cryoem import orientation_grid, simulate_particles
from refinekit.cryoem.backend import get_backend
from refinekit.cryoem.datasets import bundled_map
from refinekit.cryoem.fourier import FourierVolume
from refinekit.cryoem.reconstruct import backproject_particles
from refinekit.cryoem.search import (
    Likelihood,
    ParticleTransforms,
    Poses,
    global_search,
    local_search,
    shift_grid,
)
from refinekit.cryoem.simulate import resample_map


def synchronise(backend) -> None:
    if backend.name == "torch" and str(backend.device).startswith("cuda"):
        # the backend's device: a bare synchronize() waits for the current one, cuda:0, only
        backend.torch.cuda.synchronize(backend.device)


def timed(backend, function, repeats: int) -> float:
    function()  # warm-up (kernels, allocator, caches)
    synchronise(backend)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronise(backend)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(box: int, n: int, backend, repeats: int, max_elements: int) -> dict[str, float]:
    density = bundled_map("emd_1832")
    pixel = density.pixel_size * density.box / box
    volume = resample_map(density.data.astype(float), box)
    seed_sim = simulate_particles(volume, pixel, min(n, 512), 0.1, seed=1)
    reps = -(-n // seed_sim.images.shape[0])  # the same images repeated: the kernels do not care
    images = np.concatenate([seed_sim.images] * reps)[:n]
    ctf = seed_sim.ctf.subset(np.arange(n) % seed_sim.images.shape[0])
    data = ParticleTransforms(images, ctf, pixel, box / 2 - 2, backend)
    fv = FourierVolume(volume, 2, backend)
    grid = orientation_grid(2).matrices
    origins = shift_grid(3.0, 1.0)
    weights = np.ones(box // 2 + 1)
    index = np.arange(n)
    # as refinement searches by default: log-posterior with the prior on the origins
    likelihood = Likelihood(1.0, shift_sigma=1.5)

    def search() -> Poses:
        return global_search(
            fv, data, index, grid, origins, box / 4, weights, max_elements=max_elements, likelihood=likelihood
        )

    poses = search()
    t_global = timed(backend, search, repeats)
    t_local = timed(
        backend,
        lambda: local_search(
            fv,
            data,
            index,
            poses,
            [2.0],
            [0.5],
            box / 3,
            weights,
            batch=max(64, n // 8),
            max_moves=0,
            likelihood=likelihood,
        ),
        repeats,
    )
    t_back = timed(
        backend, lambda: backproject_particles(data, index, poses.rotations, poses.origins, weights), repeats
    )
    return {
        "box": box,
        "n": n,
        "orientations": grid.shape[0],
        "shifts": origins.shape[0],
        "global_per_s": n / t_global,
        "local_level_per_s": n / t_local,
        "backprojection_per_s": n / t_back,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backend", default=None, help="numpy or torch (default: torch for cuda)")
    parser.add_argument("--boxes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("-n", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-elements", type=int, default=1 << 26, help="scores per batch (GPU memory)")
    args = parser.parse_args()
    backend = get_backend(args.backend, args.device)
    name = backend.name
    if name == "torch":
        torch = backend.torch
        name += f" {torch.__version__} on " + (
            torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
        )
    print(f"backend: {name}")
    print("| box | particles | orientations x shifts | global search | one local level | back-projection |")
    print("|---|---|---|---|---|---|")
    for box in args.boxes:
        r = run(box, args.n, backend, args.repeats, args.max_elements)
        print(
            f"| {box} | {r['n']} | {r['orientations']} x {r['shifts']} | {r['global_per_s']:,.0f} /s "
            f"| {r['local_level_per_s']:,.0f} /s | {r['backprojection_per_s']:,.0f} /s |",
            flush=True,
        )


if __name__ == "__main__":
    main()
