"""ms_deform_attn(..., num_points_list=[...]): per-level point counts (RT-DETRv2, D-FINE), natively on
every backend, against the per-level grid_sample reference and the 2020-kernel restatement."""
import pytest
import torch

from detr_ops import ms_deform_attn
from tests.cases import DEVICE_BACKENDS, FLOAT_DTYPES, device_backend_param, dtype_param, opcheck_utils
from tests.msda_inputs import (SMALL_LEVELS, check_against_reference, kernel2020_and_grads, make_inputs,
                               make_points_inputs, op_and_grads)


@device_backend_param
@dtype_param(FLOAT_DTYPES)
def test_matches_reference(device, backend, dtype):
    points = [3, 6, 2]
    inputs = make_points_inputs(points, dtype=dtype, device=device)
    check_against_reference(inputs, backend, dtype, num_points_list=points)


@device_backend_param
@pytest.mark.parametrize("points", [[1, 1, 1], [0, 4, 1], [5, 0, 0], [0, 0, 0]], ids=str)
def test_counts_with_empty_levels(device, backend, points):
    inputs = make_points_inputs(points, N=2, Lq=3, M=2, D=3, device=device)
    check_against_reference(inputs, backend, torch.float64, num_points_list=points,
                            reference=kernel2020_and_grads)


@device_backend_param
def test_equal_counts_equal_the_uniform_op(device, backend):
    # [P] * L points per level is ms_deform_attn's [N, Lq, M, L, P, 2] layout viewed as [N, Lq, M, L*P, 2].
    value, shapes, starts, locations, weights = make_inputs(N=2, Lq=4, M=2, D=6, P=3, device=device)
    N, Lq, M, L, P, _ = locations.shape
    grad_output = torch.randn(N, Lq, M * 6, dtype=value.dtype, device=device)
    out, grads = op_and_grads(value, shapes, starts, locations, weights, grad_output, backend)
    flat_out, flat_grads = op_and_grads(value, shapes, starts, locations.reshape(N, Lq, M, L * P, 2),
                                        weights.reshape(N, Lq, M, L * P), grad_output, backend, [P] * L)
    assert torch.equal(out, flat_out)
    if device == "cuda":  # atomic adds into grad_value: any order
        torch.testing.assert_close(grads[0], flat_grads[0], rtol=1e-12, atol=1e-12)
    else:
        assert torch.equal(grads[0], flat_grads[0])
    assert torch.equal(grads[1].reshape(N, Lq, M, L * P, 2), flat_grads[1])
    assert torch.equal(grads[2].reshape(N, Lq, M, L * P), flat_grads[2])


@pytest.mark.parametrize("device,backend", [p for p in DEVICE_BACKENDS if p.id in ("cpu-native", "cuda-native")])
def test_gradcheck(device, backend):
    points = [2, 1, 3]
    value, shapes, starts, locations, weights = make_points_inputs(points, N=1, Lq=2, M=2, D=3, device=device,
                                                                   low=0.05, high=0.95)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn(v, shapes, starts, loc, w, num_points_list=points, backend=backend), leaves)


@pytest.mark.triton
def test_gradcheck_triton_interpreted():
    points = [1, 2]
    value, shapes, starts, locations, weights = make_points_inputs(points, N=1, Lq=1, M=1, D=2,
                                                                   levels=[(2, 3), (1, 1)], low=0.05, high=0.95)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn(v, shapes, starts, loc, w, num_points_list=points, backend="triton"), leaves)


@device_backend_param
def test_opcheck(device, backend):
    points = [2, 1, 3]
    value, shapes, starts, locations, weights = make_points_inputs(points, N=2, Lq=3, M=2, D=4, device=device)
    value, locations, weights = (t.requires_grad_() for t in (value, locations, weights))
    grad_output = torch.randn(2, 3, 8, dtype=value.dtype, device=device)
    suffix = ""
    if backend == "triton":
        from detr_ops import _triton_twins  # noqa: F401  (defines the *_triton ops)
        suffix = "_triton"
    forward = getattr(torch.ops.detr_ops, f"ms_deform_attn_points{suffix}")
    backward = getattr(torch.ops.detr_ops, f"ms_deform_attn_points_backward{suffix}")
    utils = opcheck_utils(backend)
    torch.library.opcheck(forward, (value, shapes, starts, locations, weights, points), test_utils=utils)
    torch.library.opcheck(backward, (grad_output, value.detach(), shapes, starts, locations.detach(),
                                     weights.detach(), points), test_utils=utils)


