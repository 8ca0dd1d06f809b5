// Mass-threshold (progressive) sparse attention, arXiv 2503.00392; the stop rules are explained
// in include/longctx/attention/sparse/threshold.hpp.
#include <longctx/attention/sparse/threshold.hpp>
#include <longctx/core/error.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "attention/sparse/row_engine.hpp"
#include "core/simd.hpp"

namespace longctx {

void ThresholdOptions::validate(const std::string& prefix) const {
  require(tau > 0.0f && tau <= 1.0f, prefix, "tau", tau, "in (0, 1]");
  require(block_size > 0, prefix, "block_size", block_size, "> 0");
}

namespace attn {

void block_mean(const BlockStats& stats, int64_t j, int g, int d, float* mean) {
  std::copy_n(stats.sum(j, g), d, mean);
  simd::scale_inplace(mean, d, 1.0f / float(stats.block_size()));
}

int64_t threshold_row(const SparseSource& src, const float* q, int h, int64_t pos, float tau, StopRule rule,
                      SoftmaxState st, std::vector<int32_t>& visited, RowScratch& ws) {
  const int g = src.p.kv_head(h), d = src.p.d;
  const int64_t B = src.B();
  const Rows qr{q, d};
  int64_t keys = attend_own_block(src, qr, g, pos, st, ws);
  const int64_t own = pos / B;
  if (own == 0) return keys;
  // Block scores in scaled-logit units: Quest upper bounds, or the mean-key score (heuristic).
  ws.score.resize(size_t(own));
  for (int64_t j = 0; j < own; ++j) {
    if (rule == StopRule::bound) {
      ws.score[size_t(j)] = src.p.scale * quest_bound(q, src.stats.key_min(j, g), src.stats.key_max(j, g), d);
    } else {
      block_mean(src.stats, j, g, d, ws.mean.data());
      ws.score[size_t(j)] = src.p.scale * simd::dot(q, ws.mean.data(), d);
    }
  }
  // Max-heap by score, ties toward the later block: O(own) to build, O(log own) per visit.
  const auto less = [&](int32_t a, int32_t b) {
    return ws.score[size_t(a)] != ws.score[size_t(b)] ? ws.score[size_t(a)] < ws.score[size_t(b)] : a < b;
  };
  ws.order.resize(size_t(own));
  std::iota(ws.order.begin(), ws.order.end(), 0);
  std::make_heap(ws.order.begin(), ws.order.end(), less);
  const double top = ws.score[size_t(ws.order.front())];
  double rest = 0;  // sum over unvisited blocks of exp(U_j - top) (bound rule)
  if (rule == StopRule::bound)
    for (int64_t j = 0; j < own; ++j) rest += std::exp(double(ws.score[size_t(j)]) - top);
  double last = top;  // smallest score visited so far (heuristic rule)
  const double drop = 1.0 - double(tau);
  while (!ws.order.empty()) {
    const double m = st.m[0], l = st.l[0];
    const double unvisited = rule == StopRule::bound ? double(B) * std::max(rest, 0.0) * std::exp(top - m)
                                                     : double(B) * double(ws.order.size()) * std::exp(last - m);
    if (unvisited < drop * (l + unvisited)) break;  // unvisited / (l + unvisited) < 1 - tau
    std::pop_heap(ws.order.begin(), ws.order.end(), less);
    const int32_t j = ws.order.back();
    ws.order.pop_back();
    rest -= std::exp(double(ws.score[size_t(j)]) - top);
    last = ws.score[size_t(j)];
    attend_block(src, qr, g, j, st, ws);
    visited.push_back(j);
    keys += B;
  }
  return keys;
}

}  // namespace attn

using namespace attn;

SparseResult threshold_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Varlen& varlen,
                                         const ThresholdOptions& opts) {
  const char* who = "threshold_attention_forward";
  opts.validate(std::string(who) + ": ");
  AttentionOptions ao;
  ao.softmax_scale = opts.softmax_scale;
  const Problem p = make_problem(who, q, k, v, varlen, ao);
  const std::vector<BlockStats> stats = build_block_stats(p, k, opts.block_size);
  const float tau = opts.tau;
  const StopRule rule = opts.stop_rule;
  SparseResult r = sparse_forward(
      p, q, k, v, stats,
      [tau, rule](const SparseSource& src, const float* qr, int h, int64_t pos, SoftmaxState st,
                  std::vector<int32_t>& vis, RowScratch& ws) { return threshold_row(src, qr, h, pos, tau, rule, st, vis, ws); },
      false, opts.block_size);
  r.stop_rule = enum_name(rule);
  return r;
}

}  // namespace longctx
