"""Every CPU op with torch's default threads against itself on one thread, quiet and under load.

    python -m benchmarks.under_load [--load N] [--calls 15] [--out DIR] [-k SUBSTR] [--no-quiet] [--strict]
    make bench-load

Training keeps every core busy (data-loader workers, other jobs). A kernel whose threads wait for
each other then pays a scheduler time slice per call, and can be many times slower than on one
thread. This benchmark measures that in one run, for every CPU op (the batched solver, the
matching cost, GIoU pairwise and loss forward+backward, MSDA encoder and decoder forward and
forward+backward):

1. quiet: each case with the default thread count and with ``torch.set_num_threads(1)``, the
   calls interleaved (so drift hits both alike), median of ``--calls``;
2. under load: the same, while ``--load`` busy processes (default: one per core) spin. They are
   started and stopped here: each also stops itself after a deadline and when this process dies
   (Linux), and they are killed on any exit from the measurement, failures included.

Before anything is timed, each case's default-thread result is checked to be bitwise identical to
its one-thread result. The table gives, per condition, the two medians and their ratio
(default / one thread; below 1 the threads help). The target under load: at most 1.5x
(``--strict`` exits non-zero when a row misses it; timings on a shared machine are noisy, so the
default only reports). Writes ``table.md`` and ``under_load.json`` into ``results/<date>-cpu-load/``
(or ``--out``).
"""
import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

import torch

import detr_ops
from benchmarks import shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 1.5

# A busy process: spins one core until its deadline, or until its parent dies (PR_SET_PDEATHSIG).
BUSY_SCRIPT = """
import ctypes, sys, time
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
except Exception:
    pass
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    pass
"""


class BusyLoad:
    """``n`` spinning processes for the duration of a ``with`` block (at most ``max_s`` seconds)."""

    def __init__(self, n, max_s=900.0):
        self.n, self.max_s, self.procs = n, max_s, []

    def __enter__(self):
        try:
            for _ in range(self.n):
                self.procs.append(subprocess.Popen([sys.executable, "-c", BUSY_SCRIPT, str(self.max_s)],
                                                   stdin=subprocess.DEVNULL))
        except BaseException:
            self.stop()
            raise
        time.sleep(0.5)  # let them reach the spin loop
        return self

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []

    def __exit__(self, *exc):
        self.stop()
        return False


# ---- cases: (op, case, pass, factory); factory() builds inputs and returns fn, fn() -> tensors ------

def _boxes(n, g):
    xy = torch.rand(n, 2, generator=g)
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.01
    return torch.cat([xy, xy + wh], dim=1)


def _with_grads(forward, leaves, g):
    """fn running forward(*leaves) and, for fwd+bwd, the gradients of all leaves."""
    leaves = [t.detach().requires_grad_() for t in leaves]
    grad = torch.randn(forward(*leaves).shape, generator=g)

    def fn():
        out = forward(*leaves)
        return [out.detach(), *torch.autograd.grad(out, leaves, grad)]

    return fn


def _no_grad(forward, inputs):
    def fn():
        with torch.no_grad():
            out = forward(*inputs)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    return fn


def giou_pairwise(n, m, backward):
    def make():
        g = torch.Generator().manual_seed(n + m)
        a, b = _boxes(n, g), _boxes(m, g)
        if backward:
            return _with_grads(detr_ops.generalized_box_iou, [a, b], g)
        return _no_grad(detr_ops.generalized_box_iou, [a, b])

    return make


def giou_loss(pairs):
    def make():
        g = torch.Generator().manual_seed(pairs)
        return _with_grads(detr_ops.generalized_box_iou_loss, [_boxes(pairs, g), _boxes(pairs, g)], g)

    return make


def batched_lsa(B, Q, targets_per_image=None):
    def make():
        g = torch.Generator().manual_seed(B * 1000 + Q)
        torch.manual_seed(B * 1000 + Q)
        if targets_per_image is None:
            sizes = shapes.coco_like_target_counts(B, g)
        else:
            sizes = torch.randint(max(0, targets_per_image - 5), targets_per_image + 6, (B,), generator=g).tolist()
        cost = torch.rand(B, Q, max(max(sizes), 1), generator=g)
        num_cols = torch.tensor(sizes)
        return _no_grad(lambda c: detr_ops.batched_linear_sum_assignment(c, num_cols=num_cols), [cost])

    return make


