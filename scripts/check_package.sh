#!/usr/bin/env bash
# The package check (CI stage "sdist + wheel", `make package-check`): detr-ops as a user of a
# release gets it.
#
#   1. builds the sdist (python -m build --sdist --no-isolation) from the tracked files, and checks
#      it carries every file the build and the package need (scripts/package_contents.py);
#   2. in a fresh venv with torch and the build requirements of pyproject.toml only, installs the
#      unpacked sdist (pip install --no-build-isolation: the one compile, its [k/n] lines shown),
#      then builds the wheel from the same unpacked sdist (pip wheel: the objects are up to date, so
#      no second compile) and checks the wheel's contents;
#   3. installs the wheel into a second fresh venv that has only torch (pip pulls numpy and scipy,
#      the package's dependencies): no compiler needed there;
#   4. in each venv, from an empty temporary folder (no source tree on sys.path), runs
#      scripts/package_smoke.py: the installed package, its version and build_info(), every op
#      against a reference.
#
# Environment: PYTHON (default python3), PACKAGE_TORCH (default torch==2.13.0), MAX_JOBS,
# PACKAGE_CHECK_DIR (default build/package-check; removed and recreated).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${PACKAGE_CHECK_DIR:-$root/build/package-check}
python=${PYTHON:-python3}
torch_req=${PACKAGE_TORCH:-torch==2.13.0}
# --no-compile: no .pyc for every file of torch at install time (tens of CPU seconds per venv on
# CI's 2 cores); Python compiles what it imports.
pip_flags=(-m pip install -q --disable-pip-version-check --no-compile)

timings=()
step() {
  local name=$1
  shift
  echo "--- package-check: $name"
  local start=$SECONDS
  "$@"
  timings+=("$(printf '%-44s %5ds' "$name" $((SECONDS - start)))")
}

rm -rf "$work" && mkdir -p "$work/dist" "$work/wheelhouse" "$work/sdist" "$work/empty"

# The files a commit would carry (tracked, and new files not ignored), not build products or
# whatever else lies in the working tree.
export_tree() {
  (cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/src")
}
mkdir -p "$work/src"
step "export the tracked files" export_tree

build_venv=$work/venv-sdist
wheel_venv=$work/venv-wheel
make_build_venv() {
  "$python" -m venv "$build_venv"
  "$build_venv/bin/python" "${pip_flags[@]}" "$torch_req"
  # Exactly the build requirements pyproject.toml declares (what build isolation would install,
  # torch aside), and `build` for the sdist.
  mapfile -t requires < <(cd "$work/src" && "$build_venv/bin/python" -c \
    'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
  "$build_venv/bin/python" "${pip_flags[@]}" "${requires[@]}" build
}
step "venv: torch + build requirements" make_build_venv

build_sdist() {
  (cd "$work/src" && "$build_venv/bin/python" -m build --sdist --no-isolation --outdir "$work/dist" . > "$work/sdist.log" 2>&1) \
    || { cat "$work/sdist.log"; return 1; }
  "$build_venv/bin/python" "$root/scripts/package_contents.py" sdist "$work"/dist/*.tar.gz --tree "$work/src"
  tar -xzf "$work"/dist/*.tar.gz -C "$work/sdist"
}
step "sdist: build and check its contents" build_sdist
sdist_dir=$(ls -d "$work"/sdist/*/)
version=$(cd "$work/src" && "$build_venv/bin/python" -c \
  'import re; print(re.search(r"__version__ = \"([^\"]+)\"", open("detr_ops/version.py").read()).group(1))')

step "install the sdist (the one compile)" \
  "$build_venv/bin/python" -m pip install -v --disable-pip-version-check --no-build-isolation "$sdist_dir"
build_wheel() {
  "$build_venv/bin/python" -m pip wheel -v --disable-pip-version-check --no-build-isolation --no-deps \
    -w "$work/wheelhouse" "$sdist_dir" > "$work/wheel.log" 2>&1 || { cat "$work/wheel.log"; return 1; }
  # The point of building from the same unpacked sdist: nothing compiles a second time.
  # (pip -v indents the build's output.)
  if grep -E '^\s*\[[0-9]+/[0-9]+\] ' "$work/wheel.log"; then
    echo "package-check: the wheel build recompiled (lines above); it should reuse the sdist install's objects" >&2
    return 1
  fi
  grep -E "detr_ops build: every object file is up to date" "$work/wheel.log" || {
    echo "package-check: the wheel build did not report its objects up to date (log: $work/wheel.log)" >&2
    return 1
  }
  "$build_venv/bin/python" "$root/scripts/package_contents.py" wheel "$work"/wheelhouse/*.whl --tree "$work/src"
}
step "wheel from the same sdist (no recompile)" build_wheel

make_wheel_venv() {
  "$python" -m venv "$wheel_venv"
  "$wheel_venv/bin/python" "${pip_flags[@]}" "$torch_req"
  "$wheel_venv/bin/python" "${pip_flags[@]}" "$work"/wheelhouse/*.whl
}
step "venv: torch + the wheel" make_wheel_venv

# From an empty folder, with a copy of the script: nothing of the source tree is importable.
cp "$root/scripts/package_smoke.py" "$work/empty/"
smoke() {
  (cd "$work/empty" && "$1/bin/python" package_smoke.py --version "$version")
}
step "smoke test: sdist install" smoke "$build_venv"
step "smoke test: wheel install" smoke "$wheel_venv"

echo "--- package-check passed: detr-ops $version, sdist $(basename "$work"/dist/*.tar.gz), wheel $(basename "$work"/wheelhouse/*.whl)"
printf '  %s\n' "${timings[@]}"
