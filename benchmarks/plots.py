"""The report's PNG plots: speedup per op and shape, and the solver's time versus problem size.

Matplotlib runs with the Agg backend: the suite runs on headless machines (CI, a GPU box over ssh).
"""
import re
from typing import List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402

from benchmarks import trust  # noqa: E402
from benchmarks.results import Row, format_ratio  # noqa: E402
from benchmarks.table import Line  # noqa: E402

# The solver's single problems have a case "<rows>x<cols>"; its batches ("B16 Q100 ...") do not.
SOLVER_OP = "linear_sum_assignment"
_SINGLE_CASE = re.compile(r"^(\d+)x(\d+)$")


def ratio_range(baseline: Row, ours: Row):
    """(low, high) of the speedup over the rows' quartiles (baseline q1 / ours q3 .. baseline q3 /
    ours q1), or None when either spread is unknown."""
    if None in (baseline.q1_s, baseline.q3_s, ours.q1_s, ours.q3_s) or ours.q1_s <= 0 or ours.q3_s <= 0:
        return None
    return baseline.q1_s / ours.q3_s, baseline.q3_s / ours.q1_s


def speedup_plot(lines: List[Line], path, machine_info: Optional[dict] = None) -> int:
    """Horizontal bars, one per table line and detr_ops column, on a log axis with a line at 1x.

    Each bar carries the ratio's range over the two rows' quartiles (a whisker); a ratio that spread
    or load makes unreliable (benchmarks.trust) is hatched and pale, its label ends with the
    table's marker, and the legend says so.
    Returns the number of bars (0: nothing to plot, no file written)."""
    bars = []  # (label, speedup, op, column, flags, range)
    for ln in lines:
        for column in ln.ours:
            s = ln.speedup_of(column)
            if s is None:
                continue
            label = f"{ln.op} | {ln.case} | {ln.pass_} vs {ln.baseline.impl}"
            if len(ln.ours) > 1 or column != "native":
                label += f" [{column}]"
            flags = ln.flags(machine_info, column)
            if flags:
                label += " " + trust.markers(flags)
            bars.append((label, s, ln.op, column, flags, ratio_range(ln.baseline, ln.ours[column])))
    if not bars:
        return 0

    ops = list(dict.fromkeys(b[2] for b in bars))
    colors = {op: plt.get_cmap("tab10")(i % 10) for i, op in enumerate(ops)}
    fig, ax = plt.subplots(figsize=(11, 1.8 + 0.32 * len(bars)), layout="constrained")
    y = list(range(len(bars)))[::-1]  # first table line at the top
    # Bars grow from the 1x line: right for faster, left for slower (a log axis has no zero).
    for yi, (_, s, op, _, flags, _) in zip(y, bars):
        ax.barh(yi, s - 1.0, left=1.0, color=colors[op], height=0.7, alpha=0.35 if flags else 1.0,
                hatch="//" if flags else None, edgecolor="black" if flags else colors[op], linewidth=0.5)
    for yi, b in zip(y, bars):
        if b[5] is not None:
            low, high = b[5]
            ax.plot([low, high], [yi, yi], color="black", linewidth=1)
            ax.plot([low, low], [yi - 0.15, yi + 0.15], color="black", linewidth=1)
            ax.plot([high, high], [yi - 0.15, yi + 0.15], color="black", linewidth=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(y, [b[0] for b in bars], fontsize=8)
    values = [b[1] for b in bars] + [v for b in bars if b[5] for v in b[5]]
    # Room on both sides for the labels, and always show the 1x line.
    ax.set_xlim(min(min(values), 1.0) / 2.5, max(max(values), 1.0) * 2.5)
    for yi, (_, s, _, _, _, rng) in zip(y, bars):
        right = max(s, rng[1]) if rng else s
        left = min(s, rng[0]) if rng else s
        if s >= 1:
            ax.text(right * 1.05, yi, format_ratio(s), va="center", ha="left", fontsize=7)
        else:
            ax.text(left / 1.05, yi, format_ratio(s), va="center", ha="right", fontsize=7)
    ax.set_xlabel("speedup of detr_ops over the baseline (baseline time / detr_ops time, log scale);\n"
                  "whiskers: range over the quartiles")
    ax.set_title("detr_ops speedup per op and shape (right of the line: detr_ops faster)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[op]) for op in ops]
    names = list(ops)
    if any(b[4] for b in bars):
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", hatch="//"))
        names.append(f"unreliable ({trust.MARKERS['spread']} spread > {trust.SPREAD_LIMIT:.0%} of the median, "
                     f"{trust.MARKERS['load']} other processes busy)")
    # Below the axes (matplotlib >= 3.7): inside, it would cover bars when there are few of them.
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 4), fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(bars)


def solver_single_rows(rows: List[Row]) -> List[Row]:
    return [r for r in rows if r.op == SOLVER_OP and _SINGLE_CASE.match(r.case)]


def lsa_scaling_plot(rows: List[Row], path) -> Optional[str]:
    """Time versus rows*cols for the solver's single problems, one line per implementation, log-log.

    Rectangular (DETR-like: queries x targets) and square problems go in separate panels: at the
    same size a square problem is far harder, so one line through both would zigzag.
    Returns None when written, else the reason it was skipped (no solver rows in this run)."""
    single = solver_single_rows(rows)
    if not single:
        return f"no single-problem rows for {SOLVER_OP} in this run"
    panels = [(title, [r for r in single if pick(*_dims(r.case))]) for title, pick in (
        ("rectangular (queries x targets)", lambda m, n: m != n), ("square", lambda m, n: m == n))]
    panels = [(t, rs) for t, rs in panels if rs]
    impls = list(dict.fromkeys(r.impl for r in single))
    colors = {impl: plt.get_cmap("tab10")(i % 10) for i, impl in enumerate(impls)}

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), sharey=True, squeeze=False)
    for ax, (title, panel_rows) in zip(axes[0], panels):
        for impl in impls:
            points = sorted((_size(r.case), r.time_s) for r in panel_rows if r.impl == impl)
            if points:
                ax.plot(*zip(*points), marker="o", label=impl, color=colors[impl])
        cases = {_size(r.case): r.case for r in panel_rows}
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sorted(cases), [cases[k] for k in sorted(cases)], fontsize=7, rotation=30)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("problem size rows x cols (log)")
        ax.set_title(title, fontsize=10)
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("median time per problem, seconds (log)")
    fig.suptitle("linear_sum_assignment: one problem, time versus size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _dims(case):
    return tuple(map(int, _SINGLE_CASE.match(case).groups()))


def _size(case):
    rows, cols = _dims(case)
    return rows * cols
