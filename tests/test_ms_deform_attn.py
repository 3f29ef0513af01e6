"""detr_ops.ms_deform_attn against the float64 grid_sample reference, on every device x backend."""
import pytest
import torch

import detr_ops
from tests.cases import DEVICE_BACKENDS, FLOAT_DTYPES, device_backend_param, dtype_param
from detr_ops import MSDeformAttnFunction, ms_deform_attn
from tests.msda_inputs import (SMALL_LEVELS, check_against_reference, kernel2020_and_grads, level_tensors, make_inputs,
                               op_and_grads)


@device_backend_param
@dtype_param(FLOAT_DTYPES)
def test_matches_reference(device, backend, dtype):
    check_against_reference(make_inputs(dtype=dtype, device=device), backend, dtype)


@device_backend_param
@pytest.mark.parametrize("D", [1, 30, 32, 64, 71])
def test_head_dims(device, backend, D):
    check_against_reference(make_inputs(N=1, Lq=3, M=2, D=D, P=2, device=device), backend, torch.float64)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["native", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("D", [1025, 2048])
def test_large_head_dims_gpu(backend, D):
    check_against_reference(make_inputs(N=1, Lq=4, M=1, D=D, P=2, device="cuda"), backend, torch.float64)


@device_backend_param
def test_more_levels_heads_points(device, backend):
    levels = [(6, 3), (1, 7), (3, 3), (2, 2), (1, 1)]
    check_against_reference(make_inputs(N=3, Lq=4, M=3, D=5, P=5, levels=levels, device=device), backend,
                            torch.float64)


@device_backend_param
def test_border_and_outside_locations(device, backend):
    value, shapes, starts, locations, weights = make_inputs(N=1, Lq=1, M=1, D=4, P=12, device=device)
    W, H = 5.0, 4.0
    # x in normalised units on level 0 (W=5): edges 0 and 1, pixel centres, the last pixel's far
    # half, exactly x_pix = -1 and x_pix = W (the limits of any contribution), and far outside.
    # At x_pix = -1 the 2020 kernel (which the op follows) and grid_sample differ in the location
    # gradient (test_ms_deform_attn_kinks.py), so the reference here is the 2020 kernel's.
    xs = torch.tensor([0.0, 1.0, 0.5 / W, 4.5 / W, 1.0 - 0.1 / W, -0.5 / W, 1.0 + 0.5 / W, -0.3, 1.3, -5.0, 7.0, 0.5])
    ys = torch.tensor([0.5, 0.5, 0.0, 1.0, 0.5 / H, 1.0 + 0.5 / H, -0.5 / H, 0.5, -0.2, 0.5, 0.5, 1.2])
    locations[0, 0, 0, :, :, 0] = xs.to(locations)
    locations[0, 0, 0, :, :, 1] = ys.to(locations)
    check_against_reference((value, shapes, starts, locations, weights), backend, torch.float64,
                            reference=kernel2020_and_grads)


@device_backend_param
def test_nonfinite_locations_contribute_nothing(device, backend):
    value, shapes, starts, locations, weights = make_inputs(N=1, Lq=2, M=2, D=3, P=4, device=device)
    bad = locations.clone()
    bad[0, 0, 0, 0, 0, 0] = float("nan")
    bad[0, 0, 1, 1, 2, 1] = float("inf")
    bad[0, 1, 0, 2, 3, 0] = -float("inf")
    bad[0, 1, 1, 0, 1, :] = float("nan")
    # Replace the whole (x, y) pair of a non-finite point by a far-away point: same result expected.
    far = torch.where(torch.isfinite(bad).all(-1, keepdim=True), bad, torch.full_like(bad, -10.0))
    grad_output = torch.randn(1, 2, 6, dtype=value.dtype, device=device)
    out, grads = op_and_grads(value, shapes, starts, bad, weights, grad_output, backend)
    out_far, grads_far = op_and_grads(value, shapes, starts, far, weights, grad_output, backend)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(out, out_far)
    for g, gf in zip(grads, grads_far):
        torch.testing.assert_close(g, gf)
    nonfinite = ~torch.isfinite(bad).all(-1)
    assert (grads[1][nonfinite] == 0).all() and (grads[2][nonfinite] == 0).all()


@device_backend_param
@pytest.mark.parametrize("N,Lq", [(0, 4), (2, 0)])
def test_empty_batch_and_queries(device, backend, N, Lq):
    value, shapes, starts, locations, weights = make_inputs(N=N, Lq=Lq, device=device)
    grad_output = torch.randn(N, Lq, value.shape[2] * value.shape[3], dtype=value.dtype, device=device)
    out, grads = op_and_grads(value, shapes, starts, locations, weights, grad_output, backend)
    assert out.shape == (N, Lq, value.shape[2] * value.shape[3])
    assert [g.shape for g in grads] == [value.shape, locations.shape, weights.shape]
    assert all((g == 0).all() for g in grads)


@device_backend_param
def test_non_contiguous_inputs(device, backend):
    value, shapes, starts, locations, weights = make_inputs(device=device)
    value_nc = value.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    locations_nc = torch.cat([locations, locations], dim=-1)[..., ::2]
    locations_nc[..., 1] = locations[..., 1]
    weights_nc = weights.transpose(0, 1).contiguous().transpose(0, 1)
    assert not (value_nc.is_contiguous() or locations_nc.is_contiguous() or weights_nc.is_contiguous())
    check_against_reference((value_nc, shapes, starts, locations_nc, weights_nc), backend, torch.float64)


@pytest.mark.parametrize("device,backend", [p for p in DEVICE_BACKENDS if p.id in ("cpu-native", "cuda-native")])
def test_gradcheck_op_and_function(device, backend):
    value, shapes, starts, locations, weights = make_inputs(N=1, Lq=2, M=2, D=3, P=2, device=device, low=0.05,
                                                            high=0.95)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]

    def op(v, loc, w):
        return ms_deform_attn(v, shapes, starts, loc, w, backend=backend)

    def function(v, loc, w):
        return MSDeformAttnFunction.apply(v, shapes, starts, loc, w, 64)

    assert torch.autograd.gradcheck(op, leaves)
    assert torch.autograd.gradcheck(function, leaves)


