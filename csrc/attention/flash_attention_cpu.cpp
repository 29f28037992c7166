// Flash attention on the CPU: tiled, online-softmax forward and backward with memory O(T).
//
// Two implementations of the same algorithm:
//   * fp32 tiles (float32, float16, bfloat16 without AMX; fp64 tiles for float64): inputs are
//     packed once per call into fp32/fp64 panels, zero-padded to whole blocks of 64 keys and 16
//     head-dim lanes — K^T in blocks of (D x 64) for the score GEMM, V (L x D) for P V, and for
//     the backward also q, dO (unless they are already fp32/fp64 rows filling whole lanes: then
//     they are read in place), K and V^T — and every tile step is an AVX-512 GEMM or exp2
//     (attention_tiles_cpu.cpp). A packed q is pre-multiplied by softmax_scale * log2(e), so the
//     softmax needs exp2 only (a q read in place gets the factor inside the exp2 instead).
//   * bf16 tiles on AMX (bfloat16 inputs, CPUs with AMX-BF16, head dims padding to a multiple
//     of 32): raw bf16 panels in the layouts the AMX tile loads want, fp32 accumulation, the
//     scale applied to the fp32 scores (see forward_amx and backward_amx below).
// Packing is one pass over the inputs, whatever their dtype and strides; after it every tile
// operation reads contiguous memory. Packing a (sequence, kv head) and the tile tasks that
// need it share one parallel region (run_after_prep): a task starts as soon as its panels are
// ready, with no barrier in between.
//
// Forward: one task per (sequence, query head, tile of kQueryTile queries), run on ATen's
// OpenMP threads that take tasks from a shared counter, largest first (causal tiles near the
// end of a sequence see the most keys). A task walks the key blocks its rows may see (causal:
// up to its last row; window: from its first row's window start), keeping the running row max
// m, row sum l and the unnormalised output O: per block S = Q K^T, P = 2^(S - m_new),
// O = O * 2^(m_old - m_new) + P V. Masks are applied only in blocks that cross a boundary.
//
// Backward: one task per (sequence, kv head) — or per (sequence, kv head, key tile) when there
// are fewer of those than threads — walking its keys one tile at a time and accumulating that
// tile's dK and dV in its own scratch (written out when the tile is done). For each query head
// of the group and each query tile that sees those keys it recomputes S and
// P = 2^(S - lse), then dV += P^T dO, dP = dO V^T, dS = P (dP - Delta),
// dK += dS^T Q, dQ += dS K with Delta = rowsum(dO * O). dQ is shared between the key tiles of
// one sequence: whole-sequence tasks own it outright; split tasks add into a per-thread buffer
// summed at the end.
#include "flash_attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <string_view>
#include <thread>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "attention/attention_tiles_cpu.h"
#include "common/scratch.h"

namespace crucible::attention {
namespace {

using cpu::exp2_shifted;
using cpu::kLanes;
using cpu::row_max;
using cpu::softmax_grad;
using cpu::tile_gemm;

constexpr int64_t kPanelBlock = 64;    // keys per contiguous block of a transposed panel
constexpr int64_t kQueryTile = 64;     // forward: queries per task
constexpr int64_t kKeyBlock = 128;     // forward: keys per inner step (whole panel blocks)
constexpr int64_t kBwdKeyTile = 128;   // backward: keys per dK/dV tile (whole panel blocks)
constexpr int64_t kBwdQueryTile = 64;  // backward: queries per inner step
static_assert(kKeyBlock % kPanelBlock == 0 && kBwdKeyTile % kPanelBlock == 0);
constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// A heap array left uninitialised: the packed panels are written in full by their packing
// pass, so zero-filling them first would be a wasted pass over memory.
template <typename A>
crucible::cpu::Scratch<A> uninitialized(int64_t n) {
  return crucible::cpu::Scratch<A>(n);  // pooled: no fresh pages per call (common/scratch.h)
}

// Token addressing of one input: element (seq s, position t, head h, lane d).
struct TokenView {
  int64_t seq_stride;  // padded: batch stride; varlen: unused
  int64_t tok_stride, head_stride, dim_stride;
  const AttentionProblem* p;

  TokenView(const at::Tensor& t, const AttentionProblem& problem) : p(&problem) {
    const int64_t r = t.dim();
    seq_stride = problem.varlen ? 0 : t.stride(0);
    tok_stride = t.stride(r - 3);
    head_stride = t.stride(r - 2);
    dim_stride = t.stride(r - 1);
  }
  int64_t offset(int64_t s, int64_t pos, int64_t h) const {
    const int64_t tok = p->varlen ? p->starts[s] + pos : pos;
    return s * seq_stride + tok * tok_stride + h * head_stride;
  }
};

// Index of query (s, pos, head h) in lse: (Hq, total tokens) packed, (B, Hq, max_len) padded.
int64_t lse_index(const AttentionProblem& p, const at::Tensor& lse, int64_t s, int64_t h,
                  int64_t pos) {
  return p.varlen ? h * lse.size(1) + p.starts[s] + pos : (s * p.heads_q + h) * p.max_len + pos;
}

// Per-sequence offsets into the packed panels: sequence s occupies padded rows
// [row0[s], row0[s] + padded_len[s]) of every head's panel (padded to whole panel blocks).
// A row-major panel is padded_len x dp. A transposed panel is stored as blocks of
// kPanelBlock keys, each block dp x kPanelBlock contiguous, so the GEMM reads B with a short
// row stride instead of one that aliases in the L1 cache.
struct PanelLayout {
  std::vector<int64_t> row0, padded_len;
  int64_t total_rows = 0;
  int64_t dp = 0;  // head_dim rounded up to kLanes

  explicit PanelLayout(const AttentionProblem& p) : dp(round_up(p.head_dim, kLanes)) {
    for (int64_t s = 0; s < p.batch; ++s) {
      row0.push_back(total_rows);
      padded_len.push_back(round_up(p.lengths[s], kPanelBlock));
      total_rows += padded_len.back();
    }
  }
  // Panel of (sequence s, head h) among `heads`: padded_len[s] x dp values.
  int64_t panel(int64_t s, int64_t h, int64_t heads) const {
    return (row0[s] * heads + h * padded_len[s]) * dp;
  }
  int64_t size(int64_t heads) const { return total_rows * heads * dp; }
  // Start of the block of a transposed panel holding key j0 (a multiple of kPanelBlock).
  int64_t block(int64_t j0) const { return j0 / kPanelBlock * dp * kPanelBlock; }
};

// Below this many multiply-adds a call runs on the calling thread: waking the pool costs more.
constexpr int64_t kMinParallelWork = int64_t{1} << 18;

// Runs fn(task) for every task id in `order` on ATen's threads, each thread taking the next
// task from a shared counter (dynamic scheduling: tasks differ in cost under causal masks).
// `work` is the total multiply-adds, to keep small problems on the calling thread.
template <typename Fn>
void run_tasks(const std::vector<int64_t>& order, int64_t work, Fn&& fn) {
  const int64_t n = static_cast<int64_t>(order.size());
  if (n == 0) return;
  if (work < kMinParallelWork || at::in_parallel_region() || at::get_num_threads() == 1) {
    for (int64_t task : order) fn(task);
    return;
  }
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(order[i]);
    }
  });
}

