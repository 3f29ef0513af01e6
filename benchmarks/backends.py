"""Which detr_ops backends a benchmark row is timed for: the compiled kernel everywhere, and Triton
on a GPU (the interpreter is a correctness tool, far too slow to time)."""
from benchmarks.shapes import ON_GPU


def detr_ops_backends():
    backends = ["native"]
    if ON_GPU:
        try:
            import triton  # noqa: F401

            backends.append("triton")
        except ImportError:
            pass
    return backends
