"""Box math of the Triton kernels, shared by the box-overlap kernels (box_iou.py) and the matching
cost (matching_cost.py): loading boxes as corners, IoU / GIoU of box pairs and its gradient.

The same formulas, guards and tie rules as csrc/ops/common/box_iou.h (read that header's comment):
widths and heights clamped at 0, a denominator <= 0 gives a 0 term, min/max ties split the
gradient evenly, a clamp passes gradient at 0, and the same NaN rule: a pair with a NaN or
infinite corner, an overflowing union or enclosing area, or (gradient) a non-finite upstream
gradient gets NaN (relu_side and the poison x - x, as in the header). Everything is computed in
the dtype of the loaded values (float32, or float64 for float64 boxes).

Divisions are ``div`` below, IEEE round-to-nearest as in the C++ kernels: Triton's float32 ``/``
compiles to div.full.f32, an approximation with up to 2 ulp of error (the package builds without
fast math for the same reason, build_config.txt), so float32 uses tl.div_rn; tl.div_rn accepts
float32 only (a float64 kernel using it does not compile on a GPU, while the interpreter runs it),
and float64 ``/`` is already div.rn.f64.
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
        g0, g1, g2, g3 = saturate_half(g0), saturate_half(g1), saturate_half(g2), saturate_half(g3)
    tl.store(ptr + idx * 4 + 0, g0.to(ty), mask=mask)
    tl.store(ptr + idx * 4 + 1, g1.to(ty), mask=mask)
    tl.store(ptr + idx * 4 + 2, g2.to(ty), mask=mask)
    tl.store(ptr + idx * 4 + 3, g3.to(ty), mask=mask)


@triton.jit
def saturate_half(x):
    """x limited to float16's finite range, NaN kept. Two selects, not tl.clamp: clamp's default
    (propagate_nan=NONE) compiles to min.xorsign.abs on a GPU, which turns NaN into +-65504; the
    interpreter keeps NaN, so only the PTX shows it (tests/test_box_iou_ptx.py)."""
    return tl.where(x > 65504.0, 65504.0, tl.where(x < -65504.0, -65504.0, x))


@triton.jit
def div(a, b):
    """a / b rounded to nearest (IEEE) in float32 and float64 (see the module docstring)."""
    if b.dtype == tl.float64:  # decided when the kernel compiles: one branch is generated
        q = a / b
    else:
        q = tl.div_rn(a, b)
    return q


@triton.jit
def poison(x):
    """0 for a finite x, NaN for NaN and +-inf (box_iou.h: poison_)."""
    return x - x


@triton.jit
def relu(x):
    """max(x, 0), NaN -> 0 (box_iou.h: relu_); for the intersection and the enclosing box."""
    return tl.where(x > 0, x, 0.0)


@triton.jit
def relu_side(x):
    """relu of a box's own width or height, NaN where it is NaN or +-inf (box_iou.h: relu_side)."""
    zero_or_nan = x * 0.0
    return tl.where(x > zero_or_nan, x, zero_or_nan)


@triton.jit
def drelu(x):
    return tl.where(x >= 0, 1.0, 0.0)


@triton.jit
def iou(ax0, ay0, ax1, ay1, bx0, by0, bx1, by1, eps, GENERALIZED: tl.constexpr):
    area_a = relu_side(ax1 - ax0) * relu_side(ay1 - ay0)
    area_b = relu_side(bx1 - bx0) * relu_side(by1 - by0)
    iw = tl.minimum(ax1, bx1) - tl.maximum(ax0, bx0)
    ih = tl.minimum(ay1, by1) - tl.maximum(ay0, by0)
    inter = relu(iw) * relu(ih)
    uni = area_a + area_b - inter
    du = uni + eps
    # the guards let NaN through (NaN <= 0 is false); an overflowing union is poisoned
    iou = tl.where(du <= 0, 0.0, div(inter, tl.where(du <= 0, 1.0, du)))
    bad = poison(du)
    if GENERALIZED:
        cw = relu(tl.maximum(ax1, bx1) - tl.minimum(ax0, bx0))
        ch = relu(tl.maximum(ay1, by1) - tl.minimum(ay0, by0))
        area_c = cw * ch
        dc = area_c + eps
        iou = iou - tl.where(dc <= 0, 0.0, div(area_c - uni, tl.where(dc <= 0, 1.0, dc)))
    return iou + bad


