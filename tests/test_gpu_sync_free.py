"""Every GPU path of detr_ops runs without a host synchronisation (GPU check only: marked ``cuda``).

Each op, native CUDA and Triton, forward and backward, and the matcher's device-side ``match``, is
called once to warm up (Triton compiles, cuBLAS and CUDA initialise lazily), then again under
``torch.cuda.set_sync_debug_mode("error")``, which turns every synchronising CUDA call torch makes
(a blocking copy such as ``torch.tensor(list, device=cuda)``, ``.item()``, ``.cpu()``,
``nonzero()``, a stream synchronisation) into a RuntimeError. The first test proves the mode catches
such calls on this torch. Test names carry the op family (box_iou, linear_sum_assignment,
matching_cost, matcher, ms_deform_attn) for ``scripts/gpu_check.sh --only``.
"""
import contextlib

import pytest
import torch

import detr_ops

pytestmark = pytest.mark.cuda

BACKENDS = [pytest.param("native", id="cuda-native"),
            pytest.param("triton", id="cuda-triton", marks=pytest.mark.triton)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DTYPE_IDS = ["float32", "float64", "float16", "bfloat16"]
# Known synchronisations of the Python wrappers (issue 21, item 0): a Python list copied to the GPU
# with a blocking copy. Strict: the test fails once the wrapper stops synchronising, so the mark goes.
LIST_TO_GPU = "builds a size tensor from a Python list with torch.tensor(..., device=cuda), a blocking copy"


@contextlib.contextmanager
def no_sync():
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def sync_free(fn):
    """Runs fn once to warm up, then under no_sync(); returns the second result."""
    fn()
    with no_sync():
        out = fn()
    torch.cuda.synchronize()
    return out


def _boxes(*shape, dtype, requires_grad=False):
    g = torch.Generator().manual_seed(sum(shape))
    xy = torch.rand(*shape, 2, generator=g)
    b = torch.cat([xy, xy + torch.rand(*shape, 2, generator=g)], -1).to("cuda", dtype)
    return b.requires_grad_(requires_grad)


def test_sync_debug_mode_catches_a_sync():
    """The guard works: each of these synchronises and must raise under no_sync()."""
    x = torch.ones(3, device="cuda")
    for sync in (lambda: x.sum().item(), lambda: x.cpu(), lambda: torch.tensor([1, 2], device="cuda"),
                 lambda: x.nonzero()):
        with pytest.raises(RuntimeError, match="synchroniz"):
            with no_sync():
                sync()


# ---- boxes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("box_format", ["xyxy", "cxcywh"])
def test_box_iou_and_giou_sync_free(backend, dtype, box_format):
    b1 = _boxes(3, 40, dtype=dtype, requires_grad=True)
    b2 = _boxes(3, 9, dtype=dtype, requires_grad=True)
    pairs1, pairs2 = _boxes(70, dtype=dtype, requires_grad=True), _boxes(70, dtype=dtype, requires_grad=True)

    def step():
        giou = detr_ops.generalized_box_iou(b1, b2, box_format, backend=backend)
        iou = detr_ops.box_iou(b1.detach(), b2.detach(), box_format, backend=backend)
        loss = detr_ops.generalized_box_iou_loss(pairs1, pairs2, "mean", box_format=box_format, backend=backend)
        (giou.float().sum() + loss).backward()
        return giou, iou, loss, detr_ops.box_validity(b1.detach(), box_format)

    giou, iou, loss, valid = sync_free(step)
    assert giou.shape == (3, 40, 9) and iou.shape == (3, 40, 9) and valid.shape == (3, 40)
    assert torch.isfinite(b1.grad.float()).all() and torch.isfinite(pairs2.grad.float()).all()


# ---- matching: cost, assignment, matcher ----------------------------------------------------------


def _targets(B=3, T=6, K=11):
    g = torch.Generator().manual_seed(7)
    num = torch.tensor([T, 2, 0])
    labels = torch.randint(0, K, (B, T), generator=g)
    boxes = torch.rand(B, T, 4, generator=g) * 0.4 + 0.1
    return labels.cuda(), boxes.cuda(), num.cuda()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("focal", [False, True], ids=["softmax", "focal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_matching_cost_sync_free(backend, focal, dtype):
    logits = torch.randn(3, 30, 11, device="cuda", dtype=dtype)
    boxes = (torch.rand(3, 30, 4, device="cuda") * 0.4 + 0.1).to(dtype)
    labels, tboxes, num = _targets()
    cost = sync_free(lambda: detr_ops.matching_cost(logits, boxes, labels, tboxes.to(dtype), num, 2.0, 5.0, 2.0,
                                                    focal=focal, backend=backend))
    assert cost.shape == (3, 30, 6) and torch.isinf(cost[2]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("maximize", [False, True])
def test_batched_linear_sum_assignment_sync_free(backend, dtype, layout, maximize):
    cost = torch.rand(4, 30, 9, device="cuda", dtype=dtype)
    if layout == "transposed":
        cost = torch.rand(4, 9, 30, device="cuda", dtype=dtype).transpose(1, 2)
    rows = torch.tensor([30, 12, 0, 30], device="cuda")
    cols = torch.tensor([9, 9, 3, 0], device="cuda")
    col_for_row, status = sync_free(lambda: detr_ops.batched_linear_sum_assignment(
        cost, rows, cols, maximize, check=False, backend=backend))
    assert status.tolist() == [0, 0, 0, 0]
    assert (col_for_row[0] >= 0).sum().item() == 9 and (col_for_row[1] >= 0).sum().item() == 9
    sync_free(lambda: detr_ops.row_for_col(col_for_row, 9))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("focal", [False, True], ids=["softmax", "focal"])
def test_matcher_match_sync_free(backend, focal):
    matcher = detr_ops.HungarianMatcher(cost_class=2, cost_bbox=5, cost_giou=2, focal=focal, backend=backend)
    outputs = {"pred_logits": torch.randn(3, 30, 11, device="cuda"),
               "pred_boxes": torch.rand(3, 30, 4, device="cuda") * 0.4 + 0.1}
    padded = _targets()
    col_for_row, status = sync_free(lambda: matcher.match(outputs, padded_targets=padded))
    assert col_for_row.shape == (3, 30) and status.tolist() == [0, 0, 0]
    assert [(col_for_row[b] >= 0).sum().item() for b in range(3)] == [6, 2, 0]


@pytest.mark.xfail(strict=True, raises=RuntimeError, reason=f"pad_targets {LIST_TO_GPU}")
def test_matcher_match_with_target_list_sync_free():
    matcher = detr_ops.HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)
    outputs = {"pred_logits": torch.randn(2, 30, 11, device="cuda"),
               "pred_boxes": torch.rand(2, 30, 4, device="cuda") * 0.4 + 0.1}
    targets = [{"labels": torch.tensor([1, 3], device="cuda"), "boxes": torch.rand(2, 4, device="cuda") * 0.4 + 0.1},
               {"labels": torch.tensor([5], device="cuda"), "boxes": torch.rand(1, 4, device="cuda") * 0.4 + 0.1}]
    sync_free(lambda: matcher.match(outputs, targets))


@pytest.mark.xfail(strict=True, raises=RuntimeError, reason=f"batched_linear_sum_assignment {LIST_TO_GPU}")
def test_batched_linear_sum_assignment_with_size_list_sync_free():
    cost = torch.rand(2, 30, 9, device="cuda")
    sync_free(lambda: detr_ops.batched_linear_sum_assignment(cost, num_cols=[9, 4], check=False))


# ---- multi-scale deformable attention ---------------------------------------------------------------


def _msda_inputs(dtype, N=2, Lq=25, M=4, D=32, P=3):
    levels = torch.tensor([[12, 15], [6, 8]])
    starts = torch.tensor([0, 180])
    g = torch.Generator().manual_seed(3)
    value = torch.randn(N, 228, M, D, generator=g)
    loc = torch.rand(N, Lq, M, 2, P, 2, generator=g)
    attn = torch.rand(N, Lq, M, 2, P, generator=g)
    value, loc, attn = (t.to("cuda", dtype).requires_grad_() for t in (value, loc, attn))
    return value, levels.cuda(), starts.cuda(), loc, attn


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_ms_deform_attn_sync_free(backend, dtype):
    value, levels, starts, loc, attn = _msda_inputs(dtype)

    def step():
        out = detr_ops.ms_deform_attn(value, levels, starts, loc, attn, backend=backend)
        out.float().square().sum().backward()
        return out

    out = sync_free(step)
    assert out.shape == (2, 25, 128)
    assert all(torch.isfinite(t.grad.float()).all() for t in (value, loc, attn))


def test_ms_deform_attn_function_sync_free():
    value, levels, starts, loc, attn = _msda_inputs(torch.float32)

    def step():
        out = detr_ops.MSDeformAttnFunction.apply(value, levels, starts, loc, attn, 64)
        out.sum().backward()
        return out

    assert sync_free(step).shape == (2, 25, 128)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ms_deform_attn_module_sync_free(backend):
    module = detr_ops.MSDeformAttn(d_model=64, n_levels=2, n_heads=4, n_points=3, backend=backend).cuda()
    levels, starts = torch.tensor([[12, 15], [6, 8]], device="cuda"), torch.tensor([0, 180], device="cuda")
    query = torch.randn(2, 25, 64, device="cuda")
    reference = torch.rand(2, 25, 2, 2, device="cuda")
    flat = torch.randn(2, 228, 64, device="cuda")
    mask = torch.zeros(2, 228, dtype=torch.bool, device="cuda")

    def step():
        out = module(query, reference, flat, levels, starts, mask)
        out.sum().backward()
        return out

    assert sync_free(step).shape == (2, 25, 64)
