"""The export decompositions of detr_ops's ops (``detr_ops.onnx``), run eagerly: each must give
the native op's values (and the float64 grid_sample reference's), on the inputs that break
ported versions: points off the map, NaN / inf locations, 1x1 levels, kink positions, degenerate
and NaN boxes. Also the hook itself: what ``export_options`` changes, and what it leaves alone."""
import pytest
import torch

import detr_ops
import detr_ops.onnx
from detr_ops.onnx import boxes as onnx_boxes
from detr_ops.onnx import msda as onnx_msda
from tests.msda_inputs import SMALL_LEVELS, level_tensors, make_inputs

MSDA_DECOMPOSITIONS = [
    pytest.param(onnx_msda.ms_deform_attn_gather, id="gather"),
    pytest.param(onnx_msda.ms_deform_attn_grid_sample, id="grid_sample"),
]


def native(*inputs):
    return torch.ops.detr_ops.ms_deform_attn(*inputs)


@pytest.mark.parametrize("decomposition", MSDA_DECOMPOSITIONS)
@pytest.mark.parametrize("N", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_msda_matches_native_and_reference(decomposition, N, dtype):
    # Locations in [-0.3, 1.3): about a third of the points fall off the map; one level is 1x1.
    inputs = make_inputs(N=N, levels=SMALL_LEVELS, dtype=dtype, low=-0.3, high=1.3)
    out = decomposition(*inputs)
    assert out.dtype == dtype and out.shape == native(*inputs).shape
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, native(*inputs), **tol)
    ref = detr_ops.ms_deform_attn_pytorch(*[t.double() if t.is_floating_point() else t for t in inputs])
    torch.testing.assert_close(out.double(), ref, **tol)


@pytest.mark.parametrize("decomposition", MSDA_DECOMPOSITIONS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_msda_half_computes_in_float32_like_the_kernels(decomposition, dtype):
    inputs = make_inputs(N=2, dtype=dtype)
    out = decomposition(*inputs)
    assert out.dtype == dtype
    torch.testing.assert_close(out, native(*inputs), rtol=1e-2, atol=1e-2)
    upcast = decomposition(*[t.float() if t.is_floating_point() else t for t in inputs])
    torch.testing.assert_close(out, upcast.to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("decomposition", MSDA_DECOMPOSITIONS)
def test_msda_kinks_and_borders(decomposition):
    """Pixel centres, cell edges and the exact borders (x == -1, x == W - 1/2 ...), where the
    sampling test and the corner rule decide."""
    value, shapes, starts, _, _ = make_inputs(N=1, Lq=1, M=1, P=1, levels=[(3, 4), (1, 1)])
    H, W = 3, 4
    xs = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 2.5, 3.0, 3.5, 4.0 - 1e-9, 4.0], dtype=torch.float64)
    ys = torch.tensor([-1.0, 0.0, 1.0, 2.5, 3.0 - 1e-9, 3.0], dtype=torch.float64)
    px, py = torch.meshgrid((xs + 0.5) / W, (ys + 0.5) / H, indexing="ij")
    loc = torch.stack([px.reshape(-1), py.reshape(-1)], -1)  # the pixel coordinates above, normalised
    Lq = loc.shape[0]
    locations = loc.view(1, Lq, 1, 1, 1, 2).expand(1, Lq, 1, 2, 1, 2).contiguous()
    weights = torch.rand(1, Lq, 1, 2, 1, dtype=torch.float64)
    out = decomposition(value, shapes, starts, locations, weights)
    torch.testing.assert_close(out, native(value, shapes, starts, locations, weights), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("decomposition", MSDA_DECOMPOSITIONS)
def test_msda_non_finite_inputs(decomposition):
    """NaN / inf locations contribute nothing; a NaN weight gives NaN only where its point is
    sampled (the kernels skip a rejected point entirely); a NaN value propagates where it is read."""
    value, shapes, starts, locations, weights = make_inputs(N=1, Lq=6, M=2, P=2, levels=[(3, 3), (1, 1)])
    locations = locations.clamp(0.1, 0.9)
    locations[0, 0, 0, 0, 0, 0] = float("nan")
    locations[0, 1, 0, 1, 1, 1] = float("inf")
    locations[0, 2, 1, 0, 0, 0] = -float("inf")
    locations[0, 3, 0, 0, 0] = 5.0          # off the map ...
    weights[0, 3, 0, 0, 0] = float("nan")   # ... so its NaN weight is never used
    weights[0, 4, 1, 1, 0] = float("nan")   # sampled: NaN out for query 4, head 1
    out = decomposition(value, shapes, starts, locations, weights)
    expected = native(value, shapes, starts, locations, weights)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12, equal_nan=True)
    D = value.shape[-1]
    assert torch.isfinite(out[0, :4]).all() and torch.isfinite(out[0, 5]).all()
    assert out[0, 4, D:].isnan().all() and torch.isfinite(out[0, 4, :D]).all()
    # A NaN pixel of value reaches exactly the outputs whose points read it.
    value[0, 0, 0, 0] = float("nan")
    torch.testing.assert_close(decomposition(value, shapes, starts, locations, weights),
                               native(value, shapes, starts, locations, weights), equal_nan=True)


