"""The shape, dtype and device rules of the ``ms_deform_attn`` ops, written once for Python.

Used by the ops' fake kernels (``detr_ops/_registrations.py``; ``torch._check_value`` holds for
symbolic shapes under torch.compile / torch.export) and by the Triton launchers
(``detr_ops/triton/ms_deform_attn.py``), which a raw ``torch.ops.detr_ops.*_triton`` call reaches
directly: unlike the C++ kernels (``csrc/ops/common/ms_deform_attn_checks.h``, the same rules),
they would otherwise index memory with whatever sizes they are given.

Two layouts of the sampling points: ``ms_deform_attn`` takes locations ``[N, Lq, M, L, P, 2]``
and weights ``[N, Lq, M, L, P]``; ``ms_deform_attn_points`` takes ``[N, Lq, M, K, 2]`` and
``[N, Lq, M, K]`` with ``K = sum(num_points_list)``.
"""
import torch

from detr_ops._dtypes import FLOAT_DTYPES

_INT64_MAX = 2**63 - 1


def _check(condition, message) -> None:
    torch._check_value(condition, message)


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                 num_points_list=None) -> None:
    """Raises ValueError naming the argument; ``num_points_list`` None: the ``[N, Lq, M, L, P, 2]`` layout."""
    _check(value.dim() == 4, lambda: f"value must be [N, S, M, D], got shape {tuple(value.shape)}")
    _check(value.dtype in FLOAT_DTYPES,
           lambda: f"value must be float16, bfloat16, float32 or float64, got {_dtype_name(value.dtype)}")
    N, M = value.shape[0], value.shape[2]
    _check(spatial_shapes.dim() == 2 and spatial_shapes.shape[1] == 2,
           lambda: f"spatial_shapes must be [L, 2], got shape {tuple(spatial_shapes.shape)}")
    L = spatial_shapes.shape[0]
    _check(tuple(level_start_index.shape) == (L,),
           lambda: f"level_start_index must be [L] = [{L}], got shape {tuple(level_start_index.shape)}")
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        _check(t.dtype == torch.int64, lambda: f"{name} must be int64, got {_dtype_name(t.dtype)}")
    loc, weights = sampling_locations, attention_weights
    if num_points_list is None:
        _check(loc.dim() == 6 and loc.shape[0] == N and loc.shape[2] == M and loc.shape[3] == L and loc.shape[5] == 2,
               lambda: f"sampling_locations must be [N, Lq, M, L, P, 2] = [{N}, Lq, {M}, {L}, P, 2], got shape "
               f"{tuple(loc.shape)}")
        _check(weights.shape == loc.shape[:5],
               lambda: f"attention_weights must be [N, Lq, M, L, P] = {list(loc.shape[:5])}, got shape "
               f"{tuple(weights.shape)}")
    else:
        _check(len(num_points_list) == L,
               lambda: f"num_points_list must have one entry per level (L = {L}), got {len(num_points_list)}")
        _check(all(p >= 0 for p in num_points_list),
               lambda: f"num_points_list must hold non-negative counts, got {list(num_points_list)}")
        K = sum(num_points_list)
        _check(loc.dim() == 5 and loc.shape[0] == N and loc.shape[2] == M and loc.shape[3] == K and loc.shape[4] == 2,
               lambda: f"sampling_locations must be [N, Lq, M, sum(num_points_list), 2] = [{N}, Lq, {M}, {K}, 2], "
               f"got shape {tuple(loc.shape)}")
        _check(weights.shape == loc.shape[:4],
               lambda: f"attention_weights must be [N, Lq, M, sum(num_points_list)] = {list(loc.shape[:4])}, got "
               f"shape {tuple(weights.shape)}")
    _check(loc.dtype == value.dtype and weights.dtype == value.dtype,
           lambda: "value, sampling_locations and attention_weights must have the same dtype, got "
           f"{_dtype_name(value.dtype)}, {_dtype_name(loc.dtype)}, {_dtype_name(weights.dtype)}")
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index),
                    ("sampling_locations", loc), ("attention_weights", weights)):
        _check(t.device == value.device, lambda: f"{name} must be on value's device {value.device}, got {t.device}")


def check_grad_output(grad_output, value, sampling_locations) -> None:
    """The forward output's shape ``[N, Lq, M*D]``, dtype and device (a grad of another dtype, a
    complex one say, is refused rather than converted)."""
    N, _, M, D = value.shape
    expected = (N, sampling_locations.shape[1], M * D)
    _check(tuple(grad_output.shape) == expected,
           lambda: f"grad_output must be [N, Lq, M*D] = {list(expected)}, got shape {tuple(grad_output.shape)}")
    _check(grad_output.dtype == value.dtype,
           lambda: f"grad_output must have value's dtype {_dtype_name(value.dtype)}, got "
           f"{_dtype_name(grad_output.dtype)}")
    _check(grad_output.device == value.device,
           lambda: f"grad_output must be on value's device {value.device}, got {grad_output.device}")


def check_products(value, sampling_locations, num_points) -> None:
    """The index products the Triton kernels form in int64 (an empty or expanded tensor can declare
    sizes whose products do not fit). Concrete sizes only: the launchers call it."""
    N, S, M, D = value.shape
    Lq, K = sampling_locations.shape[1], sum(num_points)
    for what, product in (("value's N * S * M * D", N * S * M * D), ("the output's N * Lq * M * D", N * Lq * M * D),
                          ("the bilinear corners N * Lq * M * K * 4", N * Lq * M * K * 4)):
        if product > _INT64_MAX:
            raise ValueError(f"ms_deform_attn: {what} = {product} overflows int64")
