"""The reference detectors exported to ONNX and ``torch.export``: images in, detections out.

* the CLI (``python -m detr_ops.models.export``) on a checkpoint: the graph it writes runs in ONNX
  Runtime and gives the PyTorch model's detections, at batch sizes and image sizes other than
  the example's (dynamic axes), and its own check reports so;
* ``torch.export`` with the custom ops kept, then ``run_decompositions`` with detr_ops's table:
  no detr_ops op left, same outputs (what AOTInductor / ExecuTorch users get).
A detector export costs tens of CPU seconds even at the tiny sizes, so there is one per test;
the other MSDA modes of the detectors are exported by benchmarks/onnx_latency.py (the op-level
tests cover every mode)."""
import json

import pytest
import torch

import detr_ops.onnx
from detr_ops.models import build
from detr_ops.models.data import CLASSES
from detr_ops.models.export import InferenceGraph, dynamic_shapes, main, same_detections, synthetic_images
from tests.models_tiny import tiny_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture
def tiny_presets(monkeypatch):
    """The "small" presets shrunk to the tiny test sizes: the CLI and load_checkpoint rebuild the
    model from the checkpoint's (model, preset), so the whole CLI path runs on a model that
    exports in seconds rather than minutes."""
    import importlib

    from tests.models_tiny import TINY

    build_module = importlib.import_module("detr_ops.models.build")  # the package re-exports build() under that name

    for name in ("detr", "deformable_detr", "dino"):
        key = (name, "small")
        monkeypatch.setitem(build_module.PRESETS, key, dict(build_module.PRESETS[key], **dict(TINY[name], dec_layers=1)))


def write_checkpoint(path, model_name, image_size=64):
    """A checkpoint as train.py writes it (untrained weights: the export path is what is tested)."""
    torch.manual_seed(0)
    model, _ = build(model_name, len(CLASSES), "small")
    config = {"model": model_name, "preset": "small", "ops": "detr_ops", "two_stage": False, "no_box_refine": False,
              "image_size": image_size, "seed": 0, "val_size": 4, "max_objects": 3}
    torch.save({"model": model.state_dict(), "config": config, "epoch": 0}, path)


def test_cli_exports_deformable_detr_and_matches_pytorch(tmp_path, capsys, tiny_presets):
    ckpt, out = tmp_path / "checkpoint.pth", tmp_path / "model.onnx"
    write_checkpoint(ckpt, "deformable_detr")
    main(["--checkpoint", str(ckpt), "--out", str(out), "--top-k", "20"])  # --msda gather, the default
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["msda"] == "gather" and report["check"]["checker"] == "ok"
    assert report["check"]["max_score_diff"] < 1e-4 and report["check"]["max_box_diff"] < 1e-3
    assert "GridSample" not in report["nodes"] and not any("detr_ops" in k for k in report["nodes"])

    # Independently of the CLI's own check: another batch size and image size, in a fresh session.
    from detr_ops.models.build import load_checkpoint

    model, _ = load_checkpoint(str(ckpt))
    graph = InferenceGraph(model, True, 20).eval()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = synthetic_images(2, 80, seed=7)
    scores, labels, boxes = session.run(None, {"images": images.numpy()})
    assert scores.shape == (2, 20) and labels.dtype.name == "int64" and boxes.shape == (2, 20, 4)
    with torch.no_grad():
        expected = graph(images)
    diffs = same_detections(expected, (scores, labels, boxes))
    assert diffs["max_score_diff"] < 1e-4 and diffs["max_box_diff"] < 1e-3
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1] == 3 and isinstance(dims[2], str) and isinstance(dims[3], str)


def test_cli_exports_detr(tmp_path, capsys, tiny_presets):
    ckpt, out = tmp_path / "checkpoint.pth", tmp_path / "detr.onnx"
    write_checkpoint(ckpt, "detr")
    main(["--checkpoint", str(ckpt), "--out", str(out)])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["model"] == "detr" and report["check"]["checker"] == "ok"
    assert report["check"]["max_score_diff"] < 1e-4 and report["check"]["max_box_diff"] < 1e-3
    scores = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        ["scores"], {"images": synthetic_images(1, 64).numpy()})[0]
    assert scores.shape == (1, 8)  # one detection per query (softmax model)


def test_cli_exports_dino(tmp_path, capsys, tiny_presets):
    """DINO's inference graph (two-stage query selection, look-forward-twice refinement; no
    denoising queries at inference) through the CLI, checked in ONNX Runtime by the CLI itself."""
    ckpt, out = tmp_path / "checkpoint.pth", tmp_path / "dino.onnx"
    write_checkpoint(ckpt, "dino")
    main(["--checkpoint", str(ckpt), "--out", str(out), "--top-k", "10"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["model"] == "dino" and report["check"]["checker"] == "ok"
    assert report["check"]["max_score_diff"] < 1e-4 and report["check"]["max_box_diff"] < 1e-3
    assert not any("detr_ops" in k for k in report["nodes"])


@pytest.mark.skipif(tuple(int(x) for x in torch.__version__.split(".")[:2]) < (2, 13),
                    reason="torch < 2.13's strict torch.export specialises the parity of the backbone's "
                           "stride-2 sizes ((H - 1) // 2 % 2) and refuses the dynamic image size")
def test_torch_export_run_decompositions():
    """torch.export keeps the custom ops; detr_ops.onnx.decompositions() removes every one of them,
    and the decomposed program computes the same detections at other batch and image sizes."""
    model, _ = tiny_model("deformable_detr")
    graph = InferenceGraph(model.eval(), True, 10).eval()
    with torch.no_grad():
        ep = torch.export.export(graph, (synthetic_images(2, 64),), dynamic_shapes=dynamic_shapes())
    targets = lambda p: {str(n.target) for n in p.graph.nodes if n.op == "call_function"}  # noqa: E731
    assert any("detr_ops.ms_deform_attn" in t for t in targets(ep))
    decomposed = ep.run_decompositions(detr_ops.onnx.decompositions("gather", with_defaults=True))
    assert not any("detr_ops" in t for t in targets(decomposed))
    for batch, side in ((3, 96), (1, 64)):
        images = synthetic_images(batch, side, seed=5)
        with torch.no_grad():
            expected = graph(images)
            actual = decomposed.module()(images)
        same_detections(expected, actual, atol=1e-5, box_atol=1e-4)


def test_same_detections_pairs_reordered_ties_and_rejects_changes():
    scores = torch.tensor([[0.9, 0.5, 0.5000001, 0.1]])
    labels = torch.tensor([[1, 0, 2, 1]])
    boxes = torch.arange(16, dtype=torch.float32).view(1, 4, 4)
    order = torch.tensor([0, 2, 1, 3])  # the near-tied pair swapped, as top-k may return them
    diffs = same_detections((scores, labels, boxes), (scores[:, order], labels[:, order], boxes[:, order]))
    assert diffs == {"max_score_diff": 0.0, "max_box_diff": 0.0}
    with pytest.raises(AssertionError, match="detection 1"):
        same_detections((scores, labels, boxes), (scores, torch.tensor([[1, 2, 2, 1]]), boxes))
    with pytest.raises(AssertionError, match="detection 3"):
        same_detections((scores, labels, boxes), (scores, labels, boxes + torch.tensor([0, 0, 0, 0.01]).view(1, 4, 1)))
    with pytest.raises(AssertionError, match="shapes differ"):
        same_detections((scores, labels, boxes), (scores[:, :3], labels[:, :3], boxes[:, :3]))