def test_compiles_fullgraph():
    torch._dynamo.reset()
    points = [2, 1, 3]
    value, shapes, starts, locations, weights = make_points_inputs(points, N=1, Lq=3, M=2, D=4)

    def f(v, loc, w):
        return ms_deform_attn(v, shapes, starts, loc, w, num_points_list=points)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(value, locations, weights), f(value, locations, weights))


def _bad(change, error, pattern, points=(2, 1, 3)):
    value, shapes, starts, locations, weights = make_points_inputs(list(points))
    args = dict(value=value, value_spatial_shapes=shapes, value_level_start_index=starts,
                sampling_locations=locations, attention_weights=weights, num_points_list=list(points))
    args.update(change(args))
    with pytest.raises(error, match=pattern):
        ms_deform_attn(**args)


@pytest.mark.parametrize("change,error,pattern", [
    (lambda a: dict(num_points_list=[2, 1]), ValueError, r"num_points_list must have one entry per level \(L = 3\)"),
    (lambda a: dict(num_points_list=[2, 2, 3]), ValueError,
     r"sampling_locations must be \[N, Lq, M, sum\(num_points_list\), 2\] = \[2, Lq, 2, 7, 2\]"),
    (lambda a: dict(num_points_list=[2, -1, 5]), ValueError, "non-negative"),
    (lambda a: dict(num_points_list=torch.tensor([2, 1, 3])), TypeError, "num_points_list must be a list of ints"),
    (lambda a: dict(num_points_list=[2, 1.0, 3]), TypeError, "num_points_list must be a list of ints"),
    (lambda a: dict(attention_weights=a["attention_weights"][..., :5]), ValueError,
     r"attention_weights must be \[N, Lq, M, sum\(num_points_list\)\] = \[2, 5, 2, 6\]"),
    (lambda a: dict(sampling_locations=a["sampling_locations"][..., None, :]), ValueError,
     r"sampling_locations must be \[N, Lq, M, sum\(num_points_list\), 2\]"),
], ids=["length", "sum", "negative", "tensor", "float", "weights", "rank"])
def test_bad_inputs(change, error, pattern):
    _bad(change, error, pattern)


@pytest.mark.parametrize("what", ["count", "negative", "sum", "grad dtype"])
def test_raw_op_checks(what):
    points = [2, 1, 3]
    value, shapes, starts, locations, weights = make_points_inputs(points)
    op, backward = torch.ops.detr_ops.ms_deform_attn_points, torch.ops.detr_ops.ms_deform_attn_points_backward
    with pytest.raises(ValueError, match="num_points_list|grad_output"):
        if what == "count":
            op(value, shapes, starts, locations, weights, [2, 1])
        elif what == "negative":
            op(value, shapes, starts, locations[..., :4, :], weights[..., :4], [2, -1, 3])
        elif what == "sum":
            op(value, shapes, starts, locations, weights, [2, 2, 3])
        else:
            grad = torch.randn(2, 5, 16, dtype=torch.complex128)
            backward(grad, value, shapes, starts, locations, weights, points)


@pytest.mark.parametrize("levels_count", [1, 5])
def test_many_and_single_levels(levels_count):
    levels = [(3, 2)] * levels_count
    points = [(l % 3) + 1 for l in range(levels_count)]
    inputs = make_points_inputs(points, N=1, Lq=3, M=2, D=3, levels=levels)
    check_against_reference(inputs, "native", torch.float64, num_points_list=points)


def test_levels_in_order_of_the_points_axis():
    # Level l owns the points after those of levels < l: moving all of level 0's weight to zero
    # removes exactly level 0's contribution.
    points = [2, 3, 1]
    value, shapes, starts, locations, weights = make_points_inputs(points, levels=SMALL_LEVELS)
    full = ms_deform_attn(value, shapes, starts, locations, weights, num_points_list=points)
    weights_rest = weights.clone()
    weights_rest[..., :2] = 0
    only_level0 = weights - weights_rest
    rest = ms_deform_attn(value, shapes, starts, locations, weights_rest, num_points_list=points)
    level0 = ms_deform_attn(value, shapes, starts, locations, only_level0, num_points_list=points)
    torch.testing.assert_close(rest + level0, full)
