"""``refinekit.cryoem.refine_particles``: gold-standard refinement on the engine, and its outputs."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core import InputError, RefinementResult, Refiner, atomic_outputs, output_folder
from ..core.atomic import atomic_write_bytes, atomic_write_text
from ..core.result import jsonable
from .backend import Backend, get_backend
from .fsc import FSCReport, fourier_shell_correlation, gold_standard_fsc
from .io import ParticleStack, particles_star_blocks, write_map, write_star
from .problem import IterationSummary, ProjectionMatching, RefinementState, RefineOptions, check_box
from .reconstruct import backproject_particles, reconstruct_halves, reconstruct_single
from .search import ParticleTransforms

OUTPUT_FILES = (
    "map.mrc",
    "half_map_1.mrc",
    "half_map_2.mrc",
    "mask.mrc",
    "particles.star",
    "fsc.csv",
    "fsc.png",
    "iterations.json",
)


@dataclass
class CryoEMResult(RefinementResult):
    """A :class:`~refinekit.core.RefinementResult` whose model ``x`` is the kept
    :class:`~refinekit.cryoem.problem.RefinementState` (poses, half maps, FSC), plus the particle
    halves, the pixel size and ``states``: one :class:`~refinekit.cryoem.problem.IterationSummary` per
    iteration (its FSC, resolution and figures; the maps and poses of the kept state only are in ``x``)."""

    subsets: np.ndarray | None = None
    subset_source: str = ""
    pixel_size: float = 1.0
    states: list[IterationSummary] = field(default_factory=list)

    @property
    def state(self) -> RefinementState:
        return self.x

    @property
    def resolution(self) -> float:
        return float(self.x.resolution)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        history = out.pop("history")
        out["subset_source"] = self.subset_source
        out["pixel_size_a"] = self.pixel_size
        if self.x.fsc is not None:
            out["resolution_a"] = self.x.fsc.resolution("unmasked")
            out["resolution_masked_a"] = self.x.fsc.resolution("masked")
            out["resolution_corrected_a"] = self.x.fsc.resolution("corrected")
        out["history"] = history
        return out


def refine_particles(
    stack: ParticleStack,
    reference: np.ndarray,
    options: RefineOptions | None = None,
    *,
    device: str = "cpu",
    backend: str | Backend | None = None,
    callbacks: Iterable[Any] = (),
    log: Callable[[str], None] | None = None,
) -> CryoEMResult:
    """Refine the poses of ``stack`` and its 3D map from ``reference`` (same box and pixel size), with
    the two halves refined independently and the resolution from their FSC.

    ``options`` are :class:`RefineOptions`; ``device`` "cpu" (numpy) or "cuda" (torch); ``backend``
    "numpy" or "torch" (torch on the CPU is how the GPU code is tested). ``log`` receives one line per
    iteration. The result's ``x`` is the kept state (by resolution), with ``poses``, ``half_maps``,
    ``full_map``, ``fsc``.

    >>> import numpy as np
    >>> from refinekit.cryoem import simulate_particles, starting_reference, stack_from_simulation
    >>> truth = np.zeros((24, 24, 24)); truth[8:16, 9:15, 10:13] = 1; truth[10:13, 5:9, 9:16] = 1
    >>> sim = simulate_particles(truth, 8.0, 200, 2.0, seed=0)
    >>> start, _ = starting_reference(sim.volume, 8.0, resolution=48.0)
    >>> result = refine_particles(stack_from_simulation(sim), start, RefineOptions(max_iterations=4))
    >>> result.usable, result.resolution < 40
    (True, True)
    """
    be = backend if backend is not None and not isinstance(backend, str) else get_backend(backend, device)
    options = options or RefineOptions()
    problem = ProjectionMatching(stack, reference, options, be, log=log)
    refiner = Refiner(
        problem, max_cycles=options.max_iterations, xtol=0.0, restore_best=True, callbacks=list(callbacks)
    )
    result = refiner.run()
    fields = {f: getattr(result, f) for f in RefinementResult.__dataclass_fields__}
    return CryoEMResult(
        **fields,
        subsets=problem.subsets,
        subset_source=problem.subset_source,
        pixel_size=problem.pixel_size,
        states=list(problem.history),
    )


def reconstruct_particles(
    stack: ParticleStack,
    rotations: np.ndarray | None = None,
    origins: np.ndarray | None = None,
    *,
    pad: int = 2,
    device: str = "cpu",
    backend: str | None = None,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None, FSCReport | None]:
    """A map from particles at given poses (default: the STAR's angles and origins).

    Where the particles carry both halves (``rlnRandomSubset``), the half maps and their FSC are made
    too and the full map is Wiener-regularised from that FSC; otherwise only a lightly regularised map.
    """
    origins_source = stack.source if origins is None else None  # the file to name for a bad origin
    rotations = stack.rotations if rotations is None else rotations
    if rotations is None:
        raise InputError("the particles have no angles (rlnAngleRot/Tilt/Psi) to reconstruct from")
    origins = (
        np.zeros((len(stack), 2))
        if origins is None and stack.origins is None
        else (stack.origins if origins is None else origins)
    )
    rotations, origins = _checked_poses(stack, rotations, origins, origins_source)
    check_box(stack.box, "reconstruction", stack.source)
    if pad not in (1, 2, 3, 4):
        raise InputError(f"padding must be 1..4, got {pad}")
    be = get_backend(backend, device)
    data = ParticleTransforms(stack.images, stack.ctf, stack.pixel_size, stack.box / 2 - 1, be)
    weights = np.ones(stack.box // 2 + 1)
    subsets = stack.subsets
    if subsets is not None and set(np.unique(subsets).tolist()) == {1, 2}:
        halves = [np.flatnonzero(subsets == h) for h in (1, 2)]
        bps = [backproject_particles(data, idx, rotations[idx], origins[idx], weights, pad) for idx in halves]
        rec = reconstruct_halves(bps[0], bps[1], stack.pixel_size)
        return rec.full_map, rec.half_maps, rec.fsc
    everything = np.arange(len(stack))
    bp = backproject_particles(data, everything, rotations, origins, weights, pad)
    return reconstruct_single(bp), None, None


def _checked_poses(
    stack: ParticleStack, rotations: np.ndarray, origins: np.ndarray, source: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    """Poses that fit the stack: one rotation matrix (det +1: a reflection reconstructs the mirror image
    with a fine FSC) and one finite origin within half the box per particle (beyond it the centre is off
    the image, and the Fourier shift wraps it round: a map without a word of warning)."""
    n = len(stack)
    rotations = np.asarray(rotations, dtype=float)
    origins = np.asarray(origins, dtype=float)
    if rotations.shape != (n, 3, 3):
        raise InputError(f"{n} particles need rotations of shape ({n}, 3, 3), got {rotations.shape}")
    if origins.shape != (n, 2):
        raise InputError(f"{n} particles need origins of shape ({n}, 2), got {origins.shape}")
    if not np.all(np.isfinite(rotations)) or not np.all(np.isfinite(origins)):
        raise InputError("the rotations or origins contain NaN or Inf values")
    orthogonal = np.abs(rotations @ np.swapaxes(rotations, -1, -2) - np.eye(3)).max(axis=(1, 2)) < 1e-3
    bad = ~orthogonal | (np.linalg.det(rotations) < 0)
    if bad.any():
        raise InputError(f"the matrix of particle {int(np.argmax(bad)) + 1} is not a rotation")
    far = np.abs(origins).max(axis=1) > stack.box / 2
    if far.any():
        i = int(np.argmax(far))
        raise InputError(
            f"particle {i + 1} has the origin ({origins[i, 0]:.4g}, {origins[i, 1]:.4g}) pixels: more than "
            f"half the {stack.box}-pixel box",
            path=source,
        )
    return rotations, origins


def stack_from_simulation(sim: Any, subsets: np.ndarray | None = None) -> ParticleStack:
    """A :class:`ParticleStack` (no poses) holding simulated particles, for the API without files;
    ``subsets``: the half (1 or 2) of each particle, where already split."""
    return ParticleStack(images=sim.images, pixel_size=sim.pixel_size, ctf=sim.ctf, subsets=subsets)


# ------------------------------------------------------------------------------------ outputs
def write_refinement(
    outdir: str | os.PathLike[str],
    result: CryoEMResult,
    stack: ParticleStack,
    inputs: Iterable[str | os.PathLike[str]] = (),
    *,
    origin: Sequence[float] | None = None,
) -> dict[str, Path]:
    """Write the outputs of a refinement into ``outdir`` (created if needed; all of them or, on a
    failure, none, and none over an input): ``map.mrc`` (both halves, Wiener-filtered with the FSC),
    ``half_map_1.mrc``, ``half_map_2.mrc`` (unfiltered: the FSC is measured on them), ``mask.mrc``,
    ``particles.star`` (RELION 3.1: angles, ``rlnOriginX/YAngst``, ``rlnRandomSubset``),
    ``fsc.csv`` and ``fsc.png`` (unmasked, masked, phase-randomised, corrected),
    ``iterations.json`` (the result with one record per iteration). ``origin``: the maps' first voxel
    position (x, y, z, Angstrom), e.g. the reference's (``DensityMap.origin``), so that they overlay it
    in a viewer."""
    out = Path(outdir)
    paths = {name: out / name for name in OUTPUT_FILES}
    input_paths = [Path(p).resolve() for p in inputs]
    for target in paths.values():
        if target.exists() and target.resolve() in input_paths:
            raise InputError(f"output {target} would overwrite an input")
    state = result.x
    # the STAR first: it is the one output that can still refuse (images it cannot name from out)
    blocks = None
    if state.poses is not None:
        blocks = particles_star_blocks(
            stack, out, rotations=state.poses.rotations, origins=state.poses.origins, subsets=result.subsets
        )
    fsc = state.fsc
    names = [name for name in OUTPUT_FILES if name != "particles.star" or blocks is not None]
    if fsc is None:
        names = [name for name in names if name not in ("fsc.csv", "fsc.png")]
    # all or none: a failure on the last file (a full disk) must not leave new maps beside an older
    # run's particles.star and iterations.json, nor a folder made for them
    with output_folder(out), atomic_outputs([paths[name] for name in names]) as staged:
        _write_refinement_files(dict(zip(names, staged, strict=True)), result, blocks, origin)
    return {name: paths[name] for name in names}


def _write_refinement_files(
    paths: dict[str, Path],
    result: CryoEMResult,
    blocks: dict[str, dict[str, Any]] | None,
    origin: Sequence[float] | None = None,
) -> None:
    state = result.x
    pixel = result.pixel_size
    write_map(paths["map.mrc"], state.full_map, pixel, origin)
    halves = state.raw_half_maps if state.raw_half_maps is not None else state.half_maps
    write_map(paths["half_map_1.mrc"], halves[0], pixel, origin)
    write_map(paths["half_map_2.mrc"], halves[1], pixel, origin)
    mask = state.mask if state.mask is not None else np.ones_like(state.full_map)
    write_map(paths["mask.mrc"], mask, pixel, origin)
    if blocks is not None:
        write_star(paths["particles.star"], blocks, "refinekit cryoem refine: refined poses")
    fsc = state.fsc
    if fsc is not None:
        lines = ["shell,resolution_a,fsc_unmasked,fsc_masked,fsc_randomised,fsc_corrected"]
        for row in fsc.table():
            values = [
                row["shell"],
                row["resolution_a"],
                row["fsc_unmasked"],
                row["fsc_masked"],
                row["fsc_randomised"],
                row["fsc_corrected"],
            ]
            lines.append(
                ",".join("" if v is None else (str(v) if isinstance(v, int) else f"{v:.6g}") for v in values)
            )
        atomic_write_text(paths["fsc.csv"], "\n".join(lines) + "\n")
        plot_fsc(
            fsc,
            paths["fsc.png"],
            title=f"gold-standard FSC: {fsc.resolution('unmasked'):.2f} A (unmasked), "
            f"{fsc.resolution('corrected'):.2f} A (corrected)",
        )
    payload = jsonable(result.to_dict())
    atomic_write_text(paths["iterations.json"], json.dumps(payload, indent=2, allow_nan=False) + "\n")


def plot_fsc(
    report: FSCReport, path: str | os.PathLike[str] | None = None, title: str = "", ax: Any = None
) -> Any:
    """Plot the FSC curves (and 0.143) against spatial frequency; save to ``path`` (PNG) if given."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    own = ax is None
    if own:
        _, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    freq = report.shells / (report.box * report.pixel_size)
    styles = (
        ("unmasked", "tab:blue", "-"),
        ("masked", "tab:orange", "-"),
        ("randomised", "tab:gray", ":"),
        ("corrected", "tab:green", "--"),
    )
    for name, color, style in styles:
        curve = getattr(report, name)
        if curve is not None:
            ax.plot(
                freq[1:],
                curve[1:],
                style,
                color=color,
                label=f"{name} ({report.resolution(name):.1f} A)"
                if name != "randomised"
                else "phase-randomised, masked",
            )
    ax.axhline(0.143, color="0.5", lw=0.8)
    ax.set_xlabel("spatial frequency (1/A)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.02)
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small")
    if path is not None and own:
        # rendered in memory, then written atomically: a failed savefig left fsc.png.tmp.png behind
        buffer = io.BytesIO()
        try:
            ax.figure.savefig(buffer, format="png", dpi=110)
        finally:
            plt.close(ax.figure)
        atomic_write_bytes(path, buffer.getvalue())
    return ax


def map_to_truth_fsc(volume: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """FSC of a map against the true one (the check of Rosenthal & Henderson's 0.143 criterion)."""
    return fourier_shell_correlation(volume, truth)


__all__ = [
    "CryoEMResult",
    "RefineOptions",
    "gold_standard_fsc",
    "map_to_truth_fsc",
    "plot_fsc",
    "reconstruct_particles",
    "refine_particles",
    "stack_from_simulation",
    "write_refinement",
]
