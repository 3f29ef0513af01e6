"""DETR matching: the fused per-image cost against DETR's unfused cross-image cost, and the whole
matcher (cost + assignment + index lists) against DETR's / Deformable DETR's matcher (cost, .cpu(),
scipy loop), at B=16 and Q in {100, 300, 900} with COCO-like target counts, float32."""
import pytest
import torch

import detr_ops
from benchmarks import shapes
from benchmarks.backends import detr_ops_backends
from benchmarks.timing import check_close, check_equal, measure
from detr_ops.reference import HungarianMatcherReference, detr_cost_matrix

WEIGHTS = dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0)
FORMS = [pytest.param(False, id="softmax"), pytest.param(True, id="focal")]


def _batch(B, Q, K):
    g = torch.Generator().manual_seed(B * 1000 + Q)
    torch.manual_seed(B * 1000 + Q)  # coco_like_target_counts also draws from the global generator
    sizes = shapes.coco_like_target_counts(B, g)
    dev = shapes.DEVICE
    outputs = {"pred_logits": torch.randn(B, Q, K, generator=g).to(dev),
               "pred_boxes": (torch.rand(B, Q, 4, generator=g) * 0.5 + 0.05).to(dev)}
    targets = [{"labels": torch.randint(0, K, (n,), generator=g).to(dev),
                "boxes": (torch.rand(n, 4, generator=g) * 0.5 + 0.05).to(dev)} for n in sizes]
    return outputs, targets, sizes


def _impls(baseline):
    """(role, impl, backend) rows: the baseline, then detr_ops on each available backend."""
    rows = [("baseline", baseline, "")]
    return rows + [("detr_ops", "detr_ops" if b == "native" else f"detr_ops-{b}", b) for b in detr_ops_backends()]


def _case(B, Q, focal):
    return f"B={B} Q={Q} {'focal' if focal else 'softmax'}"


@pytest.mark.parametrize("shape", shapes.MATCHER, ids=lambda s: f"B{s[0]}Q{s[1]}")
@pytest.mark.parametrize("focal", FORMS)
@pytest.mark.parametrize("role,impl,backend", _impls("DETR cost"), ids=lambda x: str(x))
def test_matching_cost(benchmark, shape, focal, role, impl, backend):
    B, Q, K = shape
    outputs, targets, sizes = _batch(B, Q, K)
    weights = dict(WEIGHTS, focal=focal)
    padded = detr_ops.pad_targets(targets)
    if role == "baseline":
        fn = lambda: detr_cost_matrix(outputs, targets, **weights)  # noqa: E731
    else:
        fn = lambda: detr_ops.matching_cost(outputs["pred_logits"], outputs["pred_boxes"], *padded, **weights,  # noqa: E731
                                            backend=backend)
        ours, full = fn(), detr_cost_matrix(outputs, targets, **weights)
        for b, blocks in enumerate(full.split(sizes, -1)):
            check_close(ours[b, :, : sizes[b]], blocks[b], rtol=1e-5, atol=1e-5, what=f"cost of image {b}")
    measure(benchmark, fn, op="matching_cost", case=_case(B, Q, focal), impl=impl, role=role, backend=backend,
            device=shapes.DEVICE)


@pytest.mark.parametrize("shape", shapes.MATCHER, ids=lambda s: f"B{s[0]}Q{s[1]}")
@pytest.mark.parametrize("focal", FORMS)
@pytest.mark.parametrize("role,impl,backend", _impls("DETR matcher"), ids=lambda x: str(x))
def test_matcher(benchmark, shape, focal, role, impl, backend):
    B, Q, K = shape
    outputs, targets, _ = _batch(B, Q, K)
    weights = dict(WEIGHTS, focal=focal)
    reference = HungarianMatcherReference(**weights)
    if role == "baseline":
        fn = lambda: reference(outputs, targets)  # noqa: E731
    else:
        matcher = detr_ops.HungarianMatcher(**weights, backend=backend)
        fn = lambda: matcher(outputs, targets)  # noqa: E731
        for (i, j), (ei, ej) in zip(fn(), reference(outputs, targets)):
            check_equal(i, ei, what="matched queries")
            check_equal(j, ej, what="matched targets")
    measure(benchmark, fn, op="matcher", case=_case(B, Q, focal), impl=impl, role=role, backend=backend,
            device=shapes.DEVICE)
