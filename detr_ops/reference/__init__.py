"""Plain PyTorch / scipy references that the tests and benchmarks compare the compiled ops with."""
from detr_ops.reference.linear_sum_assignment import batched_linear_sum_assignment_reference

__all__ = ["batched_linear_sum_assignment_reference"]
