"""Importing this module defines the ``torch.ops.detr_ops.*_triton`` ops
(``_registrations.register_triton_twins``).

A module, imported with a plain ``import`` statement where ``backend="triton"`` is chosen, rather
than a function call: torch.compile executes import statements while it traces a function, so the
ops get defined even when the first Triton call happens inside a compiled function.
"""
from detr_ops import _registrations

_registrations.register_triton_twins()
