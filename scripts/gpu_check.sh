#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA GPU, torch preinstalled and no network (one call of the
# device tool runs all of it):
#   builds detr_ops in place, checks every op has a CUDA kernel, runs the whole test suite (CUDA and
#   Triton-on-GPU tests included), runs the CUDA tests of small shapes under compute-sanitizer
#   (memcheck; racecheck for kernels with shared memory), then the benchmark suite on the GPU.
# Writes into OUTDIR: log.txt, summary.md, and the benchmark suite's benchmark.json, table.md and
# plots. Python packages the machine lacks (lap, expecttest, torch-linear-assignment) can be carried
# as wheels in .whl/ (see the README).
#
#   bash scripts/gpu_check.sh OUTDIR [--profile quick|full]
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTDIR [--profile quick|full]}
shift
profile=quick
if [ "${1:-}" = "--profile" ]; then profile=${2:?--profile takes quick or full}; fi
mkdir -p "$out"
py=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
log=$out/log.txt
: > "$log"
status=()

run() {  # run NAME TIMEOUT_S CMD...: logs output, records pass/fail and the time it took
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "::: $name" | tee -a "$log"
  timeout "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  status+=("| $name | $([ $rc -eq 0 ] && echo pass || echo "FAIL (exit $rc)") | $((SECONDS - start)) s |")
  tail -n 3 "$log"
  return $rc
}

if ls .whl/*.whl > /dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/detr_ops_site .whl/*.whl >> "$log" 2>&1
  export PYTHONPATH=/tmp/detr_ops_site${PYTHONPATH:+:$PYTHONPATH}
fi

nvidia-smi >> "$log" 2>&1
run "build (setup.py build_ext --inplace)" 900 "$py" setup.py build_ext --inplace || { printf '%s\n' "${status[@]}"; exit 1; }
run "CUDA kernels registered" 120 env PYTHONPATH=.:${PYTHONPATH:-} "$py" scripts/check_cuda_kernels.py
run "pytest tests (CUDA + Triton on GPU)" 1500 "$py" -m pytest -q -p no:cacheprovider -rs tests
run "compute-sanitizer memcheck (small CUDA tests)" 900 compute-sanitizer --tool memcheck --error-exitcode 1 \
  "$py" -m pytest -q -p no:cacheprovider -x -m cuda -k "not gradcheck and not hypothesis and not compile" tests
run "compute-sanitizer racecheck (MSDA, shared memory)" 600 compute-sanitizer --tool racecheck --error-exitcode 1 \
  "$py" -m pytest -q -p no:cacheprovider -x -m cuda -k "ms_deform_attn and cuda-native and not gradcheck and not compile" tests
run "benchmarks ($profile profile)" 1800 "$py" -m benchmarks.run --profile "$profile" --out "$out"

{
  echo "# detr_ops GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
  "$py" -c "import torch, triton; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| triton', triton.__version__)" 2>/dev/null
  echo
  echo "| stage | result | time |"
  echo "|---|---|---|"
  printf '%s\n' "${status[@]}"
  echo
  [ -f "$out/table.md" ] && cat "$out/table.md"
} > "$out/summary.md"
cat "$out/summary.md"
grep -q "FAIL" "$out/summary.md" && exit 1
exit 0
