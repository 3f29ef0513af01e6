"""Plain-PyTorch references of the detr_ops operators.

They need no compiled extension, run on any device and in float64, and are what the tests and
benchmarks compare the kernels against.
"""
from detr_ops.reference.ms_deform_attn import ms_deform_attn_pytorch

__all__ = ["ms_deform_attn_pytorch"]
