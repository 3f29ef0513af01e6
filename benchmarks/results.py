"""Reading a pytest-benchmark JSON file into rows, and formatting times and sizes.

A row is one timed implementation of one case, as :func:`benchmarks.timing.measure` recorded it in
``extra_info`` (op, case, pass_, impl, role, backend). Everything downstream (table, plots,
comparison) works on these rows only, so it is generic over whatever ops the suites contain.
"""
import json
import math
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Row:
    op: str
    case: str
    pass_: str
    impl: str
    role: str  # "baseline" or "detr_ops"
    backend: str  # "" for baselines, "native" / "triton" for detr_ops
    time_s: float
    peak_bytes: Optional[int] = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    # The spread of the timings: quartiles and extremes (None where the file does not have them),
    # the number of rounds, and the CPU other processes used while the row was timed.
    q1_s: Optional[float] = None
    q3_s: Optional[float] = None
    min_s: Optional[float] = None
    max_s: Optional[float] = None
    rounds: Optional[int] = None
    others_cores: Optional[float] = None
    cpus: Optional[int] = None

    @property
    def spread(self) -> Optional[float]:
        """Interquartile range over the median (0.05: the middle half of the rounds lies within
        5% of the median's value); None when unknown."""
        if self.q1_s is None or self.q3_s is None or not self.time_s > 0:
            return None
        return (self.q3_s - self.q1_s) / self.time_s

    @property
    def group(self):
        """The rows that are compared with each other: same op, shape and pass."""
        return (self.op, self.case, self.pass_)

    @property
    def key(self):
        """What identifies a row across two runs (``compare.py``)."""
        return (self.op, self.case, self.pass_, self.impl, self.backend)


def load(path):
    """(rows, machine_info, skipped names) of a pytest-benchmark JSON file.

    Benchmarks that did not go through ``measure`` (no ``op`` in ``extra_info``) cannot be placed in
    the table; their names are returned so the caller can say so instead of dropping them silently.
    """
    with open(path) as f:
        data = json.load(f)
    return rows_from_data(data) + (data.get("machine_info", {}),)


def rows_from_data(data):
    rows, skipped = [], []
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "op" not in info:
            skipped.append(bench.get("fullname", bench.get("name", "?")))
            continue
        rows.append(
            Row(
                op=info["op"],
                case=str(info.get("case", "")),
                pass_=info.get("pass_", "fwd"),
                impl=info.get("impl", "?"),
                role=info.get("role", "detr_ops"),
                backend=info.get("backend") or "",
                time_s=row_time(bench),
                peak_bytes=info.get("peak_bytes"),
                extra=info,
                **row_spread(bench),
                others_cores=info.get("others_cores"),
                cpus=info.get("cpus"),
            )
        )
    return rows, skipped


def row_spread(bench):
    """Quartiles, extremes and rounds of the timings the reported time is the median of: the
    CUDA-event repetitions on a GPU, pytest-benchmark's rounds on CPU."""
    info, stats = bench.get("extra_info", {}), bench.get("stats", {})
    if info.get("gpu_median_s") is not None:
        keys = {"q1_s": "gpu_q1_s", "q3_s": "gpu_q3_s", "min_s": "gpu_min_s", "max_s": "gpu_max_s"}
        spread = {k: _float(info.get(v)) for k, v in keys.items()}
        spread["rounds"] = None  # do_bench's repetition count is not reported; it is many
        return spread
    spread = {k: _float(stats.get(v)) for k, v in (("q1_s", "q1"), ("q3_s", "q3"), ("min_s", "min"), ("max_s", "max"))}
    spread["rounds"] = stats.get("rounds")
    return spread


def _float(x):
    return None if x is None else float(x)


def row_time(bench):
    """The time to report: the CUDA-event median on a GPU (pytest-benchmark's own round there is a
    single host-timed call kept only for its bookkeeping), pytest-benchmark's median on CPU."""
    gpu = bench.get("extra_info", {}).get("gpu_median_s")
    if gpu is not None:
        return float(gpu)
    return float(bench["stats"]["median"])


def format_time(seconds):
    """Three significant digits in the unit that keeps the number readable: 812 us, 4.21 ms, 1.30 s."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{_sig3(seconds / scale)} {unit}"
    return f"{_sig3(seconds / 1e-9)} ns"


def format_bytes(n):
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{_sig3(value)} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    raise AssertionError("unreachable")


def format_percent(fraction):
    if fraction is None or not math.isfinite(fraction):
        return "?"
    return f"{fraction * 100:.0f}%" if fraction >= 0.01 else "<1%"


def format_ratio(ratio):
    if ratio is None or not math.isfinite(ratio):
        return "—"
    return f"{_sig3(ratio)}x"


def _sig3(x):
    # 3 significant digits without scientific notation: 812, 42.1, 4.21, 0.421.
    if x == 0:
        return "0"
    digits = max(0, 2 - int(math.floor(math.log10(abs(x)))))
    return f"{x:.{digits}f}"
