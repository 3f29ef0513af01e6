"""detr_ops.batched_linear_sum_assignment against a loop over scipy, on every device x backend:
each problem's matching must be scipy's, index for index, and failures must be reported per item."""
import numpy as np
import pytest
import torch

import detr_ops
from cases import device_backend_param, dtype_param
from detr_ops.ops.linear_sum_assignment import BAD_SIZE, INFEASIBLE, INVALID, OK
from lsa_problems import KINDS, make, scipy_outcome


def small(backend):
    """Largest side used per backend: the Triton interpreter runs kernels in numpy, slowly."""
    return 6 if backend == "triton" else 14


def expected_for(cost: torch.Tensor, num_rows=None, num_cols=None, maximize=False):
    """(col_for_row, status) computed problem by problem with scipy on the float64 values."""
    B, R, C = cost.shape
    dense = cost.detach().cpu().double().numpy()
    col_for_row = np.full((B, R), -1, dtype=np.int64)
    status = np.zeros(B, dtype=np.int32)
    for b in range(B):
        nr = R if num_rows is None else int(num_rows[b])
        nc = C if num_cols is None else int(num_cols[b])
        out = scipy_outcome(dense[b, :nr, :nc], maximize)
        if isinstance(out[0], type):
            status[b] = {"matrix contains invalid numeric entries": INVALID, "cost matrix is infeasible": INFEASIBLE}[out[1]]
        else:
            col_for_row[b, out[0]] = out[1]
    return col_for_row, status


def check_batch(cost, device, backend, num_rows=None, num_cols=None, maximize=False):
    exp_cols, exp_status = expected_for(cost, num_rows, num_cols, maximize)
    args = [None if s is None else torch.as_tensor(s, dtype=torch.int64, device=device) for s in (num_rows, num_cols)]
    col_for_row, status = detr_ops.batched_linear_sum_assignment(
        cost.to(device), *args, maximize=maximize, check=False, backend=backend
    )
    assert col_for_row.dtype == torch.int64 and status.dtype == torch.int32
    assert col_for_row.device.type == device and status.device.type == device
    np.testing.assert_array_equal(status.cpu().numpy(), exp_status)
    np.testing.assert_array_equal(col_for_row.cpu().numpy(), exp_cols)
    if exp_status.any():
        b = int(np.nonzero(exp_status)[0][0])
        with pytest.raises(ValueError, match=rf"\(batch item {b}\)$"):
            detr_ops.batched_linear_sum_assignment(cost.to(device), *args, maximize=maximize, backend=backend)
    return col_for_row


@device_backend_param
@pytest.mark.parametrize("kind", KINDS)
def test_random_batches(device, backend, kind):
    rng = np.random.default_rng(KINDS.index(kind))
    n = small(backend)
    for trial in range(6 if backend == "triton" else 30):
        B = int(rng.integers(1, 6))
        R, C = (int(x) for x in rng.integers(0, n + 1, 2))
        cost = torch.from_numpy(np.stack([make(rng, kind, R, C) for _ in range(B)]).reshape(B, R, C))
        check_batch(cost, device, backend, maximize=bool(trial % 2))


@device_backend_param
def test_ragged_detr_like(device, backend):
    """Fixed queries, a different number of targets per image (some zero), padding never read."""
    rng = np.random.default_rng(7)
    Q, T = (12, 5) if backend == "triton" else (100, 30)
    for _ in range(3):
        B = 6
        num_cols = rng.integers(0, T + 1, B)
        num_cols[rng.integers(B)] = 0
        cost = torch.from_numpy(rng.random((B, Q, T)))
        # Padding holds NaN: reading it would change the status.
        for b in range(B):
            cost[b, :, num_cols[b]:] = float("nan")
        check_batch(cost, device, backend, num_cols=num_cols)
        num_rows = rng.integers(0, Q + 1, B)
        check_batch(cost, device, backend, num_rows=num_rows, num_cols=num_cols, maximize=True)


