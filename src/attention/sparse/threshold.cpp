// Mass-threshold (progressive) sparse attention, arXiv 2503.00392; the stop rules are explained
// in include/longctx/attention/sparse/threshold.hpp.
//
// Prefill and training run on the block-sparse engine (attention/engine/block_sparse.hpp) in
// rounds (docs/DESIGN.md "Top-k and mass-threshold sparse attention"): after the own blocks, every
// query that has not stopped takes its next 1, 2, 4, ... candidate blocks in descending score; the
// engine attends them block-major into one partial softmax state per (query, block); then each
// query merges its partials in descending order, checking the stop rule before each one as the
// serial rule does, and drops the rest. Same visited set as one block at a time (up to float
// rounding), at most about twice the blocks computed. Decode runs the serial rule per row
// (threshold_row, on the row engine).
#include <longctx/attention/sparse/threshold.hpp>
#include <longctx/core/error.hpp>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <span>

#include "attention/engine/block_sparse.hpp"
#include "attention/engine/top_indices.hpp"
#include "attention/sparse/block_level.hpp"
#include "attention/sparse/row_engine.hpp"
#include "core/parallel.hpp"
#include "core/simd.hpp"

namespace longctx {

void ThresholdOptions::validate(const std::string& prefix) const {
  require(tau > 0.0f && tau <= 1.0f, prefix, "tau", tau, "in (0, 1]");
  require(block_size > 0, prefix, "block_size", block_size, "> 0");
}

namespace attn {

namespace {

// One query's stop rule over its candidate blocks (scores in scaled-logit units), visited in
// descending score: bound: the unvisited mass is at most B * sum_unvisited exp(U_j - m);
// heuristic: (unvisited blocks) * B * exp(s_last - m), s_last the lowest score visited so far.
struct StopRuleState {
  StopRule rule = StopRule::bound;
  double drop = 0, B = 0;  // 1 - tau, block size
  double top = 0;       // the highest score
  double rest = 0;      // bound: sum over unvisited blocks of exp(U_j - top)
  double last = 0;      // heuristic: the lowest score visited so far
  int64_t unvisited = 0;
  double exp_m = 0, exp_ref = 0, scale = 0;  // exp(ref - m) cached for (m, ref): m rarely changes
  StopRuleState() = default;
  // Before any visit: scores of all candidates (any order) and their maximum.
  StopRuleState(StopRule r, float tau, int64_t block, const float* score, int64_t n, float max_score)
      : rule(r), drop(1.0 - double(tau)), B(double(block)), top(max_score), last(max_score), unvisited(n),
        exp_m(std::nan("")) {
    if (rule == StopRule::bound)
      for (int64_t j = 0; j < n; ++j) rest += weight(score[j]);
  }
  // exp(U_j - top) of one block, in (0, 1]: the same float for the sum above and for visit().
  float weight(float score) const { return simd::exp_approx(score - float(top)); }
  // Whether the state (m, l) of the visited keys already holds enough of the mass.
  bool done(float m, float l) {
    if (unvisited == 0) return true;
    const double ref = rule == StopRule::bound ? top : last;
    if (double(m) != exp_m || ref != exp_ref) exp_m = m, exp_ref = ref, scale = std::exp(ref - double(m));
    const double u = B * (rule == StopRule::bound ? std::max(rest, 0.0) : double(unvisited)) * scale;
    return u < drop * (double(l) + u);  // unvisited / (l + unvisited) < 1 - tau
  }
  void visit(float score) {
    rest -= weight(score);
    last = score;
    --unvisited;
  }
};

// Scores of blocks 0 .. own - 1 for query q (head h) as the serial rule ranks them.
void row_block_scores(const SparseSource& src, const float* q, int g, int64_t own, StopRule rule, RowScratch& ws) {
  ws.score.resize(size_t(own));
  for (int64_t j = 0; j < own; ++j) {
    if (rule == StopRule::bound) {
      ws.score[size_t(j)] = src.p.scale * quest_bound(q, src.stats.key_min(j, g), src.stats.key_max(j, g), src.p.d);
    } else {
      block_mean(src.stats, j, g, src.p.d, ws.mean.data());
      ws.score[size_t(j)] = src.p.scale * simd::dot(q, ws.mean.data(), src.p.d);
    }
  }
}

}  // namespace

void block_mean(const BlockStats& stats, int64_t j, int g, int d, float* mean) {
  std::copy_n(stats.sum(j, g), d, mean);
  simd::scale_inplace(mean, d, 1.0f / float(stats.block_size()));
}

int64_t threshold_row(const SparseSource& src, const float* q, int h, int64_t pos, float tau, StopRule rule,
                      SoftmaxState st, std::vector<int32_t>& visited, RowScratch& ws) {
  const int g = src.p.kv_head(h);
  const int64_t B = src.B();
  const Rows qr{q, src.p.d};
  int64_t keys = attend_own_block(src, qr, g, pos, st, ws);
  const int64_t own = pos / B;
  if (own == 0) return keys;
  row_block_scores(src, q, g, own, rule, ws);
  // Max-heap by score, ties toward the later block: O(own) to build, O(log own) per visit.
  const auto less = [&](int32_t a, int32_t b) {
    return ws.score[size_t(a)] != ws.score[size_t(b)] ? ws.score[size_t(a)] < ws.score[size_t(b)] : a < b;
  };
  ws.order.resize(size_t(own));
  std::iota(ws.order.begin(), ws.order.end(), 0);
  std::make_heap(ws.order.begin(), ws.order.end(), less);
  StopRuleState stop(rule, tau, B, ws.score.data(), own, ws.score[size_t(ws.order.front())]);
  while (!stop.done(st.m[0], st.l[0])) {
    std::pop_heap(ws.order.begin(), ws.order.end(), less);
    const int32_t j = ws.order.back();
    ws.order.pop_back();
    stop.visit(ws.score[size_t(j)]);
    attend_block(src, qr, g, j, st, ws);
    visited.push_back(j);
    keys += B;
  }
  return keys;
}

}  // namespace attn

using namespace attn;

namespace {

// Gate scores (rows x own blocks) held per chunk of own-block tiles.
constexpr int64_t kChunkScores = int64_t(1) << 20;

// One query of a chunk in the rounds: its candidates (rank keys) and stop rule.
struct Pending {
  int64_t flat = 0;         // token * Hq + head
  int32_t seq = 0;
  uint64_t* cand = nullptr;     // ranked lazily: [0, next + taken) in order, the rest unordered
  int64_t own = 0, next = 0;  // candidates, the next one to take
  StopRuleState stop;
  bool done = true;
};

// Gathered rows per wave: a round's waves hold whole queries and merge before the next wave
// starts, into one buffer of 8 MB of partial states (at least two tiles). Larger waves mean fewer
// barriers; smaller ones, partials that stay in cache.
int64_t wave_rows(int d) {
  return std::max<int64_t>(2 * kGatherTile, (int64_t(8) << 20) / (int64_t(d + 2) * int64_t(sizeof(float))));
}

class Rounds {
 public:
  Rounds(const Problem& p, const BlockGrid& grid, const Tensor& q, const Tensor& k, const Tensor& v, RunningStates& st,
         std::vector<std::vector<int32_t>>& visited)
      : p_(p), grid_(grid), q_(q), k_(k), v_(v), st_(st), visited_(visited), wave_rows_(wave_rows(p.d)) {
    for (int t = 0; t < parallel::max_threads(); ++t) scratch_.emplace_back(kGatherTile, kKeyTile, p.d, false);
    packed_.resize(scratch_.size());
  }

