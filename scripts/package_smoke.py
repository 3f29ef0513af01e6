"""Smoke test of an *installed* detr_ops (a wheel or an sdist install), run from outside the source
tree by scripts/check_package.sh in environments that have only torch (and numpy/scipy, the
package's dependencies): no pytest, no source checkout.

    python /path/to/package_smoke.py [--version X.Y.Z]

It checks that the package imported is the installed one (not a source tree on sys.path), that its
version matches the distribution's metadata, what ``build_info()`` reports, and then calls every
public op on a small input against a reference (scipy, or the float64 PyTorch formulas of
``detr_ops.reference``), backward included. Every ``torch.ops.detr_ops.*`` operator registered
(the ``*_triton`` twins aside: Triton is not installed here) must have run by the end: the calls run
under the profiler, which records each dispatcher op by name, so a new op that this script does not
reach fails it. Exits non-zero on the first failed check.
"""
import argparse
import importlib.metadata
import os
import sys
import sysconfig
import time

import numpy as np
import scipy.optimize
import torch

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def close(actual, expected, rtol=1e-5, atol=1e-6, what="result"):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def boxes_xyxy(n, generator, dtype=torch.float64):
    xy = torch.rand(n, 2, generator=generator, dtype=dtype)
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * 0.5 + 0.01
    return torch.cat([xy, xy + wh], 1)


@check
def installed_not_source(detr_ops, args):
    where = os.path.realpath(detr_ops.__file__)
    sites = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    assert any(where.startswith(s + os.sep) for s in sites), f"detr_ops imported from {where}, not from {sites}"
    return where


@check
def version(detr_ops, args):
    dist = importlib.metadata.version("detr-ops")
    assert detr_ops.__version__ == dist, f"detr_ops.__version__ {detr_ops.__version__} != metadata {dist}"
    if args.version:
        assert dist == args.version, f"installed {dist}, expected {args.version}"
    meta = importlib.metadata.metadata("detr-ops")
    license_ = meta.get("License-Expression") or meta.get("License")
    assert license_ == "BSD-3-Clause", f"license metadata {license_!r}"
    return dist


@check
def build_info(detr_ops, args):
    info = detr_ops.build_info()
    assert info["torch_version"] == torch.__version__.split("+")[0], info
    if torch.version.cuda is None:
        assert info["cuda"] is False and info["cuda_kernels"] is False, info
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        assert info["parallel"] is True, f"built without OpenMP: {info}"
    return info


@check
def linear_sum_assignment(detr_ops, args):
    rng = np.random.default_rng(0)
    for shape, maximize in (((30, 7), False), ((12, 12), True), ((5, 9), False)):
        cost = rng.random(shape)
        got = detr_ops.linear_sum_assignment(cost, maximize=maximize)
        want = scipy.optimize.linear_sum_assignment(cost, maximize=maximize)
        assert all(np.array_equal(a, b) for a, b in zip(got, want)), (shape, got, want)


@check
def batched_linear_sum_assignment(detr_ops, args):
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(3, 20, 6, generator=g, dtype=torch.float64)
    num_cols = torch.tensor([6, 3, 0])
    col_for_row, status = detr_ops.batched_linear_sum_assignment(cost, num_cols=num_cols)
    assert status.tolist() == [0, 0, 0], status
    for b in range(3):
        rows, cols = scipy.optimize.linear_sum_assignment(cost[b, :, : num_cols[b]].numpy())
        expected = torch.full((20,), -1, dtype=torch.int64)
        expected[torch.as_tensor(rows)] = torch.as_tensor(cols)
        assert torch.equal(col_for_row[b], expected), (b, col_for_row[b], expected)
    row_for_col = detr_ops.row_for_col(col_for_row, 6)
    for b, i in zip(*torch.nonzero(col_for_row >= 0, as_tuple=True)):
        assert row_for_col[b, col_for_row[b, i]] == i


