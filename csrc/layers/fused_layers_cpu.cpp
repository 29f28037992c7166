// Fused RMSNorm, RoPE and SwiGLU on the CPU (fused_layers.h has the maths and layouts).
//
// Every kernel is a plain loop over rows (RMSNorm, RoPE) or elements (SwiGLU) that the compiler
// vectorises; each is compiled for AVX-512, AVX2 and baseline x86-64 (GCC target_clones) and the
// best variant is picked at load time for the running CPU. Rows are split across ATen's
// intra-op threads (OpenMP through at::parallel_for). bfloat16 is read and written as its bit
// pattern and computed in fp32. CMake compiles with -ffp-contract=off, so every product and sum
// rounds on its own as in the ATen ops these replace: RoPE is bit-identical to the torch
// composition, RMSNorm's forward differs only in the order of the sum of squares (its backward
// is the same maths as autograd's in another order). SwiGLU, whose exp() cannot match ATen's
// bit for bit anyway, alone allows FMAs (see its section).
#include "fused_layers.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>

#include "common/cpu_simd.h"

namespace crucible::layers {
namespace {

using crucible::cpu::kMinParallelElements;

// Row sums run in fp32 lanes over blocks of this many elements, the block sums added in turn:
// the error grows with D / kSumBlock + kSumBlock / lanes instead of D / lanes.
constexpr int64_t kSumBlock = 512;

using bf16 = uint16_t;  // bfloat16 storage: the upper half of an IEEE float

// The type a kernel computes in: double for float64 storage, float for float32 and bfloat16.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename A, typename T>
CRUCIBLE_INLINE A load(T v) {
  if constexpr (std::is_same_v<T, bf16>) {
    return static_cast<A>(crucible::cpu::bf16_to_float(v));
  } else {
    return static_cast<A>(v);
  }
}

// Round-to-nearest-even, NaN kept quiet (crucible::cpu::float_to_bf16).
template <typename T, typename A>
CRUCIBLE_INLINE T store(A v) {
  if constexpr (std::is_same_v<T, bf16>) {
    return crucible::cpu::float_to_bf16(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

// ---- RMSNorm ----

template <typename X, typename W, typename O>
CRUCIBLE_INLINE void rms_norm_forward_rows(const X* x, const W* __restrict w, O* y,
                                           acc_t<X>* __restrict rstd, int64_t begin, int64_t end,
                                           int64_t dim, double eps) {
  using A = acc_t<X>;
  const A eps_a = static_cast<A>(eps);
  const A dim_a = static_cast<A>(dim);
  for (int64_t row = begin; row < end; ++row) {
    const X* __restrict xr = x + row * dim;
    O* __restrict yr = y + row * dim;
    A sumsq = 0;
    for (int64_t b = 0; b < dim; b += kSumBlock) {
      const int64_t e = std::min(dim, b + kSumBlock);
      A part = 0;
#pragma omp simd reduction(+ : part)
      for (int64_t i = b; i < e; ++i) {
        const A v = load<A>(xr[i]);
        part += v * v;
      }
      sumsq += part;
    }
    // As F.rms_norm: rsqrt(mean(x^2) + eps), the mean a sum divided by D.
    const A r = A(1) / std::sqrt(sumsq / dim_a + eps_a);
    rstd[row] = r;
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i) {
      const A normed = load<A>(store<X>(load<A>(xr[i]) * r));  // .type_as(x)
      yr[i] = store<O>(normed * load<A>(w[i]));
    }
  }
}

// grad_x = rstd * (g - xhat * mean(g * xhat)) with g = grad_y * weight and xhat = x * rstd;
// grad_weight accumulates grad_y * round_x(xhat) (the normalised row the forward multiplied)
// into this thread's fp32 row `gw`.
template <typename X, typename W, typename O>
CRUCIBLE_INLINE void rms_norm_backward_rows(const O* grad_y, const X* x, const W* __restrict w,
                                            const acc_t<X>* __restrict rstd, X* grad_x,
                                            acc_t<X>* __restrict gw, int64_t begin, int64_t end,
                                            int64_t dim) {
  using A = acc_t<X>;
  const A dim_a = static_cast<A>(dim);
  for (int64_t row = begin; row < end; ++row) {
    const O* __restrict gr = grad_y + row * dim;
    const X* __restrict xr = x + row * dim;
    X* __restrict gxr = grad_x + row * dim;
    const A r = rstd[row];
    A dot = 0;  // sum(g * x)
    for (int64_t b = 0; b < dim; b += kSumBlock) {
      const int64_t e = std::min(dim, b + kSumBlock);
      A part = 0;
#pragma omp simd reduction(+ : part)
      for (int64_t i = b; i < e; ++i) {
        const A go = load<A>(gr[i]);
        const A xv = load<A>(xr[i]);
        part += go * load<A>(w[i]) * xv;
        gw[i] += go * load<A>(store<X>(xv * r));
      }
      dot += part;
    }
    const A mean_g_xhat = dot * r / dim_a;
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i) {
      const A g = load<A>(gr[i]) * load<A>(w[i]);
      const A xhat = load<A>(xr[i]) * r;
      gxr[i] = store<X>(r * (g - xhat * mean_g_xhat));
    }
  }
}

// Non-template entry points (overloaded on the storage types) so each combination gets its own
// set of ISA clones.
#define CRUCIBLE_DEFINE_RMS_NORM(X, W, O)                                                     \
  CRUCIBLE_SIMD_CLONES void rms_norm_forward_kernel(const X* x, const W* w, O* y,             \
                                                    acc_t<X>* rstd, int64_t begin,            \
                                                    int64_t end, int64_t dim, double eps) {   \
    rms_norm_forward_rows<X, W, O>(x, w, y, rstd, begin, end, dim, eps);                      \
  }                                                                                           \
  CRUCIBLE_SIMD_CLONES void rms_norm_backward_kernel(                                         \
      const O* grad_y, const X* x, const W* w, const acc_t<X>* rstd, X* grad_x, acc_t<X>* gw, \
      int64_t begin, int64_t end, int64_t dim) {                                              \
    rms_norm_backward_rows<X, W, O>(grad_y, x, w, rstd, grad_x, gw, begin, end, dim);         \
  }
CRUCIBLE_DEFINE_RMS_NORM(float, float, float)
CRUCIBLE_DEFINE_RMS_NORM(float, bf16, float)
CRUCIBLE_DEFINE_RMS_NORM(bf16, float, float)
CRUCIBLE_DEFINE_RMS_NORM(bf16, bf16, bf16)
CRUCIBLE_DEFINE_RMS_NORM(double, double, double)
#undef CRUCIBLE_DEFINE_RMS_NORM

// ---- RoPE ----

// Rows are (batch, position) pairs; the tables are addressed through their batch and position
// strides, 0 where they broadcast.
struct RopeShape {
  int64_t seqlen, heads, dim;
  int64_t cos_batch, cos_pos, sin_batch, sin_pos;
};

// Forward: y1 = x1 c1 - x2 s1, y2 = x2 c2 + x1 s2 (halves 1 and 2 of the head dimension).
// Backward, the transpose: g1 c1 + g2 s2 and g2 c2 - g1 s1. a + (-b) * s and a - b * s round
// identically, so this is bit for bit x * cos + rotate_half(x) * sin.
template <bool kBackward, typename X, typename C>
CRUCIBLE_INLINE void rope_rows(const X* x, const C* cos, const C* sin, X* y, int64_t begin,
                               int64_t end, const RopeShape& s) {
  using A = acc_t<X>;
  const int64_t half = s.dim / 2;
  for (int64_t bt = begin; bt < end; ++bt) {
    const int64_t b = bt / s.seqlen;
    const int64_t t = bt % s.seqlen;
    const C* __restrict c = cos + b * s.cos_batch + t * s.cos_pos;
    const C* __restrict sn = sin + b * s.sin_batch + t * s.sin_pos;
    for (int64_t h = 0; h < s.heads; ++h) {
      const int64_t offset = (bt * s.heads + h) * s.dim;
      const X* __restrict xr = x + offset;
      X* __restrict yr = y + offset;
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        const A x1 = load<A>(xr[i]);
        const A x2 = load<A>(xr[i + half]);
        const A c1 = load<A>(c[i]);
        const A c2 = load<A>(c[i + half]);
        const A s1 = load<A>(sn[i]);
        const A s2 = load<A>(sn[i + half]);
        if constexpr (kBackward) {
          yr[i] = store<X>(x1 * c1 + x2 * s2);
          yr[i + half] = store<X>(x2 * c2 - x1 * s1);
        } else {
          yr[i] = store<X>(x1 * c1 - x2 * s1);
          yr[i + half] = store<X>(x2 * c2 + x1 * s2);
        }
      }
    }
  }
}

#define CRUCIBLE_DEFINE_ROPE(X, C)                                                            \
  CRUCIBLE_SIMD_CLONES void rope_forward_kernel(const X* x, const C* cos, const C* sin, X* y, \
                                                int64_t begin, int64_t end,                   \
                                                const RopeShape& s) {                         \
    rope_rows<false>(x, cos, sin, y, begin, end, s);                                          \
  }                                                                                           \
  CRUCIBLE_SIMD_CLONES void rope_backward_kernel(const X* x, const C* cos, const C* sin,      \
                                                 X* y, int64_t begin, int64_t end,            \
                                                 const RopeShape& s) {                        \
    rope_rows<true>(x, cos, sin, y, begin, end, s);                                           \
  }
CRUCIBLE_DEFINE_ROPE(float, float)
CRUCIBLE_DEFINE_ROPE(bf16, float)
CRUCIBLE_DEFINE_ROPE(double, float)
CRUCIBLE_DEFINE_ROPE(double, double)
#undef CRUCIBLE_DEFINE_ROPE

// ---- SwiGLU ----

// exp() cannot round exactly as ATen's (SLEEF) does, so here alone products and sums may fuse
// into FMAs where the CPU has them (the AVX2 and AVX-512 clones): fewer instructions in a loop
// that is compute-bound, and no less accurate.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")

// exp(x) in fp32 to about 1 ulp (Cephes expf): x = n ln2 + r with |r| <= ln2 / 2, a degree-6
// polynomial for e^r, and 2^n built in the exponent bits. Written without calls or integer
// conversions of NaN so that it vectorises; NaN stays NaN, large x gives +inf, and x below
// -87.3 gives exp(-87.3) ~ 1e-38 instead of a denormal (only ever added to 1 here).
CRUCIBLE_INLINE float exp_f32(float x) {
  constexpr float kMaxArg = 88.3762626647949f;  // largest x with n <= 127
  constexpr float kMinArg = -87.3365447505531f;  // smallest x with n >= -126
  constexpr float kShift = 12582912.0f;          // 1.5 * 2^23: adding it rounds to an integer
  float xc = x > kMaxArg ? kMaxArg : x;
  xc = xc < kMinArg ? kMinArg : xc;
  const float shifted = xc * 1.44269504088896341f + kShift;
  const float n = shifted - kShift;
  float r = xc - n * 0.693359375f;  // ln2 in two parts: n * the first is exact
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  // The low bits of `shifted` hold n + 2^22; unsigned arithmetic keeps NaN inputs defined.
  const uint32_t n_bits = std::bit_cast<uint32_t>(shifted) - std::bit_cast<uint32_t>(kShift);
  const float scale = std::bit_cast<float>((n_bits + 127u) << 23);
  const float result = p * scale;
  return x > 88.72283905206835f ? std::numeric_limits<float>::infinity() : result;
}

template <typename A>
CRUCIBLE_INLINE A exp_acc(A x) {
  if constexpr (std::is_same_v<A, float>) {
    return exp_f32(x);
  } else {
    return std::exp(x);
  }
}

// silu(g) = g / (1 + exp(-g)) as ATen computes it, times up, rounded once.
template <typename T>
CRUCIBLE_INLINE void swiglu_forward_range(const T* __restrict gate, const T* __restrict up,
                                          T* __restrict y, int64_t n) {
  using A = acc_t<T>;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const A g = load<A>(gate[i]);
    y[i] = store<T>(g / (A(1) + exp_acc(-g)) * load<A>(up[i]));
  }
}

// grad_up = grad * silu(g); grad_gate = grad * up * sigmoid(g) * (1 + g * (1 - sigmoid(g))),
// the expression of ATen's silu_backward.
template <typename T>
CRUCIBLE_INLINE void swiglu_backward_range(const T* __restrict grad, const T* __restrict gate,
                                           const T* __restrict up, T* __restrict grad_gate,
                                           T* __restrict grad_up, int64_t n) {
  using A = acc_t<T>;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const A dy = load<A>(grad[i]);
    const A g = load<A>(gate[i]);
    const A sig = A(1) / (A(1) + exp_acc(-g));  // one division: silu(g) = g * sig here
    grad_up[i] = store<T>(dy * (g * sig));
    grad_gate[i] = store<T>(dy * load<A>(up[i]) * sig * (A(1) + g * (A(1) - sig)));
  }
}

