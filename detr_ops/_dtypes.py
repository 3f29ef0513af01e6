"""The accumulation-dtype rule every op follows, written once.

Half and bfloat16 inputs are computed (and accumulated) in float32; float32 in float32; float64 in
float64. The box loss and the matching cost also *return* this dtype, so their fake kernels, the
Python wrappers and the Triton launchers all ask this function.
"""
import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# The floating dtypes the kernels take (float8 and complex are refused at the boundary).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
