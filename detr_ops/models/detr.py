"""DETR: ResNet + sine positions + transformer + class / box heads, with auxiliary outputs.

Keys as in the original checkpoints: ``backbone.0.body.*``, ``input_proj`` (1x1 conv),
``query_embed``, ``transformer.*``, ``class_embed`` (``num_classes + 1`` logits, the last one is
"no object"), ``bbox_embed.layers.{0,1,2}``.
"""
from torch import nn

from detr_ops.models.backbone import Backbone, Joiner
from detr_ops.models.mlp import MLP
from detr_ops.models.position_encoding import PositionEmbeddingSine
from detr_ops.models.transformer import Transformer


class DETR(nn.Module):
    def __init__(self, backbone, transformer, num_classes, num_queries, aux_loss=True):
        super().__init__()
        hidden = transformer.d_model
        self.num_queries = num_queries
        self.transformer = transformer
        self.class_embed = nn.Linear(hidden, num_classes + 1)
        self.bbox_embed = MLP(hidden, hidden, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden)
        self.input_proj = nn.Conv2d(backbone.num_channels[-1], hidden, kernel_size=1)
        self.backbone = backbone
        self.aux_loss = aux_loss

    def forward(self, images, mask, targets=None):
        """images [B, 3, H, W], mask [B, H, W] (True at padding); ``targets`` is accepted (and unused)
        for the models' uniform interface. Returns DETR's output dict:
        ``pred_logits [B, Q, K+1]``, ``pred_boxes [B, Q, 4]`` (cxcywh in [0, 1]) and ``aux_outputs``."""
        features, pos = self.backbone(images, mask)
        src, mask = features[-1]
        hs = self.transformer(self.input_proj(src), mask, self.query_embed.weight, pos[-1])[0]
        logits = self.class_embed(hs)
        boxes = self.bbox_embed(hs).sigmoid()
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return out


def build_detr(num_classes, backbone="resnet50", hidden_dim=256, nheads=8, enc_layers=6, dec_layers=6,
               dim_feedforward=2048, dropout=0.1, num_queries=100, aux_loss=True, pretrained_backbone=True):
    """DETR with the original defaults (R50, 256 wide, 6+6 layers, 100 queries).

    ``pretrained_backbone=False`` trains the whole ResNet (from scratch); True freezes the stem and
    layer1 as DETR does, expecting weights to be loaded.
    """
    body = Backbone(backbone, return_interm_layers=False, freeze_stem=pretrained_backbone)
    joiner = Joiner(body, PositionEmbeddingSine(hidden_dim // 2, normalize=True))
    transformer = Transformer(hidden_dim, nheads, enc_layers, dec_layers, dim_feedforward, dropout)
    return DETR(joiner, transformer, num_classes, num_queries, aux_loss)
