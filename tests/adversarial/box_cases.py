"""Adversarial cases of the box ops (tests/test_box_adversarial.py runs them in child processes):
every public box function and every raw op a user can reach (``pairwise_iou``, ``giou_loss`` and
their ``_backward``), with wrong dtypes (float8, complex, bool, int), stride-0 and non-contiguous
inputs, NaN/inf everywhere, and sizes whose products overflow. Each gives a clear error naming the
argument, or a correct result; never a crash.

The Triton twins (``*_triton``) run the same cases from box_triton_cases.py, under the interpreter.
"""
import math

import torch

import detr_ops
from tests.isolated import case

ops = torch.ops.detr_ops
NAN, INF = math.nan, math.inf
# The raw ops under test; box_triton_cases.py rebinds this to the Triton twins.
SUFFIX = ""


def op(name):
    if SUFFIX:
        from detr_ops import _triton_twins  # noqa: F401  (defines the *_triton ops on first use)
    return getattr(ops, name + SUFFIX)


def boxes(n, dtype=torch.float32):
    xy = torch.rand(n, 2, dtype=torch.float64)
    return torch.cat([xy, xy + torch.rand(n, 2, dtype=torch.float64) * 0.5 + 0.01], -1).to(dtype)


def reference_pairwise(b1, b2, generalized):
    # the compiled op on contiguous float64 copies: the layout tests compare against it
    return getattr(ops, "pairwise_iou")(b1.double().contiguous(), b2.double().contiguous(), "xyxy", generalized)


def expect_close(got, expected):
    torch.testing.assert_close(got.double(), expected.double(), rtol=1e-5, atol=1e-6, equal_nan=True)


# ---- dtypes: public functions ------------------------------------------------------------------


@case(raises=ValueError, match="boxes1 must be float16, bfloat16, float32, float64")
def public_float8_e4m3_boxes1():
    detr_ops.box_iou(torch.zeros(2, 4, dtype=torch.float8_e4m3fn), boxes(2))


@case(raises=ValueError, match="boxes2 must be float16, bfloat16, float32, float64")
def public_float8_e5m2_boxes2():
    detr_ops.generalized_box_iou(boxes(2), torch.zeros(2, 4, dtype=torch.float8_e5m2))


@case(raises=ValueError, match="boxes1 must be float16, bfloat16, float32, float64")
def public_loss_float8():
    detr_ops.generalized_box_iou_loss(torch.zeros(2, 4, dtype=torch.float8_e4m3fn), boxes(2))


@case(raises=ValueError, match="boxes must be float16, bfloat16, float32, float64")
def public_validity_float8():
    detr_ops.box_validity(torch.zeros(2, 4, dtype=torch.float8_e4m3fn))


@case(raises=ValueError, match="boxes must be float16, bfloat16, float32, float64 or an integer dtype, got torch.float8")
def public_convert_float8():
    detr_ops.box_cxcywh_to_xyxy(torch.zeros(2, 4, dtype=torch.float8_e4m3fn))


@case(raises=ValueError, match="boxes must be float16, bfloat16, float32, float64 or an integer dtype, got torch.complex")
def public_convert_complex():
    detr_ops.box_xyxy_to_cxcywh(torch.zeros(2, 4, dtype=torch.complex64))


@case(raises=ValueError, match=r"boxes must have shape \[\.\.\., 4\]")
def public_convert_wrong_last_dim():
    detr_ops.box_xyxy_to_cxcywh(torch.zeros(2, 5))


@case()
def public_convert_int_and_strided():
    x = torch.tensor([[0, 0, 4, 2]], dtype=torch.int32)
    assert torch.equal(detr_ops.box_xyxy_to_cxcywh(x), torch.tensor([[2.0, 1.0, 4.0, 2.0]]))
    y = torch.tensor([[2.0, 1.0, 4.0, 2.0]]).expand(3, 4)
    assert torch.equal(detr_ops.box_cxcywh_to_xyxy(y), torch.tensor([[0.0, 0.0, 4.0, 2.0]]).expand(3, 4))


@case(raises=ValueError, match="boxes1 must hold real box coordinates")
def public_complex_boxes():
    detr_ops.box_iou(torch.zeros(2, 4, dtype=torch.complex64), boxes(2))


@case(raises=ValueError, match="boxes2 must hold real box coordinates")
def public_bool_boxes():
    detr_ops.generalized_box_iou_loss(boxes(2), torch.ones(2, 4, dtype=torch.bool))


