"""Box math of the Triton kernels, shared by the box-overlap kernels (box_iou.py) and the matching
cost (matching_cost.py): loading boxes as corners, IoU / GIoU of box pairs and its gradient.

The same formulas, guards and tie rules as csrc/ops/common/box_iou.h (read that header's comment):
widths and heights clamped at 0, a denominator <= 0 gives a 0 term, min/max ties split the
gradient evenly, a clamp passes gradient at 0. Everything is computed in the dtype of the loaded
values (float32, or float64 for float64 boxes).
"""
import triton
import triton.language as tl


@triton.jit
def cxcywh_to_corners(cx, cy, w, h):
    return cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h


@triton.jit
def load_box(ptr, idx, mask, CXCYWH: tl.constexpr, FP64: tl.constexpr):
    a = tl.load(ptr + idx * 4 + 0, mask=mask, other=0.0)
    b = tl.load(ptr + idx * 4 + 1, mask=mask, other=0.0)
    c = tl.load(ptr + idx * 4 + 2, mask=mask, other=0.0)
    d = tl.load(ptr + idx * 4 + 3, mask=mask, other=0.0)
    if FP64:
        a, b, c, d = a.to(tl.float64), b.to(tl.float64), c.to(tl.float64), d.to(tl.float64)
    else:
        a, b, c, d = a.to(tl.float32), b.to(tl.float32), c.to(tl.float32), d.to(tl.float32)
    if CXCYWH:
        return cxcywh_to_corners(a, b, c, d)
    return a, b, c, d


@triton.jit
def store_grad(ptr, idx, mask, g0, g1, g2, g3, CXCYWH: tl.constexpr):
    """Stores a corner gradient, converted to the gradient of the stored format."""
    if CXCYWH:
        g0, g1, g2, g3 = g0 + g2, g1 + g3, 0.5 * (g2 - g0), 0.5 * (g3 - g1)
    ty = ptr.dtype.element_ty
    if ty == tl.float16:  # saturate instead of overflowing to inf (box_iou.h: saturate_for_half)
        g0, g1 = tl.clamp(g0, -65504.0, 65504.0), tl.clamp(g1, -65504.0, 65504.0)
        g2, g3 = tl.clamp(g2, -65504.0, 65504.0), tl.clamp(g3, -65504.0, 65504.0)
    tl.store(ptr + idx * 4 + 0, g0.to(ty), mask=mask)
    tl.store(ptr + idx * 4 + 1, g1.to(ty), mask=mask)
    tl.store(ptr + idx * 4 + 2, g2.to(ty), mask=mask)
    tl.store(ptr + idx * 4 + 3, g3.to(ty), mask=mask)


@triton.jit
def relu(x):
    return tl.where(x > 0, x, 0.0)


@triton.jit
def drelu(x):
    return tl.where(x >= 0, 1.0, 0.0)


@triton.jit
def iou(ax0, ay0, ax1, ay1, bx0, by0, bx1, by1, eps, GENERALIZED: tl.constexpr):
    iw = tl.minimum(ax1, bx1) - tl.maximum(ax0, bx0)
    ih = tl.minimum(ay1, by1) - tl.maximum(ay0, by0)
    inter = tl.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    uni = relu(ax1 - ax0) * relu(ay1 - ay0) + relu(bx1 - bx0) * relu(by1 - by0) - inter
    du = uni + eps
    iou = tl.where(du > 0, inter / tl.where(du > 0, du, 1.0), 0.0)
    if GENERALIZED:
        cw = relu(tl.maximum(ax1, bx1) - tl.minimum(ax0, bx0))
        ch = relu(tl.maximum(ay1, by1) - tl.minimum(ay0, by0))
        area_c = cw * ch
        dc = area_c + eps
        iou = iou - tl.where(dc > 0, (area_c - uni) / tl.where(dc > 0, dc, 1.0), 0.0)
    return iou


