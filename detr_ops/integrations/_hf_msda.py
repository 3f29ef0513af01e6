"""Hugging Face transformers' deformable-attention entry points, computed by ``detr_ops.ms_deform_attn``.

transformers (5.x) reaches multi-scale deformable attention through three doors, each a plain
PyTorch ``grid_sample`` loop over levels:

* ``MultiScaleDeformableAttention.forward(value, value_spatial_shapes, value_spatial_shapes_list,
  level_start_index, sampling_locations, attention_weights, im2col_step)``: a parameter-free module
  that Deformable DETR, RT-DETR, Grounding DINO, MM Grounding DINO, LW-DETR, RF-DETR, OmDet-Turbo
  and PP-DocLayout V2/V3/V4 each define (identically) in their modeling file;
* ``multi_scale_deformable_attention(value, value_spatial_shapes, sampling_locations,
  attention_weights)``: a module-level function (Mask2Former, OneFormer pixel decoders);
* ``multi_scale_deformable_attention_v2(value, value_spatial_shapes, sampling_locations,
  attention_weights, num_points_list, method)``: RT-DETRv2, D-FINE, DEIMv2, with per-level point
  counts and locations ``[N, Lq, M, sum(P), 2]``.

Each replacement here takes the same arguments and returns what the original returns, and calls
the original itself for what the op cannot represent (a device without a detr_ops kernel, a shape
the original would reject with its own error, D-FINE's ``method="discrete"``), so behaviour
outside the fast path is transformers' own.
"""
import torch

from detr_ops.ops.ms_deform_attn import ms_deform_attn

# Devices with a detr_ops MSDA kernel; anything else (mps, xpu, ...) runs transformers' code.
_DEVICES = ("cpu", "cuda")


def _representable(value, sampling_locations, attention_weights, location_dims) -> bool:
    tensors = (value, sampling_locations, attention_weights)
    if not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tensors):
        return False
    if value.device.type not in _DEVICES or any(t.device != value.device for t in tensors[1:]):
        return False
    return value.dim() == 4 and sampling_locations.dim() == location_dims and sampling_locations.shape[-1] == 2


def _levels(spatial_shapes, device):
    """``(shapes [L, 2] int64, level_start_index [L] int64)`` on ``device`` from transformers'
    ``spatial_shapes_list`` (a list of ``(H, W)``) or an ``[L, 2]`` tensor."""
    if isinstance(spatial_shapes, torch.Tensor):
        shapes = spatial_shapes.to(device=device, dtype=torch.int64)
    else:
        shapes = torch.tensor([[int(h), int(w)] for h, w in spatial_shapes], dtype=torch.int64, device=device)
    sizes = shapes[:, 0] * shapes[:, 1]
    return shapes, torch.cumsum(sizes, 0) - sizes


def ms_deform_attn_points_list(value, shapes, level_start_index, sampling_locations, attention_weights,
                               num_points_list, *, backend="auto"):
    """MSDA with a point count per level: locations ``[N, Lq, M, sum(P), 2]``, weights
    ``[N, Lq, M, sum(P)]`` (level-major along the points axis, as RT-DETRv2 / D-FINE lay them out)
    -> ``[N, Lq, M*D]``.

    The one place that maps transformers' per-level point counts onto the op, which takes them
    natively (``num_points_list``: no padding, every level sampled with its own count).
    """
    return ms_deform_attn(value, shapes, level_start_index, sampling_locations, attention_weights,
                          num_points_list=list(num_points_list), backend=backend)


class Adapters:
    """The three replacements, bound to the originals they fall back to and to a backend."""

    def __init__(self, backend="auto"):
        self.backend = backend

    def module_forward(self, original):
        """Replacement for ``MultiScaleDeformableAttention.forward`` (an unbound method)."""
        backend = self.backend

        def forward(module, value, value_spatial_shapes, value_spatial_shapes_list, level_start_index,
                    sampling_locations, attention_weights, im2col_step):
            if not (_representable(value, sampling_locations, attention_weights, 6)
                    and isinstance(value_spatial_shapes, torch.Tensor) and isinstance(level_start_index, torch.Tensor)
                    and value_spatial_shapes.device == value.device and level_start_index.device == value.device):
                return original(module, value, value_spatial_shapes, value_spatial_shapes_list, level_start_index,
                                sampling_locations, attention_weights, im2col_step)
            return ms_deform_attn(value, value_spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights, im2col_step, backend=backend)

        forward.__wrapped__ = original
        forward.__doc__ = "detr_ops.ms_deform_attn in place of transformers' grid_sample loop."
        return forward

    def function_v1(self, original):
        """Replacement for ``multi_scale_deformable_attention`` (Mask2Former, OneFormer)."""
        backend = self.backend

        def multi_scale_deformable_attention(value, value_spatial_shapes, sampling_locations, attention_weights):
            if not _representable(value, sampling_locations, attention_weights, 6):
                return original(value, value_spatial_shapes, sampling_locations, attention_weights)
            shapes, starts = _levels(value_spatial_shapes, value.device)
            return ms_deform_attn(value, shapes, starts, sampling_locations, attention_weights, backend=backend)

        multi_scale_deformable_attention.__wrapped__ = original
        return multi_scale_deformable_attention

    def function_v2(self, original):
        """Replacement for ``multi_scale_deformable_attention_v2`` (RT-DETRv2, D-FINE, DEIMv2).
        ``method="discrete"`` (nearest-pixel sampling by integer indexing) has no detr_ops
        equivalent and runs transformers' code."""
        backend = self.backend

        def multi_scale_deformable_attention_v2(value, value_spatial_shapes, sampling_locations, attention_weights,
                                                num_points_list, method="default"):
            if method != "default" or not _representable(value, sampling_locations, attention_weights, 5) \
                    or len(num_points_list) != len(value_spatial_shapes) or not len(num_points_list):
                return original(value, value_spatial_shapes, sampling_locations, attention_weights, num_points_list,
                                method)
            shapes, starts = _levels(value_spatial_shapes, value.device)
            return ms_deform_attn_points_list(value, shapes, starts, sampling_locations, attention_weights,
                                              [int(p) for p in num_points_list], backend=backend)

        multi_scale_deformable_attention_v2.__wrapped__ = original
        return multi_scale_deformable_attention_v2
