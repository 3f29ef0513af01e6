"""Checks that the extension is a CUDA build and that every detr_ops operator with a CPU kernel also
has a CUDA kernel registered. Runs without a GPU."""
import sys

import torch

import detr_ops

info = detr_ops.build_info()
print("build:", info)
if not info["cuda_kernels"]:
    sys.exit("detr_ops._C was built without CUDA kernels")
ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("detr_ops::"))
has = torch._C._dispatch_has_kernel_for_dispatch_key
missing = [n for n in ops if has(n, "CPU") and not has(n, "CUDA")]
for n in ops:
    print(f"  {n:55s} CPU={has(n, 'CPU')!s:5s} CUDA={has(n, 'CUDA')}")
if missing:
    sys.exit(f"operators without a CUDA kernel: {missing}")
print(f"OK: {sum(has(n, 'CUDA') for n in ops)} operators have CUDA kernels")
