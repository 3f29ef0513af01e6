"""Reference DETR, Deformable DETR and DINO on detr_ops's ops (with H-DETR / Group DETR one-to-many
training and a Co-DETR-style auxiliary head as options), with training, evaluation, a synthetic
dataset and COCO-format datasets. ``ops="reference"`` anywhere runs the same models on the plain
PyTorch references."""
from detr_ops.models.backbone import Backbone, FrozenBatchNorm2d, Joiner, ResNet
from detr_ops.models.build import build, load_checkpoint
from detr_ops.models.coco import CocoDatasetError, CocoDetection
from detr_ops.models.criterion import SetCriterion
from detr_ops.models.data import SyntheticShapes, collate
from detr_ops.models.deformable_detr import DeformableDETR, build_deformable_detr
from detr_ops.models.deformable_transformer import DeformableTransformer
from detr_ops.models.detr import DETR, build_detr
from detr_ops.models.dino import DINO, build_dino
from detr_ops.models.position_encoding import PositionEmbeddingSine
from detr_ops.models.postprocess import postprocess
from detr_ops.models.transformer import Transformer

__all__ = ["Backbone", "FrozenBatchNorm2d", "Joiner", "ResNet", "build", "load_checkpoint", "CocoDatasetError",
           "CocoDetection", "SetCriterion", "SyntheticShapes", "collate", "DeformableDETR", "build_deformable_detr",
           "DeformableTransformer", "DETR", "build_detr", "DINO", "build_dino", "PositionEmbeddingSine",
           "postprocess", "Transformer"]
