"""The compiled core: what was built, and the errors a user sees when it is missing or stale."""
import subprocess
import sys
import textwrap

import pytest
import torch

import detr_ops
from detr_ops import _extension


def test_build_info_reports_the_build():
    info = detr_ops.build_info()
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert set(info) >= {"torch_version", "cuda", "cuda_version", "debug", "cuda_kernels", "parallel"}
    assert info["cuda"] == (info["cuda_version"] is not None)
    assert info["cuda_kernels"] == info["cuda"]


@pytest.mark.skipif(not (torch.backends.openmp.is_available() and sys.platform.startswith("linux")),
                    reason="torch's CPU threads are not OpenMP here")
def test_cpu_kernels_are_built_with_threads():
    # Without -fopenmp, at::parallel_for compiles to a serial loop in the extension and every CPU
    # kernel silently runs on one thread (the MSDA backward was 2x slower on 2 cores for it).
    assert detr_ops.build_info()["parallel"] is True


def test_every_operator_has_a_cpu_kernel():
    """Fake kernels are checked per op by the opcheck tests; here: nothing is CUDA-only."""
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("detr_ops::") and "_triton" not in n)
    assert "detr_ops::pairwise_iou" in names and "detr_ops::ms_deform_attn" in names
    for name in names:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"), name


def run_python(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_missing_extension_is_reported_clearly_and_references_still_work():
    result = run_python(
        """
        import sys
        class Block:  # makes `import detr_ops._C` fail as if it had never been built
            def find_spec(self, name, path=None, target=None):
                if name == "detr_ops._C":
                    raise ImportError("No module named 'detr_ops._C'")
        sys.meta_path.insert(0, Block())
        import torch, detr_ops
        from detr_ops.reference import generalized_box_iou_reference
        assert not detr_ops._extension.available()
        print(generalized_box_iou_reference(torch.tensor([[0., 0, 1, 1]]), torch.tensor([[0., 0, 1, 1]])).item())
        try:
            detr_ops.generalized_box_iou(torch.rand(2, 4), torch.rand(2, 4))
        except detr_ops.ExtensionError as e:
            print("ERROR:", e)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "1.0" in result.stdout
    assert "is not built" in result.stdout and "pip install --no-build-isolation" in result.stdout


def test_torch_version_mismatch_is_reported(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    module, error = _extension._try_import()
    assert module is None
    assert "built against torch" in str(error) and "9.9.9" in str(error) and "pip install --no-build-isolation" in str(error)


def test_extension_error_is_an_import_error():
    assert issubclass(detr_ops.ExtensionError, ImportError)
