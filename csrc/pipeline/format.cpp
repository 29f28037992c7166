// Names and text forms: op and kind names, action strings ("2F0", "1SEND_B3") as
// torch.distributed.pipelining writes them, the step x rank grid and the CSV it loads.
#include <algorithm>
#include <cctype>
#include <stdexcept>
#include <string>

#include "pipeline/schedule.h"

namespace crucible::pipeline {

const char* op_name(Op op) {
  switch (op) {
    case Op::F: return "F";
    case Op::B: return "B";
    case Op::I: return "I";
    case Op::W: return "W";
    case Op::SEND_F: return "SEND_F";
    case Op::RECV_F: return "RECV_F";
    case Op::SEND_B: return "SEND_B";
    case Op::RECV_B: return "RECV_B";
  }
  return "?";
}

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::GPipe: return "gpipe";
    case Kind::OneFOneB: return "1f1b";
    case Kind::Interleaved1F1B: return "interleaved-1f1b";
    case Kind::ZeroBubbleH1: return "zb-h1";
    case Kind::Custom: return "custom";
  }
  return "?";
}

Kind parse_kind(const std::string& name) {
  for (Kind k : {Kind::GPipe, Kind::OneFOneB, Kind::Interleaved1F1B, Kind::ZeroBubbleH1}) {
    if (name == kind_name(k)) return k;
  }
  throw std::invalid_argument("unknown schedule '" + name +
                              "' (choose gpipe, 1f1b, interleaved-1f1b or zb-h1)");
}

std::string action_string(const Action& a) {
  return std::to_string(a.stage) + op_name(a.op) + std::to_string(a.microbatch);
}

Action parse_action(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  size_t j = text.size();
  while (j > i && std::isdigit(static_cast<unsigned char>(text[j - 1]))) --j;
  const std::string op = text.substr(i, j - i);
  if (i == 0 || j == text.size()) {
    throw std::invalid_argument("action '" + text + "' is not <stage><op><microbatch>, "
                                "e.g. 0F0 or 1SEND_B2");
  }
  for (Op o : {Op::F, Op::B, Op::I, Op::W, Op::SEND_F, Op::RECV_F, Op::SEND_B, Op::RECV_B}) {
    if (op == op_name(o)) {
      return {o, std::stoi(text.substr(0, i)), std::stoi(text.substr(j))};
    }
  }
  throw std::invalid_argument("action '" + text + "': unknown op '" + op +
                              "' (F, B, I, W, SEND_F, RECV_F, SEND_B, RECV_B)");
}

namespace {

// cells[rank][step]: the compute action starting at that step of a unit-time replay, or "".
std::vector<std::vector<std::string>> unit_time_cells(const Schedule& s) {
  const Simulation sim = replay(s, {1.0, 1.0, 1.0, 1.0}, 0.0);
  const int steps = static_cast<int>(sim.makespan + 0.5);
  std::vector<std::vector<std::string>> cells(s.ranks);
  for (int r = 0; r < s.ranks; ++r) {
    cells[r].assign(steps, "");
    for (size_t k = 0; k < s.actions[r].size(); ++k) {
      const Action& a = s.actions[r][k];
      if (a.op >= Op::SEND_F) continue;
      const int step = static_cast<int>(sim.start[r][k] + 0.5);
      cells[r][step] = action_string(a);
    }
    while (!cells[r].empty() && cells[r].back().empty()) cells[r].pop_back();
  }
  return cells;
}

std::vector<std::vector<std::string>> listed_cells(const Schedule& s) {
  std::vector<std::vector<std::string>> cells(s.ranks);
  for (int r = 0; r < s.ranks; ++r) {
    for (const Action& a : s.actions[r]) cells[r].push_back(action_string(a));
  }
  return cells;
}

}  // namespace

std::string grid(const Schedule& s, bool with_comms) {
  // One step per compute action: F, the full B, I and W each take one unit of time here.
  const auto cells = with_comms ? listed_cells(s) : unit_time_cells(s);
  size_t steps = 0;
  for (const auto& c : cells) steps = std::max(steps, c.size());
  const size_t label = std::to_string(steps ? steps - 1 : 0).size();
  std::vector<size_t> width(s.ranks);
  for (int r = 0; r < s.ranks; ++r) {
    width[r] = ("Rank " + std::to_string(r)).size();
    for (const auto& c : cells[r]) width[r] = std::max(width[r], c.size());
  }
  auto pad = [](const std::string& x, size_t w) { return x + std::string(w - x.size(), ' '); };
  std::string out(label + 7, ' ');
  for (int r = 0; r < s.ranks; ++r) {
    out += pad("Rank " + std::to_string(r), width[r]) + (r + 1 < s.ranks ? " " : "");
  }
  out += '\n';
  for (size_t t = 0; t < steps; ++t) {
    std::string n = std::to_string(t);
    out += "Step " + std::string(label - n.size(), '0') + n + ": ";
    for (int r = 0; r < s.ranks; ++r) {
      const std::string& c = t < cells[r].size() ? cells[r][t] : std::string();
      out += pad(c, width[r]) + (r + 1 < s.ranks ? " " : "");
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    out += '\n';
  }
  return out;
}

std::string csv(const Schedule& s, bool with_comms) {
  const auto cells = with_comms ? listed_cells(s) : unit_time_cells(s);
  std::string out;
  for (const auto& row : cells) {
    for (size_t i = 0; i < row.size(); ++i) {
      if (i) out += ',';
      out += row[i];
    }
    out += "\r\n";
  }
  return out;
}

}  // namespace crucible::pipeline
