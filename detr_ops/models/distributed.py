"""torchrun integration: process group setup (gloo on CPU, nccl on CUDA) and small helpers."""
import os

import torch
import torch.distributed as dist


def init(device_type: str):
    """Initialises the process group when launched by torchrun; returns (rank, world_size, local_rank)."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_objects(obj):
    """Every rank's ``obj`` as a list on every rank (one-element list without a process group)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def reduce_mean(values: dict) -> dict:
    """Averages a dict of scalar tensors over ranks (for logging)."""
    if world_size() == 1:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in keys])
    dist.all_reduce(stacked)
    stacked /= world_size()
    return dict(zip(keys, stacked))


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
