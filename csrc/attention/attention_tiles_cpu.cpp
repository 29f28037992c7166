// Tile GEMM and softmax exponentials for the CPU flash attention (see attention_tiles_cpu.h).
//
// The AVX-512 GEMM keeps a 6 x 64 block of C in 24 zmm registers: per step of k it loads one
// row of B (4 vectors) and broadcasts 6 values of A, for 24 FMAs. Tiles are sized by the
// caller to stay in L1/L2 (B is at most 128 x 128 floats). exp2 is a degree-7 polynomial on
// the fractional part, scaled by the integer part with vscalefps; inputs below -149 (masked
// scores are -inf) give exactly 0. Only the functions marked CRUCIBLE_AVX512 contain AVX-512
// code, and they run only when the CPU reports avx512f.
#include "attention_tiles_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define CRUCIBLE_HAVE_AVX512_PATH 1
#define CRUCIBLE_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma")))
#else
#define CRUCIBLE_HAVE_AVX512_PATH 0
#endif

// GCC 12's AVX-512 intrinsics fill unused mask lanes from _mm512_undefined_ps(), a
// self-initialised variable that -Wall reports as uninitialised wherever they inline.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace crucible::attention::cpu {
namespace {

// ---- portable loops (double always; float without AVX-512) ----

template <typename T>
void gemm_plain(int64_t M, int64_t N, int64_t K, const T* a, int64_t a_sm, int64_t a_sk,
                const T* b, int64_t ldb, T* c, int64_t ldc, bool accumulate) {
  for (int64_t m = 0; m < M; ++m) {
    T* crow = c + m * ldc;
    if (!accumulate) {
      for (int64_t n = 0; n < N; ++n) crow[n] = T(0);
    }
    for (int64_t k = 0; k < K; ++k) {
      const T av = a[m * a_sm + k * a_sk];
      const T* brow = b + k * ldb;
#pragma omp simd
      for (int64_t n = 0; n < N; ++n) crow[n] += av * brow[n];
    }
  }
}

template <typename T>
T exp2_plain(T* x, int64_t n, T sub, T scale) {
  T sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp2(x[i] * scale - sub);
    sum += x[i];
  }
  return sum;
}

template <typename T>
void softmax_grad_plain(T* ds, const T* p, int64_t n, T delta) {
  for (int64_t i = 0; i < n; ++i) ds[i] = p[i] * (ds[i] - delta);
}

template <typename T>
T max_plain(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

#if CRUCIBLE_HAVE_AVX512_PATH

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") != 0;
  return has;
}

// One MR x (16 * NV) block of C over the whole K.
template <int MR, int NV>
CRUCIBLE_AVX512 inline void gemm_block(int64_t K, const float* a, int64_t a_sm, int64_t a_sk,
                                       const float* b, int64_t ldb, float* c, int64_t ldc,
                                       bool accumulate) {
  __m512 acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = accumulate ? _mm512_loadu_ps(c + r * ldc + 16 * v) : _mm512_setzero_ps();
    }
  }
#pragma GCC unroll 8
  for (int64_t k = 0; k < K; ++k) {
    __m512 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(b + k * ldb + 16 * v);
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * a_sm + k * a_sk]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
  }
}

template <int NV>
CRUCIBLE_AVX512 inline void gemm_rows(int64_t M, int64_t K, const float* a, int64_t a_sm,
                                      int64_t a_sk, const float* b, int64_t ldb, float* c,
                                      int64_t ldc, bool accumulate) {
  int64_t m = 0;
  for (; m + 6 <= M; m += 6) {
    gemm_block<6, NV>(K, a + m * a_sm, a_sm, a_sk, b, ldb, c + m * ldc, ldc, accumulate);
  }
  for (; m + 4 <= M; m += 4) {
    gemm_block<4, NV>(K, a + m * a_sm, a_sm, a_sk, b, ldb, c + m * ldc, ldc, accumulate);
  }
  for (; m < M; ++m) {
    gemm_block<1, NV>(K, a + m * a_sm, a_sm, a_sk, b, ldb, c + m * ldc, ldc, accumulate);
  }
}

