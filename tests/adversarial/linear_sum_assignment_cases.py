"""Adversarial inputs for the assignment family (tests/test_linear_sum_assignment_adversarial.py runs
each in a child process): linear_sum_assignment (numpy drop-in), batched_linear_sum_assignment,
row_for_col and the raw op torch.ops.detr_ops.batched_linear_sum_assignment. Each case either
returns after checking a correct result, or must raise the declared error naming the argument."""
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

import detr_ops
from tests.isolated import case

OP = torch.ops.detr_ops.batched_linear_sum_assignment
nan, inf = float("nan"), float("inf")


def same_as_scipy(cost, maximize=False):
    rows, cols = detr_ops.linear_sum_assignment(cost, maximize=maximize)
    er, ec = scipy_lsa(np.asarray(cost, dtype=np.float64), maximize=maximize)
    assert np.array_equal(rows, er) and np.array_equal(cols, ec), (rows, cols, er, ec)


def batched_same_as_scipy(cost, **kwargs):
    col_for_row, status = detr_ops.batched_linear_sum_assignment(cost, check=False, **kwargs)
    dense = cost.double().numpy()
    for b in range(cost.shape[0]):
        er, ec = scipy_lsa(dense[b], maximize=kwargs.get("maximize", False))
        expected = np.full(cost.shape[1], -1)
        expected[er] = ec
        assert np.array_equal(col_for_row[b].numpy(), expected)
    assert not status.any()


# ---- linear_sum_assignment (scipy's contract: scipy's errors) ------------------------------------

@case(raises=TypeError, match="Cannot cast array data from dtype\\('complex128'\\)")
def lsa_complex():
    detr_ops.linear_sum_assignment(np.ones((2, 2), dtype=np.complex128))


@case(raises=(TypeError, ValueError))
def lsa_float8_tensor():
    detr_ops.linear_sum_assignment(torch.zeros(2, 2, dtype=torch.float8_e4m3fn))


@case()
def lsa_bool_and_int():
    same_as_scipy(np.eye(5, dtype=bool))
    same_as_scipy(np.arange(30, dtype=np.int64).reshape(5, 6) % 4)
    same_as_scipy(np.arange(30, dtype=np.uint8).reshape(6, 5) % 3)


@case()
def lsa_stride_zero_and_non_contiguous():
    same_as_scipy(np.broadcast_to(np.arange(7.0), (5, 7)))
    same_as_scipy(np.broadcast_to(np.arange(5.0)[:, None], (5, 9)))
    same_as_scipy(np.random.default_rng(0).random((20, 30))[::3, ::-2])


@case(raises=ValueError, match="^matrix contains invalid numeric entries$")
def lsa_all_nan():
    detr_ops.linear_sum_assignment(np.full((4, 5), nan))


@case(raises=ValueError, match="^cost matrix is infeasible$")
def lsa_all_inf():
    detr_ops.linear_sum_assignment(np.full((4, 5), inf))


@case(raises=ValueError, match="^matrix contains invalid numeric entries$")
def lsa_inf_when_maximizing():
    detr_ops.linear_sum_assignment(np.full((3, 3), inf), maximize=True)


@case()
def lsa_extreme_magnitudes():
    same_as_scipy(np.array([[1e308, -1e308, 5e-324], [1e-320, 1e308, 0.0], [-1e308, 1e300, 1e308]]))
    same_as_scipy(np.array([[1e308, 1e308], [1e308, 1e308], [-1e308, 1e308]]), maximize=True)


@case(raises=MemoryError, match="Unable to allocate")
def lsa_huge_stride_zero():
    # scipy (and so we) convert to a contiguous float64 array first: numpy refuses 8 PiB.
    detr_ops.linear_sum_assignment(np.broadcast_to(np.zeros(1), (2**25, 2**25)))


@case(raises=ValueError, match="expected a matrix")
def lsa_zero_dim():
    detr_ops.linear_sum_assignment(np.float64(1.0))


# ---- batched_linear_sum_assignment ----------------------------------------------------------------

@case(raises=ValueError, match="cost must be float16, bfloat16, float32 or float64, got torch.float8_e4m3fn")
def batched_float8():
    detr_ops.batched_linear_sum_assignment(torch.zeros(1, 2, 2, dtype=torch.float8_e4m3fn))


@case(raises=ValueError, match="cost must be float16, bfloat16, float32 or float64, got torch.complex64")
def batched_complex():
    detr_ops.batched_linear_sum_assignment(torch.zeros(1, 2, 2, dtype=torch.complex64))


@case(raises=ValueError, match="cost must be float16, bfloat16, float32 or float64, got torch.bool")
def batched_bool():
    detr_ops.batched_linear_sum_assignment(torch.zeros(1, 2, 2, dtype=torch.bool))


