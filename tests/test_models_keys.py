"""Checkpoint compatibility of the ``original`` configurations with DETR's and Deformable DETR's
published checkpoints, checked without downloading them:

* trainable parameter counts equal the figures the original training scripts print for R50 and
  COCO's 91 classes (DETR: 41,302,368, with conv1 and layer1 frozen; Deformable DETR: 39,847,265),
  so no module is missing, extra or of a different size; DINO R50 4-scale: 46,604,048 with 4 classes
  and ``dn_labelbook_size`` 5, the "number of params" IDEA-Research/DINO's main.py printed for a
  user's 4-class run (IDEA-Research/DINO issue #274), hence 46,670,782 for COCO's 91 classes
  (``dn_labelbook_size`` 91, DINO_4scale.py), the class-dependent modules being ``class_embed`` and
  its ``enc_out_class_embed`` copy (257 per class each) and ``label_enc`` (256 per labelbook row);
* the ResNet-50 under ``backbone.0.body`` holds exactly torchvision's resnet50 state-dict entries
  minus ``fc`` and ``num_batches_tracked`` (53 convs, 53 batch norms x 4 buffers = 265 keys);
* representative keys of every module the originals name exist with the originals' shapes;
* a state dict saved with ``num_batches_tracked`` entries (torchvision / ImageNet weights) loads.
"""
import pytest
import torch

from detr_ops.models import build
from detr_ops.models.backbone import Backbone


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def detr_r50():
    return build("detr", 91, "original")[0]


@pytest.fixture(scope="module")
def deformable_r50():
    return build("deformable_detr", 91, "original")[0]


@pytest.fixture(scope="module")
def dino_r50():
    return build("dino", 91, "original")[0]


