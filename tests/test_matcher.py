"""HungarianMatcher against a faithful re-implementation of DETR's and Deformable DETR's matchers
(cross-image cost matrix, host copy, scipy loop): the same index lists."""
import pytest
import torch

import detr_ops
from detr_ops.reference import HungarianMatcherReference
from tests.cases import device_backend_param


def make_batch(num_targets, Q=30, K=12, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    B = len(num_targets)
    outputs = {
        "pred_logits": torch.randn(B, Q, K, generator=g).to(device, dtype),
        "pred_boxes": (torch.rand(B, Q, 4, generator=g) * 0.5 + 0.05).to(device, dtype),
    }
    targets = [
        {"labels": torch.randint(0, K, (n,), generator=g).to(device),
         "boxes": (torch.rand(n, 4, generator=g) * 0.5 + 0.05).to(device, dtype)}
        for n in num_targets
    ]
    return outputs, targets


def assert_same_indices(got, expected):
    assert len(got) == len(expected)
    for (i, j), (ei, ej) in zip(got, expected):
        assert i.dtype == torch.int64 and j.dtype == torch.int64
        assert torch.equal(i, ei) and torch.equal(j, ej)


WEIGHTS = [
    pytest.param(dict(cost_class=1, cost_bbox=5, cost_giou=2), id="detr"),
    pytest.param(dict(cost_class=2, cost_bbox=5, cost_giou=2, focal=True), id="deformable-focal"),
]


@device_backend_param
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("seed", range(3))
def test_same_indices_as_original(device, backend, weights, dtype, seed):
    sizes = [3, 0, 12, 1, 30, 7] if backend == "native" else [3, 0, 5]
    outputs, targets = make_batch(sizes, Q=30 if backend == "native" else 8, dtype=dtype, seed=seed, device=device)
    expected = HungarianMatcherReference(**weights)(outputs, targets)
    got = detr_ops.HungarianMatcher(**weights, backend=backend)(outputs, targets)
    assert_same_indices(got, expected)


def test_more_targets_than_queries():
    outputs, targets = make_batch([9, 2], Q=5)
    expected = HungarianMatcherReference(cost_bbox=5, cost_giou=2)(outputs, targets)
    assert_same_indices(detr_ops.HungarianMatcher(cost_bbox=5, cost_giou=2)(outputs, targets), expected)


def test_detr_sized_batch():
    outputs, targets = make_batch([7, 0, 25, 3, 100, 1, 12, 5], Q=300, K=92, seed=5)
    expected = HungarianMatcherReference(cost_class=1, cost_bbox=5, cost_giou=2)(outputs, targets)
    assert_same_indices(detr_ops.HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)(outputs, targets), expected)


def test_nan_logits_raise_scipys_error():
    outputs, targets = make_batch([2, 3])
    outputs["pred_logits"][1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="matrix contains invalid numeric entries"):
        HungarianMatcherReference()(outputs, targets)
    with pytest.raises(ValueError, match="matrix contains invalid numeric entries \\(batch item 1\\)"):
        detr_ops.HungarianMatcher()(outputs, targets)


def test_match_stays_on_device_and_agrees_with_forward():
    outputs, targets = make_batch([4, 0, 6])
    matcher = detr_ops.HungarianMatcher(cost_bbox=5, cost_giou=2)
    col_for_row, status = matcher.match(outputs, targets)
    assert col_for_row.shape == (3, 30) and status.tolist() == [0, 0, 0]
    for b, (i, j) in enumerate(matcher(outputs, targets)):
        assert torch.equal(col_for_row[b, i], j)
        assert int((col_for_row[b] >= 0).sum()) == len(targets[b]["labels"])


def test_match_compiles_fullgraph_with_padded_targets():
    outputs, targets = make_batch([4, 0, 6])
    padded = detr_ops.pad_targets(targets)
    matcher = detr_ops.HungarianMatcher(cost_bbox=5, cost_giou=2)
    compiled = torch.compile(lambda o, p: matcher.match(o, padded_targets=p), fullgraph=True, backend="aot_eager")
    col, status = compiled(outputs, padded)
    expected_col, _ = matcher.match(outputs, padded_targets=padded)
    assert torch.equal(col, expected_col) and status.tolist() == [0, 0, 0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="cannot all be 0"):
        detr_ops.HungarianMatcher(0, 0, 0)
    outputs, _ = make_batch([1])
    with pytest.raises(ValueError, match="pass targets"):
        detr_ops.HungarianMatcher().match(outputs)
