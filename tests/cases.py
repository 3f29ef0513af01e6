"""The shared table of devices x backends x dtypes that op tests are parametrised over."""
import pytest
import torch

# (device, backend): the compiled kernel of each device, and Triton on a GPU or in the interpreter.
DEVICE_BACKENDS = [
    pytest.param("cpu", "native", id="cpu-native"),
    pytest.param("cuda", "native", id="cuda-native", marks=pytest.mark.cuda),
    pytest.param("cuda", "triton", id="cuda-triton", marks=[pytest.mark.cuda, pytest.mark.triton]),
    pytest.param("cpu", "triton", id="cpu-triton-interpreted", marks=pytest.mark.triton),
]

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Tolerances against a float64 reference, for results computed in float32 and rounded to the dtype.
TOLERANCE = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def dtype_param(dtypes=FLOAT_DTYPES):
    return pytest.mark.parametrize("dtype", dtypes, ids=lambda d: str(d).replace("torch.", ""))


device_backend_param = pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)


def opcheck_utils(backend: str):
    """The torch.library.opcheck tests to run for a backend.

    Under TRITON_INTERPRET=1 the interpreter executes kernels eagerly on the tensors it is given,
    so the tests that trace the op with fake/functional tensors (aot_dispatch) cannot run it; on a
    GPU every test runs.
    """
    from detr_ops import _backend

    if backend == "triton" and _backend.interpreting():
        return ("test_schema", "test_autograd_registration", "test_faketensor")
    return ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