def matching_cost(B, Q, K, focal):
    def make():
        g = torch.Generator().manual_seed(B * 1000 + Q)
        torch.manual_seed(B * 1000 + Q)
        sizes = shapes.coco_like_target_counts(B, g)
        T = max(max(sizes), 1)
        inputs = [torch.randn(B, Q, K, generator=g), torch.rand(B, Q, 4, generator=g) * 0.5 + 0.05,
                  torch.randint(0, K, (B, T), generator=g), torch.rand(B, T, 4, generator=g) * 0.5 + 0.05,
                  torch.tensor(sizes)]
        return _no_grad(lambda *x: detr_ops.matching_cost(*x, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0,
                                                          focal=focal), inputs)

    return make


def ms_deform_attn(name, backward):
    from benchmarks.bench_ms_deform_attn import _make_inputs

    # the CPU shapes of the suite (shapes.py), always in its quick profile
    _, N, levels, Lq, M, D, P = next(s for s in shapes.MSDA if s[0] == name)

    def make():
        value, shapes_, starts, loc, w = _make_inputs(N, levels, Lq, M, D, P, torch.float32, "cpu")
        forward = lambda v, l, a: detr_ops.ms_deform_attn(v, shapes_, starts, l, a)  # noqa: E731
        if backward:
            return _with_grads(forward, [value, loc, w], torch.Generator().manual_seed(1))
        return _no_grad(forward, [value, loc, w])

    return make


CASES = [
    ("batched_linear_sum_assignment", "B16 Q900 ~10 targets", "fwd", batched_lsa(16, 900, 10)),
    ("batched_linear_sum_assignment", "B16 Q100 COCO-like", "fwd", batched_lsa(16, 100)),
    ("batched_linear_sum_assignment", "B16 Q300 COCO-like", "fwd", batched_lsa(16, 300)),
    ("batched_linear_sum_assignment", "B16 Q900 COCO-like", "fwd", batched_lsa(16, 900)),
    ("matching_cost", "B=16 Q=900 softmax", "fwd", matching_cost(16, 900, 92, False)),
    ("matching_cost", "B=16 Q=900 focal", "fwd", matching_cost(16, 900, 92, True)),
    ("giou_pairwise", "7200x87", "fwd", giou_pairwise(7200, 87, False)),
    ("giou_pairwise", "1000x1000", "fwd", giou_pairwise(1000, 1000, False)),
    ("giou_pairwise", "7200x87", "fwd+bwd", giou_pairwise(7200, 87, True)),
    ("giou_pairwise", "1000x1000", "fwd+bwd", giou_pairwise(1000, 1000, True)),
    ("giou_loss", "160 pairs", "fwd+bwd", giou_loss(160)),
    ("giou_loss", "1M pairs", "fwd+bwd", giou_loss(1_000_000)),
    ("ms_deform_attn", "cpu-decoder N=2", "fwd", ms_deform_attn("cpu-decoder", False)),
    ("ms_deform_attn", "cpu-decoder N=2", "fwd+bwd", ms_deform_attn("cpu-decoder", True)),
    ("ms_deform_attn", "cpu-encoder N=2", "fwd", ms_deform_attn("cpu-encoder", False)),
    ("ms_deform_attn", "cpu-encoder N=2", "fwd+bwd", ms_deform_attn("cpu-encoder", True)),
]


# ---- measuring -----------------------------------------------------------------------------------

def _timed(fn, threads):
    torch.set_num_threads(threads)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(fn, threads, calls):
    """(median s with `threads`, median s with 1 thread): calls interleaved, one warm-up each."""
    for n in (threads, 1):
        _timed(fn, n)
    many, one = [], []
    for i in range(calls):
        order = (threads, 1) if i % 2 == 0 else (1, threads)
        for n in order:
            (many if n == threads else one).append(_timed(fn, n))
    torch.set_num_threads(threads)
    return statistics.median(many), statistics.median(one)


def check_identical(fn, threads, what):
    torch.set_num_threads(threads)
    many = fn()
    torch.set_num_threads(1)
    one = fn()
    torch.set_num_threads(threads)
    for i, (x, y) in enumerate(zip(many, one)):
        if not torch.equal(x, y):
            raise AssertionError(f"{what}: output {i} differs between {threads} threads and 1 thread")


