"""``refinekit cryoem simulate | refine | reconstruct``: single-particle cryo-EM on the engine."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from .common import ProgressBar, check_output_folder, check_outputs, emit, exit_code, handle_errors

app = typer.Typer(
    help="Single-particle cryo-EM: simulate particles, refine poses and map with gold-standard half maps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.command("simulate", no_args_is_help=True)
@handle_errors
def simulate_command(
    map_path: Path = typer.Argument(..., metavar="MAP", help="MRC map to project."),
    n: int = typer.Option(..., "-n", help="Number of particles."),
    snr: float = typer.Option(..., "--snr", help="Signal-to-noise ratio (signal variance / noise variance)."),
    box: int | None = typer.Option(None, "--box", help="Image size in pixels (the map is resampled to it)."),
    pixel_size: float | None = typer.Option(
        None,
        "--pixel-size",
        help="Pixel size of the images in A (default: the map's, scaled by the resampling).",
    ),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    defocus_min: float = typer.Option(1.5, "--defocus-min", help="Smallest defocus in um."),
    defocus_max: float = typer.Option(2.5, "--defocus-max", help="Largest defocus in um."),
    max_shift: float = typer.Option(3.0, "--max-shift", help="Largest particle shift in pixels."),
    voltage: float = typer.Option(300.0, "--voltage", help="Acceleration voltage in kV."),
    cs: float = typer.Option(2.7, "--cs", help="Spherical aberration in mm."),
    amplitude_contrast: float = typer.Option(
        0.1, "--amplitude-contrast", help="Amplitude contrast (fraction)."
    ),
    start_lowpass: float = typer.Option(
        40.0, "--start-lowpass", help="Low-pass (A) of initial_reference.mrc."
    ),
    start_rotation: float = typer.Option(
        0.0, "--start-rotation", help="Rotate initial_reference.mrc by this many degrees about a random axis."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary to stdout."),
) -> None:
    """Simulate particles from MAP: random orientations and shifts, CTF, noise at --snr.

    Writes OUT/particles.mrcs and particles.star (RELION 3.1, no poses), truth.star (the true poses),
    truth.mrc (the map the images carry) and initial_reference.mrc (the truth low-passed, and rotated
    if asked: a start for `refinekit cryoem refine`).
    """
    import numpy as np

    from ..core import InputError
    from ..cryoem import read_map, resample_map, simulate_particles, starting_reference, write_simulation

    if n < 1:
        raise InputError(f"-n must be at least 1, got {n}")
    if not 0 < snr < math.inf:
        raise InputError(f"--snr must be positive and finite, got {snr}")
    if seed < 0:
        raise InputError(f"--seed must not be negative, got {seed}")
    if not 0 < voltage < math.inf:
        raise InputError(f"--voltage must be positive and finite, got {voltage}")
    if not math.isfinite(start_rotation):
        raise InputError(f"--start-rotation must be a finite angle, got {start_rotation}")
    if box is not None and not 16 <= box <= 1024:
        raise InputError(f"--box must be between 16 and 1024 pixels, got {box}")
    if not 0 < defocus_min <= defocus_max < math.inf:
        raise InputError("the defocus range must be positive and finite with --defocus-min <= --defocus-max")
    if not 0 <= max_shift < math.inf:
        raise InputError(f"--max-shift must be finite and not negative, got {max_shift}")
    if not 0 <= cs < math.inf:
        raise InputError(f"--cs must be finite and not negative, got {cs}")
    if not 0 <= amplitude_contrast < 1:
        raise InputError("--amplitude-contrast must be in [0, 1)")
    density = read_map(map_path)
    target_box = box or density.box
    if not 16 <= target_box <= 1024:  # the range --box allows, for a map used at its own size too
        raise InputError(
            f"the map is {density.box} voxels across: give --box between 16 and 1024", path=map_path
        )
    if pixel_size is None:
        if density.pixel_size is None:
            raise InputError("the map header has no voxel size: give --pixel-size", path=map_path)
        pixel_size = density.pixel_size * density.box / target_box
    if not 0 < pixel_size < math.inf:
        raise InputError(f"--pixel-size must be positive and finite, got {pixel_size}")
    if not start_lowpass > 2 * pixel_size:
        raise InputError(f"--start-lowpass must be coarser than Nyquist ({2 * pixel_size:g} A)")
    names = ("particles.mrcs", "particles.star", "truth.star", "truth.mrc", "initial_reference.mrc")
    check_output_folder(out, [out / name for name in names], [map_path])
    volume = resample_map(density.data.astype(float), target_box)
    if not np.ptp(volume) > 0:  # a flat map projects to blank images: nothing to simulate
        raise InputError("the map is constant: its projections would be blank", path=map_path)
    sim = simulate_particles(
        volume,
        pixel_size,
        n,
        snr,
        seed=seed,
        defocus_range=(defocus_min * 1e4, defocus_max * 1e4),
        max_shift=max_shift,
        voltage=voltage,
        cs=cs,
        amplitude_contrast=amplitude_contrast,
    )
    reference, rotation = starting_reference(
        sim.volume, pixel_size, start_lowpass, start_rotation, seed=seed + 1
    )
    paths = write_simulation(out, sim, reference=reference)
    payload = {
        "n": n,
        "snr": snr,
        "box": target_box,
        "pixel_size_a": pixel_size,
        "seed": seed,
        "start_lowpass_a": start_lowpass,
        "start_rotation_deg": start_rotation,
        "start_rotation_matrix": rotation.tolist(),
        "files": {k: str(v) for k, v in paths.items()},
    }
    text = (
        f"simulated {n} particles ({target_box} px, {pixel_size:.4g} A/px, SNR {snr:g}) in {out}:\n"
        + "\n".join(f"  {p.name}" for p in paths.values())
    )
    emit(payload, text, as_json)


@app.command("refine", no_args_is_help=True)
@handle_errors
def refine_command(
    particles: Path = typer.Argument(..., metavar="PARTICLES.star", help="RELION STAR file (3.0 or 3.1)."),
    reference: Path = typer.Option(..., "--reference", help="Initial reference map (MRC)."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output folder (default: <stem>_refined)."),
    device: str = typer.Option("cpu", "--device", help="cpu (numpy) or cuda (torch)."),
    max_iterations: int = typer.Option(20, "--max-iterations", help="At most this many iterations."),
    diameter: float | None = typer.Option(
        None, "--diameter", help="Particle diameter in A (default: 90% of box)."
    ),
    initial_lowpass: float = typer.Option(
        40.0, "--initial-lowpass", help="Trust the reference to this many A."
    ),
    global_iterations: int = typer.Option(2, "--global-iterations", help="Iterations with a global search."),
    seed: int = typer.Option(0, "--seed", help="Seed of the half-set split (where the STAR has none)."),
    solvent_flatten: bool = typer.Option(
        True,
        "--solvent-flatten/--no-solvent-flatten",
        help="Mask the references by the solvent mask of the last map and low-pass them at the corrected "
        "masked resolution (off: a soft sphere and the unmasked resolution).",
    ),
    marginalise: bool = typer.Option(
        True,
        "--marginalise/--no-marginalise",
        help="Reconstruct ambiguous particles at their likely poses weighted by posterior probability "
        "(off: at the best pose alone).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON to stdout."),
) -> None:
    """Refine particle poses and the 3D map by projection matching, halves refined independently.

    Writes OUT/map.mrc, half_map_1.mrc, half_map_2.mrc, mask.mrc, particles.star (angles and
    rlnOriginX/YAngst in RELION's conventions, rlnRandomSubset), fsc.csv and fsc.png (unmasked, masked,
    phase-randomised, corrected) and iterations.json (one record per iteration).
    """
    from ..core import InputError
    from ..cryoem import RefineOptions, read_map, read_particles, refine_particles, write_refinement
    from ..cryoem.api import OUTPUT_FILES
    from ..cryoem.backend import get_backend
    from ..cryoem.problem import check_box

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"--device must be cpu or cuda, got {device!r}")
    if seed < 0:
        raise InputError(f"--seed must not be negative, got {seed}")
    out = out if out is not None else Path(f"{particles.stem}_refined")
    check_outputs([], [particles, reference])
    stack = read_particles(particles)
    density = read_map(reference)
    if density.box != stack.box:
        raise InputError(
            f"the reference is {density.box} voxels across but the particles are {stack.box} pixels",
            path=reference,
        )
    if (
        density.pixel_size is not None
        and abs(density.pixel_size - stack.pixel_size) > 0.01 * stack.pixel_size
    ):
        raise InputError(
            f"the reference's voxel size ({density.pixel_size:.4g} A) differs from the particles' "
            f"pixel size ({stack.pixel_size:.4g} A)",
            path=reference,
        )
    inputs = [particles, reference, *{p for p, _ in stack.image_names}]
    check_output_folder(out, [out / name for name in OUTPUT_FILES], inputs)
    if stack.subsets is not None and len(set(stack.subsets.tolist())) == 1:
        raise InputError(
            f"every particle has rlnRandomSubset {int(stack.subsets[0])}: both halves need particles",
            path=particles,
        )
    # the refinement checks these too, but without the file's name
    check_box(stack.box, "refinement", particles)
    subsets = stack.subsets.tolist() if stack.subsets is not None else []
    halves = [subsets.count(1), subsets.count(2)] if subsets else [(len(stack) + 1) // 2, len(stack) // 2]
    if min(halves) < 2:
        raise InputError(
            f"{len(stack)} particle(s) ({halves[0]} and {halves[1]} in the two halves): each half needs "
            "at least 2",
            path=particles,
        )
    options = RefineOptions(
        max_iterations=max_iterations,
        diameter=diameter,
        initial_lowpass=initial_lowpass,
        global_iterations=global_iterations,
        seed=seed,
        solvent_flatten=solvent_flatten,
        marginalise=marginalise,
    )
    options.check(stack.box, stack.pixel_size)
    backend = get_backend(None, device)

    def log(line: str) -> None:
        if not as_json:
            typer.echo(line, err=True)

    result = refine_particles(
        stack, density.data, options, backend=backend, callbacks=[ProgressBar("refining")], log=log
    )
    paths = write_refinement(out, result, stack, inputs, origin=density.origin)  # maps overlay the reference
    payload = result.to_dict()
    payload["outputs"] = {k: str(v) for k, v in paths.items()}
    text = result.report() + f"\noutputs     : {out}/ ({', '.join(sorted(p.name for p in paths.values()))})"
    emit(payload, text, as_json)
    raise typer.Exit(exit_code(result))


@app.command("reconstruct", no_args_is_help=True)
@handle_errors
def reconstruct_command(
    particles: Path = typer.Argument(..., metavar="PARTICLES.star", help="RELION STAR file with angles."),
    out: Path = typer.Option(..., "-o", "--out", help="Output map (MRC); half maps go beside it."),
    box: int | None = typer.Option(None, "--box", help="Downsample the images to this many pixels first."),
    device: str = typer.Option("cpu", "--device", help="cpu (numpy) or cuda (torch)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary to stdout."),
) -> None:
    """Reconstruct a map from particles at the angles and origins their STAR file gives.

    Where the STAR has both halves (rlnRandomSubset 1 and 2), OUT_half_map_1/2.mrc are written too and
    the FSC resolution is reported.
    """
    from ..core import InputError, atomic_outputs
    from ..cryoem import read_particles, reconstruct_particles, write_map
    from ..cryoem.preprocess import downsample_stack
    from ..cryoem.problem import MIN_BOX, check_box

    if out.suffix.lower() not in (".mrc", ".map"):
        raise InputError("the output map must end in .mrc or .map", path=out)
    halves_out = [out.with_name(f"{out.stem}_half_map_{h}{out.suffix}") for h in (1, 2)]
    check_outputs([out, *halves_out], [particles])
    stack = read_particles(particles)
    check_outputs([out, *halves_out], [particles, *{p for p, _ in stack.image_names}])
    if stack.rotations is None:
        raise InputError(
            "no rlnAngleRot/rlnAngleTilt/rlnAnglePsi columns to reconstruct from", path=particles
        )
    # a map of a few pixels has no shells to measure (a 2-pixel one reported "FSC 0.143: 4.00 A")
    check_box(stack.box, "reconstruction", particles)
    if box is not None:
        if not MIN_BOX <= box <= stack.box:
            raise InputError(f"--box must be between {MIN_BOX} and the images' {stack.box} pixels, got {box}")
        stack = downsample_stack(stack, box)
    full, halves, fsc = reconstruct_particles(stack, device=device)
    # the map and its half maps all or none: a full disk on a half map left the map alone
    written = [out, *halves_out] if halves is not None else [out]
    with atomic_outputs(written) as staged:
        for path, volume in zip(staged, [full, *(halves or ())], strict=True):
            write_map(path, volume, stack.pixel_size)
    payload: dict = {
        "map": str(out),
        "n_particles": len(stack),
        "box": stack.box,
        "pixel_size_a": stack.pixel_size,
    }
    text = f"reconstructed {len(stack)} particles ({stack.box} px, {stack.pixel_size:.4g} A/px) -> {out}"
    if halves is not None and fsc is not None:
        payload["half_maps"] = [str(p) for p in halves_out]
        payload["resolution_a"] = fsc.resolution("unmasked")
        text += (
            f"\nhalf maps -> {halves_out[0].name}, {halves_out[1].name}; FSC 0.143: {fsc.resolution():.2f} A"
        )
    emit(payload, text, as_json)
