"""The benchmark suite's one command (``make bench``): run every suite, then write the report.

    python -m benchmarks.run [--profile quick|full] [--out DIR] [-k EXPR] [--json-only]

Detects CPU or GPU (the suites pick their shapes and backends from that), runs pytest on
``benchmarks/bench_*.py`` with the profile in ``DETR_OPS_BENCH_PROFILE``, writes the
pytest-benchmark JSON to ``DIR/benchmark.json`` (default ``results/<date>-<cpu|gpu>/``, with
``results/latest`` pointing at it) and then the table and plots (``benchmarks/report.py``).
Exits non-zero when pytest fails, including a detr_ops result that differs from its baseline's in
the check each benchmark makes before timing. Says so up front when other processes keep the
machine busy: the run goes on, and the report marks the ratios the load makes unreliable.
"""
import argparse
import datetime
import glob
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "results")

# The quick profile must finish in under 10 minutes on 2 CPU cores: half a second of rounds per
# row is enough for a stable median at these sizes, and 3 rounds at least for the slow baselines.
QUICK_ARGS = ["--benchmark-max-time=0.5", "--benchmark-min-rounds=3"]


def detect_device() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def default_out_dir(device: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(RESULTS, f"{stamp}-{device}")


def pytest_command(json_path, profile, k=None):
    suites = sorted(glob.glob(os.path.join(REPO, "benchmarks", "bench_*.py")))
    cmd = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "python_files=bench_*.py",
        f"--benchmark-json={json_path}",
        # pytest-benchmark's own terminal table is kept short: the report's table is the one to
        # read (on a GPU pytest-benchmark's times are a single host-timed round, not the result).
        "--benchmark-columns=median,iqr,rounds", "--benchmark-sort=name",
    ]
    if profile == "quick":
        cmd += QUICK_ARGS
    if k:
        cmd += ["-k", k]
    return cmd + suites


def update_latest(out_dir):
    """Points results/latest at this run (a relative symlink; a copy where symlinks fail)."""
    latest = os.path.join(RESULTS, "latest")
    if os.path.dirname(os.path.abspath(out_dir)) != RESULTS:
        return  # a run written elsewhere (--out) is not "the latest result" of this checkout
    try:
        tmp = latest + ".tmp"
        if os.path.lexists(tmp):
            os.remove(tmp)
        os.symlink(os.path.basename(out_dir), tmp)
        os.replace(tmp, latest)  # atomic: a reader never sees a missing latest
    except OSError:
        import shutil

        if os.path.islink(latest) or os.path.isfile(latest):
            os.remove(latest)
        elif os.path.isdir(latest):
            shutil.rmtree(latest)
        shutil.copytree(out_dir, latest)


def warn_if_busy():
    from benchmarks import machine_load, trust

    snap = machine_load.snapshot(sample_s=1.0)
    if machine_load.too_busy(snap["others_cores"], snap["cpus"]):
        print(f"WARNING: other processes are using {snap['others_cores']:.2f} of {snap['cpus']} CPUs "
              f"({trust.load_summary({'load_before': snap})}). Timings on a busy machine are unreliable; the "
              "report marks the ratios measured under load.", file=sys.stderr, flush=True)
    return snap


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=["quick", "full"], default="quick")
    parser.add_argument("--out", help="results folder (default: results/<date>-<cpu|gpu>/)")
    parser.add_argument("-k", dest="k", help="pytest -k expression: run only the matching benchmarks")
    parser.add_argument("--json-only", action="store_true", help="write benchmark.json only, no table or plots")
    args = parser.parse_args(argv)

    device = detect_device()
    out_dir = os.path.abspath(args.out or default_out_dir(device))
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "benchmark.json")
    env = dict(os.environ, DETR_OPS_BENCH_PROFILE=args.profile)
    cmd = pytest_command(json_path, args.profile, args.k)
    print(f"detr_ops benchmarks: profile {args.profile} on {device}, results in {out_dir}", flush=True)
    warn_if_busy()

    start = time.monotonic()
    rc = subprocess.call(cmd, cwd=REPO, env=env)
    wall = time.monotonic() - start
    print(f"\npytest finished in {wall:.0f} s with exit status {rc}", flush=True)

    if not os.path.exists(json_path):
        print(f"no {json_path} was written; nothing to report", file=sys.stderr)
        return rc or 1
    if rc == 0:
        update_latest(out_dir)  # a failed or partial run must not become the baseline of a comparison
    if not args.json_only:
        from benchmarks.report import write_report

        print()
        write_report(json_path, out_dir)
    if rc != 0:
        print(f"FAILED: pytest exit status {rc} (a failed check before timing counts); the report above "
              "covers only the rows that ran", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