@triton.jit
def dmax(a, b):
    return tl.where(a > b, 1.0, tl.where(a == b, 0.5, 0.0))


@triton.jit
def dmin(a, b):
    return tl.where(a < b, 1.0, tl.where(a == b, 0.5, 0.0))


@triton.jit
def iou_grad(ax0, ay0, ax1, ay1, bx0, by0, bx1, by1, g, eps, GENERALIZED: tl.constexpr):
    """g * d(iou)/d(corners of a, corners of b), the same rules as box_iou.h's iou_grad."""
    aw = relu(ax1 - ax0)
    ah = relu(ay1 - ay0)
    bw = relu(bx1 - bx0)
    bh = relu(by1 - by0)
    iw = tl.minimum(ax1, bx1) - tl.maximum(ax0, bx0)
    ih = tl.minimum(ay1, by1) - tl.maximum(ay0, by0)
    overlap = (iw > 0) & (ih > 0)
    inter = tl.where(overlap, iw * ih, 0.0)
    uni = aw * ah + bw * bh - inter
    du = uni + eps
    safe_du = tl.where(du > 0, du, 1.0)
    g_inter = tl.where(du > 0, g / safe_du, 0.0)
    g_uni = tl.where(du > 0, -g * inter / (safe_du * safe_du), 0.0)
    zero = g * 0.0
    gax0, gay0, gax1, gay1 = zero, zero, zero, zero
    gbx0, gby0, gbx1, gby1 = zero, zero, zero, zero
    if GENERALIZED:
        raw_cw = tl.maximum(ax1, bx1) - tl.minimum(ax0, bx0)
        raw_ch = tl.maximum(ay1, by1) - tl.minimum(ay0, by0)
        cw = relu(raw_cw)
        ch = relu(raw_ch)
        dc = cw * ch + eps
        safe_dc = tl.where(dc > 0, dc, 1.0)
        g_area_c = tl.where(dc > 0, -g * du / (safe_dc * safe_dc), 0.0)
        g_uni += tl.where(dc > 0, g / safe_dc, 0.0)
        g_cw = g_area_c * ch * drelu(raw_cw)
        g_ch = g_area_c * cw * drelu(raw_ch)
        gax1 += g_cw * dmax(ax1, bx1)
        gbx1 += g_cw * dmax(bx1, ax1)
        gax0 -= g_cw * dmin(ax0, bx0)
        gbx0 -= g_cw * dmin(bx0, ax0)
        gay1 += g_ch * dmax(ay1, by1)
        gby1 += g_ch * dmax(by1, ay1)
        gay0 -= g_ch * dmin(ay0, by0)
        gby0 -= g_ch * dmin(by0, ay0)
    g_inter -= g_uni
    g_aw = g_uni * ah * drelu(ax1 - ax0)
    g_ah = g_uni * aw * drelu(ay1 - ay0)
    g_bw = g_uni * bh * drelu(bx1 - bx0)
    g_bh = g_uni * bw * drelu(by1 - by0)
    gax1 += g_aw
    gax0 -= g_aw
    gay1 += g_ah
    gay0 -= g_ah
    gbx1 += g_bw
    gbx0 -= g_bw
    gby1 += g_bh
    gby0 -= g_bh
    g_iw = tl.where(overlap, g_inter * ih, 0.0)
    g_ih = tl.where(overlap, g_inter * iw, 0.0)
    gax1 += g_iw * dmin(ax1, bx1)
    gbx1 += g_iw * dmin(bx1, ax1)
    gax0 -= g_iw * dmax(ax0, bx0)
    gbx0 -= g_iw * dmax(bx0, ax0)
    gay1 += g_ih * dmin(ay1, by1)
    gby1 += g_ih * dmin(by1, ay1)
    gay0 -= g_ih * dmax(ay0, by0)
    gby0 -= g_ih * dmax(by0, ay0)
    return gax0, gay0, gax1, gay1, gbx0, gby0, gbx1, gby1
