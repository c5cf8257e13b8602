"""The ``device="cuda"`` code, run on torch's CPU backend (``device="torch-cpu"``) so that CI covers it:
every precision, stacks, tensors in and out, GMRES-IR on torch tensors, and honest bounds.

``REFINEKIT_TORCH_DEVICE=cuda`` runs the same tests on a GPU (benchmarks/linalg_gpu.py does).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from refinekit.linalg import solve

from .linalg_helpers import U, forward_errors, load_real, reference_solution, right_hand_side, with_condition

torch = pytest.importorskip("torch")
DEVICE = os.environ.get("REFINEKIT_TORCH_DEVICE", "torch-cpu")
TENSOR_DEVICE = "cpu" if DEVICE == "torch-cpu" else DEVICE


@pytest.mark.parametrize("precision", ["single", "half", "bfloat16", "tf32", "double"])
def test_every_precision_on_a_real_matrix(precision):
    a = load_real("west0479")
    b = right_hand_side(a)
    reference = reference_solution(a, b)
    numpy_error, _ = forward_errors(np.linalg.solve(a, b), reference)
    result = solve(a, b, device=DEVICE, precision=precision)
    assert isinstance(result.x, np.ndarray) and result.device.startswith(TENSOR_DEVICE)
    normwise, componentwise = forward_errors(result.x, reference)
    assert result.success, result.message
    assert normwise <= result.forward_error_bound and componentwise <= result.componentwise_error_bound
    assert normwise <= 10 * max(numpy_error, a.shape[0] * U)
    assert result.backward_error <= np.sqrt(a.shape[0]) * U
    if precision == "double":
        assert result.path == "double"


def test_tensors_in_tensors_out_and_stacks():
    rng = np.random.default_rng(4)
    a = torch.as_tensor(rng.standard_normal((3, 40, 40)) + 10 * np.eye(40), device=TENSOR_DEVICE)
    b = torch.as_tensor(rng.standard_normal((3, 40, 2)), device=TENSOR_DEVICE)
    result = solve(a, b, precision="half")
    assert isinstance(result.x, torch.Tensor) and result.x.shape == (3, 40, 2)
    assert result.x.device == a.device
    expected = np.linalg.solve(a.cpu().numpy(), b.cpu().numpy())
    np.testing.assert_allclose(result.x.cpu().numpy(), expected, rtol=1e-12, atol=1e-13)
    assert result.success and result.forward_error_bounds.shape == (3, 2)
    vector = solve(a, b[0, :, 0])
    assert vector.x.shape == (3, 40) and vector.forward_error_bounds.shape == (3,)


def test_gmres_ir_runs_on_tensors():
    a = load_real("rajat19")
    b = right_hand_side(a)
    reference = reference_solution(a, b)
    result = solve(a, b, device=DEVICE, method="gmres-ir")
    assert result.success and result.path == "gmres-ir", result.attempts
    assert result.attempts[0].inner_iterations > 0
    normwise, _ = forward_errors(result.x, reference)
    assert normwise <= result.forward_error_bound


def test_hard_stack_falls_back_to_double_without_gmres():
    a = np.stack([with_condition(60, 1e11, seed=s) for s in range(2)])
    b = np.stack([right_hand_side(m) for m in a])[..., None]
    result = solve(a, b, device=DEVICE)
    assert [attempt.path for attempt in result.attempts] == ["ir", "double"]
    for i in range(2):
        normwise, _ = forward_errors(result.x[i, :, 0], reference_solution(a[i], b[i, :, 0]))
        assert normwise <= result.forward_error_bounds[i]


def test_blocked_lu_matches_the_matrix():
    from refinekit.linalg.torch_backend import blocked_lu

    rng = np.random.default_rng(5)
    a = torch.as_tensor(rng.standard_normal((70, 70)), dtype=torch.float32, device=TENSOR_DEVICE)
    for precision, tolerance in (("single", 1e-5), ("tf32", 1e-2), ("bfloat16", 5e-2), ("half", 1e-2)):
        lu, perm = blocked_lu(a.clone(), precision, block=16)
        lower = torch.tril(lu, -1) + torch.eye(70, device=TENSOR_DEVICE)
        error = (lower @ torch.triu(lu) - a[perm]).abs().max() / a.abs().max()
        assert float(error) < tolerance, (precision, float(error))


def test_bad_torch_input():
    from refinekit.core import InputError

    with pytest.raises(InputError, match="NaN or Inf"):
        solve(torch.tensor([[1.0, float("nan")], [0.0, 1.0]], device=TENSOR_DEVICE), torch.ones(2))
    with pytest.raises(InputError, match="square"):
        solve(torch.ones(2, 3, device=TENSOR_DEVICE), torch.ones(2))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            solve(np.eye(2), np.ones(2), device="cuda")


def test_odd_torch_input_is_refused_like_numpy_input():
    """A stack of right-hand sides for one matrix is refused as on the CPU (it was solved there and
    refused here); sparse tensors, meta tensors and scipy.sparse matrices raise InputError, not torch's
    RuntimeError or "dtype object"."""
    import scipy.sparse as sp

    from refinekit.core import InputError

    for device in (DEVICE, "cpu"):
        with pytest.raises(InputError, match="stack"):
            solve(np.eye(3) * 2, np.ones((2, 3, 1)), device=device)
    with pytest.raises(InputError, match="sparse tensor"):
        solve(torch.eye(3, dtype=torch.float64).to_sparse(), torch.ones(3))
    with pytest.raises(InputError, match="meta"):
        solve(torch.eye(3, device="meta"), torch.ones(3))
    with pytest.raises(InputError, match=r"scipy\.sparse"):
        solve(sp.eye_array(3, format="csr"), np.ones(3), device=DEVICE)


def test_empty_stack_of_tensors():
    result = solve(torch.ones(0, 4, 4, dtype=torch.float64, device=TENSOR_DEVICE), torch.ones(4), device=DEVICE)
    assert isinstance(result.x, torch.Tensor) and tuple(result.x.shape) == (0, 4)
    assert result.success and np.shape(result.forward_error_bounds) == (0,)
    result = solve(np.ones((2, 0, 4, 4)), np.ones((4, 2)), device=DEVICE)
    assert result.x.shape == (2, 0, 4, 2) and np.shape(result.backward_errors) == (2, 0, 2)


def test_backward_errors_agree_with_numpy_on_nan_and_zero_columns():
    """NaN in x and r is an Inf backward error on both backends (never 0, which reads as converged);
    a zero column of b solved by x = 0 is exact (0)."""
    from refinekit.linalg.systems import DenseSystem
    from refinekit.linalg.torch_backend import TorchSystem

    rng = np.random.default_rng(8)
    a = rng.standard_normal((6, 6)) + 6 * np.eye(6)
    b = rng.standard_normal((6, 3))
    b[:, 2] = 0.0
    x = np.linalg.solve(a, b)
    x[:, 0] = np.nan  # column 0: x and r both NaN
    r = b - a @ x
    numpy_system = DenseSystem(a, b, "single")
    torch_system = TorchSystem(torch.as_tensor(a), torch.as_tensor(b), "single")
    expected = numpy_system.backward_errors(x, r)
    got = torch_system.backward_errors(torch.as_tensor(x), torch.as_tensor(r))
    assert expected[0] == np.inf and got[0] == np.inf
    assert expected[2] == 0.0 and got[2] == 0.0
    np.testing.assert_allclose(got, expected, rtol=1e-6)  # ||A|| bounded in float32 by numpy


def test_tf32_settings_are_restored_whichever_api_set_them():
    """The TF32 route sets torch's TF32 flag for its products only. A caller who set torch >= 2.9's
    ``fp32_precision`` (reading the legacy ``allow_tf32`` then raises) got a RuntimeError; a caller's
    "medium" came back as "high"."""
    matmul = torch.backends.cuda.matmul
    a = with_condition(40, 1e2, seed=3)
    b = right_hand_side(a)
    saved_legacy = torch.get_float32_matmul_precision()
    saved_new = getattr(matmul, "fp32_precision", None)
    try:
        torch.set_float32_matmul_precision("medium")
        assert solve(a, b, device=DEVICE, precision="tf32").success
        assert torch.get_float32_matmul_precision() == "medium"
        if saved_new is not None:
            torch.set_float32_matmul_precision("highest")
            matmul.fp32_precision = "tf32"  # the new API alone
            assert solve(a, b, device=DEVICE, precision="tf32").success
            assert matmul.fp32_precision == "tf32"
            matmul.fp32_precision = "ieee"
            assert solve(a, b, device=DEVICE, precision="tf32").success
            assert matmul.fp32_precision == "ieee"
    finally:
        torch.set_float32_matmul_precision(saved_legacy)
        if saved_new is not None:
            matmul.fp32_precision = saved_new


@pytest.mark.parametrize("precision", ["half", "tf32"])
def test_blocked_lu_reads_the_device_once_per_block_and_moves_only_swapped_rows(monkeypatch, precision):
    """On a GPU each read of a tensor on the host waits for the device: the pivots of each panel must be
    read, nothing else (the zero-pivot check is done once, the float16 scale stays on the device). The
    row swaps of a panel move at most 2 x block rows: gathering the whole trailing matrix per block
    copied up to all of A each time."""
    from refinekit.linalg.torch_backend import blocked_lu

    n, block = 70, 16
    a = torch.as_tensor(np.random.default_rng(6).standard_normal((n, n)), dtype=torch.float32,
                        device=TENSOR_DEVICE)
    reads, gathered = [], []
    to_cpu, getitem = torch.Tensor.cpu, torch.Tensor.__getitem__

    def counting_cpu(self, *args, **kwargs):
        reads.append(tuple(self.shape))
        return to_cpu(self, *args, **kwargs)

    def recording_getitem(self, index):
        if isinstance(index, torch.Tensor) and index.ndim == 1:
            gathered.append(index.numel())
        return getitem(self, index)

    def refused(self, *args, **kwargs):
        raise AssertionError("a tensor was read on the host inside the blocked LU")

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    monkeypatch.setattr(torch.Tensor, "__getitem__", recording_getitem)
    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refused)
    lu, perm = blocked_lu(a.clone(), precision, block=block)
    monkeypatch.undo()
    blocks = -(-n // block)
    assert len(reads) == blocks + 1  # the pivots of each panel, and the zero-pivot check at the end
    assert gathered and max(gathered) <= 2 * block
    lower = torch.tril(lu, -1) + torch.eye(n, device=TENSOR_DEVICE)
    assert float((lower @ torch.triu(lu) - a[perm]).abs().max() / a.abs().max()) < 1e-2


def test_blocked_lu_still_reports_an_exact_zero_pivot():
    from refinekit.linalg.systems import FactorizationFailed
    from refinekit.linalg.torch_backend import blocked_lu

    a = torch.eye(40, device=TENSOR_DEVICE)
    a[20, 20] = 0.0
    with pytest.raises(FactorizationFailed, match=r"U\(21,21\)"):
        blocked_lu(a, "half", block=16)


def test_a_cuda_index_torch_does_not_have_is_refused(monkeypatch):
    from refinekit.core import InputError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InputError, match=r"torch sees 1 CUDA device\(s\), cuda:0 to cuda:0"):
        solve(np.eye(2), np.ones(2), device="cuda:7")
