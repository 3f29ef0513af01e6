"""Adversarial cases of multi-scale deformable attention (tests/test_ms_deform_attn_adversarial.py),
each run in a child process (tests/isolated.py): the public function, MSDeformAttnFunction, the
MSDeformAttn module and every raw native op (forward and backward, both point layouts). Wrong dtypes,
overflowing and negative sizes, stride-0 and non-contiguous inputs, NaN and inf: each gives a clear
error naming the argument or a correct result, never a crash or a silent wrong answer.

The Triton ops get the same cases in ms_deform_attn_triton_cases.py (under the interpreter)."""
import torch

import detr_ops
from detr_ops import MSDeformAttn, MSDeformAttnFunction, ms_deform_attn
from tests.isolated import case

ops = torch.ops.detr_ops


def inputs(N=1, Lq=2, M=2, D=3, P=2, levels=((3, 4), (2, 2)), dtype=torch.float64):
    shapes = torch.tensor(levels, dtype=torch.int64)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    g = torch.Generator().manual_seed(0)
    value = torch.randn(N, int(areas.sum()), M, D, generator=g, dtype=torch.float64).to(dtype)
    loc = (torch.rand(N, Lq, M, len(levels), P, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1).to(dtype)
    weights = torch.rand(N, Lq, M, len(levels), P, generator=g, dtype=torch.float64).to(dtype)
    return value, shapes, starts, loc, weights


def grad_like(value, loc):
    return torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3], dtype=value.dtype)


def issue_reproduction():
    """Spatial shapes whose H * W wraps around int64 (2^32 * 2^32 = 2^64 = 0 mod 2^64)."""
    value = torch.randn(1, 4, 1, 4, dtype=torch.float64)
    loc = torch.tensor([0.5, 1.5 / 2**32], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    weights = torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)
    return value, torch.tensor([[2**32, 2**32]]), torch.tensor([0]), loc, weights


# ---- overflowing level shapes: a level that does not fit is skipped, never read --------------------


@case(raises=ValueError, match=r"value_spatial_shapes describe 18446744073709551616 pixels")
def overflow_public_validated():
    ms_deform_attn(*issue_reproduction())


@case()
def overflow_public_unvalidated():
    out = ms_deform_attn(*issue_reproduction(), validate=False)
    assert out.shape == (1, 1, 4) and (out == 0).all()


@case()
def overflow_raw_forward():
    assert (ops.ms_deform_attn(*issue_reproduction()) == 0).all()


@case()
def overflow_raw_backward():
    value, shapes, starts, loc, weights = issue_reproduction()
    grads = ops.ms_deform_attn_backward(torch.ones(1, 1, 4, dtype=torch.float64), value, shapes, starts, loc, weights)
    assert all((g == 0).all() for g in grads)


@case()
def overflow_raw_points_forward_and_backward():
    value, shapes, starts, loc, weights = issue_reproduction()
    loc, weights = loc.view(1, 1, 1, 1, 2), weights.view(1, 1, 1, 1)
    assert (ops.ms_deform_attn_points(value, shapes, starts, loc, weights, [1]) == 0).all()
    grads = ops.ms_deform_attn_points_backward(torch.ones(1, 1, 4, dtype=torch.float64), value, shapes, starts, loc,
                                               weights, [1])
    assert all((g == 0).all() for g in grads)


@case()
def overflow_module_function():
    with torch.no_grad():
        value, shapes, starts, loc, weights = issue_reproduction()
    try:
        MSDeformAttnFunction.apply(value, shapes, starts, loc, weights, 64)
    except ValueError as e:  # validated on CPU: the shapes do not describe S rows
        assert "value_spatial_shapes" in str(e)
    else:
        raise AssertionError("MSDeformAttnFunction accepted spatial shapes that do not describe value")


@case()
def overflow_in_place_backward_path():
    # The backward's in-place level test (fewer samples than pixels) used the same product: a
    # huge level next to a real one, unvalidated, through autograd.
    value, shapes, starts, loc, weights = inputs(Lq=1, P=1)
    shapes[0] = torch.tensor([2**62, 4])  # 2^64 wraps to 0
    leaves = [t.requires_grad_() for t in (value, loc, weights)]
    out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], validate=False)
    out.sum().backward()
    assert (leaves[1].grad[:, :, :, 0] == 0).all() and leaves[0].grad.isfinite().all()