// K is walked in slices of kKc so that the slice of B a column block reads (kKc x 64 floats,
// 16 KiB) stays in L1 while every row block of A passes over it.
constexpr int64_t kKc = 64;

CRUCIBLE_AVX512 void gemm_avx512(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_sm,
                                 int64_t a_sk, const float* b, int64_t ldb, float* c,
                                 int64_t ldc, bool accumulate) {
  for (int64_t n = 0; n < N;) {
    const int64_t width = N - n >= 64 ? 64 : (N - n >= 32 ? 32 : 16);
    for (int64_t k0 = 0; k0 < K || k0 == 0; k0 += kKc) {
      const int64_t kc = std::min(kKc, K - k0);
      const bool acc = accumulate || k0 > 0;
      const float* ak = a + k0 * a_sk;
      const float* bk = b + k0 * ldb + n;
      if (width == 64) {
        gemm_rows<4>(M, kc, ak, a_sm, a_sk, bk, ldb, c + n, ldc, acc);
      } else if (width == 32) {
        gemm_rows<2>(M, kc, ak, a_sm, a_sk, bk, ldb, c + n, ldc, acc);
      } else {
        gemm_rows<1>(M, kc, ak, a_sm, a_sk, bk, ldb, c + n, ldc, acc);
      }
    }
    n += width;
  }
}

CRUCIBLE_AVX512 inline __m512 exp2_ps(__m512 x) {
  // Below -149 (and for -inf, the masked scores) the result is 0: those lanes are zeroed by
  // the final masked scalef, whatever the polynomial made of them. Above 128 scalef gives inf.
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-149.0f), _CMP_GE_OQ);
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);  // [-0.5, 0.5]
  // 2^f = e^(f ln 2): Taylor coefficients ln2^k / k!, k = 0..7 (error < 1e-8 on the range).
  __m512 p = _mm512_set1_ps(1.5252733804059840e-05f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530393381608e-04f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(live, p, n);
}

// Horizontal sum/max through memory: GCC 12's _mm512_reduce_* read an undefined register and
// trip -Wuninitialized.
CRUCIBLE_AVX512 inline float hsum(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float s = 0.0f;
  for (float x : lanes) s += x;
  return s;
}

CRUCIBLE_AVX512 inline float hmax(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float m = lanes[0];
  for (float x : lanes) m = x > m ? x : m;
  return m;
}

CRUCIBLE_AVX512 float exp2_avx512(float* x, int64_t n, float sub, float scale) {
  const __m512 s = _mm512_set1_ps(sub);
  const __m512 c = _mm512_set1_ps(scale);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 e = exp2_ps(_mm512_fmsub_ps(_mm512_loadu_ps(x + i), c, s));
    _mm512_storeu_ps(x + i, e);
    sum = _mm512_add_ps(sum, e);
  }
  return hsum(sum);
}

CRUCIBLE_AVX512 void softmax_grad_avx512(float* ds, const float* p, int64_t n, float delta) {
  const __m512 d = _mm512_set1_ps(delta);
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 g = _mm512_sub_ps(_mm512_loadu_ps(ds + i), d);
    _mm512_storeu_ps(ds + i, _mm512_mul_ps(_mm512_loadu_ps(p + i), g));
  }
}

CRUCIBLE_AVX512 float max_avx512(const float* x, int64_t n) {
  __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
  return hmax(m);
}

// ---- AMX ----

#define CRUCIBLE_AMX __attribute__((target("amx-tile,amx-bf16,avx512f")))

// Palette 1: tiles 0-3 hold a 2 x 2 block of C (16 x 16 fp32), 4-5 two A tiles (16 x 32 bf16),
// 6-7 two B tiles (16 pairs x 16 columns); every tile is 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

