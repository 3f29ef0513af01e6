"""Export a trained detector to ONNX: images in, scores / labels / boxes out.

``python -m detr_ops.models.export --checkpoint run/checkpoint.pth --out model.onnx
[--msda gather|grid_sample|tensorrt] [--opset N] [--top-k 100] [--no-check]``

The graph takes ``images [B, 3, H, W]`` float32, normalised as in training, every pixel valid (no
padding mask), with B, H and W dynamic, and returns ``scores [B, K]``, ``labels [B, K]`` (int64,
0-based) and ``boxes [B, K, 4]`` (xyxy pixels of the input): the postprocessing of
:func:`detr_ops.models.postprocess` (top-k over query x class for sigmoid models, one detection
per query for DETR; no NMS). MSDA is exported as chosen by ``--msda`` (see docs/export.md).

After export the graph is checked: ``onnx.checker`` always; unless ``--msda tensorrt`` (ONNX
Runtime has no kernel for TensorRT's plugin), ONNX Runtime runs it on synthetic images of two
batch sizes and image sizes and its detections are compared with the PyTorch model's.
"""
import argparse
import json

import torch
from torch import nn

from detr_ops.models.build import is_focal
from detr_ops.models.data import SyntheticShapes
from detr_ops.models.postprocess import postprocess_batched
from detr_ops.onnx import MSDA_MODES, export_options

OUTPUT_NAMES = ("scores", "labels", "boxes")
# Smallest side the exported graph accepts: the backbone's coarsest level must be at least 1x1.
MIN_SIDE = 32


class InferenceGraph(nn.Module):
    """A detector plus its postprocessing: ``images [B, 3, H, W] -> (scores, labels, boxes)``."""

    def __init__(self, model: nn.Module, focal: bool, top_k: int = 100):
        super().__init__()
        self.model = model
        self.focal = focal
        self.top_k = top_k

    def forward(self, images):
        b, _, h, w = images.shape
        mask = torch.zeros((b, h, w), dtype=torch.bool, device=images.device)
        outputs = self.model(images, mask)
        sizes = torch.tensor([h, w], device=images.device).expand(b, 2)
        return postprocess_batched(outputs, sizes, self.focal, self.top_k)


def synthetic_images(batch: int, side: int, seed: int = 123) -> torch.Tensor:
    """``batch`` synthetic images of ``side x side`` pixels, normalised as in training."""
    data = SyntheticShapes(batch, seed=seed, image_size=side)
    return torch.stack([data[i][0] for i in range(batch)])


def dynamic_shapes():
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = torch.export.Dim("height", min=MIN_SIDE, max=8192)
    width = torch.export.Dim("width", min=MIN_SIDE, max=8192)
    return ({0: batch, 2: height, 3: width},)


def export_graph(graph: InferenceGraph, images: torch.Tensor, out: str, msda: str = "gather", opset=None):
    """Exports ``graph`` with the dynamo exporter (dynamic batch and image size); returns the
    ``torch.onnx.ONNXProgram``."""
    with torch.no_grad(), export_options(msda=msda):
        program = torch.onnx.export(graph.eval(), (images,), dynamo=True, dynamic_shapes=dynamic_shapes(),
                                    input_names=["images"], output_names=list(OUTPUT_NAMES), opset_version=opset,
                                    verbose=False)
    program.save(out)
    return program


def node_counts(path: str) -> dict:
    """``{op_type: count}`` of the graph's top-level nodes (function bodies inlined by the exporter)."""
    import onnx

    counts = {}
    for node in onnx.load(path).graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def same_detections(expected, actual, atol=1e-4, box_atol=1e-3):
    """Pairs every detection of ``actual`` with an unused one of ``expected`` that has the same
    label, a score within ``atol`` and a box within ``box_atol`` pixels (top-k may order near-tied
    entries differently); raises AssertionError naming the first detection without a partner.
    Returns the largest score and box differences of the pairs."""
    (s0, l0, b0), (s1, l1, b1) = [[torch.as_tensor(x) for x in d] for d in (expected, actual)]
    if s0.shape != s1.shape or l0.shape != l1.shape or b0.shape != b1.shape:
        raise AssertionError(f"output shapes differ: {[tuple(x.shape) for x in (s0, l0, b0)]} vs "
                             f"{[tuple(x.shape) for x in (s1, l1, b1)]}")
    worst_score, worst_box = 0.0, 0.0
    for i in range(s0.shape[0]):
        free = torch.ones(s0.shape[1], dtype=torch.bool)
        for j in range(s1.shape[1]):
            ds = (s0[i] - s1[i, j]).abs()
            db = (b0[i] - b1[i, j]).abs().amax(-1)
            ok = free & (l0[i] == l1[i, j]) & (ds <= atol) & (db <= box_atol)
            if not ok.any():
                raise AssertionError(f"image {i}: detection {j} (label {int(l1[i, j])}, score {float(s1[i, j]):.6f}, "
                                     f"box {b1[i, j].tolist()}) has no counterpart in the expected detections")
            k = int(torch.where(ok, ds, torch.full_like(ds, float("inf"))).argmin())
            free[k] = False
            worst_score, worst_box = max(worst_score, float(ds[k])), max(worst_box, float(db[k]))
    return {"max_score_diff": worst_score, "max_box_diff": worst_box}


def check(path: str, graph: InferenceGraph, msda: str, cases=((1, 64), (3, 96))) -> dict:
    """``onnx.checker``, then (except for the TensorRT graph) ONNX Runtime against PyTorch on
    synthetic images: returns the largest differences over ``cases`` of (batch, side)."""
    import onnx

    onnx.checker.check_model(onnx.load(path), full_check=msda != "tensorrt")
    report = {"checker": "ok", "nodes": sum(node_counts(path).values())}
    if msda == "tensorrt":
        return report
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    worst = {"max_score_diff": 0.0, "max_box_diff": 0.0}
    for batch, side in cases:
        images = synthetic_images(batch, side)
        with torch.no_grad():
            expected = graph(images)
        actual = session.run(list(OUTPUT_NAMES), {"images": images.numpy()})
        diffs = same_detections(expected, actual)
        worst = {k: max(worst[k], diffs[k]) for k in worst}
    report.update(worst)
    report["cases"] = [list(c) for c in cases]
    return report


def main(argv=None):
    from detr_ops.models.build import load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--msda", choices=MSDA_MODES, default="gather")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--top-k", type=int, default=100, help="detections per image (sigmoid models)")
    parser.add_argument("--no-check", action="store_true", help="skip the checks after export")
    args = parser.parse_args(argv)

    model, config = load_checkpoint(args.checkpoint, "cpu", ops="detr_ops")
    graph = InferenceGraph(model, is_focal(config["model"]), args.top_k).eval()
    export_graph(graph, synthetic_images(2, config["image_size"]), args.out, args.msda, args.opset)
    report = {"out": args.out, "model": config["model"], "msda": args.msda, "nodes": node_counts(args.out)}
    if not args.no_check:
        report["check"] = check(args.out, graph, args.msda)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
