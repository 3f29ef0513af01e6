"""DINO's training-only machinery, each piece against a restatement of its original's arithmetic:
the denoising queries and attention mask (IDEA-Research/DINO ``dn_components.prepare_for_cdn``),
the ATSS assignment (mmdet ``ATSSAssigner.assign``, per image with Python loops), Group DETR and
H-DETR matching (per-group / repeated-target SciPy matching); plus the absence of host
synchronisation in the denoising and Co-DETR bookkeeping, and batches without targets."""
import contextlib
from unittest import mock

import pytest
import torch

from detr_ops.models import co_head, denoising, one_to_many
from detr_ops.models.query_layout import QueryLayout
from detr_ops.reference.box_iou import box_iou_reference
from detr_ops.reference.hungarian_matcher import HungarianMatcherReference
from tests.models_tiny import batch, tiny_model


def _dino_original_mask(pad_size, single_pad, dn_number, num_queries):
    # prepare_for_cdn's loop, restated.
    tgt_size = pad_size + num_queries
    attn_mask = torch.ones(tgt_size, tgt_size) < 0
    attn_mask[pad_size:, :pad_size] = True
    for i in range(dn_number):
        rows = slice(single_pad * 2 * i, single_pad * 2 * (i + 1))
        if i == 0:
            attn_mask[rows, single_pad * 2 * (i + 1):pad_size] = True
        if i == dn_number - 1:
            attn_mask[rows, :single_pad * i * 2] = True
        else:
            attn_mask[rows, single_pad * 2 * (i + 1):pad_size] = True
            attn_mask[rows, :single_pad * 2 * i] = True
    return attn_mask


@pytest.mark.parametrize("groups,size,queries", [(1, 3, 5), (4, 2, 7), (33, 3, 16)])
def test_denoising_mask_is_dinos(groups, size, queries):
    layout = QueryLayout(queries, dn_groups=groups, dn_group_size=size)
    expected = _dino_original_mask(2 * groups * size, size, groups, queries)
    assert torch.equal(layout.attention_mask("cpu"), expected)


def test_segments_see_only_themselves():
    layout = QueryLayout(4, dn_groups=2, dn_group_size=1, groups=3, co_queries=2)
    mask = layout.attention_mask("cpu")
    s = layout.slices()
    assert layout.total == 4 + 12 + 2 and mask.shape == (18, 18)
    visible = ~mask
    main = s["main"]
    for g in range(3):  # Group DETR: each group sees exactly itself
        rows = slice(main.start + 4 * g, main.start + 4 * (g + 1))
        assert visible[rows, rows].all() and visible[rows].sum() == 16
    co = s["co"]
    assert visible[co, co].all() and visible[co].sum() == 4
    # Denoising groups see themselves and group 0 only; nothing else sees them.
    assert visible[0:2, main.start:main.start + 4].all() and not visible[0:2, main.start + 4:].any()
    assert not visible[2:, 0:2].any()
    assert QueryLayout(7).attention_mask("cpu") is None
    hybrid = QueryLayout(3, one_to_many=5).attention_mask("cpu")
    assert hybrid[:3, 3:].all() and hybrid[3:, :3].all() and not hybrid[:3, :3].any() and not hybrid[3:, 3:].any()


@pytest.mark.parametrize("dn_number,max_known", [(100, 1), (100, 3), (100, 7), (100, 150), (50, 4), (12, 3),
                                                (2, 3), (0, 3)])
def test_group_count_is_dinos(dn_number, max_known):
    # prepare_for_cdn, restated: dn_number *= 2; >= 100: // (2 * max_known); < 1 (or 0): 1.
    dn = dn_number * 2
    if dn >= 100:
        dn = dn // (2 * max_known)
    elif dn < 1:
        dn = 1
    if dn == 0:
        dn = 1
    assert denoising.num_groups(dn_number, max_known) == dn


