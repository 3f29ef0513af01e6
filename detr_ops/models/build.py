"""Named configurations -> (model, criterion); one place that wires models, losses and matchers,
turns a training run's configuration into build arguments, and reloads checkpoints.

``small`` configurations are sized for the synthetic dataset on a CPU (64x64 images, a 3-stage
ResNet trained from scratch, 64 wide, 2+2 layers, 16 queries); ``original`` ones reproduce the
published architectures (ResNet-50, 256 wide, 6+6 layers) whose checkpoints load into them.

Training-only options (any model but DETR): ``one_to_many=k`` (H-DETR's hybrid branch:
``one_to_many_queries`` extra queries, default 5 x num_queries as H-DETR's 1500 for 300, matched
with every target repeated k times), ``groups=K`` (Group DETR), and for DINO ``co_head=True`` (the
Co-DETR-style ATSS head and its positive queries) and ``max_targets`` (target slots per image for
denoising and the head; fixed, so no host synchronisation).
"""
import torch

from detr_ops.models import ops_switch
from detr_ops.models.criterion import SetCriterion, expand_weight_dict
from detr_ops.models.deformable_detr import build_deformable_detr
from detr_ops.models.detr import build_detr
from detr_ops.models.dino import build_dino

_SMALL = dict(backbone="resnet_small", hidden_dim=64, nheads=4, enc_layers=2, dec_layers=2, dim_feedforward=128,
              dropout=0.0, num_queries=16, pretrained_backbone=False)
PRESETS = {
    ("detr", "small"): dict(_SMALL),
    ("detr", "original"): dict(),
    ("deformable_detr", "small"): dict(_SMALL, num_feature_levels=3, with_box_refine=True),
    ("deformable_detr", "original"): dict(),
    # dn_number 2: 4 denoising groups (DINO's rule below 50), 24 queries for 3 target slots, as
    # DINO's 100 give ~200 for 900 queries; ATSS anchors of 4 cells (the synthetic shapes are
    # 13-32 px on 64 px images); 32 positive-query slots.
    ("dino", "small"): dict(_SMALL, num_feature_levels=3, dn_number=2, max_targets=3, co_queries=32,
                            co_anchor_scale=4.0),
    ("dino", "original"): dict(dn_labelbook_size=91),
}
MODELS = ("detr", "deformable_detr", "dino")
# Co-DINO's weighting of the auxiliary head's losses: x num_decoder_layers x lambda_2 (= 2).
CO_LAMBDA = 2.0


def build(model_name, num_classes, preset="small", ops="detr_ops", one_to_many=0, one_to_many_queries=None, groups=1,
          co_head=False, **overrides):
    """Returns ``(model, criterion)``. ``overrides`` replace preset entries (e.g. ``two_stage=True``)."""
    ops_switch.check(ops)
    if (model_name, preset) not in PRESETS:
        raise ValueError(f"unknown model/preset {model_name!r}/{preset!r}; known: {sorted(PRESETS)}")
    if one_to_many < 0 or groups < 1:
        raise ValueError(f"one_to_many must be >= 0 and groups >= 1, got {one_to_many} and {groups}")
    if model_name == "detr" and (one_to_many or groups > 1 or co_head):
        raise ValueError("one_to_many, groups and co_head are options of deformable_detr and dino")
    if co_head and model_name != "dino":
        raise ValueError("co_head is an option of dino")
    kwargs = dict(PRESETS[(model_name, preset)], **overrides)
    if model_name == "detr":
        model = build_detr(num_classes, **kwargs)
        # DETR's weights: class 1, L1 5, GIoU 2 in both the matcher and the loss; no-object 0.1.
        matcher = ops_switch.matcher(ops, cost_class=1, cost_bbox=5, cost_giou=2)
        base = {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}
        weights = expand_weight_dict(base, model.transformer.decoder.num_layers - 1)
        return model, SetCriterion(num_classes, matcher, weights, eos_coef=0.1, ops=ops)

    num_queries = kwargs.get("num_queries", 900 if model_name == "dino" else 300)
    if one_to_many:
        kwargs["one_to_many_queries"] = one_to_many_queries or 5 * num_queries
    kwargs["groups"] = groups
    branches = {"_one2many": 1.0} if one_to_many else {}
    if model_name == "deformable_detr":
        model = build_deformable_detr(num_classes, ops=ops, **kwargs)
        # Deformable DETR's weights: focal class 2, L1 5, GIoU 2 in both the matcher and the loss.
        base = {"loss_ce": 2, "loss_bbox": 5, "loss_giou": 2}
        weights = expand_weight_dict(base, model.transformer.decoder.num_layers - 1, model.two_stage, branches)
    else:
        model = build_dino(num_classes, ops=ops, with_co_head=co_head, **kwargs)
        # DINO's weights: matcher focal class 2, L1 5, GIoU 2; losses class 1, L1 5, GIoU 2, the
        # same for denoising (dn_*_coef 1) and the selected encoder proposals (interm_loss_coef 1).
        base = {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}
        branches.update({"_interm": 1.0})
        if model.dn_number > 0:
            branches["_dn"] = 1.0
        if co_head:
            branches["_co"] = 1.0
        layers = model.transformer.decoder.num_layers
        weights = expand_weight_dict(base, layers - 1, suffixes=branches)
        if co_head:
            scale = layers * CO_LAMBDA
            weights.update({"loss_atss_cls": 1.0 * scale, "loss_atss_giou": 2.0 * scale,
                            "loss_atss_centerness": 1.0 * scale})
    matcher = ops_switch.matcher(ops, cost_class=2, cost_bbox=5, cost_giou=2, focal=True)
    criterion = SetCriterion(num_classes, matcher, weights, focal=True, ops=ops, one_to_many=one_to_many or 1)
    return model, criterion


def is_focal(model_name):
    return model_name != "detr"


def model_overrides(config):
    """A training run's configuration (train.py's arguments as a dict) -> :func:`build` keywords."""
    name = config["model"]
    if name == "detr":
        return {}
    out = {"one_to_many": config.get("one_to_many") or 0, "groups": config.get("groups") or 1}
    if name == "deformable_detr":
        out.update(two_stage=config.get("two_stage", False), with_box_refine=not config.get("no_box_refine", False))
    else:
        out["co_head"] = bool(config.get("co_head", False))
        for key in ("max_targets", "dn_number"):
            if config.get(key) is not None:
                out[key] = config[key]
    return out


def load_checkpoint(path, device="cpu", ops=None):
    """Rebuilds the model a checkpoint was trained as and loads its weights: ``(model, config)``."""
    from detr_ops.models.data import CLASSES

    ckpt = torch.load(path, map_location=device, weights_only=False)
    config = ckpt["config"]
    model, _ = build(config["model"], config.get("num_classes", len(CLASSES)), config["preset"],
                     ops=ops or config["ops"], **model_overrides(config))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), config
