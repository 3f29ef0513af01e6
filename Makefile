# detr_ops — the two commands of the README:
#   make bench   the benchmark suite against SciPy and naive PyTorch baselines (the main job)
#   make test    the test suite: CPU/CUDA tests, then the Triton tests under the interpreter
# Both create .venv on first use (CPU torch 2.13.0 where no torch is present), build detr_ops into
# it and run. Other targets: bench-full, bench-load, bench-compare A=... B=..., cmake-test, cuda-build-check,
# triton-aot (every Triton kernel compiled for sm_80/sm_90), gpu-check-dry-run (scripts/gpu_check.sh rehearsed),
# package-check (sdist and wheel built, installed into fresh venvs with only torch, every op smoke-tested),
# sanitize (ASan + UBSan build of the C++ kernels, their tests and the adversarial cases).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.detr_ops-env
PYTEST := $(PY) -m pytest -p no:cacheprovider

.PHONY: bench bench-full bench-load bench-compare test cmake-test cuda-build-check triton-aot gpu-check-dry-run package-check sanitize build clean

# The environment (and the editable install's metadata: version, dependencies) is redone when one
# of these changes; the extension itself is compiled once, by setup_env.sh, and then incrementally.
$(STAMP): requirements-dev.txt setup.py pyproject.toml detr_ops/version.py scripts/setup_env.sh
	bash scripts/setup_env.sh $(VENV)
	touch $(STAMP)

# Incremental rebuild of the extension (ninja) whenever make runs: on a fresh clone the objects
# setup_env.sh just compiled are up to date, so nothing compiles twice.
build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

test: build
	$(PYTEST) -q tests
	TRITON_INTERPRET=1 $(PYTEST) -q -m triton tests

bench: build
	$(PY) -m benchmarks.run

bench-full: build
	$(PY) -m benchmarks.run --profile full

# Every CPU op, default threads vs one thread, quiet and beside one busy process per core.
bench-load: build
	$(PY) -m benchmarks.under_load

bench-compare: $(STAMP)
	$(PY) -m benchmarks.compare $(A) $(B)

cmake-test: $(STAMP)
	cmake -S . -B build/cmake -G Ninja -DPython3_EXECUTABLE=$(abspath $(PY))
	cmake --build build/cmake
	ctest --test-dir build/cmake --output-on-failure

cuda-build-check:
	bash scripts/check_cuda_build.sh

triton-aot: $(STAMP)
	bash scripts/triton_aot.sh

package-check:
	bash scripts/check_package.sh

gpu-check-dry-run: $(STAMP)
	PYTHON=$(PY) bash scripts/gpu_check.sh --dry-run build/gpu-check-dry-run

# The extension built with ASan + UBSan (-fno-wrapv) in build/sanitize, the C++-kernel tests and
# the adversarial cases run on it (scripts/sanitize.sh).
sanitize: $(STAMP)
	bash scripts/sanitize.sh $(VENV)

clean:
	rm -rf build detr_ops/*.so
