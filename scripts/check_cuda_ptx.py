"""Checks the PTX compiled into a CUDA build of detr_ops for the marks fast math leaves, so that
--use_fast_math (or one of its parts) cannot creep back into the build unnoticed.

    python scripts/check_cuda_ptx.py CUOBJDUMP EXTENSION.so

The build must embed PTX (an arch list entry with +PTX, as scripts/check_cuda_build.sh builds).
Fails on
  * a flush-to-zero conversion (cvt...ftz): fast math turns the assignment solver's widening of
    float32 costs to float64 into one, so a tiny cost would become 0 and could change the indices;
  * approximate float32 division (div.approx / div.full): fast math uses it for every `/` in the
    matching-cost, GIoU and MSDA kernels instead of IEEE division (div.rn).
(Approximate exp2 inside the non-fast expf is fine: it is the library's exact-to-ulp expf.)
"""
import bisect
import re
import subprocess
import sys

FORBIDDEN = {
    "flush-to-zero conversion": re.compile(r"^\s*(@%p\d+\s+)?cvt(\.\w+)*\.ftz\b", re.M),
    "approximate float32 division": re.compile(r"^\s*(@%p\d+\s+)?div\.(approx|full)(\.ftz)?\.f32\b", re.M),
}
# one .entry per kernel; a hit is reported under the last .entry before it
ENTRY = re.compile(r"^(\.visible\s+)?\.entry\s+(\S+?)\(", re.M)


def main(cuobjdump, extension):
    ptx = subprocess.run([cuobjdump, "-ptx", extension], check=True, capture_output=True, text=True).stdout
    entries = [(m.start(), m.group(2)) for m in ENTRY.finditer(ptx)]
    names = [name for _, name in entries]
    if not any("lsa_kernel" in n for n in names) or not any("detr_ops" in n for n in names):
        sys.exit(f"no PTX of the detr_ops kernels in {extension} ({len(names)} entries): build with +PTX")
    starts = [start for start, _ in entries]
    problems = []
    for what, pattern in FORBIDDEN.items():
        for hit in pattern.finditer(ptx):
            k = bisect.bisect_right(starts, hit.start()) - 1
            where = names[k] if k >= 0 else "a module's preamble"
            line = ptx[hit.start():ptx.find("\n", hit.start())].strip()
            problems.append(f"{what} in {where}: {line}")
    for p in problems[:20]:
        print("FAIL", p)
    if problems:
        sys.exit(f"{len(problems)} fast-math instructions in the PTX: is --use_fast_math (or -ftz=true, "
                 "-prec-div=false) back in the nvcc flags?")
    print(f"OK: {len(names)} kernels' PTX has no flush-to-zero conversion and no approximate division")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