#define CRUCIBLE_DEFINE_SWIGLU(T)                                                          \
  CRUCIBLE_SIMD_CLONES void swiglu_forward_kernel(const T* gate, const T* up, T* y,        \
                                                  int64_t n) {                             \
    swiglu_forward_range(gate, up, y, n);                                                  \
  }                                                                                        \
  CRUCIBLE_SIMD_CLONES void swiglu_backward_kernel(const T* grad, const T* gate,           \
                                                   const T* up, T* grad_gate, T* grad_up,  \
                                                   int64_t n) {                            \
    swiglu_backward_range(grad, gate, up, grad_gate, grad_up, n);                          \
  }
CRUCIBLE_DEFINE_SWIGLU(float)
CRUCIBLE_DEFINE_SWIGLU(bf16)
CRUCIBLE_DEFINE_SWIGLU(double)
#undef CRUCIBLE_DEFINE_SWIGLU

#pragma GCC pop_options

// ---- host side: pointers, dispatch, threads ----

template <typename T>
const T* data(const at::Tensor& t) {
  if constexpr (std::is_same_v<T, bf16>) {
    return reinterpret_cast<const bf16*>(t.const_data_ptr<at::BFloat16>());
  } else {
    return t.const_data_ptr<T>();
  }
}

template <typename T>
T* mutable_data(at::Tensor& t) {
  if constexpr (std::is_same_v<T, bf16>) {
    return reinterpret_cast<bf16*>(t.mutable_data_ptr<at::BFloat16>());
  } else {
    return t.mutable_data_ptr<T>();
  }
}

