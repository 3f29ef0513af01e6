"""COCO-format datasets: a folder of real PNG / JPEG files written from the synthetic generator
(sparse category ids), read back with Pillow, resized, scored with pycocotools in original pixels;
every kind of bad dataset fails at construction with a message naming the problem, or is handled
as documented; the CLI trains, evaluates and visualises from such a folder."""
import json
import os

import pytest
import torch

from detr_ops.models import evaluate, train, visualize
from detr_ops.models.coco import CocoDatasetError, CocoDetection, resolve
from detr_ops.models.data import SyntheticShapes, collate, export_coco
from detr_ops.models.evaluate import coco_metrics, predict

CATEGORY_IDS = [3, 7, 11]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    export_coco(SyntheticShapes(16, seed=0, image_size=(40, 64)), str(root), "train", "png", CATEGORY_IDS)
    export_coco(SyntheticShapes(8, seed=1, image_size=(40, 64)), str(root), "val", "jpg", CATEGORY_IDS)
    return root


def _copy(folder, tmp_path, edit=None, split="train"):
    """A copy of the train split whose JSON ``edit`` modifies in place."""
    import shutil

    root = tmp_path / "edited"
    shutil.copytree(folder, root)
    ann = root / "annotations" / f"instances_{split}.json"
    data = json.loads(ann.read_text())
    if edit:
        edit(data, root)
    ann.write_text(json.dumps(data))
    return resolve(str(root), split)


def test_reads_back_what_was_written(folder):
    synthetic = SyntheticShapes(16, seed=0, image_size=(40, 64))
    data = CocoDetection(*resolve(str(folder), "train"), image_size=None)
    assert len(data) == 16 and data.num_classes == 3 and data.category_ids == CATEGORY_IDS
    assert data.class_names == ["rectangle", "ellipse", "triangle"]
    assert data.max_targets == max(len(synthetic[i][1]["labels"]) for i in range(16))
    for i in (0, 5):
        image, target = data[i]
        ref_image, ref_target = synthetic[i]
        # PNG is lossless: the pixels are the generator's up to 8-bit quantisation.
        assert image.shape == ref_image.shape and (image - ref_image.clamp(-2, 2)).abs().max() < 0.5 / 255 / 0.25 + 1e-5
        assert target["labels"].tolist() == ref_target["labels"].tolist()  # labels 0..2 from ids 3, 7, 11
        torch.testing.assert_close(target["boxes"], ref_target["boxes"])
        assert target["size"].tolist() == target["orig_size"].tolist() == ref_target["size"].tolist()


def test_resize_keeps_normalised_boxes_and_original_size(folder):
    full = CocoDetection(*resolve(str(folder), "val"), image_size=None)
    small = CocoDetection(*resolve(str(folder), "val"), image_size=32)
    for i in range(len(full)):
        image, target = small[i]
        h, w = full[i][1]["size"].tolist()
        expected = [round(h * 32 / max(h, w)), round(w * 32 / max(h, w))]
        assert list(image.shape[1:]) == expected and target["size"].tolist() == expected
        assert target["orig_size"].tolist() == [h, w]
        torch.testing.assert_close(target["boxes"], full[i][1]["boxes"])


def test_predictions_are_scored_in_original_pixels_and_ids(folder):
    data = CocoDetection(*resolve(str(folder), "val"), image_size=32)

    class Oracle(torch.nn.Module):
        """Returns the ground truth as predictions (one query per target, padded with misses)."""

        def forward(self, images, mask, targets=None):
            logits = torch.full((len(self.targets), 4, 3), -20.0)
            boxes = torch.full((len(self.targets), 4, 4), 0.1)
            for i, t in enumerate(self.targets):
                n = len(t["labels"])
                logits[i, torch.arange(n), t["labels"]] = 20.0
                boxes[i, :n] = t["boxes"]
            return {"pred_logits": logits, "pred_boxes": boxes}

    oracle = Oracle()
    detections = []
    for i in range(len(data)):
        oracle.targets = [data[i][1]]
        detections += predict(oracle, data, True, "cpu", batch_size=1, indices=[i])
    assert {d["category_id"] for d in detections} <= set(CATEGORY_IDS)
    assert coco_metrics(data.coco_ground_truth(), detections) == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0}


