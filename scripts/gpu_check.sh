#!/usr/bin/env bash
# The GPU check, sized to one call of the device tool: at most 8 minutes of wall time, by
# construction (every stage has a time limit, and the limits add up to BUDGET; checked at start).
#
#   bash scripts/gpu_check.sh OUT [--only lsa|box|msda|all] [--peers] [--build auto|source|prebuilt]
#                                 [--profile quick|full] [--dry-run] [--plan]
#
# Stages, in order, each writing its results into OUT as soon as it finishes (a timeout of the
# whole call still returns everything before it):
#   env         nvidia-smi, Python / torch / Triton / CUDA / compute-sanitizer versions
#   wheels      installs the carried wheels of .whl/ (scripts/fetch_gpu_wheels.sh; no network there)
#   build       builds detr_ops._C in place (timed); if that fails or runs out of time and the
#               carried build/prebuilt/libdetr_ops.so exists (scripts/build_prebuilt.sh), uses it
#               instead (DETR_OPS_LIBRARY, see detr_ops/_extension.py). --build prebuilt: skip the
#               build; --build source: no fallback.
#   registered  every operator with a CPU kernel has a CUDA kernel (scripts/check_cuda_kernels.py)
#   tests:FAM   the tests marked `cuda` (native CUDA and Triton on the GPU) of each op family
#   memcheck    compute-sanitizer memcheck on a small native-CUDA subset of each family
#   racecheck   compute-sanitizer racecheck on the same subset, for the families whose CUDA
#               kernels use shared memory (found by grepping csrc/ops/cuda/*.cu for __shared__)
#   bench:FAM   the benchmark suite's quick profile on the GPU (table in the summary)
#   peers       with --peers, in the background from the tests on: installs torch-linear-assignment
#               0.1.0 and the packaged Deformable DETR kernels (ms-deform-attn 1.0.1's wheel with the
#               CUDA 12 runtime it needs, torch-ms-deform-attn 0.1.1 built from its sdist) so that
#               the benchmark rows put detr_ops next to them
# OUT receives at most 4 files: summary.md (the stage table, test counts and benchmark tables;
# rewritten after every stage and printed at the end), log.txt (every stage's output as it runs),
# results.tar.gz (per-stage logs, JUnit XML, benchmark JSON/tables, environment; rewritten after every
# stage) and, while a stage runs, nothing else.
#
# --dry-run (CI, no GPU): every stage that can run without a GPU runs (env, the budget check, the
# wheel inventory, the family/sanitizer/benchmark selections collected with pytest --collect-only,
# each of which must select at least one test); the GPU stages print the command they would run.
# Its stages get DRY_LIMIT each: the real limits are sized for the GPU machine's 16 cores.
# --plan prints the stage limits and exits.
#
# Environment: PYTHON (default python3), MAX_JOBS (default: all cores).
set -uo pipefail

BUDGET=480        # seconds of wall time for the whole call
RESERVE=10        # kept back for the final summary and packing
DRY_LIMIT=300     # per stage in --dry-run: the limits are the GPU machine's, not a busy CI machine's
# Stage limits in seconds. tests and bench are split over the families that run (FAMILY_SHARE).
declare -A LIMIT=([env]=15 [wheels]=15 [build]=150 [registered]=10 [tests]=140 [memcheck]=45 [racecheck]=35 [bench]=60)
ORDER=(env wheels build registered tests memcheck racecheck bench)
FAMILIES=(lsa box msda)
declare -A FAMILY_SHARE=([lsa]=35 [box]=25 [msda]=40)   # percent of the tests / bench limits with --only all
# pytest selection per family: test files (globs) and -k expressions. The sanitizer subsets are
# small native-CUDA tests (compute-sanitizer slows kernels 10-100x).
declare -A TEST_FILES=(
  [lsa]="tests/test_*linear_sum_assignment*.py tests/test_match*.py tests/test_gpu_*.py"
  [box]="tests/test_box_iou*.py tests/test_gpu_*.py"
  [msda]="tests/test_ms_deform_attn*.py tests/test_gpu_*.py")
