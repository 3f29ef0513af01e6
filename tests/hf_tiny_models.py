"""Tiny Hugging Face DETR-family detectors built from configs (no downloads), for the integration
tests and the training-step benchmark. Every builder returns ``(model, make_batch)``; the sizes are
a keyword so that the benchmark can build a medium model of the same family.

The configurations are transformers 5.x's (checked on the version pinned in requirements-dev.txt).
"""
import torch

import transformers as T

# The models whose loss or attention detr_ops routes; the key is the transformers model type.
MODELS = ("detr", "conditional_detr", "dab_detr", "deformable_detr", "rt_detr", "rt_detr_v2", "d_fine", "deimv2",
          "lw_detr")


def _resnet(widths, out_features=("stage2", "stage3", "stage4")):
    return T.ResNetConfig(embedding_size=widths[0], hidden_sizes=list(widths), depths=[1] * len(widths),
                          out_features=list(out_features))


def _rt_resnet(widths):
    return T.RTDetrResNetConfig(embedding_size=widths[0], hidden_sizes=list(widths), depths=[1] * len(widths),
                                out_features=["stage2", "stage3", "stage4"])


def _hgnet(widths):
    return T.HGNetV2Config(embedding_size=widths[0], hidden_sizes=list(widths), depths=[1] * 4,
                           stem_channels=[3, widths[0], widths[0]], stage_in_channels=[widths[0]] + list(widths[:3]),
                           stage_mid_channels=[widths[0], widths[0], widths[1], widths[1]],
                           stage_out_channels=list(widths), stage_num_blocks=[1, 1, 1, 1],
                           stage_downsample=[False, True, True, True], stage_light_block=[False, False, True, True],
                           stage_kernel_size=[3, 3, 5, 5], stage_numb_of_layers=[1, 1, 1, 1],
                           out_features=["stage2", "stage3", "stage4"])


def config(name, *, d_model=32, queries=10, layers=2, num_labels=5):
    """The transformers config of a small model of family ``name`` (dropout off, so that a step is
    deterministic given the seed)."""
    heads = max(2, d_model // 32)
    ffn = 2 * d_model
    common = dict(num_labels=num_labels, dropout=0.0)
    detr_like = dict(encoder_layers=1, decoder_layers=layers, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
                     encoder_attention_heads=heads, decoder_attention_heads=heads, num_queries=queries,
                     auxiliary_loss=True, **common)
    if name == "detr":
        return T.DetrConfig(backbone_config=_resnet([8, 16, 32, 64], ["stage4"]), d_model=d_model, **detr_like)
    if name == "conditional_detr":
        return T.ConditionalDetrConfig(backbone_config=_resnet([8, 16, 32, 64], ["stage4"]), d_model=d_model,
                                       **detr_like)
    if name == "dab_detr":
        return T.DabDetrConfig(backbone_config=_resnet([8, 16, 32, 64], ["stage4"]), hidden_size=d_model,
                               **detr_like)
    if name == "deformable_detr":
        return T.DeformableDetrConfig(backbone_config=_resnet([8, 16, 32, 64]), d_model=d_model, num_feature_levels=3,
                                      with_box_refine=True, two_stage=True, two_stage_num_proposals=queries,
                                      **detr_like)
    if name in ("rt_detr", "rt_detr_v2", "d_fine", "deimv2"):
        kw = dict(encoder_hidden_dim=d_model, encoder_ffn_dim=ffn, encoder_attention_heads=heads, d_model=d_model,
                  decoder_in_channels=[d_model] * 3, decoder_ffn_dim=ffn, decoder_layers=layers,
                  decoder_attention_heads=heads, num_queries=queries, num_denoising=4, **common)
        if name in ("rt_detr", "rt_detr_v2"):
            return (T.RTDetrConfig if name == "rt_detr" else T.RTDetrV2Config)(
                backbone_config=_rt_resnet([8, 16, 32, 64]), encoder_in_channels=[16, 32, 64], **kw)
        # D-FINE and DEIMv2 with per-level point counts, as D-FINE's own configs use.
        return (T.DFineConfig if name == "d_fine" else T.Deimv2Config)(
            backbone_config=_hgnet([16, 32, 64, 64]), encoder_in_channels=[32, 64, 64], decoder_n_points=[3, 6, 3],
            **kw)
    if name == "lw_detr":
        backbone = T.LwDetrViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=64,
                                     pretrain_image_size=64, patch_size=8, window_block_indices=[0], num_windows=4,
                                     out_indices=[1, 2])
        return T.LwDetrConfig(backbone_config=backbone, projector_scale_factors=[1.0], d_model=d_model,
                              decoder_ffn_dim=ffn, decoder_layers=layers, decoder_self_attention_heads=heads,
                              decoder_cross_attention_heads=heads, num_queries=queries, group_detr=3,
                              c2f_num_blocks=1, **common)
    raise KeyError(name)


def model_class(name):
    return {
        "detr": T.DetrForObjectDetection, "conditional_detr": T.ConditionalDetrForObjectDetection,
        "dab_detr": T.DabDetrForObjectDetection, "deformable_detr": T.DeformableDetrForObjectDetection,
        "rt_detr": T.RTDetrForObjectDetection, "rt_detr_v2": T.RTDetrV2ForObjectDetection,
        "d_fine": T.DFineForObjectDetection, "deimv2": T.Deimv2ForObjectDetection,
        "lw_detr": T.LwDetrForObjectDetection,
    }[name]


def build(name, *, dtype=torch.float64, seed=0, **sizes):
    """A model of family ``name`` in training mode. Every ``sampling_offsets`` bias is moved off the
    initial grid (its points sit exactly on pixel centres, where bilinear sampling has a kink and
    the one-sided derivatives of grid_sample and of the kernels differ), so gradients compare."""
    torch.manual_seed(seed)
    model = model_class(name)(config(name, **sizes)).to(dtype).train()
    with torch.no_grad():
        for module_name, param in model.named_parameters():
            if module_name.endswith("sampling_offsets.bias"):
                param.add_(torch.rand_like(param) * 0.5 - 0.25)
    return model


def batch(batch_size=2, image=64, num_labels=5, dtype=torch.float64, seed=1, targets=(3, 1, 4, 0, 2, 5, 1, 3)):
    """``(pixel_values, labels)``: random images and transformers' target dicts (cxcywh boxes)."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch_size, 3, image, image, generator=g, dtype=torch.float64).to(dtype)
    labels = []
    for i in range(batch_size):
        n = targets[i % len(targets)]
        labels.append({"class_labels": torch.randint(0, num_labels, (n,), generator=g),
                       "boxes": (torch.rand(n, 4, generator=g, dtype=torch.float64) * 0.4 + 0.2).to(dtype)})
    return pixels, labels
