// Fused decoder layers: RMSNorm, rotary position embeddings and the SwiGLU gate, each as one
// forward and one backward op that makes a single pass over memory.
//
// In eager mode each of these layers is 5-15 ATen elementwise ops per step (casts, a reduction,
// muls, a cat, the activation and its backward), every one a full read and write of the
// activations. These kernels read each input once and write each output once, computing in
// float32 (float64 for float64 inputs) whatever the storage dtype. Only CPU kernels exist: on
// CUDA, torch.compile (inductor) fuses the same compositions, so engine/ops/layers.py runs the
// plain torch composition on any other device.
//
// Dtypes: float32, bfloat16 and float64 (float64 is for gradcheck). Inputs may have any strides;
// the last dimension is the feature dimension and outputs are contiguous.
//
// RMSNorm (x (..., D), weight (D)):
//   y    = round_x(x * rstd) * weight      rstd = 1 / sqrt(mean(x^2) + eps), one per row
// round_x rounds to x's dtype, and y has torch.result_type(x, weight): exactly
// `F.rms_norm(x.float(), (D,), eps=eps).type_as(x) * weight`. rstd is float32 (float64 for
// float64 x) with shape x.shape[:-1]. float64 x needs a float64 weight; float32 and bfloat16
// mix freely. grad_weight sums over all rows in fp32, per thread and then across threads in a
// fixed order (deterministic for a given thread count).
//
// RoPE, rotate-half layout (Llama, Hugging Face), x (B, T, H, D) with D even:
//   y = x * cos + rotate_half(x) * sin     rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2])
// cos/sin (B or 1, T or 1, 1, D) float32 (or float64 with float64 x), any strides (a batch
// broadcast by expand() is read in place); the backward applies the transposed rotation.
//
// SwiGLU (gate, up of one shape and dtype):
//   y = silu(gate) * up                    silu(g) = g / (1 + exp(-g))
#pragma once

#include <tuple>

#include <ATen/core/Tensor.h>

namespace crucible::layers {

// Op entry points, registered in csrc/torch_bindings.cpp. Each checks its inputs first and
// throws c10::Error naming the argument and what to do about it.
std::tuple<at::Tensor, at::Tensor> rms_norm_forward_cpu(const at::Tensor& x,
                                                        const at::Tensor& weight, double eps);
std::tuple<at::Tensor, at::Tensor> rms_norm_backward_cpu(const at::Tensor& grad_y,
                                                         const at::Tensor& x,
                                                         const at::Tensor& weight,
                                                         const at::Tensor& rstd);

at::Tensor rope_forward_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor rope_backward_cpu(const at::Tensor& grad_y, const at::Tensor& cos,
                             const at::Tensor& sin);

at::Tensor swiglu_forward_cpu(const at::Tensor& gate, const at::Tensor& up);
std::tuple<at::Tensor, at::Tensor> swiglu_backward_cpu(const at::Tensor& grad,
                                                       const at::Tensor& gate,
                                                       const at::Tensor& up);

}  // namespace crucible::layers
