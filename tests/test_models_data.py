"""Synthetic dataset, collate and COCO evaluation: determinism, geometry, padding, and the metric
pipeline scoring perfect detections 1.0 and misplaced ones lower."""
import torch

from detr_ops.models.data import CLASSES, SyntheticShapes, collate
from detr_ops.models.evaluate import coco_metrics
from detr_ops.models.postprocess import postprocess


def test_items_are_pure_functions_of_seed_and_index():
    a, b = SyntheticShapes(4, seed=0), SyntheticShapes(4, seed=0)
    image, target = a[2]
    image2, target2 = b[2]
    assert torch.equal(image, image2) and torch.equal(target["boxes"], target2["boxes"])
    other, _ = SyntheticShapes(4, seed=1)[2]
    assert not torch.equal(image, other)


def test_targets_are_valid_and_varied():
    data = SyntheticShapes(200, seed=0, max_objects=3)
    counts, labels = [], []
    for i in range(len(data)):
        image, t = data[i]
        assert image.shape == (3, 64, 64)
        b = t["boxes"]
        assert 1 <= len(b) <= 3 and len(b) == len(t["labels"])
        assert ((b[:, :2] - b[:, 2:] / 2) >= 0).all() and ((b[:, :2] + b[:, 2:] / 2) <= 1 + 1e-6).all()
        assert (b[:, 2:] >= 0.15).all()
        counts.append(len(b))
        labels += t["labels"].tolist()
    assert set(counts) == {1, 2, 3}
    assert set(labels) == set(range(len(CLASSES)))


def test_collate_pads_and_masks():
    data = SyntheticShapes(4, seed=0, image_size=(40, 64))
    images, mask, targets = collate([data[i] for i in range(4)])
    for i, t in enumerate(targets):
        h, w = t["size"].tolist()
        assert not mask[i, :h, :w].any() and mask[i, h:].all() and mask[i, :, w:].all()
        assert (images[i, :, h:] == 0).all()


def test_coco_metrics_of_perfect_and_shifted_detections():
    data = SyntheticShapes(20, seed=5)
    gt = data.coco_ground_truth()
    perfect = [dict(image_id=a["image_id"], category_id=a["category_id"], bbox=a["bbox"], score=1.0)
               for a in gt["annotations"]]
    assert coco_metrics(gt, perfect) == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0}
    # Shifting every box by 30% of its width keeps IoU in (0.5, 0.75): AP50 stays 1, AP75 drops to 0.
    shifted = [dict(d, bbox=[d["bbox"][0] + 0.15 * d["bbox"][2]] + d["bbox"][1:]) for d in perfect]
    m = coco_metrics(gt, shifted)
    assert m["AP50"] == 1.0 and m["AP75"] == 0.0


def test_postprocess_scales_boxes_to_pixels():
    logits = torch.full((1, 2, 3), -10.0)
    logits[0, 1, 2] = 10.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.5, 0.5, 1.0]]])
    sizes = torch.tensor([[40, 80]])  # h, w
    result = postprocess({"pred_logits": logits, "pred_boxes": boxes}, sizes, focal=True, top_k=1)[0]
    assert result["labels"].tolist() == [2]
    torch.testing.assert_close(result["boxes"], torch.tensor([[0.0, 0.0, 40.0, 40.0]]))
    softmax = postprocess({"pred_logits": torch.cat([logits, torch.zeros(1, 2, 1)], -1), "pred_boxes": boxes},
                          sizes, focal=False)[0]
    assert softmax["labels"].tolist()[1] == 2 and len(softmax["scores"]) == 2


def test_set_epoch_draws_new_images_reproducibly():
    data = SyntheticShapes(4, seed=0)
    fixed, _ = data[1]
    data.set_epoch(3)
    fresh, _ = data[1]
    assert not torch.equal(fixed, fresh)
    assert torch.equal(fresh, data[1][0])
    data.set_epoch(None)
    assert torch.equal(fixed, data[1][0])
