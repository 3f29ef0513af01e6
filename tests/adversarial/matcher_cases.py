"""Adversarial cases of the matching-cost family (tests/test_matcher_adversarial.py runs them in
child processes): detr_ops.matching_cost, the raw op torch.ops.detr_ops.matching_cost,
detr_ops.pad_targets, detr_ops.HungarianMatcher and the denoising index builders. Wrong dtypes
(float8, complex, bool, int), overflowing and negative sizes, stride-0 and non-contiguous inputs,
NaN/inf: each gives a clear error naming the argument, or a correct result; never a crash."""
import torch

import detr_ops
from tests.isolated import case

B, Q, K, T = 2, 5, 4, 3


def inputs(**override):
    g = torch.Generator().manual_seed(0)
    args = dict(pred_logits=torch.randn(B, Q, K, generator=g), pred_boxes=torch.rand(B, Q, 4, generator=g) * 0.5 + 0.1,
                tgt_labels=torch.randint(0, K, (B, T), generator=g), tgt_boxes=torch.rand(B, T, 4, generator=g) * 0.5 + 0.1,
                num_targets=torch.tensor([3, 1]))
    args.update(override)
    return args


def raw(**override):
    a = inputs(**override)
    return torch.ops.detr_ops.matching_cost(a["pred_logits"], a["pred_boxes"], a["tgt_labels"], a["tgt_boxes"],
                                            a["num_targets"], 1.0, 5.0, 2.0, override.get("class_cost", "focal"), 0.25,
                                            2.0, 1.0)


def public(**override):
    return detr_ops.matching_cost(**inputs(**override), cost_bbox=5.0, cost_giou=2.0, focal=True)


def targets(sizes=(3, 1)):
    return [{"labels": torch.zeros(n, dtype=torch.int64), "boxes": torch.full((n, 4), 0.3)} for n in sizes]


def outputs():
    a = inputs()
    return {"pred_logits": a["pred_logits"], "pred_boxes": a["pred_boxes"]}


# ---- matching_cost (public) -----------------------------------------------------------------------


@case()
def public_float8_logits_compute_in_float32():
    logits = torch.randn(B, Q, K).to(torch.float8_e4m3fn)
    cost = public(pred_logits=logits)
    assert cost.dtype == torch.float32 and torch.equal(cost, public(pred_logits=logits.float()))


@case(raises=ValueError, match="pred_boxes must be a floating tensor")
def public_complex_boxes():
    public(pred_boxes=torch.zeros(B, Q, 4, dtype=torch.complex64))


@case(raises=ValueError, match="tgt_labels must be an integer tensor")
def public_bool_labels():
    public(tgt_labels=torch.zeros(B, T, dtype=torch.bool))


@case(raises=ValueError, match="tgt_boxes must be a floating tensor")
def public_int_target_boxes():
    public(tgt_boxes=torch.zeros(B, T, 4, dtype=torch.int64))


@case(raises=TypeError, match="num_targets must be a torch.Tensor")
def public_list_counts():
    public(num_targets=[3, 1])


@case(raises=ValueError, match=r"num_targets\[0\] = 4611686018427387904 is outside \[0, 3\]")
def public_overflowing_count():
    public(num_targets=torch.tensor([2**62, 1]))


@case(raises=ValueError, match=r"num_targets\[1\] = -5 is outside")
def public_negative_count():
    public(num_targets=torch.tensor([3, -5]))


@case(raises=ValueError, match="tgt_labels must be in")
def public_overflowing_label():
    public(tgt_labels=torch.full((B, T), 2**62))


@case(raises=ValueError, match=r"tgt_labels must be \[B, T\] with B = 2")
def public_1d_labels():
    public(tgt_labels=torch.zeros(T, dtype=torch.int64))


@case(raises=ValueError, match=r"pred_boxes must be \[2, 5, 4\]")
def public_wrong_box_shape():
    public(pred_boxes=torch.rand(B, Q, 5))


@case(raises=TypeError, match="cost_bbox must be a number")
def public_tensor_weight():
    detr_ops.matching_cost(**inputs(), cost_bbox=torch.tensor(5.0))


@case()
def public_stride0_and_noncontiguous_inputs_give_the_contiguous_result():
    a = inputs()
    expected = public()
    logits = a["pred_logits"][:1].expand(B, Q, K)  # stride 0 over the batch
    got = public(pred_logits=logits)
    ref = public(pred_logits=logits.contiguous())
    assert torch.equal(got, ref)
    noncontig = a["pred_boxes"].transpose(0, 1).contiguous().transpose(0, 1)
    assert not noncontig.is_contiguous()
    assert torch.equal(public(pred_boxes=noncontig), expected)
    tboxes = a["tgt_boxes"][:, :, None, :].expand(B, T, 2, 4)[:, :, 0]  # a strided view
    assert torch.equal(public(tgt_boxes=tboxes), expected)