declare -A TEST_K=(
  [lsa]="linear_sum_assignment or matcher or matching_cost"
  [box]="box_iou or giou"
  [msda]="ms_deform_attn")
declare -A SANITIZER_K=(
  [lsa]="cuda-native and (test_random_batches or test_ragged_detr_like or test_forbidden_and_invalid_per_item or test_matches_unfused_cost)"
  [box]="cuda-native and ((float32 and (test_pairwise_matches_reference or test_loss_matches_reference or test_degenerate_boxes_are_finite)) or test_pairwise_grad_matches_autograd_reference)"
  [msda]="cuda-native and (test_matches_reference or test_border_and_outside_locations or test_nonfinite_locations_contribute_nothing or test_unvalidated_inconsistent_shapes_stay_in_bounds)")
declare -A BENCH_K=([lsa]="bench_linear_sum_assignment or bench_matcher" [box]="bench_box_iou" [msda]="bench_ms_deform_attn")
# Which family a CUDA source file belongs to (for racecheck), by file name.
family_of_source() {
  case "$1" in
    *linear_sum_assignment*|*lsa*|*matching_cost*) echo lsa ;;
    *ms_deform_attn*|*msda*) echo msda ;;
    *box*|*giou*|*iou*) echo box ;;
    *) echo unknown ;;
  esac
}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}

# ---- one stage, run as its own process: bash gpu_check.sh --stage NAME [FAMILY] ----------------------
if [ "${1:-}" = "--stage" ]; then
  name=$2 fam=${3:-}
  # shellcheck disable=SC1090
  [ -f "$WORK/env.sh" ] && . "$WORK/env.sh"
  fail() { echo "$*"; exit 1; }
  collect() {  # collect MIN_LABEL pytest-args...: --collect-only, fails when nothing is selected
    local what=$1
    shift
    local n
    n=$("$py" -m pytest -p no:cacheprovider --collect-only -q "$@" 2>&1 | tee /dev/stderr | grep -c "::")
    echo "dry-run: $what selects $n tests"
    [ "$n" -gt 0 ] || fail "dry-run: $what selects no test (renamed tests or files?)"
  }
  case $name in
    env)
      echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(hostname)  cores: $(nproc)"
      if command -v nvidia-smi > /dev/null; then nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
      else echo "nvidia-smi: not found"; fi
      "$py" - << 'PY'
import platform, sys
print("python", sys.version.split()[0], platform.platform())
try:
    import torch
    print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU", torch.cuda.is_available() and torch.cuda.get_device_name(0))
except Exception as e:
    print("torch: not importable:", e)
