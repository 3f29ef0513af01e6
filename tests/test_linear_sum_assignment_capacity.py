"""batched_linear_sum_assignment(..., capacity=k) against scipy on the explicitly tiled matrix
(copy c of column j is column c*C + j): the same matched (row, original column) pairs index for
index, hence the same total cost, on every device x backend."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import detr_ops
from cases import device_backend_param
from detr_ops.ops.linear_sum_assignment import BAD_SIZE, INFEASIBLE, INVALID, OK
from lsa_problems import KINDS, make, tiled_expected

STATUS = {"matrix contains invalid numeric entries": INVALID, "cost matrix is infeasible": INFEASIBLE}


def expected_batch(cost, capacity, num_rows=None, num_cols=None, maximize=False):
    B, R, C = cost.shape
    dense = cost.detach().cpu().double().numpy()
    caps = [capacity] * B if isinstance(capacity, int) else [int(k) for k in capacity]
    col_for_row = np.full((B, R), -1, dtype=np.int64)
    status = np.zeros(B, dtype=np.int32)
    for b in range(B):
        nr = R if num_rows is None else int(num_rows[b])
        nc = C if num_cols is None else int(num_cols[b])
        out = tiled_expected(dense[b, :nr, :nc], caps[b], maximize)
        if isinstance(out, tuple):
            status[b] = STATUS[out[1]]
        else:
            col_for_row[b, :nr] = out
    return col_for_row, status


def check(cost, capacity, device, backend, num_rows=None, num_cols=None, maximize=False):
    exp_cols, exp_status = expected_batch(cost, capacity, num_rows, num_cols, maximize)
    cap = capacity if isinstance(capacity, int) else torch.as_tensor(capacity, device=device)
    sizes = [None if s is None else torch.as_tensor(s, dtype=torch.int64, device=device) for s in (num_rows, num_cols)]
    col_for_row, status = detr_ops.batched_linear_sum_assignment(
        cost.to(device), *sizes, maximize=maximize, capacity=cap, check=False, backend=backend)
    np.testing.assert_array_equal(status.cpu().numpy(), exp_status)
    np.testing.assert_array_equal(col_for_row.cpu().numpy(), exp_cols)
    # no column takes more rows than its capacity
    caps = [capacity] * cost.shape[0] if isinstance(capacity, int) else list(capacity)
    for b, row in enumerate(col_for_row.cpu().numpy()):
        counts = np.bincount(row[row >= 0], minlength=cost.shape[2])
        assert (counts <= caps[b]).all()
    return col_for_row


def small(backend):
    return 5 if backend == "triton" else 12


@device_backend_param
@pytest.mark.parametrize("kind", ["uniform", "small_int", "constant", "forbidden", "invalid"])
def test_random_capacities(device, backend, kind):
    rng = np.random.default_rng(KINDS.index(kind) + 100)
    n = small(backend)
    for trial in range(4 if backend == "triton" else 25):
        B = int(rng.integers(1, 4))
        R, C = (int(x) for x in rng.integers(0, n + 1, 2))
        k = int(rng.integers(0, 5))
        cost = torch.from_numpy(np.stack([make(rng, kind, R, C) for _ in range(B)]).reshape(B, R, C))
        check(cost, k, device, backend, maximize=bool(trial % 2))


@device_backend_param
def test_per_problem_capacities_and_ragged(device, backend):
    """A [B] capacity tensor with zero, one and many copies, ragged blocks with NaN padding (never read)."""
    rng = np.random.default_rng(3)
    Q, T = (9, 3) if backend == "triton" else (40, 6)
    B = 5
    cost = torch.from_numpy(rng.integers(0, 4, (B, Q, T)).astype(np.float64))
    num_cols = np.array([T, 0, 2, T, 1])
    num_rows = np.array([Q, Q, Q - 3, 2, Q])
    for b in range(B):
        cost[b, :, num_cols[b]:] = float("nan")
        cost[b, num_rows[b]:, :] = float("nan")
    for caps in ([0, 1, 2, 6, 3], [6, 6, 6, 6, 6], [1, 0, 0, 1, 40]):
        check(cost, caps, device, backend, num_rows=num_rows, num_cols=num_cols)
        check(cost, caps, device, backend, num_rows=num_rows, num_cols=num_cols, maximize=True)


@device_backend_param
def test_capacity_beyond_what_can_matter(device, backend):
    """Capacities above rows + ceil(rows / cols) are reduced exactly (effective_copies): the answer
    must still be scipy's on the matrix tiled that many times, ties included."""
    rng = np.random.default_rng(5)
    R, C = (5, 2) if backend == "triton" else (9, 3)
    for kind in ("small_int", "constant", "uniform"):
        cost = torch.from_numpy(np.stack([make(rng, kind, R, C) for _ in range(2)]))
        for k in (R + (R + C - 1) // C, R + (R + C - 1) // C + 1, 2 * R + 3, 37):
            check(cost, k, device, backend)


@device_backend_param
def test_hdetr_one_to_many(device, backend):
    """H-DETR's one-to-many shape in small: many queries, few targets repeated k = 6 times."""
    rng = np.random.default_rng(8)
    Q, T = (20, 2) if backend == "triton" else (300, 7)
    cost = torch.from_numpy(rng.random((3, Q, T)))
    num_cols = [T, 0, T - 1]
    cols = check(cost, 6, device, backend, num_cols=num_cols)
    assert (cols[0] >= 0).sum() == min(Q, 6 * T)


def test_capacity_one_is_the_default():
    cost = torch.from_numpy(np.random.default_rng(0).integers(0, 3, (4, 8, 5)).astype(np.float32))
    a, _ = detr_ops.batched_linear_sum_assignment(cost)
    b, _ = detr_ops.batched_linear_sum_assignment(cost, capacity=1)
    c, _ = detr_ops.batched_linear_sum_assignment(cost, capacity=torch.ones(4, dtype=torch.int32))
    assert torch.equal(a, b) and torch.equal(a, c)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(0, 7), st.integers(0, 4)),
                  elements=st.one_of(st.sampled_from([0.0, 1.0, 2.0, np.inf, np.nan, -np.inf]), st.floats(-5, 5))),
       st.lists(st.integers(0, 4), min_size=3, max_size=3), st.booleans())
