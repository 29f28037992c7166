// The permutation-min kernels (see permute.h): scalar, AVX2 and AVX-512, chosen once per
// Permutations object.
//
// xxh64 mode needs (a*x + b) mod p for a, x < 2^61 without a 128-bit vector multiply. With
// 31-bit halves a = a1*2^31 + a0, x = x1*2^31 + x0 (a0, x0 < 2^31; a1, x1 < 2^30) and
// 2^61 = 1 (mod p), Karatsuba's three 32x32->64 multiplies (vpmuludq) suffice:
//   a*x = a1*x1 * 2^62 + m * 2^31 + a0*x0,   m = (a0+a1)(x0+x1) - a0*x0 - a1*x1 < 2^62
//   2^62 = 2 (mod p),   m * 2^31 = (m >> 30) + ((m << 31) & p)   (mod p)
//   t mod p = fold(t) = (t & p) + (t >> 61), then one conditional subtraction of p
// (a0+a1 and x0+x1 stay below 2^32, which is why the split is at 31 bits.) The sum of the
// terms stays below 2^64, so one fold and one conditional subtraction reduce it exactly: 18
// vector operations per 8 permutations and shingle; AVX-512 drops the subtraction (17, see
// xxh64_avx512_block). The coefficients of 8 (AVX-512) or 4 (AVX2) permutations sit in
// registers while the loop runs over every shingle hash of the document, and the running
// minima never leave registers. sha1 mode is one 64-bit multiply (vpmullq, or two vpmuludq on
// AVX2), a fold, a conditional subtraction and a mask.
//
// Measured on one Zen 4 core (128 permutations, ~470 shingles a document, 2.6 GHz nominal):
// AVX-512 21.5 us a document (about 7.5 cycles per register of 8 permutations; ALU-bound, as
// 512-bit operations take two of the four 256-bit pipes), AVX2 30.4 us, scalar 100 us.
#include "permute.h"

#include "cpu_features.h"

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_epi32(), which -Wall reports as
// "may be used uninitialized" at every call site; the value is never read.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define CRUCIBLE_MINHASH_X86 1
#define CRUCIBLE_TARGET_AVX512 __attribute__((target("avx512f,avx512dq")))
#define CRUCIBLE_TARGET_AVX2 __attribute__((target("avx2")))
#endif

namespace crucible::minhash {

// Unreduced minima start here: every real value is below 2^61 and, unlike 2^64 - 1, this also
// compares correctly as a signed number (AVX2 has no unsigned 64-bit compare).
constexpr uint64_t kMinInit = 0x7FFFFFFFFFFFFFFFull;
constexpr uint64_t kLow31 = (1ull << 31) - 1;

struct PermutationKernels {
  // Permutations k0 .. k1-1 with 128-bit products: the reference path, and the exact redo of
  // an AVX-512 block that met an unreduced value.
  static void xxh64_exact(const Permutations& t, size_t k0, size_t k1, const uint64_t* xs,
                          size_t count, uint64_t* out) {
    for (size_t k = k0; k < k1; ++k) {
      const uint64_t a = t.a_[k], b = t.b_[k];
      uint64_t m = kMinInit;
      for (size_t j = 0; j < count; ++j) {
        const unsigned __int128 v = static_cast<unsigned __int128>(a) * xs[j] + b;  // < 2^123
        uint64_t r = (static_cast<uint64_t>(v) & kMersenne61) + static_cast<uint64_t>(v >> 61);
        r = (r & kMersenne61) + (r >> 61);
        r = r >= kMersenne61 ? r - kMersenne61 : r;
        m = r < m ? r : m;
      }
      out[k] = m;
    }
  }

  static void xxh64_scalar(const Permutations& t, const uint64_t* xs, size_t count,
                           uint64_t* out) {
    xxh64_exact(t, 0, t.padded_, xs, count, out);
  }

