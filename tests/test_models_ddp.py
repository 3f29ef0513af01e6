"""Two-process DDP on CPU (torchrun, gloo) computes the gradients of one process on the whole batch.

With Deformable DETR's losses (sums over images divided by the number of boxes) and num_boxes
averaged over ranks, DDP's gradient average equals the single-process full-batch gradient, so the
comparison is exact up to float32 summation order. This is the check that ``num_boxes`` is reduced
across processes: normalising by each rank's own count would give different gradients whenever
the ranks hold different numbers of boxes (they do in this batch).
"""
import os
import subprocess
import sys

import torch

from tests.models_tiny import batch, tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_process_ddp_step_matches_one_process(tmp_path):
    out = tmp_path / "ddp.pt"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "tests", "models_ddp_worker.py"), str(out)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = torch.load(out)

    torch.manual_seed(0)
    model, criterion = tiny_model("deformable_detr")
    images, mask, targets = batch(4)
    counts = [len(t["labels"]) for t in targets]
    assert sum(counts[:2]) != sum(counts[2:])  # the ranks see different numbers of boxes
    losses, _ = criterion(model(images, mask), targets)
    criterion.total(losses).backward()
    torch.testing.assert_close(ddp["num_boxes"], torch.tensor(sum(counts) / 2.0))
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ddp["grads"].keys()
    for n in grads:
        torch.testing.assert_close(ddp["grads"][n], grads[n], rtol=1e-4, atol=1e-6, msg=n)
