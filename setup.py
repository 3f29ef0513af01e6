"""Build detr_ops: one extension, ``detr_ops._C``, compiled from ``csrc/`` against the installed torch.

The package metadata (name, dependencies, extras, version source) is in pyproject.toml; this file
keeps what only code can decide: the extension (sources, flags from build_config.txt, CUDA or not),
how it is compiled (parallel jobs, progress lines, one object folder for every build) and the
license field.

Install with ``pip install --no-build-isolation .`` (or ``-e .``; ``-v`` shows the compile's
progress): build isolation would download a fresh multi-GB torch and compile against that instead
of the one you run. A plain ``pip install .`` stops early with a message that says so.

Environment switches (all optional):
  DETR_OPS_CPU_ONLY=1     never compile the CUDA sources
  FORCE_CUDA=1            compile the CUDA sources even if no GPU is visible
  TORCH_CUDA_ARCH_LIST    GPU architectures (default: the local GPU's, else cuda_arch_list of build_config.txt)
  MAX_JOBS                parallel compile jobs (default: the CPUs this process may use, fewer when
                          memory is short: about 2 GB per job)
  DEBUG=1                 -O0 -g host code, -lineinfo device code, keep assertions
  DETR_OPS_PROGRESS=0     no "[k/n] file" progress lines on the terminal while pip hides the output
  DETR_OPS_VERBOSE_BUILD=1  ninja's full compile commands instead of "[k/n] c++ -c <file>"

Compiler flags and the default architectures are in build_config.txt, which CMakeLists.txt reads too.
"""
import glob
import os
import re
import subprocess
import sys
import sysconfig
import time

import setuptools
from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _setuptools_version():
    return tuple(int(part) for part in re.findall(r"\d+", setuptools.__version__)[:2])


if _setuptools_version() < (64, 0):
    sys.exit(
        "detr-ops needs setuptools>=64 to build (found %s): pip install -U 'setuptools>=64' wheel ninja"
        % setuptools.__version__
    )
if _setuptools_version() < (70, 1) and any(cmd in sys.argv for cmd in ("bdist_wheel", "editable_wheel")):
    try:
        import wheel  # noqa: F401  (setuptools before 70.1 builds wheels with the `wheel` package)
    except ImportError:
        sys.exit("setuptools %s builds wheels with the `wheel` package, which is missing: pip install wheel"
                 % setuptools.__version__)


