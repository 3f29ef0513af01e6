"""Train DETR / Deformable DETR / DINO on the synthetic shapes task or a COCO-format dataset.

``python -m detr_ops.models.train --model dino --device cpu --epochs 20 --batch-size 16 --out runs/dino``
``python -m detr_ops.models.train --model dino --coco-root DIR --image-size 512 --out runs/mine``

Options: ``--amp`` (float16 + grad scaling on CUDA, bfloat16 on CPU), ``--compile`` (torch.compile
of the model), ``--ops reference`` (plain PyTorch ops), ``--max-minutes`` (stop after this much
training time; the learning-rate drop follows whichever of steps and time runs out first),
training-only options ``--one-to-many K`` (H-DETR), ``--groups K`` (Group DETR), ``--co-head``
(DINO: Co-DETR-style ATSS head), distributed data parallel under ``torchrun --nproc_per_node N``
(gloo on CPU, nccl on CUDA; ``--batch-size`` is per process). Writes ``checkpoint.pth`` and
``log.jsonl`` into ``--out`` and prints the final AP / AP50 / AP75 on the held-out split as JSON.

A COCO-format dataset: ``--coco-root DIR`` (``DIR/annotations/instances_{train,val}.json`` and
images in ``DIR/images/{train,val}``, ``DIR/{train,val}[2017]`` or ``DIR/images``) or explicit
``--train-images/--train-ann/--val-images/--val-ann``; ``--image-size`` is then the longer side.
"""
import argparse
import contextlib
import json
import os
import time

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from detr_ops.models import datasets, distributed
from detr_ops.models.build import MODELS, build, is_focal, model_overrides
from detr_ops.models.data import collate
from detr_ops.models.evaluate import evaluate


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODELS, default="deformable_detr")
    p.add_argument("--preset", choices=("small", "original"), default="small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16, help="images per process and step")
    p.add_argument("--out", required=True, help="output folder: checkpoint.pth, log.jsonl")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--ops", choices=("detr_ops", "reference"), default="detr_ops")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--clip-max-norm", type=float, default=0.1)
    p.add_argument("--lr-drop", type=float, default=0.8, help="fraction of training after which lr is x0.1")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-clock training budget")
    p.add_argument("--train-size", type=int, default=2000, help="synthetic images per epoch")
    p.add_argument("--val-size", type=int, default=500, help="held-out synthetic images")
    p.add_argument("--fixed-train-set", action="store_true",
                   help="reuse the same --train-size images every epoch (default: fresh images each epoch)")
    p.add_argument("--image-size", type=int, default=64, help="synthetic image side; COCO: the longer side")
    p.add_argument("--max-objects", type=int, default=3, help="synthetic objects per image, at most")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N epochs (0: only at the end)")
    p.add_argument("--eval-every-minutes", type=float, default=0,
                   help="also evaluate each time this much training time has passed (curves against time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: cores / processes)")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--two-stage", action="store_true")
    p.add_argument("--no-box-refine", action="store_true")
    p.add_argument("--one-to-many", type=int, default=0, metavar="K",
                   help="H-DETR hybrid branch (deformable_detr, dino): extra queries matched with every target "
                        "repeated K times (H-DETR: 6); training only")
    p.add_argument("--one-to-many-queries", type=int, default=None,
                   help="queries of the hybrid branch (default 5 x the model's queries, H-DETR's 1500 for 300)")
    p.add_argument("--groups", type=int, default=1, metavar="K",
                   help="Group DETR (deformable_detr, dino): K query groups, each matched one-to-one; training only")
    p.add_argument("--co-head", action="store_true",
                   help="dino: Co-DETR-style ATSS head on the encoder, its positives as extra queries; training only")
    p.add_argument("--dn-number", type=int, default=None,
                   help="dino: DINO's dn_number (default: the preset's, 2 small / 100 original); >= 50 gives "
                        "dn_number // max-targets denoising groups, below 50 2 x dn_number groups")
    p.add_argument("--max-targets", type=int, default=None,
                   help="dino: target slots per image for denoising and the co head (default: the dataset's "
                        "largest count); images with more keep their first ones for these branches")
    p.add_argument("--coco-root", default=None, help="COCO-format dataset folder (instead of the synthetic task)")
    p.add_argument("--train-images", default=None)
    p.add_argument("--train-ann", default=None)
    p.add_argument("--val-images", default=None)
    p.add_argument("--val-ann", default=None)
    p.add_argument("--no-check-images", action="store_true",
                   help="COCO: skip opening every image at start-up (only for datasets known to be sound)")
    p.add_argument("--resume", default=None)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def param_groups(model, lr):
    # Deformable DETR trains its sampling-offset and reference-point projections 10x slower: they
    # move where attention looks, and large early steps scatter the sampling points.
    slow = [p for n, p in model.named_parameters() if p.requires_grad
            and ("sampling_offsets" in n or "reference_points" in n)]
    slow_ids = {id(p) for p in slow}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in slow_ids]
    return [{"params": rest, "lr": lr}, {"params": slow, "lr": lr * 0.1, "lr_mult": 0.1}]


