"""Multi-scale deformable attention: detr_ops against the grid_sample reference, same run.

Rows (see ``timing.py``): op ``ms_deform_attn``, case ``<shape name> N=<batch>``, passes ``fwd``
and ``fwd+bwd`` (all three input gradients), impls ``grid_sample`` (baseline:
``detr_ops.ms_deform_attn_pytorch``, Deformable DETR's PyTorch fallback), ``detr_ops`` (native
kernel of the device) and, on a GPU, ``detr_ops-triton`` and the peers of ``benchmarks/peers.py``
(the original Deformable DETR CUDA kernel, torch-ms-deform-attn) as further baselines, each
skipped when it is not installed. Each row also records the peak memory
of one call (``peak_bytes``). Inputs look like a trained detector's: reference points uniform on
the image, offsets of a few pixels, attention weights a softmax over each head's L*P points.
Every detr_ops result is checked against the baseline before it is timed.
"""
import pytest
import torch

from benchmarks import peers
from benchmarks.shapes import DEVICE, MSDA, ON_GPU
from benchmarks.timing import check_close, measure, peak_memory_bytes, rotate
from detr_ops import ms_deform_attn, ms_deform_attn_pytorch

OP = "ms_deform_attn"
DTYPES = [torch.float32, torch.bfloat16] if ON_GPU else [torch.float32]
IMPLS = [("grid_sample", "baseline", ""), ("detr_ops", "detr_ops", "native")]
if ON_GPU:
    IMPLS.append(("detr_ops-triton", "detr_ops", "triton"))
    IMPLS += [("deformable-detr-cuda", "baseline", "peer"), ("torch-ms-deform-attn", "baseline", "peer")]
# Tolerances of the pre-timing check against the baseline run in the same dtype.
CHECK_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}


def _make_inputs(N, levels, Lq, M, D, P, dtype, device):
    g = torch.Generator().manual_seed(0)
    L = len(levels)
    shapes = torch.tensor(levels, dtype=torch.int64)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    S = int(areas.sum())
    value = torch.randn(N, S, M, D, generator=g)
    reference = torch.rand(N, Lq, 1, 1, 1, 2, generator=g)
    pixel_offsets = torch.randn(N, Lq, M, L, P, 2, generator=g) * 2.0
    locations = reference + pixel_offsets / shapes.flip(-1).view(1, 1, 1, L, 1, 2)
    weights = torch.randn(N, Lq, M, L * P, generator=g).softmax(-1).view(N, Lq, M, L, P)
    tensors = [t.to(device=device, dtype=dtype) for t in (value, locations, weights)]
    return tensors[0], shapes.to(device), starts.to(device), tensors[1], tensors[2]


def _call(impl, backend, inputs):
    value, shapes, starts, locations, weights = inputs
    if impl == "grid_sample":
        return ms_deform_attn_pytorch(value, shapes, starts, locations, weights)
    if backend == "peer":
        return peers.msda_peers(value.device)[impl](value, shapes, starts, locations, weights)
    return ms_deform_attn(value, shapes, starts, locations, weights, backend=backend)


def _case_params():
    for name, N, levels, Lq, M, D, P in MSDA:
        for dtype in DTYPES:
            dname = str(dtype).replace("torch.", "")
            yield pytest.param(name, N, levels, Lq, M, D, P, dtype, id=f"{name}-N{N}-{dname}")


@pytest.mark.parametrize("name,N,levels,Lq,M,D,P,dtype", list(_case_params()))
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl,role,backend", IMPLS, ids=[i[0] for i in IMPLS])
def test_ms_deform_attn(benchmark, impl, role, backend, pass_, name, N, levels, Lq, M, D, P, dtype):
    inputs = _make_inputs(N, levels, Lq, M, D, P, dtype, DEVICE)
    next_inputs = rotate(lambda: _make_inputs(N, levels, Lq, M, D, P, dtype, DEVICE), copies=4, device=DEVICE)
    grad_output = torch.randn(N, Lq, M * D, device=DEVICE, dtype=dtype)
    if backend == "peer":
        if impl not in peers.msda_peers(DEVICE):
            pytest.skip(f"{impl} is not installed")
        try:
            _call(impl, backend, inputs)
        except RuntimeError as e:  # e.g. the original kernel dispatches float and double only
            pytest.skip(f"{impl} does not run this case: {str(e).splitlines()[0]}")
    if role == "detr_ops" or backend == "peer":
        check_close(_call(impl, backend, inputs), _call("grid_sample", "", inputs), what=f"{impl} {name}",
                    **CHECK_TOL[dtype])

    if pass_ == "fwd":
        def run():
            with torch.no_grad():
                return _call(impl, backend, next_inputs())
    else:
        def run():
            value, shapes, starts, locations, weights = next_inputs()
            leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
            out = _call(impl, backend, (leaves[0], shapes, starts, leaves[1], leaves[2]))
            return torch.autograd.grad(out, leaves, grad_output)

    peak = peak_memory_bytes(run, DEVICE)
    case = f"{name} N={N} {str(dtype).replace('torch.', '')}"
    measure(benchmark, run, op=OP, case=case, impl=impl, role=role, backend="" if backend == "peer" else backend,
            pass_=pass_, device=DEVICE,
            peak_bytes=peak, shape=dict(N=N, levels=levels, Lq=Lq, M=M, D=D, P=P))