// Task ids 0..cost.size() ordered by decreasing cost (stable).
std::vector<int64_t> by_cost(const std::vector<int64_t>& cost) {
  std::vector<int64_t> order(cost.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  return order;
}

// Keys [lo, hi) visible to any query in [r0, r1) of a sequence of `len` tokens.
std::pair<int64_t, int64_t> key_range(const AttentionProblem& p, int64_t r0, int64_t r1,
                                      int64_t len) {
  const int64_t hi = p.causal ? r1 : len;
  const int64_t lo = p.window > 0 ? std::max<int64_t>(0, r0 - p.window + 1) : 0;
  return {lo, hi};
}

// Sets S(r, c) = -inf for keys c0 + c that query r0 + r may not see (also keys >= len). The
// visible keys of a row are one contiguous range, so each row is two fills.
template <typename A>
void apply_mask(const AttentionProblem& p, A* s, int64_t lds, int64_t r0, int64_t nr,
                int64_t c0, int64_t nc, int64_t len) {
  const A ninf = -std::numeric_limits<A>::infinity();
  for (int64_t r = 0; r < nr; ++r) {
    const int64_t i = r0 + r;
    const int64_t hi = p.causal ? std::min(i + 1, len) : len;
    const int64_t lo = p.window > 0 ? i - p.window + 1 : 0;
    const int64_t first = std::clamp<int64_t>(lo - c0, 0, nc);
    const int64_t last = std::clamp<int64_t>(hi - c0, first, nc);
    A* row = s + r * lds;
    std::fill(row, row + first, ninf);
    std::fill(row + last, row + nc, ninf);
  }
}

// The transposed mask of a kPanelBlock x kPanelBlock tile: S^T(j, i) = -inf where query r0 + i
// may not see key c0 + j (also for keys or queries past the sequence); row j's visible queries
// are the range [j, j + window) clipped to the tile and the sequence.
template <typename A>
void apply_mask_transposed(const AttentionProblem& p, A* s, int64_t lds, int64_t c0, int64_t r0,
                           int64_t len) {
  const A ninf = -std::numeric_limits<A>::infinity();
  constexpr int64_t n = kPanelBlock;
  for (int64_t jj = 0; jj < n; ++jj) {
    const int64_t j = c0 + jj;
    const int64_t lo = p.causal ? j : 0;
    const int64_t hi = std::min(len, p.window > 0 ? j + p.window : len);
    const int64_t first = j < len ? std::clamp<int64_t>(lo - r0, 0, n) : n;
    const int64_t last = std::clamp<int64_t>(hi - r0, first, n);
    A* row = s + jj * lds;
    std::fill(row, row + first, ninf);
    std::fill(row + last, row + n, ninf);
  }
}

// True when some query of [r0, r0 + nr) may not see some key of [c0, c0 + nc).
bool block_needs_mask(const AttentionProblem& p, int64_t r0, int64_t nr, int64_t c0,
                      int64_t nc, int64_t len) {
  if (c0 + nc > len) return true;
  if (p.causal && c0 + nc - 1 > r0) return true;
  if (p.window > 0 && c0 < r0 + nr - 1 - p.window + 1) return true;
  return false;
}

// Runs every job of `jobs` in one parallel region (dynamic scheduling). The passes before and
// after the tile loops are grouped this way because every region ends in a barrier, and a
// barrier waits for the slowest thread: on a busy machine, for a thread that lost its core.
void run_jobs(const std::vector<std::function<void()>>& jobs, int64_t work) {
  std::vector<int64_t> order(jobs.size());
  std::iota(order.begin(), order.end(), 0);
  run_tasks(order, work, [&](int64_t i) { jobs[i](); });
}

// Runs the jobs of `prep`, then the tasks of `order`, in a single parallel region: task t waits
// (yielding) until prep job need(t) has finished. Every prep job is handed out before any task,
// so a task only ever waits for a job some thread is already running. This saves both passes
// the barrier between packing and computing.
template <typename Need, typename Fn>
void run_after_prep(const std::vector<std::function<void()>>& prep,
                    const std::vector<int64_t>& order, Need&& need, int64_t work, Fn&& fn) {
  const int64_t n_prep = static_cast<int64_t>(prep.size());
  std::unique_ptr<std::atomic<bool>[]> done(new std::atomic<bool>[n_prep]);
  for (int64_t i = 0; i < n_prep; ++i) done[i].store(false, std::memory_order_relaxed);
  std::vector<int64_t> all(n_prep);
  std::iota(all.begin(), all.end(), 0);
  for (int64_t task : order) all.push_back(n_prep + task);
  run_tasks(all, work, [&](int64_t id) {
    if (id < n_prep) {
      prep[id]();
      done[id].store(true, std::memory_order_release);
      return;
    }
    const int64_t task = id - n_prep;
    const int64_t dep = need(task);
    while (!done[dep].load(std::memory_order_acquire)) std::this_thread::yield();
    fn(task);
  });
}

// Packs panel (s, h) of k, v, q or dO as fp32/fp64: row-major (padded_len x dp) when
// `transpose` is false, blocks of (dp x kPanelBlock) when true, times `scale`. Padding is zero.
template <typename scalar_t, typename A>
void pack_panel(const at::Tensor& t, const AttentionProblem& p, const PanelLayout& layout,
                int64_t heads, bool transpose, A scale, A* out, int64_t s, int64_t h) {
  const TokenView view(t, p);
  const scalar_t* base = t.const_data_ptr<scalar_t>();
  const int64_t D = p.head_dim, dp = layout.dp;
  const int64_t len = p.lengths[s], lp = layout.padded_len[s];
  constexpr int64_t W = kPanelBlock;
  A* panel = out + layout.panel(s, h, heads);
  // Zero the padding only: the last partial block of keys, and lanes D..dp of the rest.
  const int64_t full = transpose ? len / W * W : len;
  std::fill(panel + full * dp, panel + lp * dp, A(0));
  if (D < dp) {
    for (int64_t j = 0; j < full; j += transpose ? W : 1) {
      A* pad = panel + j * dp + (transpose ? D * W : D);
      std::fill(pad, pad + (transpose ? (dp - D) * W : dp - D), A(0));
    }
  }
  const int64_t ds = view.dim_stride;
  for (int64_t pos = 0; pos < len; ++pos) {
    const scalar_t* src = base + view.offset(s, pos, h);
    if (transpose) {
      A* dst = panel + pos / W * dp * W + pos % W;
      for (int64_t d = 0; d < D; ++d) dst[d * W] = static_cast<A>(src[d * ds]) * scale;
    } else if (ds == 1) {  // the usual layout: a contiguous row, a loop the compiler vectorises
      A* dst = panel + pos * dp;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<A>(src[d]) * scale;
    } else {
      A* dst = panel + pos * dp;
      for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<A>(src[d * ds]) * scale;
    }
  }
}

// ------------------------------------------------------------------------------------------
// Forward.

template <typename scalar_t, typename A>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const AttentionProblem& p, at::Tensor& out, at::Tensor& lse) {
  const PanelLayout layout(p);
  const int64_t D = p.head_dim, dp = layout.dp, Hq = p.heads_q, Hkv = p.heads_kv;
  const int64_t group = Hq / Hkv;
  const auto kt = uninitialized<A>(layout.size(Hkv));
  const auto vp = uninitialized<A>(layout.size(Hkv));
  std::vector<std::function<void()>> prep;  // job s * Hkv + h packs K^T and V of (s, h)
  for (int64_t s = 0; s < p.batch; ++s) {
    for (int64_t h = 0; h < Hkv; ++h) {
      prep.emplace_back([&, s, h] {
        pack_panel<scalar_t, A>(k, p, layout, Hkv, /*transpose=*/true, A(1), kt.get(), s, h);
        pack_panel<scalar_t, A>(v, p, layout, Hkv, /*transpose=*/false, A(1), vp.get(), s, h);
      });
    }
  }

  // Tasks: (sequence, head, query tile), costed by the keys they visit.
  std::vector<int64_t> task_seq, task_head, task_row, cost;
  for (int64_t s = 0; s < p.batch; ++s) {
    for (int64_t h = 0; h < Hq; ++h) {
      for (int64_t r0 = 0; r0 < p.lengths[s]; r0 += kQueryTile) {
        const int64_t r1 = std::min(p.lengths[s], r0 + kQueryTile);
        const auto [lo, hi] = key_range(p, r0, r1, p.lengths[s]);
        task_seq.push_back(s);
        task_head.push_back(h);
        task_row.push_back(r0);
        cost.push_back(hi - lo);
      }
    }
  }

  const TokenView qv(q, p), ov(out, p);
  const scalar_t* qbase = q.const_data_ptr<scalar_t>();
  scalar_t* obase = out.mutable_data_ptr<scalar_t>();
  A* lbase = lse.mutable_data_ptr<A>();
  const A qscale = static_cast<A>(p.scale * kLog2e);
  const A ninf = -std::numeric_limits<A>::infinity();

  const int64_t work = std::accumulate(cost.begin(), cost.end(), int64_t{0}) * kQueryTile * dp;
  const auto need = [&](int64_t task) { return task_seq[task] * Hkv + task_head[task] / group; };
  run_after_prep(prep, by_cost(cost), need, work, [&](int64_t task) {
    thread_local std::vector<A> scratch;
    scratch.resize(kQueryTile * dp * 2 + kQueryTile * kKeyBlock + 2 * kQueryTile);
    A* qs = scratch.data();             // (nr x dp) scaled queries
    A* acc = qs + kQueryTile * dp;      // (nr x dp) unnormalised output
    A* s_tile = acc + kQueryTile * dp;  // (nr x kKeyBlock) scores, then probabilities
    A* m = s_tile + kQueryTile * kKeyBlock;
    A* l = m + kQueryTile;

    const int64_t s = task_seq[task], h = task_head[task], r0 = task_row[task];
    const int64_t len = p.lengths[s];
    const int64_t nr = std::min(kQueryTile, len - r0);
    const int64_t hkv = h / group;
    for (int64_t r = 0; r < nr; ++r) {
      const scalar_t* src = qbase + qv.offset(s, r0 + r, h);
      A* dst = qs + r * dp;
      for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<A>(src[d * qv.dim_stride]) * qscale;
      std::fill(dst + D, dst + dp, A(0));
      m[r] = ninf;
      l[r] = 0;
    }
    std::fill(acc, acc + nr * dp, A(0));
    const A* kpanel = kt.get() + layout.panel(s, hkv, Hkv);
    const A* vpanel = vp.get() + layout.panel(s, hkv, Hkv);

    const auto [lo, hi] = key_range(p, r0, r0 + nr, len);
    for (int64_t c0 = lo / kPanelBlock * kPanelBlock; c0 < hi; c0 += kKeyBlock) {
      const int64_t nc = std::min(kKeyBlock, round_up(hi - c0, kLanes));
      for (int64_t b = 0; b < nc; b += kPanelBlock) {
        tile_gemm<A>(nr, std::min(kPanelBlock, nc - b), dp, qs, dp, 1,
                     kpanel + layout.block(c0 + b), kPanelBlock, s_tile + b, kKeyBlock, false);
      }
      if (block_needs_mask(p, r0, nr, c0, nc, len)) {
        apply_mask(p, s_tile, kKeyBlock, r0, nr, c0, nc, len);
      }
      for (int64_t r = 0; r < nr; ++r) {
        A* row = s_tile + r * kKeyBlock;
        const A m_new = std::max(m[r], row_max<A>(row, nc));
        if (m_new == ninf) {  // nothing visible yet in this row
          std::fill(row, row + nc, A(0));
          continue;
        }
        const A alpha = std::exp2(m[r] - m_new);
        const A sum = exp2_shifted<A>(row, nc, m_new);
        l[r] = l[r] * alpha + sum;
        m[r] = m_new;
        if (alpha != A(1)) {
          A* o = acc + r * dp;
          for (int64_t d = 0; d < dp; ++d) o[d] *= alpha;
        }
      }
      tile_gemm<A>(nr, dp, nc, s_tile, kKeyBlock, 1, vpanel + c0 * dp, dp, acc, dp, true);
    }

    for (int64_t r = 0; r < nr; ++r) {
      const A inv = A(1) / l[r];
      scalar_t* dst = obase + ov.offset(s, r0 + r, h);
      const A* o = acc + r * dp;
      for (int64_t d = 0; d < D; ++d) dst[d * ov.dim_stride] = static_cast<scalar_t>(o[d] * inv);
      lbase[lse_index(p, lse, s, h, r0 + r)] = (m[r] + std::log2(l[r])) * static_cast<A>(kLn2);
    }
  });
}

