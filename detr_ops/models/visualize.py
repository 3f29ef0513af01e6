"""Draw a trained model's detections over held-out images (synthetic, or the COCO-format folder's
``val`` split the model was trained with).

``python -m detr_ops.models.visualize --checkpoint runs/ddetr/checkpoint.pth --out preds.png``
Predictions above ``--threshold`` are drawn in colour with class and score; ground truth dashed white.
When no prediction on an image passes the threshold, the image says so with its highest score,
and so does the command's output.
"""
import argparse

import torch

from detr_ops.models import datasets
from detr_ops.models.build import is_focal, load_checkpoint
from detr_ops.models.data import MEAN, STD, collate
from detr_ops.models.postprocess import postprocess


def draw(images, targets, results, path, threshold=0.5, columns=4, class_names=None):
    """Returns, per image, ``None`` when some prediction passed ``threshold``, else the highest score."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    colours = plt.get_cmap("tab10")
    rows = (len(images) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    below = []
    for ax, image, target, result in zip(axes.flat, images, targets, results):
        h, w = target["size"].tolist()
        ax.imshow((image[:, :h, :w] * STD + MEAN).clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
        for cx, cy, bw, bh in target["boxes"].tolist():
            ax.add_patch(Rectangle(((cx - bw / 2) * w - 0.5, (cy - bh / 2) * h - 0.5), bw * w, bh * h, fill=False,
                                   edgecolor="white", linestyle="--", linewidth=1))
        keep = result["scores"] > threshold
        for score, label, (x0, y0, x1, y1) in zip(result["scores"][keep].tolist(), result["labels"][keep].tolist(),
                                                  result["boxes"][keep].tolist()):
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colours(label % 10),
                                   linewidth=2))
            name = class_names[label] if class_names else str(label)
            ax.text(x0, y0 - 1, f"{name} {score:.2f}", color=colours(label % 10), fontsize=7)
        if keep.any():
            below.append(None)
        else:
            best = float(result["scores"].max()) if result["scores"].numel() else float("nan")
            below.append(best)
            ax.set_title(f"nothing above {threshold:g} (best {best:.3f})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return below


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", default="preds.png")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    model, config = load_checkpoint(args.checkpoint, args.device)
    data = datasets.val_set(config, args.num_images)
    count = min(args.num_images, len(data))
    images, mask, targets = collate([data[i] for i in range(count)])
    with torch.no_grad():
        outputs = model(images.to(args.device), mask.to(args.device))
    # Drawn over the resized image the model saw: boxes in its pixels.
    sizes = torch.stack([t["size"] for t in targets]).to(args.device)
    results = postprocess(outputs, sizes, focal=is_focal(config["model"]))
    below = draw(images, targets, [{k: v.cpu() for k, v in r.items()} for r in results], args.out, args.threshold,
                 class_names=data.class_names)
    for target, best in zip(targets, below):
        if best is not None:
            print(f"image {target['image_id']}: no prediction above --threshold {args.threshold:g}; "
                  f"the highest score was {best:.3f}")
    print(f"wrote {args.out}")
    return below


if __name__ == "__main__":
    main()