def test_pad_targets_fixed_truncates_and_pads():
    targets = [{"labels": torch.tensor([2, 0, 1, 1]), "boxes": torch.rand(4, 4)},
               {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    labels, boxes, valid = denoising.pad_targets_fixed(targets, 3)
    assert labels.tolist() == [[2, 0, 1], [0, 0, 0]]
    assert valid.tolist() == [[True, True, True], [False, False, False]]
    torch.testing.assert_close(boxes[0], targets[0]["boxes"][:3])
    assert (boxes[1] == 0).all()
    with pytest.raises(ValueError, match="max_targets"):
        denoising.pad_targets_fixed(targets, 0)


def test_cdn_queries_noise_and_layout():
    torch.manual_seed(0)
    enc = torch.nn.Embedding(4, 8)
    # Central boxes: no noised corner reaches the image border, so no clamping interferes.
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.1], [0.4, 0.6, 0.1, 0.2]]]).repeat(500, 1, 1)
    labels = torch.tensor([[1, 2]]).repeat(500, 1)
    valid = torch.tensor([[True, False]]).repeat(500, 1)
    content, ref, groups = denoising.cdn_queries(labels, boxes, valid, 1, 0.0, 1.0, 3, enc)
    assert groups == 2 and content.shape == (500, 8, 8) and ref.shape == (500, 8, 4)
    view = ref.view(500, groups, 2, 2, 4)
    assert (view[:, :, :, 1] == 0).all() and (content.view(500, groups, 2, 2, 8)[:, :, :, 1] == 0).all()
    torch.testing.assert_close(content.view(500, groups, 2, 2, 8)[:, :, 0, 0], enc.weight[1].expand(500, groups, 8))
    box = ref.view(500, groups, 2, 2, 4)[:, :, :, 0].sigmoid()
    xyxy = torch.cat([box[..., :2] - box[..., 2:] / 2, box[..., :2] + box[..., 2:] / 2], -1)
    gt = torch.tensor([0.4, 0.45, 0.6, 0.55])
    half = torch.tensor([0.1, 0.05, 0.1, 0.05])
    move = (xyxy - gt).abs() / half  # in units of half the size; sigmoid(logit) round trip ~1e-6
    assert move[:, :, 0].max() < 1 + 1e-4  # positives: less than half the size per corner
    # Negatives: 1-2x; where the corners crossed (DINO keeps such boxes, inverse_sigmoid clamps
    # their negative size) the round trip does not recover the corners, so those are left out.
    upright = (box[:, :, 1, 2:] > 2e-3).all(-1)
    assert upright.float().mean() > 0.2
    neg = move[:, :, 1][upright]
    assert neg.min() > 1 - 1e-4 and neg.max() < 2 + 1e-4
    assert move[:, :, 0].mean() < 0.6 and neg.mean() > 1.4
    # Label noise: a fraction ratio / 2 is redrawn uniformly (so (K-1)/K of those change).
    labels = torch.ones(2000, 3, dtype=torch.int64)
    content, _, _ = denoising.cdn_queries(labels, torch.full((2000, 3, 4), 0.5), torch.ones(2000, 3, dtype=torch.bool),
                                          1, 0.5, 0.0, 3, enc)
    changed = (content - enc.weight[1]).abs().sum(-1) > 0
    assert abs(changed.float().mean().item() - 0.25 * 2 / 3) < 0.02


