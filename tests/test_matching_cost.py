"""The fused matching cost against DETR's / Deformable DETR's unfused cost matrix."""
import pytest
import torch

import detr_ops
from detr_ops.reference.detr_family_matchers import detr_family_cost_matrix
from tests.cases import device_backend_param, opcheck_utils

CLASS_COSTS = ["softmax", "focal", "focal_logsigmoid", "iou_aware"]

SIZES = [3, 0, 5, 1]


def make_batch(num_targets=SIZES, Q=9, K=6, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(num_targets)
    logits = torch.randn(B, Q, K, generator=g, dtype=torch.float64).to(device, dtype)
    boxes = (torch.rand(B, Q, 4, generator=g, dtype=torch.float64) * 0.5 + 0.05).to(device, dtype)
    targets = [
        {
            "labels": torch.randint(0, K, (n,), generator=g).to(device),
            "boxes": (torch.rand(n, 4, generator=g, dtype=torch.float64) * 0.5 + 0.05).to(device, dtype),
        }
        for n in num_targets
    ]
    return {"pred_logits": logits, "pred_boxes": boxes}, targets


def per_image_blocks(cost, sizes):
    return [c[i] for i, c in enumerate(cost.split(sizes, -1))]


def raw_op(backend):
    if backend == "triton":
        from detr_ops import _triton_twins  # noqa: F401  (defines the *_triton ops)
        return torch.ops.detr_ops.matching_cost_triton
    return torch.ops.detr_ops.matching_cost


@device_backend_param
@pytest.mark.parametrize("class_cost", CLASS_COSTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_matches_unfused_cost(device, backend, class_cost, dtype):
    outputs, targets = make_batch(dtype=dtype, device=device)
    labels, boxes, num = detr_ops.pad_targets(targets)
    weights = dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, class_cost=class_cost, iou_power=4.0)
    cost = detr_ops.matching_cost(outputs["pred_logits"], outputs["pred_boxes"], labels, boxes, num, **weights,
                                  backend=backend)
    assert cost.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # the reference in float64 on the same (rounded) inputs
    ref_out = {k: v.double() for k, v in outputs.items()}
    ref_tgt = [{"labels": t["labels"], "boxes": t["boxes"].double()} for t in targets]
    expected = detr_family_cost_matrix(ref_out, ref_tgt, **weights)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for b, (block, n) in enumerate(zip(per_image_blocks(expected, SIZES), SIZES)):
        torch.testing.assert_close(cost[b, :, :n].double().cpu(), block.cpu(), **tol)
        assert torch.isinf(cost[b, :, n:]).all() and (cost[b, :, n:] > 0).all()


@device_backend_param
def test_out_of_range_label_gives_nan_column_on_the_op(device, backend):
    """Checked in Python on CPU; the op itself never reads out of bounds: the column is NaN."""
    outputs, targets = make_batch(num_targets=[2], device=device)
    labels, boxes, num = detr_ops.pad_targets(targets)
    labels[0, 1] = 99
    cost = raw_op(backend)(outputs["pred_logits"], outputs["pred_boxes"], labels, boxes, num, 1.0, 1.0, 1.0, "softmax",
                           0.25, 2.0, 1.0)
    assert torch.isnan(cost[0, :, 1]).all() and torch.isfinite(cost[0, :, 0]).all()


@device_backend_param
@pytest.mark.parametrize("count", [-1, 3])
def test_count_outside_the_block_gives_a_nan_block_on_the_op(device, backend, count):
    """The op never clamps a count silently: an image whose num_targets is outside [0, T] gets a NaN
    block (the solver reports it), the other images are costed as usual."""
    outputs, targets = make_batch(num_targets=[2, 1], device=device)
    labels, boxes, num = detr_ops.pad_targets(targets)
    num[1] = count
    cost = raw_op(backend)(outputs["pred_logits"], outputs["pred_boxes"], labels, boxes, num, 1.0, 1.0, 1.0, "focal",
                           0.25, 2.0, 1.0)
    assert torch.isnan(cost[1]).all() and torch.isfinite(cost[0]).all()


@pytest.mark.parametrize("count", [-1, 3])
def test_python_wrapper_rejects_counts_outside_the_block_on_cpu(count):
    outputs, targets = make_batch(num_targets=[2, 1])
    labels, boxes, num = detr_ops.pad_targets(targets)
    num[1] = count
    with pytest.raises(ValueError, match=r"num_targets\[1\] = %d is outside \[0, 2\]" % count):
        detr_ops.matching_cost(outputs["pred_logits"], outputs["pred_boxes"], labels, boxes, num)


@device_backend_param
@pytest.mark.parametrize("K", [0, 1, 300])
def test_any_number_of_classes(device, backend, K):
    """K = 0 (every label is out of range: NaN columns) compiles and runs; K = 300 spans several
    of the Triton kernel's class blocks."""
    outputs, targets = make_batch(num_targets=[3, 0], K=max(K, 1), device=device)
    outputs["pred_logits"] = outputs["pred_logits"][..., :K]
    labels, boxes, num = detr_ops.pad_targets(targets)
    for class_cost in CLASS_COSTS:
        cost = raw_op(backend)(outputs["pred_logits"], outputs["pred_boxes"], labels, boxes, num, 2.0, 5.0, 2.0,
                               class_cost, 0.25, 2.0, 1.0)
        if K == 0:
            assert torch.isnan(cost[0]).all() and torch.isinf(cost[1]).all()
            continue
        expected = detr_family_cost_matrix(outputs, targets, 2.0, 5.0, 2.0, class_cost)
        torch.testing.assert_close(cost[0].cpu(), expected[0, :, :3].cpu(), rtol=1e-12, atol=1e-12)


def test_raw_op_rejects_an_unknown_class_cost():
    outputs, targets = make_batch(num_targets=[2])
    labels, boxes, num = detr_ops.pad_targets(targets)
    with pytest.raises(ValueError, match="class_cost must be one of"):
        torch.ops.detr_ops.matching_cost(outputs["pred_logits"], outputs["pred_boxes"], labels, boxes, num, 1.0, 1.0,
                                         1.0, "sigmoid", 0.25, 2.0, 1.0)


def test_python_wrapper_rejects_bad_labels_on_cpu():
    outputs, targets = make_batch(num_targets=[2])
    labels, boxes, num = detr_ops.pad_targets(targets)
    labels[0, 0] = -1
    with pytest.raises(ValueError, match="tgt_labels must be in"):
        detr_ops.matching_cost(outputs["pred_logits"], outputs["pred_boxes"], labels, boxes, num)


def test_pad_targets_shapes_and_empty_batch():
    _, targets = make_batch(num_targets=[0, 0])
    labels, boxes, num = detr_ops.pad_targets(targets)
    assert labels.shape == (2, 1) and boxes.shape == (2, 1, 4) and num.tolist() == [0, 0]
    with pytest.raises(ValueError, match="labels \\[T\\] and boxes \\[T, 4\\]"):
        detr_ops.pad_targets([{"labels": torch.zeros(2, dtype=torch.long), "boxes": torch.zeros(3, 4)}])
    with pytest.raises(ValueError, match="non-empty list"):
        detr_ops.pad_targets([])


BAD = [
    pytest.param(dict(pred_logits=torch.randn(2, 3)), "pred_logits must be", id="logits-ndim"),
    pytest.param(dict(pred_boxes=torch.rand(2, 4, 3)), "pred_boxes must be", id="boxes-shape"),
    pytest.param(dict(tgt_labels=torch.zeros(2, 2)), "tgt_labels must be an integer tensor", id="labels-dtype"),
    pytest.param(dict(pred_logits=torch.zeros(2, 4, 5, dtype=torch.int64)), "pred_logits must be a floating",
                 id="logits-dtype"),
    pytest.param(dict(num_targets=torch.zeros(3, dtype=torch.long)), "num_targets must be", id="num-shape"),
    pytest.param(dict(tgt_boxes=torch.rand(2, 2, 4, device="meta")), "same device", id="device"),
]


BAD += [
    pytest.param(dict(tgt_labels=torch.zeros(2, dtype=torch.long)), r"tgt_labels must be \[B, T\] with B = 2",
                 id="labels-1d"),
    pytest.param(dict(class_cost="sigmoid"), "class_cost must be one of", id="class-cost"),
    pytest.param(dict(focal=True, class_cost="iou_aware"), "focal=True", id="focal-conflict"),
    pytest.param(dict(iou_power=-1.0), "iou_power must be", id="iou-power"),
]


@pytest.mark.parametrize("override,message", BAD)
def test_bad_inputs(override, message):
    args = dict(pred_logits=torch.randn(2, 4, 5), pred_boxes=torch.rand(2, 4, 4),
                tgt_labels=torch.zeros(2, 2, dtype=torch.long), tgt_boxes=torch.rand(2, 2, 4),
                num_targets=torch.tensor([1, 2]))
    args.update(override)
    with pytest.raises(ValueError, match=message):
        detr_ops.matching_cost(**args)


def test_int32_labels_and_counts_are_accepted():
    """One coercion policy for index tensors: any integer dtype, converted to int64."""
    outputs, targets = make_batch()
    labels, boxes, num = detr_ops.pad_targets(targets)
    expected = detr_ops.matching_cost(outputs["pred_logits"], outputs["pred_boxes"], labels, boxes, num)
    got = detr_ops.matching_cost(outputs["pred_logits"], outputs["pred_boxes"], labels.int(), boxes, num.int())
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@device_backend_param
def test_opcheck(device, backend):
    outputs, targets = make_batch(device=device)
    labels, boxes, num = detr_ops.pad_targets(targets)
    op = raw_op(backend)
    for class_cost in CLASS_COSTS:
        torch.library.opcheck(op, (outputs["pred_logits"], outputs["pred_boxes"], labels, boxes, num, 1.0, 5.0, 2.0,
                                   class_cost, 0.25, 2.0, 2.0), test_utils=opcheck_utils(backend))


def test_torch_compile_fullgraph():
    outputs, targets = make_batch()
    labels, boxes, num = detr_ops.pad_targets(targets)
    fn = torch.compile(lambda *a: detr_ops.matching_cost(*a, cost_bbox=5.0), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(outputs["pred_logits"], outputs["pred_boxes"], labels, boxes, num),
                               detr_ops.matching_cost(outputs["pred_logits"], outputs["pred_boxes"], labels, boxes, num,
                                                      cost_bbox=5.0))


@pytest.mark.parametrize("targets,message", [
    pytest.param([1, 2], r"targets\[0\] must be a dict with 'labels' and 'boxes', got int", id="ints"),
    pytest.param({"labels": 1}, "targets must be a non-empty list of dicts", id="dict"),
    pytest.param([{"labels": [0], "boxes": torch.zeros(1, 4)}], r"targets\[0\]\['labels'\] must be a torch.Tensor",
                 id="list-labels"),
    pytest.param([{"labels": torch.zeros(1), "boxes": torch.zeros(1, 4)}], r"targets\[0\]\['labels'\] must be an integer",
                 id="float-labels"),
    pytest.param([{"labels": torch.zeros(1, dtype=torch.long), "boxes": torch.zeros(1, 4, dtype=torch.long)}],
                 r"targets\[0\]\['boxes'\] must be a floating", id="int-boxes"),
    pytest.param([{"labels": torch.zeros(1, dtype=torch.long), "boxes": torch.zeros(1, 4)},
                  {"labels": torch.zeros(1, dtype=torch.long), "boxes": torch.zeros(1, 4, dtype=torch.float64)}],
                 "one dtype", id="mixed-dtypes"),
])
def test_pad_targets_bad_inputs(targets, message):
    with pytest.raises((ValueError, TypeError), match=message):
        detr_ops.pad_targets(targets)


def test_focal_switch_is_the_focal_class_cost():
    outputs, targets = make_batch()
    padded = detr_ops.pad_targets(targets)
    a = detr_ops.matching_cost(outputs["pred_logits"], outputs["pred_boxes"], *padded, 2.0, 5.0, 2.0, True)
    b = detr_ops.matching_cost(outputs["pred_logits"], outputs["pred_boxes"], *padded, 2.0, 5.0, 2.0, class_cost="focal")
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("B,Q,K,T", [(16, 300, 91, 10), (3, 50, 365, 40), (2, 7, 1, 2)])
def test_softmax_class_cost_is_torch_softmax_bit_for_bit(threads, dtype, B, Q, K, T):
    """The CPU kernel computes the softmax table task by task (rows of ~4096 pairs, inside its own
    pool): with only the class term, the cost is exactly -torch.softmax(logits)[label], on one
    thread and on several, and the caller's thread count is what it was."""
    g = torch.Generator().manual_seed(B * Q + K)
    logits = (torch.randn(B, Q, K, generator=g) * 6).to(dtype)
    boxes = (torch.rand(B, Q, 4, generator=g) * 0.5 + 0.25).to(dtype)
    labels = torch.randint(0, K, (B, T), generator=g)
    tboxes = (torch.rand(B, T, 4, generator=g) * 0.5 + 0.25).to(dtype)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cost = torch.ops.detr_ops.matching_cost(logits, boxes, labels, tboxes, torch.full((B,), T), 1.0, 0.0, 0.0,
                                                "softmax", 0.25, 2.0, 1.0)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(saved)
    expected = -torch.softmax(logits, -1).gather(2, labels[:, None, :].expand(B, Q, T))
    assert torch.equal(cost, expected)
