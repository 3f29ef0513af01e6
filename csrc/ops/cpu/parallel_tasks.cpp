// The helper-thread pool behind cpu::parallel_tasks (see parallel_tasks.h for the why).
//
// One job at a time per process: a caller that finds the pool taken (another thread's job) runs
// its tasks itself. The job's state is a few atomics of the pool, which lives until the process
// ends (it is never freed, so a helper that wakes up late can always look at it):
//
//   claim     generation (high 32 bits) | next unclaimed task (low 32 bits). A thread takes task i
//             by a compare-exchange from (g, i) to (g, i + 1), and only while i < the job's task
//             count: a helper still holding an old generation can never take a task of a newer
//             job, and a helper that arrives after the last claim changes nothing.
//   finished  tasks accounted for; each thread adds the tasks it claimed when it leaves the job
//             (after its last task and its State are done). The caller returns when it reaches
//             the task count, so it waits for claimed tasks only.
//
// Why a helper may read the job's fields (task count, body, ctx) before it claims: they are
// written before the generation is published, and before the next job rewrites them its caller
// first closes the claim word (index kClosed, which no task count reaches). A helper whose claim
// at generation g succeeds saw the word open at g, so its earlier reads of the fields came after
// g's writes and before the next job's: it read g's fields. Without the close, a helper that read
// g and then the next job's (larger) task count could claim a phantom task of g, which is
// exhausted but still in the word. All operations below are sequentially consistent, which makes
// that argument hold (on x86 that costs nothing on the loads).
//
// Sleeping and waking use futexes on Linux (a condition variable needs a mutex, and a helper
// preempted while holding it would make the caller wait a time slice); elsewhere C++20's atomic
// wait, or polling.
// Helpers spin briefly after a job before they sleep, so back-to-back calls (a forward then its
// backward) find them awake on a quiet machine; the spin yields the core to anything runnable.
//
// Fork: the child has none of the parent's helper threads, and the pool's state may be mid-job.
// A pthread_atfork handler makes the child forget that pool (deliberately leaked) and start a
// fresh one on its first parallel call.
#include "ops/cpu/parallel_tasks.h"

#include <ATen/Parallel.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>

#if defined(__linux__)
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#elif defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace detr_ops::cpu::detail {
namespace {

// ---- waiting on a 32-bit word ------------------------------------------------------------------

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

void yield_core() {
#if defined(__linux__)
  sched_yield();
#else
  std::this_thread::yield();
#endif
}

// Blocks while word == expected (returns early on a wake or spuriously; callers loop).
void wait_on(std::atomic<uint32_t>& word, uint32_t expected) {
#if defined(__linux__)
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "futex word");
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
#elif defined(__cpp_lib_atomic_wait)
  word.wait(expected);
#else
  // No way to block on a word here: poll. Helpers then answer a new job within a millisecond,
  // which costs a call nothing (the caller never waits for a helper to arrive).
  if (word.load() == expected) std::this_thread::sleep_for(std::chrono::milliseconds(1));
#endif
}

void wake(std::atomic<uint32_t>& word, int count) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, count, nullptr, nullptr, 0);
#elif defined(__cpp_lib_atomic_wait)
  (void)count;
  word.notify_all();
#else
  (void)word;
  (void)count;
#endif
}

// Spins for up to `budget` while pred() is false; returns pred(). With yield_between, the core is
// yielded between short bursts so that a loaded machine's other threads run.
template <typename Pred>
bool spin_until(std::chrono::nanoseconds budget, bool yield_between, const Pred& pred) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (pred()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() - start > budget) return pred();
    if (yield_between) yield_core();
  }
}

// A helper stays awake this long after a job, looking for the next one. It yields while it spins:
// it has nothing to do, and a thread that yields to a busy process loses its core for a time slice.
constexpr std::chrono::microseconds kHelperSpin{100};
// The caller spins this long for claimed tasks to finish before it sleeps, and never yields: on
// Linux's fair scheduler sched_yield puts it behind every busy process on its core, and it ran
// again one time slice (~4 ms) later. Under a background load that made half the calls of a 1 ms
// job 4-5 ms long (pairwise GIoU 1000x1000, 16 of 30 medians of 15 over 1.5x their one-thread
// time); a futex sleep gives the core away too, but its wake-up gets the core back promptly.
constexpr std::chrono::microseconds kCallerSpin{50};

thread_local bool t_in_job = false;  // on a helper thread, or a caller inside its own job

std::atomic<int64_t> g_helper_threads{0};
std::atomic<int64_t> g_helper_tasks{0};
std::atomic<int64_t> g_helper_delay_us{0};

