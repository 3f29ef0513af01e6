"""How every Triton launcher starts a kernel: ``launch(kernel)[grid](...)``.

On a GPU the Triton ops are ``torch.library.triton_op``s, and their kernels must be launched through
``wrap_triton`` so that torch.compile / Inductor see the kernel instead of an opaque call. Under
``TRITON_INTERPRET=1`` the ops are plain ``custom_op``s (see ``detr_ops/_registrations.py``: tracing a
triton_op runs its body on fake tensors, and the interpreter needs real data pointers), and the
kernel is called directly.
"""
from torch.library import wrap_triton

from detr_ops import _backend


def launch(kernel):
    return kernel if _backend.interpreting() else wrap_triton(kernel)
