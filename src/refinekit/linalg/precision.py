"""The precisions a factorization may run in, their unit roundoffs, and rounding to the 16-bit formats.

The residual and the solution are always float64 (double); only the LU factorization (the O(n^3)
part) runs in the low precision. On the CPU, LAPACK offers single and double only: "half" and
"bfloat16" are emulated there by rounding the (scaled) matrix to the 16-bit format, factoring it in
single precision and rounding the factors to the 16-bit format again, so the factors carry exactly the
11 (half) or 8 (bfloat16) significant bits a 16-bit factorization stores. That reproduces the accuracy
of a 16-bit LU, not its speed: on the CPU, "single" is the fast choice.
"""

from __future__ import annotations

import numpy as np

from ..core import InputError

#: Unit roundoff of each precision (half the distance from 1 to the next number).
UNIT_ROUNDOFF: dict[str, float] = {
    "half": 2.0**-11,
    "bfloat16": 2.0**-8,
    "tf32": 2.0**-11,
    "single": 2.0**-24,
    "double": 2.0**-53,
}

PRECISIONS = ("auto", *UNIT_ROUNDOFF)

#: Largest finite value of the 16-bit formats; a scaled matrix is kept well below it.
HALF_MAX = 65504.0

DOUBLE_EPS = UNIT_ROUNDOFF["double"]


class SparsePrecisionError(InputError):
    """A precision SuperLU does not offer, asked of a sparse matrix (a caller may offer to densify it)."""


def resolve_precision(precision: str, *, device: str, sparse: bool) -> str:
    """The precision actually used: ``auto`` becomes ``single``; invalid combinations are refused.

    >>> resolve_precision("auto", device="cpu", sparse=False)
    'single'
    """
    if not isinstance(precision, str) or precision.lower() not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    precision = precision.lower()
    if precision == "auto":
        return "single"
    if precision == "tf32" and device == "cpu":
        raise InputError("precision 'tf32' is a GPU tensor-core mode: use device='cuda' "
                         "(or 'single' on the CPU)")
    if sparse and precision not in ("single", "double"):
        raise SparsePrecisionError(f"a sparse matrix is factored by SuperLU in single or double precision, "
                         f"not {precision!r}")
    return precision


def round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """Round float32 ``values`` in place to the nearest bfloat16 (ties to even); returns them.

    >>> round_to_bfloat16(np.array([1.0 + 2.0**-9, 3.14159], dtype=np.float32)).tolist()
    [1.0, 3.140625]
    """
    if values.dtype != np.float32:
        raise TypeError("round_to_bfloat16 needs a float32 array")
    bits = values.view(np.uint32)
    finite = np.isfinite(values)
    # add half an ulp of bfloat16 (plus the lowest kept bit, for ties to even), then cut 16 bits
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) & np.uint32(0xFFFF0000)
    np.copyto(bits, rounded, where=finite)
    return values


def round_in_place(values: np.ndarray, precision: str) -> np.ndarray:
    """Round a float32 array in place to ``precision`` (half or bfloat16; single is left alone)."""
    if precision == "half":
        with np.errstate(over="ignore"):
            values[...] = values.astype(np.float16)
    elif precision == "bfloat16":
        round_to_bfloat16(values)
    return values
