"""Triton kernels and their launchers, one module per op (box_math.py: the box formulas shared by
the box and matching-cost kernels). ``detr_ops/_registrations.py`` defines the launchers as the
``torch.ops.detr_ops.*_triton`` ops; nothing here imports ``detr_ops.ops``."""
