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


# ---- non-finite input: NaN out, never a plausible number ----------------------------------------------


def loss_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def test_issue_reproduction_gives_nan():
    """The reported silent wrong answer: IoU 3.0, GIoU 2.16, loss -1.16 (-1599998.25 all-NaN)."""
    a = torch.tensor([[0.1, 0.1, float("nan"), 0.5]])
    b = torch.tensor([[0.2, 0.2, 0.6, 0.6]])
    assert detr_ops.box_iou(a, b).isnan().all()
    assert detr_ops.generalized_box_iou(a, b).isnan().all()
    assert detr_ops.generalized_box_iou_loss(a, b).isnan().all()
    assert detr_ops.generalized_box_iou_loss(torch.full((1, 4), float("nan")), b).isnan().all()


BAD_VALUES = [math.nan, math.inf, -math.inf]


@device_backend_param
@dtype_param()
@pytest.mark.parametrize("fmt", ["xyxy", "cxcywh"])
@pytest.mark.parametrize("side", [1, 2])
def test_non_finite_coordinate_gives_nan_for_its_pairs(device, backend, dtype, fmt, side):
    """A box with a NaN or +-inf number (each position, each value) gives NaN values for its pairs and
    NaN gradients for both boxes of each of them; every other pair keeps its finite result."""
    base1 = in_format(random_boxes(4), fmt, dtype)
    base2 = in_format(random_boxes(3), fmt, dtype)
    bad = 1 if side == 1 else 2  # index of the bad box in its tensor
    if backend == "triton" and device == "cpu" and dtype in (torch.float16, torch.bfloat16):
        pytest.skip("the interpreter is slow: float32 and float64 cover the Triton math (float16 stores: below)")
    # every position with every value; under the (slow) Triton interpreter NaN in a first corner and
    # an infinity in a second one (the compiled kernels' NaN rule is the same code: box_math.py)
    cases = [(p, v) for p in range(4) for v in BAD_VALUES]
    if backend == "triton" and device == "cpu":
        cases = [(0, math.nan), (2, math.inf) if side == 1 else (3, -math.inf)]
    for position, value in cases:
        b1, b2 = base1.clone(), base2.clone()
        (b1 if side == 1 else b2)[bad, position] = value
        x, y = b1.to(device).requires_grad_(), b2.to(device).requires_grad_()
        for generalized in (False, True):
            out = call_pairwise(generalized, x, y, fmt, backend)
            nan = torch.zeros(4, 3, dtype=torch.bool)
            if side == 1:
                nan[bad, :] = True
            else:
                nan[:, bad] = True
            assert torch.equal(out.isnan().cpu(), nan), (position, value, generalized, out)
            assert torch.isfinite(out[~nan.to(device)]).all()
            w = torch.rand(4, 3, dtype=dtype, device=device) + 0.5
            g1, g2 = torch.autograd.grad((out * w).sum(), [x, y])
            # the bad box's gradient and those of all its partners are NaN, nothing else
            nan1 = nan.any(dim=1)
            nan2 = nan.any(dim=0)
            assert torch.equal(g1.isnan().any(dim=1).cpu(), nan1) and g1[nan1.to(device)].isnan().all()
            assert torch.equal(g2.isnan().any(dim=1).cpu(), nan2) and g2[nan2.to(device)].isnan().all()
            assert torch.isfinite(g1[~nan1.to(device)]).all() and torch.isfinite(g2[~nan2.to(device)]).all()
        # the loss pairs box k of boxes1 with box k of boxes2
        l1, l2 = x[:3], y
        loss = detr_ops.generalized_box_iou_loss(l1, l2, box_format=fmt, backend=backend)
        expected_nan = torch.zeros(3, dtype=torch.bool)
        expected_nan[bad] = True
        assert torch.equal(loss.isnan().cpu(), expected_nan), (position, value, loss)
        g1, g2 = torch.autograd.grad(loss.sum(), [x, y])
        assert torch.equal(g1[:3].isnan().all(dim=1).cpu(), expected_nan)
        assert torch.equal(g2.isnan().all(dim=1).cpu(), expected_nan)
        assert torch.isfinite(g1[:3][~expected_nan.to(device)]).all()


@device_backend_param
@pytest.mark.parametrize("fmt", ["xyxy", "cxcywh"])
@pytest.mark.parametrize("generalized", [True, False], ids=["giou", "iou"])
def test_finite_pairs_unchanged_next_to_nan_pairs(device, backend, fmt, generalized):
    """The values of the finite pairs, and the gradients of the boxes1 rows without a NaN pair, are
    exactly those of the same call without the bad box."""
    b1, b2 = random_boxes(5), random_boxes(4)
    if fmt == "cxcywh":
        b1, b2 = to_cxcywh(b1), to_cxcywh(b2)
    with_bad = torch.cat([b1, torch.tensor([[0.1, math.nan, 0.3, 0.4]], dtype=torch.float64)])
    x = with_bad.to(device).requires_grad_()
    y = b1.to(device).requires_grad_()
    out = call_pairwise(generalized, x, b2.to(device), fmt, backend)
    expected = call_pairwise(generalized, y, b2.to(device), fmt, backend)
    assert out[-1].isnan().all()
    assert torch.equal(out[:-1], expected)
    (g,) = torch.autograd.grad(out.sum(), [x])
    (g_expected,) = torch.autograd.grad(expected.sum(), [y])
    assert g[-1].isnan().all()
    assert torch.equal(g[:-1], g_expected)


