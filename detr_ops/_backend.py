"""Which implementation of an op runs: the compiled kernel for the tensor's device, or Triton.

``backend="auto"`` (the default everywhere) picks the compiled kernel registered for the input's
device (C++ on CPU, CUDA C++ on a GPU). ``backend="triton"`` runs the op's Triton kernels, which
are registered as separate ops (``torch.ops.detr_ops.<name>_triton``, defined on first use by
``import detr_ops._triton_twins``) so that both GPU implementations can be tested and benchmarked
side by side. On CPU tensors Triton only runs under the interpreter (``TRITON_INTERPRET=1`` set
before Triton is imported).
"""
import importlib.util
import os

import torch

BACKENDS = ("auto", "native", "triton")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    # find_spec, not an import: importing Triton takes about half a second.
    return importlib.util.find_spec("triton") is not None


def resolve(backend: str, device: torch.device) -> str:
    """'native' or 'triton'; raises ValueError for an unknown or unusable backend."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend in ("auto", "native"):
        return "native"
    if not triton_available():
        raise RuntimeError("backend='triton' needs the triton package (pip install 'detr-ops[triton]')")
    if device.type != "cuda" and not interpreting():
        raise ValueError(
            f"backend='triton' runs on CUDA tensors, got a tensor on {device}; "
            "set TRITON_INTERPRET=1 before importing Triton to run it on the CPU"
        )
    return "triton"
