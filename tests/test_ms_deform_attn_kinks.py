"""MSDA at the kinks of bilinear sampling: every backend follows Deformable DETR's 2020 CUDA kernel
(restated in float64 by detr_ops.reference.ms_deform_attn_kernel2020), forward and all three
gradients, on integer pixel coordinates and on the boundary of the sampled range; and the documented
differences from grid_sample there (docs/ms_deform_attn.md)."""
import math
from fractions import Fraction

import pytest
import torch

from detr_ops import ms_deform_attn, ms_deform_attn_pytorch
from detr_ops.reference.ms_deform_attn import ms_deform_attn_kernel2020
from tests.cases import FLOAT_DTYPES, device_backend_param, dtype_param
from tests.msda_inputs import assert_close, kernel2020_and_grads, level_tensors, op_and_grads

# Power-of-two sizes: (i + 0.5) / W is exact in every float dtype, and so is x * W - 0.5 = i, so the
# locations below sit exactly on integer pixel coordinates whatever the dtype.
KINK_LEVELS = [(4, 8), (2, 4), (1, 2)]


def _kink_inputs(dtype, device, N=1, Lq=3, M=2, D=5, P=4, seed=0):
    """Every point on an integer pixel coordinate in x, y or both, from -1 to the size (both ends
    included: -1 and W are the edges of the sampled range)."""
    g = torch.Generator().manual_seed(seed)
    shapes, starts, S = level_tensors(KINK_LEVELS, device)
    L = len(KINK_LEVELS)
    value = torch.randn(N, S, M, D, generator=g, dtype=torch.float64)
    locations = torch.empty(N, Lq, M, L, P, 2, dtype=torch.float64)
    for l, (H, W) in enumerate(KINK_LEVELS):
        for axis, size in ((0, W), (1, H)):
            integer = torch.randint(-1, size + 1, (N, Lq, M, P), generator=g).double()
            half = torch.randint(-4, 4 * size + 4, (N, Lq, M, P), generator=g).double() / 4 + 0.125  # off the kinks
            on_kink = torch.rand(N, Lq, M, P, generator=g) < 0.7
            locations[:, :, :, l, :, axis] = (torch.where(on_kink, integer, half) + 0.5) / size
    weights = torch.rand(N, Lq, M, L, P, generator=g, dtype=torch.float64)
    tensors = [t.to(device=device, dtype=dtype) for t in (value, locations, weights)]
    return tensors[0], shapes, starts, tensors[1], tensors[2]


@device_backend_param
@dtype_param(FLOAT_DTYPES)
def test_integer_and_boundary_locations_follow_the_2020_kernel(device, backend, dtype):
    inputs = _kink_inputs(dtype, device)
    value = inputs[0]
    grad_output = torch.randn(1, 3, 10, dtype=torch.float64).to(device=device, dtype=dtype)
    out, grads = op_and_grads(*inputs, grad_output, backend)
    ref, ref_grads = kernel2020_and_grads(*inputs, grad_output)
    assert out.dtype == dtype and out.device == value.device
    assert_close(out, ref, dtype, "output")
    for name, g, r in zip(("grad_value", "grad_sampling_locations", "grad_attention_weights"), grads, ref_grads):
        assert_close(g, r, dtype, name)