@case(raises=ValueError, match="cost must be float16, bfloat16, float32 or float64, got torch.int32")
def batched_int():
    detr_ops.batched_linear_sum_assignment(torch.zeros(1, 2, 2, dtype=torch.int32))


@case()
def batched_stride_zero_and_non_contiguous():
    batched_same_as_scipy(torch.arange(6.0).expand(3, 4, 6))
    batched_same_as_scipy(torch.arange(4.0)[:, None].expand(2, 4, 3))
    batched_same_as_scipy(torch.rand(5, 8, 9).transpose(0, 2)[:, ::2, 1:], maximize=True)
    batched_same_as_scipy(torch.tensor(2.0).expand(3, 5, 4))


@case(raises=ValueError, match=r"matrix contains invalid numeric entries \(batch item 1\)")
def batched_nan_everywhere():
    detr_ops.batched_linear_sum_assignment(torch.stack([torch.rand(3, 3), torch.full((3, 3), nan)]))


@case(raises=ValueError, match=r"cost matrix is infeasible \(batch item 0\)")
def batched_inf_everywhere():
    detr_ops.batched_linear_sum_assignment(torch.full((2, 3, 4), inf))


@case()
def batched_nan_inf_status_without_check():
    cost = torch.stack([torch.full((3, 3), nan), torch.full((3, 3), inf), torch.full((3, 3), -inf), torch.ones(3, 3)])
    cols, status = detr_ops.batched_linear_sum_assignment(cost, check=False)
    assert status.tolist() == [1, 2, 1, 0] and (cols[:3] == -1).all() and cols[3].tolist() == [0, 1, 2]


@case(raises=ValueError, match=r"num_rows\[0\] = 4611686018427387904 is outside \[0, 3\]")
def batched_overflowing_num_rows():
    detr_ops.batched_linear_sum_assignment(torch.rand(1, 3, 3), num_rows=[2**62])


@case(raises=ValueError, match=r"num_cols\[1\] = -5 is outside \[0, 3\]")
def batched_negative_num_cols():
    detr_ops.batched_linear_sum_assignment(torch.rand(2, 3, 3), num_cols=torch.tensor([1, -5]))


@case(raises=ValueError, match="num_cols must be an integer tensor")
def batched_float8_num_cols():
    detr_ops.batched_linear_sum_assignment(torch.rand(1, 3, 3), num_cols=torch.ones(1, dtype=torch.float8_e4m3fn))


@case(raises=ValueError, match="num_rows must be an integer tensor")
def batched_complex_num_rows():
    detr_ops.batched_linear_sum_assignment(torch.rand(1, 3, 3), num_rows=torch.ones(1, dtype=torch.complex64))


@case(raises=ValueError, match="num_rows must be an integer tensor")
def batched_bool_num_rows():
    detr_ops.batched_linear_sum_assignment(torch.rand(1, 3, 3), num_rows=torch.ones(1, dtype=torch.bool))


@case()
def batched_stride_zero_sizes():
    cols, _ = detr_ops.batched_linear_sum_assignment(torch.rand(4, 3, 3), num_cols=torch.tensor(2).expand(4))
    assert ((cols >= 0).sum(1) == 2).all()


@case(raises=torch.OutOfMemoryError, match=r"not enough memory to solve problem 0, a 65536 x 1099511627776 cost block")
def batched_huge_expanded_cost():
    detr_ops.batched_linear_sum_assignment(torch.zeros(1, 1, 1).expand(1, 2**16, 2**40))


@case(raises=torch.OutOfMemoryError, match=r"a 2 x 2305843009213693952 cost block")
def batched_overflowing_expanded_cost():
    # 2 * 2^61 elements: its float64 copy (2^65 bytes) overflows int64; torch itself refuses an
    # expand whose element count overflows.
    detr_ops.batched_linear_sum_assignment(torch.zeros(1, 1, 1).expand(1, 2, 2**61))


@case()
def batched_huge_capacity():
    cost = torch.rand(2, 6, 2)
    expected, _ = detr_ops.batched_linear_sum_assignment(cost, capacity=9)  # 6 + ceil(6 / 2): enough
    for k in (2**62, torch.tensor([2**62, 2**63 - 1])):
        got, _ = detr_ops.batched_linear_sum_assignment(cost, capacity=k)
        assert torch.equal(got, expected)
    got, _ = detr_ops.batched_linear_sum_assignment(cost, capacity=10**40)
    assert torch.equal(got, expected)


