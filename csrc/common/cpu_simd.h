// Shared by crucible's plain-loop CPU kernels (fused AdamW, fused layers): the function
// multi-versioning that compiles a loop for AVX-512, AVX2 and baseline x86-64 and picks one at
// load time, and bfloat16 <-> float conversions written so the compiler vectorises them.
#pragma once

#include <cstdint>
#include <cstring>

namespace crucible::cpu {

// Below this many elements per call a kernel runs on the calling thread: waking the pool
// costs more than it saves.
constexpr int64_t kMinParallelElements = 1 << 16;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CRUCIBLE_SIMD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CRUCIBLE_SIMD_CLONES
#endif
#define CRUCIBLE_INLINE inline __attribute__((always_inline))

CRUCIBLE_INLINE float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Round-to-nearest-even, NaN kept quiet: the same result as c10::BFloat16(float).
CRUCIBLE_INLINE uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool is_nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return is_nan ? static_cast<uint16_t>(0x7FC0u) : static_cast<uint16_t>(rounded);
}

}  // namespace crucible::cpu
