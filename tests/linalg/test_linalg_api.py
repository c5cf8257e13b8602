"""The ``solve`` contract (numpy's shapes and dtypes, stacks, sparse input, bad input), the stop rules,
the fallbacks, and the pieces: norm estimator, GMRES, 16-bit rounding."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from refinekit.core import InputError, Status, StopRefinement, refine
from refinekit.linalg import SingularMatrixError, solve
from refinekit.linalg.bounds import estimate_one_norms
from refinekit.linalg.gmres import fgmres
from refinekit.linalg.precision import round_to_bfloat16
from refinekit.linalg.problem import IterativeRefinementProblem
from refinekit.linalg.systems import DenseSystem

from .linalg_helpers import U, forward_errors, load_real, reference_solution, right_hand_side, with_condition


def wilkinson(n: int) -> np.ndarray:
    """Wilkinson's matrix, transposed: LU with partial pivoting of its transpose (which is what the
    solver factors: see refinekit.linalg.systems) grows the last column to 2**(n-1)."""
    a = np.eye(n) - np.tril(np.ones((n, n)), -1)
    a[:, -1] = 1.0
    return a.T


# ---------------------------------------------------------------------------- numpy's contract
@pytest.mark.parametrize("b_shape", [(30,), (30, 1), (30, 4)])
def test_shapes_match_numpy(b_shape):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 30)) + 30 * np.eye(30)
    b = rng.standard_normal(b_shape)
    result = solve(a, b)
    expected = np.linalg.solve(a, b)
    assert result.x.shape == expected.shape and result.x.dtype == np.float64
    np.testing.assert_allclose(result.x, expected, rtol=1e-13, atol=1e-14)
    assert np.shape(result.forward_error_bounds) == b_shape[1:]
    assert isinstance(result.forward_error_bound, float)


def test_integer_and_float32_inputs_are_solved_in_double():
    a = np.array([[4, 1], [2, 3]], dtype=np.int64)
    result = solve(a, np.array([1, 2], dtype=np.int32))
    assert result.x.dtype == np.float64
    np.testing.assert_allclose(result.x, [0.1, 0.6], rtol=1e-15)
    result32 = solve(a.astype(np.float32), np.array([1, 2], dtype=np.float32))
    assert result32.x.dtype == np.float64 and np.allclose(result32.x, [0.1, 0.6], rtol=1e-15)


def test_stacks_broadcast_like_numpy():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 3, 20, 20)) + 20 * np.eye(20)
    b_vector = rng.standard_normal(20)
    b_stack = rng.standard_normal((3, 20, 2))
    for b in (b_vector, b_stack):
        result = solve(a, b)
        expected = np.linalg.solve(a, b)
        assert result.x.shape == expected.shape
        np.testing.assert_allclose(result.x, expected, rtol=1e-12, atol=1e-13)
        assert result.success and len(result.items) == 6
    assert solve(a, b_stack).forward_error_bounds.shape == (2, 3, 2)


def test_a_failing_member_of_a_stack_fails_the_stack():
    a = np.stack([np.eye(5) * 2, with_condition(5, 1e18, seed=3)])
    result = solve(a, np.ones(5))
    assert not result.success
    assert result.items[0].success and not result.items[1].success
    assert "1 of 2 systems solved" in result.message


def test_empty_system():
    result = solve(np.zeros((0, 0)), np.zeros(0))
    assert result.success and result.x.shape == (0,)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_sparse_formats(fmt):
    a = load_real("west0479", sparse=True).asformat(fmt)
    dense = a.toarray()
    b = right_hand_side(dense)
    result = solve(a, b)
    assert result.success and result.path == "ir"
    normwise, _ = forward_errors(result.x, reference_solution(dense, b))
    assert normwise <= result.forward_error_bound


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("a", "b", "words"), [
    (np.ones((3, 4)), np.ones(3), "square"),
    (np.ones(3), np.ones(3), "square"),
    (np.eye(3), np.ones(4), "rows"),
    (np.eye(3), np.ones((2, 3, 1)), "stack"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), np.ones(2), "NaN or Inf"),
    (np.array([[1.0, np.inf], [0.0, 1.0]]), np.ones(2), "NaN or Inf"),
    (np.eye(2), np.array([1.0, np.nan]), "NaN or Inf"),
    (np.eye(2) * (1 + 1j), np.ones(2), "complex"),
    (np.eye(2), np.ones(2) * 1j, "complex"),
    (np.array([["a", "b"], ["c", "d"]]), np.ones(2), "numeric"),
    (np.eye(2), np.float64(1.0), "scalar"),
])
def test_bad_input_is_refused(a, b, words):
    with pytest.raises(InputError, match=words):
        solve(a, b)


def test_sparse_nan_is_refused():
    a = sp.csr_array(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(InputError, match="NaN or Inf"):
        solve(a, np.ones(2))


@pytest.mark.parametrize(("option", "value"), [
    ("precision", "quad"), ("precision", "tf32"), ("method", "cholesky"), ("tol", -1.0), ("tol", 1.0),
    ("max_iter", 0), ("max_iter", 2.5), ("device", "tpu"),
])
def test_bad_options_are_refused(option, value):
    with pytest.raises(InputError):
        solve(np.eye(2), np.ones(2), **{option: value})


def test_sixteen_bit_sparse_is_refused():
    with pytest.raises(InputError, match="SuperLU"):
        solve(sp.eye_array(3, format="csr"), np.ones(3), precision="half")


@pytest.mark.parametrize("sparse", [False, True])
def test_singular_matrix_raises(sparse):
    a = np.array([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 1.0]])  # exactly singular, no zero row
    with pytest.raises(SingularMatrixError) as info:
        solve(sp.csr_array(a) if sparse else a, np.ones(3))
    assert isinstance(info.value, np.linalg.LinAlgError) and isinstance(info.value, InputError)
    with pytest.raises(SingularMatrixError, match="row 1 is zero"):
        solve(np.array([[1.0, 1.0], [0.0, 0.0]]), np.ones(2))


@pytest.mark.parametrize("kind", ["csr_array", "coo_matrix"])
def test_complex_sparse_is_refused(kind):
    """A complex sparse A was cast to float64: its imaginary part dropped, and success reported."""
    a = getattr(sp, kind)(np.array([[2.0 + 1.0j, 0.0], [0.0, 1.0]]))
    with pytest.raises(InputError, match="complex"):
        solve(a, np.ones(2))


def test_non_square_sparse_is_refused_as_such():
    with pytest.raises(InputError, match="square"):  # it said "b has 3 rows but A is 4x4"
        solve(sp.csr_array(np.ones((3, 4))), np.ones(3))


@pytest.mark.parametrize(("a_shape", "b_shape"), [((0, 4, 4), (4,)), ((0, 4, 4), (4, 2)),
                                                  ((3, 4, 4), (0, 1, 4, 1)), ((2, 0, 4, 4), (4,))])
def test_empty_stacks_like_numpy(a_shape, b_shape):
    """A stack of no systems is numpy's empty answer (it was a ValueError from max())."""
    a, b = np.ones(a_shape) + np.eye(4), np.ones(b_shape)
    result = solve(a, b)
    expected = np.linalg.solve(a, b)
    assert result.success and result.x.shape == expected.shape
    # one figure per right-hand side: x's shape without its rows
    per_rhs = expected.shape[:-1] if len(b_shape) == 1 else expected.shape[:-2] + expected.shape[-1:]
    assert np.shape(result.forward_error_bounds) == np.shape(result.backward_errors) == per_rhs


