// Flash attention on CUDA: bf16/fp16 tensor-core kernels (mma.sync m16n8k16, fp32 accumulate)
// for sm_80 and newer, forward and backward, head dims 64 and 128.
//
// Forward (flash_fwd_kernel): one CTA of 4 warps per (64-query tile, query head, sequence).
// Each warp owns 16 query rows. Per block of 64 keys the CTA stages K and V in shared memory,
// every warp computes its 16 x 64 scores S = Q K^T in registers, applies the masks, updates
// its running row max m and row sum l (online softmax in the log2 domain), and accumulates
// O += P V reusing the score registers as the A operand (the m16n8k16 accumulator layout of
// two adjacent n-tiles is the A-operand layout of one k-step). Memory per CTA: Q, K, V tiles.
//
// Backward (flash_bwd_kernel): one CTA per (64-key tile, query head, sequence); warp w owns
// keys 16w..16w+15 and keeps their dK and dV in registers while the CTA walks the query tiles
// that see those keys. Per query tile it recomputes S^T = K Q^T and P^T = 2^(S^T - lse), then
// dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - Delta), dK += dS^T Q, stages dS in shared
// memory and adds dQ += dS K into an fp32 buffer with atomics. dK and dV go to fp32 buffers
// with atomics too, which also sums the query heads of a GQA group onto their kv head.
// Delta = rowsum(dO * O) comes from a small pre-pass (flash_bwd_delta_kernel).
//
// Inputs with a non-unit last stride or rows not 16-byte aligned are copied to contiguous
// memory first; cu_seqlens stays on the device and max_seqlen sizes the grid.
#include "flash_attention.h"

#include <cmath>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace crucible::attention {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 64;  // queries per forward CTA, keys per backward CTA, and block sizes
constexpr int kPad = 8;    // shared-memory row padding (elements) against bank conflicts
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Where the tokens are: one struct for padded (cu_seqlens == nullptr) and packed batches.
struct SeqInfo {
  const int* cu_seqlens;  // n_seq + 1 offsets on the device, or nullptr when padded
  int64_t padded_len;     // T for padded batches
  int64_t total_tokens;   // N for packed batches (the lse row length)
  __device__ __forceinline__ int64_t length(int b) const {
    return cu_seqlens ? cu_seqlens[b + 1] - cu_seqlens[b] : padded_len;
  }
  // Row of token (b, pos) in a contiguous (tokens, heads, D) view of the whole batch.
  __device__ __forceinline__ int64_t row(int b, int64_t pos) const {
    return cu_seqlens ? cu_seqlens[b] + pos : b * padded_len + pos;
  }
  // Index of (b, h, pos) in lse: (B, Hq, T) padded, (Hq, N) packed.
  __device__ __forceinline__ int64_t lse_index(int b, int h, int heads, int64_t pos) const {
    return cu_seqlens ? h * total_tokens + cu_seqlens[b] + pos
                      : (static_cast<int64_t>(b) * heads + h) * padded_len + pos;
  }
};

// Element strides of one (B, T, H, D) or (N, H, D) input; the last stride is 1.
struct Strides {
  int64_t seq, tok, head;
  __device__ __forceinline__ int64_t offset(const SeqInfo& s, int b, int64_t pos, int h) const {
    return s.cu_seqlens ? (s.cu_seqlens[b] + pos) * tok + h * head
                        : b * seq + pos * tok + h * head;
  }
};

struct Masking {
  bool causal;
  int window;  // <= 0: none
  __device__ __forceinline__ bool visible(int64_t i, int64_t j, int64_t len) const {
    if (j >= len || i >= len) return false;
    if (causal && j > i) return false;
    if (window > 0 && j <= i - window) return false;
    return true;
  }
};

template <typename T>
struct FwdParams {
  const T* q;
  const T* k;
  const T* v;
  T* out;
  float* lse;
  Strides sq, sk, sv, so;
  SeqInfo seq;
  Masking mask;
  int heads_q, group;
  float scale_log2;  // softmax_scale * log2(e)
};