def test_detr_r50_keys(detr_r50):
    assert _trainable(detr_r50) == 41_302_368
    sd = detr_r50.state_dict()
    expected = {
        "backbone.0.body.conv1.weight": (64, 3, 7, 7),
        "backbone.0.body.bn1.running_var": (64,),
        "backbone.0.body.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "backbone.0.body.layer1.0.downsample.1.running_mean": (256,),
        "backbone.0.body.layer3.5.conv3.weight": (1024, 256, 1, 1),
        "backbone.0.body.layer4.2.bn3.weight": (2048,),
        "input_proj.weight": (256, 2048, 1, 1),
        "query_embed.weight": (100, 256),
        "class_embed.weight": (92, 256),
        "bbox_embed.layers.0.weight": (256, 256),
        "bbox_embed.layers.2.bias": (4,),
        "transformer.encoder.layers.5.self_attn.in_proj_weight": (768, 256),
        "transformer.encoder.layers.0.self_attn.out_proj.weight": (256, 256),
        "transformer.encoder.layers.0.linear1.weight": (2048, 256),
        "transformer.encoder.layers.0.norm2.bias": (256,),
        "transformer.decoder.layers.5.multihead_attn.in_proj_bias": (768,),
        "transformer.decoder.layers.0.norm3.weight": (256,),
        "transformer.decoder.norm.weight": (256,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    # Post-norm DETR has no encoder norm; sine positions have no parameters.
    assert not any(k.startswith(("transformer.encoder.norm", "backbone.1")) for k in sd)


def test_resnet50_body_is_torchvision_resnet50(detr_r50):
    body = {k for k in detr_r50.state_dict() if k.startswith("backbone.0.body.")}
    assert len(body) == 265
    assert sum(k.endswith("running_mean") for k in body) == 53
    assert sum(detr_r50.state_dict()[k].dim() == 4 for k in body) == 53  # conv weights


def test_deformable_detr_r50_keys(deformable_r50):
    assert _trainable(deformable_r50) == 39_847_265
    sd = deformable_r50.state_dict()
    expected = {
        "backbone.0.body.layer2.0.conv1.weight": (128, 256, 1, 1),
        "input_proj.0.0.weight": (256, 512, 1, 1),
        "input_proj.2.1.weight": (256,),
        "input_proj.3.0.weight": (256, 2048, 3, 3),
        "query_embed.weight": (300, 512),
        "class_embed.0.weight": (91, 256),
        "class_embed.5.bias": (91,),
        "bbox_embed.5.layers.2.weight": (4, 256),
        "transformer.level_embed": (4, 256),
        "transformer.reference_points.weight": (2, 256),
        "transformer.encoder.layers.5.self_attn.sampling_offsets.weight": (256, 256),
        "transformer.encoder.layers.0.self_attn.attention_weights.weight": (128, 256),
        "transformer.encoder.layers.0.self_attn.value_proj.weight": (256, 256),
        "transformer.encoder.layers.0.self_attn.output_proj.bias": (256,),
        "transformer.encoder.layers.0.linear1.weight": (1024, 256),
        "transformer.decoder.layers.5.cross_attn.sampling_offsets.bias": (256,),
        "transformer.decoder.layers.0.self_attn.in_proj_weight": (768, 256),
        "transformer.decoder.layers.0.norm3.weight": (256,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    # Without refinement the six heads are one shared module, listed six times as in the original.
    assert deformable_r50.class_embed[0] is deformable_r50.class_embed[5]
    assert not any(k.startswith("transformer.decoder.bbox_embed") for k in sd)


def test_dino_r50_4scale_keys(dino_r50):
    assert _trainable(dino_r50) == 46_670_782
    assert _trainable(build("dino", 4, "original", dn_labelbook_size=5)[0]) == 46_604_048
    sd = dino_r50.state_dict()
    expected = {
        "backbone.0.body.layer2.0.conv1.weight": (128, 256, 1, 1),
        "backbone.0.body.layer4.2.bn3.running_var": (2048,),
        "input_proj.0.0.weight": (256, 512, 1, 1),
        "input_proj.2.1.bias": (256,),
        "input_proj.3.0.weight": (256, 2048, 3, 3),
        "label_enc.weight": (92, 256),
        "class_embed.0.weight": (91, 256),
        "class_embed.5.bias": (91,),
        "bbox_embed.0.layers.0.weight": (256, 256),
        "bbox_embed.5.layers.2.weight": (4, 256),
        "transformer.level_embed": (4, 256),
        "transformer.tgt_embed.weight": (900, 256),
        "transformer.enc_output.weight": (256, 256),
        "transformer.enc_output_norm.bias": (256,),
        "transformer.enc_out_class_embed.weight": (91, 256),
        "transformer.enc_out_bbox_embed.layers.2.bias": (4,),
        "transformer.encoder.layers.5.self_attn.sampling_offsets.weight": (256, 256),
        "transformer.encoder.layers.0.self_attn.attention_weights.weight": (128, 256),
        "transformer.encoder.layers.0.linear1.weight": (2048, 256),
        "transformer.encoder.layers.3.norm2.weight": (256,),
        "transformer.decoder.layers.5.cross_attn.value_proj.weight": (256, 256),
        "transformer.decoder.layers.0.self_attn.in_proj_weight": (768, 256),
        "transformer.decoder.layers.0.linear2.weight": (256, 2048),
        "transformer.decoder.layers.2.norm3.bias": (256,),
        "transformer.decoder.norm.weight": (256,),
        "transformer.decoder.ref_point_head.layers.0.weight": (256, 512),
        "transformer.decoder.ref_point_head.layers.1.bias": (256,),
        "transformer.decoder.bbox_embed.3.layers.1.weight": (256, 256),
        "transformer.decoder.class_embed.3.weight": (91, 256),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    # dec_pred_*_embed_share: one head for all layers, shared with the decoder; the encoder's are copies.
    assert dino_r50.class_embed[0] is dino_r50.class_embed[5] is dino_r50.transformer.decoder.class_embed[2]
    assert dino_r50.bbox_embed[0] is dino_r50.transformer.decoder.bbox_embed[5]
    assert dino_r50.transformer.enc_out_bbox_embed is not dino_r50.bbox_embed[0]
    assert dino_r50.transformer.enc_out_class_embed is not dino_r50.class_embed[0]
    for absent in ("query_embed", "transformer.reference_points", "transformer.encoder.norm", "transformer.pos_trans",
                   "transformer.refpoint_embed", "bbox_head", "transformer.aux_pos_trans"):
        assert not any(k.startswith(absent) for k in sd), absent


def test_dino_co_head_keys():
    model = build("dino", 91, "original", co_head=True, enc_layers=1, dec_layers=1)[0]
    sd = model.state_dict()
    expected = {
        "bbox_head.0.cls_convs.0.conv.weight": (256, 256, 3, 3),
        "bbox_head.0.reg_convs.0.gn.weight": (256,),
        "bbox_head.0.atss_cls.weight": (91, 256, 3, 3),
        "bbox_head.0.atss_reg.bias": (4,),
        "bbox_head.0.atss_centerness.weight": (1, 256, 3, 3),
        "bbox_head.0.scales.3.scale": (),
        "transformer.aux_pos_trans.0.weight": (256, 512),
        "transformer.aux_pos_trans_norm.0.bias": (256,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key


def test_deformable_refine_two_stage_keys():
    model = build("deformable_detr", 91, "original", with_box_refine=True, two_stage=True, enc_layers=1,
                  dec_layers=2)[0]
    sd = model.state_dict()
    for key in ["transformer.enc_output.weight", "transformer.enc_output_norm.bias", "transformer.pos_trans.weight",
                "transformer.pos_trans_norm.weight", "transformer.decoder.bbox_embed.2.layers.2.bias",
                "transformer.decoder.class_embed.2.weight", "class_embed.2.weight", "bbox_embed.1.layers.0.weight"]:
        assert key in sd, key
    assert "query_embed.weight" not in sd and "transformer.reference_points.weight" not in sd
    assert tuple(sd["transformer.pos_trans.weight"].shape) == (512, 512)
    # Refined heads are distinct modules, shared with the decoder (same tensors under both names).
    assert model.bbox_embed[0] is not model.bbox_embed[1]
    assert sd["bbox_embed.1.layers.0.weight"].data_ptr() == sd["transformer.decoder.bbox_embed.1.layers.0.weight"].data_ptr()


def test_backbone_loads_torchvision_style_state_dict():
    backbone = Backbone("resnet_small")
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in backbone.state_dict().items()}
    with_counter = dict(sd)
    with_counter["body.bn1.num_batches_tracked"] = torch.tensor(7)
    fresh = Backbone("resnet_small")
    fresh.load_state_dict(with_counter)  # strict: the counter is dropped, everything else matches
    for k, v in sd.items():
        assert torch.equal(fresh.state_dict()[k], v), k
