// parallel_tasks: the CPU kernels' threads. The caller works; helpers join if they are running.
//
// at::parallel_for (an OpenMP parallel region in torch's Linux wheels) waits at its end for every
// thread of its team, including threads that have not even started. On a machine whose cores are
// held by other processes (data-loader workers, other jobs) a thread that is not scheduled starts
// one scheduler time slice later (~8-12 ms on our 2-core VMs), and every call pays that: measured
// under a background load, the batched solver's 0.85 ms batch took 24 ms on 2 threads.
//
// Here the calling thread publishes a job of numbered tasks, wakes helpers, and starts taking
// tasks itself, one at a time. A helper that wakes up takes the next unclaimed task until none is
// left; a helper that wakes up late finds none and goes back to sleep without touching the job.
// The caller waits only for tasks a helper has actually claimed (which it is running), never for a
// helper to arrive, so a call is never much slower than running it on one thread.
//
// Contract for f (as for at::parallel_for): a task's result must not depend on which thread runs
// it or on which other tasks that thread ran (the kernels write disjoint outputs and visit their
// inputs in a fixed order inside a task), so results are bitwise identical for every thread count.
//
// Threads: at most at::get_num_threads() (torch.set_num_threads) including the caller. Serial when
// called from inside a task or an ATen parallel region (nested), or while another thread's job
// holds the pool. Safe across fork(): a child starts a fresh pool. An exception thrown by f stops
// the tasks not yet started and is rethrown to the caller. Tasks may call ATen ops: those run
// serially, on the thread that runs the task (see SerialAten).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>

namespace detr_ops::cpu {

namespace detail {

class Pool;

// Hands out the task numbers of one job to one participating thread.
class TaskSource {
 public:
  // The next unclaimed task, or -1 when there is none (or a task has failed).
  int64_t next();

 private:
  friend class Pool;
  TaskSource(Pool* pool, uint32_t generation, int64_t num_tasks) : pool_(pool), gen_(generation), n_(num_tasks) {}
  Pool* pool_;
  uint32_t gen_;
  int64_t n_;
  int64_t claimed_ = 0;  // tasks this thread took: what it adds to the job's finished count
};

// Runs tasks from `tasks` until it returns -1. Called on the caller and on each helper that joins,
// with the caller's ctx; it may dereference ctx only after next() returned a task.
using Body = void (*)(const void* ctx, TaskSource& tasks);

// Threads the caller may use (at::get_num_threads(), or 1 inside a task or ATen parallel region).
int64_t available_threads();

// Runs a job of num_tasks tasks on the caller and up to threads - 1 helpers; returns false,
// having run nothing, when the pool is taken by another thread's job (the caller then runs the
// tasks itself). Rethrows the first exception of a task.
bool run_job(int64_t num_tasks, int64_t threads, Body body, const void* ctx);

// Tests only: how many helper threads the current process has started, and how many tasks helpers
// (not callers) have run since the process started.
int64_t helper_threads_started();
int64_t tasks_run_by_helpers();
// Tests only: helpers sleep this long after they wake for a job and before they look at it, as a
// helper does that the scheduler leaves waiting on a busy machine (0: no delay).
void set_helper_delay_for_tests(int64_t microseconds);

// While alive, ATen ops called on this thread run serially: this thread's OpenMP thread count
// (which at::get_num_threads() reads in torch's OpenMP builds) is 1, and the old one comes back at
// the end. Used around every job's tasks, the serial fallback included: an ATen op that opened an
// OpenMP team inside a task would pay that team's fork-join (a time slice under load) on top of
// ours, and on a helper thread it would start a second team of OpenMP threads.
class SerialAten {
 public:
  SerialAten();
  ~SerialAten();
  SerialAten(const SerialAten&) = delete;
  SerialAten& operator=(const SerialAten&) = delete;

 private:
  int previous_;
};

// One claimed unit covers ceil(num_tasks / kMaxUnits) tasks: the claim counter is 32 bits wide.
constexpr int64_t kMaxUnits = int64_t(1) << 30;

}  // namespace detail

// Calls f(task, state) for every task in [0, num_tasks), in parallel unless `parallel` is false
// (work too small to pay for waking threads). Each participating thread default-constructs one
// State on its first task and passes it to all of its tasks (scratch buffers allocated once).
// State must own what it holds: a helper destroys its State after its last task.
template <typename State, typename F>
void parallel_tasks(int64_t num_tasks, const F& f, bool parallel = true) {
  if (num_tasks <= 0) return;
  const int64_t threads = parallel ? std::min(num_tasks, detail::available_threads()) : 1;
  if (threads > 1) {
    // A unit is a run of `per_unit` consecutive tasks (one task per unit below 2^30 tasks).
    const int64_t per_unit = (num_tasks + detail::kMaxUnits - 1) / detail::kMaxUnits;
    struct Ctx {
      const F* f;
      int64_t num_tasks, per_unit;
    } ctx{&f, num_tasks, per_unit};
    const detail::Body body = [](const void* p, detail::TaskSource& tasks) {
      int64_t unit = tasks.next();
      if (unit < 0) return;  // nothing left: this thread must not touch the caller's ctx
      const Ctx& c = *static_cast<const Ctx*>(p);
      State state{};
      for (; unit >= 0; unit = tasks.next()) {
        const int64_t end = std::min(c.num_tasks, (unit + 1) * c.per_unit);
        for (int64_t task = unit * c.per_unit; task < end; ++task) (*c.f)(task, state);
      }
    };
    if (detail::run_job((num_tasks + per_unit - 1) / per_unit, threads, body, &ctx)) return;
  }
  detail::SerialAten serial_aten;
  State state{};
  for (int64_t task = 0; task < num_tasks; ++task) f(task, state);
}

// at::parallel_for's contract on the pool above: f(b, e) for consecutive chunks [b, e) that cover
// [begin, end); serial when the range is at most `grain` long (at::parallel_for's rule). Chunks
// hold at least `grain` elements; how the range is cut may depend on the thread count, so f's
// result for an element must not depend on the chunk it is in.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (begin >= end) return;
  const int64_t n = end - begin;
  grain = std::max<int64_t>(grain, 1);
  const int64_t threads = n > grain ? std::min(detail::available_threads(), (n + grain - 1) / grain) : 1;
  if (threads <= 1) {
    f(begin, end);
    return;
  }
  // About 8 chunks per thread: a helper that starts late still finds work, and the claim of a
  // chunk (one atomic operation) stays negligible next to the chunk.
  const int64_t chunk = std::max(grain, (n + 8 * threads - 1) / (8 * threads));
  struct NoState {};
  parallel_tasks<NoState>((n + chunk - 1) / chunk, [&](int64_t c, NoState&) {
    const int64_t b = begin + c * chunk;
    f(b, std::min(end, b + chunk));
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
