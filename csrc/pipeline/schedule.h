// Pipeline-parallel schedules: the action vocabulary, the Schedule (per-rank ordered actions)
// and the entry points of the generator (generators.cpp), the communication lowering
// (lowering.cpp), the validator (validate.cpp), the simulator (simulate.cpp) and the text
// formats (format.cpp). Plain C++, no torch: engine/_pipeline binds it for Python.
//
// Stage s of S = ranks * virtual_stages lives on rank s % ranks (the "loop" placement of
// interleaved 1F1B, and the only placement when virtual_stages == 1). Action strings follow
// torch.distributed.pipelining: "<stage><op><microbatch>", e.g. 0F0, 3I2, 1SEND_F0.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace crucible::pipeline {

// F: forward. B: full backward (input and weight gradients). I: input-gradient backward and
// W: weight-gradient backward, the two halves of B in zero-bubble schedules (the ZB paper calls
// I "B"; torch.distributed.pipelining calls it I). SEND_F/RECV_F move a stage's output to the
// next stage; SEND_B/RECV_B move the gradient of a stage's input to the previous stage.
enum class Op : uint8_t { F, B, I, W, SEND_F, RECV_F, SEND_B, RECV_B };

struct Action {
  Op op;
  int32_t stage;
  int32_t microbatch;
  bool operator==(const Action&) const = default;
};

enum class Kind : uint8_t { GPipe, OneFOneB, Interleaved1F1B, ZeroBubbleH1, Custom };

struct Schedule {
  Kind kind = Kind::Custom;
  int ranks = 1;
  int virtual_stages = 1;
  int microbatches = 1;
  // Per rank: the compute actions only (F, B, I, W), in execution order.
  std::vector<std::vector<Action>> compute;
  // Per rank: compute and communication actions, in execution order. A SEND never blocks; a
  // RECV blocks until the matching SEND has run on the peer.
  std::vector<std::vector<Action>> actions;

  int stages() const { return ranks * virtual_stages; }
  int rank_of(int stage) const { return stage % ranks; }
};

struct Times {
  double forward = 1.0;   // F of one micro-batch through one rank's share of the layers
  double backward = 1.0;  // I: the input-gradient half of the backward
  double weight = 1.0;    // W: the weight-gradient half; a full B costs backward + weight
  double latency = 0.0;   // one point-to-point transfer, from SEND to the RECV completing
};

struct RankStats {
  double busy = 0.0;            // seconds of compute
  double finish = 0.0;          // when the rank's last action ends
  double peak_activations = 0;  // max micro-batches in flight, in units of one rank's layers
};

struct Simulation {
  double makespan = 0.0;
  double bubble_ratio = 0.0;  // 1 - busy / (ranks * makespan)
  std::vector<RankStats> ranks;
  // Per rank, per entry of Schedule::actions: start time of that action.
  std::vector<std::vector<double>> start;
};

const char* op_name(Op op);
const char* kind_name(Kind kind);
// Parses "gpipe", "1f1b", "interleaved-1f1b", "zb-h1"; throws std::invalid_argument otherwise.
Kind parse_kind(const std::string& name);
// Parses an action string such as "2F0" or "1SEND_B3"; throws std::invalid_argument.
Action parse_action(const std::string& text);
std::string action_string(const Action& a);

// Builds the compute order and its communication lowering. Throws std::invalid_argument naming
// the constraint when (ranks, microbatches, virtual_stages) is outside the schedule's domain.
Schedule build(Kind kind, int ranks, int microbatches, int virtual_stages);

// Fills schedule.actions from schedule.compute: a RECV right before the compute that consumes
// a remote input, a SEND right after the compute that produces one.
void add_communication(Schedule& schedule);

// Every problem found, each a sentence naming the rank and action; empty when the schedule is
// complete (one F and one B, or one I and one W, per stage and micro-batch), respects every
// dependency, matches every SEND with one RECV (received in the order sent between any two
// ranks) and runs to the end without deadlock.
std::vector<std::string> validate(const Schedule& schedule);

// Replays schedule.actions with the given times (chunk times are the rank times divided by
// virtual_stages). Throws std::runtime_error if the schedule deadlocks.
Simulation simulate(const Schedule& schedule, const Times& times);
// The replay under simulate(): op_seconds holds the duration of one F, B, I and W action.
Simulation replay(const Schedule& schedule, const double (&op_seconds)[4], double latency);

// The compute actions as a step x rank grid, one unit of time per action (the layout of
// torch.distributed.pipelining's _format_pipeline_order); with_comms lists schedule.actions
// row by row instead, one action per row and rank.
std::string grid(const Schedule& schedule, bool with_comms);
// One line per rank, comma-separated action strings: the CSV that
// torch.distributed.pipelining's _load_csv reads ("compute_only" keeps idle steps as empty
// cells, like the grid; with_comms writes the "compute_comms" format).
std::string csv(const Schedule& schedule, bool with_comms);

}  // namespace crucible::pipeline
