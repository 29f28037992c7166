// A minimal parallel loop on std::thread for the curation kernels: no OpenMP runtime (safe in
// forked workers, no pool shared with torch), the calling thread works too, and an exception
// in any worker is rethrown on the caller.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include <sched.h>

namespace crucible::minhash {

// threads <= 0: every core this process may run on (its CPU affinity mask).
inline int resolve_threads(int threads) {
  if (threads > 0) return threads;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// Splits [0, n) into chunks of `grain` items handed out on demand to up to `threads` workers.
// Each worker builds one State (its scratch buffers) and calls body(state, begin, end) per chunk.
template <class State, class Body>
void parallel_chunks(size_t n, size_t grain, int threads, Body&& body) {
  if (n == 0) return;
  grain = std::max<size_t>(grain, 1);
  const size_t chunks = (n + grain - 1) / grain;
  const size_t workers = std::min<size_t>(static_cast<size_t>(resolve_threads(threads)), chunks);
  if (workers <= 1) {
    State state;
    body(state, size_t{0}, n);
    return;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  const auto work = [&] {
    try {
      State state;
      for (size_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
        body(state, c * grain, std::min(n, (c + 1) * grain));
      }
    } catch (...) {
      next.store(chunks);
      const std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (size_t w = 1; w < workers; ++w) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace crucible::minhash