@pytest.mark.triton
def test_gradcheck_triton_interpreted():
    value, shapes, starts, locations, weights = make_inputs(N=1, Lq=1, M=1, D=2, P=2, levels=[(2, 3), (1, 1)],
                                                            low=0.05, high=0.95)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(lambda v, loc, w: ms_deform_attn(v, shapes, starts, loc, w, backend="triton"),
                                    leaves)


def test_function_matches_op_and_accepts_any_im2col_step():
    value, shapes, starts, locations, weights = make_inputs(N=3)
    expected = ms_deform_attn(value, shapes, starts, locations, weights)
    for step in (1, 2, 64):  # 2 does not divide the batch of 3: must not matter
        torch.testing.assert_close(MSDeformAttnFunction.apply(value, shapes, starts, locations, weights, step),
                                   expected, rtol=0, atol=0)
    assert issubclass(MSDeformAttnFunction, torch.autograd.Function)


def test_mixed_dtypes_are_promoted():
    value, shapes, starts, locations, weights = make_inputs(dtype=torch.float32)
    out = ms_deform_attn(value, shapes, starts, locations.double(), weights)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ms_deform_attn(value.double(), shapes, starts, locations.double(), weights.double()))


def test_int32_index_tensors_are_accepted():
    value, shapes, starts, locations, weights = make_inputs()
    torch.testing.assert_close(ms_deform_attn(value, shapes.int(), starts.int(), locations, weights),
                               ms_deform_attn(value, shapes, starts, locations, weights), rtol=0, atol=0)