@case()
def public_nan_and_inf_inputs_give_nan_or_inf_costs_never_finite_garbage():
    a = inputs()
    a["pred_logits"][0, 0, :] = float("nan")
    a["pred_boxes"][0, 1, 0] = float("nan")
    a["pred_boxes"][1, 2, 2] = float("inf")
    a["tgt_boxes"][0, 2, 1] = float("nan")
    cost = detr_ops.matching_cost(**a, cost_bbox=5.0, cost_giou=2.0, focal=True)
    assert torch.isnan(cost[0, 0, :3]).all()  # a NaN logit row
    assert torch.isnan(cost[0, 1, :3]).all()  # a NaN predicted box
    assert torch.isnan(cost[0, :, 2]).all()  # a NaN target box
    assert not torch.isfinite(cost[1, 2, :1]).any()  # an infinite box: inf or NaN, never a number
    assert torch.isinf(cost[1, :, 1:]).all()  # padding


# ---- the raw op -----------------------------------------------------------------------------------


@case(raises=ValueError, match="tgt_labels must be int64")
def raw_float_labels():
    raw(tgt_labels=torch.zeros(B, T))


@case(raises=ValueError, match="num_targets must be int64")
def raw_int32_counts():
    raw(num_targets=torch.tensor([3, 1], dtype=torch.int32))


@case(raises=ValueError, match="pred_logits must be floating point")
def raw_bool_logits():
    raw(pred_logits=torch.zeros(B, Q, K, dtype=torch.bool))


@case(raises=ValueError, match="pred_boxes and tgt_boxes must be floating point")
def raw_complex_boxes():
    raw(pred_boxes=torch.zeros(B, Q, 4, dtype=torch.complex64))


@case(raises=ValueError, match=r"tgt_boxes must be \[B, T, 4\]")
def raw_wrong_target_box_shape():
    raw(tgt_boxes=torch.rand(B, T + 1, 4))


@case(raises=ValueError, match="class_cost must be one of")
def raw_unknown_class_cost():
    raw(class_cost="")


@case()
def raw_overflowing_and_negative_counts_give_nan_blocks():
    cost = raw(num_targets=torch.tensor([2**62, -(2**62)]))
    assert torch.isnan(cost).all()


@case()
def raw_overflowing_and_negative_labels_give_nan_columns():
    cost = raw(tgt_labels=torch.tensor([[2**62, -1, 0], [-(2**62), 0, 0]]))
    assert torch.isnan(cost[0, :, :2]).all() and torch.isfinite(cost[0, :, 2]).all()
    assert torch.isnan(cost[1, :, 0]).all() and torch.isinf(cost[1, :, 1:]).all()


@case()
def raw_float8_logits_compute_in_float32_or_refuse():
    logits = torch.randn(B, Q, K).to(torch.float8_e4m3fn)
    try:
        cost = raw(pred_logits=logits)
    except ValueError as e:
        assert "pred_logits" in str(e)
        return
    assert cost.dtype == torch.float32
    torch.testing.assert_close(cost, raw(pred_logits=logits.float()))


@case()
def raw_stride0_inputs():
    a = inputs()
    labels = a["tgt_labels"][:1].expand(B, T)
    counts = torch.tensor([3]).expand(B)
    cost = raw(tgt_labels=labels, num_targets=counts)
    assert torch.equal(cost, raw(tgt_labels=labels.contiguous(), num_targets=counts.contiguous()))


@case()
def raw_empty_everything():
    cost = torch.ops.detr_ops.matching_cost(torch.zeros(0, 0, 0), torch.zeros(0, 0, 4), torch.zeros(0, 0, dtype=torch.long),
                                            torch.zeros(0, 0, 4), torch.zeros(0, dtype=torch.long), 1.0, 1.0, 1.0,
                                            "softmax", 0.25, 2.0, 1.0)
    assert cost.shape == (0, 0, 0)


# ---- pad_targets ----------------------------------------------------------------------------------


@case(raises=ValueError, match=r"targets\[0\] must be a dict with 'labels' and 'boxes', got int")
def pad_targets_of_ints():
    detr_ops.pad_targets([1, 2])


@case(raises=ValueError, match="targets must be a non-empty list")
def pad_targets_of_none():
    detr_ops.pad_targets(None)


@case(raises=ValueError, match=r"targets\[1\] must have labels \[T\] and boxes \[T, 4\]")
def pad_targets_2d_labels():
    detr_ops.pad_targets(targets() [:1] + [{"labels": torch.zeros(2, 1, dtype=torch.long), "boxes": torch.zeros(2, 4)}])


