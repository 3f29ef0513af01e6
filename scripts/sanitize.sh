#!/usr/bin/env bash
# The sanitizer stage (`make sanitize`, run by .ci/run): the extension built with AddressSanitizer
# and UndefinedBehaviorSanitizer, then the C++-kernel tests and the adversarial cases run on it.
#
# How:
# - The tracked and untracked-but-not-ignored files are copied into build/sanitize/tree, and the
#   extension is built in place there, CPU only, objects in build/sanitize/temp. The copies get
#   fresh mtimes, so ninja recompiles every file and ccache (content-hashed) makes that cheap for
#   unchanged ones: with the checkout's mtimes kept, a source changed while an earlier run was
#   compiling could look older than its stale object and be skipped.
#   The copy keeps the normal build of the checkout untouched; pytest runs from the copy, whose
#   detr_ops (with the sanitized _C) comes first on sys.path.
# - -fno-wrapv: Python's own compile flags (which setuptools puts in front of ours) contain -fwrapv,
#   which defines signed overflow as wrapping and so hides it from UBSan. The later flag wins.
# - Python is not built with ASan, so its runtime is preloaded (LD_PRELOAD) and must come first.
#   allocator_may_return_null: adversarial cases ask for impossible sizes on purpose and expect
#   the normal std::bad_alloc / MemoryError, not ASan's abort. Leak detection is off (CPython and torch keep allocations until exit by design); the first
#   error of either sanitizer stops the process (halt_on_error), and crash-prone cases already run
#   in child processes (tests/isolated.py), where a sanitizer report fails that case.
# - DEBUG=1 (setup.py: -O0 -g, assertions kept): ASan makes -O3 compiles of torch-heavy files very
#   slow, and assertions are worth having on in this stage.
# - The tests: the C++ kernels' test files and the adversarial cases (tests/adversarial/*_cases.py,
#   run in child processes by tests/isolated.py through test_*_adversarial.py); Triton and CUDA tests are left out (-m "not triton and not
#   cuda"): the stage is about the C++ CPU kernels. Model, ONNX and integration tests are pure
#   Python on top of the same kernels, and minutes long.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
py=$(cd "$(dirname "$venv/bin/python")" && pwd)/python
work=${DETR_OPS_SANITIZE_DIR:-build/sanitize}
mkdir -p "$work"
work=$(cd "$work" && pwd)
tree=$work/tree
start=$SECONDS

echo "sanitize: copying the sources into $tree"
rm -rf "$tree"
mkdir -p "$tree"
git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xmf - -C "$tree"

flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -fno-wrapv"
echo "sanitize: building with $flags"
(
  cd "$tree"
  CFLAGS="$flags" CXXFLAGS="$flags" LDFLAGS="-fsanitize=address,undefined" DETR_OPS_CPU_ONLY=1 DEBUG=1 \
    "$py" setup.py -q build_ext --inplace --build-temp "$work/temp" > "$work/build.log" 2>&1 \
    || { tail -50 "$work/build.log"; exit 1; }
)
build_s=$((SECONDS - start))

so=$(ls "$tree"/detr_ops/_C*.so)
# ldd's output captured first, not piped into `grep -q`: grep -q exits at the first match, ldd can
# then die of SIGPIPE, and pipefail turned that into a false "does not link" (it failed CI once).
linked=$(ldd "$so")
for lib in libasan libubsan; do
  [[ $linked == *"$lib"* ]] || { echo "sanitize: $so does not link $lib" >&2; exit 1; }
done
preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export LD_PRELOAD="$preload"
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:abort_on_error=0:detect_odr_violation=0:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:report_error_type=1:${UBSAN_OPTIONS:-}"
# one thread per kernel call would hide races between tasks: keep torch's default (all cores)
unset OMP_NUM_THREADS

cd "$tree"
"$py" - "$tree" <<'EOF'
import sys, detr_ops
assert detr_ops.__file__.startswith(sys.argv[1]), f"imported {detr_ops.__file__}, not the sanitized copy"
print("sanitize: detr_ops from", detr_ops.__file__, detr_ops.build_info())
EOF

tests=""
for name in extension parallel_tasks linear_sum_assignment linear_sum_assignment_warm batched_linear_sum_assignment \
    linear_sum_assignment_capacity matching_cost box_iou ms_deform_attn ms_deform_attn_points \
    linear_sum_assignment_adversarial matcher_adversarial box_adversarial ms_deform_attn_adversarial; do
  [ -f "tests/test_$name.py" ] && tests="$tests tests/test_$name.py"
done
# Not test_isolated.py: it checks the harness itself with a case that segfaults on purpose and
# expects exit code -11, which ASan's SEGV handler turns into its report and exit code 1.
echo "sanitize: running $tests"
# shellcheck disable=SC2086
# batched_huge_expanded_cost expects std::bad_alloc from a throwing operator new; ASan's operator
# new reports out-of-memory and exits whatever allocator_may_return_null says.
"$py" -m pytest -q -p no:cacheprovider -m "not triton and not cuda" $tests \
  --deselect "tests/test_linear_sum_assignment_adversarial.py::test_linear_sum_assignment_adversarial[batched_huge_expanded_cost]"
echo "sanitize: clean (build ${build_s}s, total $((SECONDS - start))s)"
