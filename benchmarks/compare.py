"""Comparison mode: two results files in, what got faster or slower out.

    python -m benchmarks.compare OLD.json NEW.json [--threshold 0.1]

Rows are matched by (op, case, pass, impl, backend). ``ratio`` is new time / old time; a row is
"faster" when the ratio is below 1 - threshold, "slower" above 1 + threshold, else "same"; a
change beyond the threshold whose two interquartile ranges overlap is "unclear" (the rounds of the
two runs mix: the medians moved within the noise). The last column marks rows that spread or load
make unreliable in either file (benchmarks.trust's markers). Rows found in only one file are listed
after the table. Meant for two runs on the same machine (the machines of both files are printed):
across machines the ratios say nothing about a change.
"""
import argparse
import sys
from dataclasses import dataclass
from typing import List, Optional

from benchmarks import trust
from benchmarks.report import machine_summary
from benchmarks.results import Row, format_ratio, format_time, load


@dataclass
class Change:
    old: Row
    new: Row

    @property
    def ratio(self) -> float:
        return self.new.time_s / self.old.time_s if self.old.time_s > 0 else float("inf")

    def overlap(self) -> bool:
        """The two rows' interquartile ranges overlap (False when either is unknown)."""
        o, n = self.old, self.new
        if None in (o.q1_s, o.q3_s, n.q1_s, n.q3_s):
            return False
        return o.q1_s <= n.q3_s and n.q1_s <= o.q3_s

    def verdict(self, threshold: float) -> str:
        if self.ratio < 1 - threshold:
            return "unclear" if self.overlap() else "faster"
        if self.ratio > 1 + threshold:
            return "unclear" if self.overlap() else "slower"
        return "same"

    def flags(self, old_machine=None, new_machine=None) -> List[str]:
        found = set(trust.row_flags(self.old, old_machine)) | set(trust.row_flags(self.new, new_machine))
        return [f for f in trust.MARKERS if f in found]


def match(old_rows: List[Row], new_rows: List[Row]):
    """(changes, keys only in old, keys only in new); changes in the new file's order of ops and
    cases, so the rows of one case stay together as in the report's table."""
    old = {r.key: r for r in old_rows}
    new = {r.key: r for r in new_rows}
    op_order, group_order = {}, {}
    for i, r in enumerate(new_rows):
        op_order.setdefault(r.op, i)
        group_order.setdefault(r.group, i)
    ordered = sorted(new_rows, key=lambda r: (op_order[r.op], group_order[r.group]))
    changes = [Change(old[r.key], r) for r in ordered if r.key in old]
    only_old = [r.key for r in old_rows if r.key not in new]
    only_new = [r.key for r in new_rows if r.key not in old]
    return changes, only_old, only_new


def to_markdown(changes: List[Change], threshold: float, only_old=(), only_new=(), old_machine=None,
                new_machine=None) -> str:
    out = [
        "| op | case | pass | impl | backend | old time | new time | new/old | verdict | trust |",
        "|---|---|---|---|---|---:|---:|---:|---|---|",
    ]
    for c in changes:
        r = c.new
        out.append(
            f"| {r.op} | {r.case} | {r.pass_} | {r.impl} | {r.backend or '—'} | {format_time(c.old.time_s)}"
            f"{trust.spread_text(c.old)} | {format_time(c.new.time_s)}{trust.spread_text(c.new)} "
            f"| {format_ratio(c.ratio)} | {c.verdict(threshold)} | {trust.markers(c.flags(old_machine, new_machine))} |"
        )
    counts = {v: sum(c.verdict(threshold) == v for c in changes) for v in ("faster", "slower", "same", "unclear")}
    out.append("")
    out.append(f"{counts['faster']} faster, {counts['slower']} slower, {counts['same']} same, "
               f"{counts['unclear']} unclear (threshold {threshold:.0%} of the old time; unclear: beyond the "
               "threshold but the interquartile ranges overlap)")
    out.append("")
    out.append(trust.legend())
    for title, keys in (("Only in the old file", only_old), ("Only in the new file", only_new)):
        if keys:
            out.append(f"\n{title}:")
            out += [f"- {' | '.join(k[:4])}{' | ' + k[4] if k[4] else ''}" for k in keys]
    return "\n".join(out) + "\n"


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", help="pytest-benchmark JSON of the earlier run")
    parser.add_argument("new", help="pytest-benchmark JSON of the later run")
    parser.add_argument("--threshold", type=float, default=0.1,
                        help="relative change below which a row counts as the same (default 0.1 = 10%%)")
    args = parser.parse_args(argv)
    if not 0 <= args.threshold < 1:
        parser.error("--threshold must be in [0, 1)")

    old_rows, _, old_machine = load(args.old)
    new_rows, _, new_machine = load(args.new)
    print(f"old: {args.old}\n     {machine_summary(old_machine)}")
    print(f"new: {args.new}\n     {machine_summary(new_machine)}\n")
    for key in ("cpu_model", "gpu_name", "cpu_count"):
        if old_machine.get(key) != new_machine.get(key):
            print(f"WARNING: {key} differs ({old_machine.get(key)!r} vs {new_machine.get(key)!r}): "
                  "the two runs are not from the same machine\n")
    for name, machine in (("old", old_machine), ("new", new_machine)):
        summary = trust.load_summary(machine)
        if summary:
            print(f"{name}: {summary}")
    changes, only_old, only_new = match(old_rows, new_rows)
    print(to_markdown(changes, args.threshold, only_old, only_new, old_machine, new_machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
