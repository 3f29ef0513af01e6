"""``detr_ops.nn.MultiScaleDeformableAttention`` against mmcv's module, restated in float64 PyTorch.

The reference below is mmcv's ``MultiScaleDeformableAttention.forward`` and
``multi_scale_deformable_attn_pytorch`` (``mmcv/ops/multi_scale_deform_attn.py``) written out from
reading that source: identity taken before ``query_pos`` is added, ``batch_first`` permutes,
``value_proj`` / ``key_padding_mask`` / offsets / softmax weights / ``grid_sample`` per level /
``output_proj`` / dropout + identity. mmcv itself is not installed (it needs a long CUDA build).
Sampling points are random (never on pixel centres), so the bilinear kinks do not enter the
gradient comparison.
"""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from detr_ops.nn import MultiScaleDeformableAttention

SHAPES = [(6, 5), (3, 4), (2, 2)]


def mmcv_sampling(value, spatial_shapes, sampling_locations, attention_weights):
    """mmcv's multi_scale_deformable_attn_pytorch."""
    bs, _, num_heads, embed_dims = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    value_list = value.split([int(h) * int(w) for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        v = value_list[level].flatten(2).transpose(1, 2).reshape(bs * num_heads, embed_dims, int(h), int(w))
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(bs * num_heads, 1, num_queries, num_levels * num_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(bs, num_heads * embed_dims, num_queries)
    return out.transpose(1, 2).contiguous()


def mmcv_forward(m, query, key=None, value=None, identity=None, query_pos=None, key_padding_mask=None,
                 reference_points=None, spatial_shapes=None, level_start_index=None):
    """mmcv's MultiScaleDeformableAttention.forward with m's parameters (dropout off)."""
    if value is None:
        value = query
    if identity is None:
        identity = query
    if query_pos is not None:
        query = query + query_pos
    if not m.batch_first:
        query, value = query.permute(1, 0, 2), value.permute(1, 0, 2)
    bs, nq, _ = query.shape
    _, nv, _ = value.shape
    assert (spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum() == nv
    value = F.linear(value, m.value_proj.weight, m.value_proj.bias)
    if key_padding_mask is not None:
        value = value.masked_fill(key_padding_mask[..., None], 0.0)
    value = value.view(bs, nv, m.num_heads, -1)
    off = F.linear(query, m.sampling_offsets.weight, m.sampling_offsets.bias).view(
        bs, nq, m.num_heads, m.num_levels, m.num_points, 2)
    aw = F.linear(query, m.attention_weights.weight, m.attention_weights.bias).view(
        bs, nq, m.num_heads, m.num_levels * m.num_points).softmax(-1).view(
        bs, nq, m.num_heads, m.num_levels, m.num_points)
    if reference_points.shape[-1] == 2:
        norm = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
        loc = reference_points[:, :, None, :, None, :] + off / norm[None, None, None, :, None, :]
    else:
        loc = (reference_points[:, :, None, :, None, :2]
               + off / m.num_points * reference_points[:, :, None, :, None, 2:] * 0.5)
    out = mmcv_sampling(value, spatial_shapes, loc, aw)
    out = F.linear(out, m.output_proj.weight, m.output_proj.bias)
    if not m.batch_first:
        out = out.permute(1, 0, 2)
    return out + identity


def _levels():
    shapes = torch.tensor(SHAPES, dtype=torch.int64)
    sizes = shapes[:, 0] * shapes[:, 1]
    return shapes, torch.cumsum(sizes, 0) - sizes, int(sizes.sum())


def _module(batch_first, value_proj_ratio=1.0, embed_dims=16, num_heads=4, num_points=3):
    m = MultiScaleDeformableAttention(embed_dims=embed_dims, num_heads=num_heads, num_levels=len(SHAPES),
                                      num_points=num_points, dropout=0.0, batch_first=batch_first,
                                      value_proj_ratio=value_proj_ratio).double()
    # Random (non-zero) offset and attention weights, so the test sees every path of the forward.
    with torch.no_grad():
        for p in (m.sampling_offsets.weight, m.attention_weights.weight, m.attention_weights.bias):
            p.copy_(torch.randn_like(p) * 0.3)
        m.sampling_offsets.bias.add_(torch.rand_like(m.sampling_offsets.bias) * 0.6 - 0.3)
    return m


def _inputs(batch_first, coords, embed_dims=16, bs=2, nq=7, with_pos=True, with_mask=True, with_identity=False):
    shapes, starts, nv = _levels()
    q = torch.randn(bs, nq, embed_dims, dtype=torch.float64)
    v = torch.randn(bs, nv, embed_dims, dtype=torch.float64)
    pos = torch.randn(bs, nq, embed_dims, dtype=torch.float64) if with_pos else None
    ident = torch.randn(bs, nq, embed_dims, dtype=torch.float64) if with_identity else None
    if not batch_first:
        q, v = q.transpose(0, 1), v.transpose(0, 1)
        pos = pos.transpose(0, 1) if pos is not None else None
        ident = ident.transpose(0, 1) if ident is not None else None
    ref = torch.rand(bs, nq, len(SHAPES), coords, dtype=torch.float64) * 0.8 + 0.1
    mask = (torch.rand(bs, nv) < 0.2) if with_mask else None
    return dict(query=q.contiguous().requires_grad_(), value=v.contiguous().requires_grad_(), identity=ident,
                query_pos=pos, key_padding_mask=mask, reference_points=ref.requires_grad_(),
                spatial_shapes=shapes, level_start_index=starts)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("coords", [2, 4])
@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_matches_mmcv_forward_and_gradients(batch_first, coords, ratio):
    m = _module(batch_first, ratio)
    args = _inputs(batch_first, coords)
    out = m(**args)
    ref = mmcv_forward(m, **args)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    grad = torch.randn_like(out)
    leaves = [args["query"], args["value"], args["reference_points"], *m.parameters()]
    ours = torch.autograd.grad(out, leaves, grad)
    theirs = torch.autograd.grad(ref, leaves, grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_value_defaults_to_query_and_identity_is_used():
    shapes, starts, nv = _levels()
    m = _module(True)
    q = torch.randn(2, nv, 16, dtype=torch.float64)
    ident = torch.randn(2, nv, 16, dtype=torch.float64)
    ref = torch.rand(2, nv, len(SHAPES), 2, dtype=torch.float64)
    out = m(q, identity=ident, reference_points=ref, spatial_shapes=shapes, level_start_index=starts)
    torch.testing.assert_close(out, mmcv_forward(m, q, identity=ident, reference_points=ref, spatial_shapes=shapes,
                                                 level_start_index=starts), rtol=1e-10, atol=1e-12)
    # identity replaces the query as the residual: the difference is exactly identity - query
    plain = m(q, reference_points=ref, spatial_shapes=shapes, level_start_index=starts)
    torch.testing.assert_close(out - plain, ident - q, rtol=1e-10, atol=1e-12)


def test_residual_is_a_deprecated_alias_of_identity():
    m = _module(True)
    args = _inputs(True, 2, with_identity=True)
    ident = args.pop("identity")
    with pytest.warns(DeprecationWarning, match="residual"):
        a = m(**args, residual=ident)
    torch.testing.assert_close(a, m(**args, identity=ident))
    with pytest.raises(TypeError, match="identity"):
        m(**args, identity=ident, residual=ident)


def test_state_dict_keys_shapes_and_init_are_mmcv():
    m = MultiScaleDeformableAttention(embed_dims=32, num_heads=4, num_levels=3, num_points=2, value_proj_ratio=0.5)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {
        "sampling_offsets.weight": (48, 32), "sampling_offsets.bias": (48,),
        "attention_weights.weight": (24, 32), "attention_weights.bias": (24,),
        "value_proj.weight": (16, 32), "value_proj.bias": (16,),
        "output_proj.weight": (32, 16), "output_proj.bias": (32,),
    }
    # mmcv's grid_init, restated: head h points along angle 2*pi*h/M, scaled so max |coord| = 1, times i + 1.
    expected = []
    for h in range(4):
        t = torch.tensor(h * (2.0 * math.pi / 4), dtype=torch.float32)
        d = torch.stack([t.cos(), t.sin()])
        d = d / d.abs().max()
        expected += [d * (i + 1) for _ in range(3) for i in range(2)]
    torch.testing.assert_close(m.sampling_offsets.bias, torch.stack(expected).flatten(), rtol=0, atol=0)
    assert not m.sampling_offsets.weight.any() and not m.attention_weights.weight.any()
    assert not m.attention_weights.bias.any() and not m.value_proj.bias.any() and not m.output_proj.bias.any()
    bound = math.sqrt(6.0 / (32 + 16))  # xavier_uniform on [16, 32]
    assert m.value_proj.weight.abs().max() <= bound and m.value_proj.weight.std() > bound / 4
    assert (m.embed_dims, m.num_heads, m.num_levels, m.num_points, m.im2col_step, m.batch_first) == (32, 4, 3, 2, 64,
                                                                                                      False)
    assert m.dropout.p == 0.1


def test_dropout_applies_to_the_attention_output_only():
    m = _module(True)
    m.dropout.p = 1.0
    m.train()
    args = _inputs(True, 2, with_identity=True)
    out = m(**args)
    torch.testing.assert_close(out, args["identity"])


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        MultiScaleDeformableAttention(embed_dims=30, num_heads=8)
    with pytest.raises(ValueError, match="value_proj_ratio"):
        MultiScaleDeformableAttention(embed_dims=32, num_heads=8, value_proj_ratio=0.1)
    m = _module(True)
    args = _inputs(True, 3 - 1)
    args["reference_points"] = torch.rand(2, 7, len(SHAPES), 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="reference_points"):
        m(**args)
    args = _inputs(True, 2)
    args["spatial_shapes"] = torch.tensor([[6, 5], [3, 4], [2, 3]])
    with pytest.raises(ValueError, match="value_spatial_shapes"):
        m(**args)
    args = _inputs(True, 2)
    del args["level_start_index"]
    with pytest.raises(ValueError, match="level_start_index"):
        m(**args)


def test_nan_query_gives_nan_output_rows():
    m = _module(True)
    args = _inputs(True, 2, with_pos=False, with_mask=False)
    with torch.no_grad():
        args["query"][0, 3, 0] = float("nan")
    out = m(**args)
    assert out[0, 3].isnan().any()
    others = torch.ones(out.shape[:2], dtype=torch.bool)
    others[0, 3] = False
    assert not out[others].isnan().any()


def test_float32_forward_matches_the_float64_reference():
    m = _module(False).float()
    args = _inputs(False, 4)
    args = {k: (v.detach().float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for k, v in args.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = m(**args)
    ref = mmcv_forward(m.double(), **{k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                                      for k, v in args.items()})
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