template <typename T>
struct BwdParams {
  const T* q;
  const T* k;
  const T* v;
  const T* dout;
  const float* lse;
  const float* delta;  // (rows, Hq) contiguous
  float* dq;           // (rows, Hq, D) fp32, zero-initialised
  float* dk;           // (rows, Hkv, D) fp32, zero-initialised
  float* dv;
  Strides sq, sk, sv, sdo;
  SeqInfo seq;
  Masking mask;
  int heads_q, heads_kv, group;
  float scale;
  float scale_log2;
};

// ---- tensor-core fragments (PTX ISA, mma.m16n8k16 with .bf16/.f16 inputs) ----
// lane = 4 * g + t. A (16 x 16, row-major): a0 = (g, 2t..2t+1), a1 = (g + 8, 2t..),
// a2 = (g, 2t+8..), a3 = (g + 8, 2t+8..). B (16 x 8, k x n): b0 = (k 2t..2t+1, n g),
// b1 = (k 2t+8.., n g). C (16 x 8): c0, c1 = (g, 2t..2t+1), c2, c3 = (g + 8, 2t..).

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

template <typename T>
__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], const uint32_t b[2]);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float c[4], const uint32_t a[4],
                                                        const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float c[4], const uint32_t a[4],
                                                 const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// A fragment of rows r0.. and columns k0.. of a row-major shared tile with row stride ld.
template <typename T>
__device__ __forceinline__ void load_a(uint32_t a[4], const T* s, int ld, int r0, int k0,
                                       int g, int t) {
  const T* p = s + (r0 + g) * ld + k0 + 2 * t;
  a[0] = *reinterpret_cast<const uint32_t*>(p);
  a[1] = *reinterpret_cast<const uint32_t*>(p + 8 * ld);
  a[2] = *reinterpret_cast<const uint32_t*>(p + 8);
  a[3] = *reinterpret_cast<const uint32_t*>(p + 8 * ld + 8);
}

// B fragment (k0.., n0..) from a shared tile stored n-major: element (k, n) at s[n * ld + k].
template <typename T>
__device__ __forceinline__ void load_b_nmajor(uint32_t b[2], const T* s, int ld, int k0, int n0,
                                              int g, int t) {
  const T* p = s + (n0 + g) * ld + k0 + 2 * t;
  b[0] = *reinterpret_cast<const uint32_t*>(p);
  b[1] = *reinterpret_cast<const uint32_t*>(p + 8);
}

// B fragment (k0.., n0..) from a shared tile stored k-major: element (k, n) at s[k * ld + n].
template <typename T>
__device__ __forceinline__ void load_b_kmajor(uint32_t b[2], const T* s, int ld, int k0, int n0,
                                              int g, int t) {
  const uint16_t* p = reinterpret_cast<const uint16_t*>(s) + (k0 + 2 * t) * ld + n0 + g;
  b[0] = static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[ld]) << 16);
  b[1] = static_cast<uint32_t>(p[8 * ld]) | (static_cast<uint32_t>(p[9 * ld]) << 16);
}

// Copies kTile rows of D elements (rows pos0.. of sequence b, head h) into a shared tile with
// row stride D + kPad, zero-filling rows past the sequence. 16-byte accesses.
template <typename T, int D>
__device__ __forceinline__ void load_tile(T* s, const T* base, const Strides& st,
                                          const SeqInfo& seq, int b, int h, int64_t pos0,
                                          int64_t len) {
  constexpr int kChunks = D / 8;  // 8 elements = 16 bytes
  for (int i = threadIdx.x; i < kTile * kChunks; i += kThreads) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (pos0 + r < len) {
      value = *reinterpret_cast<const uint4*>(base + st.offset(seq, b, pos0 + r, h) + c);
    }
    *reinterpret_cast<uint4*>(s + r * (D + kPad) + c) = value;
  }
}