def _one_point(x_pix, y_pix, H=4, W=8, D=3):
    """A single point at pixel coordinate (x_pix, y_pix) on one H x W level, float64."""
    shapes, starts, S = level_tensors([(H, W)])
    value = torch.randn(1, S, 1, D, dtype=torch.float64)
    locations = torch.tensor([(x_pix + 0.5) / W, (y_pix + 0.5) / H], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    weights = torch.full((1, 1, 1, 1, 1), 0.7, dtype=torch.float64)
    return value, shapes, starts, locations, weights


@device_backend_param
def test_point_at_minus_one_is_skipped(device, backend):
    # x_pix = -1 exactly: the 2020 kernel's strict test skips the point, so output and every
    # gradient are 0; grid_sample takes it in and gives its location the right-hand derivative.
    inputs = [t.to(device) for t in _one_point(-1.0, 1.25)]
    grad_output = torch.randn(1, 1, 3, dtype=torch.float64, device=device)
    out, grads = op_and_grads(*inputs, grad_output, backend)
    assert (out == 0).all() and all((g == 0).all() for g in grads)
    leaves = [t.detach().cpu().requires_grad_() for t in (inputs[0], inputs[3], inputs[4])]
    sampled = ms_deform_attn_pytorch(leaves[0], inputs[1].cpu(), inputs[2].cpu(), leaves[1], leaves[2])
    grid_grads = torch.autograd.grad(sampled, leaves, grad_output.cpu())
    assert (sampled == 0).all() and grid_grads[1][..., 0].abs().item() > 0
    # Just inside, the point is sampled and gets the same right-hand derivative as grid_sample.
    inside = [t.to(device) for t in _one_point(-1.0 + 2**-20, 1.25)]
    inside[0] = inputs[0]
    out, grads = op_and_grads(*inside, grad_output, backend)
    assert grads[1][..., 0].abs().item() > 0


@device_backend_param
def test_far_edge_is_excluded(device, backend):
    # x_pix = W exactly is outside for both the 2020 kernel and grid_sample: nothing, no gradient.
    inputs = [t.to(device) for t in _one_point(8.0, 1.25)]
    grad_output = torch.randn(1, 1, 3, dtype=torch.float64, device=device)
    out, grads = op_and_grads(*inputs, grad_output, backend)
    assert (out == 0).all() and all((g == 0).all() for g in grads)


def test_integer_coordinate_takes_the_right_hand_derivative():
    # At x_pix = 2 (exactly) the location gradient is the slope on the cell [2, 3]: a one-sided
    # finite difference from the right agrees with it, one from the left does not.
    value, shapes, starts, locations, weights = _one_point(2.0, 1.25)
    grad_output = torch.randn(1, 1, 3, dtype=torch.float64)
    _, grads = op_and_grads(value, shapes, starts, locations, weights, grad_output, "native")

    def f(dx):
        moved = locations.clone()
        moved[..., 0] += dx
        return (ms_deform_attn(value, shapes, starts, moved, weights) * grad_output).sum().item()

    h = 2.0**-30
    right, left = (f(h) - f(0)) / h, (f(0) - f(-h)) / h
    assert grads[1][..., 0].item() == pytest.approx(right, rel=1e-6)
    assert abs(right - left) > 1e-3 * abs(right)


def test_reference_agrees_with_grid_sample_off_the_kinks():
    # The two float64 references are the same function wherever no kink is involved.
    shapes, starts, S = level_tensors([(4, 5), (2, 3)])
    value = torch.randn(2, S, 2, 3, dtype=torch.float64)
    locations = torch.rand(2, 4, 2, 2, 3, 2, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(2, 4, 2, 2, 3, dtype=torch.float64)
    grad_output = torch.randn(2, 4, 6, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    grid = ms_deform_attn_pytorch(leaves[0], shapes, starts, leaves[1], leaves[2])
    grid_grads = torch.autograd.grad(grid, leaves, grad_output)
    out, *grads = ms_deform_attn_kernel2020(value, shapes, starts, locations, weights, grad_output)
    torch.testing.assert_close(out, grid.detach())
    for g, r in zip(grads, grid_grads):
        torch.testing.assert_close(g, r)


def test_deformable_detr_initialisation_point():
    # The example: loc_x = 0.24999999999999997 on W = 10. The kernel's pixel coordinate
    # 0.24999999999999997 * 10 - 0.5 rounds to 1.9999999999999996, just below 2 (the derivative on
    # the cell [1, 2]); grid_sample's own expression of it, ((2x - 1 + 1) * W - 1) / 2, rounds to 2.0
    # exactly (the right-hand derivative, on [2, 3]).
    H, W = 3, 10
    shapes, starts, S = level_tensors([(H, W)])
    value = torch.randn(1, S, 1, 2, dtype=torch.float64)
    locations = torch.tensor([0.24999999999999997, 0.5], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    weights = torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)
    grad_output = torch.randn(1, 1, 2, dtype=torch.float64)
    _, grads = op_and_grads(value, shapes, starts, locations, weights, grad_output, "native")
    _, ref_grads = kernel2020_and_grads(value, shapes, starts, locations, weights, grad_output)
    # Same cell as the 2020 kernel (its sums run in another order: equal up to rounding).
    torch.testing.assert_close(grads[1], ref_grads[1], rtol=1e-12, atol=1e-12)
    row = 1 * W  # y_pix = 1: the row of pixels 10..19
    g = grad_output.view(-1)
    right = W * (value[0, row + 3, 0] - value[0, row + 2, 0]) @ g
    left = W * (value[0, row + 2, 0] - value[0, row + 1, 0]) @ g
    assert grads[1][..., 0].item() == pytest.approx(left.item(), rel=1e-12)
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    grid_grads = torch.autograd.grad(ms_deform_attn_pytorch(leaves[0], shapes, starts, leaves[1], leaves[2]), leaves,
                                     grad_output)
    assert grid_grads[1][..., 0].item() == pytest.approx(right.item(), rel=1e-6)


def _fused_rounding_kinks(size, count):
    """Normalised locations just below a pixel centre where ``loc * size - 0.5`` rounded twice (the
    2020 kernel) and fused into one FMA land on different sides of an integer pixel coordinate."""
    found = []
    for i in range(size):
        x = (i + 0.5) / size
        for _ in range(8):
            x = math.nextafter(x, 0.0)
            fused = float(Fraction(x) * size - Fraction(1, 2))  # one rounding, as an FMA
            if math.floor(x * size - 0.5) != math.floor(fused):
                found.append(x)
    assert len(found) >= count, (size, found)
    return found[:count]


@device_backend_param
def test_no_fused_multiply_add_at_kinks(device, backend):
    # E.g. loc = 0.8333333333333333 on W = 3: x_pix is 2.0 in the kernel's two roundings (the cell
    # [2, 3]) but 1.9999999999999998 in one FMA (the cell [1, 2]); a compiler that contracts
    # loc * W - 0.5 (g++ does for C++ where FMA is available) gives the other location gradient.
    # 12 and 13 pixels: sizes with two such locations each.
    levels = [(12, 13), (13, 12)]
    shapes, starts, S = level_tensors(levels, device)
    P = 2
    locations = torch.empty(1, 2, 1, len(levels), P, 2, dtype=torch.float64)
    for l, (H, W) in enumerate(levels):
        xs = torch.tensor(_fused_rounding_kinks(W, P), dtype=torch.float64)
        ys = torch.tensor(_fused_rounding_kinks(H, P), dtype=torch.float64)
        locations[0, 0, 0, l, :, 0], locations[0, 0, 0, l, :, 1] = xs, 0.3  # x on a kink, y off
        locations[0, 1, 0, l, :, 0], locations[0, 1, 0, l, :, 1] = 0.3, ys  # y on a kink, x off
    g = torch.Generator().manual_seed(3)
    value = torch.randn(1, S, 1, 4, generator=g, dtype=torch.float64)
    weights = torch.rand(1, 2, 1, len(levels), P, generator=g, dtype=torch.float64)
    grad_output = torch.randn(1, 2, 4, generator=g, dtype=torch.float64)
    inputs = [t.to(device) for t in (value, shapes, starts, locations, weights)]
    out, grads = op_and_grads(*inputs, grad_output.to(device), backend)
    ref, ref_grads = kernel2020_and_grads(*inputs, grad_output)
    assert_close(out, ref, torch.float64, "output")
    for name, got, want in zip(("grad_value", "grad_sampling_locations", "grad_attention_weights"), grads, ref_grads):
        assert_close(got, want, torch.float64, name)