@device_backend_param
@dtype_param()
def test_nan_upstream_gradient_gives_nan(device, backend, dtype):
    a = random_boxes(3, dtype=dtype, device=device).requires_grad_()
    b = random_boxes(2, dtype=dtype, device=device).requires_grad_()
    out = detr_ops.generalized_box_iou(a, b, backend=backend)
    w = torch.ones(3, 2, dtype=dtype, device=device)
    w[2, 1] = math.nan
    ga, gb = torch.autograd.grad(out, [a, b], w)
    assert ga[2].isnan().all() and gb[1].isnan().all()
    assert torch.isfinite(ga[:2]).all() and torch.isfinite(gb[0]).all()
    loss = detr_ops.generalized_box_iou_loss(a[:2], b, backend=backend)
    ga, gb = torch.autograd.grad(loss, [a, b], torch.tensor([math.inf, 1.0], dtype=loss.dtype, device=device))
    assert ga[0].isnan().all() and gb[0].isnan().all() and torch.isfinite(gb[1]).all()


@device_backend_param
def test_float16_gradients_keep_nan_while_saturating(device, backend):
    """float16 gradients beyond its range saturate at +-65504, NaN stays NaN (a clamp without NaN
    propagation turned it into +-65504 on a GPU)."""
    a = torch.tensor([[0, 0, 0, 0], [0, 0, math.nan, 1]], dtype=torch.float16, device=device).requires_grad_()
    # two distinct point boxes, one above the other: d loss / d x1 = 1 / eps = 1e7
    b = torch.tensor([[0, 1, 0, 1], [0, 0, 1, 1]], dtype=torch.float16, device=device)
    loss = detr_ops.generalized_box_iou_loss(a, b, backend=backend)
    (g,) = torch.autograd.grad(loss.sum(), [a])
    assert g[1].isnan().all()
    assert torch.isfinite(g[0]).all() and g[0].abs().max().item() == 65504


# Overflow of an area in the computation dtype: float32 (also for float16 / bfloat16, computed in
# float32) beyond 3.4e38. (a, b, what happens): NaN for the IoU and GIoU, or only the GIoU, whose
# enclosing box overflows.
OVERFLOW = [
    pytest.param([0, 0, 1e20, 1e20], [0, 0, 1, 1], "both", id="box-area"),
    pytest.param([0, 0, 2e19, 2e19], [0, 0, 1e19, 1e19], "both", id="box-area-true-iou-0.25"),
    pytest.param([0, 0, 1.5e19, 1.5e19], [0, 0, 1.5e19, 1.4e19], "both", id="union-sum"),
    pytest.param([1e20, 1e20, 1.0001e20, 1.0001e20], [0, 0, 1, 1], "giou", id="enclosing-area"),
    pytest.param([-3e38, 0, 3e38, 1], [0, 0, 1, 1], "both", id="side"),
]


@device_backend_param
@pytest.mark.parametrize("a,b,nan_in", OVERFLOW)
def test_area_overflow_gives_nan_in_float32_and_is_exact_in_float64(device, backend, a, b, nan_in):
    ta32 = torch.tensor([a], dtype=torch.float32, device=device).requires_grad_()
    tb32 = torch.tensor([b], dtype=torch.float32, device=device).requires_grad_()
    iou = detr_ops.box_iou(ta32, tb32, backend=backend)
    giou = detr_ops.generalized_box_iou(ta32, tb32, backend=backend)
    loss = detr_ops.generalized_box_iou_loss(ta32, tb32, backend=backend)
    assert giou.isnan().all() and loss.isnan().all()
    assert iou.isnan().all() == (nan_in == "both")
    for out in (giou, loss):
        for g in torch.autograd.grad(out.sum(), [ta32, tb32]):
            assert g.isnan().all()
    # float64 has the range: the textbook formula's values
    ta64, tb64 = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    torch.testing.assert_close(detr_ops.box_iou(ta64.to(device), tb64.to(device), backend=backend).cpu(),
                               box_iou_reference(ta64, tb64))
    torch.testing.assert_close(detr_ops.generalized_box_iou(ta64.to(device), tb64.to(device), backend=backend).cpu(),
                               generalized_box_iou_reference(ta64, tb64))


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


# ---- hypothesis: any coordinates, NaN and inf included, against the float64 formulas --------------------

