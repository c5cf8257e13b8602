"""The refinement loop for any parametric model: named parameters, a free set, Gaussian priors, and a
Levenberg-Marquardt correction with geodesic acceleration."""

from .api import FitResult, fit, fit_nist
from .expression import Expression
from .io import NistProblem, read_csv, read_nist
from .parameters import Parameter, Parameters, Prior, parse_param_spec

__all__ = [
    "Expression",
    "FitResult",
    "NistProblem",
    "Parameter",
    "Parameters",
    "Prior",
    "fit",
    "fit_nist",
    "parse_param_spec",
    "read_csv",
    "read_nist",
]