CRUCIBLE_AMX void amx_configure() {
  TileConfig cfg{};
  cfg.palette_id = 1;
  for (int i = 0; i < 8; ++i) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  // GCC 12 does not see that ldtilecfg reads the struct and drops the stores above without this.
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

CRUCIBLE_AMX void amx_release() { _tile_release(); }

CRUCIBLE_AMX void amx_gemm(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t lda,
                           const uint16_t* b, int64_t ldb, float* c, int64_t ldc,
                           bool accumulate) {
  const int64_t sa = lda * 2, sb = ldb * 2, sc = ldc * 4;  // strides in bytes
  for (int64_t m = 0; m < M; m += 32) {
    for (int64_t n = 0; n < N; n += 32) {
      float* c0 = c + m * ldc + n;
      float* c1 = c0 + 16 * ldc;
      if (accumulate) {
        _tile_loadd(0, c0, sc);
        _tile_loadd(1, c0 + 16, sc);
        _tile_loadd(2, c1, sc);
        _tile_loadd(3, c1 + 16, sc);
      } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      for (int64_t k = 0; k < K; k += 32) {
        _tile_loadd(4, a + m * lda + k, sa);
        _tile_loadd(5, a + (m + 16) * lda + k, sa);
        _tile_loadd(6, b + (k / 2) * ldb + 2 * n, sb);
        _tile_loadd(7, b + (k / 2) * ldb + 2 * (n + 16), sb);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, c0, sc);
      _tile_stored(1, c0 + 16, sc);
      _tile_stored(2, c1, sc);
      _tile_stored(3, c1 + 16, sc);
    }
  }
}

// One instruction per 16 values where the CPU has AVX512-BF16 (every AMX CPU does).
__attribute__((target("avx512f,avx512bf16"))) void to_bf16_native(const float* src,
                                                                   uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __m256bh r = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), reinterpret_cast<const __m256i&>(r));
  }
}

CRUCIBLE_AVX512 void to_bf16_avx512(const float* src, uint16_t* dst, int64_t n) {
  const __m512i bias = _mm512_set1_epi32(0x7FFF);
  const __m512i one = _mm512_set1_epi32(1);
  for (int64_t i = 0; i < n; i += 16) {
    const __m512i u = _mm512_castps_si512(_mm512_loadu_ps(src + i));
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(bias, odd)), 16);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm512_cvtepi32_epi16(r));
  }
}

CRUCIBLE_AVX512 inline __m512i bf16_bits(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  return _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd)),
                           16);
}

CRUCIBLE_AVX512 void to_bf16_pairs_avx512(const float* row0, const float* row1, uint16_t* dst,
                                          int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __m512i lo = bf16_bits(_mm512_loadu_ps(row0 + i));
    const __m512i hi = _mm512_slli_epi32(bf16_bits(_mm512_loadu_ps(row1 + i)), 16);
    _mm512_storeu_si512(dst + 2 * i, _mm512_or_si512(lo, hi));
  }
}

CRUCIBLE_AVX512 void exp2_columns_avx512(float* x, int64_t n, float scale, const float* shift) {
  const __m512 c = _mm512_set1_ps(scale);
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 arg = _mm512_fmsub_ps(_mm512_loadu_ps(x + i), c, _mm512_loadu_ps(shift + i));
    _mm512_storeu_ps(x + i, exp2_ps(arg));
  }
}

CRUCIBLE_AVX512 void softmax_grad_columns_avx512(float* ds, const float* p, int64_t n,
                                                 const float* delta) {
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 g = _mm512_sub_ps(_mm512_loadu_ps(ds + i), _mm512_loadu_ps(delta + i));
    _mm512_storeu_ps(ds + i, _mm512_mul_ps(_mm512_loadu_ps(p + i), g));
  }
}

#endif  // CRUCIBLE_HAVE_AVX512_PATH

}  // namespace

