"""One training step's matching for the modern DETR family (issue 17): every decoder layer, query
group, branch and denoising index list of a step, against the loops exactly as each codebase writes
them (detr_ops/reference/detr_family_matchers.py; DINO's denoising code in
detr_ops/reference/denoising.py), batch 16, COCO-like target counts, float32. Shapes:
benchmarks/shapes.py (MATCHER_STEPS).

detr_ops matches the whole step with one ``HungarianMatcher.forward_many`` call: one cost launch per
targets list, one batched solve per problem height (and per round for DEIM's top-k), one host copy.
"""
import copy

import pytest
import torch

import detr_ops
from benchmarks import shapes
from benchmarks.backends import detr_ops_backends
from benchmarks.timing import check_equal, measure
from detr_ops.reference import HungarianMatcherReference
from detr_ops.reference import detr_family_matchers as ref
from detr_ops.reference.denoising import dino_dn_indices, dino_dn_meta

B, K = shapes.MATCHER_STEP_BATCH, shapes.MATCHER_STEP_CLASSES
FOCAL = dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0)


def _batch(step):
    g = torch.Generator().manual_seed(sum(map(ord, step)))
    torch.manual_seed(sum(map(ord, step)))  # coco_like_target_counts also draws from the global generator
    sizes = shapes.coco_like_target_counts(B, g)
    dev = shapes.DEVICE
    targets = [{"labels": torch.randint(0, K - 1, (n,), generator=g).to(dev),
                "boxes": (torch.rand(n, 4, generator=g) * 0.5 + 0.05).to(dev)} for n in sizes]

    def outputs(Q):
        return {"pred_logits": torch.randn(B, Q, K, generator=g).to(dev),
                "pred_boxes": (torch.rand(B, Q, 4, generator=g) * 0.5 + 0.05).to(dev)}

    return outputs, targets, sizes


def _rf_detr_matcher(outputs, targets, group_detr):
    """rfdetr/models/matcher.py: its cost, .float().cpu(), the non-finite replacement, the group loop."""
    C = ref.detr_family_cost_matrix(outputs, targets, class_cost="focal_logsigmoid", **FOCAL).float().cpu()
    max_cost = C.max() if C.numel() > 0 else 0
    C[C.isinf() | C.isnan()] = max_cost * 2
    return ref.group_detr_match(C, [len(v["boxes"]) for v in targets], group_detr)


def _dfine_matcher(outputs, targets, topk=0, **cost):
    """D-FINE / DEIM / DEIMv2's matcher: its cost, .cpu(), nan_to_num(nan=1.0), the loop (+ top-k)."""
    C = ref.detr_family_cost_matrix(outputs, targets, **cost).cpu()
    return ref.deim_match(C, [len(v["boxes"]) for v in targets], nan_cost=1.0, topk=topk)


