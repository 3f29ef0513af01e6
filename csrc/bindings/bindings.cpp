#include "bindings/bindings.h"

namespace detr_ops::bindings {

void register_all(pybind11::module_& m) {
  register_linear_sum_assignment(m);
  register_parallel(m);
}

}  // namespace detr_ops::bindings
