"""A training run's datasets from its configuration: the synthetic shapes task, or a COCO-format
folder (``coco_root``, or explicit ``{train,val}_images`` / ``{train,val}_ann`` paths).

The one place train.py, evaluate.py, visualize.py and the convergence script turn a configuration
(train.py's arguments as a dict, as stored in checkpoints) into datasets, so a checkpoint's
evaluation sees the images and label order its training saw.
"""
from detr_ops.models.coco import CocoDetection, resolve
from detr_ops.models.data import SyntheticShapes


def is_coco(config):
    return bool(config.get("coco_root") or config.get("train_ann") or config.get("val_ann"))


def coco_paths(config, split):
    images, ann = config.get(f"{split}_images"), config.get(f"{split}_ann")
    if images and ann:
        return images, ann
    if not config.get("coco_root"):
        raise ValueError(f"the {split} split needs --coco-root or both --{split}-images and --{split}-ann")
    found_images, found_ann = resolve(config["coco_root"], split)
    return images or found_images, ann or found_ann


def train_set(config):
    if is_coco(config):
        images, ann = coco_paths(config, "train")
        return CocoDetection(images, ann, config["image_size"], check_images=not config.get("no_check_images"))
    return SyntheticShapes(config["train_size"], seed=config["seed"], image_size=config["image_size"],
                           max_objects=config["max_objects"])


def val_set(config, size=None):
    """The held-out split; COCO labels follow the training run's ``category_ids``."""
    if is_coco(config):
        images, ann = coco_paths(config, "val")
        return CocoDetection(images, ann, config["image_size"], category_ids=config.get("category_ids"),
                             check_images=not config.get("no_check_images"))
    return SyntheticShapes(size or config["val_size"], seed=config["seed"] + 1, image_size=config["image_size"],
                           max_objects=config["max_objects"])
