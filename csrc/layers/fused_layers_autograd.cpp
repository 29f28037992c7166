// Autograd for the fused layer ops, in C++. The same formulas could be registered from Python
// (torch.library.register_autograd), but that wrapper costs ~15 us of interpreter time per
// call, forward and backward: at the `tiny` config's sizes more than the kernels themselves.
// Each forward runs the op below autograd (so the CPU kernel, or the fake kernel under
// torch.compile), saves what its backward op needs, and the backward calls that op.
#include <tuple>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace crucible::layers {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using Pair = std::tuple<at::Tensor, at::Tensor>;

class RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const at::Tensor& weight, double eps) {
    static const auto fwd =
        op<Pair(const at::Tensor&, const at::Tensor&, double)>("crucible::rms_norm_forward");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, rstd] = fwd.call(x, weight, eps);
    ctx->save_for_backward({x, weight, rstd});
    ctx->mark_non_differentiable({rstd});
    return {y, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd =
        op<Pair(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
            "crucible::rms_norm_backward");
    const auto saved = ctx->get_saved_variables();
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    auto [grad_x, grad_weight] = bwd.call(grads[0], saved[0], saved[1], saved[2]);
    return {ctx->needs_input_grad(0) ? grad_x : at::Tensor(),
            ctx->needs_input_grad(1) ? grad_weight : at::Tensor(), at::Tensor()};
  }
};

class RopeFunction : public torch::autograd::Function<RopeFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin) {
    static const auto fwd =
        op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
            "crucible::rope_forward");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({cos, sin});
    return fwd.call(x, cos, sin);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd =
        op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
            "crucible::rope_backward");
    const auto saved = ctx->get_saved_variables();
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    return {bwd.call(grads[0], saved[0], saved[1]), at::Tensor(), at::Tensor()};
  }
};

class SwigluFunction : public torch::autograd::Function<SwigluFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up) {
    static const auto fwd =
        op<at::Tensor(const at::Tensor&, const at::Tensor&)>("crucible::swiglu_forward");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({gate, up});
    return fwd.call(gate, up);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd = op<Pair(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
        "crucible::swiglu_backward");
    const auto saved = ctx->get_saved_variables();
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor()};
    auto [grad_gate, grad_up] = bwd.call(grads[0], saved[0], saved[1]);
    return {ctx->needs_input_grad(0) ? grad_gate : at::Tensor(),
            ctx->needs_input_grad(1) ? grad_up : at::Tensor()};
  }
};

Pair rms_norm_forward_autograd(const at::Tensor& x, const at::Tensor& weight, double eps) {
  auto out = RmsNormFunction::apply(x, weight, eps);
  return {out[0], out[1]};
}

at::Tensor rope_forward_autograd(const at::Tensor& x, const at::Tensor& cos,
                                 const at::Tensor& sin) {
  return RopeFunction::apply(x, cos, sin);
}

at::Tensor swiglu_forward_autograd(const at::Tensor& gate, const at::Tensor& up) {
  return SwigluFunction::apply(gate, up);
}

}  // namespace
}  // namespace crucible::layers

TORCH_LIBRARY_IMPL(crucible, Autograd, m) {
  m.impl("rms_norm_forward", &crucible::layers::rms_norm_forward_autograd);
  m.impl("rope_forward", &crucible::layers::rope_forward_autograd);
  m.impl("swiglu_forward", &crucible::layers::swiglu_forward_autograd);
}