// Calls fn.template operator()<T>() with T the storage type of `dtype` (checked before).
template <typename Fn>
void dispatch_storage(at::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case at::kFloat: return fn.template operator()<float>();
    case at::kBFloat16: return fn.template operator()<bf16>();
    case at::kDouble: return fn.template operator()<double>();
    default: TORCH_CHECK(false, "crucible layers: unexpected dtype ", dtype);
  }
}

// The row kernels: fn(begin, end) over [0, rows), split across threads in chunks of whole rows
// worth at least kMinParallelElements.
template <typename Fn>
void parallel_rows(int64_t rows, int64_t row_elements, Fn&& fn) {
  const int64_t grain =
      std::max<int64_t>(1, kMinParallelElements / std::max<int64_t>(1, row_elements));
  at::parallel_for(0, rows, grain, fn);
}

// x and weight dtypes -> the dtype of y: torch.result_type(x, weight) for the pairs accepted.
at::ScalarType rms_norm_out_dtype(at::ScalarType x, at::ScalarType w) {
  if (x == at::kDouble) return at::kDouble;
  return x == at::kBFloat16 && w == at::kBFloat16 ? at::kBFloat16 : at::kFloat;
}

at::ScalarType stat_dtype(at::ScalarType x) { return x == at::kDouble ? at::kDouble : at::kFloat; }

