"""Records what a benchmark result depends on in pytest-benchmark's ``machine_info`` (the JSON's
top-level ``machine_info``; ``report.py`` copies it to ``machine.json``), so that two results files
can be judged comparable or not: library versions, the GPU, the build and the profile; and how busy
the machine was before and after the run (``load_before``, ``load_after``: load average, the cores
other processes used, the busiest of them), which with each row's own ``others_cores`` says whether
the timings can be trusted."""
import datetime
import os
import platform

import torch

from benchmarks import machine_load
from benchmarks.shapes import PROFILE

_LOAD = {}


def pytest_sessionstart(session):
    # Before anything is timed; pytest-benchmark asks for machine_info only at the end of the run.
    _LOAD["before"] = machine_load.snapshot()


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch_version"] = torch.__version__
    machine_info["torch_cuda_version"] = torch.version.cuda
    machine_info["triton_version"] = _triton_version()
    machine_info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        machine_info["gpu_name"] = torch.cuda.get_device_name(0)
        machine_info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        machine_info["cuda_driver_version"] = _cuda_driver_version()
    machine_info["detr_ops_build_info"] = _detr_ops_build_info()
    machine_info["cpu_model"] = _cpu_model()
    machine_info["cpu_count"] = os.cpu_count()
    # The cores this process may use (cgroup/affinity), which is what bounds the timings.
    machine_info["cpu_affinity_count"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    machine_info["torch_num_threads"] = torch.get_num_threads()
    machine_info["profile"] = PROFILE
    machine_info["date"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    machine_info["load_before"] = _LOAD.get("before")
    machine_info["load_after"] = machine_load.snapshot()
    machine_info["load_share_limit"] = machine_load.LOAD_SHARE_LIMIT


def _triton_version():
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _cuda_driver_version():
    # torch exposes no driver version; the NVML binding is optional, so a missing one is not an error.
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlSystemGetDriverVersion()
    except Exception:
        return None


def _detr_ops_build_info():
    # A benchmark run without the extension fails in the suites themselves; here we only record.
    try:
        import detr_ops

        return detr_ops.build_info()
    except Exception as exc:  # noqa: BLE001 - recorded, not raised
        return {"error": str(exc)}


def _cpu_model():
    # platform.processor() is empty on most Linux distributions; /proc/cpuinfo has the real name.
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
