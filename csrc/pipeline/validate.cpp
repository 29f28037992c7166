// The validator: static checks (every action on its stage's rank and in range, each stage and
// micro-batch computed exactly once, every SEND matched by one RECV on the peer, received in
// the order sent), then a replay that checks each action's dependencies at the moment it runs
// and reports deadlock.
#include <string>
#include <vector>

#include "pipeline/schedule.h"

namespace crucible::pipeline {
namespace {

constexpr size_t kMaxErrors = 20;

class Checker {
 public:
  explicit Checker(const Schedule& s)
      : s_(s), stages_(s.stages()), m_(s.microbatches),
        done_(8 * static_cast<size_t>(stages_) * m_, 0) {}

  std::vector<std::string> run() {
    if (static_cast<int>(s_.actions.size()) != s_.ranks) {
      add("the schedule has " + std::to_string(s_.actions.size()) + " rank lists for " +
          std::to_string(s_.ranks) + " ranks");
      return errors_;
    }
    if (!check_ranges()) return finish();
    check_counts();
    if (errors_.empty()) {
      check_order_per_link();
      check_execution();
    }
    return finish();
  }

 private:
  size_t key(Op op, int stage, int mb) const {
    return (static_cast<size_t>(op) * stages_ + stage) * m_ + mb;
  }
  bool done(Op op, int stage, int mb) const { return done_[key(op, stage, mb)] != 0; }
  void add(const std::string& e) {
    if (errors_.size() < kMaxErrors) errors_.push_back(e);
    else ++dropped_;
  }
  std::vector<std::string> finish() {
    if (dropped_) errors_.push_back("... and " + std::to_string(dropped_) + " more problems");
    return errors_;
  }
  bool remote(int a, int b) const { return s_.rank_of(a) != s_.rank_of(b); }

  bool check_ranges() {
    bool ok = true;
    for (int r = 0; r < s_.ranks; ++r) {
      for (const Action& a : s_.actions[r]) {
        if (a.stage < 0 || a.stage >= stages_ || a.microbatch < 0 || a.microbatch >= m_) {
          add("rank " + std::to_string(r) + ": " + action_string(a) + " is out of range (" +
              std::to_string(stages_) + " stages, " + std::to_string(m_) + " micro-batches)");
          ok = false;
        } else if (s_.rank_of(a.stage) != r) {
          add("rank " + std::to_string(r) + ": " + action_string(a) + " belongs to stage " +
              std::to_string(a.stage) + ", which runs on rank " +
              std::to_string(s_.rank_of(a.stage)));
          ok = false;
        }
      }
    }
    return ok;
  }

  void check_counts() {
    std::vector<int> count(done_.size(), 0);
    for (int r = 0; r < s_.ranks; ++r) {
      for (const Action& a : s_.actions[r]) ++count[key(a.op, a.stage, a.microbatch)];
    }
    auto n = [&](Op op, int st, int mb) { return count[key(op, st, mb)]; };
    auto name = [](Op op, int st, int mb) { return action_string({op, st, mb}); };
    for (int st = 0; st < stages_; ++st) {
      const std::string where = " (rank " + std::to_string(s_.rank_of(st)) + ")";
      for (int mb = 0; mb < m_; ++mb) {
        if (n(Op::F, st, mb) != 1) {
          add(name(Op::F, st, mb) + where + " appears " + std::to_string(n(Op::F, st, mb)) +
              " times; every stage runs each micro-batch forward exactly once");
        }
        const int b = n(Op::B, st, mb), i = n(Op::I, st, mb), w = n(Op::W, st, mb);
        if (!((b == 1 && i == 0 && w == 0) || (b == 0 && i == 1 && w == 1))) {
          add(name(Op::B, st, mb) + where + ": the backward must be one B, or one I and one "
              "W (found " + std::to_string(b) + " B, " + std::to_string(i) + " I, " +
              std::to_string(w) + " W)");
        }
        if (st + 1 < stages_) {
          const int want = remote(st, st + 1) ? 1 : 0;
          check_pair(n(Op::SEND_F, st, mb), n(Op::RECV_F, st + 1, mb), want,
                     name(Op::SEND_F, st, mb), name(Op::RECV_F, st + 1, mb), st, st + 1);
          check_pair(n(Op::SEND_B, st + 1, mb), n(Op::RECV_B, st, mb), want,
                     name(Op::SEND_B, st + 1, mb), name(Op::RECV_B, st, mb), st + 1, st);
        }
      }
      for (int mb = 0; mb < m_; ++mb) {
        if (st == stages_ - 1 && (n(Op::SEND_F, st, mb) || n(Op::RECV_B, st, mb))) {
          add("the last stage " + std::to_string(st) + " has no next stage to exchange "
              "micro-batch " + std::to_string(mb) + " with");
        }
        if (st == 0 && (n(Op::RECV_F, st, mb) || n(Op::SEND_B, st, mb))) {
          add("the first stage has no previous stage to exchange micro-batch " +
              std::to_string(mb) + " with");
        }
      }
    }
  }

  void check_pair(int sends, int recvs, int want, const std::string& send,
                  const std::string& recv, int from, int to) {
    const std::string ranks = " (rank " + std::to_string(s_.rank_of(from)) + " -> rank " +
                              std::to_string(s_.rank_of(to)) + ")";
    if (sends == want && recvs == want) return;
    if (want == 0) {
      add(send + "/" + recv + ranks + ": stages on the same rank exchange no messages");
    } else if (sends != 1 || recvs != 1) {
      add(send + " appears " + std::to_string(sends) + " times and its matching " + recv +
          " " + std::to_string(recvs) + " times" + ranks + "; each needs exactly one");
    }
  }