def _step(name):
    """(baseline, detr_ops(backend)): two functions matching one training step, same results."""
    outputs, targets, sizes = _batch(name)
    if name == "deformable-detr":
        layers = [outputs(300) for _ in range(6)]
        enc = outputs(shapes.MATCHER_ENCODER_TOKENS)
        matcher = HungarianMatcherReference(**FOCAL, focal=True)

        def baseline():
            indices = [matcher(o, targets) for o in layers]  # SetCriterion: final + aux layers
            bin_targets = copy.deepcopy(targets)  # two-stage: class-agnostic encoder proposals
            for bt in bin_targets:
                bt["labels"] = torch.zeros_like(bt["labels"])
            return indices + [matcher(enc, bin_targets)]

        def ours(backend):
            m = detr_ops.HungarianMatcher(**FOCAL, focal=True, backend=backend)
            binary = [dict(t, labels=torch.zeros_like(t["labels"])) for t in targets]
            return lambda: m.forward_many(layers + [enc], [targets] * 6 + [binary])

    elif name == "rf-detr":
        sets = [outputs(13 * 300) for _ in range(4)]

        def baseline():
            return [_rf_detr_matcher(o, targets, 13) for o in sets]

        def ours(backend):
            m = detr_ops.HungarianMatcher(**FOCAL, class_cost="focal_logsigmoid", backend=backend)
            return lambda: m.forward_many(sets, targets, group_detr=13)

    elif name == "h-detr":
        one2one = [outputs(300) for _ in range(6)]
        one2many = [outputs(1500) for _ in range(6)]
        matcher = HungarianMatcherReference(**FOCAL, focal=True)

        def baseline():
            indices = [matcher(o, targets) for o in one2one]
            multi_targets = copy.deepcopy(targets)  # engine.py's train_hybrid
            for target in multi_targets:
                target["boxes"] = target["boxes"].repeat(6, 1)
                target["labels"] = target["labels"].repeat(6)
            many = [matcher(o, multi_targets) for o in one2many]
            # H-DETR indexes the repeated targets; the original index is j % T (what detr_ops returns)
            return indices + [[(i, j % max(n, 1)) for (i, j), n in zip(ind, sizes)] for ind in many]

        def ours(backend):
            m = detr_ops.HungarianMatcher(**FOCAL, focal=True, backend=backend)
            return lambda: m.forward_many(one2one + one2many, targets, capacity=[1] * 6 + [6] * 6)

    elif name == "dino":
        layers = [outputs(900) for _ in range(7)]  # final, 5 aux, interm
        matcher = HungarianMatcherReference(**FOCAL, focal=True)

        def baseline():
            meta = dino_dn_meta(targets, 100)  # prepare_for_cdn (int(max(known_num)))
            return [matcher(o, targets) for o in layers] + [dino_dn_indices(targets, meta, shapes.DEVICE)[0]]

        def ours(backend):
            m = detr_ops.HungarianMatcher(**FOCAL, focal=True, backend=backend)

            def run():
                counts = [len(t["labels"]) for t in targets]
                groups = detr_ops.dn_num_groups(100, max(counts))
                dn = detr_ops.denoising_match_indices(counts, max(counts), groups, device=shapes.DEVICE)[0]
                return m.forward_many(layers, targets) + [dn]

            return run

    elif name in ("d-fine", "deimv2"):
        sets = [outputs(300) for _ in range(8)]
        cost = dict(FOCAL, class_cost="focal") if name == "d-fine" else \
            dict(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0, class_cost="iou_aware", iou_power=4.0)

        def baseline():
            return [_dfine_matcher(o, targets, **cost) for o in sets]

        def ours(backend):
            m = detr_ops.HungarianMatcher(**cost, nan_cost=1.0, backend=backend)
            return lambda: m.forward_many(sets, targets)

    elif name == "deim-topk":
        final = outputs(300)

        def baseline():
            return [_dfine_matcher(final, targets, topk=4, **FOCAL, class_cost="focal")]

        def ours(backend):
            m = detr_ops.HungarianMatcher(**FOCAL, focal=True, nan_cost=1.0, backend=backend)
            return lambda: [m(final, targets, topk_rounds=4)]

    else:
        raise ValueError(name)
    return baseline, ours


def _impls():
    rows = [("baseline", "codebase loop", "")]
    return rows + [("detr_ops", "detr_ops" if b == "native" else f"detr_ops-{b}", b) for b in detr_ops_backends()]


@pytest.mark.parametrize("step", shapes.MATCHER_STEPS)
@pytest.mark.parametrize("role,impl,backend", _impls(), ids=lambda x: str(x))
def test_matcher_step(benchmark, step, role, impl, backend):
    baseline, ours = _step(step)
    if role == "baseline":
        fn = baseline
    else:
        fn = ours(backend)
        for s, (got, expected) in enumerate(zip(fn(), baseline())):
            for (i, j), (ei, ej) in zip(got, expected):
                check_equal(i, ei, what=f"{step}: matched queries of set {s}")
                check_equal(j, ej, what=f"{step}: matched targets of set {s}")
    measure(benchmark, fn, op="matcher_step", case=f"{step} B={B}", impl=impl, role=role, backend=backend,
            device=shapes.DEVICE)
