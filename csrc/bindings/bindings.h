// Numpy-facing (non-torch-op) functions exposed by detr_ops._C. Each file in csrc/bindings adds
// its functions through one register_* function called from register_all.
#pragma once
#include <pybind11/pybind11.h>

namespace detr_ops::bindings {

void register_all(pybind11::module_& m);

// csrc/bindings/linear_sum_assignment.cpp: linear_sum_assignment (scipy drop-in).
void register_linear_sum_assignment(pybind11::module_& m);

// csrc/bindings/parallel.cpp: _parallel, probes of the CPU thread pool for the tests.
void register_parallel(pybind11::module_& m);

}  // namespace detr_ops::bindings
