// parallel_tasks: at::parallel_for's threads, with tasks handed out one at a time.
//
// at::parallel_for gives each thread one fixed, equal share of the range. On a machine whose other
// cores sleep between parallel regions (a VM's idle vCPU can take a millisecond to wake) or are
// busy with something else, the thread that starts late finishes late and the caller waits for it:
// measured here, a 4 ms MSDA forward+backward took 6-8 ms that way. Here each thread takes the next
// unclaimed task until none is left, so a late or slow thread simply does fewer tasks.
//
// A task's result must not depend on which thread runs it (the kernels write disjoint outputs and
// visit their inputs in a fixed order inside a task), so results stay bitwise deterministic.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>

namespace detr_ops::cpu {

// Calls f(task, state) for every task in [0, num_tasks), in parallel unless `parallel` is false
// (work too small to pay for waking threads). Each thread default-constructs one State and passes
// it to all of its tasks (scratch buffers that are then allocated once).
template <typename State, typename F>
void parallel_tasks(int64_t num_tasks, const F& f, bool parallel = true) {
  if (num_tasks <= 0) return;
  const int64_t threads = std::min<int64_t>(num_tasks, at::get_num_threads());
  if (!parallel || threads <= 1 || at::in_parallel_region()) {
    State state{};
    for (int64_t task = 0; task < num_tasks; ++task) f(task, state);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    State state{};
    for (int64_t task = next.fetch_add(1, std::memory_order_relaxed); task < num_tasks;
         task = next.fetch_add(1, std::memory_order_relaxed)) {
      f(task, state);
    }
  });
}

// A per-thread scratch array that only grows, and is not zero-filled (std::vector's resize would
// write every new element once more before the kernel overwrites it).
template <typename T>
class ScratchArray {
 public:
  T* get(int64_t n) {
    if (n > size_) {
      data_.reset(new T[n]);  // default-initialised: no writes for arithmetic T
      size_ = n;
    }
    return data_.get();
  }

 private:
  std::unique_ptr<T[]> data_;
  int64_t size_ = 0;
};

}  // namespace detr_ops::cpu