def test_hypothesis_capacity(cost, caps, maximize):
    """Random, tied, infinite and invalid entries: indices and error status as scipy on the tiled matrix."""
    B = cost.shape[0]
    check(torch.from_numpy(cost), caps[:B], "cpu", "native", maximize=maximize)


@pytest.mark.parametrize("capacity,error,message", [
    (-1, ValueError, "capacity must be >= 0, got -1"),
    (True, TypeError, "capacity must be an int or an integer"),
    (1.5, TypeError, "capacity must be an int or an integer"),
    (torch.tensor([1.0, 2.0]), ValueError, "capacity must be an integer tensor"),
    (torch.tensor([1, 2, 3]), ValueError, r"capacity must have shape \[B\] = \[2\]"),
    (torch.tensor([1, -2]), ValueError, r"capacity\[1\] = -2 must be >= 0"),
    ([0, -1], ValueError, r"capacity\[1\] = -1 must be >= 0"),
    (torch.tensor([1, 2], device="meta"), ValueError, "must be on the same device"),
])
def test_bad_capacity(capacity, error, message):
    with pytest.raises(error, match=message):
        detr_ops.batched_linear_sum_assignment(torch.rand(2, 3, 3), capacity=capacity)


def test_raw_op_reports_capacity_out_of_range():
    """Called directly, a negative capacity in the tensor, or one above the bound the workspace was
    sized for, is a status 3, never an out-of-bounds access; a negative bound is an error."""
    op = torch.ops.detr_ops.batched_linear_sum_assignment
    cost = torch.rand(4, 6, 2)
    _, status = op(cost, None, None, False, 3, torch.tensor([1, -1, 3, 4]))
    assert status.tolist() == [OK, BAD_SIZE, OK, BAD_SIZE]
    # effective_copies(100, 6, 2) = 6 + 3 = 9: a bound of 9 covers any capacity
    _, status = op(cost, None, None, False, 9, torch.tensor([100, 9, 10**18, 0]))
    assert status.tolist() == [OK, OK, OK, OK]
    with pytest.raises(ValueError, match="capacity must be >= 0"):
        op(cost, None, None, False, -1, None)


@device_backend_param
def test_opcheck_capacity(device, backend):
    from cases import opcheck_utils

    op = torch.ops.detr_ops.batched_linear_sum_assignment
    if backend == "triton":
        from detr_ops import _triton_twins  # noqa: F401  (defines the *_triton ops)
        op = torch.ops.detr_ops.batched_linear_sum_assignment_triton
    cost = torch.rand(3, 5, 2, device=device)
    caps = torch.tensor([0, 3, 2], device=device)
    for args in [(cost, None, None, False, 2, None), (cost, None, torch.tensor([2, 1, 0], device=device), True, 3, caps)]:
        torch.library.opcheck(op, args, test_utils=opcheck_utils(backend))


@device_backend_param
def test_torch_compile_capacity(device, backend):
    def match(cost, num_cols, caps):
        a = detr_ops.batched_linear_sum_assignment(cost, num_cols=num_cols, capacity=3, check=False, backend=backend)
        b = detr_ops.batched_linear_sum_assignment(cost, num_cols=num_cols, capacity=caps, check=False, backend=backend)
        return a + b

    torch._dynamo.reset()
    compiled = torch.compile(match, fullgraph=True, backend="aot_eager")
    cost = torch.rand(3, 7, 2, device=device)
    num_cols = torch.tensor([2, 0, 1], device=device)
    caps = torch.tensor([2, 5, 0], device=device)
    for got, exp in zip(compiled(cost, num_cols, caps), match(cost, num_cols, caps)):
        torch.testing.assert_close(got, exp, rtol=0, atol=0)
    np.testing.assert_array_equal(compiled(cost, num_cols, caps)[0].cpu().numpy(),
                                  expected_batch(cost, 3, num_cols=num_cols.cpu())[0])


def test_reference_capacity_matches_the_op():
    from detr_ops.reference import batched_linear_sum_assignment_reference

    cost = torch.from_numpy(np.random.default_rng(9).integers(0, 3, (4, 10, 3)).astype(np.float64))
    for capacity in (2, [0, 1, 3, 7]):
        exp = batched_linear_sum_assignment_reference(cost, num_cols=[3, 2, 0, 1], capacity=capacity)
        got = detr_ops.batched_linear_sum_assignment(cost, num_cols=[3, 2, 0, 1], capacity=capacity, check=False)
        assert torch.equal(exp[0], got[0]) and torch.equal(exp[1], got[1])
