// CPU feature detection for the curation kernels (see cpu_features.h).
#include "cpu_features.h"

#include <cstdlib>
#include <string_view>

namespace crucible::minhash {
namespace {

// The cap from CRUCIBLE_MINHASH_SIMD; an unset or unknown value caps nothing.
Simd simd_cap() {
  const char* cap = std::getenv("CRUCIBLE_MINHASH_SIMD");
  if (cap == nullptr) return Simd::kAvx512;
  const std::string_view name(cap);
  return name == "scalar" ? Simd::kScalar : name == "avx2" ? Simd::kAvx2 : Simd::kAvx512;
}

}  // namespace

Simd simd_available() {
  Simd level = Simd::kScalar;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) {
    level = Simd::kAvx512;
  } else if (__builtin_cpu_supports("avx2")) {
    level = Simd::kAvx2;
  }
#endif
  const Simd cap = simd_cap();
  return cap < level ? cap : level;
}

bool sha_ni_available() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return simd_cap() != Simd::kScalar && __builtin_cpu_supports("sha") &&
         __builtin_cpu_supports("sse4.1");
#else
  return false;
#endif
}

const char* simd_name(Simd level) {
  return level == Simd::kAvx512 ? "avx512" : level == Simd::kAvx2 ? "avx2" : "scalar";
}

}  // namespace crucible::minhash
