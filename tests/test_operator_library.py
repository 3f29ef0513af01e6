"""detr_ops without its Python extension: the operators loaded from a library named by
``DETR_OPS_LIBRARY`` (the GPU check's fallback to the prebuilt CMake ``libdetr_ops.so``).

Here the library is the built ``_C`` itself, loaded as a plain shared library while ``import
detr_ops._C`` is blocked: its static initialisers register the same operators the CMake library
does, and it is the one library every CI run has."""
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

import detr_ops

C_LIBRARY = next(iter(sorted(pathlib.Path(detr_ops.__file__).parent.glob("_C*.so"))), None)

BLOCK_C = """
import sys
class Block:  # makes `import detr_ops._C` fail as if it had never been built
    def find_spec(self, name, path=None, target=None):
        if name == "detr_ops._C":
            raise ImportError("No module named 'detr_ops._C'")
sys.meta_path.insert(0, Block())
"""


def run_python(code: str, library: str):
    env = dict(os.environ, DETR_OPS_LIBRARY=library)
    return subprocess.run([sys.executable, "-c", BLOCK_C + textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.skipif(C_LIBRARY is None, reason="detr_ops._C is not built")
def test_operators_come_from_the_library_when_c_is_missing():
    result = run_python(
        """
        import numpy as np, torch, detr_ops
        from detr_ops import _extension
        from detr_ops.reference import generalized_box_iou_reference
        assert _extension.available()
        info = detr_ops.build_info()
        assert info["library"].endswith(".so") and info["torch_version"] == torch.__version__.split("+")[0]
        a = torch.tensor([[0., 0, 2, 2], [1, 1, 3, 4]]); b = torch.tensor([[0., 1, 2, 3]])
        torch.testing.assert_close(detr_ops.generalized_box_iou(a, b), generalized_box_iou_reference(a, b))
        cost = torch.tensor([[[4., 1, 3], [2, 0, 5], [3, 2, 2]]])
        print("cols", detr_ops.batched_linear_sum_assignment(cost)[0].tolist())
        try:
            detr_ops.linear_sum_assignment(np.eye(3))
        except detr_ops.ExtensionError as e:
            print("LSA:", e)
        """, str(C_LIBRARY))
    assert result.returncode == 0, result.stderr
    assert "cols [[1, 0, 2]]" in result.stdout   # scipy's answer for this matrix
    assert "LSA: detr_ops.linear_sum_assignment needs the Python extension detr_ops._C" in result.stdout


def test_a_library_that_does_not_load_is_reported_with_its_path(tmp_path):
    missing = str(tmp_path / "libdetr_ops.so")
    result = run_python(
        """
        import torch, detr_ops
        try:
            detr_ops.generalized_box_iou(torch.rand(2, 4), torch.rand(2, 4))
        except detr_ops.ExtensionError as e:
            print("ERROR:", e)
        """, missing)
    assert result.returncode == 0, result.stderr
    assert "ERROR: detr_ops._C is not available" in result.stdout and f"DETR_OPS_LIBRARY={missing}" in result.stdout
