"""Build detr_ops: one extension, ``detr_ops._C``, compiled from ``csrc/`` against the installed torch.

Install with ``pip install --no-build-isolation .`` (or ``-e .``): build isolation would download
a fresh multi-GB torch and compile against that instead of the one you run.

Environment switches (all optional):
  DETR_OPS_CPU_ONLY=1     never compile the CUDA sources
  FORCE_CUDA=1            compile the CUDA sources even if no GPU is visible
  TORCH_CUDA_ARCH_LIST    GPU architectures (default: the local GPU's, else cuda_arch_list of build_config.txt)
  MAX_JOBS                parallel compile jobs (read by torch's ninja build)
  DEBUG=1                 -O0 -g host code, -lineinfo device code, keep assertions

Compiler flags and the default architectures are in build_config.txt, which CMakeLists.txt reads too.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - only hit by a misconfigured install
    sys.exit(
        "detr-ops compiles against the PyTorch you already have, and none was found.\n"
        "Install torch first (CPU: pip install torch==2.13.0), then run\n"
        "    pip install --no-build-isolation .\n"
        "(with build isolation pip would build against a different, freshly downloaded torch)."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def _build_config():
    """build_config.txt as {key: value}: `key = value` lines, `#` comments (shared with CMakeLists.txt)."""
    config = {}
    with open(os.path.join(ROOT, "build_config.txt")) as f:
        for number, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            key, sep, value = line.partition("=")
            if not sep:
                sys.exit("build_config.txt:%d: expected `key = value`, got %r" % (number, line))
            config[key.strip()] = value.strip()
    return config


BUILD_CONFIG = _build_config()
DEFAULT_ARCH_LIST = BUILD_CONFIG["cuda_arch_list"]


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _version():
    scope = {}
    with open(os.path.join(ROOT, "detr_ops", "version.py")) as f:
        exec(f.read(), scope)
    return scope["__version__"]


def _want_cuda():
    """(build CUDA?, why) following the precedence CPU_ONLY > FORCE_CUDA > auto-detect."""
    if _flag("DETR_OPS_CPU_ONLY"):
        return False, "DETR_OPS_CPU_ONLY=1"
    if torch.version.cuda is None:
        if _flag("FORCE_CUDA"):
            sys.exit("FORCE_CUDA=1, but the installed torch %s has no CUDA support." % torch.__version__)
        return False, "torch %s is a CPU build" % torch.__version__
    if cpp_extension.CUDA_HOME is None:
        if _flag("FORCE_CUDA"):
            sys.exit("FORCE_CUDA=1, but nvcc was not found: set CUDA_HOME to the CUDA toolkit.")
        return False, "nvcc not found (set CUDA_HOME)"
    if _flag("FORCE_CUDA"):
        return True, "FORCE_CUDA=1"
    return True, "torch has CUDA %s and nvcc was found" % torch.version.cuda


def _arch_list():
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"], "TORCH_CUDA_ARCH_LIST"
    if torch.cuda.is_available():
        archs = sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(archs), "local GPU"
    return DEFAULT_ARCH_LIST, "default (no GPU visible)"


def _openmp_flags():
    """-fopenmp where torch's own intra-op threads are OpenMP (Linux wheels); none elsewhere."""
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        return ["-fopenmp"]
    return []


def _extension():
    with_cuda, why = _want_cuda()
    debug = _flag("DEBUG")
    # csrc/detr_ops.cpp + csrc/bindings: the pybind11 module; csrc/ops: the operators (also built by CMake).
    sources = [os.path.join("csrc", "detr_ops.cpp")]
    sources += sorted(glob.glob(os.path.join("csrc", "bindings", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "ops", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "ops", "cpu", "*.cpp")))
    # The flags and why: build_config.txt.
    cxx = BUILD_CONFIG["cxx_debug" if debug else "cxx"].split()
    # at::parallel_for is an inline template whose threads are an `#pragma omp parallel`: without
    # -fopenmp it compiles to a serial loop, and every CPU kernel runs on one thread.
    openmp = _openmp_flags()
    cxx += openmp
    define_macros = []
    extra = {"cxx": cxx}
    arch_list, arch_source = None, None
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "ops", "cuda", "*.cu")))
        arch_list, arch_source = _arch_list()
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
        define_macros.append(("DETR_OPS_WITH_CUDA", "1"))
        # torch's BuildExtension adds -fPIC for nvcc's host compiler itself
        extra["nvcc"] = BUILD_CONFIG["nvcc_debug" if debug else "nvcc"].split()
        ext_cls = cpp_extension.CUDAExtension
    else:
        ext_cls = cpp_extension.CppExtension

    print("=" * 72)
    print("detr_ops %s build configuration" % _version())
    print("  torch           : %s (CUDA %s)" % (torch.__version__, torch.version.cuda))
    print("  CUDA kernels    : %s (%s)" % ("yes" if with_cuda else "no", why))
    if with_cuda:
        print("  CUDA_HOME       : %s" % cpp_extension.CUDA_HOME)
        print("  arch list       : %s (%s)" % (arch_list, arch_source))
    print("  OpenMP          : %s" % ("yes" if openmp else "no (kernels run on one thread)"))
    print("  debug           : %s" % debug)
    print("  C++ flags       : %s" % " ".join(cxx))
    if with_cuda:
        print("  nvcc flags      : %s" % " ".join(extra["nvcc"]))
    print("  MAX_JOBS        : %s" % os.environ.get("MAX_JOBS", "torch default"))
    print("  sources         : %d files" % len(sources))
    print("=" * 72)

    return ext_cls(
        name="detr_ops._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=openmp,
        undef_macros=["NDEBUG"] if debug else [],
    )


with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="detr-ops",
    version=_version(),
    description="Fast, exact operators for DETR-family detectors: batched Hungarian matching, "
    "multi-scale deformable attention and GIoU, on CPU, CUDA and Triton.",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["detr_ops", "detr_ops.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    install_requires=["torch", "numpy", "scipy"],
    extras_require={
        "triton": ["triton"],
        "tests": ["pytest", "hypothesis", "expecttest", "scipy"],
        "benchmarks": ["pytest-benchmark", "matplotlib", "lap"],
        "models": ["pycocotools", "tqdm", "matplotlib"],
        "transformers": ["transformers>=5.0"],
        "onnx": ["onnx", "onnxruntime", "onnxscript"],
    },
    zip_safe=False,
)
