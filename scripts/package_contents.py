"""What the sdist and the wheel must carry, checked against the source tree.

    python scripts/package_contents.py sdist dist/detr_ops-X.tar.gz [--tree DIR]
    python scripts/package_contents.py wheel dist/detr_ops-X-*.whl [--tree DIR]

The sdist must hold every file the build reads (every file under csrc/: sources, headers, .cuh,
.cu; build_config.txt; setup.py; pyproject.toml), every module of the package, the license, the
README and changelog, and the CMake build with its test; and no build products. The wheel must hold
every module of the package and the compiled extension, and nothing else at its top level (no
csrc/, tests/, benchmarks/ or scripts/). ``--tree`` is the source tree to compare with (default:
this repository); its files are listed with git where it is a git checkout.

Used by scripts/check_package.sh (CI) and tests/test_packaging.py. Exits non-zero with the list of
what is missing or should not be there.
"""
import argparse
import fnmatch
import os
import subprocess
import sys
import tarfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Files of the source tree that the sdist must carry (fnmatch patterns on tree-relative paths;
# "*" crosses "/").
SDIST_REQUIRED = ["csrc/*", "detr_ops/*.py", "build_config.txt", "setup.py", "pyproject.toml", "MANIFEST.in",
                  "LICENSE", "README.md", "CHANGELOG.md", "CMakeLists.txt", "tests/cpp/*"]
BUILD_PRODUCTS = ["*.so", "*.o", "*.pyc", "*/__pycache__/*", "build/*", "*.egg-info/*.so"]
WHEEL_TOP_LEVEL_ALLOWED = ["detr_ops", "detr_ops-*.dist-info", "detr_ops-*.data"]


def tree_files(tree):
    """Tree-relative paths of the files of ``tree``: git's list (tracked and new, not ignored)
    where it is a checkout, else every file."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=tree,
                             capture_output=True, text=True, check=True).stdout
        if out.strip():
            return sorted(p for p in out.splitlines() if os.path.isfile(os.path.join(tree, p)))
    except (OSError, subprocess.CalledProcessError):
        pass
    files = []
    for dirpath, _, names in os.walk(tree):
        files += [os.path.relpath(os.path.join(dirpath, n), tree) for n in names]
    return sorted(files)


def _matches(path, patterns):
    return any(fnmatch.fnmatch(path, p) for p in patterns)


def sdist_members(path):
    """Paths inside the sdist, without its top folder (detr_ops-X.Y.Z/)."""
    with tarfile.open(path) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    return sorted(n.split("/", 1)[1] for n in names if "/" in n)


def wheel_members(path):
    with zipfile.ZipFile(path) as z:
        return sorted(n for n in z.namelist() if not n.endswith("/"))


def check_sdist(members, tree):
    """List of problems (empty: fine)."""
    problems = []
    have = set(members)
    required = [p for p in tree_files(tree) if _matches(p, SDIST_REQUIRED)]
    problems += [f"missing from the sdist: {p}" for p in required if p not in have]
    problems += [f"build product in the sdist: {p}" for p in members if _matches(p, BUILD_PRODUCTS)]
    if not any(p.startswith("csrc/") and p.endswith(".h") for p in members):
        problems.append("the sdist has no header under csrc/")
    if "PKG-INFO" not in have:
        problems.append("the sdist has no PKG-INFO")
    return problems


def check_wheel(members, tree):
    problems = []
    have = set(members)
    modules = [p for p in tree_files(tree) if fnmatch.fnmatch(p, "detr_ops/*.py")]
    problems += [f"missing from the wheel: {p}" for p in modules if p not in have]
    if not any(fnmatch.fnmatch(p, "detr_ops/_C*.so") or fnmatch.fnmatch(p, "detr_ops/_C*.pyd") for p in members):
        problems.append("the wheel has no compiled extension detr_ops/_C*.so")
    tops = sorted({p.split("/", 1)[0] for p in members})
    problems += [f"unexpected top-level entry in the wheel: {t}" for t in tops
                 if not _matches(t, WHEEL_TOP_LEVEL_ALLOWED)]
    if not any(fnmatch.fnmatch(p, "detr_ops-*.dist-info/*LICENSE*") for p in members):
        problems.append("the wheel's dist-info carries no LICENSE")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["sdist", "wheel"])
    parser.add_argument("path")
    parser.add_argument("--tree", default=ROOT, help="the source tree to compare with (default: this repository)")
    args = parser.parse_args(argv)
    if args.kind == "sdist":
        members = sdist_members(args.path)
        problems = check_sdist(members, args.tree)
    else:
        members = wheel_members(args.path)
        problems = check_wheel(members, args.tree)
    name = os.path.basename(args.path)
    if problems:
        print(f"{name}: {len(problems)} problem(s):\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    headers = sum(1 for m in members if m.endswith((".h", ".cuh")))
    cuda = sum(1 for m in members if m.endswith(".cu"))
    print(f"{name}: {len(members)} files, complete"
          + (f" ({headers} headers, {cuda} .cu files)" if args.kind == "sdist" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