@pytest.mark.parametrize("device", ["cudafoo", "cuda:x", "cuda0"])
def test_malformed_cuda_device_is_refused(device):
    with pytest.raises(InputError, match="device must be"):  # torch's RuntimeError before
        solve(np.eye(2), np.ones(2), device=device)


# --------------------------------------------------------------------------- stop rules, routes
def test_corrections_shrink_until_they_stop_shrinking():
    a = with_condition(150, 1e5, seed=5)
    b = right_hand_side(a)
    result = solve(a, b, method="ir")
    steps = [r.step for r in result.history if r.step is not None]
    assert result.success and result.path == "ir"
    # contracting all the way, until the residual was rounding noise in every component, or the last
    # correction was no longer half the one before it
    if "componentwise backward error" in result.message:
        assert all(later <= 0.5 * earlier for earlier, later in itertools.pairwise(steps))
        assert result.history[-1].figures["componentwise_backward_error"] <= 2 * U
    else:
        assert all(later <= 0.5 * earlier for earlier, later in itertools.pairwise(steps[:-1]))
        assert steps[-1] > 0.5 * steps[-2] or steps[-1] <= U
    assert [p for p, _ in result.correction_history] == ["ir"] * len(result.history)


def test_a_looser_tol_stops_earlier():
    a = with_condition(150, 1e5, seed=5)
    b = right_hand_side(a)
    tight, loose = solve(a, b), solve(a, b, tol=1e-6)
    assert loose.success and loose.iterations < tight.iterations
    assert loose.history[-1].step <= 1e-6
    assert loose.backward_error <= max(1e-6, np.sqrt(150) * U)