// ------------------------------------------------------------------------------------------
// Forward, bfloat16 on AMX: the same tiles with both GEMMs on the AMX tile unit (bf16 operands,
// fp32 accumulation, so P is rounded to bf16 before P V as in torch's own bf16 attention).
// Operands stay raw bf16: q tiles row-major, K in pairs along the head dim per block of
// kPanelBlock keys (element (d, j) at block(j) + (d / 2) * 2W + 2 (j % W) + d % 2), V in pairs
// along the keys (element (j, d) at (j / 2) * 2dp + 2d + j % 2). Query tiles are padded to
// kQueryTile rows and key steps are whole panel blocks, the multiples of 32 AMX needs; a step
// takes up to kAmxKeyStep keys so that rescaling O and moving it through the tiles is paid once
// per step rather than once per panel block.

constexpr int64_t kAmxKeyStep = 256;
static_assert(kAmxKeyStep % kPanelBlock == 0);

using cpu::amx_gemm_bf16;

// CRUCIBLE_ATTENTION_AMX=0 in the environment keeps bfloat16 on the fp32 tiles (read on every
// call, so tests can check both paths on an AMX machine).
bool amx_applies(const at::Tensor& q, const AttentionProblem& p) {
  if (q.scalar_type() != at::kBFloat16 || round_up(p.head_dim, kLanes) % 32 != 0) return false;
  const char* flag = std::getenv("CRUCIBLE_ATTENTION_AMX");
  if (flag != nullptr && std::string_view(flag) == "0") return false;
  return cpu::amx_available();
}