@case()
def huge_and_negative_shapes_and_starts_raw():
    value, shapes, starts, loc, weights = inputs()
    for bad_shapes, bad_starts in (([[2**62, 2**2], [2, 2]], [0, 12]), ([[-3, 4], [2, 2]], [0, 12]),
                                   ([[3, -4], [2, 2]], [0, 12]), ([[3, 4], [2, 2]], [-1, 12]),
                                   ([[3, 4], [2, 2]], [0, 2**62]), ([[2**31, 2**31], [2**40, 1]], [0, 0]),
                                   ([[3, 4], [2, 2]], [0, -2**63])):
        s, st = torch.tensor(bad_shapes), torch.tensor(bad_starts)
        out = ops.ms_deform_attn(value, s, st, loc, weights)
        grads = ops.ms_deform_attn_backward(grad_like(value, loc), value, s, st, loc, weights)
        assert out.isfinite().all() and all(g.isfinite().all() for g in grads)


@case(raises=ValueError, match=r"value_spatial_shapes must be non-negative")
def negative_shapes_public():
    value, shapes, starts, loc, weights = inputs()
    ms_deform_attn(value, -shapes, starts, loc, weights)


# ---- size products that do not fit int64 (empty or expanded tensors) ----------------------------------


@case(raises=ValueError, match=r"the output's N \* Lq \* M \* D .* overflows int64")
def overflowing_output_size_raw():
    # value holds 2^61 elements (stride 0), the output would hold 8 * 2^61 = 2^64.
    value = torch.zeros(1, 1, 1, 1, dtype=torch.float64).expand(1, 1, 2**31, 2**30)
    loc = torch.zeros(1, 1, 1, 1, 1, 2, dtype=torch.float64).expand(1, 8, 2**31, 1, 1, 2)
    ops.ms_deform_attn(value, torch.tensor([[1, 1]]), torch.tensor([0]), loc, loc[..., 0])


@case(raises=ValueError, match=r"value's M \* D .* overflows int64")
def overflowing_head_size_of_empty_value_raw():
    # Expanded (stride 0): torch.empty itself refuses sizes whose strides overflow.
    value = torch.empty(1, 1, 1, 1, dtype=torch.float64).expand(0, 0, 2**40, 2**40)
    loc = torch.empty(1, 1, 1, 1, 1, 2, dtype=torch.float64).expand(0, 3, 2**40, 1, 1, 2)
    ops.ms_deform_attn(value, torch.tensor([[0, 0]]), torch.tensor([0]), loc, loc[..., 0])


@case(raises=ValueError, match=r"overflows int64")
def overflowing_point_count_raw():
    value, shapes, starts, _, _ = inputs()
    loc = torch.zeros(1, 1, 1, 1, 1, 2, dtype=torch.float64).expand(0, 2, 2, 2, 2**62, 2)
    ops.ms_deform_attn(value[:0], shapes, starts, loc, loc[..., 0])


@case(raises=ValueError, match=r"sum\(num_points_list\) overflows int64")
def overflowing_num_points_list_raw():
    value, shapes, starts, loc, weights = inputs()
    ops.ms_deform_attn_points(value, shapes, starts, loc.flatten(3, 4), weights.flatten(3), [2**62, 2**62])


@case(raises=ValueError, match=r"sampling_locations must be \[N, Lq, M, sum\(num_points_list\), 2\]")
def huge_num_points_list_public():
    value, shapes, starts, loc, weights = inputs()
    ms_deform_attn(value, shapes, starts, loc.flatten(3, 4), weights.flatten(3), num_points_list=[2**62, 2**62])


@case(raises=ValueError, match=r"num_points_list must hold non-negative counts")
def negative_num_points_list_raw():
    value, shapes, starts, loc, weights = inputs()
    ops.ms_deform_attn_points(value, shapes, starts, loc.flatten(3, 4)[..., :2, :], weights.flatten(3)[..., :2],
                              [3, -1])


# ---- wrong dtypes -------------------------------------------------------------------------------------


@case(raises=ValueError, match=r"value must be float16, bfloat16, float32 or float64, got dtype torch.float8_e4m3fn")
def float8_value_public():
    value, shapes, starts, loc, weights = inputs(dtype=torch.float32)
    ms_deform_attn(value.to(torch.float8_e4m3fn), shapes, starts, loc, weights)


@case(raises=ValueError, match=r"sampling_locations must be float16, bfloat16, float32 or float64")
def float8_locations_public():
    value, shapes, starts, loc, weights = inputs(dtype=torch.float32)
    ms_deform_attn(value, shapes, starts, loc.to(torch.float8_e5m2), weights)


@case(raises=ValueError, match=r"value must be float16, bfloat16, float32 or float64, got Float8_e4m3fn")
def float8_value_raw():
    value, shapes, starts, loc, weights = [t.to(torch.float8_e4m3fn) if t.is_floating_point() else t
                                           for t in inputs(dtype=torch.float32)]
    ops.ms_deform_attn(value, shapes, starts, loc, weights)