def _dino_dn_losses(dn, targets, num_boxes, num_classes):
    """DINO's SetCriterion dn branch restated: dn_pos_idx per image, then loss_labels (focal over
    every denoising query) and loss_boxes (L1 + GIoU on the positives), / (num_boxes * groups)."""
    from detr_ops.reference.box_iou import generalized_box_iou_loss_reference

    groups, m = dn["groups"], dn["max_targets"]
    single_pad = 2 * m
    logits, boxes = dn["pred_logits"], dn["pred_boxes"]
    idx = []
    for t in targets:
        j = torch.arange(len(t["labels"]))
        out = (torch.arange(groups) * single_pad).unsqueeze(1) + j
        idx.append((out.flatten(), j.repeat(groups)))
    norm = num_boxes * groups
    onehot = torch.zeros(*logits.shape[:2], num_classes + 1, dtype=logits.dtype)
    for b, (o, j) in enumerate(idx):
        onehot[b, o, targets[b]["labels"][j]] = 1
    onehot = onehot[..., :-1]
    prob = logits.sigmoid()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    p_t = prob * onehot + (1 - prob) * (1 - onehot)
    focal = (0.25 * onehot + 0.75 * (1 - onehot)) * ce * (1 - p_t) ** 2
    src = torch.cat([boxes[b, o] for b, (o, j) in enumerate(idx)])
    tgt = torch.cat([targets[b]["boxes"][j] for b, (o, j) in enumerate(idx)])

    def xyxy(x):
        return torch.cat([x[:, :2] - x[:, 2:] / 2, x[:, :2] + x[:, 2:] / 2], -1)

    return {"loss_ce_dn": focal.mean(1).sum() / norm * logits.shape[1],
            "loss_bbox_dn": (src - tgt).abs().sum() / norm,
            "loss_giou_dn": generalized_box_iou_loss_reference(xyxy(src), xyxy(tgt)).sum() / norm}


def test_denoising_losses_are_dinos():
    torch.manual_seed(0)
    model, criterion = tiny_model("dino", ops="reference")
    images, mask, targets = batch(3, dtype=torch.float64)
    model.double()
    out = model(images, mask, targets)
    got = criterion.denoising_losses(out["dn_outputs"], targets, torch.tensor(5.0, dtype=torch.float64))
    expected = _dino_dn_losses(out["dn_outputs"], targets, 5.0, 3)
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=1e-12, atol=1e-12, msg=k)
    dn = out["dn_outputs"]
    aux = _dino_dn_losses(dict(dn["aux_outputs"][0], groups=dn["groups"], max_targets=dn["max_targets"]), targets,
                          5.0, 3)
    torch.testing.assert_close(got["loss_giou_dn_0"], aux["loss_giou_dn"], rtol=1e-12, atol=1e-12)


def _atss_reference(anchors, level_sizes, gts, topk, aspect):
    """mmdet ATSSAssigner.assign for one image, restated with loops (cxcywh in, per anchor out)."""
    def xyxy(b):
        return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], -1)

    a, g = xyxy(anchors), xyxy(gts)
    overlaps = box_iou_reference(a, g)
    assigned = torch.full((len(anchors),), -1, dtype=torch.int64)
    best = torch.full((len(anchors),), -float("inf"), dtype=anchors.dtype)
    for j in range(len(gts)):
        centre = gts[j, :2] * aspect
        dist = ((anchors[:, :2] * aspect - centre) ** 2).sum(-1).sqrt()
        cands, start = [], 0
        for n in level_sizes:
            cands += (dist[start:start + n].topk(min(topk, n), largest=False).indices + start).tolist()
            start += n
        ious = overlaps[cands, j]
        threshold = ious.mean() + ious.std()
        for c, iou in zip(cands, ious):
            cx, cy = anchors[c, 0], anchors[c, 1]
            inside = min(cx - g[j, 0], cy - g[j, 1], g[j, 2] - cx, g[j, 3] - cy) > 1e-4
            if iou >= threshold and inside and iou > best[c]:
                best[c], assigned[c] = iou, j
    return assigned