for name in ("triton", "scipy", "numpy", "pytest", "pytest_benchmark", "hypothesis", "expecttest", "lap", "ninja"):
    try:
        m = __import__(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as e:
        print(name, "missing", type(e).__name__)
PY
      for tool in nvcc compute-sanitizer; do
        path=$(command -v $tool || ls "${CUDA_HOME:-/usr/local/cuda}/bin/$tool" 2> /dev/null || true)
        if [ -n "$path" ]; then echo "$tool: $path $("$path" --version | tail -n 2 | tr '\n' ' ')"; else echo "$tool: not found"; fi
      done
      if [ "$DRY" = 0 ]; then
        "$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'" || fail "no GPU: use --dry-run"
      fi
      ;;
    wheels)
      shopt -s nullglob
      wheels=()
      for w in .whl/*.whl; do
        case $(basename "$w") in  # the peers' and their build tools' are installed by the peers stage
          ms_deform_attn-*|nvidia_cuda_runtime_cu12-*|torch_linear_assignment-*|setuptools-*|packaging-*|wheel-*) ;;
          *) wheels+=("$w") ;;
        esac
      done
      echo "carried: $(ls .whl 2> /dev/null | tr '\n' ' ')"
      [ ${#wheels[@]} -gt 0 ] || { echo "no wheels in .whl/ (scripts/fetch_gpu_wheels.sh makes them)"; exit 0; }
      if [ "$DRY" = 1 ]; then echo "dry-run: would install ${wheels[*]} into $SITE"; exit 0; fi
      "$py" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}"
      ;;
    build)
      prebuilt=$root/build/prebuilt/libdetr_ops.so
      use_prebuilt() {
        [ -f "$prebuilt" ] || fail "build: $1, and no prebuilt library was carried (build/prebuilt, scripts/build_prebuilt.sh)"
        echo "build: $1; using the prebuilt library $prebuilt ($(tr '\n' ' ' < "$(dirname "$prebuilt")/BUILD_INFO" 2> /dev/null))"
        echo "export DETR_OPS_LIBRARY=$prebuilt" >> "$WORK/env.sh"
        for c in detr_ops/_C*.so; do [ -e "$c" ] && mv "$c" "$c.unused"; done  # _C would take precedence
        DETR_OPS_LIBRARY=$prebuilt "$py" -c "import detr_ops; print('build_info', detr_ops.build_info())"
      }
      cmd=("$py" setup.py build_ext --inplace)
      if [ "$DRY" = 1 ]; then
        echo "dry-run: would run MAX_JOBS=$MAX_JOBS ${cmd[*]} (limit $((LIMIT_S - 15)) s), falling back to $prebuilt ($( [ -f "$prebuilt" ] && echo present || echo absent here))"
        exit 0
      fi
      if [ "$BUILD" = prebuilt ]; then use_prebuilt "--build prebuilt"; exit $?; fi
      start=$SECONDS
      timeout --kill-after=5 $((LIMIT_S - 15)) "${cmd[@]}"
      rc=$?
      echo "build: exit $rc after $((SECONDS - start)) s (MAX_JOBS=$MAX_JOBS)"
      echo "$((SECONDS - start))" > "$WORK/build_seconds"
      if [ $rc -eq 0 ]; then  # a build without nvcc succeeds with CPU kernels only: that is a failure here
        "$py" -c "import sys, detr_ops; i = detr_ops.build_info(); print('build_info', i); sys.exit(0 if i['cuda_kernels'] else 7)"
        rc=$?
        [ $rc -eq 0 ] && exit 0
      fi
      [ "$BUILD" = source ] && fail "build: failed (exit $rc) and --build source allows no fallback"
      use_prebuilt "the source build failed (exit $rc$([ $rc -ge 124 ] && echo ', time limit'))"
      ;;
    registered)
      [ "$DRY" = 1 ] && { echo "dry-run: would run $py scripts/check_cuda_kernels.py"; exit 0; }
      PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} "$py" scripts/check_cuda_kernels.py
      ;;
    tests)
      # shellcheck disable=SC2086
      args=(-m cuda -k "${TEST_K[$fam]}" ${TEST_FILES[$fam]})
      [ "$DRY" = 1 ] && { collect "tests:$fam" "${args[@]}"; exit $?; }
      "$py" -m pytest -p no:cacheprovider -v -rfEs --durations=10 --continue-on-collection-errors \
        --junitxml="$WORK/junit-tests-$fam.xml" "${args[@]}"
      ;;
    memcheck|racecheck)
      shared=" "
      for src in $(grep -l "__shared__" csrc/ops/cuda/*.cu 2> /dev/null); do shared+="$(family_of_source "$(basename "$src")") "; done
      [ "$name" = racecheck ] && echo "racecheck: CUDA sources with shared memory belong to:$shared"
      families=()
      for f in $FAMS; do
        if [ "$name" = racecheck ] && [[ "$shared" != *" $f "* ]]; then continue; fi
        families+=("$f")
      done
      echo "$name: families ${families[*]:-none}"
      [ ${#families[@]} -gt 0 ] || exit 0
      sanitizer=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" 2> /dev/null || true)
      # One process for every family: torch's start-up under the sanitizer is paid once.
      expr="" files=""
      for f in "${families[@]}"; do
        expr+="${expr:+ or }(${SANITIZER_K[$f]})"
        files+=" ${TEST_FILES[$f]}"
      done
      # shellcheck disable=SC2086
      args=(-m cuda -k "$expr" $(printf '%s\n' $files | sort -u))
      [ "$DRY" = 1 ] && { collect "$name:${families[*]}" "${args[@]}"; exit $?; }
      [ -n "$sanitizer" ] || { echo "$name: compute-sanitizer is not installed on this machine"; exit 3; }
      "$sanitizer" --tool "$name" --error-exitcode 1 --print-limit 20 "$py" -m pytest -p no:cacheprovider -v -x "${args[@]}"
      ;;
    bench)
      args=(-k "${BENCH_K[$fam]}")
      if [ "$DRY" = 1 ]; then
        collect "bench:$fam" -o "python_files=bench_*.py" "${args[@]}" benchmarks/bench_*.py
        exit $?
      fi
      if [ -f "$WORK/peers.pid" ]; then  # the peers' install, started with the tests, must be done
        while kill -0 "$(cat "$WORK/peers.pid")" 2> /dev/null; do sleep 1; done
      fi
      [ -f "$WORK/peers.env" ] && . "$WORK/peers.env"
      "$py" -m benchmarks.run --profile "$PROFILE" --out "$WORK/bench-$fam" --json-only "${args[@]}"
      rc=$?
      [ -f "$WORK/bench-$fam/benchmark.json" ] && "$py" -m benchmarks.report "$WORK/bench-$fam/benchmark.json" --no-plots > /dev/null
      exit $rc
      ;;
    peers)
      ok=0
      cu12=$WORK/cu12
      # Recent setuptools / packaging / wheel for building the sdists, kept off the detr_ops build.
      tools=$(ls .whl/setuptools-*.whl .whl/packaging-*.whl .whl/wheel-*.whl 2> /dev/null)
      if [ -n "$tools" ]; then
        # shellcheck disable=SC2086
        "$py" -m pip install -q --no-index --no-deps --target "$WORK/buildtools" $tools && export PYTHONPATH=$WORK/buildtools:$PYTHONPATH
      fi
      echo "peers: torch-linear-assignment 0.1.0 (sdist, with its legacy CUDA extension when it builds)"
      tla=$(ls .whl/torch_linear_assignment-0.1.0.tar.gz 2> /dev/null)
      if [ -n "$tla" ]; then
        TLA_BUILD_LEGACY_CUDA=1 FORCE_CUDA=1 MAX_JOBS=4 "$py" -m pip install -q --no-index --no-deps --no-build-isolation \
          --target "$SITE" "$tla" \
          || "$py" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" "$tla" || ok=1
      else echo "peers: .whl/torch_linear_assignment-0.1.0.tar.gz not carried"; ok=1; fi
      echo "peers: ms-deform-attn 1.0.1 (the original Deformable DETR kernel, a CUDA 12 wheel) + the CUDA 12 runtime"
      msda=$(ls .whl/ms_deform_attn-*cp312*.whl 2> /dev/null) rt=$(ls .whl/nvidia_cuda_runtime_cu12-*.whl 2> /dev/null)
      if [ -n "$msda" ] && [ -n "$rt" ]; then
        "$py" -m pip install -q --no-index --no-deps --target "$SITE" "$msda" || ok=1
        # the CUDA 12 runtime goes next to nothing on sys.path: only its library directory is used
        "$py" -m pip install -q --no-index --no-deps --target "$cu12" "$rt" || ok=1
        echo "export LD_LIBRARY_PATH=$(dirname "$(find "$cu12" -name 'libcudart.so.12*' | head -n 1)")\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" >> "$WORK/peers.env"
      else echo "peers: ms-deform-attn or the CUDA 12 runtime wheel not carried"; ok=1; fi
      echo "peers: torch-ms-deform-attn 0.1.1 (sdist: compiles the Deformable DETR CUDA kernel)"
      tmsda=$(ls .whl/torch_ms_deform_attn-0.1.1.tar.gz 2> /dev/null)
      if [ -n "$tmsda" ]; then
        MAX_JOBS=4 "$py" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" "$tmsda" || ok=1
      else echo "peers: .whl/torch_ms_deform_attn-0.1.1.tar.gz not carried"; ok=1; fi
      [ -f "$WORK/peers.env" ] && . "$WORK/peers.env"
      "$py" -m benchmarks.peers || ok=1
      echo "peers: done, exit $ok"
      exit $ok
      ;;
    *) fail "unknown stage $name" ;;
  esac
  exit $?
fi

# ---- the driver ----------------------------------------------------------------------------------
usage() { sed -n '2,38p' "$0"; exit 2; }
out="" only=all peers=0 build=auto profile=quick dry=0 plan=0
while [ $# -gt 0 ]; do
  case $1 in
    --only) only=${2:?}; shift ;;
    --peers) peers=1 ;;
    --build) build=${2:?}; shift ;;
    --profile) profile=${2:?}; shift ;;
    --dry-run) dry=1 ;;
    --plan) plan=1 ;;
    -h|--help) usage ;;
    -*) echo "unknown option $1"; usage ;;
    *) out=$1 ;;
  esac
  shift
done
case $only in all) fams="${FAMILIES[*]}" ;; lsa|box|msda) fams=$only ;; *) echo "--only takes lsa, box, msda or all"; exit 2 ;; esac
case $build in auto|source|prebuilt) ;; *) echo "--build takes auto, source or prebuilt"; exit 2 ;; esac

# The budget, by construction: the stage limits plus the reserve fit in BUDGET.
total=$RESERVE
for s in "${ORDER[@]}"; do total=$((total + LIMIT[$s])); done
if [ "$plan" = 1 ] || [ "$total" -gt "$BUDGET" ]; then
  for s in "${ORDER[@]}"; do printf 'limit %-12s %4d s\n' "$s" "${LIMIT[$s]}"; done
  printf 'limit %-12s %4d s\ntotal %-12s %4d s (budget %d s)\n' reserve "$RESERVE" "" "$total" "$BUDGET"
  [ "$total" -le "$BUDGET" ] || { echo "the stage limits exceed the budget"; exit 1; }
  exit 0
fi
[ -n "$out" ] || usage

mkdir -p "$out"
out=$(cd "$out" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/detr_ops_gpu_check.XXXXXX")
SITE=$WORK/site
export WORK SITE DRY=$dry BUILD=$build PROFILE=$profile FAMS=$fams PYTHON=$py
export MAX_JOBS=${MAX_JOBS:-$(nproc)} PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} PATH=$SITE/bin:$PATH
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
log=$out/log.txt
: > "$log"
start_all=$SECONDS
results=()   # "name|result|seconds|limit"

publish() {  # rewrites summary.md and results.tar.gz from what has finished
  {
    echo "# detr_ops GPU check$([ "$dry" = 1 ] && echo ' (dry run)'), $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "options: --only $only --build $build --profile $profile$([ "$peers" = 1 ] && echo ' --peers'); budget $BUDGET s, elapsed $((SECONDS - start_all)) s"
    grep -m 1 -A 1 "^name, driver_version" "$WORK/env.log" 2> /dev/null | tail -n 1 | sed 's/^/GPU: /'
    grep -E "^(python|torch|triton) " "$WORK/env.log" 2> /dev/null | tr '\n' ';' | sed 's/;$/\n/'
    [ -f "$WORK/build_seconds" ] && echo "build from source: $(cat "$WORK/build_seconds") s"
    grep -h "using the prebuilt library" "$WORK/build.log" 2> /dev/null
    echo
    echo "| stage | result | time | limit |"
    echo "|---|---|---:|---:|"
    for r in "${results[@]}"; do IFS='|' read -r n res sec lim <<< "$r"; echo "| $n | $res | ${sec} s | ${lim} s |"; done
    echo
    for f in "$WORK"/tests-*.log "$WORK"/memcheck.log "$WORK"/racecheck.log; do
      [ -f "$f" ] || continue
      line=$(grep -E "^(=+ )?[0-9]+ (passed|failed|error|skipped|deselected)|no tests ran|selects [0-9]+ tests" "$f" | tail -n 3 | tr '\n' ' ')
      [ -n "$line" ] && echo "- $(basename "$f" .log): $line"
      grep -E "^(FAILED|ERROR) " "$f" | head -n 10 | sed 's/^/    /'
    done
    echo
    for t in "$WORK"/bench-*/table.md; do [ -f "$t" ] && { echo "### $(basename "$(dirname "$t")")"; echo; cat "$t"; echo; }; done
    [ -f "$WORK/peers.log" ] && { echo "### peers"; echo; echo '```'; grep -E "^peers" "$WORK/peers.log"; echo '```'; }
    true
  } > "$out/summary.md.tmp"
  mv "$out/summary.md.tmp" "$out/summary.md"
  tar czf "$out/results.tar.gz.tmp" -C "$WORK" --exclude=site --exclude=cu12 . 2> /dev/null && mv "$out/results.tar.gz.tmp" "$out/results.tar.gz"
}