  // Rounds of 1, 2, 4, ... candidates per query until every query of `pending` is done; each round
  // in waves of whole queries holding at most wave_rows_ (query, block) pairs.
  void run(std::vector<Pending>& pending) {
    std::vector<Pending*> active;
    for (int64_t take = 1;; take *= 2) {
      active.clear();
      for (Pending& pe : pending)
        if (!pe.done) active.push_back(&pe);
      // A query whose visited blocks already hold the mass stops before computing another block;
      // the others rank their next candidates: the best `take` of the rest, in order (a selection,
      // then a sort of the few: a query that stops early never sorts the rest).
#pragma omp parallel for schedule(dynamic, 64) if (active.size() > 256)
      for (size_t i = 0; i < active.size(); ++i) {
        Pending& pe = *active[i];
        const SoftmaxState run = st_.of_row(p_, pe.flat);
        if ((pe.done = pe.stop.done(run.m[0], run.l[0]))) continue;
        uint64_t *first = pe.cand + pe.next, *last = pe.cand + pe.own, *mid = first + count(pe, take);
        if (mid < last) std::nth_element(first, mid, last);
        std::sort(first, mid);
      }
      std::erase_if(active, [](const Pending* pe) { return pe->done; });
      if (active.empty()) return;
      for (size_t a = 0; a < active.size();) {
        size_t b = a;
        std::vector<int64_t> entry0{0};  // per query of the wave: its first entry
        while (b < active.size() && (b == a || entry0.back() + count(*active[b], take) <= wave_rows_))
          entry0.push_back(entry0.back() + count(*active[b++], take));
        wave({active.data() + a, b - a}, take, entry0);
        a = b;
      }
    }
  }