#define CHECK_OP(cond, ...) TORCH_CHECK(cond, op, ": ", __VA_ARGS__)

void check_float_tensor(const at::Tensor& t, const char* name, const char* op) {
  const auto dt = t.scalar_type();
  CHECK_OP(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kDouble, name, " has dtype ", dt,
           "; supported dtypes are float32, bfloat16 and float64 (engine.ops.layers runs the "
           "torch composition for others)");
  CHECK_OP(t.layout() == at::kStrided, name, " is a ", t.layout(),
           " tensor; pass a dense (strided) tensor");
  CHECK_OP(t.device().is_cpu(), name, " is on ", t.device(),
           "; these kernels are CPU-only (engine.ops.layers runs the torch composition on other "
           "devices)");
}

void check_rms_norm_inputs(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  check_float_tensor(x, "x", op);
  check_float_tensor(weight, "weight", op);
  CHECK_OP(x.dim() >= 1 && x.size(-1) >= 1, "x has shape ", x.sizes(),
           "; it needs a non-empty last (feature) dimension");
  CHECK_OP(weight.dim() == 1 && weight.size(0) == x.size(-1), "weight has shape ",
           weight.sizes(), " but x has shape ", x.sizes(), "; weight must be (", x.size(-1),
           "), one scale per feature");
  CHECK_OP((x.scalar_type() == at::kDouble) == (weight.scalar_type() == at::kDouble), "x is ",
           x.scalar_type(), " and weight is ", weight.scalar_type(),
           "; float64 is supported for both or neither, so cast one of them");
}

