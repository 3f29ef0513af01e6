"""Triton kernels, registered as torch.ops.detr_ops.*_triton ops. Imported on first use."""
