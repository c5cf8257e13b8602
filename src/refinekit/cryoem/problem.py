"""Gold-standard 3D refinement by projection matching, as one problem for the engine.

The model is the state after an iteration: each particle's pose, the two half maps (each half refined
only against its own reference, from a split made before any alignment) and their FSC. One correction
is one iteration:

1. each half's reference is its own half map, low-pass filtered at the current 0.143 resolution and
   masked by the soft solvent mask of the last map (or a soft sphere; refinement limited by its own
   honest resolution does not fit noise);
2. every particle is matched against its half's reference, poses ranked by log-posterior (likelihood
   plus a Gaussian prior on the origins): a global search over a HEALPix grid of orientations and
   shifts in the first iterations (and, for particles whose best score noise could nearly reach, its
   best candidates refined locally), then local pattern searches that start where the last iteration
   left each particle and end at finer steps as the resolution improves;
3. each half is reconstructed (CTF-weighted insertion, ambiguous particles at their candidates weighted
   by posterior probability, Wiener regulariser from the last FSC), the FSC between the halves gives
   the new resolution, and the noise spectrum is re-estimated from the residuals.

The score the engine tracks (``work``, lower is better) is the half-map 0.143 resolution in Angstrom:
the gold-standard FSC is this problem's cross-validation, each half being the other's free set. The
run stops (``converged``) when the resolution no longer improves and the orientations no longer change,
and says so with the figures.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core import InputError, RefinementProblem, Scores, Status, StopRefinement
from ..core.validation import HalfSets
from .backend import Backend, NumpyBackend
from .fourier import FourierVolume
from .fsc import (
    FSCReport,
    crossing_shell,
    gold_standard_fsc,
    lowpass,
    resolution_to_shell,
    shell_to_resolution,
    solvent_mask,
    spherical_mask,
)
from .geometry import angular_distance, healpix_step, orientation_grid
from .io import ParticleStack
from .reconstruct import backproject_particles, reconstruct_halves
from .search import (
    Likelihood,
    ParticleTransforms,
    Poses,
    global_search,
    local_search,
    norm_of_particles,
    phase_parts,
    shift_grid,
)

#: The smallest image (pixels) a refinement or a reconstruction accepts.
MIN_BOX = 8


def check_box(box: int, task: str, path: object | None = None) -> None:
    """Refuse images under ``MIN_BOX`` pixels across for ``task`` (too few Fourier shells for an FSC:
    2 pixels fails deep in the numerics, or reports a meaningless resolution)."""
    if box < MIN_BOX:
        raise InputError(f"the images are {box} pixels across: {task} needs at least {MIN_BOX}", path=path)

#: Global candidates per particle refined locally where the particles are ambiguous.
AMBIGUOUS_CANDIDATES = 16

#: Posterior weight below which a candidate pose is left out of the reconstruction.
MIN_POSE_WEIGHT = 1e-3

#: Ambiguous particles keep the global search going while an iteration improves the resolution by
#: this many shells or the median best z-score by this fraction.
LEARNING_SHELLS = 0.1
LEARNING_Z = 0.01


@dataclass
class RefineOptions:
    """Settings of a refinement (all have defaults that suit a first run).

    ``diameter`` (A) sets the soft circular mask on the particles and the spherical mask on the
    references (default 90 % of the box). ``initial_lowpass`` (A) is the resolution the starting
    reference is trusted to. ``global_order`` is the HEALPix order of the global search (2: about
    15 degrees, with in-plane angles at the same step); ``global_iterations`` iterations at least search
    globally, more (up to ``max_global_iterations``) while each still improves the resolution, before
    the local searches take over. ``global_candidates`` poses per particle from the global search are
    refined locally and the best kept (None: 16 where the particles are ambiguous, their median best
    score being within ``ambiguity_z`` noise standard deviations of what noise alone reaches on the
    grid, 1 otherwise; ambiguous particles also keep the global search going up to
    ``max_global_iterations``). ``max_shift`` (pixels) bounds the global shift search (default 10 % of the
    box). ``final_angle_step`` (degrees) is the finest local step (default from the particle size and
    the resolution). The run stops when the 0.143 resolution has improved by less than
    ``resolution_tolerance`` shells over the best so far, the median orientation change is below
    ``angle_tolerance`` degrees and the median shift change below ``shift_tolerance`` pixels, after at
    least ``min_local_iterations`` local iterations.

    ``shift_prior``: poses are ranked by log-posterior with a Gaussian prior on the origins, its width
    estimated per half from that half's last origins (``max_shift / 2`` at first). ``marginalise``: where
    several global candidates are refined, each particle enters its half's reconstruction at all of
    them, weighted by their posterior probabilities (expectation over poses, as in RELION), instead of
    at the best alone. ``solvent_flatten``: each half's reference is multiplied by the soft solvent mask
    of the previous iteration's full map and low-passed at the masked FSC crossing corrected by phase
    randomisation (where it is higher than the unmasked one): the solvent's noise no longer enters the
    comparison, and the references keep the resolution the mask honestly gains (cryoSPARC's dynamic
    masking). Off: the soft sphere and the unmasked crossing.
    """

    max_iterations: int = 20
    initial_lowpass: float = 40.0
    diameter: float | None = None
    global_order: int = 2
    global_iterations: int = 2
    max_global_iterations: int = 10
    global_candidates: int | None = None
    max_shift: float | None = None
    final_angle_step: float | None = None
    resolution_tolerance: float = 0.5
    angle_tolerance: float = 1.0
    shift_tolerance: float = 0.3
    min_local_iterations: int = 2
    ambiguity_z: float = 4.0
    pad: int = 2
    seed: int = 0
    whiten: bool = True
    shift_prior: bool = True
    marginalise: bool = True
    solvent_flatten: bool = True

    def check(self, box: int, pixel_size: float) -> None:
        check_box(box, "refinement")
        # counts must be whole numbers: NaN passed every "< 1" test, 2.0 broke the HEALPix grid
        for name in (
            "max_iterations", "global_order", "global_iterations", "max_global_iterations",
            "min_local_iterations", "pad", "seed",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise InputError(f"{name} must be a whole number, got {value!r}")
        if self.global_candidates is not None and not isinstance(self.global_candidates, int | np.integer):
            raise InputError(f"global_candidates must be a whole number, got {self.global_candidates!r}")
        if self.seed < 0 or self.min_local_iterations < 0:
            raise InputError("seed and min_local_iterations must not be negative")
        # NaN compares false with everything: a NaN tolerance never converged, a negative max_shift
        # divided by zero, a final_angle_step <= 0 halved the local step forever (a hang)
        if self.max_shift is not None and not 0 <= self.max_shift <= box / 2:
            raise InputError(
                f"max_shift must be between 0 and half the box ({box / 2:g} px), got {self.max_shift}"
            )
        if self.final_angle_step is not None and not 0 < self.final_angle_step < math.inf:
            raise InputError(f"final_angle_step must be positive and finite, got {self.final_angle_step}")
        for name in ("resolution_tolerance", "angle_tolerance", "shift_tolerance"):
            if not 0 <= getattr(self, name) < math.inf:
                raise InputError(f"{name} must be finite and not negative, got {getattr(self, name)}")
        if not math.isfinite(self.ambiguity_z):
            raise InputError(f"ambiguity_z must be finite, got {self.ambiguity_z}")
        if self.max_iterations < 1:
            raise InputError(f"max_iterations must be at least 1, got {self.max_iterations}")
        nyquist = 2 * pixel_size
        if not nyquist < self.initial_lowpass < math.inf:
            raise InputError(
                f"the initial low-pass ({self.initial_lowpass:g} A) must be finite and coarser than Nyquist "
                f"({nyquist:g} A)"
            )
        if self.diameter is not None and not 0 < self.diameter <= box * pixel_size * 1.5:
            raise InputError(
                f"the particle diameter {self.diameter:g} A does not fit the {box * pixel_size:g} A box"
            )
        if not 0 <= self.global_order <= 4:
            raise InputError(f"the global search HEALPix order must be 0..4, got {self.global_order}")
        if self.global_iterations < 1:
            raise InputError("at least one global search iteration is needed (no poses to start from)")
        if self.global_candidates is not None and self.global_candidates < 1:
            raise InputError(f"global_candidates must be at least 1, got {self.global_candidates}")
        if self.pad not in (1, 2, 3, 4):
            raise InputError(f"padding must be 1..4, got {self.pad}")


@dataclass
class RefinementState:
    """The model after ``iteration`` iterations (iteration 0: the starting reference, no poses).

    ``half_maps`` are Wiener-filtered with the FSC (the next references); ``raw_half_maps`` are the same
    with only the minimal regulariser (what the FSC is measured on, and what is written out).
    """

    iteration: int
    poses: Poses | None
    half_maps: tuple[np.ndarray, np.ndarray]
    full_map: np.ndarray
    fsc: FSCReport | None
    crossing: float
    resolution: float
    noise_power: np.ndarray  # (2, shells): per half
    mask: np.ndarray | None = None
    figures: dict[str, float] = field(default_factory=dict)
    best_crossing_before: float = 0.0
    raw_half_maps: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True)
class IterationSummary:
    """An iteration as the stop rule, the search schedule and the plots need it: its FSC, resolution
    and figures, without maps or poses, so that a long refinement of a large box holds the arrays of
    two states (the current one and the engine's best), not those of every iteration."""

    iteration: int
    posed: bool
    crossing: float
    resolution: float
    fsc: FSCReport | None
    figures: dict[str, float]

    @classmethod
    def of(cls, state: RefinementState) -> IterationSummary:
        return cls(state.iteration, state.poses is not None, state.crossing, state.resolution, state.fsc,
                   state.figures)


class ProjectionMatching(RefinementProblem):
    """The refinement problem: ``initial`` is the starting reference, ``correct`` one iteration."""

    def __init__(
        self,
        stack: ParticleStack,
        reference: np.ndarray,
        options: RefineOptions | None = None,
        backend: Backend | None = None,
        log: Any = None,
    ) -> None:
        self.options = opts = options or RefineOptions()
        self.backend = backend or NumpyBackend()
        self.stack = stack
        self.box = stack.box
        self.pixel_size = float(stack.pixel_size)
        opts.check(self.box, self.pixel_size)
        reference = np.asarray(reference, dtype=float)
        if reference.shape != (self.box,) * 3:
            raise InputError(
                f"the reference is {reference.shape[0]} voxels across but the particles are {self.box} pixels"
            )
        self.reference = reference
        self.log = log
        n = len(stack)
        if stack.subsets is not None and set(np.unique(stack.subsets).tolist()) == {1, 2}:
            self.subsets = stack.subsets.astype(int)
            self.subset_source = "rlnRandomSubset"
        else:
            self.subsets = HalfSets(opts.seed).flags(n).values
            self.subset_source = f"random split (seed {opts.seed})"
        self.halves = [np.flatnonzero(self.subsets == h) for h in (1, 2)]
        if min(h.size for h in self.halves) < 2:
            raise InputError(
                f"each half needs at least 2 particles (halves: {self.halves[0].size}, {self.halves[1].size})"
            )
        diameter = opts.diameter if opts.diameter is not None else 0.9 * self.box * self.pixel_size
        self.radius_px = min(diameter / (2 * self.pixel_size), self.box / 2 - 1)
        self.data = ParticleTransforms(stack.images, stack.ctf, self.pixel_size, self.radius_px, self.backend)
        self.grid = orientation_grid(opts.global_order)
        self.max_shift = opts.max_shift if opts.max_shift is not None else max(2.0, 0.1 * self.box)
        self.sphere = spherical_mask(self.box, self.radius_px, edge=max(2.0, 0.05 * self.box))
        self.n_shells = self.box // 2 + 1
        self.history: list[IterationSummary] = []

    # --------------------------------------------------------------------------- protocol
    def initial(self) -> RefinementState:
        crossing = min(
            resolution_to_shell(self.options.initial_lowpass, self.box, self.pixel_size), self.box / 2 - 1
        )
        state = RefinementState(
            iteration=0,
            poses=None,
            half_maps=(self.reference, self.reference),
            full_map=self.reference,
            fsc=None,
            crossing=crossing,
            resolution=shell_to_resolution(crossing, self.box, self.pixel_size),
            noise_power=np.stack([self._particle_power(index) for index in self.halves]),
            figures={
                "resolution_a": shell_to_resolution(crossing, self.box, self.pixel_size),
                "fsc_crossing_shell": crossing,
            },
        )
        self.history = [IterationSummary.of(state)]
        return state

    def check(self, model: RefinementState) -> Scores:
        return Scores(work=float(model.resolution), figures=dict(model.figures))

    def correct(self, model: RefinementState, scores: Scores) -> RefinementState:
        self._stop_if_converged(model)
        new = self.iterate(model)
        self.history.append(IterationSummary.of(new))
        return new

    def apply(self, model: RefinementState, step: RefinementState) -> RefinementState:
        return step

    def step_size(self, model: RefinementState, step: RefinementState) -> float:
        """The median orientation change (degrees) the iteration made (180 at the first)."""
        return float(step.figures.get("median_angle_change_deg", 180.0))

    def is_finite(self, model: RefinementState) -> bool:
        return bool(
            np.all(np.isfinite(model.full_map)) and all(np.all(np.isfinite(h)) for h in model.half_maps)
        )

    # --------------------------------------------------------------------------- the stop rule
    def _stop_if_converged(self, state: RefinementState) -> None:
        opts = self.options
        local_done = sum(
            1 for st in self.history if st.posed and not st.figures.get("global_search")
        )
        if state.poses is None or local_done < opts.min_local_iterations:
            return
        gain = state.crossing - state.best_crossing_before
        angle = state.figures["median_angle_change_deg"]
        shift = state.figures["median_shift_change_px"]
        if gain < opts.resolution_tolerance and angle < opts.angle_tolerance and shift < opts.shift_tolerance:
            raise StopRefinement(
                Status.CONVERGED,
                (
                    f"converged at iteration {state.iteration}: the resolution "
                    f"({state.resolution:.2f} A) gained {gain:+.2f} shells (< {opts.resolution_tolerance:g}) "
                    "and orientations changed by a median "
                    f"{angle:.2f} deg (< {opts.angle_tolerance:g}), shifts by {shift:.2f} px "
                    f"(< {opts.shift_tolerance:g})"
                ),
            )

    # --------------------------------------------------------------------------- one iteration
    def _say(self, text: str) -> None:
        if self.log is not None:
            self.log(text)

    def final_angle_step(self, resolution: float) -> float:
        """The finest local step (degrees): a quarter of the angle over which the particle's rim moves
        by the resolution, between 0.1 and 0.5 degrees unless set."""
        if self.options.final_angle_step is not None:
            return float(self.options.final_angle_step)
        radius_a = self.radius_px * self.pixel_size
        return float(np.clip(math.degrees(resolution / radius_a) / 4, 0.1, 0.5))

    def _local_schedule(
        self, start_deg: float, final_deg: float, shift_cap: float
    ) -> tuple[list[float], list[float]]:
        steps = [start_deg]
        while steps[-1] / 2 >= final_deg * 0.99:
            steps.append(steps[-1] / 2)
        shifts = [min(shift_cap, math.radians(a) * self.radius_px) for a in steps]
        return steps, [max(s, 0.05) for s in shifts]

    def reference_shell(self, state: RefinementState) -> float:
        """Where the references made from ``state`` are low-passed: the unmasked 0.143 crossing, or with
        ``solvent_flatten`` the corrected masked one where that is higher."""
        if not self.options.solvent_flatten or state.fsc is None or state.fsc.corrected is None:
            return state.crossing
        return max(state.crossing, min(crossing_shell(state.fsc.corrected), self.box / 2 - 1))

    def reference_for(self, state: RefinementState, half: int, crossing: float) -> np.ndarray:
        """A half's reference: its map low-passed at ``crossing`` (cosine edge 3 shells wide, half-way at
        the crossing), times the solvent mask (with ``solvent_flatten``, once there is one) or the soft
        sphere."""
        envelope = self.sphere
        if self.options.solvent_flatten and state.mask is not None:
            envelope = state.mask * self.sphere
        return lowpass(state.half_maps[half], crossing, 3.0) * envelope

    def iterate(self, state: RefinementState) -> RefinementState:
        opts = self.options
        be = self.backend
        it = state.iteration + 1
        tick = time.perf_counter()
        # global searches go on past the minimum while they keep improving the resolution
        improving = (
            state.fsc is not None and state.crossing - state.best_crossing_before >= opts.resolution_tolerance
        )
        # ... and, where the particles are ambiguous, while the references still get better (a local
        # search cannot leave a wrong basin, and each better reference lets the global search put more
        # particles right)
        is_global = it <= opts.global_iterations or (
            it <= opts.max_global_iterations
            and bool(state.figures.get("global_search"))
            and (improving or (bool(state.figures.get("ambiguous")) and self._still_learning(state)))
        )
        crossing = self.reference_shell(state)
        r_max = min(crossing + 1.5, self.box / 2 - 0.5)
        final_step = self.final_angle_step(state.resolution)
        n = len(self.stack)
        rotations = np.empty((n, 3, 3))
        origins = np.empty((n, 2))
        scores = np.empty(n)
        weights = 1.0 / state.noise_power if opts.whiten else np.ones_like(state.noise_power)
        # per half: the noise scale (mean inverse noise power) and the weights relative to it
        noise_scale = weights.mean(axis=1)
        relative_weights = weights / noise_scale[:, None]
        correlations = np.empty(n)
        z_values: list[np.ndarray] = []
        ambiguous_halves: list[bool] = []
        candidates_used: list[int] = []
        shift_sigmas = self.shift_sigmas(state)
        # the poses each half is reconstructed at: (particles, rotations, origins, weights)
        inserts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None] = [None, None]
        if is_global:
            # the same for both halves: the shift grid, the local levels after the grid, the score that
            # noise alone reaches on the grid
            period_px = self.box / max(r_max, 1.0)
            shift_step = max(1.0, float(np.floor(period_px / 4)))
            origin_grid = shift_grid(self.max_shift, shift_step)
            global_levels = self._local_schedule(
                healpix_step(opts.global_order) / 2, final_step, shift_step / 2
            )
            null_max = float(np.sqrt(2 * np.log(len(self.grid) * len(origin_grid))))
        for h, index in enumerate(self.halves):
            volume = FourierVolume(self.reference_for(state, h, crossing), opts.pad, be)
            w = relative_weights[h]
            like = Likelihood(float(noise_scale[h]), shift_sigmas[h])
            modes = None
            if is_global:
                steps, shifts = global_levels
                m = min(opts.global_candidates or AMBIGUOUS_CANDIDATES, len(self.grid))
                poses = global_search(
                    volume,
                    self.data,
                    index,
                    self.grid.matrices,
                    origin_grid,
                    r_max,
                    w,
                    candidates=m,
                    likelihood=like,
                )
                # the best correlation in units of the noise's standard deviation (w = c / sigma^2:
                # std = sqrt(c / 2)), i.e. sqrt(2 log-likelihood)
                first = np.arange(index.size) * m
                z = like.to_scores(poses.scores[first], poses.origins[first]) * np.sqrt(2 * like.scale)
                z_values.append(z)
                ambiguous = float(np.median(z)) < null_max + opts.ambiguity_z
                ambiguous_halves.append(ambiguous)
                if opts.global_candidates is None and not ambiguous:
                    m = 1
                    poses = poses.subset(first)
                if m > 1:
                    # every candidate through the coarse levels; the best of each particle goes on
                    coarse = min(3, max(1, len(steps) - 2))
                    trial = local_search(
                        volume,
                        self.data,
                        np.repeat(index, m),
                        poses,
                        steps[:coarse],
                        shifts[:coarse],
                        r_max,
                        w,
                        likelihood=like,
                    )
                    best = trial.scores.reshape(index.size, m).argmax(axis=1) + first
                    poses = trial.subset(best)
                    steps, shifts = steps[coarse:], shifts[coarse:]
                    modes = (trial, best)
                candidates_used.append(m)
            else:
                previous = state.poses.subset(index)
                change = state.figures.get("median_angle_change_deg", 4.0)
                start = float(np.clip(2 * change, 2 * final_step, 4.0))
                poses = previous
                steps, shifts = self._local_schedule(start, final_step, 1.0)
            poses = local_search(volume, self.data, index, poses, steps, shifts, r_max, w, likelihood=like)
            rotations[index], origins[index], scores[index] = poses.rotations, poses.origins, poses.scores
            correlations[index] = like.to_scores(poses.scores, poses.origins)
            if modes is not None and opts.marginalise:
                inserts[h] = pose_weights(index, modes[0], modes[1], poses)
        search_time = time.perf_counter() - tick

        # reconstruction (each particle at its pose, or at its candidates with their posterior weights),
        # FSC, mask
        bps = []
        for h, index in enumerate(self.halves):
            particles, at_rotations, at_origins, pose_weight = inserts[h] or (
                index, rotations[index], origins[index], None
            )
            bps.append(
                backproject_particles(
                    self.data, particles, at_rotations, at_origins, relative_weights[h], opts.pad, pose_weight
                )
            )
        rec = reconstruct_halves(bps[0], bps[1], self.pixel_size)
        mask = solvent_mask(rec.full_map, self.pixel_size, lowpass_resolution=max(15.0, 3 * self.pixel_size))
        report = gold_standard_fsc(
            rec.half_maps[0], rec.half_maps[1], self.pixel_size, mask, seed=opts.seed + it
        )
        new_crossing = min(crossing_shell(report.unmasked), self.box / 2 - 1)
        resolution = shell_to_resolution(new_crossing, self.box, self.pixel_size)
        noise = np.stack(
            [
                self._noise_power(rec.filtered_half_maps[h], index, rotations[index], origins[index])
                for h, index in enumerate(self.halves)
            ]
        )

        figures: dict[str, float] = {
            "resolution_a": resolution,
            "fsc_crossing_shell": new_crossing,
            "reference_shell": crossing,
            "resolution_masked_a": report.resolution("masked"),
            "resolution_corrected_a": report.resolution("corrected"),
            "global_search": float(is_global),
            "global_candidates": float(max(candidates_used)) if candidates_used else 0.0,
            "ambiguous": float(any(ambiguous_halves)),
            "median_best_z": float(np.median(np.concatenate(z_values))) if z_values else float("nan"),
            "finest_angle_step_deg": final_step,
            "mean_score": float(
                np.mean(correlations / norm_of(self.data, r_max, relative_weights, self.halves))
            ),
            "shift_prior_sigma_px": float(np.mean([s for s in shift_sigmas if s is not None]))
            if opts.shift_prior
            else float("nan"),
            "marginalised": float(any(item is not None for item in inserts)),
            "search_seconds": search_time,
            "iteration_seconds": time.perf_counter() - tick,
        }
        if state.poses is not None:
            figures["median_angle_change_deg"] = float(
                np.median(angular_distance(rotations, state.poses.rotations))
            )
            figures["median_shift_change_px"] = float(
                np.median(np.linalg.norm(origins - state.poses.origins, axis=1))
            )
        else:
            figures["median_angle_change_deg"] = 180.0
            figures["median_shift_change_px"] = float(self.max_shift)
        best_before = (
            max(s.crossing for s in self.history if s.posed)
            if any(s.posed for s in self.history)
            else 0.0
        )
        self._say(
            f"iteration {it}: {'global' if is_global else 'local'} search, resolution {resolution:.2f} A "
            f"(masked {figures['resolution_masked_a']:.2f}, "
            f"corrected {figures['resolution_corrected_a']:.2f}), "
            f"median change {figures['median_angle_change_deg']:.2f} deg, {_z_text(figures['median_best_z'])}"
            f"{figures['iteration_seconds']:.1f} s"
        )
        return RefinementState(
            iteration=it,
            poses=Poses(rotations, origins, scores),
            half_maps=rec.filtered_half_maps,
            raw_half_maps=rec.half_maps,
            full_map=rec.full_map,
            fsc=report,
            crossing=new_crossing,
            resolution=resolution,
            noise_power=noise,
            mask=mask,
            figures=figures,
            best_crossing_before=best_before,
        )

    def _still_learning(self, state: RefinementState) -> bool:
        """Whether the last global iteration still improved the references: the resolution by
        ``LEARNING_SHELLS`` or the particles' median best z-score by ``LEARNING_Z`` (relative)."""
        before = [st for st in self.history if st.iteration < state.iteration]
        if not before or not before[-1].posed:
            return True
        previous = before[-1]
        z_now = state.figures.get("median_best_z", float("nan"))
        z_before = previous.figures.get("median_best_z", float("nan"))
        z_gain = z_now / z_before - 1 if z_before > 0 else float("inf")
        return bool(state.crossing - previous.crossing >= LEARNING_SHELLS or z_gain >= LEARNING_Z)

    def shift_sigmas(self, state: RefinementState) -> list[float | None]:
        """The width (pixels) of each half's Gaussian prior on the origins: from the median squared
        origin of that half's particles (robust to the lost ones: ``median |o|^2 = 2 ln 2 sigma^2``
        for a 2D Gaussian), between 0.5 px and ``max_shift``; ``max_shift / 2`` before any poses; None
        without a prior."""
        if not self.options.shift_prior:
            return [None, None]
        if state.poses is None:
            return [self.max_shift / 2, self.max_shift / 2]
        out: list[float | None] = []
        for index in self.halves:
            squared = np.sum(state.poses.origins[index] ** 2, axis=1)
            sigma = math.sqrt(float(np.median(squared)) / (2 * math.log(2)))
            out.append(float(np.clip(sigma, 0.5, self.max_shift)))
        return out

    def _particle_power(self, index: np.ndarray) -> np.ndarray:
        """Mean power per shell of the masked particles ``index``: the first noise estimate (at low SNR
        the images are mostly noise; where they are not, the estimate errs on the safe side)."""
        be = self.backend
        shells = self.data.points.shell
        total = np.zeros(self.n_shells)
        for start in range(0, index.size, 512):
            x = self.data.masked[be.asarray(index[start : start + 512], "int64")]
            per_point = be.to_numpy((x.real * x.real + x.imag * x.imag).sum(0)).astype(np.float64)
            total += np.bincount(shells, weights=per_point, minlength=self.n_shells)
        return shell_mean(total, np.bincount(shells, minlength=self.n_shells) * index.size)

    def _noise_power(
        self, half_map: np.ndarray, index: np.ndarray, rotations: np.ndarray, origins: np.ndarray
    ) -> np.ndarray:
        """Noise power per shell: the residual of the masked images against the scaled, CTF-modulated
        projections of their half map at their poses."""
        be = self.backend
        data = self.data
        volume = FourierVolume(half_map * self.sphere, self.options.pad, be)
        points = data.points
        kx, ky = be.asarray(points.kx, "float32"), be.asarray(points.ky, "float32")
        shells = points.shell
        total = np.zeros(self.n_shells)
        cross_sum = 0.0
        power_sum = 0.0
        residual_parts = []
        for start in range(0, index.size, 256):
            sel_np = index[start : start + 256]
            sel = be.asarray(sel_np, "int64")
            proj = volume.slices(rotations[start : start + 256], points)
            model = proj * data.ctf[sel]
            cos_t, sin_t = phase_parts(
                be, be.asarray(origins[start : start + 256], "float32"), kx, ky, data.box
            )
            x = data.masked[sel]
            xr = x.real * cos_t - x.imag * sin_t
            xi = x.real * sin_t + x.imag * cos_t
            cross_sum += float(be.to_numpy((xr * model.real + xi * model.imag).sum()))
            power_sum += float(be.to_numpy((model.real * model.real + model.imag * model.imag).sum()))
            residual_parts.append((xr, xi, model))
        scale = cross_sum / power_sum if power_sum > 0 else 0.0
        for xr, xi, model in residual_parts:
            rr = xr - scale * model.real
            ri = xi - scale * model.imag
            per_point = be.to_numpy((rr * rr + ri * ri).sum(0)).astype(np.float64)
            total += np.bincount(shells, weights=per_point, minlength=self.n_shells)
        return shell_mean(total, np.bincount(shells, minlength=self.n_shells) * index.size)