// Explicit conversions: torch's CUDA flags may disable the implicit half/bfloat16 operators.
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) flash_fwd_kernel(const FwdParams<T> p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int ld = D + kPad;
  T* qs = reinterpret_cast<T*>(smem_raw);
  T* ks = qs + kTile * ld;
  T* vs = ks + kTile * ld;

  const int b = blockIdx.z, h = blockIdx.y;
  const int64_t len = p.seq.length(b);
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile;
  if (r0 >= len) return;
  const int hkv = h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

  load_tile<T, D>(qs, p.q, p.sq, p.seq, b, h, r0, len);

  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY};
  float l[2] = {0.f, 0.f};  // per-thread partial sums, reduced over the quad at the end

  const int64_t hi = p.mask.causal ? min64(len, r0 + kTile) : len;
  const int64_t lo = p.mask.window > 0 ? max64(0, r0 - p.mask.window + 1) : 0;
  for (int64_t c0 = lo / kTile * kTile; c0 < hi; c0 += kTile) {
    __syncthreads();  // previous K/V tiles are consumed (and Q is staged on the first pass)
    load_tile<T, D>(ks, p.k, p.sk, p.seq, b, hkv, c0, len);
    load_tile<T, D>(vs, p.v, p.sv, p.seq, b, hkv, c0, len);
    __syncthreads();

    float s[kTile / 8][4];
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int k0 = 0; k0 < D; k0 += 16) {
      uint32_t a[4];
      load_a(a, qs, ld, warp * 16, k0, g, t);
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j) {
        uint32_t bf[2];
        load_b_nmajor(bf, ks, ld, k0, j * 8, g, t);
        mma16816<T>(s[j], a, bf);
      }
    }

#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t i = r0 + warp * 16 + g + 8 * half;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t key = c0 + j * 8 + 2 * t + e;
          float& x = s[j][2 * half + e];
          x = p.mask.visible(i, key, len) ? x * p.scale_log2 : -INFINITY;
          mx = fmaxf(mx, x);
        }
      }
      const float m_new = fmaxf(m[half], quad_max(mx));
      // A row with nothing visible yet keeps m = -inf; subtracting 0 then maps its scores to 0.
      const float shift = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(m[half] - shift);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[j][2 * half + e];
          x = exp2f(x - shift);
          sum += x;
        }
      }
      l[half] = l[half] * alpha + sum;
      m[half] = m_new;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[n][2 * half] *= alpha;
        o[n][2 * half + 1] *= alpha;
      }
    }

#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      const uint32_t a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]),
                             pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                             pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        uint32_t bf[2];
        load_b_kmajor(bf, vs, ld, kk * 16, n * 8, g, t);
        mma16816<T>(o[n], a, bf);
      }
    }
  }

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t i = r0 + warp * 16 + g + 8 * half;
    const float total = quad_sum(l[half]);
    if (i >= len) continue;
    const float inv = 1.f / total;
    T* row = p.out + p.so.offset(p.seq, b, i, h);
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<uint32_t*>(row + n * 8 + 2 * t) =
          pack2<T>(o[n][2 * half] * inv, o[n][2 * half + 1] * inv);
    }
    if (t == 0) p.lse[p.seq.lse_index(b, h, p.heads_q, i)] = (m[half] + log2f(total)) * kLn2;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward.

