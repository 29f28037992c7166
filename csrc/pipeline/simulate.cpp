// The simulator: replays each rank's actions in order with given op durations. Compute takes
// its time; a SEND is asynchronous and its data lands `latency` later; a RECV waits for that.
// Ranks advance until they block on a RECV and are woken by the SEND they wait for, so a
// replay costs O(actions). Activations are in flight from a micro-batch's F on a stage until
// its backward on that stage is complete (B, or W when the backward is split).
#include <algorithm>
#include <stdexcept>
#include <string>

#include "pipeline/schedule.h"

namespace crucible::pipeline {
namespace {

// Index of a transfer by the stage that sends it: direction (0 forward, 1 backward).
size_t transfer_key(const Schedule& s, int direction, int sender_stage, int microbatch) {
  return (static_cast<size_t>(direction) * s.stages() + sender_stage) * s.microbatches +
         microbatch;
}

}  // namespace

Simulation replay(const Schedule& s, const double (&op_seconds)[4], double latency) {
  const int p = s.ranks;
  const size_t keys = 2 * static_cast<size_t>(s.stages()) * s.microbatches;
  constexpr double kNotSent = -1.0;
  std::vector<double> arrival(keys, kNotSent);
  std::vector<size_t> pos(p, 0), blocked_on(p, SIZE_MAX);
  std::vector<double> clock(p, 0.0);
  std::vector<int> in_flight(p, 0), peak(p, 0);
  Simulation sim;
  sim.ranks.resize(p);
  sim.start.resize(p);
  for (int r = 0; r < p; ++r) sim.start[r].assign(s.actions[r].size(), 0.0);
  std::vector<int> ready;
  for (int r = p - 1; r >= 0; --r) ready.push_back(r);
  while (!ready.empty()) {
    const int r = ready.back();
    ready.pop_back();
    blocked_on[r] = SIZE_MAX;
    const auto& acts = s.actions[r];
    while (pos[r] < acts.size()) {
      const Action& a = acts[pos[r]];
      if (a.op == Op::RECV_F || a.op == Op::RECV_B) {
        const bool fwd = a.op == Op::RECV_F;
        const int sender = fwd ? a.stage - 1 : a.stage + 1;
        if (sender < 0 || sender >= s.stages() || a.microbatch < 0 ||
            a.microbatch >= s.microbatches) {
          throw std::runtime_error("rank " + std::to_string(r) + ": " + action_string(a) +
                                   " receives from a stage or micro-batch out of range");
        }
        const size_t key = transfer_key(s, fwd ? 0 : 1, sender, a.microbatch);
        if (arrival[key] == kNotSent) {
          blocked_on[r] = key;
          break;
        }
        sim.start[r][pos[r]] = clock[r];
        clock[r] = std::max(clock[r], arrival[key]);
      } else if (a.op == Op::SEND_F || a.op == Op::SEND_B) {
        const bool fwd = a.op == Op::SEND_F;
        const int receiver_stage = fwd ? a.stage + 1 : a.stage - 1;
        if (receiver_stage < 0 || receiver_stage >= s.stages() || a.microbatch < 0 ||
            a.microbatch >= s.microbatches) {
          throw std::runtime_error("rank " + std::to_string(r) + ": " + action_string(a) +
                                   " sends to a stage or micro-batch out of range");
        }
        const size_t key = transfer_key(s, fwd ? 0 : 1, a.stage, a.microbatch);
        sim.start[r][pos[r]] = clock[r];
        arrival[key] = clock[r] + latency;
        const int peer = s.rank_of(receiver_stage);
        if (blocked_on[peer] == key) {
          blocked_on[peer] = SIZE_MAX;
          ready.push_back(peer);
        }
      } else {
        const double t = op_seconds[static_cast<int>(a.op)];
        sim.start[r][pos[r]] = clock[r];
        clock[r] += t;
        sim.ranks[r].busy += t;
        if (a.op == Op::F) {
          peak[r] = std::max(peak[r], ++in_flight[r]);
        } else if (a.op == Op::B || a.op == Op::W) {
          --in_flight[r];
        }
      }
      ++pos[r];
    }
  }
  std::string stuck;
  for (int r = 0; r < p; ++r) {
    if (pos[r] < s.actions[r].size()) {
      stuck += " rank " + std::to_string(r) + " waits at " + action_string(s.actions[r][pos[r]]) +
               " (action " + std::to_string(pos[r]) + ");";
    }
  }
  if (!stuck.empty()) {
    throw std::runtime_error("the schedule deadlocks:" + stuck.substr(0, stuck.size() - 1) +
                             "; run validate() for the cause");
  }
  double busy = 0.0;
  for (int r = 0; r < p; ++r) {
    sim.ranks[r].finish = clock[r];
    sim.ranks[r].peak_activations = static_cast<double>(peak[r]) / s.virtual_stages;
    sim.makespan = std::max(sim.makespan, clock[r]);
    busy += sim.ranks[r].busy;
  }
  sim.bubble_ratio = sim.makespan > 0 ? 1.0 - busy / (p * sim.makespan) : 0.0;
  return sim;
}

Simulation simulate(const Schedule& s, const Times& t) {
  for (double x : {t.forward, t.backward, t.weight, t.latency}) {
    if (!(x >= 0.0)) {
      throw std::invalid_argument("simulate: times must be >= 0 (got F=" +
                                  std::to_string(t.forward) + " B=" + std::to_string(t.backward) +
                                  " W=" + std::to_string(t.weight) + " latency=" +
                                  std::to_string(t.latency) + ")");
    }
  }
  const double v = s.virtual_stages;
  const double seconds[4] = {t.forward / v, (t.backward + t.weight) / v, t.backward / v,
                             t.weight / v};
  return replay(s, seconds, t.latency);
}

}  // namespace crucible::pipeline
