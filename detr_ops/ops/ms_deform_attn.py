"""Multi-scale deformable attention (Deformable DETR's ``MSDeformAttnFunction``), fused.

``ms_deform_attn(value, value_spatial_shapes, value_level_start_index, sampling_locations,
attention_weights, im2col_step=64)`` is a drop-in for Deformable DETR's
``MSDeformAttnFunction.apply`` (also provided, as :class:`MSDeformAttnFunction`), with

* the sampling arithmetic of Deformable DETR's 2020 CUDA kernel, kinks included: pixel coordinate
  ``x * W - 0.5``, a point sampled only when ``-1 < x * W - 0.5 < W`` and ``-1 < y * H - 0.5 < H``
  (strict), floor corners, and location gradients from the bilinear weights on the cell
  ``[floor, floor + 1]`` (the right-hand derivative at an integer pixel coordinate). Away from those
  kinks this is ``F.grid_sample(bilinear, zeros, align_corners=False)`` per level
  (:func:`detr_ops.ms_deform_attn_pytorch`); at them the two can differ (``grid_sample`` rounds its
  own expression of the pixel coordinate and takes in a point at exactly -1), see
  ``docs/ms_deform_attn.md``. NaN/inf locations contribute nothing;
* per-level point counts (RT-DETRv2, D-FINE) with ``num_points_list``: locations
  ``[N, Lq, M, sum(P), 2]`` and weights ``[N, Lq, M, sum(P)]``, computed as such (no padding);
* CPU, CUDA and Triton kernels, float16/bfloat16 computed in float32, any head dim;
* ``im2col_step`` accepted for compatibility and ignored: it never constrains the batch size;
* a deterministic backward on CPU, and under ``torch.use_deterministic_algorithms(True)`` on GPUs
  (Triton's sort-and-segment backward; the native CUDA op's backward is sent to it, and raises
  when Triton is not installed). Otherwise the GPU backwards add into ``grad_value`` with atomics;
* ``torch.ops.detr_ops.ms_deform_attn`` (and ``ms_deform_attn_points``) with fake kernels and
  autograd, so they trace under ``torch.compile(fullgraph=True)`` and ``torch.export``.

Value, locations and attention weights of different floating dtypes are promoted to a common one.
"""
import torch

from detr_ops import _backend, _extension, _registrations
from detr_ops._dtypes import FLOAT_DTYPES
from detr_ops.ops import _checks


def _float_tensor(x, name: str) -> torch.Tensor:
    x = _checks.floating(x, name)
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got dtype {x.dtype}")
    return x


def _points_list(num_points_list):
    """A list of non-negative Python ints (one per level), or None."""
    if num_points_list is None:
        return None
    if isinstance(num_points_list, torch.Tensor) or not isinstance(num_points_list, (list, tuple)):
        raise TypeError(f"num_points_list must be a list of ints (points per level), got "
                        f"{type(num_points_list).__name__}")
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in num_points_list):
        raise TypeError(f"num_points_list must be a list of ints (points per level), got {list(num_points_list)}")
    if any(p < 0 for p in num_points_list):
        raise ValueError(f"num_points_list must hold non-negative counts, got {list(num_points_list)}")
    return [int(p) for p in num_points_list]


def _check_shapes(value, shapes, starts, locations, weights, num_points) -> None:
    if value.dim() != 4:
        raise ValueError(f"value must be [N, S, M, D], got shape {tuple(value.shape)}")
    N, _, M, _ = value.shape
    if shapes.dim() != 2 or shapes.shape[1] != 2:
        raise ValueError(f"value_spatial_shapes must be [L, 2] (H, W per level), got shape {tuple(shapes.shape)}")
    L = shapes.shape[0]
    if starts.shape != (L,):
        raise ValueError(f"value_level_start_index must be [L] = [{L}], got shape {tuple(starts.shape)}")
    if num_points is None:
        if locations.dim() != 6 or locations.shape[0] != N or locations.shape[2] != M or locations.shape[3] != L \
                or locations.shape[5] != 2:
            raise ValueError(f"sampling_locations must be [N, Lq, M, L, P, 2] = [{N}, Lq, {M}, {L}, P, 2], got shape "
                             f"{tuple(locations.shape)}")
        if weights.shape != locations.shape[:5]:
            raise ValueError(f"attention_weights must be [N, Lq, M, L, P] = {list(locations.shape[:5])}, got shape "
                             f"{tuple(weights.shape)}")
        return
    if len(num_points) != L:
        raise ValueError(f"num_points_list must have one entry per level (L = {L}), got {num_points}")
    K = sum(num_points)
    if locations.dim() != 5 or locations.shape[0] != N or locations.shape[2] != M or locations.shape[3] != K \
            or locations.shape[4] != 2:
        raise ValueError(f"sampling_locations must be [N, Lq, M, sum(num_points_list), 2] = [{N}, Lq, {M}, {K}, 2], "
                         f"got shape {tuple(locations.shape)}")
    if weights.shape != locations.shape[:4]:
        raise ValueError(f"attention_weights must be [N, Lq, M, sum(num_points_list)] = {list(locations.shape[:4])}, "
                         f"got shape {tuple(weights.shape)}")


