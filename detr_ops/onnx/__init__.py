"""Export of detr_ops's operators and of models built on them (ONNX, ``torch.export``).

``with detr_ops.onnx.export_options(msda="gather"): torch.onnx.export(model, args, ...)`` exports
any module that calls detr_ops's ops, each op written in standard operators; MSDA as Gather index
arithmetic (``"gather"``, default), one GridSample per level (``"grid_sample"``) or TensorRT's
``MultiscaleDeformableAttnPlugin_TRT`` node (``"tensorrt"``). ``decompositions()`` is the same
table for ``ExportedProgram.run_decompositions``. See docs/export.md.
"""
from detr_ops.onnx.boxes import giou_loss, pairwise_iou
from detr_ops.onnx.msda import ms_deform_attn_gather, ms_deform_attn_grid_sample
from detr_ops.onnx.options import MSDA_MODES, TrainingOnlyOpError, decompositions, export_options
from detr_ops.onnx.tensorrt import ms_deform_attn_tensorrt

__all__ = ["MSDA_MODES", "TrainingOnlyOpError", "decompositions", "export_options", "ms_deform_attn_gather",
           "ms_deform_attn_grid_sample", "ms_deform_attn_tensorrt", "pairwise_iou", "giou_loss"]
