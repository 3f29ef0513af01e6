"""``torch.compile(fullgraph=True)`` of the whole Deformable DETR and DINO forwards: fullgraph turns
any graph break (in the MSDA op, the IoU op or the model around them) into an error. DINO compiles
in training mode with its targets: denoising queries, the Co-DETR head's ATSS assignment and query
selection, and the query-segment mask all trace into one graph (no data-dependent shape, no host
read; a ``.item()`` or ``nonzero`` there would break the graph). The aot_eager backend
traces through dynamo and AOT autograd (the ops' fake kernels and registered backward) without
inductor's code generation, which keeps the test at seconds; train.py --compile uses inductor."""
import pytest
import torch

from tests.models_tiny import batch, tiny_model


@pytest.mark.parametrize("overrides", [{}, {"two_stage": True}], ids=["box_refine", "two_stage"])
def test_deformable_detr_compiles_fullgraph(overrides):
    torch._dynamo.reset()
    model, _ = tiny_model("deformable_detr", **overrides)
    images, mask, _ = batch(2)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(images, mask)
    ref = model(images, mask)
    torch.testing.assert_close(out["pred_boxes"], ref["pred_boxes"])
    torch.testing.assert_close(out["pred_logits"], ref["pred_logits"])
    # The backward through the compiled graph gives the eager gradients of the MSDA parameters.
    out["pred_boxes"].sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref["pred_boxes"].sum().backward()
    key = "transformer.encoder.layers.0.self_attn.value_proj.weight"
    assert key in grads
    torch.testing.assert_close(grads[key], model.get_parameter(key).grad)


@pytest.mark.parametrize("overrides", [{}, {"co_head": True, "groups": 2}], ids=["dino", "dino_co_head_groups"])
def test_dino_training_forward_compiles_fullgraph(overrides):
    torch._dynamo.reset()
    model, _ = tiny_model("dino", **overrides)
    images, mask, targets = batch(2)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.manual_seed(5)
    out = compiled(images, mask, targets)
    torch.manual_seed(5)
    ref = model(images, mask, targets)
    # Same random denoising noise and query picks under the same seed: same outputs.
    for key in ("pred_boxes", "pred_logits"):
        torch.testing.assert_close(out[key], ref[key])
        torch.testing.assert_close(out["dn_outputs"][key], ref["dn_outputs"][key])
    if "co_outputs" in ref:
        torch.testing.assert_close(out["co_outputs"]["pred_boxes"], ref["co_outputs"]["pred_boxes"])
        assert torch.equal(out["atss_outputs"]["positive"], ref["atss_outputs"]["positive"])
    model.eval()
    torch.testing.assert_close(compiled(images, mask)["pred_boxes"], model(images, mask)["pred_boxes"])
