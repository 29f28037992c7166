// Which SIMD paths the running CPU offers to the curation kernels, capped by the environment
// variable CRUCIBLE_MINHASH_SIMD ("scalar", "avx2" or "avx512") so tests can exercise every
// path on one machine. Read on every call (cheap), never cached.
#pragma once

namespace crucible::minhash {

enum class Simd { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The widest permutation kernel to use: AVX-512 needs avx512f + avx512dq, AVX2 needs avx2.
Simd simd_available();

// Whether the SHA-1 instructions (SHA-NI) may be used: the CPU has them and the cap is not
// "scalar".
bool sha_ni_available();

const char* simd_name(Simd level);

}  // namespace crucible::minhash
