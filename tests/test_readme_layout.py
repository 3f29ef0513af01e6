"""The README's op x layer table stays true: every file it names exists, and every source file of
the operator layers (C++/CUDA, Python API, registrations, Triton, references, modules, export) is
named in it. A new op or helper file therefore fails here until the table lists it."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The layers whose every file the table must list; the models, integrations, tests and scripts
# are described by directory.
LISTED = ("csrc", "detr_ops/ops", "detr_ops/triton", "detr_ops/reference", "detr_ops/nn", "detr_ops/onnx")
SUFFIXES = {".cpp", ".h", ".cu", ".cuh", ".py"}


def layout_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Layout")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def named_paths(section: str):
    """Backticked paths in the table; a cell may name several files of one directory as
    ``dir/{a,b}.py``."""
    paths = set()
    for token in re.findall(r"`([^`]+)`", section):
        match = re.fullmatch(r"(.*)\{([^}]*)\}(.*)", token)
        names = [match.group(1) + part.strip() + match.group(3) for part in match.group(2).split(",")] if match else [token]
        paths.update(n for n in names if "/" in n and pathlib.PurePath(n).suffix in SUFFIXES)
    return paths


def test_every_named_file_exists():
    """A plain path must be a file; a glob (``tests/test_box_*.py``) must match at least one."""
    missing = sorted(p for p in named_paths(layout_section())
                     if not ((ROOT / p).is_file() if "*" not in p else any(ROOT.glob(p))))
    assert not missing, f"README's layout table names files that do not exist: {missing}"


def test_every_operator_file_is_named():
    named = named_paths(layout_section())
    files = {str(p.relative_to(ROOT)) for layer in LISTED for p in (ROOT / layer).rglob("*")
             if p.is_file() and p.suffix in SUFFIXES and p.name != "__init__.py"}
    files |= {str(p.relative_to(ROOT)) for p in (ROOT / "detr_ops").glob("_*.py") if p.name != "__init__.py"}
    unlisted = sorted(files - named)
    assert not unlisted, f"README's layout table does not list: {unlisted}"
