"""Blocks per SM that a kernel's resources allow, from NVIDIA's documented per-SM limits.

The arithmetic of the CUDA Occupancy Calculator (``cuda_occupancy.h``): registers are allocated per
warp in units of 256 and split evenly over the SM's 4 sub-partitions; shared memory per block is
rounded up to 128 bytes and the system reserves 1 KiB per block; blocks are further limited by the
SM's warp slots and block slots. Limits are those of the CUDA C++ Programming Guide's
"Technical Specifications per Compute Capability" table (sm_80: A100, sm_90: H100/H200), with the
largest shared-memory carve-out (the driver picks it when a kernel needs it).
"""
from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class SMLimits:
    max_threads_per_sm: int
    max_warps_per_sm: int
    max_blocks_per_sm: int
    regs_per_sm: int
    max_regs_per_thread: int
    max_regs_per_block: int
    smem_per_sm: int             # bytes, largest carve-out
    max_smem_per_block: int      # bytes, opt-in maximum
    reserved_smem_per_block: int  # bytes the system keeps per resident block
    reg_alloc_unit: int = 256    # registers, per warp
    smem_alloc_unit: int = 128   # bytes
    sub_partitions: int = 4
    warp_size: int = 32


LIMITS = {
    80: SMLimits(2048, 64, 32, 65536, 255, 65536, 164 * 1024, 163 * 1024, 1024),
    90: SMLimits(2048, 64, 32, 65536, 255, 65536, 228 * 1024, 227 * 1024, 1024),
}


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def blocks_per_sm(arch: int, threads: int, regs: int, smem: int = 0) -> Tuple[int, str]:
    """(resident blocks per SM, the limiting resource) for blocks of ``threads`` threads using
    ``regs`` registers per thread and ``smem`` bytes of shared memory (static + dynamic).

    0 blocks means the launch fails (too many threads, registers or shared memory for one block).
    """
    lim = LIMITS[arch]
    if threads <= 0 or threads > 1024:
        return 0, "threads"
    warps = -(-threads // lim.warp_size)
    regs_per_warp = _round_up(max(regs, 1) * lim.warp_size, lim.reg_alloc_unit)
    # The hardware checks the per-block register limit as if the warps filled every sub-partition.
    assumed = regs_per_warp * _round_up(warps, lim.sub_partitions)
    if regs > lim.max_regs_per_thread or max(assumed, regs_per_warp * warps) > lim.max_regs_per_block:
        return 0, "registers"
    if smem > lim.max_smem_per_block:
        return 0, "shared memory"
    warps_per_partition = (lim.regs_per_sm // lim.sub_partitions) // regs_per_warp
    by_regs = warps_per_partition * lim.sub_partitions // warps
    by_warps = lim.max_warps_per_sm // warps
    by_smem = lim.smem_per_sm // _round_up(smem + lim.reserved_smem_per_block, lim.smem_alloc_unit)
    candidates = [(lim.max_blocks_per_sm, "block slots"), (by_warps, "warps"), (by_regs, "registers"),
                  (by_smem, "shared memory")]
    blocks, limiter = min(candidates, key=lambda c: c[0])
    return blocks, limiter


def occupancy(arch: int, threads: int, blocks: int) -> float:
    """Fraction of the SM's warp slots that ``blocks`` resident blocks fill."""
    lim = LIMITS[arch]
    return blocks * (-(-threads // lim.warp_size)) / lim.max_warps_per_sm
