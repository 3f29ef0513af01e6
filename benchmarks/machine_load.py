"""How busy the machine is, besides the benchmark itself: the numbers that say whether a timing
can be trusted.

Two measures, both from /proc (Linux; elsewhere they are None and nothing is flagged):

- **others' cores**: CPU time that *other* processes used over an interval, divided by the
  interval: 1.0 means one core's worth of someone else's work ran while we timed. It is the
  machine's busy time (/proc/stat) minus this process's own CPU time (its threads, getrusage),
  so it is exact whatever our own thread count, unlike the load average, which counts our own
  threads too and lags by minutes.
- the **load average** (1, 5, 15 minutes), as the operating system reports it.

``snapshot()`` samples the machine for a moment while this process sleeps (before and after a
run); ``Probe`` measures others' cores over a stretch of work (one benchmark row).
"""
import os
import resource
import time
from typing import Optional

# Other processes using more than this share of the CPUs this process may use, while a row was
# timed, make its time (and every ratio it enters) unreliable: they take cores and caches from it.
LOAD_SHARE_LIMIT = 0.25

try:
    _TICKS = os.sysconf("SC_CLK_TCK")
except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
    _TICKS = 100


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _busy_seconds() -> Optional[float]:
    """CPU seconds all CPUs spent on anything but idle and I/O wait, since boot."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    values = [int(v) for v in fields[1:9]]
    busy = sum(values) - values[3] - values[4]
    return busy / _TICKS


def _own_seconds() -> float:
    """CPU seconds of this process (every thread) and of its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Probe:
    """Others' cores over the stretch between ``start()`` and ``stop()``."""

    def start(self):
        self._wall, self._busy, self._own = time.monotonic(), _busy_seconds(), _own_seconds()
        return self

    def stop(self) -> Optional[float]:
        wall = time.monotonic() - self._wall
        busy = _busy_seconds()
        if busy is None or self._busy is None or wall <= 0:
            return None
        others = (busy - self._busy) - (_own_seconds() - self._own)
        # /proc/stat counts in clock ticks (10 ms): over a short stretch the difference can be a
        # tick below zero.
        return max(0.0, others / wall)


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _process_cpu(pid):
    """(name, CPU seconds) of a process, from /proc/<pid>/stat; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    name = text[text.index("(") + 1: text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return name, (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def _all_processes():
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return {}
    found = {}
    for pid in pids:
        info = _process_cpu(pid)
        if info is not None:
            found[pid] = info
    return found


def snapshot(sample_s: float = 1.0, top: int = 5) -> dict:
    """The machine's load now: load average, and the cores other processes used over ``sample_s``
    seconds while this process slept, with the busiest of them (name and cores)."""
    me = os.getpid()
    before = _all_processes()
    probe = Probe().start()
    time.sleep(sample_s)
    others = probe.stop()
    after = _all_processes()
    busiest = []
    for pid, (name, cpu) in after.items():
        if pid != me and pid in before:
            used = (cpu - before[pid][1]) / sample_s
            if used >= 0.05:
                busiest.append({"pid": pid, "name": name, "cores": round(used, 2)})
    busiest.sort(key=lambda p: -p["cores"])
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg": _loadavg(),
        "others_cores": None if others is None else round(others, 2),
        "cpus": available_cpus(),
        "sample_s": sample_s,
        "busiest_others": busiest[:top],
    }


def busy_share(others_cores: Optional[float], cpus: Optional[int]) -> Optional[float]:
    """Others' cores as a share of the CPUs available to the benchmark."""
    if others_cores is None or not cpus:
        return None
    return others_cores / cpus


def too_busy(others_cores: Optional[float], cpus: Optional[int]) -> bool:
    share = busy_share(others_cores, cpus)
    return share is not None and share > LOAD_SHARE_LIMIT
