"""Box format converters, as DETR's ``util/box_ops`` defines them (plain PyTorch, differentiable).

Defined once here for the public API, the references and the models; they need no compiled code.
Real boxes only: integer boxes compute as PyTorch promotes them (float results, as DETR's), while
bool, complex and float8 boxes are refused with a ValueError naming the argument (float8 failed
inside a PyTorch kernel, complex gave complex "boxes").
"""
import torch

_REAL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(boxes) -> None:
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"boxes must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [..., 4] (one box per row), got {tuple(boxes.shape)}")
    if boxes.dtype not in _REAL and (boxes.is_floating_point() or boxes.is_complex() or boxes.dtype == torch.bool):
        raise ValueError(f"boxes must be float16, bfloat16, float32, float64 or an integer dtype, got {boxes.dtype}")


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1)."""
    _check(boxes)
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(x0, y0, x1, y1) -> (cx, cy, w, h)."""
    _check(boxes)
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)