void check_rope_input(const at::Tensor& x, const char* name, const char* op) {
  check_float_tensor(x, name, op);
  CHECK_OP(x.dim() == 4, name, " has shape ", x.sizes(),
           "; expected (batch, seqlen, heads, head_dim)");
  CHECK_OP(x.size(3) > 0 && x.size(3) % 2 == 0, name, " has head_dim ", x.size(3),
           "; rotate-half RoPE needs an even head_dim (it pairs element i with i + head_dim/2)");
}

// cos/sin: (B or 1, T or 1, 1, D), float32 or x's float64. Returns the table with a unit stride
// in its last dimension (a copy only if it had none).
at::Tensor checked_table(const at::Tensor& table, const char* name, const at::Tensor& x,
                         const char* op) {
  check_float_tensor(table, name, op);
  const auto dt = table.scalar_type();
  CHECK_OP(dt == at::kFloat || (dt == at::kDouble && x.scalar_type() == at::kDouble), name,
           " has dtype ", dt, "; the tables must be float32 (as engine.model.layers.rope_tables "
           "returns them), or float64 with float64 inputs");
  const bool ok = table.dim() == 4 && (table.size(0) == 1 || table.size(0) == x.size(0)) &&
                  (table.size(1) == 1 || table.size(1) == x.size(1)) && table.size(2) == 1 &&
                  table.size(3) == x.size(3);
  CHECK_OP(ok, name, " has shape ", table.sizes(), "; expected (", x.size(0), ", ", x.size(1),
           ", 1, ", x.size(3), ") for input of shape ", x.sizes(),
           " (size 1 in the first two dimensions broadcasts)");
  return table.stride(3) == 1 ? table : table.contiguous();
}

at::Tensor rope_apply(const at::Tensor& x_in, const at::Tensor& cos_in, const at::Tensor& sin_in,
                      bool backward, const char* op) {
  const char* x_name = backward ? "grad_y" : "x";
  check_rope_input(x_in, x_name, op);
  const at::Tensor cos = checked_table(cos_in, "cos", x_in, op);
  const at::Tensor sin = checked_table(sin_in, "sin", x_in, op);
  CHECK_OP(cos.scalar_type() == sin.scalar_type(), "cos (", cos.scalar_type(), ") and sin (",
           sin.scalar_type(), ") must share one dtype");
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) return y;
  const RopeShape shape{x.size(1),
                        x.size(2),
                        x.size(3),
                        cos.size(0) == 1 ? 0 : cos.stride(0),
                        cos.size(1) == 1 ? 0 : cos.stride(1),
                        sin.size(0) == 1 ? 0 : sin.stride(0),
                        sin.size(1) == 1 ? 0 : sin.stride(1)};
  const int64_t rows = x.size(0) * x.size(1);
  dispatch_storage(x.scalar_type(), [&]<typename X>() {
    const auto run = [&]<typename C>() {
      const X* xp = data<X>(x);
      const C* cp = data<C>(cos);
      const C* sp = data<C>(sin);
      X* yp = mutable_data<X>(y);
      parallel_rows(rows, shape.heads * shape.dim, [&](int64_t begin, int64_t end) {
        if (backward) {
          rope_backward_kernel(xp, cp, sp, yp, begin, end, shape);
        } else {
          rope_forward_kernel(xp, cp, sp, yp, begin, end, shape);
        }
      });
    };
    if constexpr (std::is_same_v<X, double>) {
      if (cos.scalar_type() == at::kDouble) return run.template operator()<double>();
    }
    run.template operator()<float>();
  });
  return y;
}

