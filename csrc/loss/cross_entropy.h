// Softmax cross-entropy over rows of logits, computed in place: the kernel behind
// engine.ops.loss.linear_cross_entropy, which runs the output projection chunk by chunk so the
// (tokens x vocab) logits never exist in full. Each call handles one chunk of rows.
#pragma once

#include <ATen/core/Tensor.h>

namespace crucible::loss {

// logits: (N, V) float32/bfloat16/float64, rows contiguous (stride(1) == 1), overwritten.
// target: (N,) int64, each in [0, V) or equal to ignore_index.
// Returns loss (N,) float32 (float64 for float64 logits): logsumexp(row) - row[target], 0 for
// ignored rows. With compute_grad the logits are replaced by the gradient of
// grad_scale * sum(loss) with respect to them: grad_scale * (softmax(row) - onehot(target)),
// zeros for ignored rows; without it their contents are unspecified afterwards.
at::Tensor cross_entropy_rows_cpu(at::Tensor& logits, const at::Tensor& target,
                                  int64_t ignore_index, double grad_scale, bool compute_grad);

}  // namespace crucible::loss
