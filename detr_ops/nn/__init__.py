"""Neural-network modules built on detr_ops operators (drop-ins for the originals' modules)."""
from detr_ops.nn.hungarian_matcher import HungarianMatcher
from detr_ops.nn.ms_deform_attn import MSDeformAttn
from detr_ops.nn.multi_scale_deformable_attention import MultiScaleDeformableAttention

__all__ = ["HungarianMatcher", "MSDeformAttn", "MultiScaleDeformableAttention"]