// Layouts of raw bf16 panels (padded_len x dp values per (sequence, head), zero padding):
enum class Bf16Layout {
  kRows,        // (j, d) at j * dp + d                                    (A operand)
  kBlockedT,    // (j, d) at block(j) + d * W + j % W                      (A operand, K^T)
  kPairsDim,    // (j, d) at block(j) + (d / 2) * 2W + 2 (j % W) + d % 2   (B operand, k = d)
  kPairsTokens, // (j, d) at (j / 2) * 2dp + 2d + j % 2                    (B operand, k = j)
};

// Where token j's values go: lane d lands at out[base(j) + offset(d)] (the layouts above).
struct Bf16Placement {
  int64_t base;        // index of (j, 0)
  int64_t stride;      // index step from lane d to lane d + 2
  int64_t odd_offset;  // index of (j, 1) minus base
};

Bf16Placement bf16_placement(Bf16Layout layout, int64_t j, int64_t dp) {
  constexpr int64_t W = kPanelBlock;
  switch (layout) {
    case Bf16Layout::kRows: return {j * dp, 2, 1};
    case Bf16Layout::kBlockedT: return {j / W * dp * W + j % W, 2 * W, W};
    case Bf16Layout::kPairsDim: return {j / W * dp * W + 2 * (j % W), 2 * W, 1};
    case Bf16Layout::kPairsTokens: return {j / 2 * 2 * dp + j % 2, 4, 2};
  }
  return {0, 0, 0};
}

// Packs panel (s, h) of a bfloat16 tensor in `kind`'s layout, zero padding included.
void pack_bf16(const at::Tensor& t, const AttentionProblem& p, const PanelLayout& layout,
               int64_t heads, Bf16Layout kind, uint16_t* out, int64_t s, int64_t h) {
  const TokenView view(t, p);
  const uint16_t* base = reinterpret_cast<const uint16_t*>(t.const_data_ptr<at::BFloat16>());
  const int64_t D = p.head_dim, dp = layout.dp;
  uint16_t* panel = out + layout.panel(s, h, heads);
  std::fill(panel, panel + layout.padded_len[s] * dp, uint16_t{0});
  for (int64_t j = 0; j < p.lengths[s]; ++j) {
    const uint16_t* src = base + view.offset(s, j, h);
    const Bf16Placement at = bf16_placement(kind, j, dp);
    uint16_t* dst = panel + at.base;
    for (int64_t d = 0; d < D; d += 2, dst += at.stride) {
      dst[0] = src[d * view.dim_stride];
      if (d + 1 < D) dst[at.odd_offset] = src[(d + 1) * view.dim_stride];
    }
  }
}

void forward_amx(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const AttentionProblem& p, at::Tensor& out, at::Tensor& lse) {
  const PanelLayout layout(p);
  const int64_t D = p.head_dim, dp = layout.dp, Hq = p.heads_q, Hkv = p.heads_kv;
  const int64_t group = Hq / Hkv;
  constexpr int64_t W = kPanelBlock;
  const auto kpairs = uninitialized<uint16_t>(layout.size(Hkv));
  const auto vpairs = uninitialized<uint16_t>(layout.size(Hkv));
  std::vector<std::function<void()>> prep;  // job s * Hkv + h packs K and V of (s, h)
  for (int64_t s = 0; s < p.batch; ++s) {
    for (int64_t h = 0; h < Hkv; ++h) {
      prep.emplace_back([&, s, h] {
        pack_bf16(k, p, layout, Hkv, Bf16Layout::kPairsDim, kpairs.get(), s, h);
        pack_bf16(v, p, layout, Hkv, Bf16Layout::kPairsTokens, vpairs.get(), s, h);
      });
    }
  }

  std::vector<int64_t> task_seq, task_head, task_row, cost;
  for (int64_t s = 0; s < p.batch; ++s) {
    for (int64_t h = 0; h < Hq; ++h) {
      for (int64_t r0 = 0; r0 < p.lengths[s]; r0 += kQueryTile) {
        const auto [lo, hi] = key_range(p, r0, std::min(p.lengths[s], r0 + kQueryTile),
                                        p.lengths[s]);
        task_seq.push_back(s);
        task_head.push_back(h);
        task_row.push_back(r0);
        cost.push_back(hi - lo);
      }
    }
  }
  const TokenView qv(q, p), ov(out, p);
  const uint16_t* qbase = reinterpret_cast<const uint16_t*>(q.const_data_ptr<at::BFloat16>());
  at::BFloat16* obase = out.mutable_data_ptr<at::BFloat16>();
  float* lbase = lse.mutable_data_ptr<float>();
  const float c = static_cast<float>(p.scale * kLog2e);
  const float ninf = -std::numeric_limits<float>::infinity();
  const int64_t work = std::accumulate(cost.begin(), cost.end(), int64_t{0}) * kQueryTile * dp;
  const auto need = [&](int64_t task) { return task_seq[task] * Hkv + task_head[task] / group; };
  run_after_prep(prep, by_cost(cost), need, work, [&](int64_t task) {
    thread_local std::vector<float> fscratch;
    thread_local std::vector<uint16_t> hscratch;
    constexpr int64_t S = kAmxKeyStep;
    fscratch.resize(kQueryTile * dp + kQueryTile * S + 2 * kQueryTile);
    hscratch.resize(kQueryTile * dp + kQueryTile * S);
    float* acc = fscratch.data();          // (kQueryTile x dp) unnormalised output
    float* s_tile = acc + kQueryTile * dp; // (kQueryTile x S) scores, then probabilities
    float* m = s_tile + kQueryTile * S;
    float* l = m + kQueryTile;
    uint16_t* qt = hscratch.data();        // (kQueryTile x dp) queries, bf16
    uint16_t* pt = qt + kQueryTile * dp;   // (kQueryTile x S) probabilities, bf16

    const int64_t s = task_seq[task], h = task_head[task], r0 = task_row[task];
    const int64_t len = p.lengths[s];
    const int64_t nr = std::min(kQueryTile, len - r0);
    std::fill(qt, qt + kQueryTile * dp + kQueryTile * S, uint16_t{0});
    std::fill(acc, acc + kQueryTile * dp, 0.0f);
    for (int64_t r = 0; r < nr; ++r) {
      const uint16_t* src = qbase + qv.offset(s, r0 + r, h);
      for (int64_t d = 0; d < D; ++d) qt[r * dp + d] = src[d * qv.dim_stride];
      m[r] = ninf;
      l[r] = 0.0f;
    }
    const uint16_t* kpanel = kpairs.get() + layout.panel(s, h / group, Hkv);
    const uint16_t* vpanel = vpairs.get() + layout.panel(s, h / group, Hkv);

    cpu::amx_begin();
    const auto [lo, hi] = key_range(p, r0, r0 + nr, len);
    for (int64_t c0 = lo / W * W; c0 < hi; c0 += S) {
      const int64_t nc = std::min(S, round_up(hi - c0, W));
      for (int64_t b = 0; b < nc; b += W) {
        amx_gemm_bf16(kQueryTile, W, dp, qt, dp, kpanel + layout.block(c0 + b), 2 * W,
                      s_tile + b, S, false);
      }
      if (block_needs_mask(p, r0, nr, c0, nc, len)) apply_mask(p, s_tile, S, r0, nr, c0, nc, len);
      for (int64_t r = 0; r < nr; ++r) {
        float* row = s_tile + r * S;
        const float m_new = std::max(m[r], row_max<float>(row, nc) * c);
        if (m_new == ninf) {
          std::fill(row, row + nc, 0.0f);
          continue;
        }
        const float alpha = std::exp2(m[r] - m_new);
        l[r] = l[r] * alpha + exp2_shifted<float>(row, nc, m_new, c);
        m[r] = m_new;
        if (alpha != 1.0f) {
          float* o = acc + r * dp;
          for (int64_t d = 0; d < dp; ++d) o[d] *= alpha;
        }
      }
      for (int64_t r = 0; r < nr; ++r) cpu::to_bf16(s_tile + r * S, pt + r * S, nc);
      amx_gemm_bf16(kQueryTile, dp, nc, pt, S, vpanel + c0 * dp, 2 * dp, acc, dp, true);
    }
    cpu::amx_end();

    for (int64_t r = 0; r < nr; ++r) {
      const float inv = 1.0f / l[r];
      at::BFloat16* dst = obase + ov.offset(s, r0 + r, h);
      const float* o = acc + r * dp;
      for (int64_t d = 0; d < D; ++d) {
        dst[d * ov.dim_stride] = static_cast<at::BFloat16>(o[d] * inv);
      }
      lbase[lse_index(p, lse, s, h, r0 + r)] =
          (m[r] + std::log2(l[r])) * static_cast<float>(kLn2);
    }
  });
}