 private:
  static int64_t count(const Pending& pe, int64_t take) { return std::min(take, pe.own - pe.next); }

  void wave(std::span<Pending* const> queries, int64_t take, const std::vector<int64_t>& entry0) {
    at_.resize(size_t(entry0.back()));
    Selectors& sel = sel_;
    build_selectors(
        sel, grid_.full_blocks * p_.hkv, int64_t(queries.size()),
        [&](int64_t u, auto&& emit) {
          const Pending& pe = *queries[size_t(u)];
          const int64_t base = grid_.first[size_t(pe.seq)] * p_.hkv + p_.kv_head(int(pe.flat % p_.hq));
          for (int64_t c = 0; c < count(pe, take); ++c) emit(base + rank_key_index(pe.cand[pe.next + c]) * p_.hkv, pe.flat);
        },
        entry0.data(), at_.data());
    std::vector<GatherTile>& tiles = tiles_;
    gather_tiles(p_, grid_, sel, tiles);
    const size_t rows = sel.rows.size();
    pm_.resize(rows), pl_.resize(rows), pacc_.resize(rows * size_t(p_.d));
    const SoftmaxState partials{pm_.data(), pl_.data(), pacc_.data(), p_.d};
#pragma omp parallel if (tiles.size() > 1)
    {
      TileScratch& ws = scratch_[size_t(omp_get_thread_num())];
      PackedBlock& keys = packed_[size_t(omp_get_thread_num())];
#pragma omp for schedule(dynamic, 1)
      for (size_t i = 0; i < tiles.size(); ++i) {
        const int64_t r = tiles[i].pos;
        attend_gathered(p_, grid_, q_, k_, v_, sel, tiles[i], {&pm_[size_t(r)], &pl_[size_t(r)], &pacc_[size_t(r) * p_.d], p_.d},
                        ws, keys);
      }
      // Each query merges its partials in descending score, checking the stop rule before each
      // (queries are independent: any schedule gives the same bits).
#pragma omp for schedule(dynamic, 64)
      for (size_t i = 0; i < queries.size(); ++i) {
        Pending& pe = *queries[i];
        const SoftmaxState run = st_.of_row(p_, pe.flat);
        std::vector<int32_t>& vis = visited_[size_t(pe.flat % p_.hq) * size_t(p_.tq) + size_t(pe.flat / p_.hq)];
        const int64_t n = count(pe, take);
        constexpr int64_t kAhead = 4;  // the partial rows are scattered over the wave: prefetch them
        // entry c of query u (and, from the first entry, u's running state)
        auto prefetch = [&](size_t u, int64_t c) {
          if (u >= queries.size() || c >= count(*queries[u], take)) return;
          const size_t r = size_t(at_[size_t(entry0[u] + c)]);
          prefetch_row(&pacc_[r * size_t(p_.d)], p_.d);
          __builtin_prefetch(&pm_[r]), __builtin_prefetch(&pl_[r]);
          if (c > 0) return;
          const SoftmaxState next = st_.of_row(p_, queries[u]->flat);
          prefetch_row(next.acc, p_.d);
          __builtin_prefetch(next.m), __builtin_prefetch(next.l);
        };
        if (i == 0)
          for (int64_t c = 0; c < kAhead; ++c) prefetch(i, c);
        for (int64_t c = 0; c < std::min(n, kAhead); ++c) prefetch(i + 1, c);
        for (int64_t c = 0; c < n && !pe.done; ++c) {
          if (pe.stop.done(run.m[0], run.l[0])) {
            pe.done = true;
            break;
          }
          prefetch(i, c + kAhead);
          const uint64_t key = pe.cand[pe.next + c];
          pe.stop.visit(rank_key_score(key));
          merge_state(run, 0, partials, at_[size_t(entry0[i] + c)], p_.d);
          vis.push_back(rank_key_index(key));
        }
        pe.next += n;
        if (pe.next == pe.own) pe.done = true;
      }
    }
  }

