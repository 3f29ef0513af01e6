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
4. under ``torch.use_deterministic_algorithms(True)``, sends the backward of a native op whose CUDA
   kernel is not deterministic (MSDA's atomic adds) to its Triton twin's backward, which is
   deterministic in that mode, when Triton is installed; without Triton the C++ kernel raises its own
   ``alertNotDeterministic`` (as it does for C++ callers).

Imported by ``detr_ops/__init__.py``; nothing here is public API. The op table is ``OPS`` at the end.
"""
import importlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from detr_ops import _backend, _box_checks, _extension, _ms_deform_attn_shapes
from detr_ops._dtypes import FLOAT_DTYPES, acc_dtype

NAMESPACE = "detr_ops"
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
    cuda_deterministic_via_triton: the native CUDA backward is not deterministic, and the twin's
    backward is under ``torch.use_deterministic_algorithms(True)``: the native op's autograd runs the
    twin's backward on CUDA tensors in that mode.
    """

    name: str
    triton_file: str
    fake: Callable
    backward_fake: Optional[Callable] = None
    grad_inputs: Sequence[int] = ()
    cuda_deterministic_via_triton: bool = False


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
        _register_autograd(spec.name, suffix, spec.grad_inputs,
                           reroute=not suffix and spec.cuda_deterministic_via_triton)


def _define_triton_twin(op: str, triton_file: str) -> None:
    launcher = getattr(importlib.import_module(f"detr_ops.triton.{triton_file}"), op)
    define = torch.library.custom_op if _backend.interpreting() else torch.library.triton_op
    define(f"{NAMESPACE}::{op}_triton", launcher, mutates_args=())
    # The twin's schema comes from the launcher's annotations; it must be the native op's.
    native, twin = str(_op(op).default._schema), str(_op(f"{op}_triton").default._schema)
    if native.replace(f"::{op}(", "::(") != twin.replace(f"::{op}_triton(", "::("):
        raise RuntimeError(f"detr_ops.triton.{triton_file}.{op} does not match the schema of the native op:\n"
                           f"  native: {native}\n  triton: {twin}")


def _register_autograd(name: str, suffix: str, grad_inputs: Sequence[int], reroute: bool) -> None:
    qualified = f"{NAMESPACE}::{name}{suffix}"

    def setup_context(ctx, inputs, output):
        ctx.tensor_positions = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor)]
        ctx.inputs = [None if isinstance(x, torch.Tensor) else x for x in inputs]
        ctx.save_for_backward(*[inputs[i] for i in ctx.tensor_positions])

    def backward(ctx, grad):
        inputs = list(ctx.inputs)
        for position, saved in zip(ctx.tensor_positions, ctx.saved_tensors):
            inputs[position] = saved
        grads = backward_op(name, suffix, inputs[0].device, reroute)(grad, *inputs)
        out = [None] * len(inputs)
        for position, g in zip(grad_inputs, grads):
            out[position] = g
        return tuple(out)

    torch.library.register_autograd(qualified, backward, setup_context=setup_context)


def backward_op(name: str, suffix: str, device: torch.device, reroute: bool):
    """The op that computes the backward of ``{name}{suffix}``: ``{name}_backward{suffix}``, or with
    ``reroute`` (a native op whose CUDA backward uses atomics), on a CUDA device under
    ``torch.use_deterministic_algorithms(True)`` with Triton installed, the twin's deterministic
    ``{name}_backward_triton``."""
    if reroute and device.type == "cuda" and torch.are_deterministic_algorithms_enabled() \
            and _backend.triton_available():
        register_triton_twins()
        return _op(f"{name}_backward_triton")
    return _op(f"{name}_backward{suffix}")


def _check(condition, message: Callable[[], str]) -> None:
    torch._check_value(condition, message)


# ---- box overlaps: pairwise_iou, giou_loss ------------------------------------------------------
# The checks are _box_checks.py's, shared with the Triton launchers (as the C++ kernels share
# csrc/ops/common/box_iou_checks.h).


def _fake_pairwise_iou(boxes1, boxes2, box_format, generalized):
    return boxes1.new_empty(_box_checks.pairwise_shape(boxes1, boxes2, box_format))


def _fake_pairwise_iou_backward(grad, boxes1, boxes2, box_format, generalized):
    _box_checks.check_grad(grad, _box_checks.pairwise_shape(boxes1, boxes2, box_format), boxes1)
    return torch.empty_like(boxes1), torch.empty_like(boxes2)


def _fake_giou_loss(boxes1, boxes2, box_format, eps):
    _box_checks.check_loss_boxes(boxes1, boxes2, box_format, eps)
    return boxes1.new_empty(boxes1.shape[:-1], dtype=acc_dtype(boxes1.dtype))


def _fake_giou_loss_backward(grad, boxes1, boxes2, box_format, eps):
    _box_checks.check_loss_boxes(boxes1, boxes2, box_format, eps)
    _box_checks.check_grad(grad, boxes1.shape[:-1], boxes1)
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


def _fake_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    _ms_deform_attn_shapes.check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    N, _, M, D = value.shape
    return value.new_empty((N, sampling_locations.shape[1], M * D))


def _fake_ms_deform_attn_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights):
    _ms_deform_attn_shapes.check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    _ms_deform_attn_shapes.check_grad_output(grad_output, value, sampling_locations)
    return (value.new_empty(value.shape), sampling_locations.new_empty(sampling_locations.shape),
            attention_weights.new_empty(attention_weights.shape))


def _fake_ms_deform_attn_points(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                                num_points_list):
    _ms_deform_attn_shapes.check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                                        num_points_list)
    N, _, M, D = value.shape
    return value.new_empty((N, sampling_locations.shape[1], M * D))


def _fake_ms_deform_attn_points_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                                         attention_weights, num_points_list):
    _ms_deform_attn_shapes.check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                                        num_points_list)
    _ms_deform_attn_shapes.check_grad_output(grad_output, value, sampling_locations)
    return (value.new_empty(value.shape), sampling_locations.new_empty(sampling_locations.shape),
            attention_weights.new_empty(attention_weights.shape))


# ---- the table ----------------------------------------------------------------------------------

OPS = (
    OpSpec("pairwise_iou", "box_iou", _fake_pairwise_iou, _fake_pairwise_iou_backward, grad_inputs=(0, 1)),
    OpSpec("giou_loss", "box_iou", _fake_giou_loss, _fake_giou_loss_backward, grad_inputs=(0, 1)),
    OpSpec("matching_cost", "matching_cost", _fake_matching_cost),
    OpSpec("batched_linear_sum_assignment", "linear_sum_assignment", _fake_batched_linear_sum_assignment),
    OpSpec("ms_deform_attn", "ms_deform_attn", _fake_ms_deform_attn, _fake_ms_deform_attn_backward,
           grad_inputs=(0, 3, 4), cuda_deterministic_via_triton=True),
    OpSpec("ms_deform_attn_points", "ms_deform_attn", _fake_ms_deform_attn_points,
           _fake_ms_deform_attn_points_backward, grad_inputs=(0, 3, 4), cuda_deterministic_via_triton=True),
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
