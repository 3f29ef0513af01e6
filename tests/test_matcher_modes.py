"""HungarianMatcher's modes against the loops of the codebases they reproduce
(detr_ops/reference/detr_family_matchers.py): Group DETR / RF-DETR groups, H-DETR's one-to-many
capacity, DEIM's top-k rounds, D-FINE / DEIM's NaN replacement, RF-DETR's and DEIMv2's class costs.
Same indices, on float64 costs."""
import pytest
import torch

import detr_ops
from detr_ops.reference import detr_family_matchers as ref
from tests.cases import device_backend_param
from tests.test_matcher import assert_same_indices, make_batch

FOCAL = dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, class_cost="focal")


def _sizes(backend):
    return [3, 0, 7, 1, 12] if backend == "native" else [3, 0, 2]


def reference_cost(outputs, targets, **cost):
    return ref.detr_family_cost_matrix(outputs, targets, **cost).cpu()


@device_backend_param
@pytest.mark.parametrize("groups", [1, 3, 13])
def test_groups_are_group_detrs_indices(device, backend, groups):
    sizes = _sizes(backend)
    Q = groups * (8 if backend == "native" else 3)
    outputs, targets = make_batch(sizes, Q=Q, dtype=torch.float64, seed=groups, device=device)
    cost = dict(FOCAL, class_cost="focal_logsigmoid")  # RF-DETR's class cost
    expected = ref.group_detr_match(reference_cost(outputs, targets, **cost), sizes, groups)
    matcher = detr_ops.HungarianMatcher(**cost, backend=backend)
    assert_same_indices(matcher(outputs, targets, groups=groups), expected)
    if backend == "native":  # the same path again (the interpreter is slow)
        assert_same_indices(matcher(outputs, targets, group_detr=groups), expected)  # RF-DETR's keyword
        assert_same_indices(detr_ops.HungarianMatcher(**cost, groups=groups)(outputs, targets), expected)


def test_groups_with_more_targets_than_group_queries():
    sizes = [9, 2]
    outputs, targets = make_batch(sizes, Q=12, dtype=torch.float64)
    expected = ref.group_detr_match(reference_cost(outputs, targets, **FOCAL), sizes, 3)
    assert_same_indices(detr_ops.HungarianMatcher(**FOCAL)(outputs, targets, groups=3), expected)


@device_backend_param
@pytest.mark.parametrize("k", [1, 2, 6])
def test_capacity_is_hdetrs_one_to_many(device, backend, k):
    sizes = _sizes(backend)
    outputs, targets = make_batch(sizes, Q=40 if backend == "native" else 10, dtype=torch.float64, seed=k,
                                  device=device)
    hdetr, original = ref.hdetr_one2many_match(outputs, targets, k, **FOCAL)
    got = detr_ops.HungarianMatcher(**FOCAL, backend=backend)(outputs, targets, capacity=k)
    assert_same_indices(got, original)
    for (i, j), (hi, hj), t in zip(got, hdetr, targets):
        # H-DETR indexes its repeated targets: the same boxes as the original indices
        assert torch.equal(hi, i) and torch.equal(t["boxes"].repeat(k, 1)[hj].cpu(), t["boxes"][j].cpu())


def test_capacity_pairs_and_total_cost_equal_scipy_on_the_tiled_matrix():
    """The definition: scipy on the columns tiled k times; same (query, target) pairs, same total."""
    import numpy as np
    import scipy.optimize

    sizes, k = [4, 3], 3
    outputs, targets = make_batch(sizes, Q=20, dtype=torch.float64, seed=11)
    C = reference_cost(outputs, targets, **FOCAL)
    got = detr_ops.HungarianMatcher(**FOCAL)(outputs, targets, capacity=k)
    for b, (c, (i, j)) in enumerate(zip(C.split(sizes, -1), got)):
        block = c[b].numpy()
        rows, cols = scipy.optimize.linear_sum_assignment(np.tile(block, (1, k)))
        assert sorted(zip(rows.tolist(), (cols % sizes[b]).tolist())) == sorted(zip(i.tolist(), j.tolist()))
        assert abs(block[rows, cols % sizes[b]].sum() - block[i.numpy(), j.numpy()].sum()) < 1e-12
        assert torch.bincount(j, minlength=sizes[b]).max() <= k


@device_backend_param
@pytest.mark.parametrize("k", [2, 4])
def test_topk_rounds_are_deims_get_top_k_matches(device, backend, k):
    sizes = _sizes(backend)
    outputs, targets = make_batch(sizes, Q=30 if backend == "native" else 12, dtype=torch.float64, seed=k,
                                  device=device)
    expected = ref.deim_match(reference_cost(outputs, targets, **FOCAL), sizes, nan_cost=1.0, topk=k)
    matcher = detr_ops.HungarianMatcher(**FOCAL, nan_cost=1.0, backend=backend)
    assert_same_indices(matcher(outputs, targets, topk_rounds=k), expected)
    col, status = matcher.match(outputs, targets, topk_rounds=k)
    assert col.shape == (len(sizes), k, outputs["pred_logits"].shape[1]) and status.tolist() == [0] * len(sizes)


