"""Plain PyTorch / SciPy references of every op: the tests and benchmarks compare against them,
and they run without the compiled extension."""
from detr_ops.reference.box_iou import (
    box_iou_reference,
    generalized_box_iou_loss_reference,
    generalized_box_iou_reference,
)
from detr_ops.reference.ms_deform_attn import ms_deform_attn_pytorch
from detr_ops.reference.hungarian_matcher import HungarianMatcherReference, detr_cost_matrix
from detr_ops.reference.linear_sum_assignment import batched_linear_sum_assignment_reference
from detr_ops.reference.detr_family_matchers import detr_family_cost_matrix, family_matcher
from detr_ops.reference.denoising import dino_dn_indices, dino_dn_meta