@case()
def public_int_boxes_are_float32():
    out = detr_ops.generalized_box_iou(torch.tensor([[0, 0, 2, 2]], dtype=torch.int16),
                                       torch.tensor([[1, 1, 3, 3]], dtype=torch.uint8))
    assert out.dtype == torch.float32 and abs(out.item() - (1 / 7 - 2 / 9)) < 1e-6


# ---- dtypes: raw ops -----------------------------------------------------------------------------


@case(raises=ValueError, match="boxes1 must be float16, bfloat16, float32 or float64")
def raw_pairwise_float8():
    x = torch.zeros(2, 4, dtype=torch.float8_e4m3fn)
    op("pairwise_iou")(x, x, "xyxy", True)


@case(raises=ValueError, match="boxes1 must be float16, bfloat16, float32 or float64")
def raw_pairwise_int():
    x = torch.zeros(2, 4, dtype=torch.int32)
    op("pairwise_iou")(x, x, "xyxy", False)


@case(raises=ValueError, match="boxes1 must be float16, bfloat16, float32 or float64")
def raw_pairwise_complex():
    x = torch.zeros(2, 4, dtype=torch.complex64)
    op("pairwise_iou")(x, x, "xyxy", False)


@case(raises=ValueError, match="boxes1 must be float16, bfloat16, float32 or float64")
def raw_loss_bool():
    x = torch.zeros(2, 4, dtype=torch.bool)
    op("giou_loss")(x, x, "xyxy", 1e-7)


@case(raises=ValueError, match="boxes1 must be float16, bfloat16, float32 or float64")
def raw_loss_backward_float8():
    x = torch.zeros(2, 4, dtype=torch.float8_e5m2)
    op("giou_loss_backward")(torch.ones(2), x, x, "xyxy", 1e-7)


@case(raises=ValueError, match="grad must be float16, bfloat16, float32 or float64")
def raw_pairwise_backward_complex_grad():
    b = boxes(3)
    op("pairwise_iou_backward")(torch.ones(3, 3, dtype=torch.complex64), b, b, "xyxy", True)


@case(raises=ValueError, match="grad must be float16, bfloat16, float32 or float64")
def raw_pairwise_backward_int_grad():
    b = boxes(3)
    op("pairwise_iou_backward")(torch.ones(3, 3, dtype=torch.int32), b, b, "xyxy", True)


@case(raises=ValueError, match="grad must be float16, bfloat16, float32 or float64")
def raw_loss_backward_bool_grad():
    b = boxes(3)
    op("giou_loss_backward")(torch.ones(3, dtype=torch.bool), b, b, "xyxy", 1e-7)


@case(raises=ValueError, match="grad must be float16, bfloat16, float32 or float64")
def raw_loss_backward_float8_grad():
    b = boxes(3)
    op("giou_loss_backward")(torch.ones(3).to(torch.float8_e4m3fn), b, b, "xyxy", 1e-7)


@case(raises=ValueError, match="grad must be float16, bfloat16, float32 or float64")
def raw_loss_backward_complex_grad():
    b = boxes(3)
    op("giou_loss_backward")(torch.ones(3, dtype=torch.complex128), b, b, "xyxy", 1e-7)


@case()
def raw_backward_grad_of_another_float_dtype_is_converted():
    b = boxes(4, torch.float64)
    g = torch.randn(4, 4, dtype=torch.float64)
    expected = op("pairwise_iou_backward")(g, b, b.flip(0), "xyxy", True)
    got = op("pairwise_iou_backward")(g.float(), b, b.flip(0), "xyxy", True)
    for x, y in zip(got, expected):
        assert x.dtype == torch.float64
        expect_close(x, y)


# ---- eps -------------------------------------------------------------------------------------------


@case(raises=ValueError, match="eps must be a finite number >= 0, got -0.5")
def raw_loss_negative_eps():
    b = boxes(3)
    op("giou_loss")(b, b.flip(0), "xyxy", -0.5)


@case(raises=ValueError, match="eps must be a finite number >= 0, got nan")
def raw_loss_nan_eps():
    b = boxes(3)
    op("giou_loss")(b, b.flip(0), "xyxy", NAN)


@case(raises=ValueError, match="eps must be a finite number >= 0, got inf")
def raw_loss_backward_inf_eps():
    b = boxes(3)
    op("giou_loss_backward")(torch.ones(3), b, b.flip(0), "xyxy", INF)


