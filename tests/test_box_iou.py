"""Box IoU / GIoU ops against float64 references, on every device x backend x dtype in the table."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import detr_ops
from detr_ops.reference import (
    box_iou_reference,
    generalized_box_iou_loss_reference,
    generalized_box_iou_reference,
)
from tests.cases import TOLERANCE, device_backend_param, dtype_param, opcheck_utils


def random_boxes(*shape, dtype=torch.float64, device="cpu", generator=None):
    """Valid xyxy boxes in [0, 1]^2 with positive sizes."""
    xy = torch.rand(*shape, 2, dtype=torch.float64, generator=generator)
    wh = torch.rand(*shape, 2, dtype=torch.float64, generator=generator) * 0.5 + 0.01
    return torch.cat([xy, xy + wh], dim=-1).to(device=device, dtype=dtype)


def to_cxcywh(b):
    return detr_ops.box_xyxy_to_cxcywh(b)


def in_format(xyxy64, fmt, dtype):
    return (to_cxcywh(xyxy64) if fmt == "cxcywh" else xyxy64).to(dtype)


def as_xyxy64(boxes, fmt):
    boxes = boxes.double()
    return detr_ops.box_cxcywh_to_xyxy(boxes) if fmt == "cxcywh" else boxes


def call_pairwise(generalized, b1, b2, fmt, backend):
    fn = detr_ops.generalized_box_iou if generalized else detr_ops.box_iou
    return fn(b1, b2, fmt, backend=backend)


def reference_pairwise(generalized, b1, b2):
    return (generalized_box_iou_reference if generalized else box_iou_reference)(b1, b2)


# ---- values ----------------------------------------------------------------------------------------


@device_backend_param
@dtype_param()
@pytest.mark.parametrize("generalized", [True, False], ids=["giou", "iou"])
@pytest.mark.parametrize("fmt", ["xyxy", "cxcywh"])
@pytest.mark.parametrize("batch", [None, 3])
def test_pairwise_matches_reference(device, backend, dtype, generalized, fmt, batch):
    lead = () if batch is None else (batch,)
    b1, b2 = in_format(random_boxes(*lead, 13), fmt, dtype), in_format(random_boxes(*lead, 7), fmt, dtype)
    # the reference sees exactly the rounded inputs, in float64
    expected = reference_pairwise(generalized, as_xyxy64(b1, fmt), as_xyxy64(b2, fmt))
    out = call_pairwise(generalized, b1.to(device), b2.to(device), fmt, backend)
    assert out.dtype == dtype and out.shape == expected.shape
    torch.testing.assert_close(out.cpu().double(), expected, **TOLERANCE[dtype])


@device_backend_param
@dtype_param()
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("fmt", ["xyxy", "cxcywh"])
def test_loss_matches_reference(device, backend, dtype, reduction, fmt):
    b1, b2 = in_format(random_boxes(5, 11), fmt, dtype), in_format(random_boxes(5, 11), fmt, dtype)
    expected = generalized_box_iou_loss_reference(as_xyxy64(b1, fmt), as_xyxy64(b2, fmt), reduction)
    out = detr_ops.generalized_box_iou_loss(b1.to(device), b2.to(device), reduction, box_format=fmt, backend=backend)
    # torchvision's semantics: half inputs give a float32 loss, computed from the rounded inputs
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(out.cpu().double(), expected, **TOLERANCE[out.dtype])


# Hand-computed cases, xyxy: (box a, box b, IoU, GIoU).
KNOWN = [
    pytest.param([0, 0, 2, 2], [0, 0, 2, 2], 1.0, 1.0, id="identical"),
    pytest.param([0, 0, 4, 4], [1, 1, 3, 3], 4 / 16, 4 / 16, id="nested"),
    pytest.param([0, 0, 1, 1], [1, 0, 2, 1], 0.0, 0.0, id="touching"),
    pytest.param([0, 0, 1, 1], [2, 0, 3, 1], 0.0, -1 / 3, id="disjoint"),
    pytest.param([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, 1 / 7 - 2 / 9, id="overlapping"),
    pytest.param([0, 0, 0, 0], [0, 0, 0, 0], 0.0, 0.0, id="identical-points"),
    pytest.param([1, 1, 1, 1], [0, 0, 2, 2], 0.0, 0.0, id="point-inside-box"),
    pytest.param([0, 0, 2, 0], [0, 0, 2, 2], 0.0, 0.0, id="zero-height-edge"),
    pytest.param([3, 3, 3, 3], [0, 0, 1, 1], 0.0, -8 / 9, id="point-outside-box"),
]


@device_backend_param
@pytest.mark.parametrize("a,b,iou,giou", KNOWN)
def test_known_values(device, backend, a, b, iou, giou):
    ta = torch.tensor([a], dtype=torch.float64, device=device)
    tb = torch.tensor([b], dtype=torch.float64, device=device)
    assert detr_ops.box_iou(ta, tb, backend=backend).item() == pytest.approx(iou, abs=1e-12)
    assert detr_ops.generalized_box_iou(ta, tb, backend=backend).item() == pytest.approx(giou, abs=1e-12)
    loss = detr_ops.generalized_box_iou_loss(ta, tb, eps=0.0, backend=backend).item()
    assert loss == pytest.approx(1 - giou, abs=1e-12)


# ---- gradients ---------------------------------------------------------------------------------------


@device_backend_param
@pytest.mark.parametrize("generalized", [True, False], ids=["giou", "iou"])
@pytest.mark.parametrize("fmt", ["xyxy", "cxcywh"])
def test_pairwise_grad_matches_autograd_reference(device, backend, generalized, fmt):
    b1, b2 = random_boxes(2, 9), random_boxes(2, 6)
    if fmt == "cxcywh":
        b1, b2 = to_cxcywh(b1), to_cxcywh(b2)
    w = torch.randn(2, 9, 6, dtype=torch.float64)

    def ref(x, y):
        if fmt == "cxcywh":
            x, y = detr_ops.box_cxcywh_to_xyxy(x), detr_ops.box_cxcywh_to_xyxy(y)
        return reference_pairwise(generalized, x, y)

    x, y = b1.clone().requires_grad_(), b2.clone().requires_grad_()
    expected = torch.autograd.grad((ref(x, y) * w).sum(), [x, y])
    x, y = b1.to(device).requires_grad_(), b2.to(device).requires_grad_()
    out = call_pairwise(generalized, x, y, fmt, backend)
    got = torch.autograd.grad((out * w.to(device)).sum(), [x, y])
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.cpu(), e, rtol=1e-9, atol=1e-11)


@device_backend_param
@pytest.mark.parametrize("fmt", ["xyxy", "cxcywh"])
def test_loss_grad_matches_autograd_reference(device, backend, fmt):
    b1, b2 = random_boxes(40), random_boxes(40)
    b2[:5] = b1[:5]  # identical pairs: ties in every min/max
    w = torch.randn(40, dtype=torch.float64)
    if fmt == "cxcywh":
        b1, b2 = to_cxcywh(b1), to_cxcywh(b2)

    def ref(x, y):
        if fmt == "cxcywh":
            x, y = detr_ops.box_cxcywh_to_xyxy(x), detr_ops.box_cxcywh_to_xyxy(y)
        return generalized_box_iou_loss_reference(x, y)

    x, y = b1.clone().requires_grad_(), b2.clone().requires_grad_()
    expected = torch.autograd.grad((ref(x, y) * w).sum(), [x, y])
    x, y = b1.to(device).requires_grad_(), b2.to(device).requires_grad_()
    got = torch.autograd.grad(
        (detr_ops.generalized_box_iou_loss(x, y, box_format=fmt, backend=backend) * w.to(device)).sum(), [x, y]
    )
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.cpu(), e, rtol=1e-9, atol=1e-11)


@device_backend_param
@pytest.mark.parametrize("fmt", ["xyxy", "cxcywh"])
def test_gradcheck(device, backend, fmt):
    b1 = random_boxes(2, 4, device=device).requires_grad_()
    b2 = random_boxes(2, 3, device=device).requires_grad_()
    if fmt == "cxcywh":
        b1 = to_cxcywh(b1.detach()).requires_grad_()
        b2 = to_cxcywh(b2.detach()).requires_grad_()
    for generalized in (True, False):
        assert torch.autograd.gradcheck(lambda x, y: call_pairwise(generalized, x, y, fmt, backend), (b1, b2))
    c1, c2 = random_boxes(6, device=device).requires_grad_(), random_boxes(6, device=device).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, y: detr_ops.generalized_box_iou_loss(x, y, box_format="xyxy", backend=backend), (c1, c2)
    )


@device_backend_param
@dtype_param()
def test_degenerate_boxes_are_finite(device, backend, dtype):
    boxes = torch.tensor(
        [
            [0, 0, 0, 0],  # point
            [0, 0, 0, 0],  # the same point
            [0.2, 0.2, 0.2, 0.6],  # zero width
            [0.5, 0.5, 0.1, 0.1],  # inverted corners
            [0.1, 0.1, 0.4, 0.4],  # normal
            [0.4, 0.1, 0.7, 0.4],  # touching the normal one
        ],
        dtype=dtype,
        device=device,
    )
    a = boxes.clone().requires_grad_()
    b = boxes.clone().requires_grad_()
    for generalized in (True, False):
        out = call_pairwise(generalized, a, b, "xyxy", backend)
        ga, gb = torch.autograd.grad(out.float().sum(), [a, b])
        assert torch.isfinite(out).all() and torch.isfinite(ga).all() and torch.isfinite(gb).all()
    for eps in (1e-7, 0.0):
        loss = detr_ops.generalized_box_iou_loss(a, b.flip(0), eps=eps, backend=backend)
        ga, gb = torch.autograd.grad(loss.sum(), [a, b])
        assert torch.isfinite(loss).all() and torch.isfinite(ga).all() and torch.isfinite(gb).all()
    # two identical points: IoU 0, GIoU 0, loss 1 (documented)
    assert detr_ops.generalized_box_iou(boxes[:1], boxes[1:2], backend=backend).item() == 0
    assert detr_ops.generalized_box_iou_loss(boxes[:1], boxes[1:2], backend=backend).item() == 1


@device_backend_param
def test_backward_is_deterministic(device, backend):
    b1 = random_boxes(300, dtype=torch.float32, device=device).requires_grad_()
    b2 = random_boxes(200, dtype=torch.float32, device=device).requires_grad_()
    w = torch.randn(300, 200, device=device)
    first = torch.autograd.grad((detr_ops.generalized_box_iou(b1, b2, backend=backend) * w).sum(), [b1, b2])
    second = torch.autograd.grad((detr_ops.generalized_box_iou(b1, b2, backend=backend) * w).sum(), [b1, b2])
    for x, y in zip(first, second):
        assert torch.equal(x, y)


# ---- hypothesis: random geometry, including extreme aspect ratios ------------------------------------

coordinate = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=64)
size = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, width=64)
box = st.tuples(coordinate, coordinate, size, size).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@settings(max_examples=200, deadline=None)
@given(st.lists(box, min_size=1, max_size=6), st.lists(box, min_size=1, max_size=6))
def test_hypothesis_pairwise_cpu(a, b):
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    torch.testing.assert_close(detr_ops.generalized_box_iou(ta, tb), generalized_box_iou_reference(ta, tb))
    torch.testing.assert_close(detr_ops.box_iou(ta, tb), box_iou_reference(ta, tb))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(box, box), min_size=1, max_size=8))
def test_hypothesis_loss_cpu(pairs):
    ta = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    tb = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    torch.testing.assert_close(detr_ops.generalized_box_iou_loss(ta, tb), generalized_box_iou_loss_reference(ta, tb))


# ---- defined results for unusual input ---------------------------------------------------------------


@device_backend_param
def test_empty_inputs(device, backend):
    e = torch.zeros(0, 4, device=device, requires_grad=True)
    b = random_boxes(3, dtype=torch.float32, device=device)
    assert detr_ops.generalized_box_iou(e, b, backend=backend).shape == (0, 3)
    assert detr_ops.generalized_box_iou(b, e, backend=backend).shape == (3, 0)
    assert detr_ops.box_iou(torch.zeros(2, 0, 4, device=device), torch.zeros(2, 5, 4, device=device), backend=backend).shape == (2, 0, 5)
    loss = detr_ops.generalized_box_iou_loss(e, e.detach(), "mean", backend=backend)
    assert loss.item() == 0
    loss.backward()  # the empty mean still backpropagates
    assert e.grad.shape == (0, 4)
    assert detr_ops.generalized_box_iou_loss(e, e.detach(), "sum", backend=backend).item() == 0


def test_integer_boxes_are_computed_in_float32():
    a = torch.tensor([[0, 0, 2, 2]])
    b = torch.tensor([[1, 1, 3, 3]])
    out = detr_ops.generalized_box_iou(a, b)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(1 / 7 - 2 / 9)
    assert detr_ops.generalized_box_iou_loss(a, b).dtype == torch.float32


def test_mixed_float_dtypes_promote():
    a, b = random_boxes(3, dtype=torch.float32), random_boxes(4, dtype=torch.float64)
    assert detr_ops.generalized_box_iou(a, b).dtype == torch.float64


def test_non_contiguous_inputs():
    a = random_boxes(8)[::2]
    b = random_boxes(10).t().contiguous().t()
    assert not a.is_contiguous() and not b.is_contiguous()
    torch.testing.assert_close(detr_ops.generalized_box_iou(a, b), generalized_box_iou_reference(a, b))


def test_box_validity_flags_inverted_and_nonfinite_boxes():
    boxes = torch.tensor([[0, 0, 1, 1], [1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, math.inf, 1], [0, 0, math.nan, 1]])
    assert detr_ops.box_validity(boxes).tolist() == [True, False, False, True, False, False]
    cxcywh = torch.tensor([[0.5, 0.5, 1, 1], [0.5, 0.5, -1, 1]])
    assert detr_ops.box_validity(cxcywh, "cxcywh").tolist() == [True, False]


BAD_INPUTS = [
    pytest.param(lambda: detr_ops.generalized_box_iou(torch.rand(3, 5), torch.rand(2, 4)), "boxes1 must have shape", id="last-dim"),
    pytest.param(lambda: detr_ops.generalized_box_iou(torch.rand(3, 4), torch.rand(2, 3)), "boxes2 must have shape", id="last-dim-2"),
    pytest.param(lambda: detr_ops.generalized_box_iou(torch.rand(2, 3, 4), torch.rand(3, 2, 4)), "same batch size", id="batch"),
    pytest.param(lambda: detr_ops.generalized_box_iou(torch.rand(2, 3, 4), torch.rand(2, 4)), "both", id="ndim-mismatch"),
    pytest.param(lambda: detr_ops.generalized_box_iou(torch.rand(1, 2, 3, 4), torch.rand(1, 2, 3, 4)), "both", id="ndim-4"),
    pytest.param(lambda: detr_ops.box_iou(torch.rand(3, 4), torch.rand(3, 4, device="meta")), "same device", id="devices"),
    pytest.param(lambda: detr_ops.box_iou(torch.ones(3, 4, dtype=torch.bool), torch.rand(3, 4)), "boxes1 must hold real", id="bool"),
    pytest.param(lambda: detr_ops.box_iou(torch.rand(3, 4), torch.rand(3, 4), "xywh"), "box_format", id="format"),
    pytest.param(lambda: detr_ops.generalized_box_iou_loss(torch.rand(3, 4), torch.rand(3, 4), "avg"), "reduction", id="reduction"),
    pytest.param(lambda: detr_ops.generalized_box_iou_loss(torch.rand(3, 4), torch.rand(2, 4)), "same shape", id="loss-shape"),
    pytest.param(lambda: detr_ops.box_iou([[0, 0, 1, 1]], torch.rand(3, 4)), "must be a torch.Tensor", id="not-tensor"),
]


@pytest.mark.parametrize("call,message", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_dispatcher_level_checks():
    """C++ callers going through the dispatcher get the same kind of errors."""
    ops = torch.ops.detr_ops
    with pytest.raises(ValueError, match="last dimension of size 4"):
        ops.pairwise_iou(torch.rand(3, 5), torch.rand(3, 4), "xyxy", True)
    with pytest.raises(ValueError, match="same dtype"):
        ops.pairwise_iou(torch.rand(3, 4), torch.rand(3, 4, dtype=torch.float64), "xyxy", True)
    with pytest.raises(ValueError, match="box_format"):
        ops.giou_loss(torch.rand(3, 4), torch.rand(3, 4), "ltrb", 1e-7)
    with pytest.raises(ValueError, match="grad must have shape"):
        ops.pairwise_iou_backward(torch.rand(2, 2), torch.rand(3, 4), torch.rand(3, 4), "xyxy", True)
    with pytest.raises(ValueError, match="float16, bfloat16, float32 or float64"):
        ops.giou_loss(torch.ones(3, 4, dtype=torch.int32), torch.ones(3, 4, dtype=torch.int32), "xyxy", 0.0)


# ---- torch.library / torch.compile integration --------------------------------------------------------


@device_backend_param
def test_opcheck(device, backend):
    suffix = "_triton" if backend == "triton" else ""
    if backend == "triton":
        from detr_ops import _triton_twins  # noqa: F401  (defines the *_triton ops)
    ops = torch.ops.detr_ops
    utils = opcheck_utils(backend)
    b1 = random_boxes(2, 5, device=device).requires_grad_()
    b2 = random_boxes(2, 3, device=device).requires_grad_()
    for fmt in ("xyxy", "cxcywh"):
        torch.library.opcheck(getattr(ops, "pairwise_iou" + suffix), (b1, b2, fmt, True), test_utils=utils)
        torch.library.opcheck(getattr(ops, "pairwise_iou" + suffix), (b1[0], b2[0], fmt, False), test_utils=utils)
        torch.library.opcheck(getattr(ops, "giou_loss" + suffix), (b1, b1.detach().flip(1), fmt, 1e-7), test_utils=utils)
    grad = torch.randn(2, 5, 3, dtype=torch.float64, device=device)
    torch.library.opcheck(getattr(ops, "pairwise_iou_backward" + suffix), (grad, b1.detach(), b2.detach(), "xyxy", True), test_utils=utils
    )
    torch.library.opcheck(
        getattr(ops, "giou_loss_backward" + suffix),
        (grad[:, :, 0], b1.detach(), b1.detach().flip(1), "xyxy", 1e-7),
        test_utils=utils,
    )


def test_torch_compile_fullgraph():
    def step(pred, tgt):
        cost = -detr_ops.generalized_box_iou(pred, tgt, "cxcywh")
        loss = detr_ops.generalized_box_iou_loss(pred[:4], tgt, "mean", box_format="cxcywh")
        return cost.sum() + loss

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    pred = to_cxcywh(random_boxes(6)).requires_grad_()
    tgt = to_cxcywh(random_boxes(4))
    out = compiled(pred, tgt)
    out.backward()
    expected = step(pred.detach().clone().requires_grad_(), tgt)
    torch.testing.assert_close(out, expected)
    assert torch.isfinite(pred.grad).all()
