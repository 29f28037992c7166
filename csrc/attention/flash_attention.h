// Flash attention: the op entry points shared by the CPU and CUDA implementations, the shape
// description both derive from their inputs, and the input checks both run first.
//
// Attention is computed tile by tile with an online softmax, so the T x T score matrix never
// exists in memory: the forward pass keeps a running row maximum and row sum per query tile and
// returns the log-sum-exp of every row; the backward pass recomputes each score tile from q, k
// and that log-sum-exp.
//
// Layouts (the flash-attn convention):
//   padded batch   q (B, T, Hq, D), k/v (B, T, Hkv, D), out like q, lse (B, Hq, T) float32
//   packed varlen  q (N, Hq, D), k/v (N, Hkv, D) with cu_seqlens int32 (n_seq + 1) giving the
//                  first token of every sequence (cu_seqlens[0] == 0, cu_seqlens[-1] == N);
//                  out like q, lse (Hq, N) float32. No token attends across a boundary.
// Hq must be a multiple of Hkv (grouped-query and multi-query attention): query head h reads
// key/value head h / (Hq / Hkv). Any strides are accepted. lse is float64 for float64 inputs.
//
// Masking, for a query at position i and a key at position j of the same sequence:
//   causal        j <= i
//   window w > 0  j > i - w (at most w keys, the query's own position included)
// window < 1 means no window.
#pragma once

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/core/Tensor.h>

namespace crucible::attention {

// Where the tokens of every sequence live and how the heads are shaped; computed once per call
// by describe_problem from the (checked) inputs.
struct AttentionProblem {
  bool varlen;                  // packed sequences with cu_seqlens
  int64_t batch;                // B (padded) or number of sequences (varlen)
  int64_t max_len;              // longest sequence
  int64_t heads_q, heads_kv;    // Hq, Hkv
  int64_t head_dim;             // D
  std::vector<int64_t> starts;  // first token of each sequence (varlen); empty when padded
  std::vector<int64_t> lengths; // tokens of each sequence
  double scale;                 // softmax scale
  bool causal;
  int64_t window;               // left window (keys per query), <= 0 for none
};

// Validates the forward inputs (dtypes, ranks, shapes, devices, cu_seqlens) and returns the
// problem they describe. Throws c10::Error naming the argument and what to do about it.
AttentionProblem check_forward_inputs(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v,
                                      const std::optional<at::Tensor>& cu_seqlens,
                                      int64_t max_seqlen, double softmax_scale, bool causal,
                                      int64_t window, const char* op);

// Validates the extra backward inputs (grad_out and out like q, lse as the forward returns it).
void check_backward_inputs(const at::Tensor& grad_out, const at::Tensor& q,
                           const at::Tensor& out, const at::Tensor& lse,
                           const AttentionProblem& problem, const char* op);

// The shape of lse for a problem: (B, Hq, T) padded, (Hq, N) varlen.
std::vector<int64_t> lse_shape(const at::Tensor& q, const AttentionProblem& problem);

// Op entry points, registered in csrc/torch_bindings.cpp. softmax_scale <= 0 means 1/sqrt(D).
std::tuple<at::Tensor, at::Tensor> flash_attention_forward_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen, double softmax_scale,
    bool causal, int64_t window);
std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& cu_seqlens,
    int64_t max_seqlen, double softmax_scale, bool causal, int64_t window);

#ifdef CRUCIBLE_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> flash_attention_forward_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen, double softmax_scale,
    bool causal, int64_t window);
std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& cu_seqlens,
    int64_t max_seqlen, double softmax_scale, bool causal, int64_t window);
#endif

}  // namespace crucible::attention
