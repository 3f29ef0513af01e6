"""Packaging: one version, a license, a complete sdist, and the build's behaviour (parallel jobs,
progress lines, one object folder for editable and in-place builds, the build-isolation message).

The full round trip (sdist -> wheel -> fresh environments -> smoke test of every op) is the CI
stage `make package-check` (scripts/check_package.sh); these are the fast checks of its parts.
"""
import importlib.metadata
import os
import re
import runpy
import shutil
import subprocess
import sys
import sysconfig

import pytest
import setuptools

import detr_ops
from scripts import package_contents

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _version_literal():
    with open(os.path.join(ROOT, "detr_ops", "version.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M).group(1)


def _pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module")
def setup_py():
    """setup.py's globals, run as pip would but with setuptools.setup replaced (nothing is built)."""
    saved_setup, saved_env = setuptools.setup, dict(os.environ)
    setuptools.setup = lambda **kwargs: None
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        return runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="__main__")
    finally:
        os.chdir(cwd)
        setuptools.setup = saved_setup
        os.environ.clear()
        os.environ.update(saved_env)


def _installed_metadata():
    """The metadata of the installed detr-ops distribution, or None where detr_ops runs from a
    source tree that was never installed (the CUDA build check's copy)."""
    try:
        return importlib.metadata.metadata("detr-ops")
    except importlib.metadata.PackageNotFoundError:
        return None


def test_one_version_for_the_package_the_build_and_the_changelog():
    version = _version_literal()
    assert detr_ops.__version__ == version
    # The build reads the same literal (pyproject's dynamic version); the installed metadata agrees
    # (make reinstalls when version.py changes).
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "detr_ops.version.__version__"}
    assert "version" in _pyproject()["project"]["dynamic"]
    if _installed_metadata() is not None:
        assert _installed_metadata()["Version"] == version
    with open(os.path.join(ROOT, "CHANGELOG.md")) as f:
        assert re.search(rf"^## \[{re.escape(version)}\]", f.read(), re.M), f"CHANGELOG.md has no section for {version}"


def test_license_file_and_metadata_agree(setup_py):
    with open(os.path.join(ROOT, "LICENSE")) as f:
        text = f.read()
    assert text.startswith("BSD 3-Clause License") and "Neither the name of the copyright holder" in text
    assert "license" in _pyproject()["project"]["dynamic"]
    assert set(setup_py["_license_metadata"]().values()) == {"BSD-3-Clause"}
    meta = _installed_metadata()
    if meta is not None:
        assert (meta.get("License-Expression") or meta.get("License")) == "BSD-3-Clause"


def test_extras_cover_what_the_tests_and_benchmarks_import():
    extras = _pyproject()["project"]["optional-dependencies"]
    assert {"triton", "tests", "benchmarks", "models", "transformers", "onnx"} <= set(extras)
    names = {re.split(r"[<>=!~ \[]", r)[0].lower() for r in extras["tests"]}
    assert {"pytest", "hypothesis", "expecttest", "scipy", "numpy", "matplotlib", "pycocotools", "tqdm"} <= names
    # torch is never a build requirement: build isolation would compile against a fresh download.
    assert not any(r.startswith("torch") for r in _pyproject()["build-system"]["requires"])


def test_sdist_carries_every_source_header_and_cuda_file(tmp_path):
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "sdist", "-d",
                    str(tmp_path)], cwd=ROOT, check=True, capture_output=True, env=dict(os.environ, DETR_OPS_CPU_ONLY="1"))
    (sdist,) = tmp_path.glob("*.tar.gz")
    # setuptools >= 69.3 normalises the name to detr_ops (PEP 625); older ones keep detr-ops
    assert sdist.name in (f"detr_ops-{_version_literal()}.tar.gz", f"detr-ops-{_version_literal()}.tar.gz")
    members = package_contents.sdist_members(sdist)
    assert package_contents.check_sdist(members, ROOT) == []
    # The files the original issue found missing, by name.
    for path in ("csrc/bindings/bindings.h", "build_config.txt", "LICENSE"):
        assert path in members
    assert any(m.endswith(".cu") for m in members) and any(m.endswith(".cuh") for m in members)