@check
def matching_cost_and_matcher(detr_ops, args):
    from detr_ops.reference.hungarian_matcher import detr_cost_matrix

    g = torch.Generator().manual_seed(1)
    outputs = {"pred_logits": torch.randn(2, 15, 8, generator=g, dtype=torch.float64),
               "pred_boxes": torch.rand(2, 15, 4, generator=g, dtype=torch.float64) * 0.5 + 0.2}
    targets = [{"labels": torch.tensor([1, 7, 3]), "boxes": torch.rand(3, 4, generator=g, dtype=torch.float64) * 0.5 + 0.2},
               {"labels": torch.tensor([2]), "boxes": torch.rand(1, 4, generator=g, dtype=torch.float64) * 0.5 + 0.2}]
    for focal in (False, True):
        weights = dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal=focal)
        labels, boxes, num = detr_ops.pad_targets(targets)
        cost = detr_ops.matching_cost(outputs["pred_logits"], outputs["pred_boxes"], labels, boxes, num, **weights)
        full = detr_cost_matrix(outputs, targets, **weights)
        close(cost[0, :, :3], full[0, :, :3], what="matching_cost image 0")
        close(cost[1, :, :1], full[1, :, 3:4], what="matching_cost image 1")
        indices = detr_ops.HungarianMatcher(**weights)(outputs, targets)
        for b, (i, j) in enumerate(indices):
            block = full[b, :, :3] if b == 0 else full[b, :, 3:4]
            rows, cols = scipy.optimize.linear_sum_assignment(block.numpy())
            assert i.tolist() == rows.tolist() and j.tolist() == cols.tolist(), (focal, b, i, j, rows, cols)


@check
def box_ops(detr_ops, args):
    from detr_ops.reference import box_iou as ref

    g = torch.Generator().manual_seed(2)
    a, b = boxes_xyxy(9, g), boxes_xyxy(5, g)
    close(detr_ops.box_iou(a, b), ref.box_iou_reference(a, b), what="box_iou")
    close(detr_ops.generalized_box_iou(a, b), ref.generalized_box_iou_reference(a, b), what="generalized_box_iou")
    cxcywh = detr_ops.generalized_box_iou(detr_ops.box_xyxy_to_cxcywh(a), detr_ops.box_xyxy_to_cxcywh(b),
                                          box_format="cxcywh")
    close(cxcywh, ref.generalized_box_iou_reference(a, b), what="generalized_box_iou cxcywh")
    close(detr_ops.box_cxcywh_to_xyxy(detr_ops.box_xyxy_to_cxcywh(a)), a, what="box conversions")
    assert detr_ops.box_validity(a).all() and not detr_ops.box_validity(a[:, [2, 3, 0, 1]]).any()

    # Backward of both ops against autograd through the reference formulas.
    for ours_fn, ref_fn in ((lambda x, y: detr_ops.generalized_box_iou(x, y).sum(),
                             lambda x, y: ref.generalized_box_iou_reference(x, y).sum()),
                            (lambda x, y: detr_ops.generalized_box_iou_loss(x, y, reduction="mean"),
                             lambda x, y: ref.generalized_box_iou_loss_reference(x, y, reduction="mean"))):
        x1, y1 = a[:5].clone().requires_grad_(), b.clone().requires_grad_()
        x2, y2 = a[:5].clone().requires_grad_(), b.clone().requires_grad_()
        ours, theirs = ours_fn(x1, y1), ref_fn(x2, y2)
        close(ours, theirs, what="GIoU value")
        ours.backward()
        theirs.backward()
        close(x1.grad, x2.grad, what="GIoU grad boxes1")
        close(y1.grad, y2.grad, what="GIoU grad boxes2")


