"""transformers is an optional extra: importing detr_ops (and its integrations package and
transformers adapter module) never imports it; enable() says clearly when it is missing."""
import subprocess
import sys

CODE = """
import sys
import detr_ops, detr_ops.nn, detr_ops.integrations, detr_ops.integrations.transformers
assert "transformers" not in sys.modules, "importing detr_ops imported transformers"
{extra}
print("ok")
"""

BLOCK_TRANSFORMERS = """
import importlib.abc
import sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers' (blocked by the test)")
sys.meta_path.insert(0, Block())
"""

CHECK_ENABLE = """
import detr_ops.integrations.transformers as hf
try:
    hf.enable()
except ImportError as e:
    assert "needs the transformers package" in str(e), e
else:
    raise AssertionError("enable() without transformers did not raise ImportError")
assert not hf.is_enabled()
"""


def _run(code):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_importing_detr_ops_does_not_import_transformers():
    _run(CODE.format(extra=""))


def test_enable_without_transformers_raises_a_clear_import_error():
    _run(BLOCK_TRANSFORMERS + CODE.format(extra=CHECK_ENABLE))
