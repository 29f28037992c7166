// Communication lowering: from the per-rank compute order to the per-rank order with
// point-to-point transfers. A stage's input arrives by a RECV placed right before the compute
// that consumes it; its output leaves by a SEND right after the compute that produces it.
// SENDs never block (isend), so this order is deadlock-free whenever the compute order is
// (validate() checks it). Stages on the same rank hand tensors over without communication.
#include "pipeline/schedule.h"

namespace crucible::pipeline {

void add_communication(Schedule& s) {
  const int last = s.stages() - 1;
  s.actions.assign(s.ranks, {});
  for (int r = 0; r < s.ranks; ++r) {
    auto& out = s.actions[r];
    out.reserve(s.compute[r].size() * 2);
    for (const Action& a : s.compute[r]) {
      const bool remote_prev = a.stage > 0 && s.rank_of(a.stage - 1) != r;
      const bool remote_next = a.stage < last && s.rank_of(a.stage + 1) != r;
      const bool backward = a.op == Op::B || a.op == Op::I;
      if (a.op == Op::F && remote_prev) out.push_back({Op::RECV_F, a.stage, a.microbatch});
      if (backward && remote_next) out.push_back({Op::RECV_B, a.stage, a.microbatch});
      out.push_back(a);
      if (a.op == Op::F && remote_next) out.push_back({Op::SEND_F, a.stage, a.microbatch});
      if (backward && remote_prev) out.push_back({Op::SEND_B, a.stage, a.microbatch});
    }
  }
}

}  // namespace crucible::pipeline
