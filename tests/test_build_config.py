"""The build configuration: one list of compiler flags and default GPU architectures
(build_config.txt), read by setup.py and CMakeLists.txt, and exact by default.

detr_ops promises scipy's exact indices and 1e-10 agreement with float64 references. Fast math
would flush float32 denormals to zero where the CUDA solver widens costs to float64, and make
division, exp and log approximate in the matching-cost and GIoU kernels: none of its flags may
come back, in the shared list or added by either build on its own. (The CUDA-enabled build check,
scripts/check_cuda_build.sh, also inspects the compiled solver kernel for flush-to-zero.)
"""
import os
import re
import runpy

import pytest
import setuptools
import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Flags that trade IEEE results for speed: nvcc's fast math and the parts it switches on, and the
# host compilers' equivalents.
FAST_MATH = re.compile(
    r"(?<![\w-])(-?-use_fast_math|-ffast-math|-Ofast|-?-ftz[= ]true|-?-prec-div[= ]false|-?-prec-sqrt[= ]false"
    r"|-funsafe-math-optimizations|-ffinite-math-only|-fassociative-math|-freciprocal-math)(?![\w-])"
)
FLAG_KEYS = ("cxx", "cxx_debug", "nvcc", "nvcc_debug")


def read_build_config():
    config = {}
    with open(os.path.join(ROOT, "build_config.txt")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                key, sep, value = line.partition("=")
                assert sep, f"not a `key = value` line: {line!r}"
                config[key.strip()] = value.strip()
    return config


def test_the_pattern_recognises_fast_math():
    for flags in ("-O3 --use_fast_math", "-use_fast_math", "-O3 -ffast-math -g", "--ftz=true", "-prec-div=false",
                  '["-O3", "--use_fast_math"]'):
        assert FAST_MATH.search(flags), flags
    for flags in ("-O3 -DNDEBUG --expt-relaxed-constexpr", "-fno-trapping-math", "--ftz=false", "-fmad=true"):
        assert not FAST_MATH.search(flags), flags


def test_build_config_lists_every_flag_set_and_no_fast_math():
    config = read_build_config()
    assert set(config) == set(FLAG_KEYS) | {"cuda_arch_list"}
    for key in FLAG_KEYS:
        assert config[key], key
        assert not FAST_MATH.search(config[key]), f"{key} = {config[key]}"


def test_default_architectures_are_in_torch_arch_list_notation():
    archs = read_build_config()["cuda_arch_list"].split(";")
    assert all(re.fullmatch(r"\d+\.\d+(\+PTX)?", a) for a in archs), archs
    # T4 through H100, and PTX of the newest for GPUs built after the release
    assert {"7.5", "8.0", "8.6", "8.9"} <= set(archs) and archs[-1] == "9.0+PTX"


def run_setup_py(monkeypatch, **env):
    """Runs setup.py as pip would, with setuptools.setup replaced: returns its extension."""
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    for name in ("DEBUG", "FORCE_CUDA", "DETR_OPS_CPU_ONLY", "TORCH_CUDA_ARCH_LIST", "MAX_JOBS"):
        monkeypatch.delenv(name, raising=False)  # also undoes setup.py's own TORCH_CUDA_ARCH_LIST and MAX_JOBS
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(ROOT)
    runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="__main__")
    (extension,) = captured["ext_modules"]
    return extension


@pytest.mark.parametrize("debug", [False, True])
def test_setup_py_compiles_host_code_with_the_build_config_flags(monkeypatch, debug):
    config = read_build_config()
    extension = run_setup_py(monkeypatch, DETR_OPS_CPU_ONLY="1", **({"DEBUG": "1"} if debug else {}))
    cxx = extension.extra_compile_args["cxx"]
    expected = config["cxx_debug" if debug else "cxx"].split()
    assert cxx[: len(expected)] == expected
    assert set(cxx[len(expected):]) <= {"-fopenmp"}
    assert "nvcc" not in extension.extra_compile_args


def test_setup_py_compiles_cuda_with_the_build_config_flags_and_default_archs(monkeypatch, capsys):
    # A CUDA build's configuration without a GPU or nvcc: setup.py only reads torch.version.cuda
    # and CUDA_HOME to decide, and no compiler runs here.
    monkeypatch.setattr(torch.version, "cuda", torch.version.cuda or "13.0")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", cpp_extension.CUDA_HOME or "/usr/local/cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = read_build_config()
    extension = run_setup_py(monkeypatch, FORCE_CUDA="1")
    assert extension.extra_compile_args["nvcc"] == config["nvcc"].split()
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == config["cuda_arch_list"]
    out = capsys.readouterr().out
    assert "nvcc flags      : " + config["nvcc"] in out
    assert "arch list       : " + config["cuda_arch_list"] in out


@pytest.mark.parametrize("name", ["setup.py", "CMakeLists.txt"])
def test_build_files_read_build_config_and_add_no_fast_math_of_their_own(name):
    with open(os.path.join(ROOT, name)) as f:
        code = [line.split("#", 1)[0] for line in f]
    assert not [line for line in code if FAST_MATH.search(line)]
    assert any("build_config.txt" in line for line in code)
