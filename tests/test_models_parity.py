"""One training step of each model in float64 with detr_ops ops vs the plain PyTorch references.

DINO runs with every training-only branch that uses the ops: denoising, and each of H-DETR's
one-to-many branch, Group DETR's groups and the Co-DETR-style head (ATSS assignment with the IoU
op, positive queries); Deformable DETR with groups and the one-to-many branch. Both runs draw the
same random denoising noise and query picks (the seed is reset before each forward).

Both runs share the weights (the reference model loads the detr_ops model's state dict) and the
batch; they differ only in the op implementations (MSDA kernel vs grid_sample, fused GIoU loss vs
the formula, detr_ops.HungarianMatcher vs the scipy loop). Tolerance: in float64 the two
implementations differ only by summation order, ~1e-16 relative per op; through a few layers
and the backward this stays below ~1e-12, so rtol=1e-9 / atol=1e-11 has margin while any real
difference (a wrong bilinear weight, a flipped GIoU term, another matching) shows at >= 1e-4.
"""
import pytest
import torch

from tests.models_tiny import batch, tiny_model

VARIANTS = [
    ("detr", {}),
    ("deformable_detr", {}),
    ("deformable_detr", {"with_box_refine": False}),
    ("deformable_detr", {"two_stage": True}),
    ("deformable_detr", {"groups": 2}),
    ("deformable_detr", {"two_stage": True, "one_to_many": 2}),
    ("dino", {}),
    ("dino", {"one_to_many": 2}),
    ("dino", {"groups": 2}),
    ("dino", {"co_head": True}),
]


# Loss terms each branch must add (a branch that silently did not run would pass the comparisons).
BRANCH_KEYS = {"one_to_many": ["loss_giou_one2many", "loss_ce_one2many_0"],
               "co_head": ["loss_giou_co", "loss_ce_co_0", "loss_atss_cls", "loss_atss_giou", "loss_atss_centerness"]}


def _step(model, criterion, images, mask, targets):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    outputs = model(images, mask, targets)
    losses, indices = criterion(outputs, targets)
    total = criterion.total(losses)
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return total.detach(), losses, indices, grads


@pytest.mark.parametrize("name,overrides", VARIANTS, ids=lambda v: str(v))
def test_training_step_parity_float64(name, overrides):
    torch.manual_seed(0)
    model, criterion = tiny_model(name, "detr_ops", **overrides)
    ref_model, ref_criterion = tiny_model(name, "reference", **overrides)
    ref_model.load_state_dict(model.state_dict())
    model.double()
    ref_model.double()
    images, mask, targets = batch(2, dtype=torch.float64)

    total, losses, indices, grads = _step(model, criterion, images, mask, targets)
    ref_total, ref_losses, ref_indices, ref_grads = _step(ref_model, ref_criterion, images, mask, targets)

    assert torch.isfinite(total)
    torch.testing.assert_close(total, ref_total, rtol=1e-9, atol=1e-11)
    assert losses.keys() == ref_losses.keys()
    for k in losses:
        torch.testing.assert_close(losses[k], ref_losses[k], rtol=1e-9, atol=1e-11, msg=k)
    expected = [k for option in overrides for k in BRANCH_KEYS.get(option, [])]
    if name == "dino":
        expected += ["loss_giou_dn", "loss_ce_dn_0", "loss_giou_interm"]
    assert set(expected) <= losses.keys()
    groups = overrides.get("groups", 1)
    for (i, j), (ri, rj), t in zip(indices, ref_indices, targets):
        assert torch.equal(i, ri) and torch.equal(j, rj)
        # Group DETR: every group matches every target once.
        assert len(i) == groups * len(t["labels"])
        assert sorted(j.tolist()) == sorted(list(range(len(t["labels"]))) * groups)
    assert grads.keys() == ref_grads.keys()
    # Every trainable parameter gets a gradient (no dead branch in either path).
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(grads) == trainable
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-9, atol=1e-11, msg=n)
