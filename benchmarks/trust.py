"""Which timings, and so which ratios, can be trusted: the judgement the table, the plot and the
comparison share.

A ratio (speedup, or new/old in a comparison) is marked unreliable when one of its rows is:

- ``spread`` (marker †): its interquartile range exceeds ``SPREAD_LIMIT`` of its median, or it has
  fewer than ``MIN_ROUNDS`` rounds (no spread to speak of);
- ``load`` (marker ‡): other processes used more than ``machine_load.LOAD_SHARE_LIMIT`` of the
  CPUs available while it was timed. Rows recorded before the per-row measure existed fall back to
  the machine's load before and after the run (``machine.json``).

A mark does not say the number is wrong, only that a rerun on a quiet machine may well give another.
"""
from typing import Iterable, List, Optional

from benchmarks import machine_load
from benchmarks.results import Row, format_percent

SPREAD_LIMIT = 0.10
MIN_ROUNDS = 3
MARKERS = {"spread": "†", "load": "‡"}


def machine_busy(machine_info: Optional[dict]) -> bool:
    """The machine was busy before or after the run (others' share of the CPUs over the limit)."""
    for key in ("load_before", "load_after"):
        snap = (machine_info or {}).get(key) or {}
        if machine_load.too_busy(snap.get("others_cores"), snap.get("cpus")):
            return True
    return False


def row_flags(row: Row, machine_info: Optional[dict] = None) -> List[str]:
    flags = []
    if (row.spread is not None and row.spread > SPREAD_LIMIT) or (row.rounds is not None and row.rounds < MIN_ROUNDS):
        flags.append("spread")
    if row.others_cores is not None:
        cpus = row.cpus or (machine_info or {}).get("cpu_affinity_count") or (machine_info or {}).get("cpu_count")
        if machine_load.too_busy(row.others_cores, cpus):
            flags.append("load")
    elif machine_busy(machine_info):
        flags.append("load")
    return flags


def flags_of(rows: Iterable[Optional[Row]], machine_info: Optional[dict] = None) -> List[str]:
    """The union of the rows' flags, in MARKERS' order."""
    found = set()
    for r in rows:
        if r is not None:
            found.update(row_flags(r, machine_info))
    return [f for f in MARKERS if f in found]


def markers(flags: List[str]) -> str:
    return "".join(MARKERS[f] for f in flags)


def legend(machine_info: Optional[dict] = None) -> str:
    """The lines under the table: what the markers and the bracketed spread mean, and the load."""
    share = machine_load.LOAD_SHARE_LIMIT
    out = [
        f"Times: median [interquartile range as a share of the median]. {MARKERS['spread']} spread: a row of this "
        f"ratio has an interquartile range over {SPREAD_LIMIT:.0%} of its median (or under {MIN_ROUNDS} rounds). "
        f"{MARKERS['load']} load: other processes used over {share:.0%} of the CPUs while a row of this ratio was "
        "timed. A marked ratio is unreliable: rerun it on a quiet machine.",
    ]
    load = load_summary(machine_info)
    if load:
        out.append(load)
    return "\n\n".join(out)


def load_summary(machine_info: Optional[dict]) -> str:
    parts = []
    for key, when in (("load_before", "before the run"), ("load_after", "after it")):
        snap = (machine_info or {}).get(key)
        if not snap:
            continue
        text = when + ": "
        if snap.get("others_cores") is not None:
            text += f"other processes used {snap['others_cores']:.2f} of {snap.get('cpus', '?')} CPUs"
        if snap.get("loadavg"):
            text += f" (load average {', '.join(f'{x:g}' for x in snap['loadavg'])})"
        busiest = snap.get("busiest_others") or []
        if busiest:
            text += "; busiest: " + ", ".join(f"{p['name']} {p['cores']:.2f}" for p in busiest[:3])
        parts.append(text)
    if not parts:
        return ""
    busy = (" — BUSY (each ratio is judged by the load measured while its rows ran; rows without that "
            "measure are all marked)") if machine_busy(machine_info) else ""
    return "Load " + "; ".join(parts) + busy + "."


def spread_text(row: Optional[Row]) -> str:
    """" [4%]" after a time; nothing where the spread is unknown."""
    if row is None or row.spread is None:
        return ""
    return f" [{format_percent(row.spread)}]"
