"""detr_ops: fast, exact operators for DETR-family object detectors.

Importing the package loads the compiled core (``detr_ops._C``), which registers the
``torch.ops.detr_ops.*`` operators, and then their fake kernels, autograd and Triton twins
(``detr_ops/_registrations.py``). Without the compiled core the pure-PyTorch references in
``detr_ops.reference`` still work, and the compiled functions raise a clear error.
"""
from detr_ops.version import __version__
from detr_ops._extension import ExtensionError, build_info
from detr_ops import _registrations  # noqa: F401  (registers fake kernels, autograd and Triton twins)
from detr_ops.ops.box_convert import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from detr_ops.ops.box_iou import box_iou, box_validity, generalized_box_iou, generalized_box_iou_loss
from detr_ops.ops.matching_cost import matching_cost, pad_targets
from detr_ops.ops.denoising import denoising_match, denoising_match_indices, dn_num_groups
from detr_ops.ops.ms_deform_attn import MSDeformAttnFunction, ms_deform_attn
from detr_ops.reference.ms_deform_attn import ms_deform_attn_pytorch
from detr_ops.nn.ms_deform_attn import MSDeformAttn
from detr_ops.nn.hungarian_matcher import HungarianMatcher
from detr_ops.ops.linear_sum_assignment import (
    batched_linear_sum_assignment,
    linear_sum_assignment,
    row_for_col,
)

__all__ = [
    "__version__",
    "ExtensionError",
    "build_info",
    "box_iou",
    "generalized_box_iou",
    "generalized_box_iou_loss",
    "box_validity",
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "matching_cost",
    "pad_targets",
    "denoising_match",
    "denoising_match_indices",
    "dn_num_groups",
    "ms_deform_attn",
    "MSDeformAttnFunction",
    "ms_deform_attn_pytorch",
    "MSDeformAttn",
    "HungarianMatcher",
    "linear_sum_assignment",
    "batched_linear_sum_assignment",
    "row_for_col",
]
