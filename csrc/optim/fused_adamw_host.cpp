// Host-side preparation shared by the CPU and CUDA implementations of fused_adamw_ and
// total_norm: input validation (every message names the list, the index and what to do about
// it) and the step-count bookkeeping that turns state_steps into per-tensor coefficients.
#include "fused_adamw.h"

#include <cmath>

#include <c10/util/Exception.h>

namespace crucible::optim {
namespace {

const char* list_name(int which) {
  static const char* names[] = {"params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs",
                                "master_params"};
  return names[which];
}

void check_dense(const at::Tensor& t, const char* op, const char* list, size_t i) {
  TORCH_CHECK(t.layout() == at::kStrided, op, ": ", list, "[", i, "] is a ", t.layout(),
              " tensor; only dense tensors are supported (sparse gradients need "
              "torch.optim.SparseAdam)");
  TORCH_CHECK(t.is_non_overlapping_and_dense(), op, ": ", list, "[", i, "] (shape ", t.sizes(),
              ", strides ", t.strides(),
              ") is not dense in memory (a view with gaps or overlaps); optimise the tensor it "
              "views, or make it .contiguous() before creating the optimizer");
}

}  // namespace

void check_adamw_inputs(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                        at::TensorList master_params, at::TensorList state_steps, bool amsgrad,
                        const std::optional<at::Tensor>& grad_scale) {
  constexpr const char* op = "crucible::fused_adamw_";
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n, op,
              ": lists differ in length (params ", n, ", grads ", grads.size(), ", exp_avgs ",
              exp_avgs.size(), ", exp_avg_sqs ", exp_avg_sqs.size(),
              "); pass one entry per parameter in each");
  TORCH_CHECK(max_exp_avg_sqs.size() == (amsgrad ? n : 0), op, ": max_exp_avg_sqs has ",
              max_exp_avg_sqs.size(), " entries; it needs ", (amsgrad ? n : 0),
              amsgrad ? " (one per parameter, since amsgrad=True)" : " (amsgrad=False)");
  TORCH_CHECK(master_params.empty() || master_params.size() == n, op, ": master_params has ",
              master_params.size(), " entries; pass none or one per parameter (", n, ")");
  TORCH_CHECK(state_steps.size() == n, op, ": state_steps has ", state_steps.size(),
              " entries; pass one step counter per parameter (", n, ")");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& s = state_steps[i];
    TORCH_CHECK(s.device().is_cpu() && s.scalar_type() == at::kFloat && s.numel() == 1, op,
                ": state_steps[", i, "] must be a one-element float32 CPU tensor (got ",
                s.numel(), " elements of ", s.scalar_type(), " on ", s.device(),
                "); keep step counters as torch.tensor(0.0) on the CPU");
  }
  if (n == 0) return;

  const at::Device device = params[0].device();
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor* others[] = {&p,
                                  &grads[i],
                                  &exp_avgs[i],
                                  &exp_avg_sqs[i],
                                  amsgrad ? &max_exp_avg_sqs[i] : nullptr,
                                  master_params.empty() ? nullptr : &master_params[i]};
    TORCH_CHECK(p.scalar_type() == at::kFloat || p.scalar_type() == at::kBFloat16, op,
                ": params[", i, "] has dtype ", p.scalar_type(),
                "; supported parameter dtypes are float32 and bfloat16");
    for (int which = 0; which < 6; ++which) {
      const at::Tensor* t = others[which];
      if (t == nullptr) continue;
      check_dense(*t, op, list_name(which), i);
      TORCH_CHECK(t->device() == device, op, ": mixed devices in one call: params[0] is on ",
                  device, " but ", list_name(which), "[", i, "] is on ", t->device(),
                  "; move every parameter, gradient and state tensor of a param group to one "
                  "device");
      TORCH_CHECK(t->numel() == p.numel(), op, ": ", list_name(which), "[", i, "] has ",
                  t->numel(), " elements but params[", i, "] has ", p.numel());
      TORCH_CHECK(p.numel() <= 1 || t->strides() == p.strides(), op, ": ", list_name(which),
                  "[", i, "] (strides ", t->strides(), ") is laid out unlike params[", i,
                  "] (shape ", p.sizes(), ", strides ", p.strides(),
                  "); create state with torch.zeros_like(param) and keep gradients in the "
                  "parameter's layout");
    }
    TORCH_CHECK(grads[i].scalar_type() == p.scalar_type(), op, ": grads[", i, "] has dtype ",
                grads[i].scalar_type(), " but params[", i, "] has ", p.scalar_type(),
                "; gradients must have their parameter's dtype");
    for (int which = 2; which < 6; ++which) {
      const at::Tensor* t = others[which];
      TORCH_CHECK(t == nullptr || t->scalar_type() == at::kFloat, op, ": ", list_name(which),
                  "[", i, "] has dtype ", (t ? t->scalar_type() : at::kFloat),
                  "; optimizer state and master weights are kept in float32");
    }
  }
  if (grad_scale.has_value()) {
    const at::Tensor& s = *grad_scale;
    TORCH_CHECK(s.numel() == 1 && s.scalar_type() == at::kFloat && s.device() == device, op,
                ": grad_scale must be a one-element float32 tensor on ", device, " (got ",
                s.numel(), " elements of ", s.scalar_type(), " on ", s.device(), ")");
  }
}

std::vector<AdamWCoeffs> advance_steps(at::TensorList state_steps, double lr, double beta1,
                                       double beta2, double weight_decay, double eps) {
  std::vector<AdamWCoeffs> coeffs;
  coeffs.reserve(state_steps.size());
  for (const at::Tensor& s : state_steps) {
    float* counter = s.data_ptr<float>();
    *counter += 1.0f;
    const double step = *counter;
    const double bc1 = 1.0 - std::pow(beta1, step);
    const double bc2 = 1.0 - std::pow(beta2, step);
    coeffs.push_back(AdamWCoeffs{static_cast<float>(1.0 - lr * weight_decay),
                                 static_cast<float>(1.0 - beta1), static_cast<float>(beta2),
                                 static_cast<float>(1.0 - beta2),
                                 static_cast<float>(std::sqrt(bc2)), static_cast<float>(eps),
                                 static_cast<float>(-(lr / bc1))});
  }
  return coeffs;
}

void check_norm_inputs(at::TensorList tensors) {
  constexpr const char* op = "crucible::total_norm";
  if (tensors.empty()) return;
  const at::Device device = tensors[0].device();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    check_dense(t, op, "tensors", i);
    TORCH_CHECK(t.device() == device, op, ": mixed devices in one call: tensors[0] is on ",
                device, " but tensors[", i, "] is on ", t.device());
    TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, op,
                ": tensors[", i, "] has dtype ", t.scalar_type(),
                "; supported dtypes are float32 and bfloat16");
  }
}

}  // namespace crucible::optim
