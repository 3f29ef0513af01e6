"""Public operator functions. Each module checks inputs at the boundary, registers the fake kernel
and autograd of its torch ops (when the compiled extension is available) and picks the backend."""
