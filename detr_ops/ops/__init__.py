"""Public operator functions: input checks at the boundary, backend choice, and the call of the
registered op. (Fake kernels, autograd and the Triton twins: ``detr_ops/_registrations.py``.)"""