  static void sha1_scalar(const Permutations& t, const uint64_t* hs, size_t count, uint64_t* out) {
    for (size_t k = 0; k < t.padded_; ++k) {
      const uint64_t a = t.a_[k], b = t.b_[k];
      uint64_t m = kMinInit;
      for (size_t j = 0; j < count; ++j) {
        const uint64_t r = mod_mersenne61(a * hs[j] + b) & kMaxHash32;
        m = r < m ? r : m;
      }
      out[k] = m;
    }
  }

#ifdef CRUCIBLE_MINHASH_X86
  // NV registers of permutations per pass over the hashes. The values are folded to
  // [0, p + 4] but not conditionally reduced: the minimum of the folded values is exact as long
  // as none of them reached p (probability about 5 / 2^61 each), which a running maximum
  // tells at the end for one operation instead of two. Returns whether that happened, in
  // which case the caller recomputes the block exactly.
  template <int NV>
  CRUCIBLE_TARGET_AVX512 static bool xxh64_avx512_block(const Permutations& t, size_t k,
                                                         const uint64_t* xs, size_t count,
                                                         uint64_t* out) {
    const __m512i p = _mm512_set1_epi64(static_cast<long long>(kMersenne61));
    __m512i lo[NV], hi[NV], sum[NV], b[NV], m[NV], top[NV];
    for (int v = 0; v < NV; ++v) {
      lo[v] = _mm512_loadu_si512(t.lo_.data() + k + 8 * v);
      hi[v] = _mm512_loadu_si512(t.hi_.data() + k + 8 * v);
      sum[v] = _mm512_loadu_si512(t.sum_.data() + k + 8 * v);
      b[v] = _mm512_loadu_si512(t.b_.data() + k + 8 * v);
      m[v] = _mm512_set1_epi64(static_cast<long long>(kMinInit));
      top[v] = _mm512_setzero_si512();
    }
    for (size_t j = 0; j < count; ++j) {
      const uint64_t x0 = xs[j] & kLow31, x1 = xs[j] >> 31;
      const __m512i vx0 = _mm512_set1_epi64(static_cast<long long>(x0));
      const __m512i vx1 = _mm512_set1_epi64(static_cast<long long>(x1));
      const __m512i vxs = _mm512_set1_epi64(static_cast<long long>(x0 + x1));
      for (int v = 0; v < NV; ++v) {
        const __m512i p0 = _mm512_mul_epu32(lo[v], vx0);                    // a0*x0 < 2^62
        const __m512i p1 = _mm512_mul_epu32(hi[v], vx1);                    // a1*x1 < 2^60
        const __m512i t01 = _mm512_add_epi64(p0, p1);
        const __m512i mid = _mm512_sub_epi64(_mm512_mul_epu32(sum[v], vxs), t01);  // < 2^62
        __m512i s = _mm512_add_epi64(_mm512_add_epi64(t01, p1), b[v]);
        s = _mm512_add_epi64(s, _mm512_srli_epi64(mid, 30));
        s = _mm512_add_epi64(s, _mm512_and_si512(_mm512_slli_epi64(mid, 31), p));  // < 2^64
        s = _mm512_add_epi64(_mm512_and_si512(s, p), _mm512_srli_epi64(s, 61));  // <= p + 4
        m[v] = _mm512_min_epu64(m[v], s);
        top[v] = _mm512_max_epu64(top[v], s);
      }
    }
    __mmask8 unreduced = 0;
    for (int v = 0; v < NV; ++v) {
      _mm512_storeu_si512(out + k + 8 * v, m[v]);
      unreduced |= _mm512_cmpge_epu64_mask(top[v], p);
    }
    return unreduced != 0;
  }

  CRUCIBLE_TARGET_AVX512 static void xxh64_avx512(const Permutations& t, const uint64_t* xs,
                                                  size_t count, uint64_t* out) {
    size_t k = 0;
    for (; k + 32 <= t.padded_; k += 32) {
      if (xxh64_avx512_block<4>(t, k, xs, count, out)) xxh64_exact(t, k, k + 32, xs, count, out);
    }
    for (; k < t.padded_; k += 8) {
      if (xxh64_avx512_block<1>(t, k, xs, count, out)) xxh64_exact(t, k, k + 8, xs, count, out);
    }
  }

