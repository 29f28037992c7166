#include "common/scratch.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string_view>
#include <vector>

namespace crucible::cpu {
namespace {

constexpr std::size_t kAlign = 64;
constexpr std::size_t kMaxFree = 32;                        // buffers kept
constexpr std::size_t kMaxFreeBytes = std::size_t{256} << 20;  // bytes kept in all
constexpr std::size_t kMaxPooled = std::size_t{64} << 20;     // larger buffers are not kept

// CRUCIBLE_SCRATCH_POOL=0 turns the pool off (every buffer goes back to the allocator).
bool pool_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("CRUCIBLE_SCRATCH_POOL");
    return v == nullptr || std::string_view(v) != "0";
  }();
  return enabled;
}

struct Pool {
  std::mutex mu;
  std::vector<std::pair<std::size_t, void*>> free;  // (capacity, storage)
  std::size_t free_bytes = 0;
};

Pool& pool() {
  static Pool* instance = new Pool();  // never destroyed: kernels may run during exit
  return *instance;
}

}  // namespace

void* scratch_acquire(std::size_t bytes, std::size_t* capacity) {
  const std::size_t want = std::max<std::size_t>(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mu);
    auto best = p.free.end();
    for (auto it = p.free.begin(); it != p.free.end(); ++it) {
      if (it->first >= want && (best == p.free.end() || it->first < best->first)) best = it;
    }
    if (best != p.free.end()) {
      *capacity = best->first;
      void* ptr = best->second;
      p.free_bytes -= best->first;
      p.free.erase(best);
      return ptr;
    }
  }
  void* ptr = std::aligned_alloc(kAlign, want);
  if (ptr == nullptr) throw std::bad_alloc();
  *capacity = want;
  return ptr;
}

void scratch_release(void* ptr, std::size_t capacity) {
  if (!pool_enabled() || capacity > kMaxPooled) {
    std::free(ptr);
    return;
  }
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  p.free.emplace_back(capacity, ptr);
  p.free_bytes += capacity;
  // Over the limits, drop the smallest first: the large ones are the costly ones to fault in.
  while (p.free.size() > kMaxFree || p.free_bytes > kMaxFreeBytes) {
    auto smallest = std::min_element(p.free.begin(), p.free.end());
    p.free_bytes -= smallest->first;
    std::free(smallest->second);
    p.free.erase(smallest);
  }
}

}  // namespace crucible::cpu