run_stage() {  # run_stage LABEL LIMIT STAGE [FAMILY]
  local label=$1 limit=$2
  shift 2
  local left=$((BUDGET - RESERVE - (SECONDS - start_all)))
  if [ "$dry" = 1 ]; then limit=$DRY_LIMIT; left=$DRY_LIMIT; fi
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    results+=("$label|skipped (budget spent)|0|$2")
    echo "::: $label skipped: the budget is spent"
    publish
    return 0
  fi
  local start=$SECONDS file=$WORK/${label//:/-}.log
  echo "::: $label (limit $limit s)" | tee -a "$log"
  LIMIT_S=$limit timeout --kill-after=5 "$limit" bash "$0" --stage "$@" 2>&1 | tee -a "$log" > "$file"
  local rc=${PIPESTATUS[0]} res
  case $rc in
    0) res=pass ;;
    3) res="n/a (tool missing)" ;;
    124|137) res="TIMEOUT" ;;
    *) res="FAIL (exit $rc)" ;;
  esac
  results+=("$label|$res|$((SECONDS - start))|$limit")
  echo "::: $label: $res in $((SECONDS - start)) s"
  publish
  return 0
}

share() {  # share TOTAL FAMILY: the family's part of a limit
  if [ "$only" = all ]; then echo $(($1 * FAMILY_SHARE[$2] / 100)); else echo "$1"; fi
}

