"""Input builders and the float64 comparisons (grid_sample reference, 2020-kernel reference) shared
by the MSDA test modules."""
import torch

from tests.cases import TOLERANCE
from detr_ops import ms_deform_attn, ms_deform_attn_pytorch
from detr_ops.reference.ms_deform_attn import ms_deform_attn_kernel2020

# Small levels for every backend (the Triton interpreter is slow): one single-pixel level included.
SMALL_LEVELS = [(4, 5), (2, 3), (1, 1)]


def level_tensors(levels, device="cpu"):
    shapes = torch.tensor(levels, dtype=torch.int64, device=device)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    return shapes, starts, int(areas.sum())


def make_inputs(N=2, Lq=5, M=2, D=8, P=3, levels=SMALL_LEVELS, dtype=torch.float64, device="cpu", low=-0.2,
                high=1.2):
    """value [N,S,M,D], shapes, starts, locations [N,Lq,M,L,P,2] uniform in [low, high), weights."""
    shapes, starts, S = level_tensors(levels, device)
    L = len(levels)
    value = torch.randn(N, S, M, D, dtype=torch.float64).to(device=device, dtype=dtype)
    locations = (torch.rand(N, Lq, M, L, P, 2, dtype=torch.float64) * (high - low) + low).to(device=device, dtype=dtype)
    weights = torch.rand(N, Lq, M, L, P, dtype=torch.float64).to(device=device, dtype=dtype)
    return value, shapes, starts, locations, weights


def make_points_inputs(points, N=2, Lq=5, M=2, D=8, levels=SMALL_LEVELS, dtype=torch.float64, device="cpu",
                       low=-0.2, high=1.2):
    """The num_points_list layout: locations [N, Lq, M, sum(points), 2], weights [N, Lq, M, sum(points)]."""
    shapes, starts, S = level_tensors(levels, device)
    K = sum(points)
    value = torch.randn(N, S, M, D, dtype=torch.float64).to(device=device, dtype=dtype)
    locations = (torch.rand(N, Lq, M, K, 2, dtype=torch.float64) * (high - low) + low).to(device=device, dtype=dtype)
    weights = torch.rand(N, Lq, M, K, dtype=torch.float64).to(device=device, dtype=dtype)
    return value, shapes, starts, locations, weights


def reference_and_grads(value, shapes, starts, locations, weights, grad_output, num_points_list=None):
    """Output and (value, locations, weights) gradients of the float64 grid_sample reference."""
    leaves = [t.detach().cpu().double().requires_grad_() for t in (value, locations, weights)]
    out = ms_deform_attn_pytorch(leaves[0], shapes.cpu(), starts.cpu(), leaves[1], leaves[2],
                                 num_points_list=num_points_list)
    grads = torch.autograd.grad(out, leaves, grad_output.detach().cpu().double(), allow_unused=True)
    return out.detach(), [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]


def kernel2020_and_grads(value, shapes, starts, locations, weights, grad_output, num_points_list=None):
    """Output and gradients of the float64 restatement of the 2020 CUDA kernel."""
    out, *grads = ms_deform_attn_kernel2020(value.cpu(), shapes.cpu(), starts.cpu(), locations.cpu(), weights.cpu(),
                                            grad_output.cpu(), num_points_list=num_points_list)
    return out, grads


def op_and_grads(value, shapes, starts, locations, weights, grad_output, backend, num_points_list=None):
    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
    out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], backend=backend,
                         num_points_list=num_points_list)
    grads = torch.autograd.grad(out, leaves, grad_output)
    return out.detach(), list(grads)


def assert_close(actual, expected, dtype, what=""):
    """actual (any dtype/device) vs a float64 CPU reference, with the dtype's tolerance scaled to
    the reference's magnitude (results are sums of many rounded terms)."""
    tol = TOLERANCE[dtype]
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual.detach().cpu().double(), expected, rtol=4 * tol["rtol"],
                               atol=4 * tol["atol"] * scale, msg=lambda m: f"{what}: {m}")


def check_against_reference(inputs, backend, dtype, num_points_list=None, reference=reference_and_grads):
    """The op's output and three gradients against `reference` (default: grid_sample, which the op
    equals away from kinks; kernel2020_and_grads everywhere)."""
    value = inputs[0]
    grad_output = torch.randn(value.shape[0], inputs[3].shape[1], value.shape[2] * value.shape[3],
                              dtype=torch.float64).to(device=value.device, dtype=dtype)
    out, grads = op_and_grads(*inputs, grad_output, backend, num_points_list)
    ref, ref_grads = reference(*inputs, grad_output, num_points_list)
    assert out.dtype == dtype and out.device == value.device
    assert_close(out, ref, dtype, "output")
    for name, g, r in zip(("grad_value", "grad_sampling_locations", "grad_attention_weights"), grads, ref_grads):
        assert g.dtype == dtype
        assert_close(g, r, dtype, name)
