"""COCO-format detection datasets: an images folder plus an ``instances_*.json``.

Every check runs when the dataset is built, so a bad dataset fails before training starts, with a
message naming the file, image or annotation, instead of crashing mid-epoch:

* errors: unreadable or malformed JSON; missing ``images`` / ``annotations`` / ``categories``;
  duplicate image or category ids; an annotation whose ``image_id`` or ``category_id`` is not
  declared; a ``bbox`` that is not 4 finite numbers; image files that are missing, unreadable
  (Pillow header + ``verify``) or whose size differs from the JSON's ``width`` / ``height``;
* documented handling (counted in :attr:`CocoDetection.report`, a warning when any): boxes reaching
  outside the image are clipped to it (by more than 0.001 px: counted); boxes with no area (after clipping) are dropped;
  ``iscrowd`` annotations are not training targets but stay in the evaluation ground truth, where
  pycocotools treats them as "ignore" regions; images without annotations are kept (they teach
  "no object").

Category ids may be sparse (COCO's 1..90 with gaps): labels are ``0..K-1`` in ascending id order
(:attr:`category_ids` maps back). Images are decoded with Pillow (RGB; grayscale, palette and
alpha images are converted; EXIF orientation is ignored, as COCO does), resized so the longer side
is ``image_size`` (aspect kept), and normalised like the synthetic set. Boxes are normalised
``cx, cy, w, h`` of the image, which resizing leaves unchanged; targets carry ``size`` (resized)
and ``orig_size`` so predictions are scored in original pixels against the original JSON.
"""
import json
import math
import os
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from detr_ops.models.data import MEAN, STD

SPLITS = ("train", "val")


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("COCO-format datasets need Pillow: pip install pillow") from e
    return Image


