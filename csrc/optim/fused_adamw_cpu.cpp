// Fused AdamW and the global gradient norm on the CPU.
//
// The whole parameter list is treated as one flat element range and split evenly across
// ATen's intra-op threads (OpenMP), so a list of many small tensors and a list of one huge
// tensor balance equally well. Each thread walks its range tensor by tensor with one
// SIMD-vectorised loop per segment; the loops are compiled for AVX-512, AVX2 and baseline
// x86-64 (GCC target_clones) and the best one is picked at load time for the running CPU.
//
// Arithmetic follows torch.optim.AdamW (foreach=False) operation for operation, in fp32:
//   p  = p * (1 - lr * wd)
//   m  = m + (1 - b1) * (g - m)                  (lerp)
//   v  = v * b2 + (1 - b2) * g * g               (mul_ + addcmul_)
//   p  = p - lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
// with g = grad * grad_scale (the clip coefficient) negated when maximising.
#include "fused_adamw.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "common/cpu_simd.h"

namespace crucible::optim {
namespace {

using crucible::cpu::bf16_to_float;
using crucible::cpu::float_to_bf16;
using crucible::cpu::kMinParallelElements;

// One segment of one tensor. P is the parameter storage type (float, or uint16_t for bf16).
template <typename P, bool kMaster, bool kAmsgrad>
CRUCIBLE_INLINE void adamw_segment(P* __restrict param, float* __restrict master,
                                   const P* __restrict grad, float* __restrict exp_avg,
                                   float* __restrict exp_avg_sq, float* __restrict max_sq,
                                   int64_t n, const AdamWCoeffs c,
                                   float grad_mul) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float g;
    float p;
    if constexpr (std::is_same_v<P, float>) {
      g = grad[i] * grad_mul;
      p = kMaster ? master[i] : param[i];
    } else {
      g = bf16_to_float(grad[i]) * grad_mul;
      p = kMaster ? master[i] : bf16_to_float(param[i]);
    }
    p = p * c.decay;
    const float m = exp_avg[i] + c.w1 * (g - exp_avg[i]);
    const float v = exp_avg_sq[i] * c.b2 + c.w2 * (g * g);
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    float vhat = v;
    if constexpr (kAmsgrad) {
      vhat = std::max(max_sq[i], v);
      max_sq[i] = vhat;
    }
    const float denom = std::sqrt(vhat) / c.bc2_sqrt + c.eps;
    p = p + c.neg_step * (m / denom);
    if constexpr (kMaster) master[i] = p;
    if constexpr (std::is_same_v<P, float>) {
      param[i] = p;
    } else {
      param[i] = float_to_bf16(p);
    }
  }
}

// Non-template entry points so each variant gets its own set of ISA clones.
#define CRUCIBLE_DEFINE_SEGMENT(NAME, P, MASTER, AMSGRAD)                                     \
  CRUCIBLE_SIMD_CLONES void NAME(P* param, float* master, const P* grad, float* exp_avg,      \
                                 float* exp_avg_sq, float* max_sq, int64_t n,                 \
                                 const AdamWCoeffs& c, float grad_mul) {                      \
    adamw_segment<P, MASTER, AMSGRAD>(param, master, grad, exp_avg, exp_avg_sq, max_sq, n, c,  \
                                      grad_mul);                                              \
  }
CRUCIBLE_DEFINE_SEGMENT(segment_f32, float, false, false)
CRUCIBLE_DEFINE_SEGMENT(segment_f32_ams, float, false, true)
CRUCIBLE_DEFINE_SEGMENT(segment_f32_master, float, true, false)
CRUCIBLE_DEFINE_SEGMENT(segment_f32_master_ams, float, true, true)
CRUCIBLE_DEFINE_SEGMENT(segment_bf16, uint16_t, false, false)
CRUCIBLE_DEFINE_SEGMENT(segment_bf16_ams, uint16_t, false, true)
CRUCIBLE_DEFINE_SEGMENT(segment_bf16_master, uint16_t, true, false)
CRUCIBLE_DEFINE_SEGMENT(segment_bf16_master_ams, uint16_t, true, true)
#undef CRUCIBLE_DEFINE_SEGMENT

// Sum of squares of one segment: fp32 lanes over short blocks, blocks accumulated in double.
template <typename T>
CRUCIBLE_INLINE double sumsq_segment(const T* __restrict x, int64_t n) {
  constexpr int64_t kBlock = 2048;
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = b; i < e; ++i) {
      float v;
      if constexpr (std::is_same_v<T, float>) {
        v = x[i];
      } else {
        v = bf16_to_float(x[i]);
      }
      acc += v * v;
    }
    total += acc;
  }
  return total;
}
CRUCIBLE_SIMD_CLONES double sumsq_f32(const float* x, int64_t n) { return sumsq_segment(x, n); }
CRUCIBLE_SIMD_CLONES double sumsq_bf16(const uint16_t* x, int64_t n) {
  return sumsq_segment(x, n);
}

