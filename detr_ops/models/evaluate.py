"""COCO AP / AP50 / AP75 of a model on the held-out split of its training run (synthetic, or the
COCO-format folder's ``val`` split, scored in original pixels and category ids), with pycocotools.

``python -m detr_ops.models.evaluate --checkpoint run/checkpoint.pth [--device cpu] [--val-size 500]``
Under torchrun each rank evaluates its share of the images; rank 0 scores them all.
"""
import argparse
import contextlib
import io
import json

import torch

from detr_ops.models import datasets, distributed
from detr_ops.models.build import is_focal, load_checkpoint
from detr_ops.models.data import collate
from detr_ops.models.postprocess import postprocess


def load_coco_api():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("evaluation needs pycocotools: pip install pycocotools") from e
    return COCO, COCOeval


@torch.no_grad()
def predict(model, dataset, focal, device, batch_size=32, indices=None):
    """COCO-format detections for ``indices`` of ``dataset``: xywh boxes in the original image's
    pixels (``orig_size``), category ids from ``dataset.category_ids``."""
    model.eval()
    indices = list(range(len(dataset))) if indices is None else list(indices)
    detections = []
    category_ids = dataset.category_ids
    for start in range(0, len(indices), batch_size):
        batch = [dataset[i] for i in indices[start:start + batch_size]]
        images, mask, targets = collate(batch)
        outputs = model(images.to(device), mask.to(device))
        sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
        for target, result in zip(targets, postprocess(outputs, sizes, focal)):
            for score, label, box in zip(result["scores"].tolist(), result["labels"].tolist(),
                                         result["boxes"].tolist()):
                x0, y0, x1, y1 = box
                detections.append({"image_id": target["image_id"], "category_id": category_ids[label],
                                   "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    return detections


def coco_metrics(ground_truth, detections, verbose=False):
    """``{"AP", "AP50", "AP75"}`` from a COCO ground-truth dict and a detection list."""
    COCO, COCOeval = load_coco_api()
    if not detections:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AP75": float(ev.stats[2])}


def evaluate(model, dataset, focal, device, batch_size=32, verbose=False):
    """Evaluates ``dataset`` (sharded over ranks under torchrun); every rank gets the metrics."""
    rank, world = (0, 1)
    if distributed.world_size() > 1:
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
    mine = predict(model, dataset, focal, device, batch_size, range(rank, len(dataset), world))
    detections = [d for part in distributed.gather_objects(mine) for d in part]
    return coco_metrics(dataset.coco_ground_truth(), detections, verbose)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--val-size", type=int, default=None,
                        help="synthetic images (default: the training run's; a COCO-format val split is used whole)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ops", default=None, help="detr_ops or reference (default: the training run's)")
    args = parser.parse_args(argv)
    model, config = load_checkpoint(args.checkpoint, args.device, ops=args.ops)
    dataset = datasets.val_set(config, args.val_size)
    metrics = evaluate(model, dataset, is_focal(config["model"]), args.device, args.batch_size, verbose=True)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