def test_atss_assignment_matches_mmdet_loop():
    torch.manual_seed(0)
    shapes = [(8, 10), (4, 5), (2, 3)]
    ratios = torch.tensor([[[1.0, 1.0]] * 3, [[0.8, 0.75]] * 3], dtype=torch.float64)  # image 1 padded
    anchors = co_head.anchors_cxcywh(shapes, ratios, 3.0)
    sizes = [h * w for h, w in shapes]
    gts = torch.rand(2, 4, 4, dtype=torch.float64) * torch.tensor([0.6, 0.6, 0.4, 0.4], dtype=torch.float64) + 0.2
    valid = torch.tensor([[True, True, True, False], [True, True, False, False]])
    aspect = torch.tensor([[10.0, 8.0], [8.0, 6.0]], dtype=torch.float64)
    positive, index = co_head.atss_assign(anchors, sizes, gts, valid, 9, box_iou_reference, aspect)
    for i in range(2):
        n = int(valid[i].sum())
        expected = _atss_reference(anchors[i], sizes, gts[i, :n], 9, aspect[i])
        assert torch.equal(positive[i], expected >= 0)
        assert torch.equal(index[i][positive[i]], expected[expected >= 0])
    assert positive.sum() > 4  # the case is not vacuous


def test_positive_queries_take_positives_first():
    torch.manual_seed(0)
    positive = torch.zeros(2, 30, dtype=torch.bool)
    positive[0, [3, 7, 20]] = True
    positive[1, :] = True
    a = {"positive": positive, "anchors": torch.rand(2, 30, 4) * 0.8 + 0.1, "labels": torch.randint(0, 3, (2, 30)),
         "boxes": torch.rand(2, 30, 4)}
    lin, norm = torch.nn.Linear(16, 8), torch.nn.LayerNorm(8)
    content, ref, targets = co_head.positive_queries(a, 5, lin, norm, 4)
    assert content.shape == (2, 5, 8) and ref.shape == (2, 5, 4)
    assert targets["positive"][0].tolist() == [True, True, True, False, False]
    assert targets["positive"][1].all()
    for i in range(2):
        # Each query's reference is an anchor, and its targets are that anchor's assignment.
        chosen = [int((a["anchors"][i] - r).abs().sum(-1).argmin()) for r in ref[i].sigmoid()]
        torch.testing.assert_close(ref[i].sigmoid(), a["anchors"][i][chosen])
        assert targets["labels"][i].tolist() == a["labels"][i][chosen].tolist()
        torch.testing.assert_close(targets["boxes"][i], a["boxes"][i][chosen])
        assert len(set(chosen)) == 5
        if i == 0:
            assert set(chosen[:3]) == {3, 7, 20}


def _scipy_match(logits, boxes, targets):
    return HungarianMatcherReference(2, 5, 2, focal=True)({"pred_logits": logits, "pred_boxes": boxes}, targets)


def test_group_matching_equals_per_group_matching():
    torch.manual_seed(0)
    b, k, q = 2, 3, 4
    logits, boxes = torch.randn(b, k * q, 3), torch.rand(b, k * q, 4) * 0.5 + 0.25
    targets = [{"labels": torch.tensor([0, 2]), "boxes": torch.rand(2, 4) * 0.5 + 0.25},
               {"labels": torch.tensor([1]), "boxes": torch.rand(1, 4) * 0.5 + 0.25}]
    matcher = HungarianMatcherReference(2, 5, 2, focal=True)
    got = one_to_many.match(matcher, {"pred_logits": logits, "pred_boxes": boxes}, targets, groups=k)
    for i in range(b):
        rows, cols = [], []
        for g in range(k):
            sl = slice(g * q, (g + 1) * q)
            (r, c), = _scipy_match(logits[i:i + 1, sl], boxes[i:i + 1, sl], targets[i:i + 1])
            rows.append(r + g * q)
            cols.append(c)
        assert torch.equal(got[i][0], torch.cat(rows)) and torch.equal(got[i][1], torch.cat(cols))


