"""torchrun worker of test_models_ddp: one DDP training step of a tiny Deformable DETR (gloo, CPU).

Rank r takes its half of a fixed batch; rank 0 saves the averaged gradients and the loss terms to
the file named by argv[1]. Run: ``torchrun --nproc_per_node 2 tests/models_ddp_worker.py OUT.pt``.
"""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detr_ops.models import distributed  # noqa: E402
from tests.models_tiny import batch, tiny_model  # noqa: E402


def main():
    rank, world, _ = distributed.init("cpu")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, criterion = tiny_model("deformable_detr")
    images, mask, targets = batch(4)
    share = len(targets) // world
    mine = slice(rank * share, (rank + 1) * share)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    losses, _ = criterion(ddp(images[mine], mask[mine]), targets[mine])
    criterion.total(losses).backward()
    num_boxes = criterion.num_boxes(targets[mine], "cpu")  # a collective: every rank calls it
    if rank == 0:
        torch.save({"grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
                    "num_boxes": num_boxes}, sys.argv[1])
    dist.barrier()
    distributed.cleanup()


if __name__ == "__main__":
    main()