def fmt_time(s):
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def run(cases, threads, calls, load, quiet, log=print):
    rows = []
    prepared = []
    for op, case, pass_, make in cases:
        fn = make()
        check_identical(fn, threads, f"{op} {case} {pass_}")
        prepared.append((op, case, pass_, fn))
    conditions = (["quiet"] if quiet else []) + ([f"load {load}"] if load > 0 else [])
    results = {c: {} for c in conditions}
    for condition in conditions:
        log(f"--- {condition} ({threads} threads vs 1, median of {calls}) ---")
        busy = BusyLoad(load) if condition != "quiet" else None
        if busy is not None:
            busy.__enter__()
        try:
            for op, case, pass_, fn in prepared:
                many, one = measure(fn, threads, calls)
                results[condition][(op, case, pass_)] = (many, one)
                log(f"  {op:30s} {case:22s} {pass_:8s} {fmt_time(many):>9s} vs {fmt_time(one):>9s}  "
                    f"ratio {many / one:.2f}")
        finally:
            if busy is not None:
                busy.stop()
    for op, case, pass_, _ in prepared:
        row = {"op": op, "case": case, "pass": pass_}
        for condition in conditions:
            many, one = results[condition][(op, case, pass_)]
            row[condition] = {"threads_s": many, "one_thread_s": one, "ratio": many / one}
        rows.append(row)
    return rows, conditions


def table(rows, conditions, threads):
    head = ["op", "case", "pass"]
    for c in conditions:
        head += [f"{c}: 1 thread", f"{c}: {threads} threads", f"{c}: ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (3 * len(conditions))]
    for r in rows:
        cells = [r["op"], r["case"], r["pass"]]
        for c in conditions:
            m = r[c]
            mark = " (over 1.5x)" if c != "quiet" and m["ratio"] > TARGET else ""
            cells += [fmt_time(m["one_thread_s"]), fmt_time(m["threads_s"]), f"{m['ratio']:.2f}x{mark}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine():
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu_model": model, "cpu_count": os.cpu_count(), "torch_version": torch.__version__,
            "detr_ops_build_info": detr_ops.build_info(), "loadavg_before": os.getloadavg(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", type=int, default=os.cpu_count(), help="busy processes (default: one per core)")
    parser.add_argument("--calls", type=int, default=15, help="timed calls per thread count (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="the 'default threads' count")
    parser.add_argument("--out", help="results folder (default: results/<date>-cpu-load/)")
    parser.add_argument("-k", dest="k", help="only cases whose 'op case pass' contains this")
    parser.add_argument("--no-quiet", action="store_true", help="skip the measurement without load")
    parser.add_argument("--strict", action="store_true", help=f"exit 1 when a row under load exceeds {TARGET}x")
    args = parser.parse_args(argv)

    # SIGTERM (a CI timeout) must unwind through the `finally` that stops the busy processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cases = [c for c in CASES if not args.k or args.k in " ".join(c[:3])]
    if not cases:
        parser.error(f"no case matches -k {args.k!r}")
    info = machine()
    print(f"detr_ops under load: {len(cases)} cases, {args.threads} threads vs 1, {args.load} busy processes, "
          f"{info['cpu_count']} CPUs, load average before {info['loadavg_before'][0]:.1f}", flush=True)
    start = time.monotonic()
    rows, conditions = run(cases, args.threads, args.calls, args.load, not args.no_quiet,
                           log=lambda s: print(s, flush=True))
    info.update(threads=args.threads, load=args.load, calls=args.calls, wall_s=time.monotonic() - start,
                loadavg_after=os.getloadavg())

    text = table(rows, conditions, args.threads)
    out = os.path.abspath(args.out or os.path.join(
        REPO, "results", datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + "-cpu-load"))
    os.makedirs(out, exist_ok=True)
    heading = (f"CPU ops, {args.threads} threads vs 1, median of {args.calls} interleaved calls; load = "
               f"{args.load} busy processes on {info['cpu_count']} CPUs ({info['date']}, {info['cpu_model']}, "
               f"torch {info['torch_version']}); ratio = threads / 1 thread, target under load <= {TARGET}x")
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(heading + "\n\n" + text + "\n")
    with open(os.path.join(out, "under_load.json"), "w") as f:
        json.dump({"machine": info, "rows": rows}, f, indent=1)
    print("\n" + heading + "\n\n" + text + f"\n\nwritten to {out} in {info['wall_s']:.0f} s")

    over = [r for r in rows for c in conditions if c != "quiet" and r[c]["ratio"] > TARGET]
    if over:
        print(f"{len(over)} row(s) over {TARGET}x under load", file=sys.stderr)
        if args.strict:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