// ------------------------------------------------------------------------------------------
// Backward.

template <typename scalar_t, typename A>
void backward_impl(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                   const AttentionProblem& p, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const PanelLayout layout(p);
  const int64_t D = p.head_dim, dp = layout.dp, Hq = p.heads_q, Hkv = p.heads_kv;
  const int64_t group = Hq / Hkv;
  const A qscale = static_cast<A>(p.scale * kLog2e);

  // Packed operands: queries (scaled) and dO per query head, K, K^T, V^T per kv head, and per
  // query row lse * log2(e) and Delta = rowsum(dO * O). Queries and dO already in the compute
  // dtype, with contiguous rows that fill whole lanes (D == dp), are read in place instead:
  // two panels less memory and packing, the score scale then applied in the exponential.
  const TokenView qv(q, p), gv(grad_out, p);
  const bool direct = std::is_same_v<scalar_t, A> && D == dp && qv.dim_stride == 1 &&
                      gv.dim_stride == 1;
  const A* q_rows = reinterpret_cast<const A*>(q.const_data_ptr<scalar_t>());
  const A* g_rows = reinterpret_cast<const A*>(grad_out.const_data_ptr<scalar_t>());
  const A s_scale = direct ? qscale : A(1);  // packed q carries the scale itself
  const auto qs = uninitialized<A>(direct ? 0 : layout.size(Hq));
  const auto dop = uninitialized<A>(direct ? 0 : layout.size(Hq));
  const auto kp = uninitialized<A>(layout.size(Hkv));
  const auto ktp = uninitialized<A>(layout.size(Hkv));
  const auto vtp = uninitialized<A>(layout.size(Hkv));
  const auto lse2 = uninitialized<A>(layout.total_rows * Hq);
  const auto delta = uninitialized<A>(layout.total_rows * Hq);
  const int64_t threads = at::get_num_threads();
  const bool split = p.batch * Hkv < 2 * threads;  // see the units below
  const int64_t dq_size = layout.size(Hq);
  const int64_t copies = split ? threads : 1;
  const auto dq_acc = uninitialized<A>(dq_size * copies);
  // Prep job s * Hkv + hkv packs what the units of (s, hkv) read: its K, K^T, V^T and, for
  // each query head of its group, q, dO, Delta, lse2 and zeroed dQ accumulators.
  const TokenView ov(out, p);
  const scalar_t* obase = out.const_data_ptr<scalar_t>();
  const A* lbase = lse.const_data_ptr<A>();
  std::vector<std::function<void()>> prep;
  for (int64_t s = 0; s < p.batch; ++s) {
    for (int64_t hkv = 0; hkv < Hkv; ++hkv) {
      prep.emplace_back([&, s, hkv] {
        pack_panel<scalar_t, A>(k, p, layout, Hkv, false, A(1), kp.get(), s, hkv);
        pack_panel<scalar_t, A>(k, p, layout, Hkv, true, A(1), ktp.get(), s, hkv);
        pack_panel<scalar_t, A>(v, p, layout, Hkv, true, A(1), vtp.get(), s, hkv);
        for (int64_t h = hkv * group; h < (hkv + 1) * group; ++h) {
          if (!direct) {
            pack_panel<scalar_t, A>(q, p, layout, Hq, false, qscale, qs.get(), s, h);
            pack_panel<scalar_t, A>(grad_out, p, layout, Hq, false, A(1), dop.get(), s, h);
          }
          const int64_t panel = layout.panel(s, h, Hq);
          const int64_t panel_size = layout.padded_len[s] * dp;
          for (int64_t c = 0; c < copies; ++c) {
            std::fill_n(dq_acc.get() + c * dq_size + panel, panel_size, A(0));
          }
          const int64_t rows = layout.row0[s] * Hq + h * layout.padded_len[s];
          for (int64_t r = 0; r < p.lengths[s]; ++r) {
            const A* g = direct ? g_rows + gv.offset(s, r, h) : dop.get() + panel + r * dp;
            const scalar_t* o = obase + ov.offset(s, r, h);
            A dot = 0;
            if (ov.dim_stride == 1) {
#pragma omp simd reduction(+ : dot)
              for (int64_t d = 0; d < D; ++d) dot += g[d] * static_cast<A>(o[d]);
            } else {
              for (int64_t d = 0; d < D; ++d) dot += g[d] * static_cast<A>(o[d * ov.dim_stride]);
            }
            delta[rows + r] = dot;
            lse2[rows + r] = lbase[lse_index(p, lse, s, h, r)] * static_cast<A>(kLog2e);
          }
        }
      });
    }
  }

  // Units of work: whole (sequence, kv head) pairs when there are enough of them to keep every
  // thread busy, else single key tiles (then dQ goes to per-thread buffers).
  std::vector<int64_t> unit_seq, unit_head, unit_key0, unit_key1, cost;
  for (int64_t s = 0; s < p.batch; ++s) {
    const int64_t len = p.lengths[s];
    if (len == 0) continue;
    for (int64_t h = 0; h < Hkv; ++h) {
      const int64_t step = split ? kBwdKeyTile : round_up(len, kBwdKeyTile);
      for (int64_t c0 = 0; c0 < len; c0 += step) {
        const int64_t c1 = std::min(len, c0 + step);
        unit_seq.push_back(s);
        unit_head.push_back(h);
        unit_key0.push_back(c0);
        unit_key1.push_back(c1);
        // Queries that see keys [c0, c1), times the keys.
        const int64_t q0 = p.causal ? c0 : 0;
        const int64_t q1 = p.window > 0 ? std::min(len, c1 + p.window - 1) : len;
        cost.push_back((q1 - q0) * (c1 - c0));
      }
    }
  }
  const TokenView kview(dk, p), vview(dv, p);
  scalar_t* dk_base = dk.mutable_data_ptr<scalar_t>();
  scalar_t* dv_base = dv.mutable_data_ptr<scalar_t>();
  // dK = dS^T (scale q): the packed q carries scale * log2(e), so undo the log2(e); q read in
  // place carries nothing, so apply the scale
  const A dk_scale = static_cast<A>(direct ? p.scale : kLn2);

  const int64_t work = std::accumulate(cost.begin(), cost.end(), int64_t{0}) * group * dp;
  const auto need = [&](int64_t unit) { return unit_seq[unit] * Hkv + unit_head[unit]; };
  run_after_prep(prep, by_cost(cost), need, work, [&](int64_t unit) {
    thread_local std::vector<A> scratch;
    scratch.resize(2 * kBwdQueryTile * kBwdKeyTile + 2 * kBwdKeyTile * dp);
    A* pt = scratch.data();                    // (nr x nc) probabilities
    A* ds = pt + kBwdQueryTile * kBwdKeyTile;  // (nr x nc) dP, then dS
    A* dkt = ds + kBwdQueryTile * kBwdKeyTile; // (nc x dp) dK of the key tile
    A* dvt = dkt + kBwdKeyTile * dp;           // (nc x dp) dV of the key tile
    const int64_t s = unit_seq[unit], hkv = unit_head[unit];
    const int64_t len = p.lengths[s];
    A* dq_base = dq_acc.get() + (split ? at::get_thread_num() * dq_size : 0);
    const int64_t kv_panel = layout.panel(s, hkv, Hkv);
    for (int64_t c0 = unit_key0[unit]; c0 < unit_key1[unit]; c0 += kBwdKeyTile) {
      const int64_t c1 = std::min(len, c0 + kBwdKeyTile);
      const int64_t nc = round_up(c1 - c0, kLanes);
      std::fill(dkt, dkt + nc * dp, A(0));
      std::fill(dvt, dvt + nc * dp, A(0));
      const int64_t i0 = p.causal ? c0 : 0;
      const int64_t i1 = p.window > 0 ? std::min(len, c1 + p.window - 1) : len;
      for (int64_t hq = hkv * group; hq < (hkv + 1) * group; ++hq) {
        const int64_t q_panel = layout.panel(s, hq, Hq);
        const int64_t rows = layout.row0[s] * Hq + hq * layout.padded_len[s];
        for (int64_t r0 = i0 / kBwdQueryTile * kBwdQueryTile; r0 < i1; r0 += kBwdQueryTile) {
          const int64_t nr = std::min(kBwdQueryTile, len - r0);
          // rows of q and dO: in place (row stride of the input) or in their panels
          const A* qt = direct ? q_rows + qv.offset(s, r0, hq) : qs.get() + q_panel + r0 * dp;
          const A* gt = direct ? g_rows + gv.offset(s, r0, hq) : dop.get() + q_panel + r0 * dp;
          const int64_t qld = direct ? qv.tok_stride : dp, gld = direct ? gv.tok_stride : dp;
          for (int64_t b = 0; b < nc; b += kPanelBlock) {
            tile_gemm<A>(nr, std::min(kPanelBlock, nc - b), dp, qt, qld, 1,
                         ktp.get() + kv_panel + layout.block(c0 + b), kPanelBlock, pt + b, nc,
                         false);
          }
          if (block_needs_mask(p, r0, nr, c0, nc, len)) apply_mask(p, pt, nc, r0, nr, c0, nc, len);
          for (int64_t r = 0; r < nr; ++r) {
            exp2_shifted<A>(pt + r * nc, nc, lse2[rows + r0 + r], s_scale);
          }
          tile_gemm<A>(nc, dp, nr, pt, 1, nc, gt, gld, dvt, dp, true);
          for (int64_t b = 0; b < nc; b += kPanelBlock) {
            tile_gemm<A>(nr, std::min(kPanelBlock, nc - b), dp, gt, gld, 1,
                         vtp.get() + kv_panel + layout.block(c0 + b), kPanelBlock, ds + b, nc,
                         false);
          }
          for (int64_t r = 0; r < nr; ++r) {
            softmax_grad<A>(ds + r * nc, pt + r * nc, nc, delta[rows + r0 + r]);
          }
          tile_gemm<A>(nc, dp, nr, ds, 1, nc, qt, qld, dkt, dp, true);
          tile_gemm<A>(nr, dp, nc, ds, nc, 1, kp.get() + kv_panel + c0 * dp, dp,
                       dq_base + q_panel + r0 * dp, dp, true);
        }
      }
      for (int64_t c = 0; c < c1 - c0; ++c) {  // this unit owns the tile's dK and dV
        scalar_t* dk_row = dk_base + kview.offset(s, c0 + c, hkv);
        scalar_t* dv_row = dv_base + vview.offset(s, c0 + c, hkv);
        for (int64_t d = 0; d < D; ++d) {
          dk_row[d * kview.dim_stride] = static_cast<scalar_t>(dkt[c * dp + d] * dk_scale);
          dv_row[d * vview.dim_stride] = static_cast<scalar_t>(dvt[c * dp + d]);
        }
      }
    }
  });

  // Write dQ (summed over the per-thread buffers when split) with the softmax scale.
  const A dq_scale = static_cast<A>(p.scale);
  const TokenView qview(dq, p);
  scalar_t* dq_out = dq.mutable_data_ptr<scalar_t>();
  std::vector<std::function<void()>> jobs;
  for (int64_t s = 0; s < p.batch; ++s) {
    for (int64_t h = 0; h < Hq; ++h) {
      jobs.emplace_back([&, s, h] {
        const A* panel = dq_acc.get() + layout.panel(s, h, Hq);
        for (int64_t pos = 0; pos < p.lengths[s]; ++pos) {
          scalar_t* row = dq_out + qview.offset(s, pos, h);
          for (int64_t d = 0; d < D; ++d) {
            A value = panel[pos * dp + d];
            for (int64_t c = 1; c < copies; ++c) value += panel[c * dq_size + pos * dp + d];
            row[d * qview.dim_stride] = static_cast<scalar_t>(value * dq_scale);
          }
        }
      });
    }
  }
  run_jobs(jobs, copies * layout.size(Hq));
}

