"""ONNX Runtime latency of the exported small Deformable DETR against PyTorch eager (a benchmark
row, not a test), with the exported graphs' node counts and ORT-vs-PyTorch differences.

    python -m benchmarks.onnx_latency [--checkpoint run/checkpoint.pth] [--threads 2 [1 ...]]
        [--rounds 30] [--sizes 64 128] [--modes gather grid_sample tensorrt] [--out results/onnx.json]

Exports the detector (images in, scores / labels / boxes out: ``detr_ops.models.export``) once
per MSDA mode in ``--modes`` (the TensorRT graph only for its node counts: ONNX Runtime cannot
run it), then times one image per call in the same process, interleaved round by round: PyTorch
eager on detr_ops's native kernels, and ONNX Runtime (CPU provider) on the "gather" and
"grid_sample" graphs, with each ``--threads`` count of intra-op threads in turn (on a shared
machine 1 thread is the steadier number: a 2-thread parallel region waits for a descheduled
thread). Prints markdown tables and writes the numbers as JSON. Without ``--checkpoint`` the
"small" preset is built with random weights (latency does not depend on the weights; top-k
always returns k detections).
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from detr_ops.models.build import build
from detr_ops.models.data import CLASSES
from detr_ops.models.export import InferenceGraph, export_graph, node_counts, same_detections, synthetic_images
from detr_ops.onnx import MSDA_MODES

EAGER = "pytorch eager (detr_ops native)"


def load_graph(checkpoint, top_k):
    if checkpoint:
        from detr_ops.models.build import load_checkpoint

        model, config = load_checkpoint(checkpoint)
        return InferenceGraph(model, config["model"] != "detr", top_k).eval(), config["image_size"]
    torch.manual_seed(0)
    model, _ = build("deformable_detr", len(CLASSES), "small")
    return InferenceGraph(model.eval(), True, top_k).eval(), 64


def time_size(graph, sessions, size, threads, rounds):
    """Rows for one image size: PyTorch eager and each ONNX Runtime session, interleaved so that
    load changes on a shared machine hit every runner alike."""
    images = synthetic_images(1, size, seed=11)
    feed = {"images": images.numpy()}
    with torch.no_grad():
        expected = graph(images)
    runners = {EAGER: lambda: graph(images)}
    diffs = {}
    for mode, session in sessions.items():
        name = f"onnxruntime ({mode})"
        diffs[name] = same_detections(expected, session.run(None, feed))
        runners[name] = (lambda s=session: s.run(None, feed))
    times = {name: [] for name in runners}
    with torch.no_grad():
        for _ in range(3):  # warm-up
            for fn in runners.values():
                fn()
        for _ in range(rounds):
            for name, fn in runners.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times[EAGER])
    return [{"image": f"1x3x{size}x{size}", "threads": threads, "runtime": name,
             "median_ms": statistics.median(t) * 1e3, "min_ms": min(t) * 1e3,
             "eager_over_this": base / statistics.median(t), "diff": diffs.get(name)} for name, t in times.items()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="image sides to time")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--modes", nargs="+", choices=MSDA_MODES, default=list(MSDA_MODES))
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    graph, side = load_graph(args.checkpoint, args.top_k)
    tmp = tempfile.mkdtemp(prefix="detr_ops_onnx_")
    paths, nodes, export_s = {}, {}, {}
    for mode in args.modes:
        paths[mode] = os.path.join(tmp, f"deformable_detr_{mode}.onnx")
        start = time.perf_counter()
        export_graph(graph, synthetic_images(2, side), paths[mode], mode)
        export_s[mode] = time.perf_counter() - start
        nodes[mode] = node_counts(paths[mode])

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # ORT's intra-op threads spin after each run by default; interleaved with PyTorch in one
        # process on a small machine, the spinning threads take the cores PyTorch's next call needs
        # (measured on 2 cores: eager at 2 threads 77 ms median against 27 ms minimum). Sleep instead.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions = {mode: ort.InferenceSession(paths[mode], options, providers=["CPUExecutionProvider"])
                    for mode in args.modes if mode != "tensorrt"}
        for size in args.sizes:
            rows += time_size(graph, sessions, size, threads, args.rounds)

    print(f"rounds={args.rounds} torch={torch.__version__} onnxruntime={ort.__version__}\n")
    print("| image | threads | runtime | median ms | min ms | eager median / median | max score / box diff vs eager |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        diff = f"{r['diff']['max_score_diff']:.1e} / {r['diff']['max_box_diff']:.1e} px" if r["diff"] else ""
        print(f"| {r['image']} | {r['threads']} | {r['runtime']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} "
              f"| {r['eager_over_this']:.2f}x | {diff} |")
    print("\n| MSDA mode | nodes | Gather | GridSample | TensorRT plugin | export s |")
    print("|---|---|---|---|---|---|")
    for mode in args.modes:
        c = nodes[mode]
        print(f"| {mode} | {sum(c.values())} | {c.get('Gather', 0)} | {c.get('GridSample', 0)} "
              f"| {c.get('trt::MultiscaleDeformableAttnPlugin_TRT', 0)} | {export_s[mode]:.0f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rounds": args.rounds, "rows": rows, "nodes": nodes, "export_s": export_s,
                       "torch": torch.__version__, "onnxruntime": ort.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
