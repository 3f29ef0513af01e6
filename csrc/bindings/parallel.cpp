// detr_ops._C._parallel: probes of the CPU kernels' thread pool (ops/cpu/parallel_tasks.h) for
// tests/test_parallel_tasks.py. Not public API: the kernels are what users call; these let the
// tests watch which thread ran which task, make a task throw, nest calls and slow helpers down.
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bindings/bindings.h"
#include "ops/cpu/parallel_tasks.h"

namespace py = pybind11;

namespace detr_ops::bindings {
namespace {

// A small number per thread, in the order threads first ran a probe task: the caller's is fixed
// by the test (it runs first on one thread), a helper's differs from it.
int64_t thread_number() {
  static std::atomic<int64_t> next{0};
  thread_local const int64_t number = next.fetch_add(1);
  return number;
}

struct Counter {
  int64_t tasks = 0;  // tasks this thread's State has seen (one State per thread per job)
};

// Runs num_tasks tasks; task t sleeps sleep_us (so that helpers can join on a loaded machine) and
// records [thread number of the task, tasks its thread's State had seen before it, and (nested)
// the thread numbers of an inner job of 4 tasks run from inside the task]. Task throw_at throws.
std::vector<std::vector<int64_t>> run_tasks(int64_t num_tasks, int64_t sleep_us, int64_t throw_at, bool nested,
                                            bool parallel) {
  std::vector<std::vector<int64_t>> record(static_cast<size_t>(std::max<int64_t>(num_tasks, 0)));
  py::gil_scoped_release no_gil;
  cpu::parallel_tasks<Counter>(
      num_tasks,
      [&](int64_t task, Counter& state) {
        std::vector<int64_t>& r = record[task];
        r.push_back(thread_number());
        r.push_back(state.tasks++);
        if (sleep_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
        if (task == throw_at) throw std::runtime_error("probe task " + std::to_string(task) + " failed");
        if (nested) {
          std::vector<int64_t> inner(4, -1);
          cpu::parallel_tasks<Counter>(4, [&](int64_t t, Counter&) { inner[t] = thread_number(); });
          r.insert(r.end(), inner.begin(), inner.end());
        }
      },
      parallel);
  return record;
}

// Runs num_tasks tasks of sleep_us each; task t records [its thread number, at::get_num_threads()
// as an ATen op called inside the task would see it].
std::vector<std::vector<int64_t>> aten_threads_in_tasks(int64_t num_tasks, int64_t sleep_us, bool parallel) {
  std::vector<std::vector<int64_t>> record(static_cast<size_t>(std::max<int64_t>(num_tasks, 0)));
  py::gil_scoped_release no_gil;
  struct NoState {};
  cpu::parallel_tasks<NoState>(
      num_tasks,
      [&](int64_t task, NoState&) {
        if (sleep_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
        record[task] = {thread_number(), at::get_num_threads()};
      },
      parallel);
  return record;
}

// cpu::parallel_for over [begin, end) with `grain`: the chunks it was cut into, sorted.
std::vector<std::pair<int64_t, int64_t>> chunks(int64_t begin, int64_t end, int64_t grain) {
  std::vector<std::pair<int64_t, int64_t>> out;
  std::mutex mutex;
  {
    py::gil_scoped_release no_gil;
    cpu::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) {
      std::lock_guard<std::mutex> lock(mutex);
      out.emplace_back(b, e);
    });
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

void register_parallel(py::module_& m) {
  py::module_ p = m.def_submodule("_parallel", "tests only: probes of the CPU kernels' thread pool");
  p.def("run_tasks", &run_tasks, py::arg("num_tasks"), py::arg("sleep_us") = 0, py::arg("throw_at") = -1,
        py::arg("nested") = false, py::arg("parallel") = true);
  p.def("aten_threads_in_tasks", &aten_threads_in_tasks, py::arg("num_tasks"), py::arg("sleep_us") = 0,
        py::arg("parallel") = true);
  p.def("chunks", &chunks, py::arg("begin"), py::arg("end"), py::arg("grain"));
  p.def("thread_number", &thread_number);
  p.def("helper_threads_started", &cpu::detail::helper_threads_started);
  p.def("tasks_run_by_helpers", &cpu::detail::tasks_run_by_helpers);
  p.def("set_helper_delay", &cpu::detail::set_helper_delay_for_tests, py::arg("microseconds"));
}

}  // namespace detr_ops::bindings
