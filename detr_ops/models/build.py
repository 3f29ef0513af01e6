"""Named configurations -> (model, criterion); one place that wires models, losses and matchers.

``small`` configurations are sized for the synthetic dataset on a CPU (64x64 images, a 3-stage
ResNet trained from scratch, 64 wide, 2+2 layers, 16 queries); ``original`` ones reproduce the
published architectures (ResNet-50, 256 wide, 6+6 layers) whose checkpoints load into them.
"""
from detr_ops.models import ops_switch
from detr_ops.models.criterion import SetCriterion, expand_weight_dict
from detr_ops.models.deformable_detr import build_deformable_detr
from detr_ops.models.detr import build_detr

PRESETS = {
    ("detr", "small"): dict(backbone="resnet_small", hidden_dim=64, nheads=4, enc_layers=2, dec_layers=2,
                            dim_feedforward=128, dropout=0.0, num_queries=16, pretrained_backbone=False),
    ("detr", "original"): dict(),
    ("deformable_detr", "small"): dict(backbone="resnet_small", hidden_dim=64, nheads=4, enc_layers=2,
                                       dec_layers=2, dim_feedforward=128, dropout=0.0, num_queries=16,
                                       num_feature_levels=3, with_box_refine=True, pretrained_backbone=False),
    ("deformable_detr", "original"): dict(),
}


def build(model_name, num_classes, preset="small", ops="detr_ops", **overrides):
    """Returns ``(model, criterion)``. ``overrides`` replace preset entries (e.g. ``two_stage=True``)."""
    ops_switch.check(ops)
    if (model_name, preset) not in PRESETS:
        raise ValueError(f"unknown model/preset {model_name!r}/{preset!r}; known: {sorted(PRESETS)}")
    kwargs = dict(PRESETS[(model_name, preset)], **overrides)
    if model_name == "detr":
        model = build_detr(num_classes, **kwargs)
        # DETR's weights: class 1, L1 5, GIoU 2 in both the matcher and the loss; no-object 0.1.
        matcher = ops_switch.matcher(ops, cost_class=1, cost_bbox=5, cost_giou=2)
        base = {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}
        weights = expand_weight_dict(base, model.transformer.decoder.num_layers - 1)
        criterion = SetCriterion(num_classes, matcher, weights, eos_coef=0.1, ops=ops)
    else:
        model = build_deformable_detr(num_classes, ops=ops, **kwargs)
        # Deformable DETR's weights: focal class 2, L1 5, GIoU 2 in both the matcher and the loss.
        matcher = ops_switch.matcher(ops, cost_class=2, cost_bbox=5, cost_giou=2, focal=True)
        base = {"loss_ce": 2, "loss_bbox": 5, "loss_giou": 2}
        weights = expand_weight_dict(base, model.transformer.decoder.num_layers - 1, model.two_stage)
        criterion = SetCriterion(num_classes, matcher, weights, focal=True, ops=ops)
    return model, criterion


def is_focal(model_name):
    return model_name != "detr"