@device_backend_param
@dtype_param()
def test_dtypes(device, backend, dtype):
    """Half inputs are widened exactly to float64, so ties created by the rounding match scipy on
    the rounded values."""
    rng = np.random.default_rng(11)
    n = small(backend)
    cost = torch.from_numpy(rng.random((4, n, n - 2)) * 3).to(dtype)
    check_batch(cost, device, backend)


@device_backend_param
def test_non_contiguous(device, backend):
    n = small(backend)
    base = torch.from_numpy(np.random.default_rng(2).integers(0, 3, (3, n + 3, 2 * n)).astype(np.float32))
    check_batch(base.transpose(1, 2), device, backend)
    check_batch(base[:, ::2, 1::2], device, backend)
    check_batch(base.permute(2, 0, 1)[:4], device, backend)


@device_backend_param
def test_forbidden_and_invalid_per_item(device, backend):
    inf, nan = float("inf"), float("nan")
    cost = torch.tensor([
        [[1.0, inf], [inf, 2.0]],  # feasible through the diagonal
        [[inf, 1.0], [inf, 2.0]],  # infeasible: column 0 forbidden for every row
        [[nan, 1.0], [1.0, 1.0]],  # invalid
        [[-inf, 0.0], [0.0, 0.0]],  # invalid
    ], dtype=torch.float64)
    check_batch(cost, device, backend)
    check_batch(cost, device, backend, maximize=True)  # +inf is invalid when maximizing


@device_backend_param
def test_empty(device, backend):
    for shape in [(0, 3, 3), (2, 0, 4), (2, 4, 0), (1, 1, 1)]:
        check_batch(torch.rand(shape, dtype=torch.float64), device, backend)


@pytest.mark.parametrize("shape,kind", [((2, 1000, 1000), "uniform"), ((3, 900, 100), "small_int"), ((2, 300, 1000), "uniform")])
def test_large_cpu(shape, kind):
    rng = np.random.default_rng(4)
    cost = torch.from_numpy(np.stack([make(rng, kind, *shape[1:]) for _ in range(shape[0])]))
    check_batch(cost, "cpu", "native")


@device_backend_param
def test_row_for_col(device, backend):
    n = small(backend)
    cost = torch.rand(3, n, n - 1, dtype=torch.float64, device=device)
    num_cols = torch.tensor([n - 1, 0, 2], device=device)
    col_for_row, _ = detr_ops.batched_linear_sum_assignment(cost, num_cols=num_cols, backend=backend)
    got = detr_ops.row_for_col(col_for_row, n - 1).cpu()
    exp_cols, _ = expected_for(cost, num_cols=num_cols)
    expected = np.full((3, n - 1), -1)
    for b, i in zip(*np.nonzero(exp_cols >= 0)):
        expected[b, exp_cols[b, i]] = i
    np.testing.assert_array_equal(got.numpy(), expected)


@device_backend_param
def test_sizes_out_of_range_reported(device, backend):
    cost = torch.rand(2, 3, 4, device=device)
    with pytest.raises(ValueError, match=r"num_rows\[1\] = 4 is outside \[0, 3\]"):
        detr_ops.batched_linear_sum_assignment(cost, num_rows=[3, 4], backend=backend)
    with pytest.raises(ValueError, match=r"num_cols\[0\] = -1 is outside \[0, 4\]"):
        detr_ops.batched_linear_sum_assignment(cost, num_cols=[-1, 2], backend=backend)


def test_kernel_reports_bad_size_status():
    """Called directly (no Python checks), the kernel flags out-of-range sizes instead of reading
    out of bounds: this is what the GPU paths rely on, where checking would need a sync."""
    cost = torch.rand(3, 3, 4)
    _, status = torch.ops.detr_ops.batched_linear_sum_assignment(cost, torch.tensor([3, 4, 2]), None, False)
    assert status.tolist() == [OK, BAD_SIZE, OK]


