"""Every Python-side ``torch.library`` registration of detr_ops, in one place (as torchvision's
``_meta_registrations.py``).

An op is declared once, in C++ (``csrc/ops/<op>.cpp``: its schema; ``cpu/`` and ``cuda/``: its
kernels). For each op this module, with one helper (:func:`register`):

1. defines its Triton twin ``detr_ops::<op>_triton`` (on first use, see register_triton_twins): the
   launcher of the same name in ``detr_ops/triton/<file>.py``, whose schema is checked to be the
   native op's. On a GPU the twin is a ``torch.library.triton_op`` (Inductor sees its kernels); under
   ``TRITON_INTERPRET=1`` (set before Triton is imported) it is a ``custom_op``,
   because tracing a triton_op runs its body on fake tensors and the interpreter needs real data
   pointers;
2. registers one fake kernel for the op and its twin: the shape checks (``torch._check_value``, so
   they hold for symbolic shapes under torch.compile / torch.export) and the output metadata;
3. registers one autograd formula for both: the backward is its own op, ``<op>_backward`` (or
   ``<op>_backward_triton`` for the twin), called with the incoming gradient and the op's inputs;
4. guards a backward that is not deterministic (Triton MSDA accumulates ``grad_value`` with atomics).
   The native CUDA MSDA backward raises its own ``alertNotDeterministic`` in C++, so C++ callers get
   it too and Python callers get it once.

Imported by ``detr_ops/__init__.py``; nothing here is public API. The op table is ``OPS`` at the end.
"""
import importlib
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from detr_ops import _backend, _extension
from detr_ops._dtypes import FLOAT_DTYPES, acc_dtype

NAMESPACE = "detr_ops"
BOX_FORMATS = ("xyxy", "cxcywh")
# matching_cost's class terms (csrc/ops/common/matching_cost.h, ClassCost)
MATCHING_CLASS_COSTS = ("softmax", "focal", "focal_logsigmoid", "iou_aware")


def _op(name: str):
    return getattr(getattr(torch.ops, NAMESPACE), name)


# ---- one helper for every op ---------------------------------------------------------------------


@dataclass(frozen=True)
class OpSpec:
    """What Python registers for one op declared in C++.

    name: the op; triton_file: module of ``detr_ops.triton`` whose function ``name`` (and
    ``{name}_backward``) launches the Triton kernels; fake: fake kernel, shared by the op and its
    twin; backward_fake: fake kernel of ``{name}_backward`` (giving it makes the op differentiable);
    grad_inputs: positions of the inputs that ``{name}_backward`` returns gradients for, in order;
    atomic_triton_backward: the twin's backward is not deterministic (refused, or warned about,
    under ``torch.use_deterministic_algorithms(True)``).
    """

    name: str
    triton_file: str
    fake: Callable
    backward_fake: Optional[Callable] = None
    grad_inputs: Sequence[int] = ()
    atomic_triton_backward: bool = False


def register(spec: OpSpec, suffix: str) -> None:
    """Registers ``detr_ops::{spec.name}{suffix}``: suffix ``""`` is the native op, ``"_triton"`` its
    twin (defined here first)."""
    names = [spec.name] + ([f"{spec.name}_backward"] if spec.backward_fake is not None else [])
    if suffix == "_triton":
        for op in names:
            _define_triton_twin(op, spec.triton_file)
    torch.library.register_fake(f"{NAMESPACE}::{spec.name}{suffix}", spec.fake)
    if spec.backward_fake is not None:
        torch.library.register_fake(f"{NAMESPACE}::{spec.name}_backward{suffix}", spec.backward_fake)
        _register_autograd(spec.name, suffix, spec.grad_inputs, atomic=bool(suffix) and spec.atomic_triton_backward)