echo "detr_ops GPU check: --only $only, families $fams, budget $BUDGET s, output $out$([ "$dry" = 1 ] && echo ', DRY RUN')"
run_stage env "${LIMIT[env]}" env
if [ "$dry" = 0 ] && [[ "${results[0]}" != *"|pass|"* ]]; then
  echo "no usable GPU (see $out/log.txt): stopping"
  cat "$out/summary.md"
  exit 1
fi
run_stage wheels "${LIMIT[wheels]}" wheels
run_stage build "${LIMIT[build]}" build
run_stage registered "${LIMIT[registered]}" registered
if [ "$peers" = 1 ]; then
  if [ "$dry" = 1 ]; then
    echo "dry-run: --peers would install $(ls .whl 2> /dev/null | grep -E 'torch_linear|ms_deform|torch_ms_deform|cuda_runtime_cu12' | tr '\n' ' ')" | tee -a "$log"
  else  # in the background, bounded by the time left before the benchmarks (they wait for it)
    peers_limit=$((LIMIT[tests] + LIMIT[memcheck] + LIMIT[racecheck]))
    # timeout leads its own process group: killing the group at exit stops a build still running
    timeout --kill-after=5 "$peers_limit" bash "$0" --stage peers > "$WORK/peers.log" 2>&1 &
    echo $! > "$WORK/peers.pid"
    trap 'kill -- -"$(cat "$WORK/peers.pid")" 2> /dev/null' EXIT
  fi
fi
for fam in $fams; do run_stage "tests:$fam" "$(share "${LIMIT[tests]}" "$fam")" tests "$fam"; done
run_stage memcheck "${LIMIT[memcheck]}" memcheck
run_stage racecheck "${LIMIT[racecheck]}" racecheck
for fam in $fams; do run_stage "bench:$fam" "$(share "${LIMIT[bench]}" "$fam")" bench "$fam"; done
publish
echo
cat "$out/summary.md"
for r in "${results[@]}"; do
  case $r in *"|pass|"*|*"|n/a"*) ;; *) exit 1 ;; esac
done
exit 0