template <>
void tile_gemm<float>(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_sm,
                      int64_t a_sk, const float* b, int64_t ldb, float* c, int64_t ldc,
                      bool accumulate) {
#if CRUCIBLE_HAVE_AVX512_PATH
  if (cpu_has_avx512()) return gemm_avx512(M, N, K, a, a_sm, a_sk, b, ldb, c, ldc, accumulate);
#endif
  gemm_plain(M, N, K, a, a_sm, a_sk, b, ldb, c, ldc, accumulate);
}

template <>
void tile_gemm<double>(int64_t M, int64_t N, int64_t K, const double* a, int64_t a_sm,
                       int64_t a_sk, const double* b, int64_t ldb, double* c, int64_t ldc,
                       bool accumulate) {
  gemm_plain(M, N, K, a, a_sm, a_sk, b, ldb, c, ldc, accumulate);
}

template <>
float exp2_shifted<float>(float* x, int64_t n, float sub, float scale) {
#if CRUCIBLE_HAVE_AVX512_PATH
  if (cpu_has_avx512()) return exp2_avx512(x, n, sub, scale);
#endif
  return exp2_plain(x, n, sub, scale);
}

template <>
double exp2_shifted<double>(double* x, int64_t n, double sub, double scale) {
  return exp2_plain(x, n, sub, scale);
}

template <>
void softmax_grad<float>(float* ds, const float* p, int64_t n, float delta) {
#if CRUCIBLE_HAVE_AVX512_PATH
  if (cpu_has_avx512()) return softmax_grad_avx512(ds, p, n, delta);
#endif
  softmax_grad_plain(ds, p, n, delta);
}

template <>
void softmax_grad<double>(double* ds, const double* p, int64_t n, double delta) {
  softmax_grad_plain(ds, p, n, delta);
}

template <>
float row_max<float>(const float* x, int64_t n) {
#if CRUCIBLE_HAVE_AVX512_PATH
  if (cpu_has_avx512()) return max_avx512(x, n);
#endif
  return max_plain(x, n);
}

template <>
double row_max<double>(const double* x, int64_t n) {
  return max_plain(x, n);
}

bool amx_available() {
#if CRUCIBLE_HAVE_AVX512_PATH
  static const bool ok = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    const bool tile = (edx >> 24) & 1u, bf16 = (edx >> 22) & 1u;
    if (!tile || !bf16 || !cpu_has_avx512()) return false;
    // Linux hands out the tile data state on request only (arch_prctl ARCH_REQ_XCOMP_PERM).
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

void amx_begin() {
#if CRUCIBLE_HAVE_AVX512_PATH
  amx_configure();
#endif
}

void amx_end() {
#if CRUCIBLE_HAVE_AVX512_PATH
  amx_release();
#endif
}

void amx_gemm_bf16(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t lda,
                   const uint16_t* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
#if CRUCIBLE_HAVE_AVX512_PATH
  amx_gemm(M, N, K, a, lda, b, ldb, c, ldc, accumulate);
#endif
}

void to_bf16(const float* src, uint16_t* dst, int64_t n) {
#if CRUCIBLE_HAVE_AVX512_PATH
  static const bool native = __builtin_cpu_supports("avx512bf16") != 0;
  if (native) return to_bf16_native(src, dst, n);
  to_bf16_avx512(src, dst, n);
#endif
}

void to_bf16_pairs(const float* row0, const float* row1, uint16_t* dst, int64_t n) {
#if CRUCIBLE_HAVE_AVX512_PATH
  to_bf16_pairs_avx512(row0, row1, dst, n);
#endif
}

void exp2_columns(float* x, int64_t n, float scale, const float* shift) {
#if CRUCIBLE_HAVE_AVX512_PATH
  exp2_columns_avx512(x, n, scale, shift);
#endif
}

void softmax_grad_columns(float* ds, const float* p, int64_t n, const float* delta) {
#if CRUCIBLE_HAVE_AVX512_PATH
  softmax_grad_columns_avx512(ds, p, n, delta);
#endif
}

}  // namespace crucible::attention::cpu

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