@case(raises=ValueError, match="eps must be a finite number >= 0, got -1e-07")
def public_loss_negative_eps():
    detr_ops.generalized_box_iou_loss(boxes(3), boxes(3), eps=-1e-7)


@case(raises=ValueError, match="eps must be a finite number >= 0, got nan")
def public_loss_nan_eps():
    detr_ops.generalized_box_iou_loss(boxes(3), boxes(3), eps=NAN)


@case(raises=ValueError, match="eps must be a finite number >= 0, got True")
def public_loss_bool_eps():
    detr_ops.generalized_box_iou_loss(boxes(3), boxes(3), eps=True)


@case()
def loss_stays_in_range_for_any_valid_eps():
    a, b = boxes(64), boxes(64)
    for eps in (0.0, 1e-7, 1.0, 1e30):
        loss = op("giou_loss")(a, b, "xyxy", eps)
        assert bool(((loss >= 0) & (loss <= 2)).all()), (eps, loss)


# ---- shapes, formats, devices ----------------------------------------------------------------------


@case(raises=ValueError, match="box_format must be")
def raw_pairwise_bad_format():
    b = boxes(2)
    op("pairwise_iou")(b, b, "xywh", True)


@case(raises=ValueError, match="boxes1 must have")
def raw_pairwise_zero_dim():
    op("pairwise_iou")(torch.tensor(1.0), boxes(2), "xyxy", True)


@case(raises=ValueError, match="boxes2 must have")
def raw_loss_wrong_last_dim():
    op("giou_loss")(boxes(2), torch.zeros(2, 5), "xyxy", 0.0)


@case(raises=ValueError, match="same batch size")
def raw_pairwise_batch_mismatch():
    op("pairwise_iou")(boxes(6).view(2, 3, 4), boxes(6).view(3, 2, 4), "xyxy", True)


@case(raises=ValueError, match=r"\[N,4\] and \[M,4\], or \[B,N,4\] and \[B,M,4\]|must be \[N,4\] or \[B,N,4\]")
def raw_pairwise_four_dims():
    x = boxes(8).view(2, 2, 2, 4)
    op("pairwise_iou")(x, x, "xyxy", True)


@case(raises=ValueError, match="grad must have shape")
def raw_pairwise_backward_wrong_grad_shape():
    b = boxes(3)
    op("pairwise_iou_backward")(torch.ones(3, 4), b, b, "xyxy", False)


@case(raises=ValueError, match="grad must have shape")
def raw_loss_backward_wrong_grad_shape():
    b = boxes(3)
    op("giou_loss_backward")(torch.ones(4), b, b, "xyxy", 0.0)


@case(raises=ValueError, match="same device")
def raw_pairwise_meta_and_cpu():
    op("pairwise_iou")(boxes(2), boxes(2).to("meta"), "xyxy", True)


@case(raises=ValueError, match="too large to address")
def raw_pairwise_result_overflows_int64():
    x = torch.zeros(1, 4).expand(2**40, 4)  # 2^80 pairs
    op("pairwise_iou")(x, x, "xyxy", True)


@case(raises=ValueError, match="too large to address")
def raw_pairwise_backward_result_overflows_int64():
    x = torch.zeros(1, 1, 4).expand(2**20, 2**21, 4)  # 2^62 pairs: 2^65 bytes of result
    grad = torch.zeros(1, 1, 1).expand(2**20, 2**21, 2**21)
    op("pairwise_iou_backward")(grad, x, x, "xyxy", True)


@case(raises=ValueError, match="too large to address")
def public_pairwise_result_overflows_int64():
    x = torch.zeros(1, 4).expand(2**40, 4)
    detr_ops.generalized_box_iou(x, x)


@case(raises=ValueError, match="too many to address")
def raw_loss_pairs_overflow_int64():
    x = torch.zeros(1, 4).expand(2**60, 4)  # 2^62 numbers: 2^65 bytes once made contiguous
    op("giou_loss")(x, x, "xyxy", 0.0)


@case()
def raw_pairwise_empty_result_of_huge_expanded_input():
    x = torch.zeros(1, 4).expand(2**40, 4)  # never copied: the result is empty
    out = op("pairwise_iou")(torch.zeros(0, 4), x, "xyxy", True)
    assert out.shape == (0, 2**40)


# ---- layouts: stride 0 and non-contiguous give the contiguous answer --------------------------------


