"""Loads the compiled core ``detr_ops._C`` once, and explains clearly when it cannot.

Importing ``_C`` runs the C++ ``TORCH_LIBRARY`` registrations that create ``torch.ops.detr_ops.*``.
The pure-PyTorch references (``detr_ops.reference``) work without it, so a missing extension is
reported when a compiled op is first needed, not when ``detr_ops`` is imported.

Where ``_C`` cannot be built (a GPU machine with minutes to spare), the CMake library
``libdetr_ops.so`` (every operator, no Python bindings, so no Python ABI) can stand in: set
``DETR_OPS_LIBRARY`` to its path and the operators are loaded from it with ``torch.ops.load_library``
when ``_C`` is missing. Only the scipy drop-in ``linear_sum_assignment`` (a pybind11 function)
needs ``_C`` itself.
"""
import os

import torch

_REBUILD = (
    "Rebuild it against the torch you are running, from the detr_ops source tree:\n"
    "    pip install --no-build-isolation -e .      (or: python setup.py build_ext --inplace)"
)


class ExtensionError(ImportError):
    """The compiled extension is missing, broken, or was built for another torch."""


class _OperatorLibrary:
    """Stands in for ``_C`` when only the operator library named by ``DETR_OPS_LIBRARY`` is loaded."""

    def __init__(self, path: str):
        self.path = path

    def build_info(self) -> dict:
        cuda = torch._C._dispatch_has_kernel_for_dispatch_key("detr_ops::pairwise_iou", "CUDA")
        # The library does not record the torch it was built against; loading it into another torch
        # fails with an undefined symbol, so a loaded library matches the running torch.
        return {"torch_version": torch.__version__.split("+")[0], "cuda": cuda,
                "cuda_version": torch.version.cuda if cuda else None, "parallel": None, "debug": None,
                "library": self.path}

    def linear_sum_assignment(self, cost_matrix, maximize=False):
        raise ExtensionError(
            f"detr_ops.linear_sum_assignment needs the Python extension detr_ops._C; only the operator library "
            f"{self.path} (DETR_OPS_LIBRARY) is loaded. Use detr_ops.batched_linear_sum_assignment, or build _C.\n"
            + _REBUILD)


def _load_library(path: str, why: str):
    try:
        torch.ops.load_library(path)
    except (OSError, RuntimeError) as e:
        return None, ExtensionError(f"{why}; DETR_OPS_LIBRARY={path} could not be loaded either ({e}).\n{_REBUILD}")
    return _OperatorLibrary(path), None


def _try_import():
    """Returns (module, None) or (None, ExtensionError)."""
    try:
        from detr_ops import _C
    except ImportError as e:
        text = str(e)
        if os.environ.get("DETR_OPS_LIBRARY"):
            return _load_library(os.environ["DETR_OPS_LIBRARY"], "detr_ops._C is not available (%s)" % text)
        if "undefined symbol" in text or "version" in text.lower():
            what = "detr_ops._C exists but does not match the installed torch %s (%s)." % (torch.__version__, text)
        else:
            what = "detr_ops._C, the compiled part of detr_ops, is not built (%s)." % text
        return None, ExtensionError(what + "\n" + _REBUILD)
    info = _C.build_info()
    built, running = info["torch_version"], torch.__version__.split("+")[0]
    if built != running:
        return None, ExtensionError(
            "detr_ops._C was built against torch %s but torch %s is running.\n%s" % (built, running, _REBUILD)
        )
    return _C, None


# Tried once, at import. Plain module globals (not a cached function) so that torch.compile can trace
# the ops' wrappers, which call load(), without stepping into the pybind11 module.
_MODULE, _ERROR = _try_import()


def available() -> bool:
    """True when the compiled extension loaded (and its operators are registered)."""
    return _MODULE is not None


def load():
    """The ``_C`` module; raises :class:`ExtensionError` saying what happened and how to rebuild."""
    if _ERROR is not None:
        raise _ERROR
    return _MODULE


def build_info() -> dict:
    """What was compiled in: ``{"torch_version", "cuda", "cuda_version", "parallel", "debug", "cuda_kernels"}``.

    ``parallel`` is True when the CPU kernels run on torch's intra-op threads (``torch.get_num_threads()``).

    ``cuda_kernels`` is True when CUDA kernels are registered for the operators (a CUDA build),
    regardless of whether a GPU is present now.
    """
    info = dict(load().build_info())
    info["cuda_kernels"] = bool(info["cuda"]) and torch._C._dispatch_has_kernel_for_dispatch_key(
        "detr_ops::pairwise_iou", "CUDA"
    )
    return info