@case(raises=ValueError, match=r"capacity\[0\] = -9223372036854775808 must be >= 0")
def batched_most_negative_capacity():
    detr_ops.batched_linear_sum_assignment(torch.rand(2, 3, 3), capacity=torch.tensor([-2**63, 1]))


@case(raises=ValueError, match="capacity must be an integer tensor")
def batched_float8_capacity():
    detr_ops.batched_linear_sum_assignment(torch.rand(2, 3, 3), capacity=torch.ones(2, dtype=torch.float8_e4m3fn))


@case(raises=TypeError, match="cost must be a torch.Tensor")
def batched_not_a_tensor():
    detr_ops.batched_linear_sum_assignment([[[1.0]]])


# ---- row_for_col ------------------------------------------------------------------------------------

@case(raises=ValueError, match=r"col_for_row\[0, 1\] = 4 is outside \[-1, num_cols\) = \[-1, 3\)")
def row_for_col_num_cols_too_small():
    detr_ops.row_for_col(torch.tensor([[0, 4, 2]]), 3)


@case(raises=ValueError, match="num_cols must be >= 0, got -1")
def row_for_col_negative_num_cols():
    detr_ops.row_for_col(torch.tensor([[0, -1]]), -1)


@case(raises=TypeError, match="num_cols must be an int")
def row_for_col_float_num_cols():
    detr_ops.row_for_col(torch.tensor([[0, -1]]), 2.0)


@case(raises=ValueError, match=r"col_for_row\[0, 0\] = -2 is outside")
def row_for_col_below_minus_one():
    detr_ops.row_for_col(torch.tensor([[-2, 0]]), 2)


@case(raises=ValueError, match=r"col_for_row\[0\] gives column 1 to several rows")
def row_for_col_capacity_result():
    detr_ops.row_for_col(torch.tensor([[1, 1, 0]]), 2)


@case(raises=ValueError, match="col_for_row must be an integer tensor")
def row_for_col_float8():
    detr_ops.row_for_col(torch.zeros(1, 2, dtype=torch.float8_e4m3fn), 2)


@case(raises=ValueError, match=r"col_for_row must be a \[B, R\] tensor")
def row_for_col_one_dim():
    detr_ops.row_for_col(torch.tensor([0, 1]), 2)


@case()
def row_for_col_stride_zero_and_int32():
    out = detr_ops.row_for_col(torch.tensor([1, -1, 0], dtype=torch.int32).expand(2, 3), 2)
    assert out.tolist() == [[2, 0], [2, 0]]


# ---- the raw op ---------------------------------------------------------------------------------------

@case(raises=ValueError, match="cost must be float16, bfloat16, float32 or float64, got Float8_e5m2")
def raw_float8():
    OP(torch.zeros(1, 2, 2, dtype=torch.float8_e5m2), None, None, False)


@case(raises=ValueError, match="cost must be float16, bfloat16, float32 or float64, got ComplexDouble")
def raw_complex():
    OP(torch.zeros(1, 2, 2, dtype=torch.complex128), None, None, False)


@case(raises=ValueError, match=r"cost must be a \[B, R, C\] tensor")
def raw_two_dim():
    OP(torch.zeros(2, 2), None, None, False)


@case(raises=ValueError, match=r"num_rows must be an int64 tensor of shape \[B\] = \[1\], got Int")
def raw_int32_sizes():
    OP(torch.zeros(1, 2, 2), torch.tensor([1], dtype=torch.int32), None, False)


@case(raises=ValueError, match=r"capacities must be an int64 tensor of shape \[B\] = \[2\]")
def raw_capacities_wrong_shape():
    OP(torch.zeros(2, 2, 2), None, None, False, 1, torch.tensor([1]))


@case(raises=ValueError, match="capacity must be >= 0, got -3")
def raw_negative_capacity():
    OP(torch.zeros(1, 2, 2), None, None, False, -3, None)


@case()
def raw_sizes_out_of_range_are_a_status():
    _, status = OP(torch.zeros(4, 2, 2), torch.tensor([2**62, -1, 2, -2**63]), None, False)
    assert status.tolist() == [3, 3, 0, 3]
    _, status = OP(torch.zeros(3, 2, 2), None, torch.tensor([3, 2**63 - 1, 0]), False, 2, torch.tensor([1, 1, -1]))
    assert status.tolist() == [3, 3, 3]


@case()
def raw_nan_and_huge_capacity():
    _, status = OP(torch.full((2, 3, 2), nan), None, None, False, 2**62, None)
    assert status.tolist() == [1, 1]
    _, status = OP(torch.full((2, 3, 2), nan), None, None, False, 0, None)
    assert status.tolist() == [0, 0]  # scipy on a 3 x 0 matrix: nothing to read, nothing to match