void check_swiglu_pair(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                       const char* b_name, const char* op) {
  check_float_tensor(a, a_name, op);
  check_float_tensor(b, b_name, op);
  CHECK_OP(a.sizes() == b.sizes(), a_name, " ", a.sizes(), " and ", b_name, " ", b.sizes(),
           " must have the same shape");
  CHECK_OP(a.scalar_type() == b.scalar_type(), a_name, " (", a.scalar_type(), ") and ", b_name,
           " (", b.scalar_type(), ") must share one dtype; cast one of them");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rms_norm_forward_cpu(const at::Tensor& x_in,
                                                        const at::Tensor& weight_in, double eps) {
  constexpr const char* op = "rms_norm_forward";
  check_rms_norm_inputs(x_in, weight_in, op);
  CHECK_OP(std::isfinite(eps) && eps >= 0, "eps ", eps, " must be finite and >= 0");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const int64_t dim = x.size(-1);
  const int64_t rows = x.numel() / dim;
  at::Tensor y =
      at::empty(x.sizes(), x.options().dtype(rms_norm_out_dtype(x.scalar_type(),
                                                                weight.scalar_type())));
  at::Tensor rstd =
      at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(stat_dtype(x.scalar_type())));
  if (rows == 0) return {y, rstd};
  dispatch_storage(x.scalar_type(), [&]<typename X>() {
    dispatch_storage(weight.scalar_type(), [&]<typename W>() {
      if constexpr (std::is_same_v<X, double> == std::is_same_v<W, double>) {
        using O = std::conditional_t<std::is_same_v<X, bf16> && std::is_same_v<W, bf16>, bf16,
                                     acc_t<X>>;
        const X* xp = data<X>(x);
        const W* wp = data<W>(weight);
        O* yp = mutable_data<O>(y);
        acc_t<X>* rp = mutable_data<acc_t<X>>(rstd);
        parallel_rows(rows, dim, [&](int64_t begin, int64_t end) {
          rms_norm_forward_kernel(xp, wp, yp, rp, begin, end, dim, eps);
        });
      }
    });
  });
  return {y, rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_backward_cpu(const at::Tensor& grad_y_in,
                                                         const at::Tensor& x_in,
                                                         const at::Tensor& weight_in,
                                                         const at::Tensor& rstd_in) {
  constexpr const char* op = "rms_norm_backward";
  check_rms_norm_inputs(x_in, weight_in, op);
  check_float_tensor(grad_y_in, "grad_y", op);
  const auto out_dtype = rms_norm_out_dtype(x_in.scalar_type(), weight_in.scalar_type());
  CHECK_OP(grad_y_in.sizes() == x_in.sizes() && grad_y_in.scalar_type() == out_dtype,
           "grad_y is ", grad_y_in.scalar_type(), " ", grad_y_in.sizes(), "; expected ",
           out_dtype, " ", x_in.sizes(), " like the output of rms_norm_forward");
  const auto want = stat_dtype(x_in.scalar_type());
  const auto rows_shape = x_in.sizes().slice(0, x_in.dim() - 1);
  CHECK_OP(rstd_in.scalar_type() == want && rstd_in.sizes() == rows_shape &&
               rstd_in.device().is_cpu(),
           "rstd must be the ", want, " CPU tensor of shape ", rows_shape,
           " that rms_norm_forward returned (got ", rstd_in.scalar_type(), " ", rstd_in.sizes(),
           " on ", rstd_in.device(), ")");
  const at::Tensor grad_y = grad_y_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor rstd = rstd_in.contiguous();
  const int64_t dim = x.size(-1);
  const int64_t rows = x.numel() / dim;
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  if (rows == 0) return {grad_x, at::zeros(weight.sizes(), weight.options())};
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options());

  // One fp32 (fp64) grad_weight row per chunk of rows; the chunks depend only on the shape and
  // the thread count, and their rows are summed in chunk order, so the result is deterministic
  // for a given thread count.
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t chunks = std::clamp<int64_t>(rows * dim / kMinParallelElements, 1,
                                             std::min<int64_t>(threads, rows));
  at::Tensor partial = at::zeros({chunks, dim}, x.options().dtype(want));

  dispatch_storage(x.scalar_type(), [&]<typename X>() {
    dispatch_storage(weight.scalar_type(), [&]<typename W>() {
      if constexpr (std::is_same_v<X, double> == std::is_same_v<W, double>) {
        using A = acc_t<X>;
        using O = std::conditional_t<std::is_same_v<X, bf16> && std::is_same_v<W, bf16>, bf16,
                                     A>;
        const O* gp = data<O>(grad_y);
        const X* xp = data<X>(x);
        const W* wp = data<W>(weight);
        const A* rp = data<A>(rstd);
        X* gxp = mutable_data<X>(grad_x);
        A* pp = mutable_data<A>(partial);
        at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
          for (int64_t c = begin; c < end; ++c) {
            rms_norm_backward_kernel(gp, xp, wp, rp, gxp, pp + c * dim, rows * c / chunks,
                                     rows * (c + 1) / chunks, dim);
          }
        });
        W* gwp = mutable_data<W>(grad_weight);
        for (int64_t i = 0; i < dim; ++i) {
          A sum = pp[i];
          for (int64_t c = 1; c < chunks; ++c) sum += pp[c * dim + i];
          gwp[i] = store<W>(sum);
        }
      }
    });
  });
  return {grad_x, grad_weight};
}

