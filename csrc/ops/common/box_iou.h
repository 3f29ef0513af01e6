// IoU / GIoU of one pair of boxes and its gradient, shared by the CPU and CUDA kernels.
//
// T is the accumulation type (float for half/bfloat16/float inputs, double for double).
//
// Forward, for boxes a, b in (x0, y0, x1, y1):
//   inter = iw * ih if iw > 0 and ih > 0 else 0      (iw = min(a.x1, b.x1) - max(a.x0, b.x0), ...)
//   union = area(a) + area(b) - inter
//   iou   = inter / (union + eps)                    (0 when union + eps <= 0)
//   giou  = iou - (area_c - union) / (area_c + eps)  (the second term 0 when area_c + eps <= 0)
// with area_c the area of the smallest enclosing box; every width and height entering an area is
// clamped at 0. eps = 0 gives torchvision's generalized_box_iou, eps > 0 its
// generalized_box_iou_loss; on valid boxes the clamps and guards change nothing.
// They are what keep degenerate input finite: a zero-area box against anything gives iou 0, two
// identical zero-size boxes give iou 0 and giou 0, and a box with inverted corners counts as an
// empty box (area 0, no intersection) whose only effect is to widen the enclosing box.
//
// Gradients follow PyTorch autograd through that formula: where min/max tie, each side receives
// half (torch.maximum / torch.minimum); a clamp at 0 passes gradient when its input is >= 0
// (torch.clamp); an empty intersection (iw <= 0 or ih <= 0) passes none, as torchvision's masked
// intersection does.
//
// Non-finite input gives NaN, never a plausible number. The guards above are selects that would
// swallow a NaN (NaN > 0 is false: a NaN width became 0, and a box with a NaN corner got IoU 3
// against a valid one). So the value and all eight corner gradients of a pair are NaN when
//   * a corner of either box (after the cxcywh conversion) is NaN or +-inf (or two corners' difference
//     overflows): relu_side makes that box's area NaN, and the NaN flows through the union and the
//     guards of the quotients, which are written to let NaN through;
//   * an area overflows the accumulation type (a box's, the union's or the enclosing box's: float32
//     areas beyond 3.4e38, sides of about 1.8e19): an infinite union is poisoned with du - du (0 for
//     a finite du, NaN otherwise), an infinite enclosing area gives (inf - union) / inf = NaN;
//   * (gradient only) the upstream gradient is NaN or +-inf.
// torchvision returns NaN, +-inf or a finite 0 for such pairs, depending on where the inf lands.
// Finite results are unchanged, and the pair loops stay branch-free and vectorised: the NaN rule
// costs a multiply per box side and two instructions per pair (tests/test_box_iou.py pins the
// cases; no build flag lets a compiler fold x - x or x * 0: no -ffast-math / -ffinite-math-only).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/Half.h>

#include <type_traits>

#include "ops/common/hostdevice.h"