// ------------------------------------------------------------------------------------------
// Backward, bfloat16 on AMX. Everything is computed transposed (keys x queries), so every GEMM
// reads operands in a layout packed once per call and no tile is ever transposed:
//   S^T = K Q^T                 A: K rows           B: Q pairs along d
//   P^T = 2^(S^T c - lse2)      (lse2 per column)
//   dV += P^T dO                A: P^T (bf16)       B: dO pairs along queries
//   dP^T = V dO^T               A: V rows           B: dO pairs along d
//   dS^T = P^T (dP^T - Delta)   (Delta per column)
//   dK += dS^T Q                A: dS^T (bf16)      B: Q pairs along queries
//   dQ^T += K^T dS^T            A: K^T blocks       B: dS^T pairs along keys
// dQ is accumulated transposed (dp x padded_len per query head) and transposed once at the end.

void backward_amx(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                  const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                  const AttentionProblem& p, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const PanelLayout layout(p);
  const int64_t D = p.head_dim, dp = layout.dp, Hq = p.heads_q, Hkv = p.heads_kv;
  const int64_t group = Hq / Hkv;
  constexpr int64_t W = kPanelBlock;
  const float c = static_cast<float>(p.scale * kLog2e);

  const auto k_rows = uninitialized<uint16_t>(layout.size(Hkv));
  const auto k_t = uninitialized<uint16_t>(layout.size(Hkv));
  const auto v_rows = uninitialized<uint16_t>(layout.size(Hkv));
  const auto q_pd = uninitialized<uint16_t>(layout.size(Hq));
  const auto q_pt = uninitialized<uint16_t>(layout.size(Hq));
  const auto do_pd = uninitialized<uint16_t>(layout.size(Hq));
  const auto do_pt = uninitialized<uint16_t>(layout.size(Hq));
  // Per query row (padded rows included): lse * log2(e) (+inf on padding, so P^T is 0 there)
  // and Delta = rowsum(dO * O) (0 on padding).
  const auto lse2 = uninitialized<float>(layout.total_rows * Hq);
  const auto delta = uninitialized<float>(layout.total_rows * Hq);
  const int64_t threads = at::get_num_threads();
  const bool split = p.batch * Hkv < 2 * threads;  // see the units below
  const int64_t dq_size = layout.size(Hq);
  const int64_t copies = split ? threads : 1;
  const auto dq_t = uninitialized<float>(dq_size * copies);  // (dp x padded_len) per head
  // Prep job s * Hkv + hkv packs what the units of (s, hkv) read (see backward_impl).
  const TokenView gv(grad_out, p), ov(out, p);
  const at::BFloat16* gbase = grad_out.const_data_ptr<at::BFloat16>();
  const at::BFloat16* obase = out.const_data_ptr<at::BFloat16>();
  const float* lbase = lse.const_data_ptr<float>();
  std::vector<std::function<void()>> prep;
  for (int64_t s = 0; s < p.batch; ++s) {
    for (int64_t hkv = 0; hkv < Hkv; ++hkv) {
      prep.emplace_back([&, s, hkv] {
        pack_bf16(k, p, layout, Hkv, Bf16Layout::kRows, k_rows.get(), s, hkv);
        pack_bf16(k, p, layout, Hkv, Bf16Layout::kBlockedT, k_t.get(), s, hkv);
        pack_bf16(v, p, layout, Hkv, Bf16Layout::kRows, v_rows.get(), s, hkv);
        for (int64_t h = hkv * group; h < (hkv + 1) * group; ++h) {
          pack_bf16(q, p, layout, Hq, Bf16Layout::kPairsDim, q_pd.get(), s, h);
          pack_bf16(q, p, layout, Hq, Bf16Layout::kPairsTokens, q_pt.get(), s, h);
          pack_bf16(grad_out, p, layout, Hq, Bf16Layout::kPairsDim, do_pd.get(), s, h);
          pack_bf16(grad_out, p, layout, Hq, Bf16Layout::kPairsTokens, do_pt.get(), s, h);
          const int64_t panel = layout.panel(s, h, Hq);
          for (int64_t cpy = 0; cpy < copies; ++cpy) {
            std::fill_n(dq_t.get() + cpy * dq_size + panel, layout.padded_len[s] * dp, 0.0f);
          }
          const int64_t rows = layout.row0[s] * Hq + h * layout.padded_len[s];
          for (int64_t r = 0; r < layout.padded_len[s]; ++r) {
            if (r >= p.lengths[s]) {
              lse2[rows + r] = std::numeric_limits<float>::infinity();
              delta[rows + r] = 0.0f;
              continue;
            }
            const at::BFloat16* g = gbase + gv.offset(s, r, h);
            const at::BFloat16* o = obase + ov.offset(s, r, h);
            float dot = 0.0f;
            for (int64_t d = 0; d < D; ++d) {
              dot += static_cast<float>(g[d * gv.dim_stride]) *
                     static_cast<float>(o[d * ov.dim_stride]);
            }
            delta[rows + r] = dot;
            lse2[rows + r] = lbase[lse_index(p, lse, s, h, r)] * static_cast<float>(kLog2e);
          }
        }
      });
    }
  }

  std::vector<int64_t> unit_seq, unit_head, unit_key0, unit_key1, cost;
  for (int64_t s = 0; s < p.batch; ++s) {
    const int64_t len = p.lengths[s];
    for (int64_t h = 0; h < Hkv && len > 0; ++h) {
      const int64_t step = split ? W : round_up(len, W);
      for (int64_t c0 = 0; c0 < len; c0 += step) {
        const int64_t c1 = std::min(len, c0 + step);
        unit_seq.push_back(s);
        unit_head.push_back(h);
        unit_key0.push_back(c0);
        unit_key1.push_back(c1);
        const int64_t q0 = p.causal ? c0 : 0;
        const int64_t q1 = p.window > 0 ? std::min(len, c1 + p.window - 1) : len;
        cost.push_back((q1 - q0) * (c1 - c0));
      }
    }
  }
  const TokenView kview(dk, p), vview(dv, p);
  at::BFloat16* dk_base = dk.mutable_data_ptr<at::BFloat16>();
  at::BFloat16* dv_base = dv.mutable_data_ptr<at::BFloat16>();
  const float dscale = static_cast<float>(p.scale);
  const int64_t work = std::accumulate(cost.begin(), cost.end(), int64_t{0}) * group * dp;
  const auto need = [&](int64_t unit) { return unit_seq[unit] * Hkv + unit_head[unit]; };
  run_after_prep(prep, by_cost(cost), need, work, [&](int64_t unit) {
    thread_local std::vector<float> fscratch;
    thread_local std::vector<uint16_t> hscratch;
    fscratch.resize(2 * W * W + 2 * W * dp);
    hscratch.resize(3 * W * W);
    float* pt = fscratch.data();  // (keys x queries) S^T, then P^T
    float* ds = pt + W * W;       // (keys x queries) dP^T, then dS^T
    float* dkt = ds + W * W;      // (keys x dp)
    float* dvt = dkt + W * dp;
    uint16_t* pt16 = hscratch.data();  // P^T, bf16 rows
    uint16_t* ds16 = pt16 + W * W;     // dS^T, bf16 rows
    uint16_t* dsp = ds16 + W * W;      // dS^T, bf16 pairs along keys
    const int64_t s = unit_seq[unit], hkv = unit_head[unit];
    const int64_t len = p.lengths[s], lp = layout.padded_len[s];
    float* dq_base = dq_t.get() + (split ? at::get_thread_num() * dq_size : 0);
    const int64_t kv_panel = layout.panel(s, hkv, Hkv);
    cpu::amx_begin();
    for (int64_t c0 = unit_key0[unit]; c0 < unit_key1[unit]; c0 += W) {
      const int64_t c1 = std::min(len, c0 + W);
      std::fill(dkt, dkt + 2 * W * dp, 0.0f);
      const int64_t i0 = p.causal ? c0 : 0;
      const int64_t i1 = p.window > 0 ? std::min(len, c1 + p.window - 1) : len;
      for (int64_t hq = hkv * group; hq < (hkv + 1) * group; ++hq) {
        const int64_t q_panel = layout.panel(s, hq, Hq);
        const int64_t rows = layout.row0[s] * Hq + hq * lp;
        for (int64_t r0 = i0 / W * W; r0 < i1; r0 += W) {
          const float* shift = lse2.get() + rows + r0;
          const float* dl = delta.get() + rows + r0;
          amx_gemm_bf16(W, W, dp, k_rows.get() + kv_panel + c0 * dp, dp,
                        q_pd.get() + q_panel + layout.block(r0), 2 * W, pt, W, false);
          if (block_needs_mask(p, r0, std::min(W, len - r0), c0, W, len)) {
            apply_mask_transposed(p, pt, W, c0, r0, len);
          }
          for (int64_t j = 0; j < W; ++j) cpu::exp2_columns(pt + j * W, W, c, shift);
          cpu::to_bf16(pt, pt16, W * W);
          amx_gemm_bf16(W, dp, W, pt16, W, do_pt.get() + q_panel + r0 * dp, 2 * dp, dvt, dp,
                        true);
          amx_gemm_bf16(W, W, dp, v_rows.get() + kv_panel + c0 * dp, dp,
                        do_pd.get() + q_panel + layout.block(r0), 2 * W, ds, W, false);
          for (int64_t j = 0; j < W; ++j) cpu::softmax_grad_columns(ds + j * W, pt + j * W, W, dl);
          cpu::to_bf16(ds, ds16, W * W);
          for (int64_t j = 0; j < W; j += 2) {
            cpu::to_bf16_pairs(ds + j * W, ds + (j + 1) * W, dsp + j * W, W);
          }
          amx_gemm_bf16(W, dp, W, ds16, W, q_pt.get() + q_panel + r0 * dp, 2 * dp, dkt, dp,
                        true);
          amx_gemm_bf16(dp, W, W, k_t.get() + kv_panel + layout.block(c0), W, dsp, 2 * W,
                        dq_base + q_panel + r0, lp, true);
        }
      }
      for (int64_t j = 0; j < c1 - c0; ++j) {
        at::BFloat16* dk_row = dk_base + kview.offset(s, c0 + j, hkv);
        at::BFloat16* dv_row = dv_base + vview.offset(s, c0 + j, hkv);
        for (int64_t d = 0; d < D; ++d) {
          dk_row[d * kview.dim_stride] = static_cast<at::BFloat16>(dkt[j * dp + d] * dscale);
          dv_row[d * vview.dim_stride] = static_cast<at::BFloat16>(dvt[j * dp + d]);
        }
      }
    }
    cpu::amx_end();
  });

  // dQ: sum the per-thread buffers (when split), transpose back, apply the softmax scale.
  const TokenView qview(dq, p);
  at::BFloat16* dq_out = dq.mutable_data_ptr<at::BFloat16>();
  std::vector<std::function<void()>> jobs;
  for (int64_t s = 0; s < p.batch; ++s) {
    for (int64_t h = 0; h < Hq; ++h) {
      jobs.emplace_back([&, s, h] {
        const float* panel = dq_t.get() + layout.panel(s, h, Hq);  // (dp x padded_len)
        const int64_t lp = layout.padded_len[s];
        for (int64_t pos = 0; pos < p.lengths[s]; ++pos) {
          at::BFloat16* row = dq_out + qview.offset(s, pos, h);
          for (int64_t d = 0; d < D; ++d) {
            float value = panel[d * lp + pos];
            for (int64_t cpy = 1; cpy < copies; ++cpy) value += panel[cpy * dq_size + d * lp + pos];
            row[d * qview.dim_stride] = static_cast<at::BFloat16>(value * dscale);
          }
        }
      });
    }
  }
  run_jobs(jobs, copies * layout.size(Hq));
}