def _bad_inputs():
    value, shapes, starts, locations, weights = make_inputs()
    ok = dict(value=value, value_spatial_shapes=shapes, value_level_start_index=starts,
              sampling_locations=locations, attention_weights=weights)
    cases = {
        "value rank": (dict(value=value[0]), ValueError, r"value must be \[N, S, M, D\]"),
        "value not a tensor": (dict(value=value.tolist()), TypeError, "value must be a torch.Tensor"),
        "value integer": (dict(value=value.long()), ValueError, "value must be a floating tensor"),
        "value float8": (dict(value=value.float().to(torch.float8_e4m3fn)), ValueError,
                         "value must be float16, bfloat16, float32 or float64, got dtype torch.float8_e4m3fn"),
        "float spatial shapes": (dict(value_spatial_shapes=shapes.float()), ValueError,
                                 "value_spatial_shapes must be an integer tensor"),
        "spatial shapes rank": (dict(value_spatial_shapes=shapes.flatten()), ValueError,
                                r"value_spatial_shapes must be \[L, 2\]"),
        "shapes do not sum to S": (dict(value_spatial_shapes=shapes + 1), ValueError,
                                   "value_spatial_shapes describe .* but value has S = 27"),
        "negative shapes": (dict(value_spatial_shapes=-shapes), ValueError, "must be non-negative"),
        "start index": (dict(value_level_start_index=starts.flip(0)), ValueError,
                        r"value_level_start_index must be the start of each level"),
        "start index length": (dict(value_level_start_index=starts[:2]), ValueError,
                               r"value_level_start_index must be \[L\] = \[3\]"),
        "float start index": (dict(value_level_start_index=starts.double()), ValueError,
                              "value_level_start_index must be an integer tensor"),
        "locations batch": (dict(sampling_locations=locations[:1]), ValueError,
                            r"sampling_locations must be \[N, Lq, M, L, P, 2\] = \[2, Lq, 2, 3, P, 2\]"),
        "locations heads": (dict(sampling_locations=locations[:, :, :1]), ValueError, "sampling_locations must be"),
        "locations last dim": (dict(sampling_locations=locations[..., :1]), ValueError, "sampling_locations must be"),
        "weights shape": (dict(attention_weights=weights[..., :2]), ValueError,
                          r"attention_weights must be \[N, Lq, M, L, P\] = \[2, 5, 2, 3, 3\]"),
        "weights integer": (dict(attention_weights=weights.long()), ValueError,
                            "attention_weights must be a floating tensor"),
        "mixed devices": (dict(sampling_locations=locations.to("meta")), ValueError,
                          "value and sampling_locations must be on the same device"),
        "mixed devices shapes": (dict(value_spatial_shapes=shapes.to("meta")), ValueError,
                                 "value and value_spatial_shapes must be on the same device"),
    }
    return ok, cases


@pytest.mark.parametrize("case", list(_bad_inputs()[1]))
def test_bad_input_messages(case):
    ok, cases = _bad_inputs()
    change, error, pattern = cases[case]
    with pytest.raises(error, match=pattern):
        ms_deform_attn(**{**ok, **change})


def test_bad_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        ms_deform_attn(*make_inputs(), backend="cudnn")


def test_unvalidated_inconsistent_shapes_stay_in_bounds():
    # validate=False: a level claiming more pixels than value holds is skipped, never read past S.
    value, shapes, starts, locations, weights = make_inputs()
    huge = shapes.clone()
    huge[0] = torch.tensor([1000, 1000])
    out = ms_deform_attn(value, huge, starts, locations, weights, validate=False)
    kept = weights.clone()
    kept[:, :, :, 0] = 0  # level 0 skipped
    torch.testing.assert_close(out, ms_deform_attn(value, shapes, starts, locations, kept))


