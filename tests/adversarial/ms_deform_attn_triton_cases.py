"""Adversarial cases of the Triton MSDA ops (torch.ops.detr_ops.ms_deform_attn*_triton), run in child
processes under TRITON_INTERPRET=1 (the `triton` invocation of the test suite). A raw call reaches the
launchers with any tensors: they check them as the C++ kernels do, and skip levels that do not fit."""
import contextlib

import torch

from detr_ops import ms_deform_attn
from tests.adversarial.ms_deform_attn_cases import grad_like, inputs, issue_reproduction
from tests.isolated import case


class _Ops:
    """torch.ops.detr_ops, with the *_triton ops defined on first use (in the child process that runs
    the cases, not when pytest collects their names)."""

    def __getattr__(self, name):
        from detr_ops import _triton_twins  # noqa: F401

        return getattr(torch.ops.detr_ops, name)


ops = _Ops()


@contextlib.contextmanager
def deterministic():
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


@case()
def overflow_forward_and_backward():
    value, shapes, starts, loc, weights = issue_reproduction()
    assert (ops.ms_deform_attn_triton(value, shapes, starts, loc, weights) == 0).all()
    grad = torch.ones(1, 1, 4, dtype=torch.float64)
    for mode in (contextlib.nullcontext(), deterministic()):
        with mode:
            grads = ops.ms_deform_attn_backward_triton(grad, value, shapes, starts, loc, weights)
        assert all((g == 0).all() for g in grads)


@case()
def overflow_points_forward_and_backward():
    value, shapes, starts, loc, weights = issue_reproduction()
    loc, weights = loc.view(1, 1, 1, 1, 2), weights.view(1, 1, 1, 1)
    assert (ops.ms_deform_attn_points_triton(value, shapes, starts, loc, weights, [1]) == 0).all()
    grads = ops.ms_deform_attn_points_backward_triton(torch.ones(1, 1, 4, dtype=torch.float64), value, shapes, starts,
                                                      loc, weights, [1])
    assert all((g == 0).all() for g in grads)


@case()
def overflow_public_unvalidated():
    out = ms_deform_attn(*issue_reproduction(), validate=False, backend="triton")
    assert (out == 0).all()


@case()
def huge_and_negative_shapes_and_starts():
    value, shapes, starts, loc, weights = inputs(Lq=1, P=1)
    for bad_shapes, bad_starts in (([[2**62, 2**2], [2, 2]], [0, 12]), ([[-3, 4], [2, 2]], [0, 12]),
                                   ([[3, 4], [2, 2]], [-1, 12]), ([[3, 4], [2, 2]], [0, 2**62]),
                                   ([[3, 4], [2, 2]], [0, -2**63])):
        s, st = torch.tensor(bad_shapes), torch.tensor(bad_starts)
        expected = ops.ms_deform_attn(value, s, st, loc, weights)
        torch.testing.assert_close(ops.ms_deform_attn_triton(value, s, st, loc, weights), expected)
        with deterministic():
            grads = ops.ms_deform_attn_backward_triton(grad_like(value, loc), value, s, st, loc, weights)
        assert all(g.isfinite().all() for g in grads)


@case(raises=ValueError, match=r"value must be float16, bfloat16, float32 or float64, got float8_e4m3fn")
def float8_value():
    value, shapes, starts, loc, weights = [t.to(torch.float8_e4m3fn) if t.is_floating_point() else t
                                           for t in inputs(dtype=torch.float32)]
    ops.ms_deform_attn_triton(value, shapes, starts, loc, weights)


@case(raises=ValueError, match=r"grad_output must have value's dtype float64, got complex128")
def complex_grad_backward():
    value, shapes, starts, loc, weights = inputs()
    ops.ms_deform_attn_backward_triton(grad_like(value, loc).to(torch.complex128), value, shapes, starts, loc, weights)


@case(raises=ValueError, match=r"grad_output must have value's dtype float64, got complex128")
def complex_grad_points_backward():
    value, shapes, starts, loc, weights = inputs()
    ops.ms_deform_attn_points_backward_triton(grad_like(value, loc).to(torch.complex128), value, shapes, starts,
                                              loc.flatten(3, 4), weights.flatten(3), [2, 2])


@case(raises=ValueError, match=r"sampling_locations must be \[N, Lq, M, L, P, 2\] = \[1, Lq, 2, 2, P, 2\]")
def mismatched_locations():
    value, shapes, starts, loc, weights = inputs()
    ops.ms_deform_attn_triton(value, shapes, starts, loc[:, :, :1], weights)


@case(raises=ValueError, match=r"attention_weights must be \[N, Lq, M, L, P\]")
def mismatched_weights_backward():
    value, shapes, starts, loc, weights = inputs()
    ops.ms_deform_attn_backward_triton(grad_like(value, loc), value, shapes, starts, loc, weights[..., :1])


@case(raises=ValueError, match=r"num_points_list must have one entry per level \(L = 2\)")
def wrong_points_list_length():
    value, shapes, starts, loc, weights = inputs()
    ops.ms_deform_attn_points_triton(value, shapes, starts, loc.flatten(3, 4), weights.flatten(3), [4])


@case(raises=ValueError, match=r"spatial_shapes must be int64, got int32")
def int32_shapes():
    value, shapes, starts, loc, weights = inputs()
    ops.ms_deform_attn_triton(value, shapes.int(), starts, loc, weights)


@case(raises=ValueError, match=r"the output's N \* Lq \* M \* D = .* overflows int64")
def overflowing_output_size():
    value = torch.zeros(1, 1, 1, 1, dtype=torch.float64).expand(1, 1, 2**31, 2**30)
    loc = torch.zeros(1, 1, 1, 1, 1, 2, dtype=torch.float64).expand(1, 8, 2**31, 1, 1, 2)
    ops.ms_deform_attn_triton(value, torch.tensor([[1, 1]]), torch.tensor([0]), loc, loc[..., 0])


@case()
def nan_grad_and_nonfinite_locations():
    value, shapes, starts, loc, weights = inputs(Lq=3)
    loc[0, 2] = float("nan")
    grad = grad_like(value, loc)
    grad[0, 0, 0] = float("nan")
    native = ops.ms_deform_attn_backward(grad, value, shapes, starts, loc, weights)
    for mode in (contextlib.nullcontext(), deterministic()):
        with mode:
            got = ops.ms_deform_attn_backward_triton(grad, value, shapes, starts, loc, weights)
        for a, b in zip(got, native):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, equal_nan=True)


@case()
def expanded_inputs():
    value, shapes, starts, loc, weights = inputs(N=2, Lq=3)
    expanded = (value[:1].expand_as(value), loc[:, :1].expand_as(loc), weights[..., :1].expand_as(weights))
    out = ops.ms_deform_attn_triton(expanded[0], shapes, starts, expanded[1], expanded[2])
    torch.testing.assert_close(out, ops.ms_deform_attn(*[t.contiguous() for t in (expanded[0], shapes, starts)],
                                                       expanded[1].contiguous(), expanded[2].contiguous()))


@case()
def empty_everything():
    for kwargs in (dict(N=0), dict(Lq=0), dict(M=0), dict(D=0), dict(P=0), dict(levels=((0, 5), (2, 0)))):
        value, shapes, starts, loc, weights = inputs(**kwargs)
        out = ops.ms_deform_attn_triton(value, shapes, starts, loc, weights)
        with deterministic():
            grads = ops.ms_deform_attn_backward_triton(grad_like(value, loc), value, shapes, starts, loc, weights)
        assert (out == 0).all() and all((g == 0).all() for g in grads)