// Delta = rowsum(dO * O) per (token, query head), one warp per (token, head).
template <typename T, int D>
__global__ void flash_bwd_delta_kernel(const T* dout, const T* out, Strides sdo, Strides so,
                                       SeqInfo seq, int heads, int64_t max_len, float* delta) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t pos = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + warp;
  const int b = blockIdx.z, h = blockIdx.y;
  if (pos >= seq.length(b) || pos >= max_len) return;
  const T* g = dout + sdo.offset(seq, b, pos, h);
  const T* o = out + so.offset(seq, b, pos, h);
  float acc = 0.f;
  for (int d = lane; d < D; d += 32) acc += to_float(g[d]) * to_float(o[d]);
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) delta[seq.row(b, pos) * heads + h] = acc;
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) flash_bwd_kernel(const BwdParams<T> p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int ld = D + kPad;
  constexpr int lds = kTile + kPad;
  T* ks = reinterpret_cast<T*>(smem_raw);
  T* vs = ks + kTile * ld;
  T* qs = vs + kTile * ld;
  T* dos = qs + kTile * ld;
  T* dss = dos + kTile * ld;  // (queries x keys) dS of the current tile pair
  float* lse_s = reinterpret_cast<float*>(dss + kTile * lds);
  float* delta_s = lse_s + kTile;

  const int b = blockIdx.z, h = blockIdx.y;
  const int64_t len = p.seq.length(b);
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  if (c0 >= len) return;
  const int hkv = h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

  load_tile<T, D>(ks, p.k, p.sk, p.seq, b, hkv, c0, len);
  load_tile<T, D>(vs, p.v, p.sv, p.seq, b, hkv, c0, len);

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    dk[n][0] = dk[n][1] = dk[n][2] = dk[n][3] = 0.f;
    dv[n][0] = dv[n][1] = dv[n][2] = dv[n][3] = 0.f;
  }

  const int64_t c1 = min64(len, c0 + kTile);
  const int64_t i0 = p.mask.causal ? c0 : 0;
  const int64_t i1 = p.mask.window > 0 ? min64(len, c1 + p.mask.window - 1) : len;
  for (int64_t r0 = i0 / kTile * kTile; r0 < i1; r0 += kTile) {
    __syncthreads();  // the previous tile's Q, dO and dS are consumed
    load_tile<T, D>(qs, p.q, p.sq, p.seq, b, h, r0, len);
    load_tile<T, D>(dos, p.dout, p.sdo, p.seq, b, h, r0, len);
    for (int i = threadIdx.x; i < kTile; i += kThreads) {
      const bool live = r0 + i < len;
      lse_s[i] = live ? p.lse[p.seq.lse_index(b, h, p.heads_q, r0 + i)] * kLog2e : INFINITY;
      delta_s[i] = live ? p.delta[p.seq.row(b, r0 + i) * p.heads_q + h] : 0.f;
    }
    __syncthreads();

    // S^T (this warp's 16 keys x 64 queries) = K Q^T, then P^T.
    float pt[kTile / 8][4];
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j) pt[j][0] = pt[j][1] = pt[j][2] = pt[j][3] = 0.f;
#pragma unroll
    for (int k0 = 0; k0 < D; k0 += 16) {
      uint32_t a[4];
      load_a(a, ks, ld, warp * 16, k0, g, t);
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j) {
        uint32_t bf[2];
        load_b_nmajor(bf, qs, ld, k0, j * 8, g, t);
        mma16816<T>(pt[j], a, bf);
      }
    }
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = c0 + warp * 16 + g + 8 * (e / 2);
        const int qi = j * 8 + 2 * t + (e % 2);
        pt[j][e] = p.mask.visible(r0 + qi, key, len)
                       ? exp2f(pt[j][e] * p.scale_log2 - lse_s[qi])
                       : 0.f;
      }
    }

    // dV += P^T dO.
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      const uint32_t a[4] = {pack2<T>(pt[2 * kk][0], pt[2 * kk][1]),
                             pack2<T>(pt[2 * kk][2], pt[2 * kk][3]),
                             pack2<T>(pt[2 * kk + 1][0], pt[2 * kk + 1][1]),
                             pack2<T>(pt[2 * kk + 1][2], pt[2 * kk + 1][3])};
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        uint32_t bf[2];
        load_b_kmajor(bf, dos, ld, kk * 16, n * 8, g, t);
        mma16816<T>(dv[n], a, bf);
      }
    }

    // dP^T = V dO^T, then dS^T = P^T (dP^T - Delta) in place.
    float ds[kTile / 8][4];
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j) ds[j][0] = ds[j][1] = ds[j][2] = ds[j][3] = 0.f;
#pragma unroll
    for (int k0 = 0; k0 < D; k0 += 16) {
      uint32_t a[4];
      load_a(a, vs, ld, warp * 16, k0, g, t);
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j) {
        uint32_t bf[2];
        load_b_nmajor(bf, dos, ld, k0, j * 8, g, t);
        mma16816<T>(ds[j], a, bf);
      }
    }
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qi = j * 8 + 2 * t + (e % 2);
        ds[j][e] = pt[j][e] * (ds[j][e] - delta_s[qi]);
      }
    }

    // dK += dS^T Q; stage dS (queries x keys) for dQ.
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      const uint32_t a[4] = {pack2<T>(ds[2 * kk][0], ds[2 * kk][1]),
                             pack2<T>(ds[2 * kk][2], ds[2 * kk][3]),
                             pack2<T>(ds[2 * kk + 1][0], ds[2 * kk + 1][1]),
                             pack2<T>(ds[2 * kk + 1][2], ds[2 * kk + 1][3])};
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        uint32_t bf[2];
        load_b_kmajor(bf, qs, ld, kk * 16, n * 8, g, t);
        mma16816<T>(dk[n], a, bf);
      }
    }
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = warp * 16 + g + 8 * (e / 2);
        const int qi = j * 8 + 2 * t + (e % 2);
        dss[qi * lds + key] = from_float<T>(ds[j][e]);
      }
    }
    __syncthreads();

    // dQ (this warp's 16 queries x D) += dS K, one 8-wide column block at a time.
    const int64_t qrow = r0 + warp * 16 + g;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int k0 = 0; k0 < kTile; k0 += 16) {
        uint32_t a[4], bf[2];
        load_a(a, dss, lds, warp * 16, k0, g, t);
        load_b_kmajor(bf, ks, ld, k0, n * 8, g, t);
        mma16816<T>(acc, a, bf);
      }
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t i = qrow + 8 * half;
        if (i >= len) continue;
        float* dst = p.dq + (p.seq.row(b, i) * p.heads_q + h) * D + n * 8 + 2 * t;
        atomicAdd(dst, acc[2 * half] * p.scale);
        atomicAdd(dst + 1, acc[2 * half + 1] * p.scale);
      }
    }
  }

  // This warp's keys: add dK (times the softmax scale) and dV into the kv head's buffers.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t key = c0 + warp * 16 + g + 8 * half;
    if (key >= len) continue;
    const int64_t base = (p.seq.row(b, key) * p.heads_kv + hkv) * D + 2 * t;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      atomicAdd(p.dk + base + n * 8, dk[n][2 * half] * p.scale);
      atomicAdd(p.dk + base + n * 8 + 1, dk[n][2 * half + 1] * p.scale);
      atomicAdd(p.dv + base + n * 8, dv[n][2 * half]);
      atomicAdd(p.dv + base + n * 8 + 1, dv[n][2 * half + 1]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

// The tensor itself when its rows can be read with 16-byte accesses, else a contiguous copy.
at::Tensor vector_ready(const at::Tensor& t) {
  const int64_t r = t.dim();
  bool ok = t.stride(r - 1) == 1 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int64_t d = 0; d < r - 1; ++d) ok = ok && (t.stride(d) % 8 == 0 || t.size(d) == 1);
  return ok ? t : t.contiguous();
}

