"""IoU and GIoU of boxes: pairwise (matching cost) and elementwise (loss), fused, with backward.

Drop-ins for ``torchvision.ops.box_iou``, ``generalized_box_iou``, ``generalized_box_iou_loss``
and DETR's ``util.box_ops``: same values on valid boxes, plus

* ``box_format="cxcywh"`` reads DETR's (cx, cy, w, h) boxes directly, no conversion pass;
* batched input ``[B,N,4] x [B,M,4] -> [B,N,M]``;
* degenerate but finite boxes never give NaN or inf, in values or gradients:
  a zero-area box has IoU 0 with anything; two identical zero-size boxes have IoU 0 and GIoU 0
  (loss 1); where torchvision divides 0 by 0 we return 0 for that term; a box with inverted
  corners (x1 < x0 or y1 < y0) counts as an empty box (area 0) that still widens the enclosing
  box (use :func:`box_validity` to find such boxes without a host sync); float16 gradients that
  exceed its range (two distinct point boxes under the loss give 1/eps) saturate at +-65504;
* half / bfloat16 inputs are computed in float32.

Non-finite input gives NaN, never a plausible number (a diverging model must see it), on every
backend, in values and gradients:

* a pair with a NaN or +-inf coordinate (after the cxcywh conversion) has NaN IoU, GIoU and loss,
  and NaN gradients for both of its boxes; so in the pairwise ops a NaN box in ``boxes2`` makes the
  gradient of every box of ``boxes1`` it is paired with NaN, as autograd through torchvision's
  formula does. (torchvision itself returns NaN, +-inf or a finite 0 for an infinite coordinate,
  depending on where it lands; here it is always NaN.)
* a pair whose union or (GIoU, loss) enclosing-box area overflows the computation dtype is NaN
  too: in float32 (also for float16 / bfloat16 input) an area beyond 3.4e38, a box about 1.8e19 or
  more across in both directions, such as ``[0, 0, 1e20, 1e20]``, or a pair whose enclosing box is
  (a box near ``1e20`` against one near the origin). torchvision returns NaN there too, or, for
  the IoU, a wrong finite 0. In float64 areas overflow beyond about 1.8e308 (sides of 1.3e154).
* a NaN or infinite upstream gradient gives NaN gradients for both boxes of its pair.

Integer boxes are converted to float32 (a defined result, as torchvision's loss does); bool,
complex and float8 boxes are rejected. ``eps`` of the loss must be a finite number >= 0.
"""
import math
import numbers

import torch

from detr_ops import _backend, _extension
from detr_ops._dtypes import FLOAT_DTYPES
from detr_ops.ops import _checks

BOX_FORMATS = ("xyxy", "cxcywh")
REDUCTIONS = ("none", "mean", "sum")


def _boxes(x, name: str) -> torch.Tensor:
    x = _checks.tensor(x, name)
    _checks.real(x, name, "real box coordinates")
    if x.dim() < 1 or x.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [..., 4] (one box per row), got {tuple(x.shape)}")
    if not x.is_floating_point():
        return x.float()
    if x.dtype not in FLOAT_DTYPES:  # float8: no kernel computes in it
        raise ValueError(f"{name} must be float16, bfloat16, float32, float64 or an integer dtype, got {x.dtype}")
    return x


def _eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def _pair(boxes1, boxes2, box_format):
    boxes1, boxes2 = _boxes(boxes1, "boxes1"), _boxes(boxes2, "boxes2")
    _checks.one_of(box_format, BOX_FORMATS, "box_format")
    _checks.same_device("boxes1", boxes1, "boxes2", boxes2)
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    return boxes1.to(dtype), boxes2.to(dtype)


def _pairwise(boxes1, boxes2, box_format, generalized, backend):
    boxes1, boxes2 = _pair(boxes1, boxes2, box_format)
    if boxes1.dim() not in (2, 3) or boxes2.dim() != boxes1.dim():
        raise ValueError(
            "boxes1 and boxes2 must both be [N,4] and [M,4], or both [B,N,4] and [B,M,4]; "
            f"got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )
    if boxes1.dim() == 3 and boxes1.shape[0] != boxes2.shape[0]:
        raise ValueError(f"boxes1 and boxes2 must have the same batch size, got {boxes1.shape[0]} and {boxes2.shape[0]}")
    _extension.load()
    if _backend.resolve(backend, boxes1.device) == "triton":
        from detr_ops import _triton_twins  # noqa: F401  (defines the *_triton ops on first use)
        return torch.ops.detr_ops.pairwise_iou_triton(boxes1, boxes2, box_format, generalized)
    return torch.ops.detr_ops.pairwise_iou(boxes1, boxes2, box_format, generalized)


def box_iou(boxes1, boxes2, box_format: str = "xyxy", *, backend: str = "auto") -> torch.Tensor:
    """Pairwise IoU: ``[N,4] x [M,4] -> [N,M]`` or ``[B,N,4] x [B,M,4] -> [B,N,M]``."""
    return _pairwise(boxes1, boxes2, box_format, False, backend)


def generalized_box_iou(boxes1, boxes2, box_format: str = "xyxy", *, backend: str = "auto") -> torch.Tensor:
    """Pairwise generalized IoU, same shapes as :func:`box_iou`; differentiable in both inputs."""
    return _pairwise(boxes1, boxes2, box_format, True, backend)


def generalized_box_iou_loss(
    boxes1, boxes2, reduction: str = "none", eps: float = 1e-7, box_format: str = "xyxy", *, backend: str = "auto"
) -> torch.Tensor:
    """Elementwise ``1 - GIoU`` of matching boxes (torchvision's ``generalized_box_iou_loss``).

    The loss is float32 for half/bfloat16/float32 input and float64 for float64. ``"mean"`` of an
    empty input is 0 and still backpropagates.
    """
    _checks.one_of(reduction, REDUCTIONS, "reduction")
    eps = _eps(eps)
    boxes1, boxes2 = _pair(boxes1, boxes2, box_format)
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"boxes1 and boxes2 must have the same shape, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    _extension.load()
    if _backend.resolve(backend, boxes1.device) == "triton":
        from detr_ops import _triton_twins  # noqa: F401  (defines the *_triton ops on first use)
        loss = torch.ops.detr_ops.giou_loss_triton(boxes1, boxes2, box_format, eps)
    else:
        loss = torch.ops.detr_ops.giou_loss(boxes1, boxes2, box_format, eps)
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    return loss


def box_validity(boxes, box_format: str = "xyxy") -> torch.Tensor:
    """Bool tensor ``[...]``: True where the box has x1 >= x0 and y1 >= y0 (finite).

    Computed on the boxes' device without a host sync, unlike DETR's ``assert (...).all()``; reduce
    it with ``.all()`` and check it whenever your loop may synchronise.
    """
    boxes = _boxes(boxes, "boxes")
    _checks.one_of(box_format, BOX_FORMATS, "box_format")
    if box_format == "cxcywh":
        ok = (boxes[..., 2] >= 0) & (boxes[..., 3] >= 0)
    else:
        ok = (boxes[..., 2] >= boxes[..., 0]) & (boxes[..., 3] >= boxes[..., 1])
    return ok & torch.isfinite(boxes).all(dim=-1)
