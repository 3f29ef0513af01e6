#include "bindings/bindings.h"

namespace detr_ops::bindings {

void register_all(pybind11::module_& m) {
  (void)m;
}

}  // namespace detr_ops::bindings