def test_the_contents_check_finds_what_is_missing(tmp_path):
    tree = package_contents.tree_files(ROOT)
    members = [p for p in tree if not p.endswith(".h")] + ["PKG-INFO", "detr_ops/_C.so"]
    problems = package_contents.check_sdist(members, ROOT)
    assert "missing from the sdist: csrc/bindings/bindings.h" in problems
    assert "build product in the sdist: detr_ops/_C.so" in problems
    wheel = ["detr_ops/__init__.py", "csrc/detr_ops.cpp", "detr_ops-0.1.0.dist-info/METADATA"]
    problems = package_contents.check_wheel(wheel, ROOT)
    assert "the wheel has no compiled extension detr_ops/_C*.so" in problems
    assert "unexpected top-level entry in the wheel: csrc" in problems
    assert "missing from the wheel: detr_ops/version.py" in problems


def test_default_parallel_jobs_are_the_cpus_available(setup_py, monkeypatch):
    jobs, why = setup_py["_default_max_jobs"]()
    cpus = len(os.sched_getaffinity(0))
    assert 1 <= jobs <= cpus and ("CPUs" in why or "memory" in why)
    monkeypatch.setenv("MAX_JOBS", "")  # recorded, so that teardown removes what _set_max_jobs sets
    monkeypatch.delenv("MAX_JOBS")
    assert setup_py["_set_max_jobs"]().startswith(f"{jobs} (default")
    assert os.environ["MAX_JOBS"] == str(jobs)
    monkeypatch.setenv("MAX_JOBS", "3")
    assert setup_py["_set_max_jobs"]() == "3 (MAX_JOBS)"


def test_editable_builds_keep_their_objects_where_build_ext_inplace_does(setup_py, tmp_path, monkeypatch):
    from setuptools.dist import Distribution

    monkeypatch.chdir(tmp_path)
    cmd_cls = setup_py["BuildExt"]

    def build_temp(editable):
        cmd = cmd_cls(Distribution({"name": "x", "ext_modules": []}))
        cmd.editable_mode = editable
        if editable:  # what setuptools' editable_wheel does: a throw-away folder for the build
            cmd.distribution.get_command_obj("build").build_temp = str(tmp_path / "tmpXYZ.build-temp")
        cmd.ensure_finalized()
        return cmd.build_temp

    assert build_temp(True) == build_temp(False)
    assert "tmpXYZ" not in build_temp(True)