def _check_levels(value, shapes, starts) -> None:
    """The value-dependent invariants: reads the [L, 2] shapes on the host (a sync on a GPU). Python
    integers, so H * W cannot overflow here."""
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


def _prepare(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights, validate,
             num_points=None):
    value = _float_tensor(value, "value")
    locations = _float_tensor(sampling_locations, "sampling_locations")
    weights = _float_tensor(attention_weights, "attention_weights")
    shapes = _checks.index_tensor(value_spatial_shapes, "value_spatial_shapes")
    starts = _checks.index_tensor(value_level_start_index, "value_level_start_index")
    for name, t in (("value_spatial_shapes", shapes), ("value_level_start_index", starts),
                    ("sampling_locations", locations), ("attention_weights", weights)):
        _checks.same_device("value", value, name, t)
    _check_shapes(value, shapes, starts, locations, weights, num_points)
    if validate is None:
        # Free on CPU; on a GPU it would synchronise, and under tracing the shapes are symbolic.
        validate = value.device.type == "cpu" and not torch.compiler.is_compiling()
    if validate:
        _check_levels(value, shapes, starts)
    dtype = torch.promote_types(torch.promote_types(value.dtype, locations.dtype), weights.dtype)
    return value.to(dtype), shapes, starts, locations.to(dtype), weights.to(dtype)


def ms_deform_attn(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                   im2col_step=64, *, num_points_list=None, backend: str = "auto", validate=None):
    """Multi-scale deformable attention: ``[N, S, M, D]`` values -> ``[N, Lq, M*D]``.

    ``value_spatial_shapes`` ``[L, 2]`` (H, W per level) and ``value_level_start_index`` ``[L]``
    describe how value's S rows hold the levels. ``sampling_locations`` (x, y in [0, 1]) and
    ``attention_weights`` are ``[N, Lq, M, L, P, 2]`` and ``[N, Lq, M, L, P]``; with
    ``num_points_list`` (a list of L ints, points per level, as RT-DETRv2 / D-FINE) they are
    ``[N, Lq, M, sum(num_points_list), 2]`` and ``[N, Lq, M, sum(num_points_list)]``, level by level
    along the points axis.

    The sampling follows Deformable DETR's 2020 CUDA kernel exactly, including where bilinear
    sampling has kinks: a point is sampled only when ``-1 < x * W - 0.5 < W`` (and y alike; at exactly
    -1 it contributes nothing and gets a zero gradient), and at an integer pixel coordinate the
    location gradient is the right-hand one (the cell ``[floor, floor + 1]``). ``grid_sample``
    (:func:`detr_ops.ms_deform_attn_pytorch`) agrees everywhere else; docs/ms_deform_attn.md.

    ``validate`` checks that the spatial shapes sum to S and that the level start indices match
    them: ``None`` (default) does so on CPU tensors only (on a GPU it would synchronise the host);
    ``True`` always, ``False`` never. Unchecked inconsistent shapes never read out of bounds: a
    level that does not fit in ``value`` (overflowing H * W included) is skipped.
    """
    num_points = _points_list(num_points_list)
    value, shapes, starts, locations, weights = _prepare(
        value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights, validate,
        num_points
    )
    _extension.load()
    suffix = "_triton" if _backend.resolve(backend, value.device) == "triton" else ""
    if suffix:
        from detr_ops import _triton_twins  # noqa: F401  (defines the *_triton ops on first use)
    if num_points is None:
        return getattr(torch.ops.detr_ops, f"ms_deform_attn{suffix}")(value, shapes, starts, locations, weights)
    return getattr(torch.ops.detr_ops, f"ms_deform_attn_points{suffix}")(value, shapes, starts, locations, weights,
                                                                          num_points)


class MSDeformAttnFunction(torch.autograd.Function):
    """Deformable DETR's ``MSDeformAttnFunction``: ``MSDeformAttnFunction.apply(value,
    value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
    im2col_step)``. Runs the compiled kernel of the inputs' device (``backend="auto"``), with the
    2020 kernel's conventions at kinks (see :func:`ms_deform_attn`)."""

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
        # The native op's backward, or on CUDA under torch.use_deterministic_algorithms(True) the
        # deterministic Triton one (as the op's registered autograd does).
        backward = _registrations.backward_op("ms_deform_attn", "", value.device, reroute=True)
        grad_value, grad_locations, grad_weights = backward(grad_output.to(value.dtype), value, shapes, starts,
                                                            locations, weights)
        return grad_value, None, None, grad_locations, grad_weights, None