def resolve(root, split):
    """``(images folder, annotation file)`` of ``split`` under a COCO-style ``root``: annotations in
    ``annotations/instances_{split}.json`` or ``instances_{split}2017.json``; images in
    ``images/{split}``, ``{split}``, ``{split}2017`` or ``images``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    anns = [os.path.join(root, "annotations", f"instances_{split}{y}.json") for y in ("", "2017")]
    dirs = [os.path.join(root, *p) for p in (("images", split), (split,), (f"{split}2017",), ("images",))]
    ann = next((a for a in anns if os.path.isfile(a)), None)
    image_dir = next((d for d in dirs if os.path.isdir(d)), None)
    if ann is None:
        raise FileNotFoundError(f"no {split} annotation file under {root!r}; looked for: {', '.join(anns)}")
    if image_dir is None:
        raise FileNotFoundError(f"no {split} images folder under {root!r}; looked for: {', '.join(dirs)}")
    return image_dir, ann


class CocoDatasetError(ValueError):
    """A COCO-format dataset that cannot be used as it is (the message says where and why)."""


class CocoDetection(Dataset):
    """Args:
        image_dir: folder the JSON's ``file_name`` entries are relative to.
        ann_file: COCO ``instances`` JSON.
        image_size: the longer image side after resizing (None: keep the original size).
        category_ids: label order as category ids (default: every declared category, ascending);
            pass the training set's to a validation set so labels agree.
        check_images: open every image once at construction (header, ``verify``, size). Turn off
            only for datasets already known to be sound; a bad file then fails when it is read.
    """

    def __init__(self, image_dir, ann_file, image_size=512, category_ids=None, check_images=True):
        self.image_dir = image_dir
        self.ann_file = ann_file
        self.image_size = image_size
        try:
            with open(ann_file) as f:
                raw = json.load(f)
        except OSError as e:
            raise CocoDatasetError(f"cannot read annotation file {ann_file!r}: {e}") from e
        except json.JSONDecodeError as e:
            raise CocoDatasetError(f"{ann_file!r} is not valid JSON: {e}") from e
        if not isinstance(raw, dict):
            raise CocoDatasetError(f"{ann_file!r}: expected a JSON object with images, annotations, categories")
        for key in ("images", "annotations", "categories"):
            if not isinstance(raw.get(key), list):
                raise CocoDatasetError(f"{ann_file!r}: missing or non-list {key!r}")
        declared = self._categories(raw["categories"])
        if category_ids is None:
            category_ids = sorted(declared)
        unknown = [c for c in category_ids if c not in declared]
        if unknown:
            raise CocoDatasetError(f"{ann_file!r}: category ids {unknown} are not declared in its categories")
        self.category_ids = list(category_ids)
        self.class_names = [declared[c] for c in self.category_ids]
        self.num_classes = len(self.category_ids)
        label_of = {c: i for i, c in enumerate(self.category_ids)}
        self.images = self._images(raw["images"])
        self._by_id = {im["id"]: im for im in self.images}
        self.report = {"clipped": 0, "dropped_empty": 0, "crowd": 0, "images_without_targets": 0,
                       "not_in_label_set": 0}
        self.targets = {img["id"]: [] for img in self.images}
        self.gt_annotations = []
        for i, ann in enumerate(raw["annotations"]):
            self._annotation(i, ann, declared, label_of)
        self.report["images_without_targets"] = sum(1 for v in self.targets.values() if not v)
        self.max_targets = max((len(v) for v in self.targets.values()), default=0)
        self.gt = {"images": [dict(id=im["id"], width=im["width"], height=im["height"], file_name=im["file_name"])
                              for im in self.images],
                   "annotations": self.gt_annotations,
                   "categories": [{"id": c, "name": declared[c]} for c in self.category_ids]}
        if check_images:
            self._check_images()
        changed = {k: v for k, v in self.report.items() if v}
        if changed:
            warnings.warn(f"{ann_file}: {changed} (see detr_ops.models.coco for how each case is handled)")

    @staticmethod
    def _categories(categories):
        out = {}
        for c in categories:
            if not isinstance(c, dict) or "id" not in c:
                raise CocoDatasetError(f"category entry without an id: {c!r}")
            if c["id"] in out:
                raise CocoDatasetError(f"duplicate category id {c['id']}")
            out[c["id"]] = str(c.get("name", c["id"]))
        if not out:
            raise CocoDatasetError("the dataset declares no categories")
        return out

    def _images(self, images):
        seen, out = set(), []
        for im in images:
            for key in ("id", "file_name", "width", "height"):
                if not isinstance(im, dict) or key not in im:
                    raise CocoDatasetError(f"{self.ann_file!r}: image entry without {key!r}: {im!r}")
            if im["id"] in seen:
                raise CocoDatasetError(f"{self.ann_file!r}: duplicate image id {im['id']}")
            if not all(isinstance(im[k], (int, float)) and im[k] > 0 for k in ("width", "height")):
                raise CocoDatasetError(f"{self.ann_file!r}: image {im['id']} has size {im['width']}x{im['height']}")
            seen.add(im["id"])
            out.append(im)
        return out

    def _annotation(self, i, ann, declared, label_of):
        where = f"{self.ann_file!r}: annotation {ann.get('id', f'#{i}') if isinstance(ann, dict) else f'#{i}'}"
        if not isinstance(ann, dict):
            raise CocoDatasetError(f"{where} is not an object")
        if ann.get("image_id") not in self.targets:
            raise CocoDatasetError(f"{where} refers to image_id {ann.get('image_id')!r}, which is not in images")
        cat = ann.get("category_id")
        if cat not in declared:
            raise CocoDatasetError(f"{where} has category_id {cat!r}, which is not declared in categories "
                                   f"(declared: {sorted(declared)})")
        box = ann.get("bbox")
        if (not isinstance(box, (list, tuple)) or len(box) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            raise CocoDatasetError(f"{where} has bbox {box!r}; expected [x, y, width, height], 4 finite numbers")
        image = self._image_by_id(ann["image_id"])
        w_img, h_img = float(image["width"]), float(image["height"])
        x0, y0, w, h = (float(v) for v in box)
        cx0, cy0 = min(max(x0, 0.0), w_img), min(max(y0, 0.0), h_img)
        cx1, cy1 = min(max(x0 + w, 0.0), w_img), min(max(y0 + h, 0.0), h_img)
        # Round-off (a box a thousandth of a pixel outside) is clipped without being reported.
        if max(abs(a - b) for a, b in zip((cx0, cy0, cx1, cy1), (x0, y0, x0 + w, y0 + h))) > 1e-3:
            self.report["clipped"] += 1
        if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
            self.report["dropped_empty"] += 1
            return
        crowd = bool(ann.get("iscrowd", 0))
        in_set = cat in label_of
        if in_set:
            self.gt_annotations.append({"id": ann.get("id", i + 1), "image_id": image["id"], "category_id": cat,
                                        "bbox": [cx0, cy0, cx1 - cx0, cy1 - cy0], "iscrowd": int(crowd),
                                        "area": float(ann.get("area", (cx1 - cx0) * (cy1 - cy0)))})
        if crowd:
            self.report["crowd"] += 1
            return
        if not in_set:
            # A category declared in this file but absent from the label set (a val set built with
            # the training set's categories): not a target, not scored.
            self.report["not_in_label_set"] += 1
            return
        self.targets[image["id"]].append((label_of[cat], ((cx0 + cx1) / 2 / w_img, (cy0 + cy1) / 2 / h_img,
                                                          (cx1 - cx0) / w_img, (cy1 - cy0) / h_img)))

    def _image_by_id(self, image_id):
        return self._by_id[image_id]

    def _path(self, image):
        return os.path.join(self.image_dir, image["file_name"])

    def _check_images(self):
        Image = _pil()
        missing, bad = [], []
        for im in self.images:
            path = self._path(im)
            if not os.path.isfile(path):
                missing.append(path)
                continue
            try:
                with Image.open(path) as f:
                    size = f.size
                    f.verify()
            except Exception as e:  # Pillow raises many types for broken files
                bad.append(f"{path} ({type(e).__name__}: {e})")
                continue
            if size != (int(im["width"]), int(im["height"])):
                bad.append(f"{path} is {size[0]}x{size[1]} but the JSON says {im['width']}x{im['height']}")
        if missing:
            raise CocoDatasetError(f"{len(missing)} image file(s) of {self.ann_file!r} are missing, e.g. "
                                   + ", ".join(missing[:5]))
        if bad:
            raise CocoDatasetError(f"{len(bad)} image file(s) of {self.ann_file!r} cannot be used: "
                                   + "; ".join(bad[:5]))

    def __len__(self):
        return len(self.images)

    def _load(self, image):
        Image = _pil()
        path = self._path(image)
        try:
            with Image.open(path) as f:
                rgb = f.convert("RGB")
                w, h = rgb.size
                if self.image_size:
                    scale = self.image_size / max(w, h)
                    size = (max(1, round(w * scale)), max(1, round(h * scale)))
                    if size != (w, h):
                        rgb = rgb.resize(size, Image.BILINEAR)
                array = np.asarray(rgb, dtype=np.float32) / 255.0
        except Exception as e:
            raise CocoDatasetError(f"cannot decode image {path!r}: {type(e).__name__}: {e}") from e
        return torch.from_numpy((array.transpose(2, 0, 1) - MEAN) / STD)

    def __getitem__(self, index):
        image = self.images[index]
        pixels = self._load(image)
        objects = self.targets[image["id"]]
        labels = torch.tensor([o[0] for o in objects], dtype=torch.int64)
        boxes = torch.tensor([o[1] for o in objects], dtype=torch.float32).reshape(-1, 4)
        target = {"boxes": boxes, "labels": labels, "image_id": image["id"],
                  "size": torch.tensor(pixels.shape[1:]), "orig_size": torch.tensor([image["height"], image["width"]])}
        return pixels, target

    def coco_ground_truth(self):
        """The evaluation ground truth: this file's images and the annotations kept (clipped boxes,
        crowd regions included), in original pixels and original category ids."""
        return self.gt
