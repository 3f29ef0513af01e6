"""CI and GPU-readiness tools (run as ``python -m scripts.<tool>`` from the repository root).

``occupancy`` (documented per-SM limits and blocks per SM), ``ptxas_info`` (parses ``ptxas -v``),
``triton_aot`` (every Triton kernel compiled for sm_80 / sm_90 without a GPU), ``cuda_resources``
(the CUDA kernels' registers, spills and occupancy from the build log). Nothing in ``detr_ops``
imports them.
"""