def test_gather_skips_levels_that_do_not_fit_like_the_kernels():
    """Inconsistent shapes (unchecked, as on a GPU) never read out of range: the level is skipped."""
    value, shapes, starts, locations, weights = make_inputs(N=2, levels=[(4, 5), (2, 3)])
    bad = starts.clone()
    bad[1] = value.shape[1] - 2  # level 1 (6 pixels) would run past S
    out = onnx_msda.ms_deform_attn_gather(value, shapes, bad, locations, weights)
    expected = detr_ops.ms_deform_attn(value, shapes, bad, locations, weights, validate=False)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_gather_gradients():
    """The gather form is differentiable (torch.export training users get its autograd): float64
    gradcheck, and the native backward's gradients away from the kinks."""
    inputs = make_inputs(N=1, Lq=2, M=2, D=3, P=2, levels=[(3, 4), (1, 1)], low=0.05, high=0.95)
    value, shapes, starts, locations, weights = [t.requires_grad_() if t.is_floating_point() else t for t in inputs]

    def f(v, loc, w):
        return onnx_msda.ms_deform_attn_gather(v, shapes, starts, loc, w)

    assert torch.autograd.gradcheck(f, (value, locations, weights))
    grad = torch.randn(1, 2, 6, dtype=torch.float64)
    ours = torch.autograd.grad(f(value, locations, weights), (value, locations, weights), grad)
    theirs = torch.autograd.grad(detr_ops.ms_deform_attn(value, shapes, starts, locations, weights),
                                 (value, locations, weights), grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def tricky_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    b = torch.rand(n, 4, generator=g) * 10
    b[:, 2:] = b[:, :2] + torch.rand(n, 2, generator=g) * 5
    b[0] = torch.tensor([1.0, 1.0, 1.0, 1.0])   # a point
    b[1] = torch.tensor([3.0, 3.0, 2.0, 5.0])   # inverted corners
    b[2] = torch.tensor([float("nan"), 0.0, 1.0, 1.0])
    b[3] = torch.tensor([0.0, 0.0, float("inf"), 1.0])
    b[4] = torch.tensor([0.0, 0.0, 0.0, 5.0])   # zero width
    return b


@pytest.mark.parametrize("box_format", ["xyxy", "cxcywh"])
@pytest.mark.parametrize("generalized", [False, True], ids=["iou", "giou"])
def test_pairwise_iou_matches_native(box_format, generalized):
    a, b = tricky_boxes(9, 1), tricky_boxes(7, 2)
    expected = torch.ops.detr_ops.pairwise_iou(a, b, box_format, generalized)
    torch.testing.assert_close(onnx_boxes.pairwise_iou(a, b, box_format, generalized), expected, equal_nan=True)
    # batched, float64 and float16 (computed in float32, returned in float16, as the op does)
    ab, bb = a.view(3, 3, 4), b[:6].reshape(3, 2, 4)
    torch.testing.assert_close(onnx_boxes.pairwise_iou(ab, bb, box_format, generalized),
                               torch.ops.detr_ops.pairwise_iou(ab, bb, box_format, generalized), equal_nan=True)
    d = onnx_boxes.pairwise_iou(a.double(), b.double(), box_format, generalized)
    torch.testing.assert_close(d, torch.ops.detr_ops.pairwise_iou(a.double(), b.double(), box_format, generalized),
                               equal_nan=True)
    h = onnx_boxes.pairwise_iou(a.half(), b.half(), box_format, generalized)
    assert h.dtype == torch.float16
    torch.testing.assert_close(h, torch.ops.detr_ops.pairwise_iou(a.half(), b.half(), box_format, generalized),
                               equal_nan=True)


@pytest.mark.parametrize("box_format", ["xyxy", "cxcywh"])
@pytest.mark.parametrize("eps", [1e-7, 0.0])
def test_giou_loss_matches_native(box_format, eps):
    a = tricky_boxes(9, 3)
    for b in (a.flip(0).contiguous(), a.clone(), tricky_boxes(9, 4)):
        expected = torch.ops.detr_ops.giou_loss(a, b, box_format, eps)
        torch.testing.assert_close(onnx_boxes.giou_loss(a, b, box_format, eps), expected, equal_nan=True)
    loss = onnx_boxes.giou_loss(a.half(), a.half(), box_format, eps)
    assert loss.dtype == torch.float32  # the op's loss dtype for half boxes


def test_box_format_is_checked():
    a = tricky_boxes(5, 0)
    with pytest.raises(ValueError, match="box_format"):
        onnx_boxes.pairwise_iou(a, a, "xywh", True)


def test_decomposition_table_covers_every_registered_op():
    table = detr_ops.onnx.decompositions()
    ops = torch.ops.detr_ops
    for name in ("ms_deform_attn", "pairwise_iou", "giou_loss", "matching_cost", "batched_linear_sum_assignment"):
        assert getattr(ops, name).default in table, name
    assert table[ops.ms_deform_attn.default] is onnx_msda.ms_deform_attn_gather
    assert detr_ops.onnx.decompositions("grid_sample")[ops.ms_deform_attn.default] is \
        onnx_msda.ms_deform_attn_grid_sample
    full = detr_ops.onnx.decompositions(with_defaults=True)
    assert full[ops.pairwise_iou.default] is onnx_boxes.pairwise_iou
    defaults = set(torch.export.default_decompositions().keys())
    assert defaults and defaults <= set(full.keys())  # torch.export's own table, plus ours


@pytest.mark.parametrize("call", [
    lambda: detr_ops.onnx.decompositions("bilinear"),
    lambda: detr_ops.onnx.export_options(msda="GridSample").__enter__(),
    lambda: detr_ops.onnx.decompositions("tensorrt", tensorrt_plugin_version="3"),
], ids=["decompositions", "export_options", "plugin_version"])
def test_bad_options_name_the_argument(call):
    with pytest.raises(ValueError, match="msda|tensorrt_plugin_version"):
        call()


def test_training_only_ops_raise_a_clear_error():
    table = detr_ops.onnx.decompositions()
    cost = torch.rand(1, 3, 3)
    with pytest.raises(detr_ops.onnx.TrainingOnlyOpError, match="training-only.*assignment solver"):
        table[torch.ops.detr_ops.batched_linear_sum_assignment.default](cost, None, None, False)

    class Match(torch.nn.Module):
        def forward(self, logits, boxes, labels, tgt, num):
            return detr_ops.matching_cost(logits, boxes, labels, tgt, num)

    args = (torch.randn(2, 4, 3), torch.rand(2, 4, 4), torch.zeros(2, 2, dtype=torch.long), torch.rand(2, 2, 4),
            torch.tensor([2, 1]))
    with detr_ops.onnx.export_options(), pytest.raises(detr_ops.onnx.TrainingOnlyOpError, match="matching_cost"):
        torch.export.export(Match(), args)
    with detr_ops.onnx.export_options():
        Match()(*args)  # eager code inside the block (a training step) still runs the op


@pytest.mark.parametrize("msda", detr_ops.onnx.MSDA_MODES)
def test_eager_calls_inside_the_block_run_the_native_ops(msda):
    """The block changes what a tracer records, not eager results (the TensorRT node would compute
    zeros outside an export)."""
    attn = detr_ops.MSDeformAttn(d_model=8, n_levels=3, n_heads=2, n_points=2).double()
    shapes, starts, S = level_tensors(SMALL_LEVELS)
    query, ref, src = torch.randn(2, 4, 8).double(), torch.rand(2, 4, 3, 2).double(), torch.randn(2, S, 8).double()
    expected = attn(query, ref, src, shapes, starts)
    with detr_ops.onnx.export_options(msda=msda):
        torch.testing.assert_close(attn(query, ref, src, shapes, starts), expected, rtol=0, atol=0)


@pytest.mark.parametrize("msda", ["gather", "grid_sample"])
def test_torch_export_under_the_block_has_no_custom_ops(msda):
    """Every way of calling MSDA (public function, autograd.Function, module) traces as aten ops."""
    inputs = make_inputs(N=2, dtype=torch.float32, low=-0.3, high=1.3)

    class Calls(torch.nn.Module):
        def forward(self, value, shapes, starts, locations, weights):
            a = detr_ops.ms_deform_attn(value, shapes, starts, locations, weights)
            b = detr_ops.MSDeformAttnFunction.apply(value, shapes, starts, locations, weights, 64)
            corners = locations[:, :, 0, 0, 0]  # [N, Lq, 2]
            boxes = torch.cat([corners, corners + weights[:, :, 0, 0, :2]], -1)  # [N, Lq, 4] xyxy
            return a + b, detr_ops.generalized_box_iou(boxes, boxes.flip(1))

    with detr_ops.onnx.export_options(msda=msda):
        ep = torch.export.export(Calls(), inputs)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("detr_ops" in t for t in targets), targets
    assert ("aten.grid_sampler" in " ".join(targets)) == (msda == "grid_sample")
    out, giou = ep.module()(*inputs)
    expected = Calls()(*inputs)
    torch.testing.assert_close(out, expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(giou, expected[1])