uint32_t generation_of(uint64_t claim) { return static_cast<uint32_t>(claim >> 32); }
int64_t index_of(uint64_t claim) { return static_cast<int64_t>(claim & 0xffffffffu); }
uint64_t pack(uint32_t generation, int64_t index) { return (uint64_t(generation) << 32) | uint64_t(index); }
// A claim word index above every task count (at most kMaxUnits): nothing can be claimed.
constexpr int64_t kClosed = 0xffffffff;
static_assert(kMaxUnits < kClosed, "kClosed must exceed every task count");

}  // namespace

class Pool {
 public:
  bool run(int64_t num_tasks, int64_t threads, Body body, const void* ctx);
  int64_t claim(TaskSource& source);
  void fail(TaskSource& source, std::exception_ptr error);

 private:
  void ensure_helpers(int64_t count);
  static void helper_main(Pool* pool);
  void participate(uint32_t generation, bool helper);

  std::atomic<bool> busy_{false};  // a job is in progress (one at a time)
  std::atomic<uint64_t> claim_{0};
  std::atomic<int64_t> finished_{0};
  std::atomic<int64_t> num_tasks_{0};
  std::atomic<Body> body_{nullptr};
  std::atomic<const void*> ctx_{nullptr};
  std::atomic<int64_t> slots_{0};  // helpers that may still join the current job
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;  // written by the first failing thread, read by the caller at the end
  std::mutex error_mutex_;

  std::atomic<uint32_t> wake_seq_{0};  // helpers sleep on it; bumped for each new job
  std::atomic<int64_t> sleepers_{0};
  std::atomic<uint32_t> done_seq_{0};  // the caller sleeps on it; bumped when the job finishes

  std::mutex grow_mutex_;  // starting helper threads (rare)
  std::atomic<int64_t> helpers_{0};
};

namespace {

std::atomic<Pool*> g_pool{nullptr};

void forget_pool_in_child() {
  // The parent's pool may be mid-job and its helpers do not exist here: leak it, start afresh.
  g_pool.store(nullptr);
  t_in_job = false;
}

Pool& pool() {
  Pool* p = g_pool.load();
  if (p != nullptr) return *p;
#if defined(__unix__) || defined(__APPLE__)
  static const int registered = pthread_atfork(nullptr, nullptr, &forget_pool_in_child);
  (void)registered;
#endif
  Pool* fresh = new Pool();
  if (!g_pool.compare_exchange_strong(p, fresh)) {
    delete fresh;
    return *p;
  }
  return *fresh;
}

}  // namespace

int64_t TaskSource::next() { return pool_->claim(*this); }

int64_t Pool::claim(TaskSource& source) {
  uint64_t cur = claim_.load();
  for (;;) {
    if (generation_of(cur) != source.gen_ || index_of(cur) >= source.n_) return -1;
    if (claim_.compare_exchange_weak(cur, cur + 1)) {
      ++source.claimed_;
      return index_of(cur);
    }
  }
}

void Pool::fail(TaskSource& source, std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(error_mutex_);
    if (!failed_.load()) {
      error_ = std::move(error);
      failed_.store(true);
    }
  }
  // Close the job: the tasks nobody has claimed are skipped, and this thread accounts for them.
  uint64_t cur = claim_.load();
  while (generation_of(cur) == source.gen_ && index_of(cur) < source.n_) {
    if (claim_.compare_exchange_weak(cur, pack(source.gen_, source.n_))) {
      source.claimed_ += source.n_ - index_of(cur);
      break;
    }
  }
}

void Pool::participate(uint32_t generation, bool helper) {
  // Read before the first claim; valid for `generation` whenever a claim succeeds (see the top).
  TaskSource source(this, generation, num_tasks_.load());
  const Body body = body_.load();
  const void* ctx = ctx_.load();
  try {
    body(ctx, source);
  } catch (...) {
    fail(source, std::current_exception());
  }
  if (source.claimed_ == 0) return;
  if (helper) g_helper_tasks.fetch_add(source.claimed_, std::memory_order_relaxed);
  if (finished_.fetch_add(source.claimed_) + source.claimed_ == source.n_ && helper) {
    done_seq_.fetch_add(1);
    wake(done_seq_, 1);
  }
}

