"""``torch.onnx.export`` of modules that call detr_ops's ops, run in ONNX Runtime (CPU).

Each graph is exported once (module-scoped fixtures: an export costs seconds) and then run on
inputs of other batch sizes, query counts and level sizes than the example it was traced with:
points off the map, a 1x1 level, 1 to 4 images. Both exporters: dynamo (``torch.export``-based,
the default) and TorchScript (still shipped, deprecated)."""
import pytest
import torch

import detr_ops
import detr_ops.onnx
from tests.msda_inputs import level_tensors

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
# The TorchScript exporter warns that it is deprecated, and its tracer warns about the ops' input
# checks (they run on the example values, which is what they are for).
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

M, D, P = 2, 4, 3
EXAMPLE_LEVELS = [(6, 7), (3, 4), (1, 1)]
# (levels, N, Lq): other sizes than the example's, a 1x1 level in each.
CASES = [([(6, 7), (3, 4), (1, 1)], 2, 5), ([(4, 5), (1, 1), (2, 2)], 1, 9), ([(9, 3), (2, 6), (1, 1)], 4, 3)]
NAMES = ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"]


class MSDA(torch.nn.Module):
    def forward(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        return detr_ops.ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


def msda_inputs(levels, N, Lq, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes, starts, S = level_tensors(levels)
    L = len(levels)
    value = torch.randn(N, S, M, D, generator=g)
    locations = torch.rand(N, Lq, M, L, P, 2, generator=g) * 1.6 - 0.3  # about a third off the map
    weights = torch.rand(N, Lq, M, L, P, generator=g)
    return value, shapes, starts, locations, weights


def export(msda, exporter, path):
    args = msda_inputs(EXAMPLE_LEVELS, 2, 5)
    with torch.no_grad(), detr_ops.onnx.export_options(msda=msda):
        if exporter == "dynamo":
            pytest.importorskip("onnxscript")
            n, s, q = torch.export.Dim("n"), torch.export.Dim("s"), torch.export.Dim("q")
            dynamic = ({0: n, 1: s}, None, None, {0: n, 1: q}, {0: n, 1: q})
            torch.onnx.export(MSDA(), args, dynamo=True, dynamic_shapes=dynamic, input_names=NAMES,
                              verbose=False).save(str(path))
        else:
            axes = {"value": {0: "n", 1: "s"}, "sampling_locations": {0: "n", 1: "q"},
                    "attention_weights": {0: "n", 1: "q"}}
            torch.onnx.export(MSDA(), args, str(path), dynamo=False, opset_version=17, input_names=NAMES,
                              dynamic_axes=axes)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=msda != "tensorrt")
    return model


def op_types(model):
    return [n.op_type for n in model.graph.node]


EXPORTS = [(msda, exporter) for exporter in ("dynamo", "torchscript") for msda in detr_ops.onnx.MSDA_MODES]


@pytest.fixture(scope="module", params=EXPORTS, ids=[f"{m}-{e}" for m, e in EXPORTS])
def exported(request, tmp_path_factory):
    msda, exporter = request.param
    path = tmp_path_factory.mktemp("onnx") / f"msda_{msda}_{exporter}.onnx"
    return msda, exporter, path, export(msda, exporter, path)


def test_msda_graph_structure(exported):
    msda, _, _, model = exported
    types = op_types(model)
    if msda == "gather":
        assert "GridSample" not in types and "Gather" in types
    elif msda == "grid_sample":
        assert types.count("GridSample") == len(EXAMPLE_LEVELS)  # one per level
    else:
        plugins = [n for n in model.graph.node if n.op_type == "MultiscaleDeformableAttnPlugin_TRT"]
        assert len(plugins) == 1 and "GridSample" not in types
        node = plugins[0]
        assert node.domain == "trt" and len(node.input) == 5
        attrs = {a.name: a.s.decode() for a in node.attribute}
        assert attrs == {"plugin_version": "2", "plugin_namespace": ""}
        assert ("trt", 1) in {(o.domain, o.version) for o in model.opset_import}
        # spatial_shapes and level_start_index reach the node as int32, the floats as float32
        typed = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)}
        producers = {o: n for n in model.graph.node for o in n.output}
        for index, expected in zip(range(5), [onnx.TensorProto.FLOAT, onnx.TensorProto.INT32, onnx.TensorProto.INT32,
                                              onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT]):
            name = node.input[index]
            if name in typed:
                assert typed[name] == expected, (index, typed[name])
            else:  # the TorchScript graph carries no value_info: the input is a Cast to the type
                cast = producers[name]
                assert cast.op_type == "Cast" and cast.attribute[0].i == expected, (index, cast)
    # batch, value rows and queries stay symbolic in the graph's inputs
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert all(isinstance(d, str) for d in dims["value"][:2]) and isinstance(dims["sampling_locations"][1], str)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_msda_runs_in_onnxruntime_like_pytorch(exported, case):
    msda, _, path, _ = exported
    if msda == "tensorrt":
        pytest.skip("ONNX Runtime has no kernel for TensorRT's plugin node")
    inputs = msda_inputs(*CASES[case], seed=case + 1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    (out,) = session.run(None, feed)
    expected = MSDA()(*inputs)
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-5, atol=2e-6)


