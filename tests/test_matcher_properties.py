"""Property tests (hypothesis) of HungarianMatcher's modes against the codebases' loops on float64
costs: ragged batches, images without targets, more targets than queries, tied costs (inputs on a
coarse grid) and NaN. Small sizes, few examples: seconds in all."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import detr_ops
from detr_ops.reference import detr_family_matchers as ref
from tests.test_matcher import assert_same_indices

COSTS = {
    "softmax": dict(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0, class_cost="softmax"),
    "focal": dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, class_cost="focal"),
    "focal_logsigmoid": dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, class_cost="focal_logsigmoid"),
    "iou_aware": dict(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0, class_cost="iou_aware", iou_power=2.0),
}
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def batches(draw, groups=1):
    """A batch on a coarse grid (many exactly tied costs): logits in {-1, 0, 1}, box centres and
    sizes in steps of 0.25 (sizes >= 0.25, so no box is degenerate)."""
    B = draw(st.integers(1, 3))
    Q = groups * draw(st.integers(1, 5))
    K = draw(st.integers(1, 3))
    sizes = [draw(st.integers(0, 6)) for _ in range(B)]
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)

    def boxes(*shape):
        centre = torch.randint(1, 4, (*shape, 2), generator=g).double() * 0.25
        size = torch.randint(1, 3, (*shape, 2), generator=g).double() * 0.25
        return torch.cat([centre, size], -1)

    outputs = {"pred_logits": torch.randint(-1, 2, (B, Q, K), generator=g).double(), "pred_boxes": boxes(B, Q)}
    targets = [{"labels": torch.randint(0, K, (n,), generator=g), "boxes": boxes(n)} for n in sizes]
    return outputs, targets


def _reference_or_error(fn):
    try:
        return fn(), None
    except ValueError as e:
        return None, e


@SETTINGS
@given(data=batches(), cost=st.sampled_from(sorted(COSTS)))
def test_plain(data, cost):
    outputs, targets = data
    C = ref.detr_family_cost_matrix(outputs, targets, **COSTS[cost])
    expected = ref.deim_match(C, [len(t["labels"]) for t in targets], nan_cost=None)
    assert_same_indices(detr_ops.HungarianMatcher(**COSTS[cost])(outputs, targets), expected)


@SETTINGS
@given(data=st.integers(1, 4).flatmap(lambda g: st.tuples(st.just(g), batches(groups=g))))
def test_groups(data):
    groups, (outputs, targets) = data
    C = ref.detr_family_cost_matrix(outputs, targets, **COSTS["focal_logsigmoid"])
    expected = ref.group_detr_match(C, [len(t["labels"]) for t in targets], groups)
    assert_same_indices(detr_ops.HungarianMatcher(**COSTS["focal_logsigmoid"])(outputs, targets, groups=groups),
                        expected)


@SETTINGS
@given(data=batches(), k=st.integers(1, 4))
def test_capacity(data, k):
    outputs, targets = data
    expected = ref.hdetr_one2many_match(outputs, targets, k, **COSTS["focal"])[1]
    assert_same_indices(detr_ops.HungarianMatcher(**COSTS["focal"])(outputs, targets, capacity=k), expected)


@SETTINGS
@given(data=batches(), k=st.integers(1, 4))
def test_topk_rounds(data, k):
    outputs, targets = data
    C = ref.detr_family_cost_matrix(outputs, targets, **COSTS["focal"])
    sizes = [len(t["labels"]) for t in targets]
    Q = outputs["pred_logits"].shape[1]
    if k > 1 and any(n > Q for n in sizes):
        return  # DEIM raises IndexError there (a target index used as a query index); see _mask_like_deim
    expected = ref.deim_match(C, sizes, nan_cost=1.0, topk=k if k > 1 else 0)
    assert_same_indices(detr_ops.HungarianMatcher(**COSTS["focal"], nan_cost=1.0)(outputs, targets, topk_rounds=k),
                        expected)


@SETTINGS
@given(data=batches(), spots=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 4), st.integers(0, 6)), max_size=3),
       cost=st.sampled_from(sorted(COSTS)))
def test_nan(data, spots, cost):
    """NaN anywhere: nan_cost=1.0 gives D-FINE's indices; nan_cost=None raises where scipy raises."""
    outputs, targets = data
    B, Q, K = outputs["pred_logits"].shape
    for b, q, c in spots:
        if c < K:
            outputs["pred_logits"][b % B, q % Q, c] = float("nan")
        else:
            outputs["pred_boxes"][b % B, q % Q, c % 4] = float("nan")
    sizes = [len(t["labels"]) for t in targets]
    C = ref.detr_family_cost_matrix(outputs, targets, **COSTS[cost])
    assert_same_indices(detr_ops.HungarianMatcher(**COSTS[cost], nan_cost=1.0)(outputs, targets),
                        ref.deim_match(C, sizes, nan_cost=1.0))
    expected, error = _reference_or_error(lambda: ref.deim_match(C, sizes, nan_cost=None))
    if error is None:
        assert_same_indices(detr_ops.HungarianMatcher(**COSTS[cost])(outputs, targets), expected)
    else:
        with pytest.raises(ValueError, match="invalid numeric entries"):
            detr_ops.HungarianMatcher(**COSTS[cost])(outputs, targets)


@SETTINGS
@given(data=batches(), layers=st.integers(1, 4))
def test_many_equals_one_at_a_time(data, layers):
    outputs, targets = data
    outs = [{k: v + 0.25 * i for k, v in outputs.items()} for i in range(layers)]
    matcher = detr_ops.HungarianMatcher(**COSTS["focal"])
    for got, o in zip(matcher.forward_many(outs, targets), outs):
        assert_same_indices(got, matcher(o, targets))