def test_bad_json_and_references(folder, tmp_path):
    with pytest.raises(CocoDatasetError, match="not valid JSON"):
        bad = tmp_path / "bad.json"
        bad.write_text("{")
        CocoDetection(str(folder), str(bad))
    cases = [
        (lambda d, r: d.pop("categories"), "missing or non-list 'categories'"),
        (lambda d, r: d["annotations"][0].update(category_id=99), r"annotation 1 has category_id 99.*declared"),
        (lambda d, r: d["annotations"][1].update(image_id=12345), r"annotation 2 refers to image_id 12345"),
        (lambda d, r: d["annotations"][0].update(bbox=[1, 2, float("nan"), 3]), "4 finite numbers"),
        (lambda d, r: d["images"].append(dict(d["images"][0])), "duplicate image id"),
        (lambda d, r: os.remove(r / "images" / "train" / d["images"][3]["file_name"]), r"1 image file\(s\).*missing"),
        (lambda d, r: d["images"][2].update(width=999), "but the JSON says 999x"),
        (lambda d, r: (r / "images" / "train" / d["images"][4]["file_name"]).write_bytes(b"\x89PNG\r\n\x1a\n garbage"),
         "cannot be used"),
    ]
    for i, (edit, message) in enumerate(cases):
        with pytest.raises(CocoDatasetError, match=message):
            CocoDetection(*_copy(folder, tmp_path / str(i), edit))


def test_documented_handling(folder, tmp_path):
    def edit(d, root):
        anns = d["annotations"]
        anns[0]["bbox"] = [-5.0, -5.0, 20.0, 20.0]  # reaches outside: clipped to [0, 0, 15, 15]
        anns[1]["bbox"] = [70.0, 10.0, 5.0, 5.0]  # entirely outside: empty after clipping, dropped
        anns[2]["iscrowd"] = 1  # crowd: not a target, still in the ground truth
        d["annotations"] = [a for a in anns if a["image_id"] != d["images"][5]["id"]]  # an empty image

    with pytest.warns(UserWarning, match="clipped"):
        data = CocoDetection(*_copy(folder, tmp_path, edit), image_size=None)
    assert data.report["clipped"] >= 2 and data.report["dropped_empty"] == 1 and data.report["crowd"] == 1
    assert data.report["images_without_targets"] >= 1
    first = next(a for a in data.coco_ground_truth()["annotations"] if a["id"] == 1)
    assert first["bbox"] == [0.0, 0.0, 15.0, 15.0]
    assert any(a["iscrowd"] for a in data.coco_ground_truth()["annotations"])
    image, target = data[5]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    images, mask, targets = collate([data[i] for i in range(6)])
    assert images.shape[0] == 6


def test_cli_trains_evaluates_and_visualises(folder, tmp_path, capsys):
    out = tmp_path / "run"
    summary = train.main(["--model", "dino", "--coco-root", str(folder), "--epochs", "1", "--batch-size", "8",
                          "--out", str(out), "--no-progress", "--threads", "1", "--co-head", "--one-to-many", "2"])
    assert summary["step"] == 2 and 0.0 <= summary["AP50"] <= 1.0
    ckpt = torch.load(out / "checkpoint.pth", weights_only=False)
    assert ckpt["config"]["category_ids"] == CATEGORY_IDS and ckpt["config"]["max_targets"] >= 1
    capsys.readouterr()
    evaluate.main(["--checkpoint", str(out / "checkpoint.pth")])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(metrics["AP50"] - summary["AP50"]) < 1e-9
    below = visualize.main(["--checkpoint", str(out / "checkpoint.pth"), "--out", str(tmp_path / "p.png"),
                            "--num-images", "2", "--threshold", "1.0"])
    printed = capsys.readouterr().out
    # Nothing can pass a threshold of 1: the command says so, with the highest score.
    assert below[0] is not None and 0.0 < below[0] < 1.0
    assert f"no prediction above --threshold 1; the highest score was {below[0]:.3f}" in printed
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_cli_reports_a_bad_dataset_before_training(folder, tmp_path):
    root, _ = os.path.split(_copy(folder, tmp_path, lambda d, r: d["annotations"][0].update(category_id=5))[1])
    with pytest.raises(CocoDatasetError, match="category_id 5"):
        train.main(["--model", "detr", "--coco-root", os.path.dirname(root), "--epochs", "1", "--out",
                    str(tmp_path / "r"), "--no-progress"])
