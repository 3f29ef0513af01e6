"""Argument checks of the raw box ops (``pairwise_iou``, ``giou_loss`` and their backwards), in
Python: the restatement of ``csrc/ops/common/box_iou_checks.h`` that the fake kernels
(``_registrations.py``) and the Triton launchers (``triton/box_iou.py``) share, so that the native
op, its Triton twin and their fake kernels refuse the same inputs with the same messages.

Every check is ``torch._check_value`` (a ValueError, as the C++ ``TORCH_CHECK_VALUE``), which also
holds for symbolic shapes under torch.compile / torch.export. The public functions
(``detr_ops/ops/box_iou.py``) check and convert their arguments before they reach these ops.
"""
import math

import torch

from detr_ops._dtypes import FLOAT_DTYPES

BOX_FORMATS = ("xyxy", "cxcywh")
_DTYPE_NAMES = "float16, bfloat16, float32 or float64"
# The largest pairwise result the kernels address: B*N*M elements of up to 8 bytes in int64.
_MAX_ELEMENTS = (2**63 - 1) // 8


def _check(condition, message) -> None:
    torch._check_value(condition, message)


def check_boxes(boxes1, boxes2, box_format) -> None:
    _check(box_format in BOX_FORMATS, lambda: f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")
    for name, t in (("boxes1", boxes1), ("boxes2", boxes2)):
        _check(isinstance(t, torch.Tensor), lambda: f"{name} must be a torch.Tensor, got {type(t).__name__}")
        _check(t.dim() >= 1 and t.shape[-1] == 4, lambda: f"{name} must have shape [..., 4], got {tuple(t.shape)}")
        _check(t.dtype in FLOAT_DTYPES, lambda: f"{name} must be {_DTYPE_NAMES}, got {t.dtype}")
    _check(boxes1.dtype == boxes2.dtype,
           lambda: f"boxes1 and boxes2 must have the same dtype, got {boxes1.dtype} and {boxes2.dtype}")
    _check(boxes1.device == boxes2.device,
           lambda: f"boxes1 and boxes2 must be on the same device, got {boxes1.device} and {boxes2.device}")


def pairwise_shape(boxes1, boxes2, box_format) -> tuple:
    """Checks the pairwise op's inputs; returns its output shape ([N, M] or [B, N, M])."""
    check_boxes(boxes1, boxes2, box_format)
    _check(boxes1.dim() in (2, 3) and boxes2.dim() == boxes1.dim(),
           lambda: f"boxes1 and boxes2 must be [N,4] and [M,4], or [B,N,4] and [B,M,4]; got {tuple(boxes1.shape)} "
           f"and {tuple(boxes2.shape)}")
    if boxes1.dim() == 3:
        _check(boxes1.shape[0] == boxes2.shape[0],
               lambda: f"boxes1 and boxes2 must have the same batch size, got {boxes1.shape[0]} and {boxes2.shape[0]}")
    shape = tuple(boxes1.shape[:-1]) + (boxes2.shape[-2],)
    _check(math.prod(shape) <= _MAX_ELEMENTS,
           lambda: f"boxes1 and boxes2: the pairwise result of {' x '.join(map(str, shape))} elements is too large "
           "to address")
    return shape


def check_loss_boxes(boxes1, boxes2, box_format, eps) -> None:
    check_boxes(boxes1, boxes2, box_format)
    _check(boxes1.shape == boxes2.shape,
           lambda: f"boxes1 and boxes2 must have the same shape, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    # expanded (stride-0) inputs are copied to contiguous ones, which must be addressable
    _check(boxes1.numel() <= _MAX_ELEMENTS,
           lambda: f"boxes1 and boxes2: {boxes1.numel() // 4} pairs of boxes are too many to address")
    check_eps(eps)


def check_eps(eps) -> None:
    """The loss's eps: a finite number >= 0 (a negative or NaN eps put the loss outside [0, 2])."""
    ok = isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps >= 0
    _check(ok, lambda: f"eps must be a finite number >= 0, got {eps!r}")


def check_grad(grad, shape, boxes1) -> None:
    """The upstream gradient of a backward op: the expected shape, the boxes' device, and a float dtype
    (converted by the kernels; an integer, bool, complex or float8 grad is refused)."""
    _check(isinstance(grad, torch.Tensor), lambda: f"grad must be a torch.Tensor, got {type(grad).__name__}")
    _check(tuple(grad.shape) == tuple(shape), lambda: f"grad must have shape {list(shape)}, got {tuple(grad.shape)}")
    _check(grad.device == boxes1.device, lambda: f"grad must be on {boxes1.device}, got {grad.device}")
    _check(grad.dtype in FLOAT_DTYPES, lambda: f"grad must be {_DTYPE_NAMES}, got {grad.dtype}")