def progress_bar(iterable, enabled, **kw):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("progress bars need tqdm: pip install tqdm (or pass --no-progress)") from e
    return tqdm(iterable, **kw)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    rank, world, local_rank = distributed.init(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
    threads = args.threads or max(1, (os.cpu_count() or 1) // world)
    if device.type == "cpu":
        torch.set_num_threads(threads)
    torch.manual_seed(args.seed)  # same initial weights on every rank (DDP also broadcasts them)
    main_proc = distributed.is_main()
    os.makedirs(args.out, exist_ok=True)
    config = vars(args)

    # Every dataset check runs here, before the first step (a bad COCO file fails now, not mid-epoch).
    train_set = datasets.train_set(config)
    config.update(num_classes=train_set.num_classes, category_ids=train_set.category_ids,
                  class_names=train_set.class_names)
    if args.model == "dino" and not args.max_targets:
        config["max_targets"] = max(1, train_set.max_targets)
    val_set = datasets.val_set(config)
    if world > 1:
        sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed)
    else:
        sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(args.seed))
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, collate_fn=collate, drop_last=True,
                        num_workers=args.workers)
    if len(loader) == 0:
        raise ValueError(f"the training set has {len(train_set)} images, fewer than one batch of {args.batch_size}")

    model, criterion = build(args.model, train_set.num_classes, args.preset, ops=args.ops, **model_overrides(config))
    model.to(device)
    criterion.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, args.lr), lr=args.lr, weight_decay=args.weight_decay)
    start_epoch = 0
    if args.resume:
        ckpt = torch.load(args.resume, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = ckpt["epoch"] + 1

    forward_model = model
    if world > 1:
        forward_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None)
    if args.compile:
        forward_model = torch.compile(forward_model)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")
    focal = is_focal(args.model)

    def log_record(record):
        if main_proc:
            print(json.dumps(record), flush=True)
            with open(os.path.join(args.out, "log.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    total_steps = args.epochs * len(loader)
    budget = None if args.max_minutes is None else args.max_minutes * 60
    step, train_time, step_times, log = 0, 0.0, [], []
    next_eval = args.eval_every_minutes * 60 if args.eval_every_minutes else None
    stop = False
    loss = torch.zeros(())
    for epoch in range(start_epoch, args.epochs):
        if world > 1:
            sampler.set_epoch(epoch)
        if not args.fixed_train_set and hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        model.train()
        bar = progress_bar(loader, main_proc and not args.no_progress, desc=f"epoch {epoch}", leave=False)
        # train_time is the loop's wall time including data loading (the budget --max-minutes
        # counts); step_times are the model + loss + optimizer steps alone (the reported step time).
        last = time.perf_counter()
        for images, mask, targets in bar:
            tic = time.perf_counter()
            # Step learning-rate drop at a fraction of the run, measured in steps or in time.
            done = step / total_steps if budget is None else max(step / total_steps, train_time / budget)
            factor = 0.1 if done >= args.lr_drop else 1.0
            for group in optimizer.param_groups:
                group["lr"] = args.lr * group.get("lr_mult", 1.0) * factor
            images, mask = images.to(device), mask.to(device)
            targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
            autocast = torch.autocast(device.type, dtype=amp_dtype) if args.amp else contextlib.nullcontext()
            with autocast:
                outputs = forward_model(images, mask, targets)
            # Matching and losses in float32: the assignment should not depend on rounding.
            outputs = _to_float(outputs)
            losses, _ = criterion(outputs, targets)
            loss = criterion.total(losses)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if args.clip_max_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_max_norm)
            scaler.step(optimizer)
            scaler.update()
            now = time.perf_counter()
            step_times.append(now - tic)
            train_time += now - last
            step += 1
            if main_proc and hasattr(bar, "set_postfix") and step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{args.lr * factor:.1e}")
            if budget is not None and distributed_any(train_time >= budget, device):
                stop = True
                break
            if next_eval is not None and distributed_any(train_time >= next_eval, device):
                # Mid-epoch evaluation for curves against time; its wall time is not training time.
                record = {"epoch": epoch, "step": step, "train_minutes": train_time / 60, "loss": loss.item()}
                record.update(evaluate(model, val_set, focal, device))
                log.append(record)
                log_record(record)
                model.train()
                while next_eval <= train_time:
                    next_eval += args.eval_every_minutes * 60
            last = time.perf_counter()
        record = {"epoch": epoch, "step": step, "train_minutes": train_time / 60, "loss": loss.item()}
        final = stop or epoch == args.epochs - 1
        if final or (args.eval_every and (epoch + 1) % args.eval_every == 0):
            record.update(evaluate(model, val_set, focal, device))
        log.append(record)
        log_record(record)
        if main_proc:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                        "config": config, "metrics": record}, os.path.join(args.out, "checkpoint.pth"))
        if stop:
            break
    # Median step time, skipping the first steps (allocator warm-up, compilation).
    warm = sorted(step_times[min(10, len(step_times) // 2):]) or [0.0]
    summary = dict(log[-1], world_size=world, median_step_s=warm[len(warm) // 2], ops=args.ops)
    if main_proc:
        print("FINAL " + json.dumps(summary), flush=True)
    distributed.cleanup()
    return summary


def _to_float(outputs):
    if isinstance(outputs, dict):
        return {k: _to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [_to_float(v) for v in outputs]
    return outputs.float() if torch.is_tensor(outputs) and outputs.dtype in (torch.float16, torch.bfloat16) else outputs


def distributed_any(flag, device):
    """True on every rank when any rank's flag is set, so all ranks stop at the same step."""
    if distributed.world_size() == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


if __name__ == "__main__":
    main()