def test_max_iter_caps_each_route_and_max_cycles_is_not_success():
    a = with_condition(150, 1e6, seed=6)
    result = solve(a, right_hand_side(a), method="ir", max_iter=2)
    assert not result.success and result.status is Status.MAX_CYCLES and result.iterations == 2


@pytest.mark.parametrize("precision", ["half", "bfloat16"])
def test_sixteen_bit_factors_solve_a_well_conditioned_system_by_plain_refinement(precision):
    """The 16-bit factors are those of ``2**12 A_s`` (half: kept in range); their solves must be scaled
    back exactly, so that plain refinement contracts from its first correction on (it once was off by
    2**24 and only GMRES-IR, which ignores the scale of its preconditioner, hid that)."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((80, 80)) + 20 * np.eye(80)
    b = rng.standard_normal(80)
    result = solve(a, b, precision=precision)
    assert result.success and result.path == "ir"
    steps = [r.step for r in result.history if r.step is not None]
    assert steps[0] < 0.1 and len(result.attempts) == 1


def test_growth_overflowing_half_falls_back_and_ir_alone_reports_failure():
    a = wilkinson(40)  # U's last column reaches 2**39: beyond float16's range
    b = a @ np.ones(40)
    result = solve(a, b, precision="half")
    assert result.success and result.path == "double"
    assert result.attempts[0].status == "not_run" and "overflowed" in result.attempts[0].message
    alone = solve(a, b, precision="half", method="ir")
    assert not alone.success and alone.status is Status.NON_FINITE and np.all(np.isnan(alone.x))


def test_non_finite_correction_stops_the_run():
    a = np.eye(3)
    system = DenseSystem(a, np.ones((3, 1)), "single")

    class Broken:
        route = "ir"

        def initial(self):
            return np.zeros((3, 1))

        def correct(self, r, r_norm=None):
            return r * np.nan

    run = refine(IterativeRefinementProblem(system, Broken()), max_cycles=5, stagnation=0.5)
    assert run.status is Status.NON_FINITE and not run.success


def test_divergence_is_judged_above_the_converged_level_only():
    a = np.eye(3)
    system = DenseSystem(a, np.ones((3, 1)), "single")

    class Growing:
        route = "ir"

        def __init__(self):
            self.k = 0

        def initial(self):
            return np.ones((3, 1)) * (1 + 1e-10)

        def correct(self, r, r_norm=None):
            self.k += 1
            return np.full((3, 1), 10.0**self.k)

    problem = IterativeRefinementProblem(system, Growing(), converged_backward_error=1e-15)
    run = refine(problem, max_cycles=10, divergence=math.inf)
    assert run.status is Status.DIVERGED and run.best_cycle == 0
    # a 1000-fold rise among backward errors below the converged level is noise, not divergence
    quiet = IterativeRefinementProblem(system, Growing(), converged_backward_error=1e-8)
    quiet.check(np.ones((3, 1)) * (1 + 1e-15))
    quiet.check(np.ones((3, 1)) * (1 + 1e-11))
    with pytest.raises(StopRefinement):
        quiet.check(np.ones((3, 1)) * 2.0)


# ------------------------------------------------------------------------------------- pieces
@pytest.mark.parametrize("seed", range(5))
def test_norm_estimator_is_a_lower_bound_and_usually_exact(seed):
    rng = np.random.default_rng(seed)
    matrices = [rng.standard_normal((40, 40)) * np.exp(2 * rng.standard_normal((40, 40))) for _ in range(3)]

    def apply(v):
        return np.stack([m @ v[:, j] for j, m in enumerate(matrices)], axis=1)

    def apply_t(v):
        return np.stack([m.T @ v[:, j] for j, m in enumerate(matrices)], axis=1)

    estimates = estimate_one_norms(apply, apply_t, 40, 3)
    exact = np.array([np.linalg.norm(m, 1) for m in matrices])
    assert np.all(estimates <= exact * (1 + 1e-12)) and np.all(estimates >= exact / 3)


def test_gmres_solves_and_gives_up_when_hopeless():
    rng = np.random.default_rng(2)
    a = np.eye(50) + 0.1 * rng.standard_normal((50, 50))
    b = rng.standard_normal(50)
    out = fgmres(lambda v: a @ v, None, b, tol=1e-12, max_iter=50, new_basis=lambda m: np.zeros((m, 50)))
    assert out.converged and np.linalg.norm(a @ out.x - b) <= 1e-11 * np.linalg.norm(b)
    # a rotation-like matrix: GMRES makes no progress until the last iteration
    shift = np.roll(np.eye(50), 1, axis=0)
    slow = fgmres(lambda v: shift @ v, None, np.eye(50)[0], tol=1e-10, max_iter=30,
                  new_basis=lambda m: np.zeros((m, 50)), give_up_after=5)
    assert not slow.converged and slow.iterations < 30


def test_gmres_ir_that_runs_out_of_budget_is_no_success():
    from refinekit.core import RefinementResult
    from refinekit.core.result import CycleRecord
    from refinekit.linalg.api import _judge

    history = [CycleRecord(0, 1e-7, None, None, 0.0), CycleRecord(1, 1e-16, None, 0.9, 0.0)]
    run = RefinementResult(x=None, status=Status.STAGNATED, message="budget", n_cycles=1, history=history,
                           best_cycle=1)
    ok, _, message = _judge(run, "gmres-ir", 1e-14, "GMRES-IR used up its budget of 8 GMRES iterations")
    assert not ok and "budget" in message
    assert _judge(run, "gmres-ir", 1e-14)[0]  # stagnation of the corrections themselves is convergence


def test_scipy_blas_products_match_numpy():
    from refinekit.linalg.systems import product

    rng = np.random.default_rng(9)
    a = rng.standard_normal((40, 40))
    x, b = rng.standard_normal((40, 3)), rng.standard_normal((40, 3))
    np.testing.assert_allclose(product(a, x, alpha=-1.0, add=b), b - a @ x, rtol=0, atol=1e-13)
    np.testing.assert_allclose(product(a, x[:, :1], alpha=-1.0, add=b[:, :1]), b[:, :1] - a @ x[:, :1],
                               rtol=0, atol=1e-13)
    np.testing.assert_allclose(product(a.astype(np.float32), x[:, 0].astype(np.float32)),
                               a @ x[:, 0], rtol=1e-5, atol=1e-5)
    assert np.array_equal(b, b.copy())  # the added block is not overwritten


def test_bfloat16_rounding_known_values():
    values = np.array([1.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 3.14159265, -2.0**-130, np.inf], dtype=np.float32)
    rounded = round_to_bfloat16(values.copy())
    # ties to even: 1 + 2**-8 is halfway between 1 and 1 + 2**-7 -> 1; 1 + 3*2**-8 -> 1 + 2**-6
    assert rounded.tolist()[:3] == [1.0, 1.0, 1.0 + 2.0**-6]
    assert rounded[3] == np.float32(3.140625) and rounded[5] == np.inf
    assert np.all(np.abs(rounded[:5] - values[:5]) <= 2.0**-8 * np.abs(values[:5]))


def test_linalg_imports_and_solves_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np; from refinekit.linalg import solve\n"
            "r = solve(np.array([[2.0, 1.0], [1.0, 3.0]]), np.ones(2)); assert r.success\n"
            "from refinekit.core import InputError\n"
            "try:\n    solve(np.eye(2), np.ones(2), device='cuda')\nexcept InputError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "needs torch" in out.stdout


def test_result_json_contract():
    result = solve(np.array([[2.0, 1.0], [1.0, 3.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    data = result.to_dict()
    for key in ("status", "success", "message", "path", "precision", "iterations", "backward_error",
                "forward_error_bound", "forward_error_bounds", "componentwise_error_bounds", "attempts",
                "history", "alarms"):
        assert key in data
    assert data["success"] is True and len(data["forward_error_bounds"]) == 2
    assert {"backward_error", "step"} <= set(data["history"][-1])
    result.to_json()  # JSON-safe (non-finite numbers become null)
    assert "error bound" in result.report(full=True)


def test_without_bounds_a_numerically_singular_matrix_is_still_no_success():
    a = with_condition(80, 1e18, seed=4)
    result = solve(a, right_hand_side(a), error_bounds=False)
    assert result.forward_error_bound is None and result.path == "double"
    assert not result.success and any(alarm.kind == "ill_conditioned" for alarm in result.alarms)
    easy = solve(with_condition(80, 1e3, seed=4), np.ones(80), error_bounds=False)
    assert easy.success and easy.forward_error_bound is None


@pytest.mark.parametrize("method", ["auto", "ir", "double", "gmres-ir"])
@pytest.mark.parametrize("sparse", [False, True])
def test_right_hand_side_near_the_top_of_double_range_is_solved_exactly(method, sparse):
    # its largest entry is >= 2**1023: the power of two normalising it must stay finite (2**-1000 at
    # most), not become 2**-1024, which is 0 and turned every correction into NaN
    a = sp.eye_array(3, format="csr") if sparse else np.eye(3)
    result = solve(a, [1e308, 1.0, 1.0], method=method)
    assert result.success, result.attempts
    assert np.array_equal(result.x, [1e308, 1.0, 1.0])


def test_power_of_two_scales_stay_finite_and_nonzero():
    from refinekit.linalg.systems import power_of_two_scale, powers_of_two_for

    largest = np.array([0.0, np.inf, np.nan, 5e-324, 1e-300, 0.75, 3.0, 1e300, 1e308, np.finfo(float).max])
    scales = powers_of_two_for(largest)
    assert np.all(np.isfinite(scales)) and np.all(scales > 0)
    assert np.array_equal(scales, [power_of_two_scale(float(v)) for v in largest])
    assert np.array_equal(scales[:3], [1.0, 1.0, 1.0]) and scales[5] == 1.0 and scales[6] == 0.25


@pytest.mark.parametrize("device", ["cpu", "torch-cpu"])
def test_matrices_at_the_edges_of_the_double_range_are_equilibrated_without_overflow(device):
    """Rows of subnormal magnitude need a scale factor beyond 2**1023: it is clipped there (it was Inf,
    with an overflow warning, and the solve reported a non-finite solution). Subnormal arithmetic
    limits the residual to ~1e-14 relative, so x is that accurate and the run says it did not reach
    double precision; at 1e-300 (normal numbers) and 1e300 it converges."""
    if device == "torch-cpu":
        pytest.importorskip("torch")
    a = with_condition(40, 10.0, seed=2)
    x = np.random.default_rng(2).standard_normal(40)
    for scale, tolerance in ((1e-310, 1e-12), (1e-300, 1e-14), (1e300, 1e-14)):
        result = solve(a * scale, (a @ x) * scale, device=device)
        assert np.max(np.abs(result.x - x)) <= tolerance * np.max(np.abs(x)), (scale, result.message)
        assert result.success == (scale != 1e-310), (scale, result.message)