@case(raises=ValueError, match=r"targets\[0\]\['labels'\] must be an integer tensor")
def pad_targets_complex_labels():
    detr_ops.pad_targets([{"labels": torch.zeros(2, dtype=torch.complex64), "boxes": torch.zeros(2, 4)}])


@case()
def pad_targets_int32_labels_and_views():
    base = torch.rand(6, 4)
    padded = detr_ops.pad_targets([{"labels": torch.arange(3, dtype=torch.int32), "boxes": base[::2]},
                                   {"labels": torch.zeros(0, dtype=torch.uint8), "boxes": base[:0]}])
    assert padded[0].dtype == torch.int64 and padded[2].tolist() == [3, 0]
    assert torch.equal(padded[1][0], base[::2])


# ---- HungarianMatcher -----------------------------------------------------------------------------


@case(raises=ValueError, match="targets must have one entry per image: outputs has a batch of 2, the targets 3")
def matcher_wrong_number_of_targets():
    detr_ops.HungarianMatcher()(outputs(), targets((1, 2, 0)))


@case(raises=ValueError, match="outputs must be a dict")
def matcher_outputs_not_a_dict():
    detr_ops.HungarianMatcher()([1, 2], targets())


@case(raises=ValueError, match=r"outputs\['pred_logits'\] must be \[B, Q, K\]")
def matcher_2d_logits():
    o = outputs()
    detr_ops.HungarianMatcher()({"pred_logits": o["pred_logits"][0], "pred_boxes": o["pred_boxes"]}, targets())


@case(raises=ValueError, match=r"outputs\['pred_logits'\] must be a floating tensor")
def matcher_int_logits():
    o = outputs()
    detr_ops.HungarianMatcher()({"pred_logits": o["pred_logits"].long(), "pred_boxes": o["pred_boxes"]}, targets())


@case(raises=ValueError, match="groups=4 must divide the number of queries 5")
def matcher_groups_not_dividing():
    detr_ops.HungarianMatcher()(outputs(), targets(), groups=4)


@case(raises=ValueError, match="capacity must be an integer >= 1")
def matcher_zero_capacity():
    detr_ops.HungarianMatcher()(outputs(), targets(), capacity=0)


@case(raises=ValueError, match="capacity=4611686018427387904 is too large")
def matcher_overflowing_capacity():
    detr_ops.HungarianMatcher()(outputs(), targets(), capacity=2**62)


@case(raises=ValueError, match="topk_rounds=4611686018427387904 is too large")
def matcher_overflowing_rounds():
    detr_ops.HungarianMatcher()(outputs(), targets(), topk_rounds=2**62)


@case(raises=ValueError, match="iou_power must be a finite number >= 0")
def matcher_negative_iou_power():
    detr_ops.HungarianMatcher(class_cost="iou_aware", iou_power=-1)


@case(raises=ValueError, match="invalid numeric entries")
def matcher_nan_everywhere_raises_scipys_error():
    o = outputs()
    o["pred_logits"].fill_(float("nan"))
    detr_ops.HungarianMatcher()(o, targets())


@case()
def matcher_nan_everywhere_with_nan_cost_matches():
    o = outputs()
    o["pred_logits"].fill_(float("nan"))
    o["pred_boxes"].fill_(float("inf"))
    indices = detr_ops.HungarianMatcher(nan_cost=1.0)(o, targets())
    assert [len(i) for i, _ in indices] == [3, 1]


@case()
def matcher_stride0_outputs():
    o = outputs()
    o = {"pred_logits": o["pred_logits"][:1].expand(B, Q, K), "pred_boxes": o["pred_boxes"][:1].expand(B, Q, 4)}
    got = detr_ops.HungarianMatcher()(o, targets())
    expected = detr_ops.HungarianMatcher()({k: v.contiguous() for k, v in o.items()}, targets())
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got, expected))


@case(raises=ValueError, match=r"num_targets\[0\] = 9 is outside \[0, 3\]")
def matcher_padded_count_above_the_padding():
    labels, boxes, num = detr_ops.pad_targets(targets())
    detr_ops.HungarianMatcher().match(outputs(), padded_targets=(labels, boxes, torch.tensor([9, 1])))


# ---- denoising ------------------------------------------------------------------------------------


@case(raises=ValueError, match=r"num_targets\[0\] = 4611686018427387904 must be an integer in")
def denoising_overflowing_count():
    detr_ops.denoising_match_indices([2**62], 3, 2)


@case(raises=ValueError, match="num_groups must be an integer >= 0")
def denoising_negative_groups():
    detr_ops.denoising_match(torch.tensor([1]), 3, -2)


@case(raises=ValueError, match="num_targets must be an integer tensor")
def denoising_float_counts():
    detr_ops.denoising_match(torch.tensor([1.0]), 3, 2)
