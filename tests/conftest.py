"""Markers and skips shared by every test module.

* ``cuda``: needs a CUDA GPU; skipped without one.
* ``triton``: runs a Triton kernel; needs the triton package, and either a GPU or the interpreter.
  On a CPU-only machine these run in a separate invocation with ``TRITON_INTERPRET=1`` (the
  variable must be set before Triton is imported): ``TRITON_INTERPRET=1 pytest -m triton tests``.

Hypothesis runs derandomized (the same examples on every run, so CI cannot fail by the luck of the
draw); ``HYPOTHESIS_PROFILE=explore pytest ...`` draws fresh random examples.
"""
import os

import pytest
import torch

from detr_ops import _backend

try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True)
    _hypothesis_settings.register_profile("explore", derandomize=False)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is a test requirement; the modules that use it import it themselves
    pass


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU")
    config.addinivalue_line("markers", "triton: runs Triton kernels (GPU, or CPU with TRITON_INTERPRET=1)")


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    has_triton = _backend.triton_available()
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "triton" in item.keywords:
            if not has_triton:
                item.add_marker(pytest.mark.skip(reason="triton is not installed"))
            elif "cuda" not in item.keywords and not _backend.interpreting():
                item.add_marker(pytest.mark.skip(reason="Triton on CPU runs only with TRITON_INTERPRET=1"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# The fixture behind tests/isolated.py's `parametrize` (adversarial cases run in child processes).
from tests.isolated import outcome  # noqa: E402,F401
