"""A seeded synthetic detection dataset, generated on the fly, with COCO-format ground truth.

Each image holds 1..``max_objects`` filled shapes of ``CLASSES`` (rectangle, ellipse, triangle) of
varied size, colour and aspect, placed with bounded overlap on a textured background (a smooth
random colour field, random stripes and pixel noise), and each shape carries its own noise, so
a detector must use shape, not colour or edges alone. Item ``i`` of a split is a pure function of
``(seed, i)`` (and the epoch, after ``set_epoch``, for training on fresh images every epoch): every
process, worker and run sees the same image, which is what lets 1-process and multi-process runs be
compared. Different seeds give disjoint, held-out splits.
"""
import json
import math
import os

import numpy as np
import torch
from torch.utils.data import Dataset

CLASSES = ("rectangle", "ellipse", "triangle")
MEAN, STD = 0.5, 0.25


def _box_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


class SyntheticShapes(Dataset):
    """Args:
        length: number of images in the split.
        seed: split seed (train and held-out splits use different seeds).
        image_size: side in pixels, or ``(min, max)`` for a random side per image (exercises padding).
        max_objects: at most this many shapes per image (at least one).
        min_size, max_size: shape extent as a fraction of the image side.
        max_overlap: largest IoU a new shape may have with an earlier one (later shapes occlude).
    """

    def __init__(self, length=1000, seed=0, image_size=64, max_objects=3, min_size=0.2, max_size=0.5,
                 max_overlap=0.3):
        self.length = length
        self.seed = seed
        self.image_size = image_size
        self.max_objects = max_objects
        self.min_size = min_size
        self.max_size = max_size
        self.max_overlap = max_overlap
        self.num_classes = len(CLASSES)
        self.class_names = list(CLASSES)
        self.category_ids = [i + 1 for i in range(len(CLASSES))]  # COCO ids of labels 0, 1, 2
        self.max_targets = max_objects
        self.epoch = None

    def set_epoch(self, epoch):
        """Draw a new set of images for ``epoch`` (training on unlimited data); None: the fixed set."""
        self.epoch = epoch

    def __len__(self):
        return self.length

    def _side(self, rng):
        if isinstance(self.image_size, int):
            return self.image_size, self.image_size
        lo, hi = self.image_size
        return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))

    @staticmethod
    def _background(rng, h, w):
        # Smooth colour field: a 4x4 random grid upsampled, so colour varies slowly across the image.
        coarse = torch.from_numpy(rng.uniform(0.0, 1.0, (1, 3, 4, 4)).astype(np.float32))
        field = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0].numpy()
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        angle = rng.uniform(0, math.pi)
        freq = rng.uniform(0.2, 0.8)
        stripes = 0.15 * np.sin(freq * (xx * math.cos(angle) + yy * math.sin(angle)))
        image = 0.6 * field + stripes[None] + rng.normal(0.0, 0.06, (3, h, w))
        return image.astype(np.float32), yy, xx

    @staticmethod
    def _mask(label, box, yy, xx, rng):
        x0, y0, x1, y1 = box
        if label == 0:
            return (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
        if label == 1:
            cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
            return ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0
        # Isosceles triangle filling its box, apex up or down.
        t = (yy + 0.5 - y0) / (y1 - y0)
        if rng.uniform() < 0.5:
            t = 1.0 - t
        half = 0.5 * (x1 - x0) * t
        cx = (x0 + x1) / 2
        return (t >= 0) & (t <= 1) & (np.abs(xx + 0.5 - cx) <= half)

    def __getitem__(self, index):
        key = [self.seed, index] if self.epoch is None else [self.seed, index, self.epoch]
        rng = np.random.default_rng(key)
        h, w = self._side(rng)
        image, yy, xx = self._background(rng, h, w)
        boxes, labels = [], []
        count = int(rng.integers(1, self.max_objects + 1))
        for _ in range(20 * count):
            if len(boxes) == count:
                break
            bw = rng.uniform(self.min_size, self.max_size) * w
            bh = rng.uniform(self.min_size, self.max_size) * h
            x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            # Snap to pixel edges so the box is exactly the extent of the drawn pixels.
            box = (math.floor(x0), math.floor(y0), math.ceil(x0 + bw), math.ceil(y0 + bh))
            if any(_box_iou(box, b) > self.max_overlap for b in boxes):
                continue
            label = int(rng.integers(0, len(CLASSES)))
            mask = self._mask(label, box, yy, xx, rng)
            colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
            texture = rng.normal(0.0, 0.05, (3, h, w)).astype(np.float32)
            image = np.where(mask[None], colour[:, None, None] + texture, image)
            boxes.append(box)
            labels.append(label)
        image = (np.clip(image, 0.0, 1.0) - MEAN) / STD
        xyxy = torch.tensor(boxes, dtype=torch.float32)
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], -1) / scale
        target = {
            "boxes": cxcywh,  # normalised cx, cy, w, h, as DETR's criterion expects
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": index,
            "size": torch.tensor([h, w]),
            "orig_size": torch.tensor([h, w]),
        }
        return torch.from_numpy(image), target

    def coco_ground_truth(self, indices=None):
        """The split (or ``indices`` of it) as a COCO annotation dict: boxes in pixels, xywh;
        category ids are labels + 1 (COCO ids start at 1)."""
        images, annotations = [], []
        for index in range(self.length) if indices is None else indices:
            _, target = self[index]
            h, w = target["size"].tolist()
            images.append({"id": index, "height": h, "width": w})
            for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
                cx, cy, bw, bh = box
                xywh = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
                annotations.append({"id": len(annotations) + 1, "image_id": index, "category_id": label + 1,
                                    "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0})
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
        return {"images": images, "annotations": annotations, "categories": categories}


def export_coco(dataset, folder, split, image_format="png", category_ids=None, names=None):
    """Writes ``dataset`` (a :class:`SyntheticShapes`) as a COCO-format split: real image files in
    ``folder/images/{split}`` and ``folder/annotations/instances_{split}.json``. ``category_ids``
    gives the COCO id of each label (sparse ids exercise the label mapping). Returns the JSON dict."""
    from PIL import Image

    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    category_ids = list(category_ids or [i + 1 for i in range(len(CLASSES))])
    names = list(names or CLASSES)
    image_dir = os.path.join(folder, "images", split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(folder, "annotations"), exist_ok=True)
    images, annotations = [], []
    for index in range(len(dataset)):
        image, target = dataset[index]
        h, w = target["size"].tolist()
        pixels = ((image * STD + MEAN).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        name = f"{index:06d}.{image_format}"
        options = {"quality": 95} if image_format == "jpg" else {}
        Image.fromarray(pixels).save(os.path.join(image_dir, name), **options)
        image_id = index + 1
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for (cx, cy, bw, bh), label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            xywh = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_ids[label],
                                "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": n} for c, n in zip(category_ids, names)]}
    with open(os.path.join(folder, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump(coco, f)
    return coco


def collate(batch):
    """Pads images to the batch's largest size: ``(images [B,3,H,W], mask [B,H,W], targets)``, mask
    True at padding. Box coordinates stay normalised to each image's own size, as in DETR."""
    images, targets = zip(*batch)
    h = max(im.shape[1] for im in images)
    w = max(im.shape[2] for im in images)
    out = images[0].new_zeros(len(images), 3, h, w)
    mask = torch.ones(len(images), h, w, dtype=torch.bool)
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]] = im
        mask[i, : im.shape[1], : im.shape[2]] = False
    return out, mask, list(targets)
