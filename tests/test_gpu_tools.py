"""The GPU-readiness tools of ``scripts/``: the occupancy arithmetic (against NVIDIA's own
``cuda_occupancy.h`` where the toolkit is installed), the ptxas report parser, the CUDA resource
table's source reading, the Triton ahead-of-time compile (recording, coverage, one real compile for
sm_90) and the GPU check's time budget."""
import os
import pathlib
import shutil
import subprocess

import pytest

from scripts import cuda_resources, occupancy, ptxas_info

REPO = pathlib.Path(__file__).resolve().parents[1]
CUDA_HOME = pathlib.Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))

# ---- occupancy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,threads,regs,smem,expected", [
    (90, 256, 255, 0, (1, "registers")),         # 8 warps of 8160 -> 8192 registers: 2 warps per sub-partition
    (90, 256, 128, 0, (2, "registers")),
    (90, 128, 32, 0, (16, "warps")),             # 4 warps per block, 64 warp slots
    (90, 32, 16, 0, (32, "block slots")),
    (90, 256, 32, 100 * 1024, (2, "shared memory")),
    (80, 256, 32, 100 * 1024, (1, "shared memory")),  # A100: 164 KiB per SM
    (90, 1024, 65, 0, (0, "registers")),         # 65 x 32 -> 2304 per warp x 32 warps > 64K: cannot launch
    (90, 256, 32, 228 * 1024, (0, "shared memory")),
])
def test_blocks_per_sm(arch, threads, regs, smem, expected):
    assert occupancy.blocks_per_sm(arch, threads, regs, smem) == expected


_OCC_PROGRAM = r"""
#include <cstdio>
#include <cstdlib>
#include "cuda_occupancy.h"
int main(int argc, char** argv) {
  int arch = atoi(argv[1]);
  cudaOccDeviceProp p;
  p.computeMajor = arch / 10; p.computeMinor = arch % 10;
  p.maxThreadsPerBlock = 1024; p.maxThreadsPerMultiprocessor = 2048; p.regsPerBlock = 65536;
  p.regsPerMultiprocessor = 65536; p.warpSize = 32; p.numSms = 100; p.sharedMemPerBlock = 48 * 1024;
  p.sharedMemPerMultiprocessor = (arch == 90 ? 228 : 164) * 1024;
  p.sharedMemPerBlockOptin = (arch == 90 ? 227 : 163) * 1024; p.reservedSharedMemPerBlock = 1024;
  int threads, regs, smem;
  while (scanf("%d %d %d", &threads, &regs, &smem) == 3) {
    cudaOccFuncAttributes a;
    a.maxThreadsPerBlock = 1024; a.numRegs = regs; a.sharedSizeBytes = smem;
    a.partitionedGCConfig = PARTITIONED_GC_OFF; a.shmemLimitConfig = FUNC_SHMEM_LIMIT_OPTIN;
    a.maxDynamicSharedSizeBytes = p.sharedMemPerBlockOptin - smem;
    cudaOccDeviceState s;
    cudaOccResult r;
    int ok = cudaOccMaxActiveBlocksPerMultiprocessor(&r, &p, &a, &s, threads, 0) == CUDA_OCC_SUCCESS;
    printf("%d\n", ok ? r.activeBlocksPerMultiprocessor : 0);
  }
}
"""


@pytest.mark.skipif(not (CUDA_HOME / "include" / "cuda_occupancy.h").exists() or shutil.which("g++") is None,
                    reason="needs the CUDA toolkit's cuda_occupancy.h and g++")
@pytest.mark.parametrize("arch", [80, 90])
def test_blocks_per_sm_matches_cuda_occupancy_h(arch, tmp_path):
    """NVIDIA's occupancy calculator (host-only header) is the reference, over a grid of launches."""
    src, exe = tmp_path / "occ.cpp", tmp_path / "occ"
    src.write_text(_OCC_PROGRAM)
    subprocess.run(["g++", "-std=c++17", f"-I{CUDA_HOME / 'include'}", str(src), "-o", str(exe)], check=True)
    cases = [(t, r, s) for t in (32, 64, 96, 128, 160, 256, 384, 512, 1024)
             for r in (16, 24, 32, 40, 56, 64, 72, 96, 128, 168, 200, 255)
             for s in (0, 1000, 4096, 48 * 1024, 100 * 1024, 160 * 1024)]
    out = subprocess.run([str(exe), str(arch)], input="\n".join("%d %d %d" % c for c in cases), text=True,
                         capture_output=True, check=True).stdout.split()
    ours = [occupancy.blocks_per_sm(arch, *c)[0] for c in cases]
    mismatches = [(c, int(e), o) for c, e, o in zip(cases, out, ours) if int(e) != o]
    assert mismatches == []


