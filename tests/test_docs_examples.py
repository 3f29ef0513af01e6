"""Every ```python block of README.md and docs/*.md runs as written.

Each block must be self-contained (its own imports and inputs): it runs in a fresh namespace. A
block that imports a package that is not installed (transformers, onnxruntime, mmdet, ...) is
skipped, naming the package; any other error fails the test. Shell blocks (```bash) are commands
to type, not tested here.

A page whose blocks are fragments of someone else's code (the lines that replace a codebase's
matcher call inside its ``SetCriterion``: ``self.matcher``, ``outputs_without_aux``) may define
those names once in a setup block, ```` ```python docs-setup ````, inside an HTML comment so that
it does not render: it runs before each block of its page, in that block's fresh namespace, and is
not a test of its own. The README's blocks need none: they are what a new user copies.

The blocks run in one child process, not in pytest's: an example may patch a library
(``detr_ops.integrations.transformers.enable()``) or set torch's global state, and that must not
leak into the other tests. One process for all pages pays torch's import once (most of the time
this test takes). Each block is still its own test, with the file and line it starts at.
"""
import ast
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
# A fence line: up to 3 spaces of indent, ``` or ~~~, then the info string.
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)[^`]*$")
TIMEOUT_S = 300  # all blocks of all pages; the slowest (a tiny Hugging Face model's step) takes seconds


SETUP_TAG = "docs-setup"


def _fenced_python(text):
    """[(line number of the first code line, code, info words)] of the ```python / ```py blocks."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        info = lines[i].strip()[len(fence):].split()
        body, j = [], i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence[0] * len(fence))
                                      and lines[j].strip().strip(fence[0]) == ""):
            body.append(lines[j])
            j += 1
        if lang in ("python", "py", "python3"):
            blocks.append((i + 2, "\n".join(body) + "\n", info[1:]))
        i = j + 1
    return blocks


def python_blocks(text):
    """[(line number of the first code line, code)] of the ```python / ```py blocks of markdown
    text, setup blocks left out."""
    return [(line, code) for line, code, tags in _fenced_python(text) if SETUP_TAG not in tags]


def setup_code(text):
    """The page's setup blocks (```python docs-setup), joined: what runs before each of its blocks."""
    return "".join(code for _, code, tags in _fenced_python(text) if SETUP_TAG in tags)


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
results = []
for setup_label, setup, label, code in json.loads(sys.stdin.read()):
    try:
        namespace = {"__name__": "__main__"}
        if setup:
            exec(compile(setup, setup_label, "exec"), namespace)
        exec(compile(code, label, "exec"), namespace)
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
        text = path.read_text(encoding="utf-8")
        setup = setup_code(text)
        for line, code in python_blocks(text):
            cases.append(pytest.param(path, line, setup + code, id=f"{path.relative_to(ROOT)}:{line}"))
    return cases


_results = {}


def _run_all():
    """Results of every runnable block of every page (one child process), by (page, starting line)."""
    if not _results:
        keys, payload = [], []
        for path in DOC_FILES:
            text = path.read_text(encoding="utf-8")
            setup, name = setup_code(text), str(path.relative_to(ROOT))
            for line, code in python_blocks(text):
                if not missing_imports(setup + code):
                    keys.append((path, line))
                    payload.append((f"{name} (setup)", setup, f"{name}:{line}", code))
        # In an empty folder (an example may write its output, like model.onnx, where it runs), with
        # the source tree importable where detr_ops is not installed (the CUDA build check's copy).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        with tempfile.TemporaryDirectory(prefix="detr_ops-docs-") as cwd:
            proc = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(payload), capture_output=True,
                                  text=True, cwd=cwd, env=env, timeout=TIMEOUT_S)
        head, sep, tail = proc.stdout.rpartition("@@RESULTS@@")
        if not sep:
            pytest.fail(f"the doc examples crashed the interpreter (exit {proc.returncode}):\n"
                        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        _results.update(zip(keys, json.loads(tail)))
    return _results


@pytest.mark.parametrize("path, line, code", _cases())
def test_doc_example_runs(path, line, code):
    missing = missing_imports(code)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}, not installed")
    result = _run_all()[(path, line)]
    if not result["ok"] and result.get("missing") and importlib.util.find_spec(result["missing"]) is None:
        pytest.skip(f"needs {result['missing']}, not installed (imported by detr_ops for this example)")
    assert result["ok"], f"{path.relative_to(ROOT)}:{line} failed:\n{result['error']}"


def test_every_doc_file_is_scanned_and_the_readme_has_examples():
    # The scan must see the README's blocks; an empty list would make the test above vacuous.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(python_blocks(readme)) >= 4
    assert setup_code(readme) == "", "the README's examples must be self-contained: no docs-setup block there"
    assert any(p.name == "integrations.md" for p in DOC_FILES) or not (ROOT / "docs").exists()


def test_block_extraction():
    text = ("intro\n```python\nx = 1\n```\n\n```bash\nmake test\n```\n"
            "````py\nprint('```')\n````\n~~~python\ny = 2\n~~~\n")
    assert python_blocks(text) == [(3, "x = 1\n"), (10, "print('```')\n"), (13, "y = 2\n")]
    hidden = "<!--\n```python docs-setup\nz = 3\n```\n-->\n" + text
    assert python_blocks(hidden) == [(line + 5, code) for line, code in python_blocks(text)]
    assert setup_code(hidden) == "z = 3\n"
    assert missing_imports("import os\nfrom detr_ops import box_iou\nimport surely_not_a_module_xyz.sub\n") == [
        "surely_not_a_module_xyz"]
