"""Tiny model configurations and batches shared by the model tests (seconds on 2 CPU cores)."""
import torch

from detr_ops.models import build
from detr_ops.models.data import CLASSES, SyntheticShapes, collate

TINY = {
    "detr": dict(hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=8),
    "deformable_detr": dict(hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=8,
                            enc_n_points=2, dec_n_points=2),
    # dn_number 1: 2 denoising groups (DINO's rule), 12 queries for 3 target slots; 8 Co-DETR slots.
    "dino": dict(hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=8,
                 enc_n_points=2, dec_n_points=2, dn_number=1, max_targets=3, co_queries=8),
}


def tiny_model(name, ops="detr_ops", **overrides):
    return build(name, len(CLASSES), "small", ops=ops, **dict(TINY[name], **overrides))


def batch(n=2, image_size=(28, 32), seed=3, dtype=torch.float32):
    """n images of varied sizes (so the padding masks are not all False)."""
    data = SyntheticShapes(n, seed=seed, image_size=image_size)
    images, mask, targets = collate([data[i] for i in range(n)])
    for t in targets:
        t["boxes"] = t["boxes"].to(dtype)
    return images.to(dtype), mask, targets