at::Tensor rope_forward_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return rope_apply(x, cos, sin, /*backward=*/false, "rope_forward");
}

at::Tensor rope_backward_cpu(const at::Tensor& grad_y, const at::Tensor& cos,
                             const at::Tensor& sin) {
  return rope_apply(grad_y, cos, sin, /*backward=*/true, "rope_backward");
}

at::Tensor swiglu_forward_cpu(const at::Tensor& gate_in, const at::Tensor& up_in) {
  constexpr const char* op = "swiglu_forward";
  check_swiglu_pair(gate_in, "gate", up_in, "up", op);
  const at::Tensor gate = gate_in.contiguous();
  const at::Tensor up = up_in.contiguous();
  at::Tensor y = at::empty(gate.sizes(), gate.options());
  dispatch_storage(gate.scalar_type(), [&]<typename T>() {
    const T* gp = data<T>(gate);
    const T* up_p = data<T>(up);
    T* yp = mutable_data<T>(y);
    at::parallel_for(0, gate.numel(), kMinParallelElements, [&](int64_t begin, int64_t end) {
      swiglu_forward_kernel(gp + begin, up_p + begin, yp + begin, end - begin);
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> swiglu_backward_cpu(const at::Tensor& grad_in,
                                                       const at::Tensor& gate_in,
                                                       const at::Tensor& up_in) {
  constexpr const char* op = "swiglu_backward";
  check_swiglu_pair(gate_in, "gate", up_in, "up", op);
  check_swiglu_pair(grad_in, "grad", gate_in, "gate", op);
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor gate = gate_in.contiguous();
  const at::Tensor up = up_in.contiguous();
  at::Tensor grad_gate = at::empty(gate.sizes(), gate.options());
  at::Tensor grad_up = at::empty(gate.sizes(), gate.options());
  dispatch_storage(gate.scalar_type(), [&]<typename T>() {
    const T* dp = data<T>(grad);
    const T* gp = data<T>(gate);
    const T* up_p = data<T>(up);
    T* ggp = mutable_data<T>(grad_gate);
    T* gup = mutable_data<T>(grad_up);
    at::parallel_for(0, gate.numel(), kMinParallelElements, [&](int64_t begin, int64_t end) {
      swiglu_backward_kernel(dp + begin, gp + begin, up_p + begin, ggp + begin, gup + begin,
                             end - begin);
    });
  });
  return {grad_gate, grad_up};
}

#undef CHECK_OP

}  // namespace crucible::layers
