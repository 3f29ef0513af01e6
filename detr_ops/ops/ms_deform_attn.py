"""Multi-scale deformable attention (Deformable DETR's ``MSDeformAttnFunction``), fused.

``ms_deform_attn(value, value_spatial_shapes, value_level_start_index, sampling_locations,
attention_weights, im2col_step=64)`` is a drop-in for Deformable DETR's
``MSDeformAttnFunction.apply`` (also provided, as :class:`MSDeformAttnFunction`), with

* the exact semantics of ``F.grid_sample(bilinear, zeros, align_corners=False)`` per level
  (:func:`detr_ops.ms_deform_attn_pytorch`), NaN/inf locations contributing nothing;
* CPU, CUDA and Triton kernels, float16/bfloat16 computed in float32, any head dim;
* ``im2col_step`` accepted for compatibility and ignored: it never constrains the batch size;
* a deterministic backward on CPU; on CUDA/Triton the backward adds into ``grad_value`` with
  atomics, so it raises under ``torch.use_deterministic_algorithms(True)`` (warns in warn-only mode);
* ``torch.ops.detr_ops.ms_deform_attn`` with fake kernel and autograd, so it traces under
  ``torch.compile(fullgraph=True)`` and ``torch.export``.

Value, locations and attention weights of different floating dtypes are promoted to a common one.
"""
import torch

from detr_ops import _backend, _extension
from detr_ops.ops import _checks


def _check_shapes(value, shapes, starts, locations, weights) -> None:
    if value.dim() != 4:
        raise ValueError(f"value must be [N, S, M, D], got shape {tuple(value.shape)}")
    N, _, M, _ = value.shape
    if shapes.dim() != 2 or shapes.shape[1] != 2:
        raise ValueError(f"value_spatial_shapes must be [L, 2] (H, W per level), got shape {tuple(shapes.shape)}")
    L = shapes.shape[0]
    if starts.shape != (L,):
        raise ValueError(f"value_level_start_index must be [L] = [{L}], got shape {tuple(starts.shape)}")
    if locations.dim() != 6 or locations.shape[0] != N or locations.shape[2] != M or locations.shape[3] != L \
            or locations.shape[5] != 2:
        raise ValueError(
            f"sampling_locations must be [N, Lq, M, L, P, 2] = [{N}, Lq, {M}, {L}, P, 2], got shape {tuple(locations.shape)}"
        )
    if weights.shape != locations.shape[:5]:
        raise ValueError(
            f"attention_weights must be [N, Lq, M, L, P] = {list(locations.shape[:5])}, got shape {tuple(weights.shape)}"
        )


def _check_levels(value, shapes, starts) -> None:
    """The value-dependent invariants: reads the [L, 2] shapes on the host (a sync on a GPU)."""
    hw = shapes.tolist()
    if any(h < 0 or w < 0 for h, w in hw):
        raise ValueError(f"value_spatial_shapes must be non-negative (H, W) pairs, got {hw}")
    sizes = [h * w for h, w in hw]
    if sum(sizes) != value.shape[1]:
        raise ValueError(
            f"value_spatial_shapes describe {sum(sizes)} pixels (sum of H*W over levels {hw}) but value has "
            f"S = {value.shape[1]} rows (value is [N, S, M, D])"
        )
    expected = [sum(sizes[:i]) for i in range(len(sizes))]
    if starts.tolist() != expected:
        raise ValueError(
            f"value_level_start_index must be the start of each level in value, {expected}, got {starts.tolist()}"
        )


def _prepare(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights, validate):
    value = _checks.floating(value, "value")
    locations = _checks.floating(sampling_locations, "sampling_locations")
    weights = _checks.floating(attention_weights, "attention_weights")
    shapes = _checks.index_tensor(value_spatial_shapes, "value_spatial_shapes")
    starts = _checks.index_tensor(value_level_start_index, "value_level_start_index")
    for name, t in (("value_spatial_shapes", shapes), ("value_level_start_index", starts),
                    ("sampling_locations", locations), ("attention_weights", weights)):
        _checks.same_device("value", value, name, t)
    _check_shapes(value, shapes, starts, locations, weights)
    if validate is None:
        # Free on CPU; on a GPU it would synchronise, and under tracing the shapes are symbolic.
        validate = value.device.type == "cpu" and not torch.compiler.is_compiling()
    if validate:
        _check_levels(value, shapes, starts)
    dtype = torch.promote_types(torch.promote_types(value.dtype, locations.dtype), weights.dtype)
    return value.to(dtype), shapes, starts, locations.to(dtype), weights.to(dtype)


def ms_deform_attn(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                   im2col_step=64, *, backend: str = "auto", validate=None):
    """Multi-scale deformable attention: ``[N, S, M, D]`` values -> ``[N, Lq, M*D]``.

    ``validate`` checks that the spatial shapes sum to S and that the level start indices match
    them: ``None`` (default) does so on CPU tensors only (on a GPU it would synchronise the host);
    ``True`` always, ``False`` never. Unchecked inconsistent shapes never read out of bounds: a
    level that does not fit in ``value`` is skipped.
    """
    value, shapes, starts, locations, weights = _prepare(
        value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights, validate
    )
    _extension.load()
    if _backend.resolve(backend, value.device) == "triton":
        from detr_ops import _triton_twins  # noqa: F401  (defines the *_triton ops on first use)
        return torch.ops.detr_ops.ms_deform_attn_triton(value, shapes, starts, locations, weights)
    return torch.ops.detr_ops.ms_deform_attn(value, shapes, starts, locations, weights)


class MSDeformAttnFunction(torch.autograd.Function):
    """Deformable DETR's ``MSDeformAttnFunction``: ``MSDeformAttnFunction.apply(value,
    value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
    im2col_step)``. Runs the compiled kernel of the inputs' device (``backend="auto"``)."""

    @staticmethod
    def forward(ctx, value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                im2col_step=64):
        value, shapes, starts, locations, weights = _prepare(
            value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights, None
        )
        _extension.load()
        ctx.save_for_backward(value, shapes, starts, locations, weights)
        return torch.ops.detr_ops.ms_deform_attn(value, shapes, starts, locations, weights)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        value, shapes, starts, locations, weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = torch.ops.detr_ops.ms_deform_attn_backward(
            grad_output, value, shapes, starts, locations, weights
        )
        return grad_value, None, None, grad_locations, grad_weights, None