  const Problem& p_;
  const BlockGrid& grid_;
  const Tensor &q_, &k_, &v_;
  RunningStates& st_;
  std::vector<std::vector<int32_t>>& visited_;
  const int64_t wave_rows_;
  std::vector<float> pm_, pl_, pacc_;
  std::vector<int64_t> at_;  // per entry of the wave: its partial row
  Selectors sel_;             // the wave's entries block-major, and their tiles
  std::vector<GatherTile> tiles_;
  std::vector<TileScratch> scratch_;
  std::vector<PackedBlock> packed_;  // per thread: the last block it packed (same keys in every wave)
};

}  // namespace

SparseResult threshold_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Varlen& varlen,
                                         const ThresholdOptions& opts) {
  const char* who = "threshold_attention_forward";
  opts.validate(std::string(who) + ": ");
  AttentionOptions ao;
  ao.softmax_scale = opts.softmax_scale;
  const Problem p = make_problem(who, q, k, v, varlen, ao);
  const BlockGrid grid(p, opts.block_size);
  const int64_t B = grid.B;
  const std::vector<Tile> tiles = own_block_tiles(p, B);
  const BlockFeatures feat =
      block_features(p, grid, k, opts.stop_rule == StopRule::bound ? BlockGate::quest : BlockGate::mean);
  SparseResult r = block_level_result(p, B);
  r.stop_rule = enum_name(opts.stop_rule);
  RunningStates st(p, r.out);
  attend_blocks(p, grid, q, k, v, tiles, nullptr, st);

  std::vector<std::vector<int32_t>> visited(size_t(p.hq) * size_t(p.tq));
  Rounds rounds(p, grid, q, k, v, st, visited);
  auto own_of = [&](const Tile& t) { return (t.start + p.seqs[size_t(t.seq)].offset()) / B; };
  std::vector<uint64_t> cand;
  std::vector<Pending> pending;
  for (size_t c0 = 0; c0 < tiles.size();) {
    // A chunk: consecutive own-block tiles whose scores fit kChunkScores (at least one tile).
    size_t c1 = c0;
    int64_t scores = 0, rows = 0;
    std::vector<int64_t> tile_cand, tile_row;  // per tile of the chunk: its first candidate and query
    while (c1 < tiles.size() && (c1 == c0 || scores + tiles[c1].len * own_of(tiles[c1]) <= kChunkScores)) {
      tile_cand.push_back(scores), tile_row.push_back(rows);
      scores += tiles[c1].len * own_of(tiles[c1]), rows += tiles[c1].len;
      ++c1;
    }
    // Every query's candidates: scaled gate scores as rank keys (ranked round by round).
    cand.resize(size_t(scores));
    pending.assign(size_t(rows), Pending{});
    parallel::run(
        int64_t(c1 - c0), parallel::Schedule::dynamic, [&](int) { return GateScratch{}; },
        [&](int64_t i, GateScratch& ws) {
          const Tile& t = tiles[c0 + size_t(i)];
          const Seq& s = p.seqs[size_t(t.seq)];
          const int64_t own = own_of(t);
          if (own > 0) gate_scores(p, grid, q, feat, t, 1, own, ws);
          for (int64_t e = 0; e < t.len && own > 0; ++e) {
            float* score = &ws.score[size_t(e * own)];
            simd::scale_inplace(score, own, p.scale);
            uint64_t* keys = &cand[size_t(tile_cand[size_t(i)] + e * own)];
            for (int64_t j = 0; j < own; ++j) keys[j] = rank_key(score[j], int32_t(j));
            pending[size_t(tile_row[size_t(i)] + e)] = {
                (s.q0 + t.start + e) * p.hq + t.head, t.seq, keys, own, 0,
                StopRuleState(opts.stop_rule, opts.tau, B, score, own, simd::max_of(score, own)), false};
          }
        });
    rounds.run(pending);
    c0 = c1;
  }
  finalize_states(p, st, r.lse);
  r.row_offset.assign(visited.size() + 1, 0);
  for (size_t i = 0; i < visited.size(); ++i) {
    r.row_offset[i + 1] = r.row_offset[i] + int64_t(visited[i].size());
    r.visited.insert(r.visited.end(), visited[i].begin(), visited[i].end());
  }
  count_block_keys(p, r);
  return r;
}

}  // namespace longctx