@pytest.mark.parametrize("make_args,message", [
    (lambda: (torch.rand(3, 3),), r"cost must be a \[B, R, C\] tensor"),
    (lambda: (np.zeros((1, 2, 2)),), "cost must be a torch.Tensor"),
    (lambda: (torch.zeros(1, 2, 2, dtype=torch.int64),), "cost must be float16, bfloat16, float32 or float64"),
    (lambda: (torch.rand(2, 3, 3), torch.tensor([1.0, 2.0])), "num_rows must be an integer tensor"),
    (lambda: (torch.rand(2, 3, 3), torch.tensor([True, False])), "num_rows must be an integer tensor"),
    (lambda: (torch.rand(2, 3, 3), None, torch.tensor([1, 2, 3])), r"num_cols must have shape \[B\] = \[2\]"),
    (lambda: (torch.rand(2, 3, 3), None, [0.5, 1.0]), "num_cols must be an integer tensor"),
    (lambda: (torch.rand(2, 3, 3), torch.tensor([1, 2], device="meta")), "must be on the same device"),
])
def test_bad_inputs(make_args, message):
    with pytest.raises((ValueError, TypeError), match=message):
        detr_ops.batched_linear_sum_assignment(*make_args())


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_integer_sizes_of_any_dtype_are_accepted(dtype):
    """One coercion policy for index tensors: any integer dtype, converted to int64 (as lists are)."""
    cost = torch.rand(2, 3, 4)
    expected, _ = detr_ops.batched_linear_sum_assignment(cost, num_cols=[2, 4])
    got, _ = detr_ops.batched_linear_sum_assignment(cost, num_cols=torch.tensor([2, 4], dtype=dtype))
    assert torch.equal(got, expected)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        detr_ops.batched_linear_sum_assignment(torch.rand(1, 2, 2), backend="cupy")


@device_backend_param
def test_opcheck(device, backend):
    op = torch.ops.detr_ops.batched_linear_sum_assignment
    if backend == "triton":
        from detr_ops import _triton_twins  # noqa: F401  (defines the *_triton ops)
        op = torch.ops.detr_ops.batched_linear_sum_assignment_triton
    cost = torch.rand(3, 5, 4, device=device)
    sizes = torch.tensor([5, 0, 2], device=device)
    for args in [(cost, None, None, False), (cost, sizes, torch.tensor([4, 4, 1], device=device), True),
                 (cost.double().transpose(1, 2), None, None, False)]:
        torch.library.opcheck(op, args)


@device_backend_param
def test_torch_compile_fullgraph(device, backend):
    def match(cost, num_cols):
        col_for_row, status = detr_ops.batched_linear_sum_assignment(cost, num_cols=num_cols, check=False, backend=backend)
        return detr_ops.row_for_col(col_for_row, cost.shape[2]), col_for_row, status

    torch._dynamo.reset()
    compiled = torch.compile(match, fullgraph=True, backend="aot_eager")
    cost = torch.rand(4, 7, 5, device=device)
    num_cols = torch.tensor([5, 0, 3, 1], device=device)
    for got, exp in zip(compiled(cost, num_cols), match(cost, num_cols)):
        torch.testing.assert_close(got, exp, rtol=0, atol=0)
    exp_cols, _ = expected_for(cost, num_cols=num_cols)
    np.testing.assert_array_equal(compiled(cost, num_cols)[1].cpu().numpy(), exp_cols)


def test_compile_with_check_explains():
    compiled = torch.compile(lambda c: detr_ops.batched_linear_sum_assignment(c), fullgraph=True, backend="aot_eager")
    torch._dynamo.reset()
    with pytest.raises(Exception, match="check=False"):
        compiled(torch.rand(2, 3, 3))