def _define_triton_twin(op: str, triton_file: str) -> None:
    launcher = getattr(importlib.import_module(f"detr_ops.triton.{triton_file}"), op)
    define = torch.library.custom_op if _backend.interpreting() else torch.library.triton_op
    define(f"{NAMESPACE}::{op}_triton", launcher, mutates_args=())
    # The twin's schema comes from the launcher's annotations; it must be the native op's.
    native, twin = str(_op(op).default._schema), str(_op(f"{op}_triton").default._schema)
    if native.replace(f"::{op}(", "::(") != twin.replace(f"::{op}_triton(", "::("):
        raise RuntimeError(f"detr_ops.triton.{triton_file}.{op} does not match the schema of the native op:\n"
                           f"  native: {native}\n  triton: {twin}")


def _register_autograd(name: str, suffix: str, grad_inputs: Sequence[int], atomic: bool) -> None:
    qualified = f"{NAMESPACE}::{name}{suffix}"

    def setup_context(ctx, inputs, output):
        ctx.tensor_positions = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor)]
        ctx.inputs = [None if isinstance(x, torch.Tensor) else x for x in inputs]
        ctx.save_for_backward(*[inputs[i] for i in ctx.tensor_positions])

    def backward(ctx, grad):
        inputs = list(ctx.inputs)
        for position, saved in zip(ctx.tensor_positions, ctx.saved_tensors):
            inputs[position] = saved
        if atomic:
            check_deterministic(f"{qualified}_backward", inputs[0].device)
        grads = _op(f"{name}_backward{suffix}")(grad, *inputs)
        out = [None] * len(inputs)
        for position, g in zip(grad_inputs, grads):
            out[position] = g
        return tuple(out)

    torch.library.register_autograd(qualified, backward, setup_context=setup_context)