// Splits the concatenation of `sizes` into `parts` equal element ranges and calls
// fn(tensor_index, begin, end) for every tensor segment of part `part`.
template <typename Fn>
void for_each_segment(const std::vector<int64_t>& offsets, int64_t part, int64_t parts, Fn&& fn) {
  const int64_t total = offsets.back();
  const int64_t lo = total * part / parts;
  const int64_t hi = total * (part + 1) / parts;
  if (lo >= hi) return;
  // First tensor whose range ends after lo.
  size_t t = std::upper_bound(offsets.begin(), offsets.end(), lo) - offsets.begin() - 1;
  for (int64_t pos = lo; pos < hi; ++t) {
    const int64_t end = std::min(hi, offsets[t + 1]);
    if (end > pos) fn(t, pos - offsets[t], end - offsets[t]);
    pos = std::max(pos, end);
  }
}

std::vector<int64_t> prefix_sizes(at::TensorList tensors) {
  std::vector<int64_t> offsets(tensors.size() + 1, 0);
  for (size_t i = 0; i < tensors.size(); ++i) offsets[i + 1] = offsets[i] + tensors[i].numel();
  return offsets;
}

int64_t parts_for(int64_t total) {
  if (total < kMinParallelElements || at::in_parallel_region()) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                total / (kMinParallelElements / 4)));
}

template <typename Fn>
void run_parts(int64_t parts, Fn&& fn) {
  if (parts == 1) {
    fn(0);
    return;
  }
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part) fn(part);
  });
}

}  // namespace

void fused_adamw_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                     at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                     at::TensorList master_params, at::TensorList state_steps, double lr,
                     double beta1, double beta2, double weight_decay, double eps, bool amsgrad,
                     bool maximize, const std::optional<at::Tensor>& grad_scale) {
  check_adamw_inputs(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params,
                     state_steps, amsgrad, grad_scale);
  if (params.empty()) return;
  const std::vector<AdamWCoeffs> coeffs =
      advance_steps(state_steps, lr, beta1, beta2, weight_decay, eps);
  const float scale = grad_scale.has_value() ? grad_scale->item<float>() : 1.0f;
  const float grad_mul = maximize ? -scale : scale;
  const bool master = !master_params.empty();
  const std::vector<int64_t> offsets = prefix_sizes(params);

  const int64_t parts = parts_for(offsets.back());
  run_parts(parts, [&](int64_t part) {
    for_each_segment(offsets, part, parts, [&](size_t t, int64_t b, int64_t e) {
      const int64_t n = e - b;
      const AdamWCoeffs& c = coeffs[t];
      float* m = exp_avgs[t].data_ptr<float>() + b;
      float* v = exp_avg_sqs[t].data_ptr<float>() + b;
      float* mx = amsgrad ? max_exp_avg_sqs[t].data_ptr<float>() + b : nullptr;
      float* w = master ? master_params[t].data_ptr<float>() + b : nullptr;
      if (params[t].scalar_type() == at::kFloat) {
        float* p = params[t].data_ptr<float>() + b;
        const float* g = grads[t].data_ptr<float>() + b;
        const auto segment = master ? (amsgrad ? segment_f32_master_ams : segment_f32_master)
                                    : (amsgrad ? segment_f32_ams : segment_f32);
        segment(p, w, g, m, v, mx, n, c, grad_mul);
      } else {
        auto* p = reinterpret_cast<uint16_t*>(params[t].data_ptr<at::BFloat16>()) + b;
        const auto* g = reinterpret_cast<const uint16_t*>(grads[t].data_ptr<at::BFloat16>()) + b;
        const auto segment = master ? (amsgrad ? segment_bf16_master_ams : segment_bf16_master)
                                    : (amsgrad ? segment_bf16_ams : segment_bf16);
        segment(p, w, g, m, v, mx, n, c, grad_mul);
      }
    });
  });
}

at::Tensor total_norm_cpu(at::TensorList tensors) {
  check_norm_inputs(tensors);
  if (tensors.empty()) return at::zeros({}, at::TensorOptions().dtype(at::kFloat));
  const std::vector<int64_t> offsets = prefix_sizes(tensors);
  const int64_t parts = parts_for(offsets.back());
  std::vector<double> partial(parts, 0.0);
  run_parts(parts, [&](int64_t part) {
    double acc = 0.0;
    for_each_segment(offsets, part, parts, [&](size_t t, int64_t b, int64_t e) {
      if (tensors[t].scalar_type() == at::kFloat) {
        acc += sumsq_f32(tensors[t].data_ptr<float>() + b, e - b);
      } else {
        acc += sumsq_bf16(
            reinterpret_cast<const uint16_t*>(tensors[t].data_ptr<at::BFloat16>()) + b, e - b);
      }
    });
    partial[part] = acc;
  });
  double sum = 0.0;
  for (double p : partial) sum += p;  // fixed order: same result for the same thread count
  at::Tensor out = at::empty({}, tensors[0].options().dtype(at::kFloat));
  *out.data_ptr<float>() = static_cast<float>(std::sqrt(sum));
  return out;
}

}  // namespace crucible::optim
