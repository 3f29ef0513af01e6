"""GIoU: the fused pairwise and elementwise kernels against the textbook PyTorch formula
(torchvision's / DETR's ``box_ops``), forward and forward+backward, float32."""
import pytest
import torch

import detr_ops
from benchmarks.backends import detr_ops_backends
from benchmarks.shapes import DEVICE, GIOU_LOSS_PAIRS, GIOU_PAIRWISE
from benchmarks.timing import check_close, measure, rotate
from detr_ops.reference import generalized_box_iou_loss_reference, generalized_box_iou_reference

IMPLS = [("baseline", "torch formula", None)] + [("detr_ops", "detr_ops", b) for b in detr_ops_backends()]


def _boxes(n, generator):
    xy = torch.rand(n, 2, generator=generator)
    wh = torch.rand(n, 2, generator=generator) * 0.3 + 0.01
    return torch.cat([xy, xy + wh], dim=1).to(DEVICE)


def _pairwise(role, backend):
    if role == "baseline":
        return generalized_box_iou_reference
    return lambda a, b: detr_ops.generalized_box_iou(a, b, backend=backend)


def _loss(role, backend):
    if role == "baseline":
        return generalized_box_iou_loss_reference
    return lambda a, b: detr_ops.generalized_box_iou_loss(a, b, backend=backend)


@pytest.mark.parametrize("shape", GIOU_PAIRWISE, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("role,impl,backend", IMPLS, ids=lambda x: str(x))
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_giou_pairwise(benchmark, shape, role, impl, backend, pass_):
    n, m = shape
    g = torch.Generator().manual_seed(0)
    fn = _pairwise(role, backend)
    a, b = _boxes(n, g), _boxes(m, g)
    check_close(fn(a[:500], b[:300]), generalized_box_iou_reference(a[:500].double(), b[:300].double()), rtol=1e-4, atol=1e-5)
    next_inputs = rotate(lambda: (_boxes(n, g), _boxes(m, g), torch.randn(n, m, device=DEVICE)), 4, DEVICE)
    if pass_ == "fwd":
        def run():
            x, y, _ = next_inputs()
            return fn(x, y)
    else:
        def run():
            x, y, w = next_inputs()
            x, y = x.requires_grad_(), y.requires_grad_()
            return torch.autograd.grad(fn(x, y), [x, y], grad_outputs=w)
    measure(benchmark, run, op="giou_pairwise", case=f"{n}x{m}", impl=impl, role=role, backend=backend or "",
            pass_=pass_, device=DEVICE)


@pytest.mark.parametrize("pairs", GIOU_LOSS_PAIRS, ids=lambda k: f"{k // 1_000_000}M")
@pytest.mark.parametrize("role,impl,backend", IMPLS, ids=lambda x: str(x))
def test_giou_loss(benchmark, pairs, role, impl, backend):
    g = torch.Generator().manual_seed(0)
    fn = _loss(role, backend)
    a, b = _boxes(1000, g), _boxes(1000, g)
    check_close(fn(a, b), generalized_box_iou_loss_reference(a.double(), b.double()), rtol=1e-4, atol=1e-5)
    next_inputs = rotate(lambda: (_boxes(pairs, g), _boxes(pairs, g), torch.randn(pairs, device=DEVICE)), 4, DEVICE)

    def run():
        x, y, w = next_inputs()
        x, y = x.requires_grad_(), y.requires_grad_()
        return torch.autograd.grad(fn(x, y), [x, y], grad_outputs=w)

    measure(benchmark, run, op="giou_loss", case=f"{pairs // 1_000_000}M pairs", impl=impl, role=role,
            backend=backend or "", pass_="fwd+bwd", device=DEVICE)
