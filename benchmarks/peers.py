"""Other packages' kernels that the benchmark suite times next to detr_ops, when they are installed.

* ``torch-linear-assignment`` 0.1.0: ``batch_linear_assignment(cost [B, W, T]) -> [B, W]`` (its
  Triton solver on a GPU), and its legacy CUDA extension when it was built
  (``TLA_BUILD_LEGACY_CUDA=1``; the package keeps it for such comparisons);
* ``deformable-detr-cuda``: the original Deformable DETR CUDA kernel as the ``ms-deform-attn`` 1.0.1
  wheel packages it (extension module ``MultiScaleDeformableAttention``; CUDA only, float32/float64);
* ``torch-ms-deform-attn`` 0.1.1: the same kernel, maintained and built from its sdist.

The GPU check installs them with ``--peers`` (``scripts/fetch_gpu_wheels.sh`` downloads them). Each
finder returns only the peers that import and support the device, so their benchmark rows skip
cleanly elsewhere. ``python -m benchmarks.peers`` lists them and checks each against detr_ops on a
small input.
"""
import importlib
import sys
from typing import Callable, Dict

import torch


def _module(name):
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a peer that does not import (missing, or a broken build) is absent
        return None


def lsa_peers(device) -> Dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """{name: fn(cost [B, R, C]) -> col_for_row [B, R] int64} for the batched assignment peers that
    run on ``device`` (they are GPU solvers; on CPU torch-linear-assignment only loops SciPy)."""
    peers = {}
    if torch.device(device).type != "cuda":
        return peers
    tla = _module("torch_linear_assignment")
    if tla is not None:
        peers["torch-linear-assignment"] = tla.batch_linear_assignment
        assignment = _module("torch_linear_assignment.assignment")
        if _module("torch_linear_assignment._backend") is not None and assignment is not None:
            peers["torch-linear-assignment-legacy"] = assignment._batch_linear_assignment_cuda_legacy
    return peers


class _OriginalFunction(torch.autograd.Function):
    """Autograd around the ``MultiScaleDeformableAttention`` extension's two calls, as the original
    ``MSDeformAttnFunction`` does (its package installs it under the top-level name ``functions``,
    which is too generic to import safely)."""

    @staticmethod
    def forward(ctx, value, shapes, starts, locations, weights, im2col_step):
        ext = _module("MultiScaleDeformableAttention")
        ctx.im2col_step = im2col_step
        ctx.save_for_backward(value, shapes, starts, locations, weights)
        return ext.ms_deform_attn_forward(value, shapes, starts, locations, weights, im2col_step)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        ext = _module("MultiScaleDeformableAttention")
        value, shapes, starts, locations, weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = ext.ms_deform_attn_backward(
            value, shapes, starts, locations, weights, grad_output.contiguous(), ctx.im2col_step)
        return grad_value, None, None, grad_locations, grad_weights, None


def msda_peers(device) -> Dict[str, Callable]:
    """{name: fn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    -> [N, Lq, M*D]} (differentiable) for the MSDA peers that run on ``device``."""
    peers = {}
    if torch.device(device).type == "cuda" and _module("MultiScaleDeformableAttention") is not None:
        # im2col_step 64, the original's default (it takes min(batch, im2col_step) images at a time)
        peers["deformable-detr-cuda"] = lambda v, s, st, lo, a: _OriginalFunction.apply(v, s, st, lo, a, 64)
    tmsda = _module("torch_ms_deform_attn")
    if tmsda is not None and hasattr(tmsda, "ms_deform_attn"):
        peers["torch-ms-deform-attn"] = tmsda.ms_deform_attn
    return peers


def main() -> int:
    """Lists the usable peers, each checked against detr_ops on a small input of the GPU (or CPU)."""
    import detr_ops

    device = "cuda" if torch.cuda.is_available() else "cpu"
    failed = 0
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(4, 30, 9, generator=g).to(device)
    expected, _ = detr_ops.batched_linear_sum_assignment(cost)
    for name, fn in lsa_peers(device).items():
        try:
            same = torch.equal(fn(cost).long().cpu(), expected.cpu())
        except Exception as e:  # noqa: BLE001
            same = f"{type(e).__name__}: {e}"
        print(f"peers: {name}: {'matches detr_ops' if same is True else f'DIFFERS ({same})'}")
        failed += same is not True
    levels = torch.tensor([[6, 7], [3, 4]])
    starts = torch.tensor([0, 42])
    value = torch.randn(2, 54, 2, 8, generator=g)
    loc = torch.rand(2, 5, 2, 2, 3, 2, generator=g)
    attn = torch.rand(2, 5, 2, 2, 3, generator=g)
    inputs = [t.to(device) for t in (value, levels, starts, loc, attn)]
    reference = detr_ops.ms_deform_attn(*inputs)
    for name, fn in msda_peers(device).items():
        try:
            err = (fn(*inputs) - reference).abs().max().item()
            ok = err < 1e-4
        except Exception as e:  # noqa: BLE001
            err, ok = f"{type(e).__name__}: {e}", False
        print(f"peers: {name}: {'matches detr_ops' if ok else 'DIFFERS'} (max abs difference {err})")
        failed += not ok
    if not lsa_peers(device) and not msda_peers(device):
        print(f"peers: none installed for {device}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
