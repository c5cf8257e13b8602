"""Crystallographic refinement of an atomic model against structure-factor amplitudes, on the engine.

gemmi does what the field has in a library (file formats, structure factors by FFT, bulk-solvent mask,
scaling, monomer library and topology, riding hydrogens, twin laws); the loop, the stop rules, the free
set and the restraint weighting are refinekit's (:mod:`refinekit.core`).

>>> import pathlib
>>> from refinekit.xtal import r_factors
>>> data = pathlib.Path(__file__).parent.parent / "data" / "xtal"
>>> rep = r_factors(data / "5wkd.pdb", data / "r5wkdsf.ent")
>>> round(rep.r_work, 2)
0.2
"""

from .api import (
    RefinementJob,
    XtalRefinementResult,
    plot_r_factors,
    prepare_refinement,
    refine_structure,
    write_outputs,
    write_plot,
)
from .rfactors import RFactorReport, r_factors

__all__ = [
    "RFactorReport",
    "RefinementJob",
    "XtalRefinementResult",
    "plot_r_factors",
    "prepare_refinement",
    "r_factors",
    "refine_structure",
    "write_outputs",
    "write_plot",
]