Strides strides_of(const at::Tensor& t, bool varlen) {
  const int64_t r = t.dim();
  return Strides{varlen ? 0 : t.stride(0), t.stride(r - 3), t.stride(r - 2)};
}

SeqInfo seq_info(const at::Tensor& q, const std::optional<at::Tensor>& cu_seqlens,
                 const AttentionProblem& p) {
  return SeqInfo{cu_seqlens.has_value() ? cu_seqlens->data_ptr<int>() : nullptr,
                 p.varlen ? 0 : p.max_len, p.varlen ? q.size(0) : 0};
}

void check_cuda_inputs(const at::Tensor& q, const AttentionProblem& p, const char* op) {
  TORCH_CHECK(q.is_cuda(), op, ": the CUDA kernel got tensors on ", q.device());
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf, op,
              ": the CUDA kernels take bfloat16 or float16 inputs (got ", q.scalar_type(),
              "); cast q, k and v with .to(torch.bfloat16)");
  TORCH_CHECK(p.head_dim == 64 || p.head_dim == 128, op, ": head_dim ", p.head_dim,
              " has no CUDA kernel; use 64 or 128");
  TORCH_CHECK(p.max_len < (int64_t{1} << 31) / kTile, op, ": sequences of ", p.max_len,
              " tokens are too long for the launch grid");
}

