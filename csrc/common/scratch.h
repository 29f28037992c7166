// Scratch memory reused across calls. A kernel that packs its inputs into multi-MiB panels on
// every call would otherwise get fresh pages from the kernel each time, and page faults then
// cost as much as the arithmetic on small and medium problems (measured: ~20% of a flash
// attention backward pass at T = 128). Buffers go back to a process-wide pool when their
// handle dies and are handed out again best-fit. The pool keeps at most 32 buffers and 256 MiB,
// never one over 64 MiB (where the arithmetic dwarfs the faults); CRUCIBLE_SCRATCH_POOL=0
// turns it off.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

namespace crucible::cpu {

// Raw storage of at least `bytes` bytes, 64-byte aligned; `capacity` receives the real size.
void* scratch_acquire(std::size_t bytes, std::size_t* capacity);
// Returns storage from scratch_acquire to the pool.
void scratch_release(void* ptr, std::size_t capacity);

// n uninitialised elements of a trivial type T, returned to the pool on destruction.
template <typename T>
class Scratch {
 public:
  explicit Scratch(int64_t n) {
    ptr_ = static_cast<T*>(scratch_acquire(static_cast<std::size_t>(n) * sizeof(T), &cap_));
  }
  Scratch(Scratch&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), cap_(other.cap_) {}
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  Scratch& operator=(Scratch&&) = delete;
  ~Scratch() {
    if (ptr_ != nullptr) scratch_release(ptr_, cap_);
  }
  T* get() const { return ptr_; }
  T& operator[](int64_t i) const { return ptr_[i]; }

 private:
  std::size_t cap_ = 0;  // set by scratch_acquire in the constructor body, after this init
  T* ptr_ = nullptr;
};

}  // namespace crucible::cpu