def test_tensorrt_plugin_version_1(tmp_path):
    path = tmp_path / "v1.onnx"
    with detr_ops.onnx.export_options(msda="tensorrt", tensorrt_plugin_version="1"):
        torch.onnx.export(MSDA(), msda_inputs(EXAMPLE_LEVELS, 1, 2), str(path), dynamo=False, opset_version=17)
    node = [n for n in onnx.load(str(path)).graph.node if n.op_type == "MultiscaleDeformableAttnPlugin_TRT"][0]
    assert {a.name: a.s.decode() for a in node.attribute}["plugin_version"] == "1"
    # The symbolic is registered only for the block: afterwards the TorchScript exporter has no
    # translation for the op again (it raises; after an unregistration its message is torch's
    # "min() arg is an empty sequence" rather than "unsupported operator").
    with pytest.raises(Exception):
        torch.onnx.export(MSDA(), msda_inputs(EXAMPLE_LEVELS, 1, 2), str(tmp_path / "none.onnx"), dynamo=False,
                          opset_version=17)


class Boxes(torch.nn.Module):
    """Every box op, cxcywh conversions included."""

    def forward(self, a, b, c):
        a_xyxy = detr_ops.box_cxcywh_to_xyxy(a)
        return (detr_ops.generalized_box_iou(a_xyxy, b), detr_ops.box_iou(a_xyxy, b),
                detr_ops.generalized_box_iou(a, detr_ops.box_xyxy_to_cxcywh(b), box_format="cxcywh"),
                detr_ops.generalized_box_iou_loss(a_xyxy, c, reduction="none"),
                detr_ops.generalized_box_iou_loss(a, detr_ops.box_xyxy_to_cxcywh(c), box_format="cxcywh",
                                                  reduction="mean"))


def box_inputs(n, m, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 4, generator=g)  # cxcywh
    b = torch.rand(m, 4, generator=g) * 0.5
    b[:, 2:] += b[:, :2]
    c = torch.rand(n, 4, generator=g) * 0.5
    c[:, 2:] += c[:, :2]
    a[0, 2:] = 0.0                      # a point box
    b[0] = torch.tensor([0.6, 0.6, 0.2, 0.9])  # inverted corners
    c[1] = a[1].clone()
    c[1, 2:] = c[1, :2]                 # zero-size target
    return a, b, c


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_box_ops_run_in_onnxruntime_like_pytorch(exporter, tmp_path):
    path = tmp_path / "boxes.onnx"
    names = ["a", "b", "c"]
    with torch.no_grad(), detr_ops.onnx.export_options():
        if exporter == "dynamo":
            pytest.importorskip("onnxscript")
            n, m = torch.export.Dim("n", min=2), torch.export.Dim("m", min=2)
            torch.onnx.export(Boxes(), box_inputs(5, 4, 0), dynamo=True, input_names=names, verbose=False,
                              dynamic_shapes=({0: n}, {0: m}, {0: n})).save(str(path))
        else:
            torch.onnx.export(Boxes(), box_inputs(5, 4, 0), str(path), dynamo=False, opset_version=17,
                              input_names=names, dynamic_axes={"a": {0: "n"}, "b": {0: "m"}, "c": {0: "n"}})
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert not [n for n in model.graph.node if n.domain not in ("", "ai.onnx")]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n, m, seed in ((5, 4, 1), (3, 7, 2)):
        inputs = box_inputs(n, m, seed)
        outs = session.run(None, {k: t.numpy() for k, t in zip(names, inputs)})
        for out, expected in zip(outs, Boxes()(*inputs)):
            torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-5, atol=1e-6)


def test_training_only_op_export_names_the_problem():
    pytest.importorskip("onnxscript")

    class Solve(torch.nn.Module):
        def forward(self, cost):
            return detr_ops.batched_linear_sum_assignment(cost, check=False)[0]

    with detr_ops.onnx.export_options(), pytest.raises(Exception, match="training-only"):
        torch.onnx.export(Solve(), (torch.rand(2, 3, 3),), dynamo=True, verbose=False)