def _z_text(z: float) -> str:
    """The log's z-score (local iterations score no candidates against the noise: none to show)."""
    return f"z {z:.1f}, " if math.isfinite(z) else ""


def shell_mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Mean power per shell from sums ``total`` over ``count`` points: shells without points (the
    corner beyond Nyquist, shell 0) take their neighbours' value, and a tiny floor keeps it positive."""
    power = total / np.maximum(count, 1)
    valid = count > 0
    power[~valid] = np.interp(np.flatnonzero(~valid), np.flatnonzero(valid), power[valid])
    return np.maximum(power, 1e-12 * max(power.max(), 1e-30))


def norm_of(
    data: ParticleTransforms, r_max: float, weights: np.ndarray, halves: list[np.ndarray]
) -> np.ndarray:
    """Per-particle ``sqrt(sum w |X|^2)`` over the compared band (turns scores into correlations), with
    each half's ``weights`` per shell."""
    be = data.backend
    count = data.limit(r_max)
    out = np.empty(data.n)
    for h, index in enumerate(halves):
        w = be.asarray(weights[h][data.points.shell], "float32")
        out[index] = norm_of_particles(data, count, w, index)
    return out


def pose_weights(
    index: np.ndarray, candidates: Poses, best: np.ndarray, final: Poses, same_deg: float = 2.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The poses each particle of ``index`` enters the reconstruction at, with their weights: its
    ``candidates`` (``m`` per particle, particle by particle, scores in log-posterior) weighted by
    ``exp(score - max)`` normalised per particle, the best (at ``best``) replaced by its final
    refinement ``final``; a candidate within ``same_deg`` degrees of a better one of the same particle
    is the same mode found twice and is dropped (it would count its mode twice), and so is any weight
    below ``MIN_POSE_WEIGHT``. Returns ``(particles, rotations, origins, weights)``.

    >>> import numpy as np
    >>> from refinekit.cryoem.geometry import euler_to_matrix
    >>> rot = euler_to_matrix(np.array([0.0, 1.0, 90.0]), 0.0, 0.0)  # two near-identical, one apart
    >>> cands = Poses(rot, np.zeros((3, 2)), np.array([0.0, -0.1, -1.0]))
    >>> final = Poses(rot[:1], np.zeros((1, 2)), np.array([0.5]))
    >>> particles, _, _, weight = pose_weights(np.array([7]), cands, np.array([0]), final)
    >>> particles.tolist(), np.round(weight, 3).tolist()
    ([7, 7], [0.818, 0.182])
    """
    n = index.size
    m = candidates.scores.size // n
    rotations = candidates.rotations.reshape(n, m, 3, 3).copy()
    origins = candidates.origins.reshape(n, m, 2).copy()
    scores = candidates.scores.reshape(n, m).copy()
    rows = np.arange(n)
    column = best - rows * m
    rotations[rows, column] = final.rotations
    origins[rows, column] = final.origins
    scores[rows, column] = final.scores
    # the same mode twice: keep the better of any pair closer than same_deg
    order = np.argsort(-scores, axis=1)
    rotations = np.take_along_axis(rotations, order[:, :, None, None], axis=1)
    origins = np.take_along_axis(origins, order[:, :, None], axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    trace = np.einsum("naij,nbij->nab", rotations, rotations)
    close = trace > 1 + 2 * math.cos(math.radians(same_deg))
    duplicate = np.triu(close, k=1).any(axis=1)  # close to a better (earlier) candidate
    keep = ~duplicate
    weight = np.where(keep, np.exp(scores - scores[:, :1]), 0.0)
    weight /= weight.sum(axis=1, keepdims=True)
    weight = np.where(weight >= MIN_POSE_WEIGHT, weight, 0.0)
    weight /= weight.sum(axis=1, keepdims=True)
    chosen = weight > 0
    particles = np.broadcast_to(index[:, None], (n, m))[chosen]
    return particles, rotations[chosen], origins[chosen], weight[chosen]