def test_topk_rounds_rematch_masked_queries_when_queries_run_out():
    """Few queries: DEIM's later rounds must reuse masked (1e6) rows; and rows numbered like matched
    targets are masked too (its np.stack((rows, cols)) quirk)."""
    sizes = [5, 2]
    outputs, targets = make_batch(sizes, Q=7, dtype=torch.float64, seed=3)
    expected = ref.deim_match(reference_cost(outputs, targets, **FOCAL), sizes, nan_cost=1.0, topk=3)
    assert_same_indices(detr_ops.HungarianMatcher(**FOCAL, nan_cost=1.0)(outputs, targets, topk_rounds=3), expected)


@device_backend_param
def test_nan_cost_is_dfines_nan_to_num(device, backend):
    sizes = _sizes(backend)
    outputs, targets = make_batch(sizes, Q=20 if backend == "native" else 8, dtype=torch.float64, device=device)
    outputs["pred_logits"][0, 1, :] = float("nan")  # a diverged query
    outputs["pred_boxes"][2 % len(sizes), 3] = float("nan")
    expected = ref.deim_match(reference_cost(outputs, targets, **FOCAL), sizes, nan_cost=1.0)
    matcher = detr_ops.HungarianMatcher(**FOCAL, backend=backend)
    assert_same_indices(matcher(outputs, targets, nan_cost=1.0), expected)
    with pytest.raises(ValueError, match="matrix contains invalid numeric entries"):
        matcher(outputs, targets)


def test_nan_cost_replaces_infinite_costs_as_nan_to_num_does():
    sizes = [3, 2]
    outputs, targets = make_batch(sizes, Q=10, dtype=torch.float64)
    outputs["pred_boxes"][1, 4, 2] = float("inf")  # L1 = inf, GIoU NaN
    outputs["pred_boxes"][0, 2, 0] = -float("inf")
    expected = ref.deim_match(reference_cost(outputs, targets, **FOCAL), sizes, nan_cost=1.0)
    assert_same_indices(detr_ops.HungarianMatcher(**FOCAL, nan_cost=1.0)(outputs, targets), expected)


@device_backend_param
def test_iou_aware_is_deimv2s_cost(device, backend):
    sizes = _sizes(backend)
    outputs, targets = make_batch(sizes, Q=20 if backend == "native" else 8, dtype=torch.float64, device=device)
    cost = dict(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0, class_cost="iou_aware", iou_power=4.0)
    expected = ref.deim_match(reference_cost(outputs, targets, **cost), sizes, nan_cost=1.0)
    got = detr_ops.HungarianMatcher(**cost, nan_cost=1.0, backend=backend)(outputs, targets)
    assert_same_indices(got, expected)


def test_modes_per_call_override_the_constructor():
    sizes = [3, 1]
    outputs, targets = make_batch(sizes, Q=12, dtype=torch.float64)
    matcher = detr_ops.HungarianMatcher(**FOCAL, groups=3)
    C = reference_cost(outputs, targets, **FOCAL)
    assert_same_indices(matcher(outputs, targets), ref.group_detr_match(C, sizes, 3))
    assert_same_indices(matcher(outputs, targets, groups=1), ref.deim_match(C, sizes, nan_cost=None))


@pytest.mark.parametrize("modes,message", [
    (dict(groups=5), "groups=5 must divide the number of queries 12"),
    (dict(groups=0), "groups must be an integer >= 1"),
    (dict(capacity=1.5), "capacity must be an integer >= 1"),
    (dict(topk_rounds=-1), "topk_rounds must be an integer >= 1"),
    (dict(nan_cost=float("nan")), "nan_cost must be None"),
    (dict(nan_cost="1"), "nan_cost must be None"),
])
def test_bad_modes(modes, message):
    outputs, targets = make_batch([2], Q=12)
    with pytest.raises(ValueError, match=message):
        detr_ops.HungarianMatcher()(outputs, targets, **modes)


def test_unknown_mode_is_a_type_error():
    outputs, targets = make_batch([2], Q=12)
    with pytest.raises(TypeError, match="unknown matching mode"):
        detr_ops.HungarianMatcher()(outputs, targets, group=2)


def test_capacity_without_the_solver_argument_tiles_the_columns(monkeypatch):
    """The fallback that tiles the cost explicitly and the solver's own capacity give one answer
    (whichever this build has, the other is forced here)."""
    from detr_ops.ops import capacity_assignment

    sizes, k = [4, 0, 2], 3
    outputs, targets = make_batch(sizes, Q=15, dtype=torch.float64, seed=4)
    matcher = detr_ops.HungarianMatcher(**FOCAL)
    first = matcher(outputs, targets, capacity=k)
    if capacity_assignment.SOLVER_HAS_CAPACITY:
        monkeypatch.setattr(capacity_assignment, "SOLVER_HAS_CAPACITY", False)
        assert_same_indices(matcher(outputs, targets, capacity=k), first)
    assert_same_indices(first, ref.hdetr_one2many_match(outputs, targets, k, **FOCAL)[1])
