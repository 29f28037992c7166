// CPU cross-entropy rows: per row one max pass, one exp pass (AVX-512 exp2 from the attention
// tiles, which also sums) and, for the gradient, one scaling pass, all on a row that is still
// in cache from the matmul that wrote it. Rows run in parallel (OpenMP through
// at::parallel_for); bfloat16 rows go through a per-thread float32 buffer.
#include "loss/cross_entropy.h"

#include <cmath>
#include <limits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>

#include "attention/attention_tiles_cpu.h"

namespace crucible::loss {
namespace {

namespace tiles = crucible::attention::cpu;

// The largest element: the vector kernel on the multiple-of-16 prefix, the tail by hand.
template <typename T>
T row_max(const T* x, int64_t n) {
  const int64_t body = n - n % tiles::kLanes;
  T m = body > 0 ? tiles::row_max(x, body) : -std::numeric_limits<T>::infinity();
  for (int64_t i = body; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// x[i] = exp(x[i] - m); returns the sum.
template <typename T>
T exp_shifted(T* x, int64_t n, T m) {
  constexpr T kLog2e = T(1.4426950408889634074);
  const int64_t body = n - n % tiles::kLanes;
  T sum = body > 0 ? tiles::exp2_shifted(x, body, m * kLog2e, kLog2e) : T(0);
  for (int64_t i = body; i < n; ++i) {
    x[i] = std::exp2(x[i] * kLog2e - m * kLog2e);
    sum += x[i];
  }
  return sum;
}

// One row in place; returns its loss. t < 0 means the row is ignored.
template <typename T>
T row_loss(T* x, int64_t n, int64_t t, T scale, bool grad) {
  if (t < 0) {
    if (grad) std::fill(x, x + n, T(0));
    return T(0);
  }
  const T target_logit = x[t];
  const T m = row_max(x, n);
  if (m == -std::numeric_limits<T>::infinity()) {  // every logit -inf: the loss is +inf
    if (grad) std::fill(x, x + n, std::numeric_limits<T>::quiet_NaN());
    return std::numeric_limits<T>::infinity();
  }
  const T sum = exp_shifted(x, n, m);
  const T lse = m + std::log(sum);
  if (grad) {
    const T c = scale / sum;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) x[i] *= c;
    x[t] -= scale;
  }
  return lse - target_logit;
}

template <typename T>
void rows_native(T* logits, int64_t stride, const int64_t* target, T* loss, int64_t N,
                 int64_t V, int64_t ignore, T scale, bool grad) {
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t t = target[r] == ignore ? -1 : target[r];
      loss[r] = row_loss(logits + r * stride, V, t, scale, grad);
    }
  });
}

void rows_bf16(c10::BFloat16* logits, int64_t stride, const int64_t* target, float* loss,
               int64_t N, int64_t V, int64_t ignore, float scale, bool grad) {
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(V);
    for (int64_t r = begin; r < end; ++r) {
      c10::BFloat16* x = logits + r * stride;
      for (int64_t i = 0; i < V; ++i) row[i] = float(x[i]);
      const int64_t t = target[r] == ignore ? -1 : target[r];
      loss[r] = row_loss(row.data(), V, t, scale, grad);
      if (grad) {
        for (int64_t i = 0; i < V; ++i) x[i] = c10::BFloat16(row[i]);
      }
    }
  });
}

}  // namespace

at::Tensor cross_entropy_rows_cpu(at::Tensor& logits, const at::Tensor& target,
                                  int64_t ignore_index, double grad_scale, bool compute_grad) {
  constexpr const char* op = "crucible::cross_entropy_rows_";
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kDouble, op,
              ": logits have dtype ", dt, "; supported are float32, bfloat16 and float64");
  TORCH_CHECK(logits.dim() == 2 && logits.stride(1) == 1, op, ": logits must be 2-D "
              "(rows, vocab) with contiguous rows (got sizes ", logits.sizes(), ", strides ",
              logits.strides(), "); call .contiguous() first");
  TORCH_CHECK(target.scalar_type() == at::kLong && target.dim() == 1 &&
                  target.size(0) == logits.size(0),
              op, ": target must be int64 of shape (", logits.size(0), ",) (got ",
              target.scalar_type(), " ", target.sizes(), ")");
  TORCH_CHECK(target.device() == logits.device(), op, ": target is on ", target.device(),
              " but logits on ", logits.device());
  const at::Tensor tgt = target.contiguous();
  const int64_t N = logits.size(0), V = logits.size(1);
  const int64_t* t = tgt.data_ptr<int64_t>();
  for (int64_t r = 0; r < N; ++r) {
    TORCH_CHECK(t[r] == ignore_index || (t[r] >= 0 && t[r] < V), op, ": target[", r,
                "] = ", t[r], " is outside [0, ", V, ") and is not ignore_index (",
                ignore_index, "); labels must be token ids of the vocabulary or the ignore "
                "index");
  }
  at::Tensor loss = at::empty({N}, logits.options().dtype(dt == at::kDouble ? at::kDouble
                                                                              : at::kFloat));
  if (N == 0) return loss;
  const int64_t stride = logits.stride(0);
  if (dt == at::kDouble) {
    rows_native<double>(logits.data_ptr<double>(), stride, t, loss.data_ptr<double>(), N, V,
                        ignore_index, grad_scale, compute_grad);
  } else if (dt == at::kFloat) {
    rows_native<float>(logits.data_ptr<float>(), stride, t, loss.data_ptr<float>(), N, V,
                       ignore_index, static_cast<float>(grad_scale), compute_grad);
  } else {
    rows_bf16(logits.data_ptr<c10::BFloat16>(), stride, t, loss.data_ptr<float>(), N, V,
              ignore_index, static_cast<float>(grad_scale), compute_grad);
  }
  return loss;
}

}  // namespace crucible::loss