def test_cpu_backward_deterministic_across_thread_counts():
    value, shapes, starts, locations, weights = make_inputs(N=2, Lq=64, M=2, D=16, P=4, dtype=torch.float32,
                                                            levels=[(8, 8), (4, 4)], low=0.0, high=0.3)
    grad_output = torch.randn(2, 64, 32)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            torch.use_deterministic_algorithms(True)
            try:
                results.append(op_and_grads(value, shapes, starts, locations, weights, grad_output, "native")[1])
            finally:
                torch.use_deterministic_algorithms(False)
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("Lq,P", [(9, 3), (2, 2)], ids=["buffered", "largest-level-in-place"])
@pytest.mark.parametrize("N,M", [(1, 1), (3, 2)])
@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_backward_task_splits(N, M, threads, Lq, P):
    # The CPU backward runs one task per (image, head), or per (image, head, level) when N*M < 2 *
    # threads: both splits, on one and two threads, against the reference. D=32 is the fixed-width
    # build. With Lq*P*4 = 16 corner samples, the 9x11 level (fewer samples than pixels) is summed
    # into grad_value in place and the small levels in the buffer; with 108, all levels are buffered.
    inputs = make_inputs(N=N, Lq=Lq, M=M, D=32, P=P, levels=[(9, 11), (3, 2), (1, 1)])
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_against_reference(inputs, "native", torch.float64)
    finally:
        torch.set_num_threads(saved)


def test_unvalidated_overlapping_levels_sum_their_gradients():
    # validate=False: two levels that read the same value rows (start index 0 twice) behave as two
    # copies of those rows, whose value gradients add up.
    value, shapes, starts, locations, weights = make_inputs(N=2, Lq=4, M=2, D=6, P=2, levels=[(3, 4), (3, 4)])
    S = value.shape[1] // 2
    shared = value[:, :S].contiguous()
    overlapping = ms_deform_attn(shared, shapes, torch.tensor([0, 0]), locations, weights, validate=False)
    torch.testing.assert_close(overlapping, ms_deform_attn(torch.cat([shared, shared], 1), shapes, starts, locations,
                                                           weights))
    grad_output = torch.randn_like(overlapping)
    leaves = [t.detach().requires_grad_() for t in (shared, locations, weights)]
    out = ms_deform_attn(leaves[0], shapes, torch.tensor([0, 0]), leaves[1], leaves[2], validate=False)
    grads = torch.autograd.grad(out, leaves, grad_output)
    _, copies = op_and_grads(torch.cat([shared, shared], 1), shapes, starts, locations, weights, grad_output,
                             "native")
    torch.testing.assert_close(grads[0], copies[0][:, :S] + copies[0][:, S:])
    torch.testing.assert_close(grads[1], copies[1])
    torch.testing.assert_close(grads[2], copies[2])


def _opcheck_args(device):
    value, shapes, starts, locations, weights = make_inputs(N=2, Lq=3, M=2, D=4, P=2, device=device)
    value, locations, weights = (t.requires_grad_() for t in (value, locations, weights))
    grad_output = torch.randn(2, 3, 8, dtype=value.dtype, device=device)
    return (value, shapes, starts, locations, weights), (grad_output, value.detach(), shapes, starts,
                                                        locations.detach(), weights.detach())


@device_backend_param
def test_opcheck(device, backend):
    forward_args, backward_args = _opcheck_args(device)
    if backend == "triton":
        from detr_ops import _triton_twins  # noqa: F401  (defines the *_triton ops)
    suffix = "_triton" if backend == "triton" else ""
    forward = getattr(torch.ops.detr_ops, f"ms_deform_attn{suffix}")
    backward = getattr(torch.ops.detr_ops, f"ms_deform_attn_backward{suffix}")
    torch.library.opcheck(forward, forward_args)
    torch.library.opcheck(backward, backward_args)


def test_public_reference_exported():
    assert detr_ops.ms_deform_attn_pytorch is detr_ops.reference.ms_deform_attn_pytorch
    value, shapes, starts, locations, weights = make_inputs(levels=SMALL_LEVELS)
    assert detr_ops.ms_deform_attn_pytorch(value, shapes, starts, locations, weights).shape == (2, 5, 16)
    assert level_tensors(SMALL_LEVELS)[2] == 27
