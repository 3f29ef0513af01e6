"""How detr_ops's operators reach an exported graph: each op's decomposition, chosen per export.

Two entry points share one table, ``{OpOverload: decomposition}`` (:func:`decompositions`):

* :func:`export_options` is a context manager that pushes a ``TorchFunctionMode``. While it is
  active, every *traced* call of a ``torch.ops.detr_ops.*`` operator (whichever public function,
  module or ``autograd.Function`` makes it) runs the op's decomposition instead, so
  ``torch.export``, the ONNX exporters (dynamo and TorchScript, which trace the model under the
  mode) and any other tracer record standard operators; eager calls run the native ops. In
  ``"tensorrt"`` mode MSDA becomes the plugin node; under the TorchScript exporter the op is left
  in the trace and a symbolic registered for the duration of the block emits the node.
* :func:`decompositions` is the table itself, for ``ExportedProgram.run_decompositions`` on a
  program that was exported with the custom ops in it (AOTInductor, ExecuTorch).

Training-only ops (the matcher's cost and the assignment solver) map to a function that raises
:class:`TrainingOnlyOpError`: an inference graph has no use for them and no standard-operator form.
(``detr_ops.linear_sum_assignment`` is scipy's numpy-in, numpy-out drop-in, not a torch op: no
tracer can record it in the first place.)
The hook reads nothing inside ``detr_ops.ops``: it names the registered ops only.
"""
import contextlib
import functools

import torch
from torch.overrides import TorchFunctionMode

from detr_ops.onnx import boxes, msda, tensorrt

MSDA_MODES = ("gather", "grid_sample", "tensorrt")
# Opset of the TorchScript symbolic registration (it applies to this opset and every later one).
_TORCHSCRIPT_MIN_OPSET = 9

# Registered op name -> what it becomes. The "_triton" twins share their op's schema.
_MSDA_OPS = ("ms_deform_attn", "ms_deform_attn_triton")
_BOX_OPS = {"pairwise_iou": boxes.pairwise_iou, "pairwise_iou_triton": boxes.pairwise_iou,
            "giou_loss": boxes.giou_loss, "giou_loss_triton": boxes.giou_loss}
_TRAINING_ONLY = {
    "matching_cost": "the Hungarian matcher's cost (detr_ops.matching_cost / HungarianMatcher)",
    "matching_cost_triton": "the Hungarian matcher's cost (detr_ops.matching_cost / HungarianMatcher)",
    "batched_linear_sum_assignment": "the assignment solver (detr_ops.batched_linear_sum_assignment)",
    "batched_linear_sum_assignment_triton": "the assignment solver (detr_ops.batched_linear_sum_assignment)",
}


class TrainingOnlyOpError(RuntimeError):
    """Raised when a training-only detr_ops op is exported."""


def _training_only(name: str, what: str):
    def raise_training_only(*args, **kwargs):
        raise TrainingOnlyOpError(
            f"detr_ops::{name} is training-only: {what} builds training targets and has no export form. "
            "Export the model's inference forward (model.eval(), without the matcher / SetCriterion); "
            "detections come from the model outputs and detr_ops.models.postprocess."
        )

    raise_training_only.__name__ = f"{name}_training_only"
    return raise_training_only


def _check_mode(msda_mode: str) -> str:
    if msda_mode not in MSDA_MODES:
        raise ValueError(f"msda must be one of {MSDA_MODES}, got {msda_mode!r}")
    return msda_mode


def _registered(name: str):
    """``torch.ops.detr_ops.<name>.default``, or None when that op is not registered (no
    extension, or a Triton twin whose module was never imported)."""
    try:
        return getattr(getattr(torch.ops.detr_ops, name), "default")
    except (AttributeError, RuntimeError):
        return None


def _msda_decomposition(msda_mode: str, tensorrt_plugin_version: str):
    if msda_mode == "gather":
        return msda.ms_deform_attn_gather
    if msda_mode == "grid_sample":
        return msda.ms_deform_attn_grid_sample
    return functools.partial(tensorrt.ms_deform_attn_tensorrt, plugin_version=tensorrt_plugin_version)