@triton.jit
def dmax(a, b):
    return tl.where(a > b, 1.0, tl.where(a == b, 0.5, 0.0))


@triton.jit
def dmin(a, b):
    return tl.where(a < b, 1.0, tl.where(a == b, 0.5, 0.0))


@triton.jit
def iou_grad(ax0, ay0, ax1, ay1, bx0, by0, bx1, by1, g, eps, GENERALIZED: tl.constexpr):
    """g * d(iou)/d(corners of a, corners of b), the same rules as box_iou.h's iou_grad."""
    raw_aw = ax1 - ax0
    raw_ah = ay1 - ay0
    raw_bw = bx1 - bx0
    raw_bh = by1 - by0
    aw = relu_side(raw_aw)
    ah = relu_side(raw_ah)
    bw = relu_side(raw_bw)
    bh = relu_side(raw_bh)
    iw = tl.minimum(ax1, bx1) - tl.maximum(ax0, bx0)
    ih = tl.minimum(ay1, by1) - tl.maximum(ay0, by0)
    overlap = (iw > 0) & (ih > 0)
    inter = tl.where(overlap, iw * ih, 0.0)
    uni = aw * ah + bw * bh - inter
    du = uni + eps
    # One reciprocal per denominator, as box_iou.h: a float64 division is a long instruction sequence
    # on a GPU, and each one kept more values live (the float64 gradient kernels spilled).
    safe_du = tl.where(du <= 0, 1.0, du)
    r_u = div(tl.zeros_like(safe_du) + 1.0, safe_du)
    q_inter = g * r_u
    g_inter = tl.where(du <= 0, 0.0, q_inter)
    g_uni = -q_inter * inter * r_u
    bad = poison(du) + poison(g)
    zero = g * 0.0
    gax0, gay0, gax1, gay1 = zero, zero, zero, zero
    gbx0, gby0, gbx1, gby1 = zero, zero, zero, zero
    if GENERALIZED:
        raw_cw = tl.maximum(ax1, bx1) - tl.minimum(ax0, bx0)
        raw_ch = tl.maximum(ay1, by1) - tl.minimum(ay0, by0)
        cw = relu(raw_cw)
        ch = relu(raw_ch)
        dc = cw * ch + eps
        safe_dc = tl.where(dc <= 0, 1.0, dc)
        r_c = div(tl.zeros_like(safe_dc) + 1.0, safe_dc)
        q_enc = g * r_c
        g_area_c = -q_enc * du * r_c
        g_uni += tl.where(dc <= 0, 0.0, q_enc)
        bad = bad + poison(dc)
        g_cw = g_area_c * ch * drelu(raw_cw)
        g_ch = g_area_c * cw * drelu(raw_ch)
        mx1 = dmax(ax1, bx1)
        mx0 = dmin(ax0, bx0)
        my1 = dmax(ay1, by1)
        my0 = dmin(ay0, by0)
        gax1 += g_cw * mx1
        gbx1 += g_cw * (1.0 - mx1)
        gax0 -= g_cw * mx0
        gbx0 -= g_cw * (1.0 - mx0)
        gay1 += g_ch * my1
        gby1 += g_ch * (1.0 - my1)
        gay0 -= g_ch * my0
        gby0 -= g_ch * (1.0 - my0)
    # the poison reaches all eight gradients through g_uni (box_iou.h)
    g_uni += bad
    g_inter -= g_uni
    g_aw = g_uni * ah * drelu(raw_aw)
    g_ah = g_uni * aw * drelu(raw_ah)
    g_bw = g_uni * bh * drelu(raw_bw)
    g_bh = g_uni * bw * drelu(raw_bh)
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
    nx1 = dmin(ax1, bx1)
    nx0 = dmax(ax0, bx0)
    ny1 = dmin(ay1, by1)
    ny0 = dmax(ay0, by0)
    gax1 += g_iw * nx1
    gbx1 += g_iw * (1.0 - nx1)
    gax0 -= g_iw * nx0
    gbx0 -= g_iw * (1.0 - nx0)
    gay1 += g_ih * ny1
    gby1 += g_ih * (1.0 - ny1)
    gay0 -= g_ih * ny0
    gby0 -= g_ih * (1.0 - ny0)
    return gax0, gay0, gax1, gay1, gbx0, gby0, gbx1, gby1