def test_reference_matches_scipy_loop():
    from detr_ops.reference import batched_linear_sum_assignment_reference

    cost = torch.rand(5, 9, 4)
    num_cols = torch.tensor([4, 0, 2, 3, 1])
    col_for_row, status = batched_linear_sum_assignment_reference(cost, num_cols=num_cols)
    exp_cols, exp_status = expected_for(cost, num_cols=num_cols)
    np.testing.assert_array_equal(col_for_row.numpy(), exp_cols)
    np.testing.assert_array_equal(status.numpy(), exp_status)


@device_backend_param
@pytest.mark.parametrize("dtype,tiny", [(torch.float32, 1e-40), (torch.float64, 1e-310)])
def test_subnormal_costs_are_not_flushed(device, backend, dtype, tiny):
    """[[tiny, 0]] with a subnormal tiny: scipy picks column 1. A solver built with fast math (or
    widening float32 with cvt.ftz on a GPU) sees a tie and picks column 0."""
    cost = torch.tensor([[[tiny, 0.0]], [[0.0, tiny]]], dtype=dtype, device=device)
    assert cost[0, 0, 0] != 0  # the subnormal exists in the input
    col_for_row, status = detr_ops.batched_linear_sum_assignment(cost, check=False, backend=backend)
    assert col_for_row.tolist() == [[1], [0]] and status.tolist() == [0, 0]
    col_for_row, _ = detr_ops.batched_linear_sum_assignment(cost, maximize=True, check=False, backend=backend)
    assert col_for_row.tolist() == [[0], [1]]


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["native", pytest.param("triton", marks=pytest.mark.triton)])
def test_gpu_path_has_no_host_sync(backend):
    """check=False on a GPU never synchronises: sizes given as lists travel through pinned memory,
    capacities as a tensor need no host bound."""
    cost = torch.rand(4, 30, 5, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        col_for_row, status = detr_ops.batched_linear_sum_assignment(cost, num_cols=[5, 0, 3, 2], check=False,
                                                                     backend=backend)
        detr_ops.batched_linear_sum_assignment(cost, capacity=torch.tensor([1, 6, 0, 2], device="cuda"), check=False,
                                               backend=backend)
        detr_ops.row_for_col(col_for_row, 5)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    exp, _ = expected_for(cost, num_cols=[5, 0, 3, 2])
    np.testing.assert_array_equal(col_for_row.cpu().numpy(), exp)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["native", pytest.param("triton", marks=pytest.mark.triton)])
def test_second_gpu(backend):
    """Inputs on a GPU other than the current one are solved there (device guard)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    cost = torch.rand(3, 8, 5, device="cuda:1")
    col_for_row, status = detr_ops.batched_linear_sum_assignment(cost, backend=backend)
    assert col_for_row.device == cost.device
    np.testing.assert_array_equal(col_for_row.cpu().numpy(), expected_for(cost)[0])


def test_triton_flip_loads_before_it_stores():
    """The Triton kernel's path flip: scalar loads run in every thread and scalar stores in one, so
    each iteration must load path[j] and col4row[r], pass a barrier, then store (a lagging warp that
    loads col4row[r] after thread 0 replaced it follows another path: a hang on a GPU). Read from
    the kernel's source, since the interpreter runs every program in lockstep and cannot show it."""
    import ast
    import inspect

    pytest.importorskip("triton")
    from detr_ops.triton import linear_sum_assignment as module

    tree = ast.parse(inspect.getsource(module).split("def _max_virtual_columns")[0].split("@triton.jit", 1)[1])
    flips = [n for n in ast.walk(tree) if isinstance(n, ast.While) and ast.unparse(n.test) == "r_ != cur"]
    assert len(flips) == 1
    calls = [ast.unparse(s.value.func if isinstance(s, ast.Expr) else s.value.func)
             for s in flips[0].body if isinstance(getattr(s, "value", None), ast.Call)]
    assert calls == ["tl.load", "tl.load", "tl.debug_barrier", "tl.store", "tl.store"], calls