@case(raises=ValueError, match=r"value must be float16, bfloat16, float32 or float64")
def float8_value_raw_backward():
    value, shapes, starts, loc, weights = [t.to(torch.float8_e4m3fn) if t.is_floating_point() else t
                                           for t in inputs(dtype=torch.float32)]
    ops.ms_deform_attn_backward(grad_like(value.float(), loc).to(value.dtype), value, shapes, starts, loc, weights)


@case(raises=ValueError, match=r"value must be a floating tensor, got dtype torch.complex128")
def complex_value_public():
    value, shapes, starts, loc, weights = inputs()
    ms_deform_attn(value.to(torch.complex128), shapes, starts, loc, weights)


@case(raises=ValueError, match=r"value must be float16, bfloat16, float32 or float64, got ComplexDouble")
def complex_value_raw():
    value, shapes, starts, loc, weights = inputs()
    c = torch.complex128
    ops.ms_deform_attn(value.to(c), shapes, starts, loc.to(c), weights.to(c))


@case(raises=ValueError, match=r"value must be a floating tensor, got dtype torch.bool")
def bool_value_public():
    value, shapes, starts, loc, weights = inputs()
    ms_deform_attn(value > 0, shapes, starts, loc, weights)


@case(raises=ValueError, match=r"attention_weights must be a floating tensor, got dtype torch.int64")
def int_weights_public():
    value, shapes, starts, loc, weights = inputs()
    ms_deform_attn(value, shapes, starts, loc, weights.long())


@case(raises=ValueError, match=r"value, sampling_locations and attention_weights must have the same dtype")
def int_value_raw():
    value, shapes, starts, loc, weights = inputs()
    ops.ms_deform_attn(value.double(), shapes, starts, loc.long(), weights)


@case(raises=ValueError, match=r"value_spatial_shapes must be an integer tensor \(int64\), got dtype torch.float32")
def float_shapes_public():
    value, shapes, starts, loc, weights = inputs()
    ms_deform_attn(value, shapes.float(), starts, loc, weights)


@case(raises=ValueError, match=r"spatial_shapes must be int64, got Int")
def int32_shapes_raw():
    value, shapes, starts, loc, weights = inputs()
    ops.ms_deform_attn(value, shapes.int(), starts, loc, weights)


@case(raises=ValueError, match=r"grad_output must have value's dtype Double, got ComplexDouble")
def complex_grad_raw_backward():
    value, shapes, starts, loc, weights = inputs()
    ops.ms_deform_attn_backward(grad_like(value, loc).to(torch.complex128), value, shapes, starts, loc, weights)


@case(raises=ValueError, match=r"grad_output must have value's dtype Float, got Half")
def half_grad_for_float_raw_backward():
    value, shapes, starts, loc, weights = inputs(dtype=torch.float32)
    ops.ms_deform_attn_backward(grad_like(value, loc).half(), value, shapes, starts, loc, weights)


@case(raises=ValueError, match=r"grad_output must have value's dtype Double, got ComplexDouble")
def complex_grad_raw_points_backward():
    value, shapes, starts, loc, weights = inputs()
    ops.ms_deform_attn_points_backward(grad_like(value, loc).to(torch.complex128), value, shapes, starts,
                                       loc.flatten(3, 4), weights.flatten(3), [2, 2])


@case(raises=ValueError, match=r"grad_output must be \[N, Lq, M\*D\] = \[1, 2, 6\]")
def wrong_grad_shape_raw_backward():
    value, shapes, starts, loc, weights = inputs()
    ops.ms_deform_attn_backward(grad_like(value, loc)[..., :5], value, shapes, starts, loc, weights)


# ---- the module ---------------------------------------------------------------------------------------


@case(raises=ValueError, match=r"input_spatial_shapes has 3 levels but this MSDeformAttn was built with n_levels=4")
def module_with_fewer_levels():
    module = MSDeformAttn(d_model=16, n_levels=4, n_heads=2, n_points=2)
    shapes = torch.tensor([[4, 4], [2, 2], [1, 1]])
    query, source = torch.randn(1, 3, 16), torch.randn(1, 21, 16)
    module(query, torch.rand(1, 3, 3, 2), source, shapes, torch.tensor([0, 16, 20]))


@case(raises=ValueError, match=r"reference_points must be \[N, Lq, n_levels=2, 2 or 4\]")
def module_with_wrong_reference_levels():
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    shapes = torch.tensor([[4, 4], [2, 2]])
    module(torch.randn(1, 3, 16), torch.rand(1, 3, 3, 2), torch.randn(1, 20, 16), shapes, torch.tensor([0, 16]))


@case(raises=ValueError, match=r"value must be float16, bfloat16, float32 or float64, got dtype torch.float8_e4m3fn")
def module_float8_value_function():
    value, shapes, starts, loc, weights = inputs(dtype=torch.float32)
    MSDeformAttnFunction.apply(value.to(torch.float8_e4m3fn), shapes, starts, loc, weights, 64)