special = st.sampled_from([math.nan, math.inf, -math.inf])
# Magnitudes in (0, 1e-100) are left out: there the GIoU gradient (~1 / enclosing area) is beyond
# float64's range and overflows to +-inf, which is IEEE's answer, not a NaN-rule violation.
_not_tiny = lambda v: v == 0 or abs(v) >= 1e-100  # noqa: E731
finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=64).filter(_not_tiny)
# any four numbers: inverted and zero-size boxes, and now and then a NaN or an infinity
any_box = st.lists(st.one_of(finite, finite, finite, finite, finite, finite, special), min_size=4, max_size=4)
# valid boxes, zero sizes included
side = st.one_of(st.just(0.0), st.floats(min_value=0, max_value=1e3, allow_nan=False, width=64).filter(_not_tiny))
valid_box = st.tuples(finite, finite, side, side).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])
fuzz_box = st.one_of(valid_box, any_box)


def check_against_formulas(ta, tb, iou, giou):
    """The NaN rule, the ranges, and the textbook float64 formulas wherever they are defined."""
    bad_a, bad_b = ~torch.isfinite(ta).all(dim=-1), ~torch.isfinite(tb).all(dim=-1)
    bad = bad_a[:, None] | bad_b[None, :]
    for out in (iou, giou):
        assert torch.equal(out.isnan(), bad)
    assert ((iou[~bad] >= 0) & (iou[~bad] <= 1)).all() and ((giou[~bad] >= -1) & (giou[~bad] <= 1)).all()
    valid_a = ~bad_a & (ta[:, 2] >= ta[:, 0]) & (ta[:, 3] >= ta[:, 1])
    valid_b = ~bad_b & (tb[:, 2] >= tb[:, 0]) & (tb[:, 3] >= tb[:, 1])
    with torch.no_grad():
        ref_iou, ref_giou = box_iou_reference(ta, tb), generalized_box_iou_reference(ta, tb)
    for out, ref in ((iou, ref_iou), (giou, ref_giou)):
        keep = valid_a[:, None] & valid_b[None, :] & torch.isfinite(ref)
        torch.testing.assert_close(out[keep], ref[keep], rtol=1e-9, atol=1e-12)


def check_gradient_nan_rule(ta, tb, fn, backend="auto"):
    x, y = ta.clone().requires_grad_(), tb.clone().requires_grad_()
    out = fn(x, y, backend=backend)
    gx, gy = torch.autograd.grad(out.sum(), [x, y])
    bad = out.isnan()
    assert torch.equal(gx.isnan().any(dim=-1), bad.any(dim=1)) and torch.equal(gy.isnan().any(dim=-1), bad.any(dim=0))
    assert torch.isfinite(gx[~bad.any(dim=1)]).all() and torch.isfinite(gy[~bad.any(dim=0)]).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(fuzz_box, min_size=1, max_size=6), st.lists(fuzz_box, min_size=1, max_size=6))
def test_hypothesis_any_coordinates_pairwise_cpu(a, b):
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    check_against_formulas(ta, tb, detr_ops.box_iou(ta, tb), detr_ops.generalized_box_iou(ta, tb))
    check_gradient_nan_rule(ta, tb, detr_ops.generalized_box_iou)
    check_gradient_nan_rule(ta, tb, detr_ops.box_iou)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(fuzz_box, fuzz_box), min_size=1, max_size=8))
def test_hypothesis_any_coordinates_loss_cpu(pairs):
    ta = torch.tensor([p[0] for p in pairs], dtype=torch.float64).requires_grad_()
    tb = torch.tensor([p[1] for p in pairs], dtype=torch.float64).requires_grad_()
    loss = detr_ops.generalized_box_iou_loss(ta, tb)
    bad = ~(torch.isfinite(ta).all(dim=-1) & torch.isfinite(tb).all(dim=-1))
    assert torch.equal(loss.isnan(), bad)
    assert ((loss[~bad] >= 0) & (loss[~bad] <= 2)).all()
    ga, gb = torch.autograd.grad(loss.sum(), [ta, tb])
    assert torch.equal(ga.isnan().all(dim=-1), bad) and torch.equal(gb.isnan().all(dim=-1), bad)
    assert torch.isfinite(ga[~bad]).all() and torch.isfinite(gb[~bad]).all()
    valid = ~bad & (ta[:, 2] > ta[:, 0]) & (ta[:, 3] > ta[:, 1]) & (tb[:, 2] > tb[:, 0]) & (tb[:, 3] > tb[:, 1])
    with torch.no_grad():
        ref = generalized_box_iou_loss_reference(ta, tb)
    torch.testing.assert_close(loss.detach()[valid], ref[valid], rtol=1e-9, atol=1e-12)


@pytest.mark.triton
@settings(max_examples=15, deadline=None)
@given(st.lists(fuzz_box, min_size=1, max_size=5), st.lists(fuzz_box, min_size=1, max_size=5))
def test_hypothesis_any_coordinates_triton(a, b):
    """The Triton kernels under the same rules (few examples: the interpreter is slow)."""
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    iou = detr_ops.box_iou(ta, tb, backend="triton")
    giou = detr_ops.generalized_box_iou(ta, tb, backend="triton")
    check_against_formulas(ta, tb, iou, giou)
    torch.testing.assert_close(giou, detr_ops.generalized_box_iou(ta, tb), rtol=1e-12, atol=1e-14, equal_nan=True)
    check_gradient_nan_rule(ta, tb, detr_ops.generalized_box_iou, backend="triton")


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
