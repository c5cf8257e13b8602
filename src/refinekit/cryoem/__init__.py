"""Single-particle cryo-EM refinement by projection matching, with gold-standard half maps and FSC.

Guess a map, project it, give each particle image the orientation and shift whose projection matches
it best, reconstruct a sharper map from the images at those poses, repeat. The particles are split
into two halves before anything is aligned; each half is refined against its own map only, and the
Fourier shell correlation between the two half maps is the honest resolution that also limits what
the next references may contain.

>>> from refinekit.cryoem import euler_to_matrix, matrix_to_euler
>>> [round(float(a), 6) for a in matrix_to_euler(euler_to_matrix(10.0, 20.0, 30.0))]
[10.0, 20.0, 30.0]
"""

from .api import (
    CryoEMResult,
    map_to_truth_fsc,
    plot_fsc,
    reconstruct_particles,
    refine_particles,
    stack_from_simulation,
    write_refinement,
)
from .ctf import CTFParameters, electron_wavelength
from .fsc import FSCReport, fourier_shell_correlation, gold_standard_fsc, resolution, solvent_mask
from .geometry import (
    PoseComparison,
    angular_distance,
    compare_poses,
    euler_to_matrix,
    healpix_directions,
    matrix_to_euler,
    orientation_grid,
    random_rotations,
)
from .io import DensityMap, ParticleStack, read_map, read_particles, write_map
from .problem import IterationSummary, ProjectionMatching, RefinementState, RefineOptions
from .simulate import (
    SimulatedParticles,
    resample_map,
    simulate_particles,
    starting_reference,
    write_simulation,
)

__all__ = [
    "CTFParameters",
    "CryoEMResult",
    "DensityMap",
    "FSCReport",
    "IterationSummary",
    "ParticleStack",
    "PoseComparison",
    "ProjectionMatching",
    "RefineOptions",
    "RefinementState",
    "SimulatedParticles",
    "angular_distance",
    "compare_poses",
    "electron_wavelength",
    "euler_to_matrix",
    "fourier_shell_correlation",
    "gold_standard_fsc",
    "healpix_directions",
    "map_to_truth_fsc",
    "matrix_to_euler",
    "orientation_grid",
    "plot_fsc",
    "random_rotations",
    "read_map",
    "read_particles",
    "reconstruct_particles",
    "refine_particles",
    "resample_map",
    "resolution",
    "simulate_particles",
    "solvent_mask",
    "stack_from_simulation",
    "starting_reference",
    "write_map",
    "write_refinement",
    "write_simulation",
]
