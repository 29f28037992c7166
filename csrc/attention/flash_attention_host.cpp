// Host-side checks shared by the CPU and CUDA flash attention: every message names the
// argument, what was wrong with it and what to do. Also turns the inputs into an
// AttentionProblem (sequence boundaries, head counts, masking).
#include "flash_attention.h"

#include <cmath>

#include <c10/util/Exception.h>

namespace crucible::attention {
namespace {

#define CHECK_ATTN(cond, ...) TORCH_CHECK(cond, op, ": ", __VA_ARGS__)

void check_floating(const at::Tensor& t, const char* name, const char* op) {
  const auto dt = t.scalar_type();
  CHECK_ATTN(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf || dt == at::kDouble,
             name, " has dtype ", dt,
             "; supported dtypes are float32, bfloat16, float16 and float64 (CPU: no float16)");
  CHECK_ATTN(t.layout() == at::kStrided, name, " is a ", t.layout(),
             " tensor; pass a dense (strided) tensor");
}

}  // namespace

AttentionProblem check_forward_inputs(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v,
                                      const std::optional<at::Tensor>& cu_seqlens,
                                      int64_t max_seqlen, double softmax_scale, bool causal,
                                      int64_t window, const char* op) {
  check_floating(q, "q", op);
  check_floating(k, "k", op);
  check_floating(v, "v", op);
  CHECK_ATTN(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
             "q, k and v must share one dtype (got ", q.scalar_type(), ", ", k.scalar_type(),
             ", ", v.scalar_type(), "); cast them to one dtype");
  CHECK_ATTN(k.device() == q.device() && v.device() == q.device(),
             "q, k and v must be on one device (got ", q.device(), ", ", k.device(), ", ",
             v.device(), ")");
  CHECK_ATTN(k.sizes() == v.sizes(), "k ", k.sizes(), " and v ", v.sizes(),
             " must have the same shape");
  const bool varlen = cu_seqlens.has_value();
  const int64_t rank = varlen ? 3 : 4;
  CHECK_ATTN(q.dim() == rank && k.dim() == rank, "q ", q.sizes(), " and k ", k.sizes(),
             varlen ? " must be (total_tokens, heads, head_dim) when cu_seqlens is given"
                    : " must be (batch, seqlen, heads, head_dim); pass cu_seqlens for packed "
                      "(total_tokens, heads, head_dim) inputs");
  for (int64_t d = 0; d < rank - 2; ++d) {
    CHECK_ATTN(q.size(d) == k.size(d), "q ", q.sizes(), " and k ", k.sizes(),
               " differ in dimension ", d, "; q and k/v must hold the same tokens");
  }
  AttentionProblem p{};
  p.varlen = varlen;
  p.heads_q = q.size(rank - 2);
  p.heads_kv = k.size(rank - 2);
  p.head_dim = q.size(rank - 1);
  CHECK_ATTN(k.size(rank - 1) == p.head_dim, "q has head_dim ", p.head_dim, " but k has ",
             k.size(rank - 1), "; q, k and v must share one head_dim");
  CHECK_ATTN(p.heads_kv > 0 && p.heads_q % p.heads_kv == 0, "q has ", p.heads_q,
             " heads and k/v have ", p.heads_kv,
             "; the query heads must be a multiple of the key/value heads (GQA/MQA)");
  CHECK_ATTN(p.head_dim > 0 && p.head_dim <= 256, "head_dim ", p.head_dim,
             " is not supported; use 1..256");
  p.causal = causal;
  p.window = window > 0 ? window : 0;
  p.scale = softmax_scale > 0 ? softmax_scale : 1.0 / std::sqrt(static_cast<double>(p.head_dim));
  CHECK_ATTN(std::isfinite(p.scale), "softmax_scale ", softmax_scale, " is not finite");

  if (!varlen) {
    p.batch = q.size(0);
    p.max_len = q.size(1);
    p.lengths.assign(p.batch, p.max_len);
    return p;
  }
  const at::Tensor& cu = *cu_seqlens;
  CHECK_ATTN(cu.scalar_type() == at::kInt && cu.dim() == 1 && cu.size(0) >= 1,
             "cu_seqlens must be a 1-D int32 tensor of n_seq + 1 offsets (got ", cu.scalar_type(),
             " of shape ", cu.sizes(), ")");
  p.batch = cu.size(0) - 1;
  if (cu.device() != q.device() || !cu.device().is_cpu()) {
    CHECK_ATTN(cu.device() == q.device(), "cu_seqlens is on ", cu.device(), " but q is on ",
               q.device(), "; keep cu_seqlens on q's device");
    // On an accelerator the offsets stay there: the kernels read them, and max_seqlen (from the
    // caller, as in flash-attn) sizes the grid without a device-to-host copy.
    CHECK_ATTN(max_seqlen > 0, "pass max_seqlen (the longest sequence) with device cu_seqlens");
    p.max_len = max_seqlen;
    return p;
  }
  const at::Tensor offsets = cu.contiguous();
  const int32_t* o = offsets.data_ptr<int32_t>();
  CHECK_ATTN(o[0] == 0 && o[p.batch] == q.size(0), "cu_seqlens must start at 0 and end at the "
             "number of tokens ", q.size(0), " (got ", o[0], " ... ", o[p.batch], ")");
  p.max_len = 0;
  for (int64_t s = 0; s < p.batch; ++s) {
    CHECK_ATTN(o[s + 1] >= o[s], "cu_seqlens must not decrease (cu_seqlens[", s, "] = ", o[s],
               ", cu_seqlens[", s + 1, "] = ", o[s + 1], ")");
    p.starts.push_back(o[s]);
    p.lengths.push_back(o[s + 1] - o[s]);
    p.max_len = std::max<int64_t>(p.max_len, o[s + 1] - o[s]);
  }
  CHECK_ATTN(max_seqlen <= 0 || max_seqlen >= p.max_len, "max_seqlen ", max_seqlen,
             " is shorter than the longest sequence in cu_seqlens (", p.max_len,
             "); pass the true maximum or 0 to compute it");
  return p;
}

void check_backward_inputs(const at::Tensor& grad_out, const at::Tensor& q,
                           const at::Tensor& out, const at::Tensor& lse,
                           const AttentionProblem& problem, const char* op) {
  CHECK_ATTN(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(), "grad_out ",
             grad_out.sizes(), " and out ", out.sizes(), " must have q's shape ", q.sizes());
  CHECK_ATTN(grad_out.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(),
             "grad_out (", grad_out.scalar_type(), ") and out (", out.scalar_type(),
             ") must have q's dtype ", q.scalar_type());
  CHECK_ATTN(grad_out.device() == q.device() && out.device() == q.device() &&
                 lse.device() == q.device(),
             "grad_out, out and lse must be on q's device ", q.device());
  const auto want = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const std::vector<int64_t> shape = lse_shape(q, problem);
  CHECK_ATTN(lse.scalar_type() == want && lse.sizes() == at::IntArrayRef(shape),
             "lse must be the ", want, " tensor of shape ", at::IntArrayRef(shape),
             " that the forward returned (got ", lse.scalar_type(), " ", lse.sizes(), ")");
}

std::vector<int64_t> lse_shape(const at::Tensor& q, const AttentionProblem& problem) {
  if (problem.varlen) return {problem.heads_q, q.size(0)};
  return {problem.batch, problem.heads_q, problem.max_len};
}

#undef CHECK_ATTN

}  // namespace crucible::attention
