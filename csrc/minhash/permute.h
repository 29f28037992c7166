// MinHash permutations of shingle hashes and their minimum over a document, every permutation
// at once (curation/dedup/reference.py, p = 2^61 - 1):
//   xxh64 mode: (a * (h mod p) + b) mod p, exact;
//   sha1 mode:  (((a * h + b) mod 2^64) mod p) & (2^32 - 1), h a 32-bit hash — datasketch's
//               legacy uint64 arithmetic, wrap-around included.
// The coefficients live in padded structure-of-arrays form so that one SIMD register holds
// 8 (AVX-512) or 4 (AVX2) permutations; the path is picked at run time for the CPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace crucible::minhash {

inline constexpr uint64_t kMersenne61 = (1ull << 61) - 1;
inline constexpr uint64_t kMaxHash32 = 0xFFFFFFFFull;
inline constexpr uint64_t kMaxHash64 = ~0ull;

enum class HashKind { kXxh64, kSha1 };

// x mod (2^61 - 1) for any 64-bit x.
inline uint64_t mod_mersenne61(uint64_t x) {
  x = (x & kMersenne61) + (x >> 61);
  return x >= kMersenne61 ? x - kMersenne61 : x;
}

// The SIMD path min_over takes: "avx512", "avx2" or "scalar". The environment variable
// CRUCIBLE_MINHASH_SIMD (same names) caps it, so tests can check every path on one machine.
const char* simd_level();

class Permutations {
 public:
  static constexpr size_t kLanes = 8;  // padding unit: one AVX-512 register of uint64

  Permutations(const uint64_t* a, const uint64_t* b, size_t num_perm, HashKind kind);

  size_t size() const { return size_; }
  size_t padded_size() const { return padded_; }
  HashKind kind() const { return kind_; }
  // The value of a document without shingles (as an empty datasketch MinHash).
  uint64_t empty_value() const { return kind_ == HashKind::kSha1 ? kMaxHash32 : kMaxHash64; }

  // out[0 .. padded_size()) = per permutation, the minimum over hashes[0 .. count) (count >= 1)
  // of the permuted hash. xxh64 mode takes hashes already reduced mod p (mod_mersenne61);
  // sha1 mode takes 32-bit hashes.
  void min_over(const uint64_t* hashes, size_t count, uint64_t* out) const;

 private:
  using Kernel = void (*)(const Permutations&, const uint64_t*, size_t, uint64_t*);

  size_t size_;
  size_t padded_;
  HashKind kind_;
  // Structure of arrays, padded_ long. xxh64: a, b reduced mod p; lo, hi their low 31 and high
  // 30 bits, sum = lo + hi (< 2^32). sha1: a, b as given; hi = a >> 32.
  std::vector<uint64_t> a_, b_, lo_, hi_, sum_;
  Kernel kernel_;

  friend struct PermutationKernels;
};

}  // namespace crucible::minhash