  // Between two ranks, messages must be received in the order they are sent: NCCL matches
  // point-to-point transfers by order, not by tag.
  void check_order_per_link() {
    const int p = s_.ranks;
    // Per directed link (from * p + to): the transfers, named by the receiving action.
    std::vector<std::vector<Action>> sent(static_cast<size_t>(p) * p),
        received(static_cast<size_t>(p) * p);
    for (int r = 0; r < p; ++r) {
      for (const Action& a : s_.actions[r]) {
        if (a.op == Op::SEND_F || a.op == Op::SEND_B) {
          const bool fwd = a.op == Op::SEND_F;
          const Action recv{fwd ? Op::RECV_F : Op::RECV_B, fwd ? a.stage + 1 : a.stage - 1,
                            a.microbatch};
          sent[static_cast<size_t>(r) * p + s_.rank_of(recv.stage)].push_back(recv);
        } else if (a.op == Op::RECV_F || a.op == Op::RECV_B) {
          const int from = s_.rank_of(a.op == Op::RECV_F ? a.stage - 1 : a.stage + 1);
          received[static_cast<size_t>(from) * p + r].push_back(a);
        }
      }
    }
    for (int from = 0; from < p; ++from) {
      for (int to = 0; to < p; ++to) {
        const auto& x = sent[static_cast<size_t>(from) * p + to];
        const auto& y = received[static_cast<size_t>(from) * p + to];
        for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
          if (!(x[i] == y[i])) {
            add("rank " + std::to_string(from) + " sends its message #" + std::to_string(i) +
                " to rank " + std::to_string(to) + " for " + action_string(x[i]) +
                ", but rank " + std::to_string(to) + " receives " + action_string(y[i]) +
                " there; transfers between two ranks must be received in the order they are "
                "sent (NCCL matches them by order)");
            break;
          }
        }
      }
    }
  }

  // Replays the order; every action's inputs must be available when it runs.
  void check_execution() {
    const int p = s_.ranks;
    std::vector<size_t> pos(p, 0);
    bool progress = true;
    while (progress) {
      progress = false;
      for (int r = 0; r < p; ++r) {
        const auto& acts = s_.actions[r];
        while (pos[r] < acts.size()) {
          const Action& a = acts[pos[r]];
          if (a.op == Op::RECV_F && !done(Op::SEND_F, a.stage - 1, a.microbatch)) break;
          if (a.op == Op::RECV_B && !done(Op::SEND_B, a.stage + 1, a.microbatch)) break;
          check_dependencies(r, pos[r], a);
          done_[key(a.op, a.stage, a.microbatch)] = 1;
          ++pos[r];
          progress = true;
        }
      }
    }
    for (int r = 0; r < p; ++r) {
      if (pos[r] < s_.actions[r].size()) {
        const Action& a = s_.actions[r][pos[r]];
        const Action send = a.op == Op::RECV_F ? Action{Op::SEND_F, a.stage - 1, a.microbatch}
                                               : Action{Op::SEND_B, a.stage + 1, a.microbatch};
        add("deadlock: rank " + std::to_string(r) + " blocks at action " +
            std::to_string(pos[r]) + " " + action_string(a) + ", waiting for " +
            action_string(send) + " on rank " + std::to_string(s_.rank_of(send.stage)) +
            ", which never runs first");
      }
    }
  }

  void need(bool ok, int r, size_t k, const Action& a, const std::string& what) {
    if (!ok) {
      add("rank " + std::to_string(r) + " action " + std::to_string(k) + " " +
          action_string(a) + " runs before " + what);
    }
  }

  void check_dependencies(int r, size_t k, const Action& a) {
    const int st = a.stage, mb = a.microbatch, last = stages_ - 1;
    switch (a.op) {
      case Op::F:
        if (st > 0) {
          if (remote(st - 1, st)) {
            need(done(Op::RECV_F, st, mb), r, k, a, action_string({Op::RECV_F, st, mb}));
          } else {
            need(done(Op::F, st - 1, mb), r, k, a, action_string({Op::F, st - 1, mb}));
          }
        }
        break;
      case Op::B:
      case Op::I:
        need(done(Op::F, st, mb), r, k, a, "its forward " + action_string({Op::F, st, mb}));
        if (st < last) {
          if (remote(st, st + 1)) {
            need(done(Op::RECV_B, st, mb), r, k, a, action_string({Op::RECV_B, st, mb}));
          } else {
            need(done(Op::B, st + 1, mb) || done(Op::I, st + 1, mb), r, k, a,
                 "the backward of stage " + std::to_string(st + 1));
          }
        }
        break;
      case Op::W:
        need(done(Op::I, st, mb), r, k, a, "its input-gradient " +
             action_string({Op::I, st, mb}));
        break;
      case Op::SEND_F:
        need(done(Op::F, st, mb), r, k, a, "the forward " + action_string({Op::F, st, mb}));
        break;
      case Op::SEND_B:
        need(done(Op::B, st, mb) || done(Op::I, st, mb), r, k, a,
             "the backward of stage " + std::to_string(st));
        break;
      case Op::RECV_F:
      case Op::RECV_B:
        break;
    }
  }

  const Schedule& s_;
  int stages_, m_;
  std::vector<uint8_t> done_;
  std::vector<std::string> errors_;
  size_t dropped_ = 0;
};

}  // namespace

std::vector<std::string> validate(const Schedule& schedule) { return Checker(schedule).run(); }

}  // namespace crucible::pipeline