template <typename T, int D>
void launch_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    at::Tensor& out, at::Tensor& lse, const std::optional<at::Tensor>& cu,
                    const AttentionProblem& prob, cudaStream_t stream) {
  FwdParams<T> params{};
  params.q = reinterpret_cast<const T*>(q.data_ptr());
  params.k = reinterpret_cast<const T*>(k.data_ptr());
  params.v = reinterpret_cast<const T*>(v.data_ptr());
  params.out = reinterpret_cast<T*>(out.data_ptr());
  params.lse = lse.data_ptr<float>();
  params.sq = strides_of(q, prob.varlen);
  params.sk = strides_of(k, prob.varlen);
  params.sv = strides_of(v, prob.varlen);
  params.so = strides_of(out, prob.varlen);
  params.seq = seq_info(q, cu, prob);
  params.mask = Masking{prob.causal, static_cast<int>(prob.window)};
  params.heads_q = static_cast<int>(prob.heads_q);
  params.group = static_cast<int>(prob.heads_q / prob.heads_kv);
  params.scale_log2 = static_cast<float>(prob.scale * 1.4426950408889634);
  const size_t smem = 3 * kTile * (D + kPad) * sizeof(T);
  C10_CUDA_CHECK(cudaFuncSetAttribute(flash_fwd_kernel<T, D>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  const dim3 grid((prob.max_len + kTile - 1) / kTile, prob.heads_q, prob.batch);
  flash_fwd_kernel<T, D><<<grid, kThreads, smem, stream>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int D>
void launch_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                     at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,
                     const std::optional<at::Tensor>& cu, const AttentionProblem& prob,
                     cudaStream_t stream) {
  const SeqInfo seq = seq_info(q, cu, prob);
  const at::Tensor delta = at::empty({dq.size(0), prob.heads_q}, q.options().dtype(at::kFloat));
  {
    constexpr int kRowsPerBlock = 8;
    const dim3 grid((prob.max_len + kRowsPerBlock - 1) / kRowsPerBlock, prob.heads_q,
                    prob.batch);
    flash_bwd_delta_kernel<T, D><<<grid, 32 * kRowsPerBlock, 0, stream>>>(
        reinterpret_cast<const T*>(dout.data_ptr()), reinterpret_cast<const T*>(out.data_ptr()),
        strides_of(dout, prob.varlen), strides_of(out, prob.varlen), seq,
        static_cast<int>(prob.heads_q), prob.max_len, delta.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  BwdParams<T> params{};
  params.q = reinterpret_cast<const T*>(q.data_ptr());
  params.k = reinterpret_cast<const T*>(k.data_ptr());
  params.v = reinterpret_cast<const T*>(v.data_ptr());
  params.dout = reinterpret_cast<const T*>(dout.data_ptr());
  params.lse = lse.data_ptr<float>();
  params.delta = delta.data_ptr<float>();
  params.dq = dq.data_ptr<float>();
  params.dk = dk.data_ptr<float>();
  params.dv = dv.data_ptr<float>();
  params.sq = strides_of(q, prob.varlen);
  params.sk = strides_of(k, prob.varlen);
  params.sv = strides_of(v, prob.varlen);
  params.sdo = strides_of(dout, prob.varlen);
  params.seq = seq;
  params.mask = Masking{prob.causal, static_cast<int>(prob.window)};
  params.heads_q = static_cast<int>(prob.heads_q);
  params.heads_kv = static_cast<int>(prob.heads_kv);
  params.group = static_cast<int>(prob.heads_q / prob.heads_kv);
  params.scale = static_cast<float>(prob.scale);
  params.scale_log2 = static_cast<float>(prob.scale * 1.4426950408889634);
  const size_t smem = (4 * kTile * (D + kPad) + kTile * (kTile + kPad)) * sizeof(T) +
                      2 * kTile * sizeof(float);
  C10_CUDA_CHECK(cudaFuncSetAttribute(flash_bwd_kernel<T, D>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  const dim3 grid((prob.max_len + kTile - 1) / kTile, prob.heads_q, prob.batch);
  flash_bwd_kernel<T, D><<<grid, kThreads, smem, stream>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls fn.template operator()<T, D>() for the input's dtype and head dim.
template <typename Fn>
void dispatch(at::ScalarType dtype, int64_t head_dim, Fn&& fn) {
  if (dtype == at::kBFloat16) {
    if (head_dim == 64) return fn.template operator()<__nv_bfloat16, 64>();
    return fn.template operator()<__nv_bfloat16, 128>();
  }
  if (head_dim == 64) return fn.template operator()<__half, 64>();
  return fn.template operator()<__half, 128>();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> flash_attention_forward_cuda(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen, double softmax_scale,
    bool causal, int64_t window) {
  constexpr const char* op = "crucible::flash_attention_forward";
  const AttentionProblem p = check_forward_inputs(q_in, k_in, v_in, cu_seqlens, max_seqlen,
                                                  softmax_scale, causal, window, op);
  check_cuda_inputs(q_in, p, op);
  const c10::cuda::CUDAGuard device_guard(q_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor q = vector_ready(q_in), k = vector_ready(k_in), v = vector_ready(v_in);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty(lse_shape(q, p), q.options().dtype(at::kFloat));
  if (q.numel() == 0 || p.max_len == 0) return {out, lse};
  const std::optional<at::Tensor> cu =
      cu_seqlens.has_value() ? std::optional<at::Tensor>(cu_seqlens->contiguous()) : std::nullopt;
  dispatch(q.scalar_type(), p.head_dim, [&]<typename T, int D>() {
    launch_forward<T, D>(q, k, v, out, lse, cu, p, stream);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse_in,
    const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen, double softmax_scale,
    bool causal, int64_t window) {
  constexpr const char* op = "crucible::flash_attention_backward";
  const AttentionProblem p = check_forward_inputs(q_in, k_in, v_in, cu_seqlens, max_seqlen,
                                                  softmax_scale, causal, window, op);
  check_backward_inputs(grad_out, q_in, out_in, lse_in, p, op);
  check_cuda_inputs(q_in, p, op);
  const c10::cuda::CUDAGuard device_guard(q_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor q = vector_ready(q_in), k = vector_ready(k_in), v = vector_ready(v_in);
  const at::Tensor dout = vector_ready(grad_out), out = vector_ready(out_in);
  const at::Tensor lse = lse_in.contiguous();
  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor dq = at::zeros(q.sizes(), f32);  // contiguous fp32 accumulators
  at::Tensor dk = at::zeros(k.sizes(), f32);
  at::Tensor dv = at::zeros(v.sizes(), f32);
  if (q.numel() > 0 && p.max_len > 0) {
    const std::optional<at::Tensor> cu =
        cu_seqlens.has_value() ? std::optional<at::Tensor>(cu_seqlens->contiguous())
                               : std::nullopt;
    // The kernels index the fp32 buffers as (rows, heads, D): flatten the batch dimension.
    at::Tensor dq_rows = dq.view({-1, p.heads_q, p.head_dim});
    at::Tensor dk_rows = dk.view({-1, p.heads_kv, p.head_dim});
    at::Tensor dv_rows = dv.view({-1, p.heads_kv, p.head_dim});
    dispatch(q.scalar_type(), p.head_dim, [&]<typename T, int D>() {
      launch_backward<T, D>(dout, q, k, v, out, lse, dq_rows, dk_rows, dv_rows, cu, p, stream);
    });
  }
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type())};
}

}  // namespace crucible::attention
