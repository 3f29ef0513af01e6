"""The report's table: one line per (op, case, pass, baseline), the detr_ops times of that case in
one column per backend, and the speedup of the best detr_ops time over the baseline.

Built from :class:`benchmarks.results.Row` only, so a new suite appears without changes here.
Each time carries its spread ("4.21 ms [3%]": interquartile range over the median), and a speedup
that spread or load makes unreliable carries a marker (:mod:`benchmarks.trust`).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

from benchmarks import trust
from benchmarks.results import Row, format_bytes, format_ratio, format_time


def column_of(row: Row) -> str:
    """The detr_ops column a row goes in: its backend ("native", "triton"), unless the suite timed
    a second variant on the same backend (e.g. the solver's op alone, impl "detr_ops-op"); such a
    variant gets its own column, "native: detr_ops-op", instead of overwriting the first."""
    backend = row.backend or "native"
    if row.impl in ("detr_ops", f"detr_ops-{backend}"):
        return backend
    return f"{backend}: {row.impl}"


@dataclass
class Line:
    op: str
    case: str
    pass_: str
    baseline: Optional[Row]
    ours: Dict[str, Row]  # column -> detr_ops row

    @property
    def best(self) -> Optional[Row]:
        return min(self.ours.values(), key=lambda r: r.time_s) if self.ours else None

    @property
    def speedup(self) -> Optional[float]:
        if self.baseline is None or self.best is None or self.best.time_s <= 0:
            return None
        return self.baseline.time_s / self.best.time_s

    def speedup_of(self, column) -> Optional[float]:
        if self.baseline is None or column not in self.ours or self.ours[column].time_s <= 0:
            return None
        return self.baseline.time_s / self.ours[column].time_s

    def flags(self, machine_info=None, column=None) -> List[str]:
        """Why the speedup (of ``column``, default the best) is unreliable: [] / ["spread", "load"]."""
        ours = self.ours.get(column) if column is not None else self.best
        return trust.flags_of([self.baseline, ours], machine_info)


def build(rows: List[Row]):
    """(lines, detr_ops columns) in the order the suites ran: ops in order of first appearance,
    and within an op its cases and passes in order of first appearance."""
    op_order, group_order = {}, {}
    for i, r in enumerate(rows):
        op_order.setdefault(r.op, i)
        group_order.setdefault(r.group, i)
    groups = sorted(group_order, key=lambda g: (op_order[g[0]], group_order[g]))

    columns = []
    for r in rows:
        if r.role == "detr_ops" and column_of(r) not in columns:
            columns.append(column_of(r))
    # Plain backends first (native before triton as the suites list them), variants after.
    first_seen = list(columns)
    columns.sort(key=lambda c: (":" in c, first_seen.index(c)))

    lines = []
    for g in groups:
        members = [r for r in rows if r.group == g]
        ours = {column_of(r): r for r in members if r.role == "detr_ops"}
        baselines = [r for r in members if r.role == "baseline"]
        # A case with no baseline (or no detr_ops row) still gets a line: a missing number is
        # information, e.g. a baseline that cannot run on this device.
        for base in baselines or [None]:
            lines.append(Line(op=g[0], case=g[1], pass_=g[2], baseline=base, ours=ours))
    return lines, columns


def to_markdown(lines: List[Line], columns: List[str], machine_info: Optional[dict] = None) -> str:
    # Peak memory columns only where some row carries it (the suites record it where it matters).
    base_memory = any(ln.baseline and ln.baseline.peak_bytes is not None for ln in lines)
    memory_columns = [c for c in columns if any(c in ln.ours and ln.ours[c].peak_bytes is not None for ln in lines)]
    header = ["op", "case", "pass", "baseline", "baseline time"] + [f"detr_ops {c}" for c in columns] + ["speedup"]
    header += (["baseline peak"] if base_memory else []) + [f"{c} peak" for c in memory_columns]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 4 else "---:" for i in range(len(header))) + "|"]
    for ln in lines:
        cells = [
            ln.op,
            ln.case,
            ln.pass_,
            ln.baseline.impl if ln.baseline else "—",
            _time_cell(ln.baseline),
        ]
        cells += [_time_cell(ln.ours.get(c)) for c in columns]
        cells.append(_speedup_cell(ln, machine_info))
        if base_memory:
            cells.append(format_bytes(ln.baseline.peak_bytes) if ln.baseline else "—")
        cells += [format_bytes(ln.ours[c].peak_bytes) if c in ln.ours else "—" for c in memory_columns]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _time_cell(row: Optional[Row]) -> str:
    return format_time(row.time_s) + trust.spread_text(row) if row is not None else "—"


def _speedup_cell(ln: Line, machine_info=None) -> str:
    text = format_ratio(ln.speedup)
    # With more than one detr_ops column filled, say which one the speedup is of.
    if ln.speedup is not None and len(ln.ours) > 1:
        best_column = next(c for c, r in ln.ours.items() if r is ln.best)
        text += f" ({best_column})"
    if ln.speedup is not None:
        marks = trust.markers(ln.flags(machine_info))
        if marks:
            text += " " + marks
    return text