  template <int NV>
  CRUCIBLE_TARGET_AVX512 static void sha1_avx512_block(const Permutations& t, size_t k,
                                                        const uint64_t* hs, size_t count,
                                                        uint64_t* out) {
    const __m512i p = _mm512_set1_epi64(static_cast<long long>(kMersenne61));
    const __m512i low32 = _mm512_set1_epi64(static_cast<long long>(kMaxHash32));
    __m512i a[NV], b[NV], m[NV];
    for (int v = 0; v < NV; ++v) {
      a[v] = _mm512_loadu_si512(t.a_.data() + k + 8 * v);
      b[v] = _mm512_loadu_si512(t.b_.data() + k + 8 * v);
      m[v] = _mm512_set1_epi64(static_cast<long long>(kMinInit));
    }
    for (size_t j = 0; j < count; ++j) {
      const __m512i h = _mm512_set1_epi64(static_cast<long long>(hs[j]));
      for (int v = 0; v < NV; ++v) {
        __m512i s = _mm512_add_epi64(_mm512_mullo_epi64(a[v], h), b[v]);  // mod 2^64
        s = _mm512_add_epi64(_mm512_and_si512(s, p), _mm512_srli_epi64(s, 61));  // <= p + 7
        s = _mm512_min_epu64(s, _mm512_sub_epi64(s, p));
        m[v] = _mm512_min_epu64(m[v], _mm512_and_si512(s, low32));
      }
    }
    for (int v = 0; v < NV; ++v) _mm512_storeu_si512(out + k + 8 * v, m[v]);
  }

  CRUCIBLE_TARGET_AVX512 static void sha1_avx512(const Permutations& t, const uint64_t* hs,
                                                 size_t count, uint64_t* out) {
    size_t k = 0;
    for (; k + 32 <= t.padded_; k += 32) sha1_avx512_block<4>(t, k, hs, count, out);
    for (; k < t.padded_; k += 8) sha1_avx512_block<1>(t, k, hs, count, out);
  }

  CRUCIBLE_TARGET_AVX2 static __m256i load4(const std::vector<uint64_t>& src, size_t k) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src.data() + k));
  }

  // AVX2: no unsigned 64-bit min or compare; every value here is below 2^63, so signed
  // compares are exact, and the conditional subtraction keeps s where s - p is negative.
  CRUCIBLE_TARGET_AVX2 static __m256i select_negative(__m256i mask, __m256i if_negative,
                                                      __m256i otherwise) {
    return _mm256_castpd_si256(_mm256_blendv_pd(_mm256_castsi256_pd(otherwise),
                                                 _mm256_castsi256_pd(if_negative),
                                                 _mm256_castsi256_pd(mask)));
  }

  template <int NV>
  CRUCIBLE_TARGET_AVX2 static void xxh64_avx2_block(const Permutations& t, size_t k,
                                                     const uint64_t* xs, size_t count,
                                                     uint64_t* out) {
    const __m256i p = _mm256_set1_epi64x(static_cast<long long>(kMersenne61));
    __m256i m[NV];
    for (int v = 0; v < NV; ++v) m[v] = _mm256_set1_epi64x(static_cast<long long>(kMinInit));
    for (size_t j = 0; j < count; ++j) {
      const uint64_t x0 = xs[j] & kLow31, x1 = xs[j] >> 31;
      const __m256i vx0 = _mm256_set1_epi64x(static_cast<long long>(x0));
      const __m256i vx1 = _mm256_set1_epi64x(static_cast<long long>(x1));
      const __m256i vxs = _mm256_set1_epi64x(static_cast<long long>(x0 + x1));
      for (int v = 0; v < NV; ++v) {
        const size_t at = k + 4 * v;
        const __m256i p0 = _mm256_mul_epu32(load4(t.lo_, at), vx0);
        const __m256i p1 = _mm256_mul_epu32(load4(t.hi_, at), vx1);
        const __m256i t01 = _mm256_add_epi64(p0, p1);
        const __m256i mid = _mm256_sub_epi64(_mm256_mul_epu32(load4(t.sum_, at), vxs), t01);
        __m256i s = _mm256_add_epi64(_mm256_add_epi64(t01, p1), load4(t.b_, at));
        s = _mm256_add_epi64(s, _mm256_srli_epi64(mid, 30));
        s = _mm256_add_epi64(s, _mm256_and_si256(_mm256_slli_epi64(mid, 31), p));
        s = _mm256_add_epi64(_mm256_and_si256(s, p), _mm256_srli_epi64(s, 61));
        const __m256i d = _mm256_sub_epi64(s, p);
        s = select_negative(d, s, d);
        m[v] = select_negative(_mm256_sub_epi64(s, m[v]), s, m[v]);
      }
    }
    for (int v = 0; v < NV; ++v) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k + 4 * v), m[v]);
    }
  }

  CRUCIBLE_TARGET_AVX2 static void xxh64_avx2(const Permutations& t, const uint64_t* xs,
                                              size_t count, uint64_t* out) {
    size_t k = 0;
    for (; k + 16 <= t.padded_; k += 16) xxh64_avx2_block<4>(t, k, xs, count, out);
    for (; k < t.padded_; k += 4) xxh64_avx2_block<1>(t, k, xs, count, out);
  }

  template <int NV>
  CRUCIBLE_TARGET_AVX2 static void sha1_avx2_block(const Permutations& t, size_t k,
                                                    const uint64_t* hs, size_t count,
                                                    uint64_t* out) {
    const __m256i p = _mm256_set1_epi64x(static_cast<long long>(kMersenne61));
    const __m256i low32 = _mm256_set1_epi64x(static_cast<long long>(kMaxHash32));
    __m256i m[NV];
    for (int v = 0; v < NV; ++v) m[v] = _mm256_set1_epi64x(static_cast<long long>(kMinInit));
    for (size_t j = 0; j < count; ++j) {
      const __m256i h = _mm256_set1_epi64x(static_cast<long long>(hs[j]));
      for (int v = 0; v < NV; ++v) {
        // a*h mod 2^64 = a0*h + ((a1*h) << 32), h < 2^32.
        const size_t at = k + 4 * v;
        __m256i s = _mm256_add_epi64(_mm256_mul_epu32(load4(t.a_, at), h),
                                     _mm256_slli_epi64(_mm256_mul_epu32(load4(t.hi_, at), h), 32));
        s = _mm256_add_epi64(s, load4(t.b_, at));
        s = _mm256_add_epi64(_mm256_and_si256(s, p), _mm256_srli_epi64(s, 61));
        const __m256i d = _mm256_sub_epi64(s, p);
        s = _mm256_and_si256(select_negative(d, s, d), low32);
        m[v] = select_negative(_mm256_sub_epi64(s, m[v]), s, m[v]);
      }
    }
    for (int v = 0; v < NV; ++v) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k + 4 * v), m[v]);
    }
  }

  CRUCIBLE_TARGET_AVX2 static void sha1_avx2(const Permutations& t, const uint64_t* hs,
                                             size_t count, uint64_t* out) {
    size_t k = 0;
    for (; k + 16 <= t.padded_; k += 16) sha1_avx2_block<4>(t, k, hs, count, out);
    for (; k < t.padded_; k += 4) sha1_avx2_block<1>(t, k, hs, count, out);
  }