# ---- ptxas -v parsing ------------------------------------------------------------------------------

# CUDA 13.0 ptxas output of four kernels (a local array, heavy spills, dynamic and static shared memory).
PTXAS_SAMPLE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z6stackyIdEvPKT_PS0_ii' for 'sm_90'
ptxas info    : Function properties for _Z6stackyIdEvPKT_PS0_ii
    512 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 512 bytes cumulative stack size
ptxas info    : Compile time = 575.863 ms
ptxas info    : Compiling entry function '_Z7spill_kPKdPdi' for 'sm_90'
ptxas info    : Function properties for _Z11helper_funcv
    16 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Function properties for _Z7spill_kPKdPdi
    2160 bytes stack frame, 2756 bytes spill stores, 3244 bytes spill loads
ptxas info    : Used 64 registers, used 0 barriers, 2160 bytes cumulative stack size
ptxas info    : Compiling entry function '_Z5dyn_kPKfPf' for 'sm_90'
ptxas info    : Function properties for _Z5dyn_kPKfPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 14 registers, used 1 barriers
ptxas info    : Compiling entry function '_Z8shared_kPKfPf' for 'sm_80'
ptxas info    : Function properties for _Z8shared_kPKfPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 14 registers, used 1 barriers, 4096 bytes smem, 376 bytes cmem[0]
"""


def test_ptxas_report_is_parsed():
    kernels = {k.name: k for k in ptxas_info.parse("[3/9] nvcc ... -c x.cu\n" + PTXAS_SAMPLE)}
    assert list(kernels) == ["_Z6stackyIdEvPKT_PS0_ii", "_Z7spill_kPKdPdi", "_Z5dyn_kPKfPf", "_Z8shared_kPKfPf"]
    stacky, spill, dyn, shared = kernels.values()
    assert (stacky.registers, stacky.stack_frame, stacky.spills) == (32, 512, False)
    # the device function's properties in between do not overwrite the kernel's
    assert (spill.registers, spill.stack_frame, spill.spill_stores, spill.spill_loads) == (64, 2160, 2756, 3244)
    assert spill.spills and (dyn.smem, dyn.barriers) == (0, 1)
    assert (shared.arch, shared.smem, shared.registers) == ("sm_80", 4096, 14)


def test_demangle_gives_readable_names():
    names = ptxas_info.demangle(["_Z6stackyIdEvPKT_PS0_ii", "not_mangled"])
    if shutil.which("c++filt") is None:
        pytest.skip("no c++filt")
    assert names == {"_Z6stackyIdEvPKT_PS0_ii": "void stacky<double>(double const*, double*, int, int)",
                     "not_mangled": "not_mangled"}


# ---- the CUDA resource table --------------------------------------------------------------------------

CU_SOURCE = """
constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = kWarp * kWarpsPerBlock;
constexpr int64_t kSharedLimit = 47 * 1024;
template <typename T, int R>
__global__ void __launch_bounds__(kThreads) forward_kernel(const T* x) {}
__global__ void plain_kernel(float* x) {}
void launch(cudaStream_t stream, int64_t n, size_t shared_bytes) {
  forward_kernel<scalar_t, decltype(r)::value><<<blocks_for(n), kThreads, 0, stream>>>(x);
  plain_kernel<<<dim3(static_cast<unsigned int>((n + 127) / 128), 2), 128, shared_bytes, stream>>>(y);
}
"""


def test_launch_sites_and_bounds_are_read_from_the_source():
    sites = {s.kernel: s for s in cuda_resources.launch_sites(CU_SOURCE)}
    assert (sites["forward_kernel"].threads, sites["forward_kernel"].smem_bytes) == (256, 0)
    # a runtime-sized dynamic shared memory is bounded by the file's shared-memory limit constant
    assert (sites["plain_kernel"].threads, sites["plain_kernel"].smem, sites["plain_kernel"].smem_bytes) == \
        (128, "shared_bytes", 47 * 1024)
    assert cuda_resources.launch_bounds(CU_SOURCE) == {"forward_kernel": "kThreads"}
    assert cuda_resources.evaluate("static_cast<int>(kThreads) / 2 + 3 * 1024", {"kThreads": 256}) == 128 + 3072
    assert cuda_resources.evaluate("n * 2", {}) is None
    # constants of a shared header, named with their namespace at the launch
    sites = cuda_resources.launch_sites("constexpr int kWarps = 4;\nk<<<g, kWarps * cuda::kWarpSize, 0, s>>>(x);",
                                        cuda_resources.constants_of("constexpr int kWarpSize = 32;"))
    assert sites[0].threads == 128


@pytest.mark.skipif(shutil.which("c++filt") is None, reason="needs c++filt (binutils) to demangle kernel names")
def test_cuda_resource_rows_flag_spills_and_low_occupancy(tmp_path):
    (tmp_path / "k_kernel.cu").write_text(CU_SOURCE)
    mangled_fwd = "_ZN2ns12_GLOBAL__N_114forward_kernelIfLi4EEEvPKT_"
    log = "\n".join([
        "[1/2] /usr/local/cuda/bin/nvcc --generate-dependencies-with-compile -c /src/k_kernel.cu -o k.o",
        f"ptxas info    : Compiling entry function '{mangled_fwd}' for 'sm_90'",
        f"ptxas info    : Function properties for {mangled_fwd}",
        "    96 bytes stack frame, 40 bytes spill stores, 48 bytes spill loads",
        "ptxas info    : Used 255 registers, used 1 barriers, 1024 bytes smem",
        "ptxas info    : Compiling entry function '_Z12plain_kernelPf' for 'sm_90'",
        "ptxas info    : Function properties for _Z12plain_kernelPf",
        "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads",
        "ptxas info    : Used 20 registers, used 0 barriers",
        "[2/2] c++ -c other.cpp"])
    rows, missing = cuda_resources.rows(log, tmp_path)
    assert missing == []
    by_kernel = {r.kernel: r for r in rows}
    fwd, plain = by_kernel["forward_kernel"], by_kernel["plain_kernel"]
    assert fwd.instantiation == "float, 4"
    assert (fwd.threads, fwd.registers, fwd.blocks, fwd.flags) == (256, 255, 1, ["spills", "<2 blocks/SM"])
    assert (plain.threads, plain.smem_dynamic_bytes, plain.flags) == (128, 47 * 1024, [])
    assert plain.blocks == 228 * 1024 // (47 * 1024 + 1024)   # bounded by the dynamic shared memory
    text = cuda_resources.render(rows)
    assert cuda_resources.compare(text, text) == []
    changed = cuda_resources.compare(text.replace("spills, <2 blocks/SM", "—"), text)
    assert changed == ["flags changed: k_kernel.cu forward_kernel float, 4 sm_90: — -> spills, <2 blocks/SM"]
    # a kernel launched in the sources without a ptxas report makes the table incomplete
    _, missing = cuda_resources.rows(log.split("ptxas info    : Compiling entry function '_Z12")[0], tmp_path)
    assert missing == ["k_kernel.cu: plain_kernel"]


# ---- Triton ahead of time -------------------------------------------------------------------------

needs_real_triton = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET", "0") == "1" or __import__("importlib").util.find_spec("triton") is None,
    reason="needs triton, without TRITON_INTERPRET")


@needs_real_triton
def test_every_launched_kernel_is_recorded_without_running():
    from scripts import triton_aot

    kernels = triton_aot.launched_kernels()
    assert {"_pairwise_kernel", "_lsa_kernel", "_matching_cost_kernel", "_forward_kernel", "_backward_kernel"} <= \
        {k for names in kernels.values() for k in names}
    from detr_ops.triton import _launch, box_iou

    launches = triton_aot.record()
    assert triton_aot.uncovered(launches) == []
    assert box_iou.launch is _launch.launch  # restored: the launchers launch again
    assert len(triton_aot.record()) == len(launches)
    specs = triton_aot.distinct_specs(launches)
    by_kernel = {}
    for s in specs:
        by_kernel.setdefault(s.kernel, []).append(s)
    # each dtype of the assignment kernel, and every flag combination, is a specialisation of its own
    lsa = by_kernel["_lsa_kernel"]
    assert {s.signature["cost_ptr"] for s in lsa} == {"*fp16", "*bf16", "*fp32", "*fp64"}
    assert {(s.constexprs["HAS_ROWS"], s.constexprs["HAS_COLS"], s.constexprs["MAXIMIZE"]) for s in lsa} == \
        {(a, b, c) for a in (False, True) for b in (False, True) for c in (False, True)}
    assert {s.constexprs["BLOCK_D"] for s in by_kernel["_forward_kernel"]} >= {8, 32, 256}


def test_recorder_rejects_a_grid_beyond_cuda_limits():
    from scripts import triton_aot

    class Kernel:
        class fn:
            __name__, __module__ = "k", "m"

    recorder = triton_aot.Recorder()
    recorder(Kernel)[(4, 65535, 1)](1, 2)
    with pytest.raises(AssertionError, match="65535"):
        recorder(Kernel)[(4, 65536, 1)](1, 2)
    with pytest.raises(AssertionError, match="axis 0"):
        recorder(Kernel)[(0,)](1, 2)
    assert len(recorder.launches) == 1


def test_known_failures_match_kernel_tokens_and_version_and_turn_obsolete(monkeypatch):
    from scripts import triton_aot

    monkeypatch.setattr(triton_aot, "KNOWN_FAILURES", {("_k", ("%16:D", "BLOCK_Q=32"), "3.6."): "bug"})
    assert triton_aot.known_failure("_k", "fp32/i64 BLOCK_Q=32 BLOCK_D=32 %16:D", "3.6.0") == "bug"
    assert triton_aot.known_failure("_k", "fp32/i64 BLOCK_Q=32 BLOCK_D=32 %16:D", "3.9.0") == ""
    assert triton_aot.known_failure("_k", "fp32/i64 BLOCK_Q=16 BLOCK_D=256 %16:D", "3.6.0") == ""
    assert triton_aot.known_failure("_other", "BLOCK_Q=32 %16:D", "3.6.0") == ""

    def result(ok, why):
        return triton_aot.Result("m", "_k", "label", "v", 90, ok=ok, known_failure=why)

    failed, known, obsolete = triton_aot.summarise([result(False, ""), result(False, "a"), result(True, "a"),
                                                    result(True, "b")])
    assert len(failed) == 1 and [r.known_failure for r in known] == ["a"] and obsolete == ["b"]


def test_accepted_spills_match_kernel_tokens_and_version(monkeypatch):
    from scripts import triton_aot

    monkeypatch.setattr(triton_aot, "ACCEPTED_SPILLS", {("_k", ("fp64/i64",), "3."): "float64 only"})
    assert triton_aot.accepted_spill("_k", "fp64/i64 BLOCK_Q=16 BLOCK_D=16", "3.9.0") == "float64 only"
    assert triton_aot.accepted_spill("_k", "fp32/i64 BLOCK_Q=16 BLOCK_D=16", "3.9.0") == ""
    assert triton_aot.accepted_spill("_other", "fp64/i64", "3.9.0") == ""
    assert triton_aot.accepted_spill("_k", "fp64/i64", "2.3.0") == ""

    def result(registers, spilled):
        return triton_aot.Result("m", "_other", "label", "fp32", 90, ok=True, registers=registers,
                                 spill_stores=spilled, spill_loads=spilled)

    # a few bytes below the register limit: ptxas's choice; at the limit, or more bytes: pressure
    assert triton_aot.accepted_spill("_other", "fp32", "3.9.0", result(80, 8)) == triton_aot.SMALL_SPILL_REASON
    assert triton_aot.accepted_spill("_other", "fp32", "3.9.0", result(255, 8)) == ""
    assert triton_aot.accepted_spill("_other", "fp32", "3.9.0", result(80, 112)) == ""


@needs_real_triton
def test_one_kernel_compiles_for_sm90_with_its_resources(tmp_path):
    """A real compile (the elementwise GIoU loss, float32): registers and warps come back, no spills."""
    from scripts import triton_aot

    launches = [x for x in triton_aot.record() if x.kernel == "_loss_kernel" and "float32 xyxy" in x.label]
    spec = triton_aot.distinct_specs(launches[:1])[0]
    result = triton_aot.compile_spec(spec, 90)
    assert result.ok, result.error
    assert result.arch == "sm_90a" and result.num_warps == 4 and 0 < result.registers <= 255
    assert result.blocks_per_sm >= 1 and not result.spills
    # the cache round trip keeps the result
    payload = (spec, 90, str(tmp_path))
    first, second = triton_aot._worker(payload), triton_aot._worker(payload)
    assert first.registers == second.registers and second.cached
    md = triton_aot.render([dict(triton="x", torch="y", targets=[90], ptxas="z", results=[first.__dict__])])
    assert "_loss_kernel" in md and "| 1 |" in md


# ---- the GPU check --------------------------------------------------------------------------------


def test_gpu_check_stage_limits_fit_one_device_call():
    out = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--plan"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    limits = {line.split()[1]: int(line.split()[2]) for line in out.stdout.splitlines() if line.startswith("limit")}
    assert set(limits) >= {"env", "build", "tests", "memcheck", "racecheck", "bench", "reserve"}
    total = int(next(line for line in out.stdout.splitlines() if line.startswith("total")).split()[1])
    assert total == sum(limits.values()) <= 480