def test_ninja_progress_lines(setup_py, tmp_path, capsys, monkeypatch):
    if shutil.which("ninja") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "ninja")):
        pytest.skip("ninja is not installed")
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("DETR_OPS_PROGRESS", "0")
    monkeypatch.setenv("MAX_JOBS", "1")
    root = setup_py["ROOT"]
    (tmp_path / "a.cpp").write_text("int a;\n")
    (tmp_path / "b.cu").write_text("int b;\n")
    # The shape of torch's rules: "<compiler> ... -c <absolute source> -o <object>".
    (tmp_path / "build.ninja").write_text(
        "rule cxx\n  command = c++ -O2 -c $in -o $out && echo warning: a compiler message\n"
        "rule nvcc\n  command = cp $in $out && true nvcc -c $in\n"
        f"build a.o: cxx {tmp_path / 'a.cpp'}\nbuild b.o: nvcc {tmp_path / 'b.cu'}\n")
    setup_py["_run_ninja_build_with_progress"](str(tmp_path), True, "Error compiling objects for extension")
    out = capsys.readouterr().out
    assert re.search(rf"^\[[12]/2\] c\+\+ -c {re.escape(str(tmp_path / 'a.cpp'))} \(0m\d\ds\)$", out, re.M), out
    assert re.search(r"^\[[12]/2\] cp -c \S+b\.cu \(0m\d\ds\)$", out, re.M), out
    assert "warning: a compiler message" in out  # compiler output passes through
    assert "compiled 2 of 2 files in" in out
    # Up to date: one line saying so.
    setup_py["_run_ninja_build_with_progress"](str(tmp_path), True, "Error compiling objects for extension")
    assert "every object file is up to date" in capsys.readouterr().out
    # A failing compile raises torch's error, after the compiler's messages.
    (tmp_path / "a.cpp").write_text("this is not C++\n")
    with pytest.raises(RuntimeError, match="Error compiling objects for extension: ninja exited with status 1"):
        setup_py["_run_ninja_build_with_progress"](str(tmp_path), True, "Error compiling objects for extension")
    assert "error" in capsys.readouterr().out
    # Paths inside the repository are shown relative to it; nvcc commands keep the shape
    # scripts/cuda_resources.py reads from a build log.
    short = setup_py["_short_command"](f"/usr/local/cuda/bin/nvcc --generate-dependencies-with-compile -O3 -c "
                                       f"{root}/csrc/ops/cuda/box_iou_kernel.cu -o /b/x.o -gencode arch=compute_90")
    assert short == "nvcc -c csrc/ops/cuda/box_iou_kernel.cu"
    # torch 2.13 puts ccache in front of the host compiler, and its cflags end in "-c" already.
    assert setup_py["_short_command"](f"ccache c++ -MMD -MF x.o.d -O3 -c -c {root}/csrc/detr_ops.cpp -o x.o") == \
        "c++ -c csrc/detr_ops.cpp"
    from scripts.cuda_resources import _NVCC_SOURCE

    assert _NVCC_SOURCE.search(f"[3/9] {short} (0m12s)").group(1) == "csrc/ops/cuda/box_iou_kernel.cu"


def _run_setup_isolated(tmp_path, overlay_name):
    """setup.py as pip's build isolation runs it: the same interpreter, this environment's
    site-packages left off sys.path, the build requirements in an overlay folder."""
    overlay = tmp_path / overlay_name / "overlay" / "site-packages"
    overlay.mkdir(parents=True)
    site = os.path.dirname(os.path.dirname(setuptools.__file__))
    # setuptools' dist-info too: its __version__ comes from that metadata.
    names = ["setuptools", "_distutils_hack", "pkg_resources"] + [
        n for n in os.listdir(site) if n.startswith("setuptools-") and n.endswith(".dist-info")]
    for name in names:
        if os.path.exists(os.path.join(site, name)):
            (overlay / name).symlink_to(os.path.join(site, name))
    code = (
        "import sys, runpy\n"
        f"sys.path = [p for p in sys.path if 'site-packages' not in p] + [{str(overlay)!r}]\n"
        "sys.argv = ['setup.py', 'egg_info']\n"
        "runpy.run_path('setup.py', run_name='__main__')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PIP_BUILD_TRACKER"] = str(tmp_path / "tracker")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)


def test_build_isolation_says_which_torch_it_hides(tmp_path):
    import torch

    proc = _run_setup_isolated(tmp_path, "pip-build-env-abc123")
    assert proc.returncode != 0
    message = proc.stderr
    assert f"hides the torch {torch.__version__}" in message, message
    assert sysconfig.get_paths()["purelib"] in message
    assert "pip install --no-build-isolation ." in message


def test_no_torch_at_all_says_how_to_install(tmp_path):
    proc = _run_setup_isolated(tmp_path, "plain-folder")
    # Outside an isolated environment the message is the plain "install torch first" one; the
    # interpreter's own site-packages do have torch here, so only the wording is checked.
    assert proc.returncode != 0
    assert "--no-build-isolation" in proc.stderr and "Install torch first" in proc.stderr, proc.stderr
