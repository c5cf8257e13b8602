"""Crystallographic refinement of an atomic model against structure-factor amplitudes, on the engine.

gemmi does what the field has in a library (file formats, structure factors by FFT, bulk-solvent mask,
scaling, monomer library and topology, riding hydrogens, twin laws); the loop, the stop rules, the free
set and the restraint weighting are refinekit's (:mod:`refinekit.core`).

>>> from refinekit.xtal import r_factors                       # doctest: +SKIP
>>> r_factors("3zt9.cif.gz", "r3zt9sf.ent.gz").r_free           # doctest: +SKIP
0.1892...
"""

from .rfactors import RFactorReport, r_factors

__all__ = ["RFactorReport", "r_factors"]