namespace detr_ops::box {

template <typename T>
struct Box {
  T x0, y0, x1, y1;
};

// Converts the four stored numbers to corners: (x0, y0, x1, y1) or (cx, cy, w, h).
template <typename T>
DETR_HD Box<T> make_box(T a, T b, T c, T d, bool cxcywh) {
  if (cxcywh) {
    const T hw = T(0.5) * c, hh = T(0.5) * d;
    return {a - hw, b - hh, a + hw, b + hh};
  }
  return {a, b, c, d};
}

// Gradient w.r.t. corners -> gradient w.r.t. the stored numbers (identity for xyxy).
template <typename T>
DETR_HD Box<T> corner_grad_to_format(const Box<T>& g, bool cxcywh) {
  if (cxcywh) {
    return {g.x0 + g.x1, g.y0 + g.y1, T(0.5) * (g.x1 - g.x0), T(0.5) * (g.y1 - g.y0)};
  }
  return g;
}

template <typename T>
DETR_HD T max_(T a, T b) { return a > b ? a : b; }
template <typename T>
DETR_HD T min_(T a, T b) { return a < b ? a : b; }
// d max(a, b) / da and d min(a, b) / da as autograd defines them (ties split evenly). Selects, not
// bool-to-float arithmetic: the conversions stop g++ from vectorising the gradient loop.
template <typename T>
DETR_HD T dmax_da(T a, T b) { return a > b ? T(1) : (a == b ? T(0.5) : T(0)); }
template <typename T>
DETR_HD T dmin_da(T a, T b) { return a < b ? T(1) : (a == b ? T(0.5) : T(0)); }

// max(x, 0) and its derivative as torch.clamp(min=0) defines it. relu_ (one max instruction) makes
// NaN 0: it is used for the intersection and the enclosing box, where a NaN comes only from a NaN
// corner, whose box already has a NaN area (relu_side) that makes the result NaN.
template <typename T>
DETR_HD T relu_(T x) { return x > T(0) ? x : T(0); }
template <typename T>
DETR_HD T drelu_(T x) { return x >= T(0) ? T(1) : T(0); }

// relu_ of a box's own width or height, NaN where the side is NaN or +-inf, that is where a corner
// is NaN or infinite (or the corners' difference overflows). With x * 0 (NaN for NaN and +-inf, 0
// or -0 otherwise) the comparison fails for a non-finite x and the select takes x * 0: a multiply
// and a max. Without it a -inf side (x0 = +inf, or x1 = -inf) would make an empty box, and a
// finite result. A finite negative side gives -0, an area of +-0: finite results do not change.
template <typename T>
DETR_HD T relu_side(T x) {
  const T zero_or_nan = x * T(0);
  return x > zero_or_nan ? x : zero_or_nan;
}

// 0 for a finite x, NaN for NaN and +-inf (see the comment at the top).
template <typename T>
DETR_HD T poison_(T x) { return x - x; }

// Branch-free on purpose: every division has a safe denominator and the guards are selects, so
// the CPU loops over box pairs vectorise (a conditional division would not be if-converted).
//
// How NaN gets through (see the top): a non-finite side makes its area NaN (relu_side), and NaN
// flows on through the union and the guards of the quotients, which let NaN through (NaN <= 0 is
// false). What stays finite by itself is an overflowing union (iou = inter / inf = 0): poisoned
// with du - du. An overflowing enclosing area gives (inf - union) / inf = NaN by itself.
//
// Each quotient keeps its guard as a select around it although the quotient is 0 / 1 = 0 there
// anyway (union + eps <= 0 only for eps = 0 and a union of 0, where the intersection is 0 too):
// with the select, g++ divides by the raw denominator and masks the result (a compare and an
// and), while the safe denominator alone costs a blend; measured 5-10% of the row loop.
template <typename T>
DETR_HD T iou_value(const Box<T>& a, const Box<T>& b, T eps, bool generalized) {
  // a's terms are loop-invariant in the pairwise row loops and are hoisted out of them
  const T area_a = relu_side(a.x1 - a.x0) * relu_side(a.y1 - a.y0);
  const T area_b = relu_side(b.x1 - b.x0) * relu_side(b.y1 - b.y0);
  const T iw = min_(a.x1, b.x1) - max_(a.x0, b.x0);
  const T ih = min_(a.y1, b.y1) - max_(a.y0, b.y0);
  const T inter = relu_(iw) * relu_(ih);  // iw * ih where both are positive, else 0: two max, a mul
  const T uni = area_a + area_b - inter;
  const T du = uni + eps;
  const T iou = du <= T(0) ? T(0) : inter / (du <= T(0) ? T(1) : du);
  // + poison also turns a -0 result (from a -0 area or intersection) into +0
  const T poison = poison_(du);
  if (!generalized) return iou + poison;
  const T cw = relu_(max_(a.x1, b.x1) - min_(a.x0, b.x0));
  const T ch = relu_(max_(a.y1, b.y1) - min_(a.y0, b.y0));
  const T area_c = cw * ch;
  const T dc = area_c + eps;
  return (iou - (dc <= T(0) ? T(0) : (area_c - uni) / (dc <= T(0) ? T(1) : dc))) + poison;
}

// Adds g * d(iou_value)/d(corners) to ga and gb. Branch-free like iou_value, with the same NaN
// rule; a NaN or infinite g also gives NaN. The poison is added to g_uni, which reaches all eight
// corner gradients (through g_aw, g_ah, g_bw, g_bh, whose other factors are finite or NaN).
template <typename T>
DETR_HD void iou_grad(const Box<T>& a, const Box<T>& b, T eps, bool generalized, T g, Box<T>& ga, Box<T>& gb) {
  const T raw_aw = a.x1 - a.x0, raw_ah = a.y1 - a.y0, raw_bw = b.x1 - b.x0, raw_bh = b.y1 - b.y0;
  const T aw = relu_side(raw_aw), ah = relu_side(raw_ah), bw = relu_side(raw_bw), bh = relu_side(raw_bh);
  const T iw = min_(a.x1, b.x1) - max_(a.x0, b.x0);
  const T ih = min_(a.y1, b.y1) - max_(a.y0, b.y0);
  // a T, not a bool: a bool mask next to double-width masks stops the loop from vectorising
  const T overlap = ((iw > T(0)) & (ih > T(0))) ? T(1) : T(0);
  const T inter = overlap > T(0) ? iw * ih : T(0);
  const T uni = aw * ah + bw * bh - inter;
  const T du = uni + eps;
  const T r_u = T(1) / (du <= T(0) ? T(1) : du);  // one division per denominator (divisions dominate)
  const T q_inter = g * r_u;
  // d iou / d inter = 1 / du, d iou / d uni = -inter / du^2. The first keeps its select: where
  // du <= 0 the guard makes iou 0 (an intersection that underflows to 0 may still have iw, ih > 0),
  // and its gradient is 0 too. The second is 0 there anyway (inter = 0).
  T g_inter = du <= T(0) ? T(0) : q_inter;
  T g_uni = -q_inter * inter * r_u;
  T poison = poison_(du) + poison_(g);
  if (generalized) {
    const T cx0 = min_(a.x0, b.x0), cx1 = max_(a.x1, b.x1);
    const T cy0 = min_(a.y0, b.y0), cy1 = max_(a.y1, b.y1);
    const T cw = relu_(cx1 - cx0), ch = relu_(cy1 - cy0);
    const T dc = cw * ch + eps;
    // giou = iou - (area_c - uni) / dc  =>  d/d area_c = -du / dc^2 (0 where dc <= 0, since du = 0
    // there), d/d uni = 1 / dc (0 where dc <= 0: the guard)
    const T r_c = T(1) / (dc <= T(0) ? T(1) : dc);
    const T q_enc = g * r_c;
    const T g_area_c = -q_enc * du * r_c;
    g_uni += dc <= T(0) ? T(0) : q_enc;
    poison += poison_(dc);
    const T g_cw = g_area_c * ch * drelu_(cx1 - cx0), g_ch = g_area_c * cw * drelu_(cy1 - cy0);
    // the two sides of a min or max share its gradient: d/da + d/db = 1 (ties: 0.5 each)
    const T mx1 = dmax_da(a.x1, b.x1), mx0 = dmin_da(a.x0, b.x0);
    const T my1 = dmax_da(a.y1, b.y1), my0 = dmin_da(a.y0, b.y0);
    ga.x1 += g_cw * mx1;
    gb.x1 += g_cw * (T(1) - mx1);
    ga.x0 -= g_cw * mx0;
    gb.x0 -= g_cw * (T(1) - mx0);
    ga.y1 += g_ch * my1;
    gb.y1 += g_ch * (T(1) - my1);
    ga.y0 -= g_ch * my0;
    gb.y0 -= g_ch * (T(1) - my0);
  }
  // uni = area_a + area_b - inter
  g_uni += poison;
  g_inter -= g_uni;
  const T g_aw = g_uni * ah * drelu_(raw_aw), g_ah = g_uni * aw * drelu_(raw_ah);
  const T g_bw = g_uni * bh * drelu_(raw_bw), g_bh = g_uni * bw * drelu_(raw_bh);
  ga.x1 += g_aw;
  ga.x0 -= g_aw;
  ga.y1 += g_ah;
  ga.y0 -= g_ah;
  gb.x1 += g_bw;
  gb.x0 -= g_bw;
  gb.y1 += g_bh;
  gb.y0 -= g_bh;
  // inter = iw * ih where both are positive
  const T g_iw = overlap > T(0) ? g_inter * ih : T(0), g_ih = overlap > T(0) ? g_inter * iw : T(0);
  const T nx1 = dmin_da(a.x1, b.x1), nx0 = dmax_da(a.x0, b.x0);
  const T ny1 = dmin_da(a.y1, b.y1), ny0 = dmax_da(a.y0, b.y0);
  ga.x1 += g_iw * nx1;
  gb.x1 += g_iw * (T(1) - nx1);
  ga.x0 -= g_iw * nx0;
  gb.x0 -= g_iw * (T(1) - nx0);
  ga.y1 += g_ih * ny1;
  gb.y1 += g_ih * (T(1) - ny1);
  ga.y0 -= g_ih * ny0;
  gb.y0 -= g_ih * (T(1) - ny0);
}

// Gradients can legitimately exceed float16's range (two distinct point boxes under the loss give
// 1/eps): the kernels store them saturated at the largest finite value instead of as inf. A NaN
// fails both comparisons and passes through as NaN (not fmin/fmax, which would drop it).
template <typename T>
DETR_HD T saturate_for_half(T x) {
  const T limit = T(65504);
  return x > limit ? limit : (x < -limit ? -limit : x);
}

// Accumulation type -> stored gradient type, saturating for float16 (see saturate_for_half).
template <typename scalar_t, typename T>
DETR_HD scalar_t narrow(T x) {
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    return static_cast<scalar_t>(saturate_for_half(x));
  } else {
    return static_cast<scalar_t>(x);
  }
}

// One stored [4]-number box -> corners in the accumulation type (float for half and bfloat16), and
// corner-format gradients -> the stored type; shared by the CPU and CUDA box kernels.
template <typename scalar_t>
DETR_HD Box<at::opmath_type<scalar_t>> load_box(const scalar_t* p, bool cxcywh) {
  using acc_t = at::opmath_type<scalar_t>;
  return make_box<acc_t>(static_cast<acc_t>(p[0]), static_cast<acc_t>(p[1]), static_cast<acc_t>(p[2]),
                         static_cast<acc_t>(p[3]), cxcywh);
}

template <typename scalar_t, typename acc_t>
DETR_HD void store_box(scalar_t* p, const Box<acc_t>& g) {
  p[0] = narrow<scalar_t>(g.x0);
  p[1] = narrow<scalar_t>(g.y0);
  p[2] = narrow<scalar_t>(g.x1);
  p[3] = narrow<scalar_t>(g.y1);
}

}  // namespace detr_ops::box
