// Fused AdamW and the global gradient norm: the op entry points shared by the CPU and CUDA
// implementations, and the input checks both run before touching memory.
//
// One call updates a whole list of parameters in a single pass over memory: weight decay, the
// two moment updates, bias correction and the parameter step are one kernel. An optional
// `grad_scale` (a 0-dim fp32 tensor on the parameters' device) multiplies every gradient as it
// is read; FusedAdamW passes the clip coefficient there, which folds gradient clipping into the
// update instead of a separate scaling pass over the gradients.
//
// Step counts live in `state_steps`, one 0-dim float32 CPU tensor per parameter (the layout of
// torch.optim.AdamW's state["step"]). The op increments each one and bias-corrects each tensor
// with its own count, so the caller never reads them back: no per-parameter Python work.
#pragma once

#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

namespace crucible::optim {

// The per-tensor scalars of one AdamW update, pre-computed in double exactly like torch's
// Python code and then rounded to float; shared by the CPU and CUDA kernels.
struct AdamWCoeffs {
  float decay;      // 1 - lr * weight_decay
  float w1;         // 1 - beta1
  float b2;         // beta2
  float w2;         // 1 - beta2
  float bc2_sqrt;   // sqrt(1 - beta2^step)
  float eps;
  float neg_step;   // -lr / (1 - beta1^step)
};

// Increments every state_steps tensor by one and returns the coefficients of each tensor.
std::vector<AdamWCoeffs> advance_steps(at::TensorList state_steps, double lr, double beta1,
                                       double beta2, double weight_decay, double eps);

// Validates the lists of one call: equal lengths, one device, supported dtypes, matching sizes
// and layouts. Throws c10::Error naming the offending list and index.
void check_adamw_inputs(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                        at::TensorList master_params, at::TensorList state_steps, bool amsgrad,
                        const std::optional<at::Tensor>& grad_scale);

// Checks the list handed to total_norm: one device, floating dtypes, dense layouts.
void check_norm_inputs(at::TensorList tensors);

// Op entry points, registered in csrc/torch_bindings.cpp.
void fused_adamw_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                     at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                     at::TensorList master_params, at::TensorList state_steps, double lr,
                     double beta1, double beta2, double weight_decay, double eps, bool amsgrad,
                     bool maximize,
                     const std::optional<at::Tensor>& grad_scale);
at::Tensor total_norm_cpu(at::TensorList tensors);

#ifdef CRUCIBLE_WITH_CUDA
void fused_adamw_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                      at::TensorList master_params, at::TensorList state_steps, double lr,
                      double beta1, double beta2, double weight_decay, double eps, bool amsgrad,
                      bool maximize,
                      const std::optional<at::Tensor>& grad_scale);
at::Tensor total_norm_cuda(at::TensorList tensors);
#endif

}  // namespace crucible::optim