void Pool::helper_main(Pool* pool) {
  t_in_job = true;  // a task that calls parallel_tasks runs its inner loop serially
  const SerialAten serial_aten;  // for the thread's lifetime: ATen ops in its tasks run serially
#if defined(__linux__) && defined(SCHED_BATCH)
  // SCHED_BATCH (same share of the CPU, but no wake-up preemption): a helper woken for a job takes
  // a free core if there is one, and otherwise waits for its turn instead of preempting the thread
  // running on the core it was woken on, often the caller, which then waited a time slice behind a
  // busy process. Measured under a background load (pairwise GIoU 1000x1000, 1 ms): calls over
  // 2 ms were 19-35% with helpers on SCHED_OTHER against 9-19% on one thread; 6-21% with
  // SCHED_BATCH against 9-26%. Only from SCHED_OTHER: a process run as SCHED_IDLE or real-time
  // keeps that policy for its helpers. Best effort: a refusal leaves the policy as it was.
  {
    int policy = 0;
    sched_param param{};
    if (pthread_getschedparam(pthread_self(), &policy, &param) == 0 && policy == SCHED_OTHER) {
      param.sched_priority = 0;
      pthread_setschedparam(pthread_self(), SCHED_BATCH, &param);
    }
  }
#endif
  uint32_t seen = generation_of(pool->claim_.load());
  for (;;) {
    const auto new_job = [&] { return generation_of(pool->claim_.load()) != seen; };
    if (!spin_until(kHelperSpin, /*yield_between=*/true, new_job)) {
      const uint32_t seq = pool->wake_seq_.load();
      pool->sleepers_.fetch_add(1);
      if (!new_job()) wait_on(pool->wake_seq_, seq);
      pool->sleepers_.fetch_sub(1);
      continue;
    }
    if (const int64_t delay = g_helper_delay_us.load(std::memory_order_relaxed)) {
      std::this_thread::sleep_for(std::chrono::microseconds(delay));
    }
    seen = generation_of(pool->claim_.load());
    int64_t slots = pool->slots_.load();
    while (slots > 0 && !pool->slots_.compare_exchange_weak(slots, slots - 1)) {
    }
    if (slots > 0) pool->participate(seen, /*helper=*/true);
  }
}

void Pool::ensure_helpers(int64_t count) {
  if (helpers_.load() >= count) return;
  std::lock_guard<std::mutex> lock(grow_mutex_);
  while (helpers_.load() < count) {
    try {
      std::thread(&Pool::helper_main, this).detach();
    } catch (const std::system_error&) {
      return;  // no more threads to be had: run with those there are
    }
    helpers_.fetch_add(1);
    g_helper_threads.fetch_add(1);
  }
}

bool Pool::run(int64_t num_tasks, int64_t threads, Body body, const void* ctx) {
  bool expected = false;
  if (!busy_.compare_exchange_strong(expected, true)) return false;
  ensure_helpers(threads - 1);
  // Close the last job's claim word before its fields change (see the top), then publish the job:
  // its fields first, then the new generation, then wake sleeping helpers.
  const uint32_t generation = generation_of(claim_.load()) + 1;
  claim_.store(pack(generation - 1, kClosed));
  num_tasks_.store(num_tasks);
  body_.store(body);
  ctx_.store(ctx);
  finished_.store(0);
  failed_.store(false);
  error_ = nullptr;
  slots_.store(std::min(threads - 1, helpers_.load()));
  claim_.store(pack(generation, 0));
  wake_seq_.fetch_add(1);
  if (sleepers_.load() > 0) wake(wake_seq_, static_cast<int>(std::min<int64_t>(threads - 1, 1 << 20)));

  t_in_job = true;
  {
    const SerialAten serial_aten;
    participate(generation, /*helper=*/false);
  }
  t_in_job = false;
  // Every task is claimed now; wait for those that helpers are still running.
  const auto done = [&] { return finished_.load() == num_tasks; };
  if (!spin_until(kCallerSpin, /*yield_between=*/false, done)) {
    for (;;) {
      const uint32_t seq = done_seq_.load();
      if (done()) break;
      wait_on(done_seq_, seq);
    }
  }
  std::exception_ptr error = failed_.load() ? error_ : nullptr;
  error_ = nullptr;
  busy_.store(false);
  if (error) std::rethrow_exception(error);
  return true;
}

SerialAten::SerialAten() {
  // at::get_num_threads() first: on a thread's first ATen call torch sets its OpenMP thread count
  // (lazy initialisation), which would undo a count set before
  previous_ = std::max(1, at::get_num_threads());
#if defined(_OPENMP)
  if (previous_ != 1) omp_set_num_threads(1);
#endif
}

SerialAten::~SerialAten() {
#if defined(_OPENMP)
  if (previous_ != 1) omp_set_num_threads(previous_);
#endif
}

int64_t available_threads() {
  if (t_in_job || at::in_parallel_region()) return 1;
  return std::max(1, at::get_num_threads());
}

bool run_job(int64_t num_tasks, int64_t threads, Body body, const void* ctx) {
  return pool().run(num_tasks, threads, body, ctx);
}

int64_t helper_threads_started() { return g_helper_threads.load(); }
int64_t tasks_run_by_helpers() { return g_helper_tasks.load(); }
void set_helper_delay_for_tests(int64_t microseconds) { g_helper_delay_us.store(microseconds); }

}  // namespace detr_ops::cpu::detail
