#!/usr/bin/env bash
# `make triton-aot`: every Triton kernel compiled (scripts/triton_aot.py) for sm_80 and sm_90 with
# the Triton of .venv (3.9, torch 2.13), and for sm_90 with the Triton of .venv-cuda (3.6, torch
# 2.11: the GPU machine's, an H200; present after `make cuda-build-check`). Writes
# build/triton-aot/triton_resources.md,
# prints the spilling kernels and whether docs/triton_resources.md is current, and exits 1 when a
# kernel fails to compile. DETR_OPS_UPDATE_DOCS=1 also writes docs/triton_resources.md.
#
# Environment: JOBS (parallel compiles, default: all cores).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=build/triton-aot
mkdir -p "$out"
rc=0
jsons=()
for venv in .venv-cuda .venv; do
  targets=80,90
  [ "$venv" = .venv-cuda ] && targets=90
  [ -x "$venv/bin/python" ] || { echo "triton-aot: no $venv, skipped"; continue; }
  version=$("$venv/bin/python" -c 'import triton; print(triton.__version__)' 2> /dev/null) || {
    echo "triton-aot: $venv has no triton, skipped"; continue; }
  echo "::: Triton $version ($venv)"
  env -u TRITON_INTERPRET PYTHONPATH="$root" "$venv/bin/python" -m scripts.triton_aot --targets "$targets" --jobs "${JOBS:-$(nproc)}" \
    --json "$out/triton-$version.json" || rc=1
  [ -f "$out/triton-$version.json" ] && jsons+=("$out/triton-$version.json")
done
[ ${#jsons[@]} -gt 0 ] || { echo "triton-aot: no environment with triton (make build first)"; exit 1; }
python3 -m scripts.triton_aot --render "$out/triton_resources.md" "${jsons[@]}"
if cmp -s "$out/triton_resources.md" docs/triton_resources.md; then
  echo "triton-aot: docs/triton_resources.md is current"
else
  echo "triton-aot: docs/triton_resources.md differs from this run (DETR_OPS_UPDATE_DOCS=1 make triton-aot rewrites it)"
  diff <(grep '^| `' docs/triton_resources.md 2> /dev/null | head -n 40) <(grep '^| `' "$out/triton_resources.md" | head -n 40) | head -n 20
fi
if [ "${DETR_OPS_UPDATE_DOCS:-0}" = 1 ]; then cp "$out/triton_resources.md" docs/triton_resources.md; echo "wrote docs/triton_resources.md"; fi
exit $rc
