"""Mixed-precision iterative refinement of ``A x = b``: a cheap low-precision LU, double-precision
residuals, honest stop rules, GMRES-IR and double-precision fallbacks, and error bounds that bound.

>>> import numpy as np
>>> from refinekit.linalg import solve
>>> result = solve(np.array([[2.0, 1.0], [1.0, 3.0]]), np.array([3.0, 5.0]))
>>> result.success, result.x.round(12).tolist()
(True, [0.8, 1.4])
"""

from .api import Attempt, SolveResult, solve
from .precision import PRECISIONS, UNIT_ROUNDOFF
from .systems import SingularMatrixError

__all__ = ["PRECISIONS", "UNIT_ROUNDOFF", "Attempt", "SingularMatrixError", "SolveResult", "solve"]
