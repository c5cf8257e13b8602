"""The refinement engine: guess -> check -> correct -> repeat, with an honest stop, a free set and
restraints. Imports numpy and scipy only, and knows nothing of any domain."""

from .atomic import (
    atomic_outputs,
    atomic_write,
    atomic_write_bytes,
    atomic_write_files,
    atomic_write_text,
    output_folder,
)
from .callbacks import Callback, JsonLinesLog
from .checkpoint import load_checkpoint, save_checkpoint
from .errors import InputError
from .problem import (
    Problem,
    RefinementProblem,
    Restraint,
    Scores,
    evaluate_restraints,
    relative_norm,
)
from .refiner import Refiner, refine
from .result import Alarm, CycleRecord, RefinementResult
from .status import Status, StopRefinement
from .validation import FreeFlags, HalfSets, HoldOut, KFold, OverfitMonitor
from .weights import WeightChoice, WeightTrial, choose_weight

__all__ = [
    "Alarm",
    "Callback",
    "CycleRecord",
    "FreeFlags",
    "HalfSets",
    "HoldOut",
    "InputError",
    "JsonLinesLog",
    "KFold",
    "OverfitMonitor",
    "Problem",
    "RefinementProblem",
    "RefinementResult",
    "Refiner",
    "Restraint",
    "Scores",
    "Status",
    "StopRefinement",
    "WeightChoice",
    "WeightTrial",
    "atomic_outputs",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_files",
    "atomic_write_text",
    "choose_weight",
    "evaluate_restraints",
    "load_checkpoint",
    "output_folder",
    "refine",
    "relative_norm",
    "save_checkpoint",
]
