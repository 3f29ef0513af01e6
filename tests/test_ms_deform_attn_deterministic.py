"""The deterministic GPU backward of MSDA (Triton's sort-and-segment grad_value, selected under
torch.use_deterministic_algorithms(True)): gradients against the references, the same bits on every
run and for every block size (under the interpreter here), the CPU kernel's summation order, and the
native CUDA op's backward sent to it in that mode."""
import contextlib

import pytest
import torch

from detr_ops import ms_deform_attn
from tests.cases import FLOAT_DTYPES, TOLERANCE, dtype_param
from tests.msda_inputs import check_against_reference, make_inputs, make_points_inputs, op_and_grads


@contextlib.contextmanager
def deterministic(enabled=True):
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _triton_module():
    from detr_ops.triton import ms_deform_attn as module

    return module


def _grads(inputs, backend, grad_output, num_points_list=None):
    return op_and_grads(*inputs, grad_output, backend, num_points_list)[1]


def _grad_output(inputs, dtype=None):
    value = inputs[0]
    return torch.randn(value.shape[0], inputs[3].shape[1], value.shape[2] * value.shape[3],
                       dtype=torch.float64).to(device=value.device, dtype=dtype or value.dtype)


@pytest.mark.triton
@dtype_param(FLOAT_DTYPES)
def test_matches_reference(dtype):
    with deterministic():
        check_against_reference(make_inputs(N=2, Lq=4, M=2, D=5, P=2, dtype=dtype), "triton", dtype)


@pytest.mark.triton
def test_points_list_matches_reference():
    points = [2, 0, 3]
    with deterministic():
        check_against_reference(make_points_inputs(points, N=2, Lq=3, M=2, D=3), "triton", torch.float64,
                                num_points_list=points)


@pytest.mark.triton
def test_selected_only_in_deterministic_mode(monkeypatch):
    module = _triton_module()
    launched = []
    real = module.launch

    def spy(kernel):
        launched.append(kernel.fn.__name__)
        return real(kernel)

    monkeypatch.setattr(module, "launch", spy)
    inputs = make_inputs(N=1, Lq=2, M=1, D=4, P=2)
    grad_output = _grad_output(inputs)
    _grads(inputs, "triton", grad_output)
    assert "_grad_value_kernel" not in launched
    launched.clear()
    with deterministic():
        _grads(inputs, "triton", grad_output)
    assert "_grad_value_kernel" in launched


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_bitwise_across_runs_and_block_sizes(monkeypatch, dtype):
    # Many points per pixel (locations in a small window), so grad_value's rows sum many terms.
    inputs = make_inputs(N=2, Lq=24, M=2, D=10, P=3, levels=[(3, 4), (2, 2)], dtype=dtype, low=0.2, high=0.6)
    grad_output = _grad_output(inputs)
    module = _triton_module()
    with deterministic():
        first = _grads(inputs, "triton", grad_output)
        again = _grads(inputs, "triton", grad_output)
        for tile in ("_TILE", "_BACKWARD_TILE", "_BACKWARD_TILE_FP64"):
            monkeypatch.setattr(module, tile, 32)  # BLOCK_Q 2 instead of 16 to 64
        fewer_rows = _grads(inputs, "triton", grad_output)
        monkeypatch.setattr(module, "_MAX_BLOCK_D", 4)  # D = 10 in three channel blocks, in both kernels
        chunked = _grads(inputs, "triton", grad_output)
    for other in (again, fewer_rows):
        assert all(torch.equal(a, b) for a, b in zip(first, other))
    # grad_value sums each row in the same order whatever the blocks; the location and weight
    # gradients reduce D in blocks, so a different channel block only rounds differently.
    assert torch.equal(first[0], chunked[0])
    for a, b in zip(first[1:], chunked[1:]):
        torch.testing.assert_close(a, b)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=["float64", "float32", "float16"])
def test_grad_value_matches_the_cpu_kernel(dtype):
    # Both add each row's contributions in point order, from zero; only the rounding of a product
    # may differ (the CPU kernel's AVX2 clone fuses multiply-adds, the interpreter does not).
    inputs = make_inputs(N=2, Lq=9, M=2, D=6, P=3, levels=[(3, 4), (2, 3), (1, 1)], dtype=dtype, low=0.0, high=1.0)
    grad_output = _grad_output(inputs)
    with deterministic():
        triton_grads = _grads(inputs, "triton", grad_output)
    cpu_grads = _grads(inputs, "native", grad_output)
    for got, want in zip(triton_grads, cpu_grads):
        torch.testing.assert_close(got, want, **TOLERANCE[dtype])


@pytest.mark.triton
def test_nonfinite_and_empty():
    inputs = list(make_inputs(N=1, Lq=3, M=2, D=3, P=2))
    inputs[3][0, 0, 0, 0, 0, 0] = float("nan")
    inputs[3][0, 1, 1, 1, 1, 1] = float("inf")
    grad_output = _grad_output(inputs)
    with deterministic():
        det = _grads(inputs, "triton", grad_output)
    cpu = _grads(inputs, "native", grad_output)
    for a, b in zip(det, cpu):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    empty = make_inputs(N=0, Lq=3)
    with deterministic():
        grads = _grads(empty, "triton", _grad_output(empty))
    assert all(g.numel() == 0 for g in grads)


@pytest.mark.cuda
@pytest.mark.triton
@pytest.mark.parametrize("num_points_list", [None, [2, 3, 1]], ids=["uniform", "points-list"])
def test_native_cuda_backward_goes_to_triton_in_deterministic_mode(num_points_list):
    if num_points_list is None:
        inputs = make_inputs(N=2, Lq=64, M=4, D=32, P=4, dtype=torch.float32, device="cuda", low=0.3, high=0.5)
    else:
        inputs = make_points_inputs(num_points_list, N=2, Lq=64, M=4, D=32, dtype=torch.float32, device="cuda",
                                    low=0.3, high=0.5)
    grad_output = _grad_output(inputs)
    with deterministic():
        runs = [_grads(inputs, "native", grad_output, num_points_list) for _ in range(3)]
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))
    atomic = _grads(inputs, "native", grad_output, num_points_list)
    for a, b in zip(runs[0], atomic):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
def test_raw_cuda_backward_still_alerts():
    value, shapes, starts, locations, weights = make_inputs(N=1, Lq=2, device="cuda")
    grad_output = torch.randn(1, 2, value.shape[2] * value.shape[3], dtype=value.dtype, device="cuda")
    with deterministic(), pytest.raises(RuntimeError, match="ms_deform_attn_backward"):
        torch.ops.detr_ops.ms_deform_attn_backward(grad_output, value, shapes, starts, locations, weights)


def test_cpu_is_deterministic_in_both_modes():
    inputs = make_inputs(N=2, Lq=16, M=2, D=8, P=3, dtype=torch.float32, low=0.2, high=0.6)
    grad_output = _grad_output(inputs)
    with deterministic():
        det = _grads(inputs, "native", grad_output)
    plain = _grads(inputs, "native", grad_output)
    assert all(torch.equal(a, b) for a, b in zip(det, plain))


def test_function_backward_in_deterministic_mode():
    from detr_ops import MSDeformAttnFunction

    value, shapes, starts, locations, weights = make_inputs(N=1, Lq=3)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    with deterministic():
        out = MSDeformAttnFunction.apply(leaves[0], shapes, starts, leaves[1], leaves[2], 64)
        grads = torch.autograd.grad(out.sum(), leaves)
    expected = torch.autograd.grad(ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2]).sum(), leaves)
    assert all(torch.equal(a, b) for a, b in zip(grads, expected))
