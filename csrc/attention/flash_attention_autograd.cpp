// Autograd for flash_attention_forward, in C++ (for every device: the Autograd key covers CPU
// and CUDA). A torch.library.register_autograd wrapper in Python costs ~15 us of interpreter
// time per call, forward and backward; at short sequences that is a visible share of the
// kernel. Forward runs the op below autograd and saves q, k, v, out, lse (and cu_seqlens); the
// backward op recomputes the scores from them. lse is an output without a gradient.
#include <optional>
#include <tuple>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace crucible::attention {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Pair = std::tuple<at::Tensor, at::Tensor>;
using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using ForwardSig = Pair(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const std::optional<at::Tensor>&, int64_t, double, bool, int64_t);
using BackwardSig = Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const std::optional<at::Tensor>&, int64_t, double, bool, int64_t);

class FlashAttentionFunction : public torch::autograd::Function<FlashAttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const std::optional<at::Tensor>& cu_seqlens,
                               int64_t max_seqlen, double softmax_scale, bool causal,
                               int64_t window) {
    static const auto fwd = c10::Dispatcher::singleton()
                                .findSchemaOrThrow("crucible::flash_attention_forward", "")
                                .typed<ForwardSig>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, lse] = fwd.call(q, k, v, cu_seqlens, max_seqlen, softmax_scale, causal, window);
    ctx->save_for_backward({q, k, v, out, lse, cu_seqlens.value_or(at::Tensor())});
    ctx->saved_data["max_seqlen"] = max_seqlen;
    ctx->saved_data["softmax_scale"] = softmax_scale;
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["window"] = window;
    ctx->mark_non_differentiable({lse});
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd = c10::Dispatcher::singleton()
                                .findSchemaOrThrow("crucible::flash_attention_backward", "")
                                .typed<BackwardSig>();
    const auto s = ctx->get_saved_variables();
    const variable_list none(8);
    if (!grads[0].defined()) return none;
    const std::optional<at::Tensor> cu =
        s[5].defined() ? std::optional<at::Tensor>(s[5]) : std::nullopt;
    auto [dq, dk, dv] = bwd.call(grads[0], s[0], s[1], s[2], s[3], s[4], cu,
                                 ctx->saved_data["max_seqlen"].toInt(),
                                 ctx->saved_data["softmax_scale"].toDouble(),
                                 ctx->saved_data["causal"].toBool(),
                                 ctx->saved_data["window"].toInt());
    variable_list result(8);
    result[0] = dq;
    result[1] = dk;
    result[2] = dv;
    return result;
  }
};

Pair flash_attention_forward_autograd(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v,
                                      const std::optional<at::Tensor>& cu_seqlens,
                                      int64_t max_seqlen, double softmax_scale, bool causal,
                                      int64_t window) {
  auto out = FlashAttentionFunction::apply(q, k, v, cu_seqlens, max_seqlen, softmax_scale,
                                           causal, window);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace crucible::attention

TORCH_LIBRARY_IMPL(crucible, Autograd, m) {
  m.impl("flash_attention_forward", &crucible::attention::flash_attention_forward_autograd);
}