@check
def ms_deform_attn(detr_ops, args):
    g = torch.Generator().manual_seed(3)
    N, M, D, L, P, Lq = 2, 2, 4, 2, 2, 5
    shapes = torch.tensor([[6, 5], [3, 3]])
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    S = int(shapes.prod(1).sum())
    inputs = [torch.randn(N, S, M, D, generator=g, dtype=torch.float64),
              torch.rand(N, Lq, M, L, P, 2, generator=g, dtype=torch.float64),
              torch.softmax(torch.randn(N, Lq, M, L * P, generator=g, dtype=torch.float64), -1).view(N, Lq, M, L, P)]
    ours_in = [t.clone().requires_grad_() for t in inputs]
    ref_in = [t.clone().requires_grad_() for t in inputs]
    out = detr_ops.MSDeformAttnFunction.apply(ours_in[0], shapes, starts, ours_in[1], ours_in[2], 64)
    ref = detr_ops.ms_deform_attn_pytorch(ref_in[0], shapes, starts, ref_in[1], ref_in[2])
    close(out, ref, rtol=1e-9, atol=1e-10, what="MSDeformAttnFunction")
    close(detr_ops.ms_deform_attn(*[t.detach() for t in ours_in[:1]], shapes, starts,
                                  *[t.detach() for t in ours_in[1:]]), ref.detach(), rtol=1e-9, atol=1e-10,
          what="ms_deform_attn")
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    out.backward(grad)
    ref.backward(grad)
    for name, a, b in zip(("value", "sampling_locations", "attention_weights"), ours_in, ref_in):
        close(a.grad, b.grad, rtol=1e-7, atol=1e-9, what=f"MSDA grad {name}")

    module = detr_ops.MSDeformAttn(d_model=16, n_levels=L, n_heads=2, n_points=2)
    query = torch.randn(N, Lq, 16, generator=g)
    y = module(query, torch.rand(N, Lq, L, 2, generator=g), torch.randn(N, S, 16, generator=g), shapes, starts)
    assert y.shape == (N, Lq, 16) and torch.isfinite(y).all()
    y.sum().backward()
    assert module.value_proj.weight.grad is not None


@check
def ms_deform_attn_points(detr_ops, args):
    """Per-level point counts (D-FINE / RT-DETRv2): against the grid_sample reference, values and
    gradients."""
    g = torch.Generator().manual_seed(5)
    N, M, D, Lq, points = 2, 2, 4, 5, [3, 1]
    shapes = torch.tensor([[6, 5], [3, 3]])
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    S = int(shapes.prod(1).sum())
    inputs = [torch.randn(N, S, M, D, generator=g, dtype=torch.float64),
              torch.rand(N, Lq, M, sum(points), 2, generator=g, dtype=torch.float64),
              torch.rand(N, Lq, M, sum(points), generator=g, dtype=torch.float64)]
    ours_in = [t.clone().requires_grad_() for t in inputs]
    ref_in = [t.clone().requires_grad_() for t in inputs]
    out = detr_ops.ms_deform_attn(ours_in[0], shapes, starts, ours_in[1], ours_in[2], num_points_list=points)
    ref = detr_ops.ms_deform_attn_pytorch(ref_in[0], shapes, starts, ref_in[1], ref_in[2], num_points_list=points)
    close(out, ref, rtol=1e-9, atol=1e-10, what="ms_deform_attn(num_points_list=...)")
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    out.backward(grad)
    ref.backward(grad)
    for name, a, b in zip(("value", "sampling_locations", "attention_weights"), ours_in, ref_in):
        close(a.grad, b.grad, rtol=1e-7, atol=1e-9, what=f"MSDA points grad {name}")


def registered_ops():
    """The ``detr_ops::*`` operators registered in the dispatcher (overload names dropped)."""
    names = {n.split(".")[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith("detr_ops::")}
    return {n for n in names if not n.endswith("_triton")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", help="the version the installed distribution must have")
    args = parser.parse_args(argv)
    start = time.monotonic()
    import detr_ops

    print(f"detr_ops smoke test: python {sys.version.split()[0]}, torch {torch.__version__}, cwd {os.getcwd()}")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for fn in CHECKS:
            result = fn(detr_ops, args)
            print(f"  ok  {fn.__name__}" + (f": {result}" if result is not None else ""), flush=True)
    ran = {e.name.split(".")[0] for e in prof.events() if e.name.startswith("detr_ops::")}
    registered = registered_ops()
    assert registered, "no detr_ops:: operators are registered"
    not_run = sorted(registered - ran)
    assert not not_run, f"registered operators this smoke test never ran: {not_run} (add a check for them)"
    print(f"  ok  every registered operator ran: {', '.join(sorted(registered))}")
    print(f"detr_ops smoke test passed: {len(CHECKS)} checks in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
