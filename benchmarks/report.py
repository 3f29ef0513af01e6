"""Turns a pytest-benchmark JSON file into the results folder's readable files.

    python -m benchmarks.report results/DIR/benchmark.json

Writes, next to the JSON: ``table.md`` (also printed), ``machine.json``, ``speedup.png`` and
``lsa_scaling.png`` (skipped, with a note, when the run has no solver rows).
"""
import argparse
import json
import os
import sys

from benchmarks import table
from benchmarks.results import load


def machine_summary(machine_info) -> str:
    """One line naming the machine and the versions, shown above the table."""
    parts = [
        machine_info.get("date", ""),
        machine_info.get("gpu_name") or machine_info.get("cpu_model") or machine_info.get("processor", ""),
        f"{machine_info.get('cpu_count', '?')} CPUs",
        f"torch {machine_info.get('torch_version', '?')}",
    ]
    if machine_info.get("triton_version"):
        parts.append(f"triton {machine_info['triton_version']}")
    if machine_info.get("cuda_available"):
        parts.append(f"CUDA {machine_info.get('torch_cuda_version')}")
    parts.append(f"profile {machine_info.get('profile', '?')}")
    return ", ".join(p for p in parts if p)


def write_report(json_path, out_dir=None, plot=True, stream=None):
    """Writes the report files; returns the markdown table (with its heading line)."""
    stream = stream or sys.stdout  # looked up at call time, so redirection (and capsys) applies
    out_dir = out_dir or os.path.dirname(os.path.abspath(json_path))
    os.makedirs(out_dir, exist_ok=True)
    rows, skipped, machine_info = load(json_path)
    lines, columns = table.build(rows)

    text = f"Machine: {machine_summary(machine_info)}\n\n" + table.to_markdown(lines, columns)
    if skipped:
        text += "\nNot in the table (no op metadata; they did not time through benchmarks.timing.measure): "
        text += ", ".join(skipped) + "\n"
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, "machine.json"), "w") as f:
        json.dump(machine_info, f, indent=2, sort_keys=True, default=str)
    print(text, file=stream)

    if plot:
        from benchmarks import plots  # matplotlib only when plotting (the GPU machine has none: --no-plots)

        n = plots.speedup_plot(lines, os.path.join(out_dir, "speedup.png"))
        print(f"speedup.png: {n} bars" if n else "speedup.png: skipped, no case has both a baseline and detr_ops",
              file=stream)
        skip = plots.lsa_scaling_plot(rows, os.path.join(out_dir, "lsa_scaling.png"))
        print(f"lsa_scaling.png: skipped, {skip}" if skip else "lsa_scaling.png: written", file=stream)
    print(f"Report files in {out_dir}", file=stream)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="pytest-benchmark JSON (benchmark.json of a results folder)")
    parser.add_argument("--out", help="folder for the report files (default: the JSON's folder)")
    parser.add_argument("--no-plots", action="store_true", help="only the table and machine.json")
    args = parser.parse_args(argv)
    write_report(args.json, args.out, plot=not args.no_plots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