def test_capacity_matching_repeats_targets():
    torch.manual_seed(1)
    logits, boxes = torch.randn(1, 10, 3), torch.rand(1, 10, 4) * 0.5 + 0.25
    targets = [{"labels": torch.tensor([0, 2, 1]), "boxes": torch.rand(3, 4) * 0.5 + 0.25}]
    matcher = HungarianMatcherReference(2, 5, 2, focal=True)
    (rows, cols), = one_to_many.match(matcher, {"pred_logits": logits, "pred_boxes": boxes}, targets, capacity=3)
    repeated = one_to_many.repeat_targets(targets, 3)
    (r, c), = _scipy_match(logits, boxes, repeated)
    assert torch.equal(rows, r) and torch.equal(cols, c % 3)
    assert len(rows) == 9 and torch.bincount(cols).tolist() == [3, 3, 3]
    with pytest.raises(ValueError, match="equal groups"):
        one_to_many.match(matcher, {"pred_logits": logits, "pred_boxes": boxes}, targets, groups=3)


@contextlib.contextmanager
def no_host_sync():
    """Every way a tensor's value reaches Python raises: what a CUDA run would have to wait for."""
    def refuse(*args, **kwargs):
        raise AssertionError("host synchronisation")

    names = ["item", "tolist", "nonzero", "__bool__", "__int__", "__float__", "cpu", "numpy"]
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(mock.patch.object(torch.Tensor, name, refuse))
        stack.enter_context(mock.patch.object(torch, "nonzero", refuse))
        stack.enter_context(mock.patch.object(torch, "masked_select", refuse))
        yield


def test_no_host_sync_in_denoising_and_co_head():
    model, criterion = tiny_model("dino", co_head=True, groups=2)
    images, mask, targets = batch(2)
    # The MSDA op validates its level shapes on the host only on CPU, where it is free (on a GPU
    # it skips that); everything else in the training forward must not read a device value.
    skip_cpu_check = mock.patch("detr_ops.ops.ms_deform_attn._check_levels", lambda *args: None)
    with skip_cpu_check, no_host_sync():
        out = model(images, mask, targets)
        dn = criterion.denoising_losses(out["dn_outputs"], targets, torch.tensor(3.0))
        co = criterion.co_query_losses(out["co_outputs"])
        head = co_head.head_losses(out["atss_outputs"], 3, criterion.giou_loss, torch.tensor(2.0))
    assert out["atss_outputs"]["positive"].any()
    for value in list(dn.values()) + list(co.values()) + list(head.values()):
        assert torch.isfinite(value)
    # The guard does catch a sync (the test can fail).
    with pytest.raises(AssertionError, match="host synchronisation"), no_host_sync():
        torch.ones(2).nonzero()


@pytest.mark.parametrize("name,overrides", [("dino", {"co_head": True}), ("dino", {"groups": 2}),
                                            ("deformable_detr", {"one_to_many": 2})])
def test_images_without_targets(name, overrides):
    model, criterion = tiny_model(name, **overrides)
    images, mask, targets = batch(2)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    for batch_targets in ([dict(targets[0]), dict(targets[1], **empty)], [dict(t, **empty) for t in targets]):
        model.zero_grad()
        losses, _ = criterion(model(images, mask, batch_targets), batch_targets)
        total = criterion.total(losses)
        total.backward()
        assert torch.isfinite(total)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_eval_mode_uses_main_queries_only():
    model, _ = tiny_model("dino", co_head=True, one_to_many=2)
    images, mask, targets = batch(2)
    train_out = model(images, mask, targets)
    assert {"dn_outputs", "one_to_many_outputs", "co_outputs", "atss_outputs"} <= train_out.keys()
    model.eval()
    with torch.no_grad():
        out = model(images, mask, targets)
    assert out["pred_logits"].shape == (2, 8, 3) and len(out["aux_outputs"]) == 1
    assert not {"dn_outputs", "one_to_many_outputs", "co_outputs", "atss_outputs", "query_groups"} & out.keys()
    # The extra training queries do not change what the main queries compute at inference: a
    # model without them (same weights for the shared part) predicts the same.
    plain, _ = tiny_model("dino")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("bbox_head", "transformer.aux_pos"))}
    state["transformer.tgt_embed.weight"] = state["transformer.tgt_embed.weight"][:8]
    plain.load_state_dict(state)
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(images, mask)["pred_boxes"], out["pred_boxes"])
