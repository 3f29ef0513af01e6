"""``torch.compile(fullgraph=True)`` of the whole Deformable DETR forward: fullgraph turns any graph
break (in the MSDA op, the GIoU op or the model around them) into an error. The aot_eager backend
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
