"""Model outputs -> scored, labelled pixel boxes (DETR's and Deformable DETR's ``PostProcess``)."""
import torch

from detr_ops.ops.box_convert import box_cxcywh_to_xyxy


def _scale_boxes(boxes, sizes):
    xyxy = box_cxcywh_to_xyxy(boxes)
    img_h, img_w = sizes.unbind(1)
    return xyxy * torch.stack([img_w, img_h, img_w, img_h], 1)[:, None, :].to(xyxy.dtype)


@torch.no_grad()
def postprocess(outputs, sizes, focal, top_k=100):
    """``sizes [B, 2]`` (h, w) of each unpadded image. Returns one dict per image with ``scores``,
    ``labels`` (0-based) and ``boxes`` (xyxy pixels).

    Softmax models (DETR) give one detection per query: its best real class. Sigmoid models
    (Deformable DETR) rank all query x class scores and keep the ``top_k`` best, so one query may
    report several classes, as the original evaluates.
    """
    scores, labels, boxes = postprocess_batched(outputs, sizes, focal, top_k)
    return [{"scores": s, "labels": l, "boxes": bx} for s, l, bx in zip(scores, labels, boxes)]


def postprocess_batched(outputs, sizes, focal, top_k=100):
    """:func:`postprocess` as batched tensors ``(scores [B, K], labels [B, K], boxes [B, K, 4])``
    (traceable: the exported inference graphs end with it)."""
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    boxes = _scale_boxes(boxes.float(), sizes)
    if focal:
        prob = logits.float().sigmoid()
        b, q, k = prob.shape
        scores, index = prob.view(b, -1).topk(min(top_k, q * k), dim=1)
        labels = index % k
        boxes = torch.gather(boxes, 1, (index // k).unsqueeze(-1).expand(-1, -1, 4))
    else:
        scores, labels = logits.float().softmax(-1)[..., :-1].max(-1)
    return scores, labels, boxes
