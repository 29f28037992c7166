// Every op schema of crucible's torch extension, in one TORCH_LIBRARY, with the CPU and CUDA
// implementations registered side by side. Python loads this as `engine._C`; the module itself
// exports nothing: importing it runs the registrations below, after which the ops live under
// torch.ops.crucible.*. engine/ops/ holds the typed Python wrappers and fake (meta) kernels.
#include <Python.h>

#include <torch/library.h>

#include "attention/flash_attention.h"
#include "layers/fused_layers.h"
#include "loss/cross_entropy.h"
#include "optim/fused_adamw.h"

TORCH_LIBRARY(crucible, m) {
  // One fused AdamW step over lists of tensors (see csrc/optim/fused_adamw.h). Mutates params,
  // the moment buffers, max_exp_avg_sqs (amsgrad) and master_params (fp32 copies of bf16
  // params) in place. grad_scale multiplies every gradient (the folded clip coefficient).
  m.def(
      "fused_adamw_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] master_params, "
      "Tensor(f!)[] state_steps, float lr, float beta1, float beta2, float weight_decay, "
      "float eps, bool amsgrad, bool maximize, Tensor? grad_scale) -> ()");
  // Global L2 norm of a list of tensors as a 0-dim float32 tensor, in one reduction pass.
  m.def("total_norm(Tensor[] tensors) -> Tensor");
  // Tiled online-softmax attention (see csrc/attention/flash_attention.h for layouts and
  // masks). Returns the output and the log-sum-exp of every query row (natural log). A
  // softmax_scale <= 0 means 1/sqrt(head_dim), window <= 0 no window, max_seqlen <= 0 that it
  // is computed from cu_seqlens (CPU only).
  m.def(
      "flash_attention_forward(Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens, "
      "int max_seqlen, float softmax_scale, bool causal, int window) -> (Tensor, Tensor)");
  // Gradients of flash_attention_forward with respect to q, k and v, recomputing the scores
  // tile by tile from q, k and lse.
  m.def(
      "flash_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, "
      "Tensor lse, Tensor? cu_seqlens, int max_seqlen, float softmax_scale, bool causal, "
      "int window) -> (Tensor, Tensor, Tensor)");
  // Softmax cross-entropy of each row of a chunk of logits, in place (see
  // csrc/loss/cross_entropy.h): returns the per-row loss and, with compute_grad, leaves
  // grad_scale * (softmax - onehot) in the logits. The kernel of linear_cross_entropy.
  m.def(
      "cross_entropy_rows_(Tensor(a!) logits, Tensor target, int ignore_index, "
      "float grad_scale, bool compute_grad) -> Tensor");
  // Fused decoder layers (see csrc/layers/fused_layers.h): RMSNorm (y, and rstd per row, for
  // the backward), rotate-half RoPE with (B, T, 1, D) cos/sin tables, and silu(gate) * up.
  m.def("rms_norm_forward(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def(
      "rms_norm_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor rstd) "
      "-> (Tensor, Tensor)");
  m.def("rope_forward(Tensor x, Tensor cos, Tensor sin) -> Tensor");
  m.def("rope_backward(Tensor grad_y, Tensor cos, Tensor sin) -> Tensor");
  m.def("swiglu_forward(Tensor gate, Tensor up) -> Tensor");
  m.def("swiglu_backward(Tensor grad, Tensor gate, Tensor up) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(crucible, CPU, m) {
  m.impl("fused_adamw_", &crucible::optim::fused_adamw_cpu);
  m.impl("total_norm", &crucible::optim::total_norm_cpu);
  m.impl("flash_attention_forward", &crucible::attention::flash_attention_forward_cpu);
  m.impl("flash_attention_backward", &crucible::attention::flash_attention_backward_cpu);
  m.impl("cross_entropy_rows_", &crucible::loss::cross_entropy_rows_cpu);
  m.impl("rms_norm_forward", &crucible::layers::rms_norm_forward_cpu);
  m.impl("rms_norm_backward", &crucible::layers::rms_norm_backward_cpu);
  m.impl("rope_forward", &crucible::layers::rope_forward_cpu);
  m.impl("rope_backward", &crucible::layers::rope_backward_cpu);
  m.impl("swiglu_forward", &crucible::layers::swiglu_forward_cpu);
  m.impl("swiglu_backward", &crucible::layers::swiglu_backward_cpu);
}

#ifdef CRUCIBLE_WITH_CUDA
TORCH_LIBRARY_IMPL(crucible, CUDA, m) {
  m.impl("fused_adamw_", &crucible::optim::fused_adamw_cuda);
  m.impl("total_norm", &crucible::optim::total_norm_cuda);
  m.impl("flash_attention_forward", &crucible::attention::flash_attention_forward_cuda);
  m.impl("flash_attention_backward", &crucible::attention::flash_attention_backward_cuda);
}
#endif

// A Python extension module with no functions: `import engine._C` loads the library.
extern "C" PyObject* PyInit__C() {
  static PyModuleDef module = {
      PyModuleDef_HEAD_INIT, "_C",
      "crucible's compiled torch ops (registered under torch.ops.crucible)",
      -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
