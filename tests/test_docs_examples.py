"""Every ```python block of README.md and docs/*.md runs as written.

Each block must be self-contained (its own imports and inputs): it runs in a fresh namespace. A
block that imports a package that is not installed (transformers, onnxruntime, mmdet, ...) is
skipped, naming the package; any other error fails the test. Shell blocks (```bash) are commands
to type, not tested here.

The blocks run in one child process per file, not in pytest's: an example may patch a library
(``detr_ops.integrations.transformers.enable()``) or set torch's global state, and that must not
leak into the other tests. Each block is still its own test, with the file and line it starts at.
"""
import ast
import importlib.util
import json
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
# A fence line: up to 3 spaces of indent, ``` or ~~~, then the info string.
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)[^`]*$")
TIMEOUT_S = 300  # all blocks of one file; the slowest (a tiny Hugging Face model's step) takes seconds


def python_blocks(text):
    """[(line number of the first code line, code)] of the ```python / ```py blocks of markdown text."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        body, j = [], i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence[0] * len(fence))
                                      and lines[j].strip().strip(fence[0]) == ""):
            body.append(lines[j])
            j += 1
        if lang in ("python", "py", "python3"):
            blocks.append((i + 2, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def missing_imports(code):
    """Top-level packages the code imports that are not installed (``import a.b`` needs ``a``)."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return sorted(n for n in names if importlib.util.find_spec(n) is None)


# Runs in the child: every block of one file, each in a fresh namespace, one JSON result a block.
_RUNNER = r"""
import json, sys, traceback
blocks = json.loads(sys.stdin.read())
results = []
for label, code in blocks:
    try:
        exec(compile(code, label, "exec"), {"__name__": "__main__"})
        results.append({"ok": True})
    except ImportError as e:
        # A missing optional package: ModuleNotFoundError, or detr_ops' own ImportError raised from one.
        cause = e if isinstance(e, ModuleNotFoundError) else e.__cause__
        missing = cause.name if isinstance(cause, ModuleNotFoundError) else None
        results.append({"ok": False, "missing": missing, "error": traceback.format_exc()})
    except BaseException:
        results.append({"ok": False, "error": traceback.format_exc()})
print("\n@@RESULTS@@" + json.dumps(results))
"""


def _cases():
    cases = []
    for path in DOC_FILES:
        for line, code in python_blocks(path.read_text(encoding="utf-8")):
            cases.append(pytest.param(path, line, code, id=f"{path.relative_to(ROOT)}:{line}"))
    return cases


_results = {}


def _run_file(path):
    """Results of every runnable block of ``path`` (one child process), by starting line."""
    if path not in _results:
        runnable = [(line, code) for line, code in python_blocks(path.read_text(encoding="utf-8"))
                    if not missing_imports(code)]
        payload = json.dumps([(f"{path.relative_to(ROOT)}:{line}", code) for line, code in runnable])
        proc = subprocess.run([sys.executable, "-c", _RUNNER], input=payload, capture_output=True, text=True,
                              cwd=ROOT, timeout=TIMEOUT_S)
        head, sep, tail = proc.stdout.rpartition("@@RESULTS@@")
        if not sep:
            pytest.fail(f"the examples of {path.name} crashed the interpreter (exit {proc.returncode}):\n"
                        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        _results[path] = dict(zip((line for line, _ in runnable), json.loads(tail)))
    return _results[path]


@pytest.mark.parametrize("path, line, code", _cases())
def test_doc_example_runs(path, line, code):
    missing = missing_imports(code)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}, not installed")
    result = _run_file(path)[line]
    if not result["ok"] and result.get("missing") and importlib.util.find_spec(result["missing"]) is None:
        pytest.skip(f"needs {result['missing']}, not installed (imported by detr_ops for this example)")
    assert result["ok"], f"{path.relative_to(ROOT)}:{line} failed:\n{result['error']}"


def test_every_doc_file_is_scanned_and_the_readme_has_examples():
    # The scan must see the README's blocks; an empty list would make the test above vacuous.
    assert len(python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))) >= 4
    assert any(p.name == "integrations.md" for p in DOC_FILES) or not (ROOT / "docs").exists()


def test_block_extraction():
    text = ("intro\n```python\nx = 1\n```\n\n```bash\nmake test\n```\n"
            "````py\nprint('```')\n````\n~~~python\ny = 2\n~~~\n")
    assert python_blocks(text) == [(3, "x = 1\n"), (10, "print('```')\n"), (13, "y = 2\n")]
    assert missing_imports("import os\nfrom detr_ops import box_iou\nimport surely_not_a_module_xyz.sub\n") == [
        "surely_not_a_module_xyz"]
