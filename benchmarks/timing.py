"""One way to time every benchmark row, and the checks that run before anything is timed.

Every benchmark test calls :func:`measure` once, for one implementation of one case::

    def test_giou(benchmark, ...):
        expected = baseline(...)                 # computed once, untimed
        check_close(ours(...), expected)         # a fast wrong answer is a failure
        measure(benchmark, lambda: ours(...), op="giou_pairwise", case="7200x87",
                impl="detr_ops", role="detr_ops", backend="native", pass_="fwd")

``role`` is "baseline" or "detr_ops"; ``report.py`` pairs the rows of one (op, case, pass) and
prints each detr_ops time next to its baselines, with the speedup. ``case`` is a short shape label.

Timing: on CPU, pytest-benchmark's calibrated rounds (we report the median). On a GPU, CUDA
events through ``triton.testing.do_bench`` (warm-up, many repetitions, median), with the inputs
rotated among several copies (:func:`rotate`) so that caches do not flatter.

Trust: every row also records its spread (pytest-benchmark's quartiles, min and max on CPU; the
CUDA-event quartiles, min and max on a GPU: ``gpu_q1_s`` ... in ``extra_info``) and how much CPU
other processes used while it was timed (``others_cores``, see :mod:`benchmarks.machine_load`), so
that the report can mark the ratios that spread or load make unreliable.
"""
import itertools
import os

import torch

from benchmarks import machine_load


def measure(benchmark, fn, *, op, case, impl, role, backend="", pass_="fwd", device="cpu", **extra):
    if role not in ("baseline", "detr_ops"):
        raise ValueError(f"role must be 'baseline' or 'detr_ops', got {role!r}")
    benchmark.group = f"{op} | {case} | {pass_}"
    benchmark.extra_info.update(op=op, case=case, impl=impl, role=role, backend=backend, pass_=pass_, device=device)
    benchmark.extra_info.update(extra)
    probe = machine_load.Probe().start()
    if torch.device(device).type == "cuda":
        from triton.testing import do_bench

        # min, quartiles and max of the event-timed repetitions (triton 3.6 and 3.9 return them
        # in this order when asked for quantiles)
        low, q1, median_ms, q3, high = do_bench(fn, warmup=25, rep=200, quantiles=[0.0, 0.25, 0.5, 0.75, 1.0])
        benchmark.extra_info.update(gpu_median_s=median_ms / 1e3, gpu_q1_s=q1 / 1e3, gpu_q3_s=q3 / 1e3,
                                    gpu_min_s=low / 1e3, gpu_max_s=high / 1e3)
        # pytest-benchmark still needs a round to keep its bookkeeping; the reported time is the
        # event-timed median above.
        benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
        torch.cuda.synchronize()
    else:
        benchmark(fn)
    others = probe.stop()
    benchmark.extra_info["others_cores"] = None if others is None else round(others, 3)
    benchmark.extra_info["cpus"] = machine_load.available_cpus()
    benchmark.extra_info["loadavg_1m"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def rotate(make_inputs, copies: int, device) -> "callable":
    """A function returning the next of ``copies`` input sets on each call (one set on CPU)."""
    n = copies if torch.device(device).type == "cuda" else 1
    sets = [make_inputs() for _ in range(n)]
    cycle = itertools.cycle(sets)
    return lambda: next(cycle)


def peak_memory_bytes(fn, device) -> int:
    """Peak bytes allocated by torch while ``fn`` runs, above what was allocated before it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    # CPU: the profiler attributes each allocation and free to the op that made it (frees outside
    # any op appear as "[memory]" events); the running sum of those deltas in time order peaks at
    # the peak (to within one op's own temporaries).
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def check_close(actual, expected, *, rtol=1e-5, atol=1e-6, what="result"):
    """Raises AssertionError unless detr_ops's result matches the baseline's (before timing)."""
    actual, expected = _as_tensor(actual), _as_tensor(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != baseline {tuple(expected.shape)}")
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def check_equal(actual, expected, *, what="indices"):
    """Exact equality (assignment indices)."""
    actual, expected = _as_tensor(actual).cpu(), _as_tensor(expected).cpu()
    if actual.shape != expected.shape or not torch.equal(actual.long(), expected.long()):
        raise AssertionError(f"{what}: detr_ops differs from the baseline")


def _as_tensor(x):
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.as_tensor(x)
