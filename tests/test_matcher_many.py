"""HungarianMatcher.forward_many / match_many: every outputs dict of a training step matched at
once, with the same indices as one matcher call per dict, from one cost launch per targets list,
one solve per problem height and one host copy."""
import pytest
import torch

import detr_ops
from detr_ops.ops import hungarian_matching
from detr_ops.reference import detr_family_matchers as ref
from tests.cases import device_backend_param
from tests.test_matcher import assert_same_indices, make_batch

FOCAL = dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal=True)
COST = dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, class_cost="focal")  # the reference's names


def layers(n, sizes, Q, K=12, seed=0, device="cpu"):
    """n outputs dicts of one batch (decoder layers), and its targets."""
    outs = []
    for i in range(n):
        o, targets = make_batch(sizes, Q=Q, K=K, dtype=torch.float64, seed=seed, device=device)
        g = torch.Generator().manual_seed(100 + i)
        o = {"pred_logits": torch.randn(o["pred_logits"].shape, generator=g, dtype=torch.float64).to(device),
             "pred_boxes": (torch.rand(o["pred_boxes"].shape, generator=g, dtype=torch.float64) * 0.5 + 0.05).to(device)}
        outs.append(o)
    return outs, targets


class Counter:
    """Counts calls of a function while patched in."""

    def __init__(self, monkeypatch, owner, name):
        self.calls = 0
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


@device_backend_param
def test_aux_layers_equal_one_call_per_layer(device, backend, monkeypatch):
    """DETR / Deformable DETR: final + aux layers, same queries and targets: one launch, one solve,
    one host copy, and each layer's indices are the single call's."""
    sizes = [3, 0, 6, 1] if backend == "native" else [2, 0]
    outs, targets = layers(4, sizes, Q=20 if backend == "native" else 6, device=device)
    matcher = detr_ops.HungarianMatcher(**FOCAL, backend=backend)
    expected = [matcher(o, targets) for o in outs]
    for o, e in zip(outs, expected):
        assert_same_indices(e, ref.deim_match(ref.detr_family_cost_matrix(o, targets, **COST).cpu(), sizes, None))
    launches = Counter(monkeypatch, hungarian_matching, "matching_cost")
    solves = Counter(monkeypatch, hungarian_matching, "assign")
    copies = Counter(monkeypatch, torch.Tensor, "cpu")
    got = matcher.forward_many(outs, targets)
    assert (launches.calls, solves.calls, copies.calls) == (1, 1, 1)
    for g, e in zip(got, expected):
        assert_same_indices(g, e)


def test_rf_detr_groups_for_every_prediction_set(monkeypatch):
    sizes = [4, 2, 0]
    outs, targets = layers(4, sizes, Q=5 * 6)
    matcher = detr_ops.HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, class_cost="focal_logsigmoid")
    copies = Counter(monkeypatch, torch.Tensor, "cpu")
    got = matcher.forward_many(outs, targets, group_detr=5)
    assert copies.calls == 1
    for g, o in zip(got, outs):
        C = ref.detr_family_cost_matrix(o, targets, 2.0, 5.0, 2.0, "focal_logsigmoid")
        assert_same_indices(g, ref.group_detr_match(C, sizes, 5))


def test_hdetr_step_one_to_one_and_one_to_many_in_one_call(monkeypatch):
    """H-DETR: 6 one-to-one layers of 10 queries and 6 one-to-many layers of 30 with k=3, plus
    class-agnostic encoder proposals (Deformable DETR's two-stage bin_targets): per-dict modes and
    targets, one host copy."""
    sizes = [3, 1, 0, 5]
    one2one, targets = layers(6, sizes, Q=10)
    one2many, _ = layers(6, sizes, Q=30, seed=1)
    enc, _ = layers(1, sizes, Q=50, seed=2)
    binary = [dict(t, labels=torch.zeros_like(t["labels"])) for t in targets]
    matcher = detr_ops.HungarianMatcher(**FOCAL)
    launches = Counter(monkeypatch, hungarian_matching, "matching_cost")
    copies = Counter(monkeypatch, torch.Tensor, "cpu")
    got = matcher.forward_many(one2one + one2many + enc, [targets] * 12 + [binary], capacity=[1] * 6 + [3] * 6 + [1])
    assert copies.calls == 1 and launches.calls == 2  # decoder (shared targets) + encoder (binary labels)
    for g, o in zip(got[:6], one2one):
        assert_same_indices(g, ref.deim_match(ref.detr_family_cost_matrix(o, targets, **COST), sizes, None))
    for g, o in zip(got[6:12], one2many):
        assert_same_indices(g, ref.hdetr_one2many_match(o, targets, 3, **COST)[1])
    assert_same_indices(got[12], ref.deim_match(ref.detr_family_cost_matrix(enc[0], binary, **COST), sizes, None))


def test_dfine_step_with_nan_and_topk(monkeypatch):
    """D-FINE / DEIM: 8 prediction sets with nan_cost=1.0, and DEIM's top-k on the last."""
    sizes = [3, 0, 4]
    outs, targets = layers(3, sizes, Q=12)
    outs[1]["pred_logits"][2, 5] = float("nan")
    matcher = detr_ops.HungarianMatcher(**FOCAL, nan_cost=1.0)
    got = matcher.forward_many(outs, targets, topk_rounds=[1, 1, 3])
    for g, o, k in zip(got, outs, [0, 0, 3]):
        assert_same_indices(g, ref.deim_match(ref.detr_family_cost_matrix(o, targets, **COST), sizes, 1.0, topk=k))


def test_match_many_is_sync_free_and_compiles_fullgraph():
    sizes = [3, 0, 4]
    outs, targets = layers(3, sizes, Q=12)
    padded = detr_ops.pad_targets(targets)
    matcher = detr_ops.HungarianMatcher(**FOCAL, nan_cost=1.0)

    def step(o0, o1, o2, p):
        results = matcher.match_many([o0, o1, o2], padded_targets=p, groups=[1, 3, 1], capacity=[1, 1, 2],
                                     topk_rounds=[1, 1, 2])
        return [r for pair in results for r in pair]

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(*outs, padded)
    expected = step(*outs, padded)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    assert got[4].shape == (3, 2, 12)


def test_forward_many_names_the_failing_outputs_dict():
    sizes = [2, 3]
    outs, targets = layers(3, sizes, Q=8)
    outs[2]["pred_boxes"][1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"invalid numeric entries \(outputs 2, batch item 1\)"):
        detr_ops.HungarianMatcher().forward_many(outs, targets)


@pytest.mark.parametrize("call,message", [
    (lambda m, o, t: m.forward_many([], t), "non-empty list of outputs dicts"),
    (lambda m, o, t: m.forward_many(o, [t, t]), r"one per outputs dict \(3\), got 2"),
    (lambda m, o, t: m.forward_many(o, t, capacity=[1, 2]), "one per outputs dict"),
    (lambda m, o, t: m.forward_many(o + [{"pred_logits": o[0]["pred_logits"]}], t), r"outputs\[3\] must be a dict"),
    (lambda m, o, t: m.forward_many(o, t[:1]), "targets must have one entry per image"),
])
def test_bad_arguments(call, message):
    outs, targets = layers(3, [2, 3], Q=8)
    with pytest.raises(ValueError, match=message):
        call(detr_ops.HungarianMatcher(), outs, targets)
