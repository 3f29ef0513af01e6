"""The one switch between detr_ops's compiled ops and the plain PyTorch references.

Every model, criterion and matcher in ``detr_ops.models`` takes ``ops="detr_ops"`` (default) or
``ops="reference"`` and asks this module for its three ops:

=====================  ===============================  ===========================================
op                     ``"detr_ops"``                   ``"reference"``
=====================  ===============================  ===========================================
MSDA module            :class:`detr_ops.MSDeformAttn`   same module, grid_sample sampling
GIoU loss (cxcywh)     ``detr_ops.generalized_box_iou_  the textbook formula on xyxy boxes
                       loss(box_format="cxcywh")``
Hungarian matcher      ``detr_ops.HungarianMatcher``    DETR's cost matrix + scipy loop
pairwise IoU (xyxy)    ``detr_ops.box_iou``             the textbook formula (ATSS assignment)
=====================  ===============================  ===========================================

The reference path needs no compiled extension, so it is also what users without a build run.
"""

from detr_ops.nn.ms_deform_attn import MSDeformAttn
from detr_ops.ops.box_convert import box_cxcywh_to_xyxy
from detr_ops.reference.box_iou import box_iou_reference, generalized_box_iou_loss_reference
from detr_ops.reference.hungarian_matcher import HungarianMatcherReference
from detr_ops.reference.ms_deform_attn import ms_deform_attn_pytorch

OPS = ("detr_ops", "reference")


def check(ops: str) -> str:
    if ops not in OPS:
        raise ValueError(f"ops must be one of {OPS}, got {ops!r}")
    return ops


class MSDeformAttnReference(MSDeformAttn):
    """:class:`MSDeformAttn` with the same parameters and location math, sampled by grid_sample."""

    def _attend(self, value, spatial_shapes, level_start_index, locations, weights):
        return ms_deform_attn_pytorch(value, spatial_shapes, level_start_index, locations, weights)


def msda_class(ops: str):
    return MSDeformAttn if check(ops) == "detr_ops" else MSDeformAttnReference


def giou_loss(ops: str):
    """``fn(src_boxes, target_boxes) -> [N]`` per-pair ``1 - GIoU`` of cxcywh boxes."""
    if check(ops) == "detr_ops":
        # Imported here: detr_ops's ops load the compiled extension, the reference path must not.
        from detr_ops.ops.box_iou import generalized_box_iou_loss

        return lambda src, tgt: generalized_box_iou_loss(src, tgt, reduction="none", box_format="cxcywh")
    return lambda src, tgt: generalized_box_iou_loss_reference(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))


def matcher(ops: str, **kwargs):
    """A matcher with DETR's interface: ``forward(outputs, targets) -> [(index_i, index_j)]``."""
    if check(ops) == "detr_ops":
        from detr_ops.nn.hungarian_matcher import HungarianMatcher

        return HungarianMatcher(**kwargs)
    return HungarianMatcherReference(**kwargs)


def box_iou(ops: str):
    """``fn(boxes1 [B, N, 4], boxes2 [B, M, 4]) -> [B, N, M]`` pairwise IoU of xyxy boxes."""
    if check(ops) == "detr_ops":
        from detr_ops.ops.box_iou import box_iou as fused

        return fused
    return box_iou_reference
