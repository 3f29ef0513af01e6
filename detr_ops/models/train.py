"""Train DETR / Deformable DETR on the synthetic shapes dataset.

``python -m detr_ops.models.train --model deformable_detr --device cpu --epochs 20 --batch-size 16 --out runs/ddetr``

Options: ``--amp`` (float16 + grad scaling on CUDA, bfloat16 on CPU), ``--compile`` (torch.compile
of the model), ``--ops reference`` (plain PyTorch ops), ``--max-minutes`` (stop after this much
training time; the learning-rate drop follows whichever of steps and time runs out first),
distributed data parallel under ``torchrun --nproc_per_node N`` (gloo on CPU, nccl on CUDA;
``--batch-size`` is per process). Writes ``checkpoint.pth`` and ``log.jsonl`` into ``--out`` and
prints the final AP / AP50 / AP75 on the held-out split as JSON.
"""
import argparse
import contextlib
import json
import os
import time

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from detr_ops.models import distributed
from detr_ops.models.build import build, is_focal
from detr_ops.models.data import CLASSES, SyntheticShapes, collate
from detr_ops.models.evaluate import evaluate


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("deformable_detr", "detr"), default="deformable_detr")
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
    p.add_argument("--train-size", type=int, default=2000, help="images per epoch")
    p.add_argument("--val-size", type=int, default=500, help="held-out images")
    p.add_argument("--fixed-train-set", action="store_true",
                   help="reuse the same --train-size images every epoch (default: fresh images each epoch)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--max-objects", type=int, default=3)
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N epochs (0: only at the end)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: cores / processes)")
    p.add_argument("--two-stage", action="store_true")
    p.add_argument("--no-box-refine", action="store_true")
    p.add_argument("--resume", default=None)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def model_overrides(config):
    if config["model"] == "detr":
        return {}
    return {"two_stage": config["two_stage"], "with_box_refine": not config["no_box_refine"]}


def load_checkpoint(path, device="cpu", ops=None):
    """Rebuilds the model a checkpoint was trained as and loads its weights: ``(model, config)``."""
    ckpt = torch.load(path, map_location=device, weights_only=False)
    config = ckpt["config"]
    model, _ = build(config["model"], len(CLASSES), config["preset"],
                     ops=ops or config["ops"], **model_overrides(config))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), config


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

    train_set = SyntheticShapes(args.train_size, seed=args.seed, image_size=args.image_size,
                                max_objects=args.max_objects)
    val_set = SyntheticShapes(args.val_size, seed=args.seed + 1, image_size=args.image_size,
                              max_objects=args.max_objects)
    if world > 1:
        sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed)
    else:
        sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(args.seed))
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, collate_fn=collate, drop_last=True)

    model, criterion = build(args.model, train_set.num_classes, args.preset, ops=args.ops,
                             **model_overrides(config))
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

    total_steps = args.epochs * len(loader)
    budget = None if args.max_minutes is None else args.max_minutes * 60
    step, train_time, step_times, log = 0, 0.0, [], []
    stop = False
    for epoch in range(start_epoch, args.epochs):
        if world > 1:
            sampler.set_epoch(epoch)
        if not args.fixed_train_set:
            train_set.set_epoch(epoch)
        model.train()
        bar = progress_bar(loader, main_proc and not args.no_progress, desc=f"epoch {epoch}", leave=False)
        # train_time is the loop's wall time including data generation (the budget --max-minutes
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
                outputs = forward_model(images, mask)
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
            last = now
            step += 1
            if main_proc and hasattr(bar, "set_postfix") and step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{args.lr * factor:.1e}")
            if budget is not None and distributed_any(train_time >= budget, device):
                stop = True
                break
        record = {"epoch": epoch, "step": step, "train_minutes": train_time / 60, "loss": loss.item()}
        last = stop or epoch == args.epochs - 1
        if last or (args.eval_every and (epoch + 1) % args.eval_every == 0):
            record.update(evaluate(model, val_set, is_focal(args.model), device))
        log.append(record)
        if main_proc:
            print(json.dumps(record), flush=True)
            with open(os.path.join(args.out, "log.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
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
