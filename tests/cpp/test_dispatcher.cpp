// Calls detr_ops operators through the PyTorch dispatcher, as a C++/libtorch user would after
// linking libdetr_ops, and checks hand-computed results. Exit code 0 on success.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>

namespace {

int failures = 0;

void expect_near(double got, double want, const char* what) {
  if (std::abs(got - want) > 1e-12) {
    std::printf("FAIL %s: got %.15g, want %.15g\n", what, got, want);
    ++failures;
  } else {
    std::printf("ok   %s = %.15g\n", what, got);
  }
}

}  // namespace

int main() {
  auto pairwise = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("detr_ops::pairwise_iou", "")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, bool)>();
  auto loss = c10::Dispatcher::singleton()
                  .findSchemaOrThrow("detr_ops::giou_loss", "")
                  .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, double)>();

  const auto opts = at::TensorOptions().dtype(at::kDouble);
  // a = [0,0,2,2]; b0 = [1,1,3,3] overlaps it by 1 (union 7, enclosing 9); b1 = [3,0,4,1] is disjoint.
  const at::Tensor a = at::tensor({0.0, 0.0, 2.0, 2.0}, opts).view({1, 4});
  const at::Tensor b = at::tensor({1.0, 1.0, 3.0, 3.0, 3.0, 0.0, 4.0, 1.0}, opts).view({2, 4});

  const at::Tensor giou = pairwise.call(a, b, "xyxy", true);
  expect_near(giou[0][0].item<double>(), 1.0 / 7.0 - 2.0 / 9.0, "giou(overlapping)");
  expect_near(giou[0][1].item<double>(), 0.0 - (8.0 - 5.0) / 8.0, "giou(disjoint)");
  const at::Tensor iou = pairwise.call(a, b, "xyxy", false);
  expect_near(iou[0][0].item<double>(), 1.0 / 7.0, "iou(overlapping)");

  const at::Tensor l = loss.call(a, b.slice(0, 0, 1), "xyxy", 0.0);
  expect_near(l[0].item<double>(), 1.0 - (1.0 / 7.0 - 2.0 / 9.0), "giou_loss");

  bool threw = false;
  try {
    pairwise.call(a, b, "xywh", true);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("box_format") != std::string::npos;
  }
  if (!threw) {
    std::printf("FAIL a bad box_format must raise an error naming box_format\n");
    ++failures;
  } else {
    std::printf("ok   bad box_format raises\n");
  }
  std::printf("%d passed, %d failed\n", 5 - failures, failures);
  return failures == 0 ? 0 : 1;
}