def decompositions(msda: str = "gather", *, tensorrt_plugin_version: str = tensorrt.DEFAULT_PLUGIN_VERSION,
                   with_defaults: bool = False) -> dict:
    """``{torch.ops.detr_ops.<op>.default: decomposition}`` for every registered detr_ops op.

    ``msda`` picks MSDA's form: ``"gather"`` (default), ``"grid_sample"`` or ``"tensorrt"`` (an
    ONNX plugin node, meaningful only for ``torch.onnx.export``). ``with_defaults=True`` returns
    ``torch.export.default_decompositions()`` with these entries added, ready for
    ``ExportedProgram.run_decompositions`` (core ATen and no detr_ops ops left).
    """
    _check_mode(msda)
    tensorrt.check_plugin_version(tensorrt_plugin_version)
    table = {}
    for name in _MSDA_OPS:
        op = _registered(name)
        if op is not None:
            table[op] = _msda_decomposition(msda, tensorrt_plugin_version)
    for name, fn in _BOX_OPS.items():
        op = _registered(name)
        if op is not None:
            table[op] = fn
    for name, what in _TRAINING_ONLY.items():
        op = _registered(name)
        if op is not None:
            table[op] = _training_only(name, what)
    if not with_defaults:
        return table
    full = torch.export.default_decompositions()
    for op, fn in table.items():
        full[op] = fn
    return full


def _tracing_for_export() -> bool:
    """True while torch.export / torch.compile / the TorchScript tracer records the model."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


class _DecomposeOps(TorchFunctionMode):
    """Redirects calls of the table's ops to their decompositions while a tracer records them.

    Eager calls inside the block run the native ops unchanged (same values, no plugin node that
    computes zeros, no training-only error for a training step). Both ``torch.ops.detr_ops.x``
    (an ``OpOverloadPacket``) and ``torch.ops.detr_ops.x.default`` reach ``__torch_function__``.
    """

    def __init__(self, table: dict, msda_mode: str):
        super().__init__()
        self.table = table
        self.packets = {op.overloadpacket: op for op in table}
        self.msda_ops = {op for op in table if op.name().split("::")[1] in _MSDA_OPS}
        self.msda_mode = msda_mode

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = self.packets.get(func, func) if isinstance(func, torch._ops.OpOverloadPacket) else func
        decomposition = self.table.get(op) if isinstance(op, torch._ops.OpOverload) else None
        if decomposition is None or not _tracing_for_export():
            return func(*args, **kwargs)
        if self.msda_mode == "tensorrt" and op in self.msda_ops and torch.jit.is_tracing():
            # The TorchScript exporter keeps the op in its trace; the symbolic that export_options
            # registered turns it into the plugin node.
            return func(*args, **kwargs)
        return decomposition(*args, **kwargs)


@contextlib.contextmanager
def export_options(msda: str = "gather", *, tensorrt_plugin_version: str = tensorrt.DEFAULT_PLUGIN_VERSION):
    """Within the block, detr_ops's ops trace as standard operators (see the module docstring).

    ``msda``: ``"gather"`` (default; Gather and index arithmetic, no GridSample), ``"grid_sample"``
    (one GridSample per level) or ``"tensorrt"`` (one ``MultiscaleDeformableAttnPlugin_TRT``
    node; ``tensorrt_plugin_version`` "2" for TensorRT >= 10.11, "1" for older ones).
    GIoU / IoU become elementwise arithmetic; the matcher and the solver raise
    :class:`TrainingOnlyOpError`.
    """
    table = decompositions(msda, tensorrt_plugin_version=tensorrt_plugin_version)
    symbolics = []
    if msda == "tensorrt":
        symbolic = tensorrt.torchscript_symbolic(tensorrt_plugin_version)
        symbolics = [f"detr_ops::{name}" for name in _MSDA_OPS if _registered(name) is not None]
        for name in symbolics:
            torch.onnx.register_custom_op_symbolic(name, symbolic, _TORCHSCRIPT_MIN_OPSET)
    try:
        with _DecomposeOps(table, msda):
            yield
    finally:
        for name in symbolics:
            torch.onnx.unregister_custom_op_symbolic(name, _TORCHSCRIPT_MIN_OPSET)
