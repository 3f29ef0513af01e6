"""Draw a trained model's detections over held-out synthetic images.

``python -m detr_ops.models.visualize --checkpoint runs/ddetr/checkpoint.pth --out preds.png``
Predictions above ``--threshold`` are drawn in colour with class and score; ground truth dashed white.
"""
import argparse

import torch

from detr_ops.models.data import CLASSES, MEAN, STD, SyntheticShapes, collate
from detr_ops.models.postprocess import postprocess


def draw(images, targets, results, path, threshold=0.5, columns=4):
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    colours = plt.get_cmap("tab10")
    rows = (len(images) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, target, result in zip(axes.flat, images, targets, results):
        h, w = target["size"].tolist()
        ax.imshow((image[:, :h, :w] * STD + MEAN).clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
        for cx, cy, bw, bh in target["boxes"].tolist():
            ax.add_patch(Rectangle(((cx - bw / 2) * w - 0.5, (cy - bh / 2) * h - 0.5), bw * w, bh * h, fill=False,
                                   edgecolor="white", linestyle="--", linewidth=1))
        keep = result["scores"] > threshold
        for score, label, (x0, y0, x1, y1) in zip(result["scores"][keep].tolist(), result["labels"][keep].tolist(),
                                                  result["boxes"][keep].tolist()):
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colours(label),
                                   linewidth=2))
            ax.text(x0, y0 - 1, f"{CLASSES[label]} {score:.2f}", color=colours(label), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    from detr_ops.models.train import load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", default="preds.png")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    model, config = load_checkpoint(args.checkpoint, args.device)
    data = SyntheticShapes(args.num_images, seed=config["seed"] + 1, image_size=config["image_size"],
                           max_objects=config["max_objects"])
    images, mask, targets = collate([data[i] for i in range(args.num_images)])
    with torch.no_grad():
        outputs = model(images.to(args.device), mask.to(args.device))
    sizes = torch.stack([t["size"] for t in targets]).to(args.device)
    results = postprocess(outputs, sizes, focal=config["model"] != "detr")
    draw(images, targets, [{k: v.cpu() for k, v in r.items()} for r in results], args.out, args.threshold)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
