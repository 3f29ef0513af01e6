"""The DETR family's convergence table, in miniature: every model trained on the synthetic shapes
task with the same backbone and hidden sizes (the ``small`` presets), the same data, batch and
learning-rate schedule, and the same wall-clock budget, one after the other in this process;
AP / AP50 / AP75 on the held-out split recorded against training time and steps.

``python -m detr_ops.models.convergence --minutes 12 --out runs/convergence``

Writes ``DIR/<model>/`` (each run's log and checkpoint), ``DIR/results.json`` (every evaluation),
``DIR/table.md`` (the markdown table) and ``DIR/ap50_vs_minutes.png``. ``--from-results`` redraws
the table and plot from an earlier ``results.json`` without training. Timings are only comparable
within one session on a quiet machine: state the machine and its load with the table.
"""
import argparse
import json
import os
import platform
import time

import torch

from detr_ops.models import train

RUNS = {
    "detr": ("DETR", ["--model", "detr"]),
    "deformable_detr": ("Deformable DETR (box refinement)", ["--model", "deformable_detr"]),
    "dino": ("DINO", ["--model", "dino"]),
    "dino_one_to_many": ("DINO + one-to-many (H-DETR, k=6)", ["--model", "dino", "--one-to-many", "6"]),
    "dino_co_head": ("DINO + Co-DETR-style ATSS head", ["--model", "dino", "--co-head"]),
    "dino_groups": ("DINO + Group DETR (K=4)", ["--model", "dino", "--groups", "4"]),
}
DEFAULT = ["detr", "deformable_detr", "dino", "dino_one_to_many", "dino_co_head"]
FRACTIONS = (0.25, 0.5, 0.75)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=12.0, help="training budget per model")
    p.add_argument("--out", required=True)
    p.add_argument("--models", default=",".join(DEFAULT), help=f"comma-separated, from {sorted(RUNS)}")
    p.add_argument("--eval-every-minutes", type=float, default=None, help="default: a quarter of --minutes")
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--from-results", default=None, help="only redraw the table and plot from this results.json")
    return p.parse_args(argv)


def run(name, args):
    label, flags = RUNS[name]
    out = os.path.join(args.out, name)
    os.makedirs(out, exist_ok=True)
    log_path = os.path.join(out, "log.jsonl")
    if os.path.exists(log_path):
        os.remove(log_path)  # train.py appends
    every = args.eval_every_minutes or args.minutes / 4
    summary = train.main(flags + ["--max-minutes", str(args.minutes), "--epochs", "1000000",
                                  "--eval-every-minutes", str(every), "--val-size", str(args.val_size),
                                  "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                                  "--seed", str(args.seed), "--device", args.device, "--out", out, "--no-progress"])
    with open(log_path) as f:
        curve = [json.loads(line) for line in f if line.strip()]
    curve = [r for r in curve if "AP" in r]
    return {"name": name, "label": label, "flags": flags, "median_step_s": summary["median_step_s"],
            "steps": summary["step"], "train_minutes": summary["train_minutes"], "curve": curve}


def _at(curve, minutes):
    """The first evaluation at or after ``minutes`` of training: train.py evaluates at the first
    step past each ``--eval-every-minutes`` mark (default: the table's quarter marks)."""
    later = [r for r in curve if r["train_minutes"] >= minutes - 1e-9]
    return later[0] if later else None


def table(results, budget):
    head = ("| model | steps | median step | " + " | ".join(f"AP50 @ {f * budget:g} min" for f in FRACTIONS)
            + f" | AP @ {budget:g} min | AP50 | AP75 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        cells = []
        for f in FRACTIONS:
            rec = _at(r["curve"], f * budget)
            cells.append(f"{rec['AP50']:.3f}" if rec else "-")
        last = r["curve"][-1]
        lines.append(f"| {r['label']} | {r['steps']:,} | {r['median_step_s']:.3f} s | " + " | ".join(cells)
                     + f" | {last['AP']:.3f} | {last['AP50']:.3f} | {last['AP75']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        xs = [0.0] + [c["train_minutes"] for c in r["curve"]]
        ys = [0.0] + [c["AP50"] for c in r["curve"]]
        ax.plot(xs, ys, marker="o", markersize=3, label=r["label"])
    ax.set_xlabel("training time (minutes, 2 CPU cores)")
    ax.set_ylabel("AP50 (held-out synthetic split)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results, meta, out):
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    text = table(results, meta["minutes"])
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    plot(results, os.path.join(out, "ap50_vs_minutes.png"))
    return text


def main(argv=None):
    args = parse_args(argv)
    if args.from_results:
        with open(args.from_results) as f:
            saved = json.load(f)
        os.makedirs(args.out, exist_ok=True)
        text = write(saved["results"], saved["meta"], args.out)
        print(text)
        return saved["results"]
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {sorted(RUNS)}")
    os.makedirs(args.out, exist_ok=True)
    meta = {"minutes": args.minutes, "batch_size": args.batch_size, "threads": args.threads, "val_size": args.val_size,
            "seed": args.seed, "device": args.device, "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None}
    results = []
    for name in names:
        results.append(run(name, args))
        # Written after every model, so an interrupted session keeps what it measured.
        meta["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        text = write(results, meta, args.out)
    print(text)
    return results


if __name__ == "__main__":
    main()
