"""The textbook box formulas, written as torchvision and DETR's ``util/box_ops`` write them:
a chain of elementwise PyTorch ops. They are the baselines the fused kernels are tested and timed
against (run them in float64 for a reference). On degenerate boxes they divide 0 by 0, as the
originals do."""
import torch


def _area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _inter_union(boxes1, boxes2):
    area1, area2 = _area(boxes1), _area(boxes2)
    lt = torch.max(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.min(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter, union


def box_iou_reference(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes, ``[..., N, 4] x [..., M, 4] -> [..., N, M]``."""
    inter, union = _inter_union(boxes1, boxes2)
    return inter / union


def generalized_box_iou_reference(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU of xyxy boxes (torchvision.ops.generalized_box_iou), batched over leading dims."""
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / union
    lti = torch.min(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rbi = torch.max(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    whi = (rbi - lti).clamp(min=0)
    areai = whi[..., 0] * whi[..., 1]
    return iou - (areai - union) / areai


def generalized_box_iou_loss_reference(
    boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7
) -> torch.Tensor:
    """Elementwise 1 - GIoU (torchvision.ops.generalized_box_iou_loss), xyxy boxes."""
    if not boxes1.is_floating_point() or boxes1.dtype in (torch.float16, torch.bfloat16):
        boxes1 = boxes1.float()
    if not boxes2.is_floating_point() or boxes2.dtype in (torch.float16, torch.bfloat16):
        boxes2 = boxes2.float()
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xkis1, ykis1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xkis2, ykis2 = torch.min(x2, x2g), torch.min(y2, y2g)
    mask = (ykis2 > ykis1) & (xkis2 > xkis1)
    inter = torch.where(mask, (xkis2 - xkis1) * (ykis2 - ykis1), torch.zeros_like(x1))
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    xc1, yc1 = torch.min(x1, x1g), torch.min(y1, y1g)
    xc2, yc2 = torch.max(x2, x2g), torch.max(y2, y2g)
    area_c = (xc2 - xc1) * (yc2 - yc1)
    loss = 1 - (iou - (area_c - union) / (area_c + eps))
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    return loss
