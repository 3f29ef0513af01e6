// detr_ops._C.linear_sum_assignment: a drop-in for scipy.optimize.linear_sum_assignment.
//
// The input goes through the same numpy conversion as scipy's (any array-like to a C-contiguous
// float64 array, "safe" casting, the same errors for what cannot be converted), then the host
// solver in ops/cpu/linear_sum_assignment_solver.h (also the CPU kernel's) runs with the GIL
// released (except for tiny problems). Each thread keeps one solver whose buffers are reused
// across calls: at DETR sizes allocation is a visible share of the time.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <optional>
#include <string>

#include "bindings/bindings.h"
#include "ops/cpu/linear_sum_assignment_solver.h"

namespace py = pybind11;

namespace detr_ops::bindings {
namespace {

// Working copies above this many elements are freed after the call instead of kept per thread.
constexpr size_t kKeepElements = size_t(1) << 20;
// Below this many elements the solve takes about as long as releasing and re-taking the GIL, so
// it runs with the GIL held (other threads wait at most a few microseconds).
constexpr int64_t kReleaseGilElements = 2048;

lsa::Solver& thread_solver() {
  thread_local lsa::Solver solver;
  return solver;
}

py::tuple linear_sum_assignment(const py::object& cost_matrix, const py::object& maximize_obj) {
  // scipy parses maximize with the "p" format: any object, by its truth value.
  const int truth = PyObject_IsTrue(maximize_obj.ptr());
  if (truth < 0) throw py::error_already_set();
  const bool maximize = truth != 0;

  // C-contiguous float64 without forcecast: the same conversion (and failures) as scipy's
  // PyArray_ContiguousFromAny(obj, NPY_DOUBLE, 0, 0).
  py::array_t<double, py::array::c_style> cost(cost_matrix);
  if (cost.ndim() != 2) {
    throw py::value_error("expected a matrix (2-D array), got a " + std::to_string(cost.ndim()) + " array");
  }
  const int64_t nr = cost.shape(0), nc = cost.shape(1);
  const int64_t n = std::min(nr, nc);
  py::array_t<int64_t> row_ind(n), col_ind(n);
  if (n == 0) return py::make_tuple(row_ind, col_ind);

  const double* data = cost.data();
  int64_t* rows = row_ind.mutable_data();
  int64_t* cols = col_ind.mutable_data();
  lsa::Status status = lsa::kOk;
  bool out_of_memory = false;
  {
    std::optional<py::gil_scoped_release> release;
    if (nr * nc >= kReleaseGilElements) release.emplace();
    lsa::Solver& solver = thread_solver();
    try {
      if (!maximize && nr <= nc) {
        status = solver.solve_in_place(data, nr, nc);
      } else {
        status = solver.load(nr, nc, maximize, 1, [data, nc](int64_t i, int64_t j) { return data[i * nc + j]; });
        if (status == lsa::kOk) status = solver.solve_loaded();
      }
      if (status == lsa::kOk) {
        if (!solver.transposed()) {
          // Every row is matched: rows are 0..nr-1 in order.
          solver.col_for_row(cols);
          for (int64_t i = 0; i < n; ++i) rows[i] = i;
        } else {
          // Some rows are unmatched: list the matched ones in ascending order, as scipy's argsort.
          std::vector<int64_t> col_for_row(nr);
          solver.col_for_row(col_for_row.data());
          int64_t k = 0;
          for (int64_t i = 0; i < nr; ++i) {
            if (col_for_row[i] >= 0) {
              rows[k] = i;
              cols[k] = col_for_row[i];
              ++k;
            }
          }
        }
      }
    } catch (const std::exception&) {  // std::bad_alloc, or std::length_error past max_size
      out_of_memory = true;  // raised below, with the GIL held again
    }
    solver.trim(kKeepElements);
  }
  if (out_of_memory) {
    // The working memory is the float64 copy (maximize or tall problems) plus about 80 bytes per row
    // and column: name the problem, not only the failed allocation.
    PyErr_SetString(PyExc_MemoryError, ("linear_sum_assignment: not enough memory to solve a " + std::to_string(nr) +
                                        " x " + std::to_string(nc) + " cost matrix").c_str());
    throw py::error_already_set();
  }
  if (status == lsa::kInvalid) throw py::value_error("matrix contains invalid numeric entries");
  if (status == lsa::kInfeasible) throw py::value_error("cost matrix is infeasible");
  return py::make_tuple(row_ind, col_ind);
}

// Tests and benchmarks: which route this thread's last linear_sum_assignment call took.
std::string last_route() {
  switch (thread_solver().route()) {
    case lsa::Solver::kWarmRoute:
      return "warm";
    case lsa::Solver::kWarmThenScipyRoute:
      return "warm-rejected";
    default:
      return "scipy";
  }
}

}  // namespace

void register_linear_sum_assignment(py::module_& m) {
  m.def("_linear_sum_assignment_route", &last_route,
        "Not public API: the route of this thread's last linear_sum_assignment call: 'scipy' (scipy's\n"
        "loop alone), 'warm' (Jonker-Volgenant start, certified to be scipy's answer) or 'warm-rejected'\n"
        "(the certificate failed and scipy's loop solved it).");
  m.def("linear_sum_assignment", &linear_sum_assignment, py::arg("cost_matrix"), py::arg("maximize") = false,
        "Drop-in for scipy.optimize.linear_sum_assignment: identical indices (ties included) and errors.\n\n"
        "cost_matrix is any 2-D array-like (numpy array, nested lists, CPU torch tensor), converted to\n"
        "float64 as scipy does. Returns (row_ind, col_ind), int64 numpy arrays of length min(R, C) with\n"
        "row_ind ascending. +inf marks a forbidden pair. Raises ValueError for a non-2-D input, for NaN\n"
        "or -inf entries (+inf when maximizing), and when the forbidden pairs leave no complete matching.\n"
        "The GIL is released while solving (problems of 2048 elements and more).");
}

}  // namespace detr_ops::bindings