at::ScalarType lse_dtype(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> flash_attention_forward_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen, double softmax_scale,
    bool causal, int64_t window) {
  constexpr const char* op = "crucible::flash_attention_forward";
  const AttentionProblem p =
      check_forward_inputs(q, k, v, cu_seqlens, max_seqlen, softmax_scale, causal, window, op);
  TORCH_CHECK(q.device().is_cpu(), op, ": the CPU kernel got tensors on ", q.device());
  at::Tensor out = at::empty(q.sizes(), q.options());
  // Padded rows of lse stay untouched only for zero-length problems; fill keeps them defined.
  at::Tensor lse = at::empty(lse_shape(q, p), q.options().dtype(lse_dtype(q)));
  if (q.numel() == 0) return {out, lse};
  if (amx_applies(q, p)) {
    forward_amx(q, k, v, p, out, lse);
    return {out, lse};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), op, [&] {
    using A = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    forward_impl<scalar_t, A>(q, k, v, p, out, lse);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& cu_seqlens,
    int64_t max_seqlen, double softmax_scale, bool causal, int64_t window) {
  constexpr const char* op = "crucible::flash_attention_backward";
  const AttentionProblem p =
      check_forward_inputs(q, k, v, cu_seqlens, max_seqlen, softmax_scale, causal, window, op);
  check_backward_inputs(grad_out, q, out, lse, p, op);
  TORCH_CHECK(q.device().is_cpu(), op, ": the CPU kernel got tensors on ", q.device());
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  if (q.numel() == 0) return {dq, dk.zero_(), dv.zero_()};
  if (amx_applies(q, p)) {
    backward_amx(grad_out, q, k, v, out, lse, p, dq, dk, dv);
    return {dq, dk, dv};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), op, [&] {
    using A = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    backward_impl<scalar_t, A>(grad_out, q, k, v, out, lse, p, dq, dk, dv);
  });
  return {dq, dk, dv};
}

}  // namespace crucible::attention