def _installed_torch_outside():
    """(version, folder) of a torch installed in this interpreter's own site-packages, or None.

    Under pip's build isolation the build runs with the same interpreter but a sys.path that leaves
    the environment's site-packages out; those folders are still where sysconfig/site say."""
    import site

    folders = [sysconfig.get_paths()[key] for key in ("purelib", "platlib")]
    try:
        folders += site.getsitepackages()
    except AttributeError:  # pragma: no cover - old virtualenv's site.py
        pass
    for folder in dict.fromkeys(folders):
        version_file = os.path.join(folder, "torch", "version.py")
        if os.path.isfile(version_file):
            match = re.search(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", open(version_file).read(), re.M)
            return (match.group(1) if match else "?"), folder
    return None


def _build_isolated():
    """True when this build runs in an isolated build environment: pip's (sys.path holds its
    ``pip-build-env-*`` overlay) or ``python -m build``'s (a ``build-env-*`` virtual environment)."""
    isolated = re.compile(r"[/\\](pip-)?build-env-[^/\\]+([/\\]|$)")
    return any(isolated.search(p) for p in sys.path + [sys.prefix])


_NO_ISOLATION = (
    "detr-ops compiles its C++/CUDA extension against the torch it will run with, so it must be\n"
    "built without build isolation:\n"
    "    pip install --no-build-isolation .          (or: -e .; add -v to watch the compile)\n"
    "    python -m build --no-isolation               (to make an sdist/wheel)\n"
    "and, where detr-ops is a dependency: pip install --no-build-isolation -r requirements.txt (or the project)\n"
    "The build also needs: pip install 'setuptools>=64' wheel ninja"
)

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    outside = _installed_torch_outside()
    if outside and _build_isolated():
        sys.exit(
            "\ndetr-ops: pip is building in an isolated build environment, which hides the torch %s\n"
            "installed in %s.\n%s\n" % (outside[0], outside[1], _NO_ISOLATION)
        )
    if _build_isolated():
        sys.exit("\ndetr-ops: no torch in this isolated build environment (build isolation is on).\n"
                 "Install torch into your environment first (CPU: pip install torch), then:\n%s\n" % _NO_ISOLATION)
    sys.exit(
        "\ndetr-ops compiles against the PyTorch you already have, and none was found.\n"
        "Install torch first (CPU: pip install torch), then:\n%s\n" % _NO_ISOLATION
    )
else:
    # A torch inside the isolated environment that is not the one of the environment being
    # installed into: the extension would not load there (C++ ABI, undefined symbols).
    _outside = _installed_torch_outside() if _build_isolated() else None
    if _outside and os.path.realpath(os.path.dirname(os.path.dirname(torch.__file__))) != os.path.realpath(_outside[1]):
        if _outside[0].split("+")[0] != torch.__version__.split("+")[0]:
            sys.exit(
                "\ndetr-ops: build isolation picked torch %s (%s), but your environment has torch %s (%s):\n"
                "the extension would not load into it.\n%s\n"
                % (torch.__version__, os.path.dirname(torch.__file__), _outside[0], _outside[1], _NO_ISOLATION)
            )


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
    """detr_ops/version.py's __version__ (the one source; pyproject.toml reads the same literal)."""
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


# One compile of a file that includes torch's headers takes 1-2 GB (nvcc more): a job per CPU,
# but no more jobs than memory for them.
_GB_PER_JOB = 2


def _default_max_jobs():
    """(jobs, why): the CPUs this process may use (affinity/cgroup), capped by available memory."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs, why = cpus, "%d CPUs" % cpus
    try:
        with open("/proc/meminfo") as f:
            meminfo = dict(line.split(":", 1) for line in f)
        available_gb = int(meminfo["MemAvailable"].split()[0]) / 2**20
        if available_gb / _GB_PER_JOB < jobs:
            jobs, why = max(1, int(available_gb // _GB_PER_JOB)), "%.0f GB of memory available" % available_gb
    except (OSError, KeyError, ValueError):
        pass
    return jobs, why


def _set_max_jobs():
    """MAX_JOBS for torch's ninja build: the user's value, else the default above (ninja's own
    default, CPUs + 2, oversubscribes a small machine and ignores memory)."""
    if os.environ.get("MAX_JOBS", "").isdigit():
        return "%s (MAX_JOBS)" % os.environ["MAX_JOBS"]
    jobs, why = _default_max_jobs()
    os.environ["MAX_JOBS"] = str(jobs)
    return "%d (default: %s; set MAX_JOBS to change)" % (jobs, why)


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
    jobs = _set_max_jobs()

    print("=" * 72)
    print("detr_ops %s build configuration" % _version())
    print("  torch           : %s (CUDA %s) in %s" % (torch.__version__, torch.version.cuda,
                                                      os.path.dirname(torch.__file__)))
    print("  CUDA kernels    : %s (%s)" % ("yes" if with_cuda else "no", why))
    if with_cuda:
        print("  CUDA_HOME       : %s" % cpp_extension.CUDA_HOME)
        print("  arch list       : %s (%s)" % (arch_list, arch_source))
    print("  OpenMP          : %s" % ("yes" if openmp else "no (kernels run on one thread)"))
    print("  debug           : %s" % debug)
    print("  C++ flags       : %s" % " ".join(cxx))
    if with_cuda:
        print("  nvcc flags      : %s" % " ".join(extra["nvcc"]))
    print("  parallel jobs   : %s" % jobs)
    print("  sources         : %d files" % len(sources))
    print("=" * 72)

    # setuptools relinks only when a file listed here is newer than the built library: the headers
    # too, or an edited header would leave `make build` saying the extension is up to date (ninja
    # then recompiles only the objects that include it).
    headers = sorted(glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True)
                     + glob.glob(os.path.join("csrc", "**", "*.cuh"), recursive=True))
    depends = headers + ["build_config.txt"]
    return ext_cls(
        name="detr_ops._C",
        sources=sources,
        depends=depends,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=openmp,
        undef_macros=["NDEBUG"] if debug else [],
    )


class _Progress:
    """Where the build's "[k/n] file" lines go.

    pip hides a build's output unless run with -v, so a long compile looks hung. When pip is the
    one reading our output (it sets PIP_BUILD_TRACKER; our stdout is its pipe) and a terminal is
    attached, the lines go to that terminal; otherwise to stdout (make, CI logs, pip -v)."""

    def __init__(self):
        self.stream, self.tty, self.first = sys.stdout, False, True
        if os.environ.get("DETR_OPS_PROGRESS", "1") == "0":
            return
        if "PIP_BUILD_TRACKER" in os.environ and not sys.stdout.isatty():
            try:
                self.stream, self.tty = open("/dev/tty", "w"), True
            except OSError:  # no controlling terminal (CI, cron): pip -v shows stdout
                pass

    def line(self, text):
        if self.tty:
            # The first line starts below pip's "Building wheel ..." line; each one clears what
            # pip's spinner drew on the current line.
            text = ("\n" if self.first else "\r\033[K") + text
            self.first = False
        self.stream.write(text + "\n")
        self.stream.flush()


def _elapsed(seconds):
    return "%dm%02ds" % divmod(int(seconds), 60)


_NINJA_LINE = re.compile(r"^\[(\d+)/(\d+)\] (.*)$")
_COMPILE_SOURCE = re.compile(r"\s-c\s+([^-\s]\S*)")  # torch's cflags end in "-c" too: "-c -c x.cpp"


def _short_command(command):
    """"nvcc -c csrc/ops/cuda/x.cu" for a ninja compile command (2 KB of flags): the tool, and the
    source relative to the repository. The `nvcc ... -c FILE.cu` shape is what
    scripts/cuda_resources.py looks for in a build log to attribute ptxas's report to a file."""
    words = command.split()
    # torch puts ccache/sccache in front of the compiler when it finds one
    while len(words) > 1 and os.path.basename(words[0]) in ("ccache", "sccache"):
        words = words[1:]
    tool = os.path.basename(words[0]) if words else "?"
    source = _COMPILE_SOURCE.search(command)
    if source is None:
        return tool
    path = source.group(1)
    if os.path.isabs(path) and path.startswith(ROOT + os.sep):
        path = os.path.relpath(path, ROOT)
    return "%s -c %s" % (tool, path)


def _run_ninja_build_with_progress(build_directory, verbose, error_prefix):
    """Stands in for torch.utils.cpp_extension._run_ninja_build (same arguments): runs the same
    `ninja -v`, printing as it goes "[k/n] c++ -c <source> (elapsed)" for each finished compile
    (ninja's own "[k/n] <2 KB command>" with DETR_OPS_VERBOSE_BUILD=1); everything else ninja or
    the compiler prints (warnings, errors, ptxas reports) passes through unchanged."""
    command = ["ninja", "-v"]
    if os.environ.get("MAX_JOBS", "").isdigit():
        command += ["-j", os.environ["MAX_JOBS"]]
    full_commands = _flag("DETR_OPS_VERBOSE_BUILD")
    progress = _Progress()
    start = time.monotonic()
    sys.stdout.flush()
    sys.stderr.flush()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=build_directory,
                               env=os.environ.copy(), text=True, errors="replace")
    compiled = total = 0
    for raw in process.stdout:
        text = raw.rstrip("\n")
        match = _NINJA_LINE.match(text)
        if match is None:
            if text == "ninja: no work to do.":
                progress.line("detr_ops build: every object file is up to date")
            elif text:
                print(text, flush=True)  # compiler warnings and errors, as they are
            continue
        # ninja prints an edge's line when it finishes: k of n are compiled.
        compiled, total = int(match.group(1)), int(match.group(2))
        what = match.group(3) if full_commands else _short_command(match.group(3))
        progress.line("[%d/%d] %s (%s)" % (compiled, total, what, _elapsed(time.monotonic() - start)))
    rc = process.wait()
    if rc != 0:
        raise RuntimeError("%s: ninja exited with status %d; the compiler's messages are above" % (error_prefix, rc))
    if total:
        progress.line("detr_ops build: compiled %d of %d files in %s" % (compiled, total,
                                                                        _elapsed(time.monotonic() - start)))