@case()
def pairwise_expanded_inputs():
    a = boxes(1).expand(5, 4)
    b = boxes(3).unsqueeze(0).expand(2, 3, 4)
    expect_close(op("pairwise_iou")(a, b[0], "xyxy", True), reference_pairwise(a, b[0], True))
    batched = op("pairwise_iou")(a.unsqueeze(0).expand(2, 5, 4), b, "xyxy", False)
    expect_close(batched, reference_pairwise(a.unsqueeze(0).expand(2, 5, 4), b, False))


@case()
def pairwise_non_contiguous_inputs():
    a = boxes(10)[::2]
    b = boxes(4).t().contiguous().t()
    assert not a.is_contiguous() and not b.is_contiguous()
    expect_close(op("pairwise_iou")(a, b, "xyxy", True), reference_pairwise(a, b, True))


@case()
def pairwise_backward_expanded_grad():
    a, b = boxes(4, torch.float64), boxes(3, torch.float64)
    g = torch.ones(1, 1, dtype=torch.float64).expand(4, 3)
    got = op("pairwise_iou_backward")(g, a, b, "xyxy", True)
    expected = op("pairwise_iou_backward")(g.contiguous(), a, b, "xyxy", True)
    for x, y in zip(got, expected):
        expect_close(x, y)


@case()
def loss_expanded_and_transposed_inputs():
    a = boxes(1, torch.float64).expand(6, 4)
    b = boxes(6, torch.float64).t().contiguous().t()
    got = op("giou_loss")(a, b, "cxcywh", 1e-7)
    expect_close(got, op("giou_loss")(a.contiguous(), b.contiguous(), "cxcywh", 1e-7))
    g = torch.ones(1, dtype=torch.float64).expand(6)
    for x, y in zip(op("giou_loss_backward")(g, a, b, "xyxy", 1e-7),
                    op("giou_loss_backward")(g.contiguous(), a.contiguous(), b.contiguous(), "xyxy", 1e-7)):
        expect_close(x, y)


# ---- NaN / inf everywhere: NaN out, never a crash or a plausible number ----------------------------


@case()
def all_nan_inputs_give_nan():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = torch.full((3, 4), NAN, dtype=dtype)
        for generalized in (False, True):
            assert op("pairwise_iou")(x, x, "xyxy", generalized).isnan().all()
        assert op("giou_loss")(x, x, "cxcywh", 1e-7).isnan().all()
        for g in op("pairwise_iou_backward")(torch.ones(3, 3, dtype=dtype), x, x, "xyxy", True):
            assert g.isnan().all()
        for g in op("giou_loss_backward")(torch.ones(3, dtype=torch.float64 if dtype == torch.float64
                                                     else torch.float32), x, x, "xyxy", 1e-7):
            assert g.isnan().all()


@case()
def all_inf_inputs_give_nan():
    for value in (INF, -INF):
        x = torch.full((2, 4), value)
        assert op("pairwise_iou")(x, x, "xyxy", True).isnan().all()
        assert op("pairwise_iou")(x, x, "cxcywh", False).isnan().all()
        assert op("giou_loss")(x, x, "xyxy", 0.0).isnan().all()


@case()
def nan_upstream_gradient_gives_nan():
    a, b = boxes(2), boxes(3)
    g = torch.ones(2, 3)
    g[1, 2] = NAN
    g1, g2 = op("pairwise_iou_backward")(g, a, b, "xyxy", True)
    assert g1[1].isnan().all() and torch.isfinite(g1[0]).all()
    assert g2[2].isnan().all() and torch.isfinite(g2[:2]).all()
    l1, l2 = op("giou_loss_backward")(torch.tensor([1.0, INF]), a, b[:2], "xyxy", 1e-7)
    assert l1[1].isnan().all() and l2[1].isnan().all() and torch.isfinite(l1[0]).all()


@case()
def public_functions_with_nan_everywhere():
    x = torch.full((2, 4), NAN, requires_grad=True)
    for fn in (detr_ops.box_iou, detr_ops.generalized_box_iou):
        out = fn(x, x)
        assert out.isnan().all()
        (grad,) = torch.autograd.grad(out.sum(), [x])
        assert grad.isnan().all()
    loss = detr_ops.generalized_box_iou_loss(x, x, "mean")
    assert loss.isnan()
    assert not detr_ops.box_validity(x).any()
    assert detr_ops.box_cxcywh_to_xyxy(x).isnan().all() and detr_ops.box_xyxy_to_cxcywh(x).isnan().all()
