"""Argument checks shared by the public functions: clear errors naming the argument.

One policy for every op:
* an argument that is not a tensor where one is needed: ``TypeError``;
* a tensor of the wrong dtype, shape, device or value range: ``ValueError`` (as the C++ kernels'
  ``TORCH_CHECK_VALUE`` checks, so Python and C++ callers see the same exception type);
* index tensors (sizes, labels, level shapes and starts) may be any integer dtype and are converted
  to int64 at the boundary; bool, floating and complex index tensors are refused.
"""
import torch

INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def same_device(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_a} and {name_b} must be on the same device, got {a.device} and {b.device}")


def one_of(value, allowed, name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def floating(x, name: str) -> torch.Tensor:
    """A floating-point tensor (float16, bfloat16, float32, float64)."""
    x = tensor(x, name)
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    return x


def real(x, name: str, what: str) -> torch.Tensor:
    """A tensor of real numbers: any dtype but bool and complex (integers are for the caller to convert)."""
    x = tensor(x, name)
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{name} must hold {what}, got dtype {x.dtype}")
    return x


def index_tensor(x, name: str) -> torch.Tensor:
    """An integer tensor, returned as int64."""
    x = tensor(x, name)
    if x.dtype not in INTEGER_DTYPES:
        raise ValueError(f"{name} must be an integer tensor (int64), got dtype {x.dtype}")
    return x.long()