class BuildExt(cpp_extension.BuildExtension):
    """torch's BuildExtension (ninja) with: one object folder for every kind of build, and the
    compile's progress printed."""

    def finalize_options(self):
        super().finalize_options()
        # An editable install (pip install -e .) compiles in a temporary folder by default, which
        # is thrown away: the next `setup.py build_ext --inplace` (make build) or `pip install -e .`
        # compiled everything again. Pinned to the folder build_ext --inplace uses, ninja finds the
        # objects up to date (same commands, same paths) and compiles only what changed.
        if getattr(self, "editable_mode", False):
            from setuptools.command.build import build

            default = build(self.distribution)
            default.ensure_finalized()
            self.build_temp = default.build_temp

    def build_extensions(self):
        # torch looks the function up in its module at call time; put its own back afterwards.
        original = getattr(cpp_extension, "_run_ninja_build", None)
        patch = original is not None and self.use_ninja and os.name == "posix"
        if patch:
            cpp_extension._run_ninja_build = _run_ninja_build_with_progress
        try:
            super().build_extensions()
        finally:
            if patch:
                cpp_extension._run_ninja_build = original


def _license_metadata():
    """BSD-3-Clause, in the field the running setuptools knows: setuptools>=77 writes a
    License-Expression (and rejects the old `License` text next to pyproject.toml's metadata
    with a deprecation), older ones only know `license`. pyproject.toml lists license as dynamic;
    a literal there would need setuptools>=77 for the string form or warn on it for the table form."""
    if _setuptools_version() >= (77, 0):
        return {"license_expression": "BSD-3-Clause"}
    return {"license": "BSD-3-Clause"}


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExt.with_options(use_ninja=True)},
    zip_safe=False,
    **_license_metadata(),
)
