// The compute order of each schedule, rank by rank:
//   GPipe          all forwards, then all backwards (Huang et al. 2019).
//   1F1B           p-1-r warm-up forwards, then one forward and one backward alternately
//                  (PipeDream-Flush, Narayanan et al. 2021).
//   interleaved    1F1B over v virtual stages per rank, depth first, in the "flexible" form of
//                  torch.distributed.pipelining (rounds = max(1, m / p) must divide m).
//   ZB-H1          1F1B with the backward split into I (input gradient, on the critical path)
//                  and W (weight gradient, deferred by r steps on rank r to fill the tail
//                  bubble); peak activations equal 1F1B's (Qi et al. 2024, "Zero Bubble").
#include <algorithm>
#include <stdexcept>
#include <string>

#include "pipeline/schedule.h"

namespace crucible::pipeline {
namespace {

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

std::vector<Action> gpipe_rank(int rank, int m) {
  std::vector<Action> ops;
  ops.reserve(2 * m);
  for (int i = 0; i < m; ++i) ops.push_back({Op::F, rank, i});
  for (int i = 0; i < m; ++i) ops.push_back({Op::B, rank, i});
  return ops;
}

std::vector<Action> one_f_one_b_rank(int rank, int p, int m) {
  const int warmup = std::min(p - 1 - rank, m);
  std::vector<Action> ops;
  ops.reserve(2 * m);
  for (int i = 0; i < warmup; ++i) ops.push_back({Op::F, rank, i});
  for (int i = 0; i < m - warmup; ++i) {
    ops.push_back({Op::F, rank, warmup + i});
    ops.push_back({Op::B, rank, i});
  }
  for (int i = m - warmup; i < m; ++i) ops.push_back({Op::B, rank, i});
  return ops;
}

// The interleaved (v > 1) and zero-bubble (v == 1, split backward) orders share one loop, as
// in torch.distributed.pipelining's _get_1f1b_rank_ops.
std::vector<Action> interleaved_rank(int rank, int p, int m, int v, bool zero_bubble) {
  const int rounds = std::max(1, m / p);
  const int per_round = m / rounds;
  const int factor = zero_bubble ? 1 : 2;
  const int warmup = std::min((v - 1) * per_round + factor * (p - 1 - rank), m * v);
  const int total = m * v;  // forwards, and backwards; ops in [warmup, total) do F then B
  auto fwd_stage = [&](int op) { return ((op / per_round) % v) * p + rank; };
  auto bwd_stage = [&](int op) { return (v - 1 - ((op - warmup) / per_round) % v) * p + rank; };
  std::vector<int> fwd_next(v * p, 0), bwd_next(v * p, 0), w_next(v * p, 0);
  std::vector<int> bwd_ops;
  bwd_ops.reserve(total);
  std::vector<Action> ops;
  ops.reserve(zero_bubble ? 3 * total : 2 * total);
  const Op backward = zero_bubble ? Op::I : Op::B;
  size_t weights_done = 0;
  auto add_backward = [&](int op) {
    const int s = bwd_stage(op);
    ops.push_back({backward, s, bwd_next[s]++});
    bwd_ops.push_back(op);
    // Rank r holds back its first r weight passes: they fill the bubble at the end.
    if (zero_bubble && op - warmup >= rank) {
      const int ws = bwd_stage(bwd_ops[weights_done++]);
      ops.push_back({Op::W, ws, w_next[ws]++});
    }
  };
  for (int op = 0; op < warmup + total; ++op) {
    if (op < warmup) {
      const int s = fwd_stage(op);
      ops.push_back({Op::F, s, fwd_next[s]++});
    } else if (op < total) {
      const int s = fwd_stage(op);
      ops.push_back({Op::F, s, fwd_next[s]++});
      add_backward(op);
    } else {
      add_backward(op);
    }
  }
  while (zero_bubble && weights_done < bwd_ops.size()) {
    const int ws = bwd_stage(bwd_ops[weights_done++]);
    ops.push_back({Op::W, ws, w_next[ws]++});
  }
  return ops;
}

}  // namespace

Schedule build(Kind kind, int ranks, int microbatches, int virtual_stages) {
  const std::string name = kind_name(kind);
  require(kind != Kind::Custom, "build: a custom schedule has no generator; pass its actions");
  require(ranks >= 1, name + ": stages (pipeline ranks) must be >= 1 (got " +
                          std::to_string(ranks) + ")");
  require(microbatches >= 1, name + ": microbatches must be >= 1 (got " +
                                 std::to_string(microbatches) + ")");
  const int p = ranks, m = microbatches, v = virtual_stages;
  if (kind == Kind::Interleaved1F1B) {
    require(v >= 2, name + ": virtual_stages must be >= 2 (got " + std::to_string(v) +
                        "); with one stage per rank use 1f1b");
    const int rounds = std::max(1, m / p);
    require(m % rounds == 0,
            name + ": microbatches (" + std::to_string(m) + ") must be a multiple of the " +
                "number of rounds max(1, microbatches / stages) = " + std::to_string(rounds) +
                "; use a multiple of stages (" + std::to_string(p) + ") or fewer than " +
                std::to_string(2 * p) + " microbatches");
  } else {
    require(v == 1, name + ": virtual_stages must be 1 (got " + std::to_string(v) +
                        "); only interleaved-1f1b places several stages on a rank");
  }
  if (kind == Kind::OneFOneB || kind == Kind::ZeroBubbleH1) {
    require(m >= p, name + ": microbatches (" + std::to_string(m) + ") must be >= stages (" +
                        std::to_string(p) + ") to fill the pipeline; use more microbatches "
                        "or gpipe");
  }
  Schedule s;
  s.kind = kind;
  s.ranks = p;
  s.virtual_stages = v;
  s.microbatches = m;
  s.compute.resize(p);
  for (int r = 0; r < p; ++r) {
    switch (kind) {
      case Kind::GPipe: s.compute[r] = gpipe_rank(r, m); break;
      case Kind::OneFOneB: s.compute[r] = one_f_one_b_rank(r, p, m); break;
      case Kind::Interleaved1F1B: s.compute[r] = interleaved_rank(r, p, m, v, false); break;
      case Kind::ZeroBubbleH1: s.compute[r] = interleaved_rank(r, p, m, 1, true); break;
      case Kind::Custom: break;
    }
  }
  add_communication(s);
  return s;
}

}  // namespace crucible::pipeline