#endif  // CRUCIBLE_MINHASH_X86
};

const char* simd_level() { return simd_name(simd_available()); }

Permutations::Permutations(const uint64_t* a, const uint64_t* b, size_t num_perm, HashKind kind)
    : size_(num_perm),
      padded_((num_perm + kLanes - 1) / kLanes * kLanes),
      kind_(kind),
      a_(padded_, 0),
      b_(padded_, 0),
      lo_(padded_, 0),
      hi_(padded_, 0),
      sum_(padded_, 0) {
  for (size_t k = 0; k < num_perm; ++k) {
    if (kind == HashKind::kXxh64) {
      // (a*x + b) mod p only depends on a and b mod p, and the kernels need them below 2^61.
      a_[k] = mod_mersenne61(a[k]);
      b_[k] = mod_mersenne61(b[k]);
      lo_[k] = a_[k] & kLow31;
      hi_[k] = a_[k] >> 31;
      sum_[k] = lo_[k] + hi_[k];
    } else {
      // sha1 mode keeps a and b whole: its wrap-around is mod 2^64.
      a_[k] = a[k];
      b_[k] = b[k];
      hi_[k] = a[k] >> 32;
    }
  }
  const Simd level = simd_available();
  const bool sha1 = kind == HashKind::kSha1;
  kernel_ = sha1 ? &PermutationKernels::sha1_scalar : &PermutationKernels::xxh64_scalar;
#ifdef CRUCIBLE_MINHASH_X86
  if (level == Simd::kAvx512) {
    kernel_ = sha1 ? &PermutationKernels::sha1_avx512 : &PermutationKernels::xxh64_avx512;
  } else if (level == Simd::kAvx2) {
    kernel_ = sha1 ? &PermutationKernels::sha1_avx2 : &PermutationKernels::xxh64_avx2;
  }
#else
  (void)level;
#endif
}

void Permutations::min_over(const uint64_t* hashes, size_t count, uint64_t* out) const {
  kernel_(*this, hashes, count, out);
}

}  // namespace crucible::minhash
