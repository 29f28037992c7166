// The pybind11 module engine._pipeline: pipeline-parallel schedules generated, validated and
// simulated in plain C++ (csrc/pipeline/). Bad arguments raise ValueError (pybind11 maps
// std::invalid_argument) naming the argument; engine/distributed/schedules.py wraps it.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "pipeline/schedule.h"

namespace py = pybind11;
namespace pp = crucible::pipeline;

namespace {

using ActionTuple = std::tuple<std::string, int, int>;  // (op, stage, micro-batch)

std::vector<ActionTuple> to_tuples(const std::vector<pp::Action>& actions) {
  std::vector<ActionTuple> out;
  out.reserve(actions.size());
  for (const auto& a : actions) out.emplace_back(pp::op_name(a.op), a.stage, a.microbatch);
  return out;
}

const std::vector<pp::Action>& rank_list(const std::vector<std::vector<pp::Action>>& lists,
                                         int rank) {
  if (rank < 0 || rank >= static_cast<int>(lists.size())) {
    throw py::value_error("rank " + std::to_string(rank) + " is out of range (the schedule has " +
                          std::to_string(lists.size()) + " ranks)");
  }
  return lists[rank];
}

pp::Schedule from_strings(int ranks, int virtual_stages, int microbatches,
                          const std::vector<std::vector<std::string>>& per_rank,
                          bool with_comms) {
  if (ranks < 1 || virtual_stages < 1 || microbatches < 1) {
    throw py::value_error("ranks, virtual_stages and microbatches must be >= 1");
  }
  if (static_cast<int>(per_rank.size()) != ranks) {
    throw py::value_error("actions has " + std::to_string(per_rank.size()) +
                          " rank lists; expected one per rank (" + std::to_string(ranks) + ")");
  }
  pp::Schedule s;
  s.ranks = ranks;
  s.virtual_stages = virtual_stages;
  s.microbatches = microbatches;
  auto& target = with_comms ? s.actions : s.compute;
  target.resize(ranks);
  for (int r = 0; r < ranks; ++r) {
    for (const auto& text : per_rank[r]) {
      if (text.empty()) continue;  // an idle step of the compute-only CSV
      pp::Action a;
      try {
        a = pp::parse_action(text);
      } catch (const std::invalid_argument& e) {
        throw py::value_error("rank " + std::to_string(r) + ": " + e.what());
      }
      if (!with_comms && a.op >= pp::Op::SEND_F) {
        throw py::value_error("rank " + std::to_string(r) + ": " + text + " is a "
                              "communication action in a compute-only list; pass "
                              "with_comms=True or drop it");
      }
      target[r].push_back(a);
    }
  }
  if (with_comms) {
    s.compute.resize(ranks);
    for (int r = 0; r < ranks; ++r) {
      for (const auto& a : s.actions[r]) {
        if (a.op < pp::Op::SEND_F) s.compute[r].push_back(a);
      }
    }
  } else {
    pp::add_communication(s);
  }
  return s;
}

}  // namespace

PYBIND11_MODULE(_pipeline, m) {
  m.doc() = "Pipeline-parallel schedules (GPipe, 1F1B, interleaved 1F1B, ZB-H1): generator, "
            "validator and simulator in C++. Use engine.distributed.schedules.";

  py::class_<pp::Schedule>(m, "Schedule")
      .def_property_readonly("kind", [](const pp::Schedule& s) { return pp::kind_name(s.kind); })
      .def_readonly("ranks", &pp::Schedule::ranks)
      .def_readonly("virtual_stages", &pp::Schedule::virtual_stages)
      .def_readonly("microbatches", &pp::Schedule::microbatches)
      .def_property_readonly("stages", &pp::Schedule::stages)
      .def("compute_actions",
           [](const pp::Schedule& s, int rank) { return to_tuples(rank_list(s.compute, rank)); },
           py::arg("rank"), "The compute actions (op, stage, micro-batch) of one rank, in order.")
      .def("actions",
           [](const pp::Schedule& s, int rank) { return to_tuples(rank_list(s.actions, rank)); },
           py::arg("rank"), "Compute and communication actions of one rank, in order.")
      .def("num_actions",
           [](const pp::Schedule& s) {
             size_t n = 0;
             for (const auto& a : s.actions) n += a.size();
             return n;
           })
      .def("validate", &pp::validate, py::call_guard<py::gil_scoped_release>())
      .def(
          "simulate",
          [](const pp::Schedule& s, double f, double b, double w, double latency) {
            pp::Simulation sim;
            {
              py::gil_scoped_release release;
              sim = pp::simulate(s, {f, b, w, latency});
            }
            py::list ranks;
            for (const auto& r : sim.ranks) {
              ranks.append(py::make_tuple(r.busy, r.finish, r.peak_activations));
            }
            return py::make_tuple(sim.makespan, sim.bubble_ratio, ranks);
          },
          py::arg("forward"), py::arg("backward"), py::arg("weight"), py::arg("latency"),
          "(makespan, bubble_ratio, [(busy, finish, peak_activations) per rank]).")
      .def("grid", &pp::grid, py::arg("with_comms") = false)
      .def("csv", &pp::csv, py::arg("with_comms") = false);

  m.def(
      "build",
      [](const std::string& kind, int stages, int microbatches, int virtual_stages) {
        const pp::Kind k = pp::parse_kind(kind);
        py::gil_scoped_release release;
        return pp::build(k, stages, microbatches, virtual_stages);
      },
      py::arg("kind"), py::arg("stages"), py::arg("microbatches"), py::arg("virtual_stages") = 1,
      "Generates a schedule: kind is gpipe, 1f1b, interleaved-1f1b or zb-h1; stages is the "
      "number of pipeline ranks.");
  m.def("from_actions", &from_strings, py::arg("ranks"), py::arg("virtual_stages"),
        py::arg("microbatches"), py::arg("actions"), py::arg("with_comms"),
        "A custom schedule from per-rank action strings (empty strings are idle steps); "
        "without with_comms the SEND/RECV actions are added.");
}
