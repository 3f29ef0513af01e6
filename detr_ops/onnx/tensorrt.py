"""MSDA as TensorRT's ``MultiscaleDeformableAttnPlugin_TRT`` node.

The contract, read from NVIDIA/TensorRT ``plugin/multiscaleDeformableAttnPlugin/``
(``multiscaleDeformableAttnPlugin.cpp``: ``getOutputShapes``, ``supportsFormatCombination``,
``configurePlugin``, ``enqueue``; README.md) and onnx/onnx-tensorrt ``onnxOpImporters.cpp``
(``FallbackPluginImporter``):

* five inputs in this order: ``value [N, S, M, D]``, ``spatial_shapes [L, 2]`` (H, W),
  ``level_start_index [L]``, ``sampling_locations [N, Lq, M, L, P, 2]``,
  ``attention_weights [N, Lq, M, L, P]``;
* ``spatial_shapes`` and ``level_start_index`` are **int32**; value, locations, weights and the
  output share one type, float32 or float16 (linear layout);
* one output ``[N, Lq, M, D]`` (4-D: we reshape it to detr_ops's ``[N, Lq, M*D]`` after the node);
* no plugin fields. TensorRT's ONNX parser imports an unknown node as the plugin named by its
  ``op_type``, at the version in the string attribute ``plugin_version`` (default "1") and the
  namespace in ``plugin_namespace`` (default ""). Version "1" is the IPluginV2DynamicExt plugin
  (TensorRT 8.4 - 10.x, deprecated since 10.11); version "2" the IPluginV3 one (TensorRT >= 10.11).
  Its CUDA kernel samples with the same rule as detr_ops's (``h_im = loc_y * H - 0.5``, sampled
  when ``-1 < h_im < H``).

ONNX Runtime has no kernel for the node: the graph is for TensorRT only. The node is emitted in
the custom domain ``trt`` (the parser ignores the domain; ``onnx.checker`` needs one).
"""
import torch

PLUGIN = "MultiscaleDeformableAttnPlugin_TRT"
DOMAIN = "trt"
PLUGIN_VERSIONS = ("1", "2")
DEFAULT_PLUGIN_VERSION = "2"
# The plugin's float types; other float inputs are computed in float32 and cast back.
_PLUGIN_FLOATS = (torch.float32, torch.float16)
_ONNX_INT32 = 6  # onnx.TensorProto.INT32 (no onnx import needed to build the graph)


def check_plugin_version(plugin_version: str) -> str:
    if plugin_version not in PLUGIN_VERSIONS:
        raise ValueError(f"tensorrt_plugin_version must be one of {PLUGIN_VERSIONS}, got {plugin_version!r}")
    return plugin_version


def ms_deform_attn_tensorrt(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                            plugin_version: str = DEFAULT_PLUGIN_VERSION):
    """One ``trt::MultiscaleDeformableAttnPlugin_TRT`` node (dynamo exporter), through
    :func:`torch.onnx.ops.symbolic`. Outside ``torch.onnx.export`` the node computes zeros: use it
    only while exporting (``export_options`` runs the native op otherwise)."""
    check_plugin_version(plugin_version)
    N, _, M, D = value.shape
    Lq = sampling_locations.shape[1]
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype)
    ct = dtype if dtype in _PLUGIN_FLOATS else torch.float32
    out = torch.onnx.ops.symbolic(
        f"{DOMAIN}::{PLUGIN}",
        (value.to(ct), spatial_shapes.to(torch.int32), level_start_index.to(torch.int32), sampling_locations.to(ct),
         attention_weights.to(ct)),
        {"plugin_version": plugin_version, "plugin_namespace": ""},
        dtype=ct,
        shape=(N, Lq, M, D),
        version=1,
    )
    return out.reshape(N, Lq, M * D).to(dtype)


def torchscript_symbolic(plugin_version: str = DEFAULT_PLUGIN_VERSION):
    """The same node for the TorchScript exporter: a symbolic for ``detr_ops::ms_deform_attn``
    (register with ``torch.onnx.register_custom_op_symbolic``). The float inputs reach it in one
    dtype (the public function promotes them) and pass through as they are: export float32 or
    float16 models, the plugin's types."""
    check_plugin_version(plugin_version)

    def symbolic(g, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        out = g.op(
            f"{DOMAIN}::{PLUGIN}",
            value,
            g.op("Cast", spatial_shapes, to_i=_ONNX_INT32),
            g.op("Cast", level_start_index, to_i=_ONNX_INT32),
            sampling_locations,
            attention_weights,
            plugin_version_s=plugin_version,
            plugin_namespace_s="",
        )
        out.setType(value.type())
        # [N, Lq, M, D] -> [N, Lq, M*D]: 0 copies the input's dimension, -1 takes the rest.
        shape = g.op("Constant", value_t=torch.tensor([0, 0, -1], dtype=torch.int64))
        return g.op("Reshape", out, shape)

    return symbolic