# ---- stride-0 and non-contiguous inputs: the contiguous result -----------------------------------------


@case()
def expanded_and_strided_inputs():
    value, shapes, starts, loc, weights = inputs(N=3, Lq=4)
    expanded = (value[:1].expand_as(value), loc[:, :1].expand_as(loc), weights[..., :1].expand_as(weights))
    contiguous = [t.contiguous() for t in expanded]
    out = ms_deform_attn(expanded[0], shapes, starts, expanded[1], expanded[2])
    assert torch.equal(out, ms_deform_attn(contiguous[0], shapes, starts, contiguous[1], contiguous[2]))
    grad = grad_like(value, loc)
    a = ops.ms_deform_attn_backward(grad.expand(3, 4, 6), *([expanded[0], shapes, starts] + list(expanded[1:])))
    b = ops.ms_deform_attn_backward(grad, contiguous[0], shapes, starts, contiguous[1], contiguous[2])
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    strided = value.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(ops.ms_deform_attn(strided, shapes[:, :], starts, loc, weights),
                       ops.ms_deform_attn(value, shapes, starts, loc, weights))
    stride0_shapes = torch.tensor([[2, 2]]).expand(2, 2)
    assert ops.ms_deform_attn(value[:, :8], stride0_shapes, torch.tensor([0, 4]), loc, weights).isfinite().all()


# ---- NaN and inf --------------------------------------------------------------------------------------


@case()
def nan_and_inf_in_values_and_weights_propagate():
    value, shapes, starts, loc, weights = inputs(Lq=3)
    loc[:] = 0.5  # every point sampled, on the map's middle pixels
    value[0, :, 0] = float("nan")  # head 0 reads NaN everywhere
    weights[0, 1, 1] = float("inf")  # query 1, head 1: an infinite weight on finite values
    out = ms_deform_attn(value, shapes, starts, loc, weights)
    assert out[0, :, :3].isnan().all()  # head 0
    assert not out[0, 1, 3:].isfinite().any()  # query 1 head 1: inf (or NaN where values cancel)
    assert out[0, 0, 3:].isfinite().all() and out[0, 2, 3:].isfinite().all()
    leaves = [t.requires_grad_() for t in (value, loc, weights)]
    grads = torch.autograd.grad(ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2]).sum(), leaves)
    assert grads[2][0, :, 0].isnan().all()  # d out / d weight = the (NaN) sampled value
    assert grads[1][0, :, 0].isnan().all()


@case()
def nan_and_inf_locations_contribute_nothing():
    value, shapes, starts, loc, weights = inputs(Lq=3)
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = loc.clone()
        broken[0, 1, :, :, :, 0] = bad
        out = ms_deform_attn(value, shapes, starts, broken, weights)
        far = broken.clone()
        far[0, 1] = -10.0
        assert torch.equal(out, ms_deform_attn(value, shapes, starts, far, weights))
        grads = ops.ms_deform_attn_backward(grad_like(value, loc), value, shapes, starts, broken, weights)
        assert (grads[1][0, 1] == 0).all() and (grads[2][0, 1] == 0).all() and grads[0].isfinite().all()


@case()
def nan_grad_output_gives_nan_gradients():
    value, shapes, starts, loc, weights = inputs()
    loc[:] = 0.5
    grad = grad_like(value, loc)
    grad[0, 0, 0] = float("nan")  # query 0, head 0, channel 0
    g_value, g_loc, g_weights = ops.ms_deform_attn_backward(grad, value, shapes, starts, loc, weights)
    assert g_weights[0, 0, 0].isnan().all() and g_loc[0, 0, 0].isnan().all() and g_value[0, :, 0, 0].isnan().any()
    assert g_weights[0, 1].isfinite().all() and g_value[0, :, 1].isfinite().all()


@case()
def empty_everything():
    for kwargs in (dict(N=0), dict(Lq=0), dict(M=0), dict(D=0), dict(P=0), dict(levels=((0, 5), (2, 0)))):
        value, shapes, starts, loc, weights = inputs(**kwargs)
        out = ops.ms_deform_attn(value, shapes, starts, loc, weights)
        grads = ops.ms_deform_attn_backward(grad_like(value, loc), value, shapes, starts, loc, weights)
        assert (out == 0).all() and all((g == 0).all() for g in grads)


@case(raises=ValueError, match=r"value and sampling_locations must be on the same device")
def meta_locations_public():
    value, shapes, starts, loc, weights = inputs()
    ms_deform_attn(value, shapes, starts, loc.to("meta"), weights)


@case()
def build_info_still_loads():
    assert "parallel" in detr_ops.build_info()
