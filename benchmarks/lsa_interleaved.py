"""Interleaved timing of the assignment solvers: detr_ops against scipy, lap and lapx, all in one
process, round-robin (every round times each implementation once, in a rotating order), so that a
machine whose speed drifts (a shared VM) slows every implementation alike.

    python -m benchmarks.lsa_interleaved [--rounds 31] [--quick]

Prints, per case: the median time of each implementation with its interquartile range, and per
baseline the ratio baseline / detr_ops as the median of the per-round ratios (paired, hence robust
to drift) with its interquartile range. Before timing, every implementation's answer is checked
against scipy's (indices identical; the inputs have a unique optimum, so lap and lapx, whose
tie-breaking differs, must agree too).
"""
import argparse
import statistics
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

import detr_ops
from benchmarks import lap_baselines

SINGLE = [(100, 100), (1000, 1000), (2000, 2000), (100, 7), (300, 20), (900, 100)]
BATCH = [(16, 100, 7), (16, 300, 20), (16, 900, 20), (16, 900, 100)]


def _quantiles(xs):
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def _fmt(seconds):
    for unit, scale in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def interleave(impls, rounds):
    """{name: [seconds per round]}: every round calls each implementation once, order rotating."""
    names = list(impls)
    times = {n: [] for n in names}
    for name in names:  # warm-up (first-call allocations, lazy imports)
        impls[name]()
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            impls[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def report(case, times, candidate="detr_ops"):
    lines = []
    for name, ts in times.items():
        lo, med, hi = _quantiles(ts)
        line = f"| {case} | {name} | {_fmt(med)} | {_fmt(lo)} - {_fmt(hi)} |"
        if name != candidate:
            ratios = [b / c for b, c in zip(ts, times[candidate])]
            rlo, rmed, rhi = _quantiles(ratios)
            line += f" {rmed:.2f}x | {rlo:.2f} - {rhi:.2f} |"
        else:
            line += " | |"
        lines.append(line)
    print("\n".join(lines), flush=True)


def _rows_cols_from_x(x):
    rows = np.nonzero(x >= 0)[0]
    return rows, x[rows].astype(np.int64)


def single_impls(cost):
    rect = cost.shape[0] != cost.shape[1]
    impls = {"detr_ops": lambda: detr_ops.linear_sum_assignment(cost), "scipy": lambda: scipy_lsa(cost)}
    lap = lap_baselines.lap()
    if lap is not None:
        impls["lap.lapjv"] = lambda: lap.lapjv(cost, extend_cost=rect)
    lapx = lap_baselines.lapx()
    if lapx is not None:
        impls["lapx.lapjv"] = lambda: lapx["lapjv"](cost, extend_cost=rect)
        for name in ("lapjvx", "lapjvs", "lapjvr"):
            if name in lapx:
                impls[f"lapx.{name}"] = (lambda f: lambda: f(cost, extend_cost=rect, return_cost=False))(lapx[name])
    return impls


def check_single(cost, impls):
    er, ec = scipy_lsa(cost)
    for name, fn in impls.items():
        out = fn()
        if name in ("lap.lapjv", "lapx.lapjv"):
            rows, cols = _rows_cols_from_x(out[1])
        else:
            # lapx returns the matched pairs of a rectangular problem in its own order.
            order = np.argsort(np.asarray(out[0]), kind="stable")
            rows, cols = np.asarray(out[0])[order], np.asarray(out[1])[order]
        if not (np.array_equal(rows, er) and np.array_equal(cols, ec)):
            raise AssertionError(f"{name} differs from scipy on {cost.shape}")


def batch_impls(costs):
    t = torch.from_numpy(costs)
    impls = {"detr_ops": lambda: detr_ops.batched_linear_sum_assignment(t),
             "scipy-loop": lambda: [scipy_lsa(c) for c in costs]}
    lapx = lap_baselines.lapx()
    if lapx is not None:
        rect = costs.shape[1] != costs.shape[2]
        for name in ("lapjvx_batch", "lapjvs_batch", "lapjvr_batch"):
            if name in lapx:
                impls[f"lapx.{name}"] = (lambda f: lambda: f(costs, extend_cost=rect, return_cost=False))(lapx[name])
    return impls


def check_batch(costs, impls):
    col_for_row = impls["detr_ops"]()[0].numpy()
    for b, c in enumerate(costs):
        er, ec = scipy_lsa(c)
        assert np.array_equal(col_for_row[b, er], ec)
    for name, fn in impls.items():
        if name.startswith("lapx"):
            rows_list, cols_list = fn()
            for b, c in enumerate(costs):
                er, ec = scipy_lsa(c)
                order = np.argsort(rows_list[b])
                if not (np.array_equal(np.asarray(rows_list[b])[order], er)
                        and np.array_equal(np.asarray(cols_list[b])[order], ec)):
                    raise AssertionError(f"{name} differs from scipy on problem {b}")


def capacity_case(rounds, B=16, Q=1500, k=6, seed=0):
    """H-DETR's one-to-many matching: B images, Q queries, ~7 targets each repeated k times; the
    baseline is H-DETR's loop: scipy per image on the cost with its target columns tiled k times."""
    rng = np.random.default_rng(seed)
    T = rng.integers(1, 14, B)
    T[0] = 30
    costs = [rng.random((Q, t)) for t in T]
    padded = np.zeros((B, Q, T.max()))
    for b, c in enumerate(costs):
        padded[b, :, : c.shape[1]] = c
    padded_t, num_cols = torch.from_numpy(padded), torch.from_numpy(T)

    def loop():
        return [scipy_lsa(np.tile(c, (1, k))) for c in costs]

    def ours():
        return detr_ops.batched_linear_sum_assignment(padded_t, num_cols=num_cols, capacity=k)

    got = ours()[0].numpy()
    for b, (rows, cols) in enumerate(loop()):
        assert np.array_equal(got[b, rows], cols % T[b])
    report(f"capacity B{B} Q{Q} T~7 k{k}", interleave({"detr_ops": ours, "scipy-loop (tiled)": loop}, rounds))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--quick", action="store_true", help="skip 2000x2000 and use fewer rounds for it")
    args = parser.parse_args()
    lapx = lap_baselines.lapx()
    lap = lap_baselines.lap()
    print(f"torch threads {torch.get_num_threads()}; lap {getattr(lap, '__version__', 'missing')}; "
          f"lapx {lapx['__version__'] if lapx else 'missing'}")
    print("| case | impl | median | IQR | baseline / detr_ops (median of per-round ratios) | IQR |")
    print("|---|---|---:|---:|---:|---:|")
    for rows, cols in SINGLE:
        if args.quick and rows >= 2000:
            continue
        cost = np.random.default_rng(rows * 10007 + cols).random((rows, cols))
        impls = single_impls(cost)
        check_single(cost, impls)
        rounds = args.rounds if rows * cols < 1_000_000 else max(5, args.rounds // 3)
        report(f"{rows}x{cols}", interleave(impls, rounds))
    for B, Q, T in BATCH:
        costs = np.random.default_rng(B * Q + T).random((B, Q, T))
        impls = batch_impls(costs)
        check_batch(costs, impls)
        report(f"batch {B}x{Q}x{T}", interleave(impls, args.rounds))
    capacity_case(max(5, args.rounds // 3))


if __name__ == "__main__":
    main()