def check_deterministic(op: str, device: torch.device) -> None:
    """Raises (or warns, in warn-only mode) when deterministic algorithms are requested for a backward
    that accumulates with atomics."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = (
        f"{op} on {device.type} accumulates with atomic adds and is not deterministic; it cannot run under "
        "torch.use_deterministic_algorithms(True). Run the native op instead, or use "
        "torch.use_deterministic_algorithms(True, warn_only=True) to accept it."
    )
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message)
        return
    raise RuntimeError(message)


def _check(condition, message: Callable[[], str]) -> None:
    torch._check_value(condition, message)


# ---- box overlaps: pairwise_iou, giou_loss ------------------------------------------------------


def _check_boxes(boxes1, boxes2, box_format) -> None:
    _check(box_format in BOX_FORMATS, lambda: f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")
    for name, t in (("boxes1", boxes1), ("boxes2", boxes2)):
        _check(t.dim() >= 1 and t.shape[-1] == 4, lambda: f"{name} must have shape [..., 4], got {tuple(t.shape)}")
        _check(t.dtype.is_floating_point, lambda: f"{name} must be a floating tensor, got {t.dtype}")
    _check(boxes1.dtype == boxes2.dtype, lambda: f"boxes1 and boxes2 must have the same dtype, got {boxes1.dtype} "
           f"and {boxes2.dtype}")


def _pairwise_shape(boxes1, boxes2):
    _check(boxes1.dim() in (2, 3) and boxes2.dim() == boxes1.dim(),
           lambda: f"boxes1 and boxes2 must be [N,4] and [M,4], or [B,N,4] and [B,M,4]; got {tuple(boxes1.shape)} "
           f"and {tuple(boxes2.shape)}")
    if boxes1.dim() == 3:
        _check(boxes1.shape[0] == boxes2.shape[0],
               lambda: f"boxes1 and boxes2 must have the same batch size, got {boxes1.shape[0]} and {boxes2.shape[0]}")
    return tuple(boxes1.shape[:-1]) + (boxes2.shape[-2],)


def _fake_pairwise_iou(boxes1, boxes2, box_format, generalized):
    _check_boxes(boxes1, boxes2, box_format)
    return boxes1.new_empty(_pairwise_shape(boxes1, boxes2))


def _fake_pairwise_iou_backward(grad, boxes1, boxes2, box_format, generalized):
    _check_boxes(boxes1, boxes2, box_format)
    shape = _pairwise_shape(boxes1, boxes2)
    _check(tuple(grad.shape) == shape, lambda: f"grad must have shape {list(shape)}, got {tuple(grad.shape)}")
    return torch.empty_like(boxes1), torch.empty_like(boxes2)


def _check_loss_boxes(boxes1, boxes2, box_format):
    _check_boxes(boxes1, boxes2, box_format)
    _check(boxes1.shape == boxes2.shape,
           lambda: f"boxes1 and boxes2 must have the same shape, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")


def _fake_giou_loss(boxes1, boxes2, box_format, eps):
    _check_loss_boxes(boxes1, boxes2, box_format)
    return boxes1.new_empty(boxes1.shape[:-1], dtype=acc_dtype(boxes1.dtype))


def _fake_giou_loss_backward(grad, boxes1, boxes2, box_format, eps):
    _check_loss_boxes(boxes1, boxes2, box_format)
    _check(grad.shape == boxes1.shape[:-1],
           lambda: f"grad must have shape {list(boxes1.shape[:-1])}, got {tuple(grad.shape)}")
    return torch.empty_like(boxes1), torch.empty_like(boxes2)


# ---- matching_cost ------------------------------------------------------------------------------


def _fake_matching_cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes, num_targets, cost_class, cost_bbox, cost_giou,
                        class_cost, focal_alpha, focal_gamma, iou_power):
    _check(pred_logits.dim() == 3, lambda: f"pred_logits must be [B, Q, K], got {tuple(pred_logits.shape)}")
    B, Q = pred_logits.shape[0], pred_logits.shape[1]
    _check(tgt_labels.dim() == 2 and tgt_labels.shape[0] == B,
           lambda: f"tgt_labels must be [B, T] with B = {B}, got {tuple(tgt_labels.shape)}")
    T = tgt_labels.shape[1]
    for name, t, shape in (("pred_boxes", pred_boxes, (B, Q, 4)), ("tgt_boxes", tgt_boxes, (B, T, 4)),
                           ("num_targets", num_targets, (B,))):
        _check(tuple(t.shape) == shape, lambda: f"{name} must be {list(shape)}, got {tuple(t.shape)}")
    for name, t in (("tgt_labels", tgt_labels), ("num_targets", num_targets)):
        _check(t.dtype == torch.int64, lambda: f"{name} must be int64, got {t.dtype}")
    _check(pred_logits.dtype.is_floating_point, lambda: f"pred_logits must be floating point, got {pred_logits.dtype}")
    _check(class_cost in MATCHING_CLASS_COSTS,
           lambda: f"class_cost must be one of {MATCHING_CLASS_COSTS}, got {class_cost!r}")
    return pred_logits.new_empty((B, Q, T), dtype=acc_dtype(pred_logits.dtype))


# ---- batched_linear_sum_assignment --------------------------------------------------------------


def _fake_batched_linear_sum_assignment(cost, num_rows, num_cols, maximize, capacity=1, capacities=None):
    _check(cost.dim() == 3, lambda: f"cost must be a [B, R, C] tensor, got shape {tuple(cost.shape)}")
    _check(cost.dtype in FLOAT_DTYPES, lambda: f"cost must be float16, bfloat16, float32 or float64, got {cost.dtype}")
    _check(capacity >= 0, lambda: f"capacity must be >= 0, got {capacity}")
    for name, sizes in (("num_rows", num_rows), ("num_cols", num_cols), ("capacities", capacities)):
        if sizes is not None:
            _check(sizes.dtype == torch.int64 and tuple(sizes.shape) == (cost.shape[0],),
                   lambda: f"{name} must be an int64 tensor of shape [B] = [{cost.shape[0]}], got {sizes.dtype} "
                   f"{tuple(sizes.shape)}")
    return (cost.new_empty(cost.shape[:2], dtype=torch.int64), cost.new_empty(cost.shape[:1], dtype=torch.int32))


# ---- ms_deform_attn -----------------------------------------------------------------------------


def _check_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    _check(value.dim() == 4, lambda: f"value must be [N, S, M, D], got shape {tuple(value.shape)}")
    N, M = value.shape[0], value.shape[2]
    _check(spatial_shapes.dim() == 2 and spatial_shapes.shape[1] == 2,
           lambda: f"spatial_shapes must be [L, 2], got shape {tuple(spatial_shapes.shape)}")
    L = spatial_shapes.shape[0]
    _check(tuple(level_start_index.shape) == (L,),
           lambda: f"level_start_index must be [L] = [{L}], got shape {tuple(level_start_index.shape)}")
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        _check(t.dtype == torch.int64, lambda: f"{name} must be int64, got {t.dtype}")
    loc = sampling_locations
    _check(loc.dim() == 6 and loc.shape[0] == N and loc.shape[2] == M and loc.shape[3] == L and loc.shape[5] == 2,
           lambda: f"sampling_locations must be [N, Lq, M, L, P, 2] = [{N}, Lq, {M}, {L}, P, 2], got shape "
           f"{tuple(loc.shape)}")
    _check(attention_weights.shape == loc.shape[:5],
           lambda: f"attention_weights must be [N, Lq, M, L, P] = {list(loc.shape[:5])}, got shape "
           f"{tuple(attention_weights.shape)}")
    _check(value.dtype.is_floating_point and loc.dtype == value.dtype and attention_weights.dtype == value.dtype,
           lambda: "value, sampling_locations and attention_weights must have the same floating dtype, got "
           f"{value.dtype}, {loc.dtype}, {attention_weights.dtype}")


def _fake_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    _check_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    N, _, M, D = value.shape
    return value.new_empty((N, sampling_locations.shape[1], M * D))


def _fake_ms_deform_attn_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights):
    _check_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    N, _, M, D = value.shape
    expected = (N, sampling_locations.shape[1], M * D)
    _check(tuple(grad_output.shape) == expected,
           lambda: f"grad_output must be [N, Lq, M*D] = {list(expected)}, got shape {tuple(grad_output.shape)}")
    return (value.new_empty(value.shape), sampling_locations.new_empty(sampling_locations.shape),
            attention_weights.new_empty(attention_weights.shape))


# ---- the table ----------------------------------------------------------------------------------

OPS = (
    OpSpec("pairwise_iou", "box_iou", _fake_pairwise_iou, _fake_pairwise_iou_backward, grad_inputs=(0, 1)),
    OpSpec("giou_loss", "box_iou", _fake_giou_loss, _fake_giou_loss_backward, grad_inputs=(0, 1)),
    OpSpec("matching_cost", "matching_cost", _fake_matching_cost),
    OpSpec("batched_linear_sum_assignment", "linear_sum_assignment", _fake_batched_linear_sum_assignment),
    OpSpec("ms_deform_attn", "ms_deform_attn", _fake_ms_deform_attn, _fake_ms_deform_attn_backward,
           grad_inputs=(0, 3, 4), atomic_triton_backward=True),
)

_triton_twins_defined = False


def register_triton_twins() -> None:
    """Defines every ``*_triton`` op (once). Called by ``detr_ops/_triton_twins.py`` on first use of
    ``backend="triton"``: defining a triton_op imports Triton and torch._inductor (seconds), which
    ``import detr_ops`` should not pay."""
    global _triton_twins_defined
    if _triton_twins_defined:
        return
    if not _backend.triton_available():
        raise RuntimeError("backend='triton' needs the triton package (pip install 'detr-ops[triton]')")
    for spec in OPS:
        register(spec, "_triton")
    _triton_twins_defined = True


# The native ops are registered when the package is imported; without the compiled extension there is
# nothing to register.
if _extension.available():
    for _spec in OPS:
        register(_spec, "")
