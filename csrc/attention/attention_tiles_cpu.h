// The dense tile operations flash attention is built from on the CPU: a small GEMM over packed
// tiles and the row-wise exponentials of the online softmax. float has AVX-512 versions picked
// at run time when the CPU has AVX-512 (plain loops otherwise); double (the gradcheck path)
// always runs the plain loops, which compute the same algorithm.
#pragma once

#include <cstdint>

namespace crucible::attention::cpu {

// Every N given to these functions is a multiple of kLanes (tiles are zero-padded to it).
constexpr int64_t kLanes = 16;

// C (M x N, row stride ldc) = or += A * B, where A(m, k) = a[m * a_sm + k * a_sk] (so A may be
// read transposed) and B is K x N row-major with row stride ldb.
template <typename T>
void tile_gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t a_sm, int64_t a_sk,
               const T* b, int64_t ldb, T* c, int64_t ldc, bool accumulate);

// x[i] = 2^(x[i] * scale - sub) for i < n (2^-inf = 0 exactly); returns the sum of the new x.
template <typename T>
T exp2_shifted(T* x, int64_t n, T sub, T scale = T(1));

// ds[i] = p[i] * (ds[i] - delta) for i < n: the softmax backward of one row, with ds holding
// dP on entry.
template <typename T>
void softmax_grad(T* ds, const T* p, int64_t n, T delta);

// The largest of x[0..n).
template <typename T>
T row_max(const T* x, int64_t n);

// ---- bfloat16 tiles on AMX (Intel Sapphire Rapids and newer) ----

// True when the CPU has AMX-BF16 and the OS granted this process the tile registers.
bool amx_available();

// Loads the tile configuration amx_gemm_bf16 uses into the calling thread; call it at the start
// of every task (other code on the thread may reconfigure the tiles) and amx_end after.
void amx_begin();
void amx_end();

// C (M x N fp32, row stride ldc) = or += A * B with bf16 operands: A is M x K row-major (row
// stride lda), B is in pair layout, element (k, n) at b[(k / 2) * ldb + 2 * n + k % 2].
// M, N and K are multiples of 32.
void amx_gemm_bf16(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t lda,
                   const uint16_t* b, int64_t ldb, float* c, int64_t ldc, bool accumulate);

// dst[i] = bfloat16(src[i]) rounded to nearest even, for i < n (n a multiple of 16).
void to_bf16(const float* src, uint16_t* dst, int64_t n);

// dst[2i] = bfloat16(row0[i]), dst[2i + 1] = bfloat16(row1[i]) for i < n (n a multiple of 16):
// two rows interleaved into the pair layout of an AMX B operand.
void to_bf16_pairs(const float* row0, const float* row1, uint16_t* dst, int64_t n);

// Column-wise versions of exp2_shifted and softmax_grad for transposed (keys x queries) tiles,
// whose shift (lse) and Delta vary along the row: x[i] = 2^(x[i] * scale - shift[i]) and
// ds[i] = p[i] * (ds[i] - delta[i]), n a multiple of 16. AVX-512 only (used with AMX).
void exp2_columns(float* x, int64_t n, float scale, const float* shift);
void softmax_grad_columns(float* ds, const float* p, int64_t n, const float* delta);

}  // namespace crucible::attention::cpu
