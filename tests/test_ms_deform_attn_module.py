"""detr_ops.MSDeformAttn: Deformable DETR's parameters, initialisation and forward, compiled too."""
import math

import pytest
import torch
import torch.nn.functional as F

from tests.cases import device_backend_param
from detr_ops import MSDeformAttn, ms_deform_attn_pytorch
from tests.msda_inputs import level_tensors

LEVELS = [(6, 5), (3, 3), (2, 1), (1, 1)]


def _inputs(d_model=16, N=2, Lq=5, ref_dim=2, device="cpu", dtype=torch.float64):
    shapes, starts, S = level_tensors(LEVELS, device)
    query = torch.randn(N, Lq, d_model, dtype=dtype, device=device)
    source = torch.randn(N, S, d_model, dtype=dtype, device=device)
    reference = torch.rand(N, Lq, len(LEVELS), ref_dim, dtype=dtype, device=device)
    if ref_dim == 4:
        reference[..., 2:] = reference[..., 2:] * 0.5 + 0.1
    return query, reference, source, shapes, starts


def _randomised(module):
    # Break the symmetric initialisation so offsets and weights really depend on the query.
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return module


def _expected(module, query, reference, source, shapes, starts, mask=None):
    """The module's forward spelled out on the grid_sample reference (Deformable DETR's formulas)."""
    N, Lq, C = query.shape
    M, L, P = module.n_heads, module.n_levels, module.n_points
    value = module.value_proj(source)
    if mask is not None:
        value = value * (~mask)[..., None]
    value = value.view(N, -1, M, C // M)
    offsets = module.sampling_offsets(query).view(N, Lq, M, L, P, 2)
    weights = F.softmax(module.attention_weights(query).view(N, Lq, M, L * P), -1).view(N, Lq, M, L, P)
    if reference.shape[-1] == 2:
        wh = shapes.flip(-1).to(query.dtype)
        locations = reference[:, :, None, :, None, :] + offsets / wh[None, None, None, :, None, :]
    else:
        locations = reference[:, :, None, :, None, :2] + offsets * reference[:, :, None, :, None, 2:] / (2 * P)
    return module.output_proj(ms_deform_attn_pytorch(value, shapes, starts, locations, weights))


def test_parameter_names_and_shapes_match_deformable_detr():
    module = MSDeformAttn()
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == {
        "sampling_offsets.weight": (256, 256), "sampling_offsets.bias": (256,),
        "attention_weights.weight": (128, 256), "attention_weights.bias": (128,),
        "value_proj.weight": (256, 256), "value_proj.bias": (256,),
        "output_proj.weight": (256, 256), "output_proj.bias": (256,),
    }
    assert (module.d_model, module.n_levels, module.n_heads, module.n_points, module.im2col_step) == (256, 4, 8, 4, 64)


def test_checkpoint_round_trip_strict():
    source = _randomised(MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3))
    target = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3)
    target.load_state_dict({k: v.clone() for k, v in source.state_dict().items()}, strict=True)
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v)


def test_initialisation():
    M, L, P = 8, 4, 4
    module = MSDeformAttn(d_model=64, n_levels=L, n_heads=M, n_points=P)
    assert (module.sampling_offsets.weight == 0).all()
    bias = module.sampling_offsets.bias.view(M, L, P, 2)
    for h in range(M):
        angle = 2 * math.pi * h / M
        direction = torch.tensor([math.cos(angle), math.sin(angle)])
        direction = direction / direction.abs().max()
        for p in range(P):
            torch.testing.assert_close(bias[h, :, p], (direction * (p + 1)).expand(L, 2))
    assert (module.attention_weights.weight == 0).all() and (module.attention_weights.bias == 0).all()
    assert (module.value_proj.bias == 0).all() and (module.output_proj.bias == 0).all()
    bound = math.sqrt(6 / (64 + 64))  # xavier_uniform
    assert module.value_proj.weight.abs().max() <= bound and module.value_proj.weight.std() > bound / 4


def test_rejects_indivisible_d_model():
    with pytest.raises(ValueError, match="d_model must be divisible by n_heads"):
        MSDeformAttn(d_model=30, n_heads=8)


@device_backend_param
@pytest.mark.parametrize("ref_dim", [2, 4])
def test_forward_and_backward_match_reference(device, backend, ref_dim):
    module = _randomised(MSDeformAttn(d_model=16, n_levels=4, n_heads=2, n_points=3, backend=backend)).double()
    module = module.to(device)
    inputs = _inputs(ref_dim=ref_dim, device=device)
    mask = torch.rand(inputs[2].shape[:2], device=device) < 0.2
    out = module(*inputs, input_padding_mask=mask)
    out.sum().backward()
    grads = {k: p.grad.clone() for k, p in module.named_parameters()}
    module.zero_grad()
    expected = _expected(module, *[t.cpu() for t in inputs], mask=mask.cpu()) if device == "cpu" else None
    if expected is None:
        cpu = MSDeformAttn(d_model=16, n_levels=4, n_heads=2, n_points=3).double()
        cpu.load_state_dict({k: v.cpu() for k, v in module.state_dict().items()})
        module = cpu
        expected = _expected(module, *[t.cpu() for t in inputs], mask=mask.cpu())
    expected.sum().backward()
    torch.testing.assert_close(out.cpu(), expected)
    for k, p in module.named_parameters():
        torch.testing.assert_close(grads[k].cpu(), p.grad, msg=lambda m: f"{k}: {m}")


def test_bad_reference_points():
    module = MSDeformAttn(d_model=16, n_levels=4, n_heads=2, n_points=3).double()
    query, reference, source, shapes, starts = _inputs()
    with pytest.raises(ValueError, match="last dimension of 2 or 4"):
        module(query, reference[..., :1], source, shapes, starts)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    module = _randomised(MSDeformAttn(d_model=16, n_levels=4, n_heads=2, n_points=3)).double()
    inputs = _inputs(ref_dim=4)
    eager = module(*inputs)
    eager.sum().backward()
    eager_grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    out = compiled(*inputs)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    for g, p in zip(eager_grads, module.parameters()):
        torch.testing.assert_close(p.grad, g)
