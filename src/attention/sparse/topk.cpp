// Top-k prefill forward and the backward of every SparseResult. Block level runs on the
// block-sparse engine (attention/engine/block_sparse.hpp) with the Quest gate; token level on the
// per-row engine (attention/sparse/row_engine.hpp), whose single-query rows suit single keys.
#include <longctx/attention/sparse/topk.hpp>
#include <longctx/core/error.hpp>
#include <longctx/core/fields.hpp>

#include <algorithm>

#include "attention/engine/block_sparse.hpp"
#include "attention/sparse/block_level.hpp"
#include "attention/sparse/row_engine.hpp"

namespace longctx {

using namespace attn;

namespace attn {

SparseResult block_level_result(const Problem& p, int64_t block_size) {
  SparseResult r;
  r.out = Tensor({p.tq, p.hq, p.d});
  r.lse = Tensor({p.hq, p.tq});
  r.block_size = block_size;
  r.scale = p.scale;
  return r;
}

void count_block_keys(const Problem& p, SparseResult& r) {
  double total = 0;
  r.max_keys = 0;
  for (const Seq& s : p.seqs)
    for (int h = 0; h < p.hq; ++h)
      for (int64_t t = std::max<int64_t>(0, -s.offset()); t < s.lq; ++t) {
        const size_t stat = size_t(h) * size_t(p.tq) + size_t(s.q0 + t);
        const int64_t keys = (t + s.offset()) % r.block_size + 1 + (r.row_offset[stat + 1] - r.row_offset[stat]) * r.block_size;
        total += double(keys);
        r.max_keys = std::max(r.max_keys, keys);
      }
  r.mean_keys = p.tq > 0 ? total / (double(p.hq) * double(p.tq)) : 0.0;
}

}  // namespace attn

void TopkOptions::validate(const std::string& prefix) const {
  require(top_k > 0, prefix, "top_k", top_k, "> 0");
  require(block_size > 0, prefix, "block_size", block_size, "> 0");
  LONGCTX_CHECK(!(group_select && token_level), prefix, "group_select applies to block-level top-k only");
}

SparseResult topk_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Varlen& varlen,
                                    const TopkOptions& opts) {
  const char* who = "topk_attention_forward";
  opts.validate(std::string(who) + ": ");
  AttentionOptions ao;
  ao.softmax_scale = opts.softmax_scale;
  const Problem p = make_problem(who, q, k, v, varlen, ao);
  if (opts.token_level) {
    const int64_t top_k = opts.top_k;
    return sparse_forward(p, q, k, v, std::vector<BlockStats>(p.seqs.size()),
                          [top_k](const SparseSource& src, const float* qr, int h, int64_t pos, SoftmaxState st,
                                  std::vector<int32_t>& vis, RowScratch& ws) {
                            return topk_tokens_row(src, qr, h, pos, top_k, st, vis, ws);
                          },
                          true, 0);
  }
  const BlockGrid grid(p, opts.block_size);
  const int64_t slots = std::min(opts.top_k - 1, std::max<int64_t>(grid.max_blocks - 1, 0));
  const std::vector<Tile> tiles = own_block_tiles(p, grid.B);
  const std::vector<int32_t> selected = select_top_blocks(
      p, grid, q, block_features(p, grid, k, BlockGate::quest), tiles, slots, opts.group_select);
  SparseResult r = block_level_result(p, grid.B);
  r.row_offset.assign(size_t(p.hq) * size_t(p.tq) + 1, 0);
  r.visited.reserve(selected.size());
  for (size_t i = 0; i + 1 < r.row_offset.size(); ++i) {
    for (int64_t c = 0; c < slots; ++c)
      if (const int32_t j = selected[i * size_t(slots) + size_t(c)]; j >= 0) r.visited.push_back(j);
    r.row_offset[i + 1] = int64_t(r.visited.size());
  }
  count_block_keys(p, r);
  RunningStates st(p, r.out);
  const Selectors sel = invert_selection(p, grid, {r.visited.data(), r.row_offset.data(), 0});
  attend_blocks(p, grid, q, k, v, tiles, &sel, st, &r.lse);
  return r;
}

AttentionGrads sparse_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const SparseResult& fwd,
                                         const Tensor& dout, const Varlen& varlen) {
  const char* who = "sparse_attention_backward";
  AttentionOptions ao;
  ao.softmax_scale = fwd.scale;
  const Problem p = make_problem(who, q, k, v, varlen, ao);
  check_f32_shape(who, "out", fwd.out, {p.tq, p.hq, p.d});
  check_f32_shape(who, "lse", fwd.lse, {p.hq, p.tq});
  check_f32_shape(who, "dout", dout, {p.tq, p.hq, p.d});
  LONGCTX_CHECK(fwd.row_offset.size() == size_t(p.hq) * size_t(p.tq) + 1, who, ": the forward result has ",
                fwd.row_offset.size(), " row offsets, expected ", size_t(p.hq) * size_t(p.tq) + 1);
  LONGCTX_CHECK(fwd.token_level || fwd.block_size > 0, who, ": block_size of the forward result must be > 0, got ",
                fwd.block_size);
  LONGCTX_CHECK(fwd.row_offset.front() == 0 && fwd.row_offset.back() == int64_t(fwd.visited.size()) &&
                    std::is_sorted(fwd.row_offset.begin(), fwd.row_offset.end()),
                who, ": the forward result's row offsets must rise from 0 to its ", fwd.visited.size(),
                " visited entries");
  // every visited entry must be a key (token level) or a full block strictly before the own block
  for (const Seq& s : p.seqs)
    for (int h = 0; h < p.hq; ++h)
      for (int64_t t = 0; t < s.lq; ++t) {
        const size_t stat = size_t(h) * size_t(p.tq) + size_t(s.q0 + t);
        const int64_t pos = t + s.offset(), limit = fwd.token_level ? pos + 1 : std::max<int64_t>(pos, 0) / fwd.block_size;
        for (int64_t e = fwd.row_offset[stat]; e < fwd.row_offset[stat + 1]; ++e)
          LONGCTX_CHECK(fwd.visited[size_t(e)] >= 0 && fwd.visited[size_t(e)] < limit, who, ": visited entry ",
                        fwd.visited[size_t(e)], " of head ", h, ", query ", s.q0 + t, " is not in [0, ", limit, ")");
      }
  if (fwd.token_level) return token_rows_backward(p, q, k, v, fwd, dout);
  const BlockGrid grid(p, fwd.block_size);
  const std::vector<float> delta = rowsum_dout_out(dout, fwd.out);
  return block_sparse_backward(p, grid, {q, k, v, dout, fwd.lse.f32(), delta.data()},
                               invert_selection(p, grid, {fwd.visited.data(), fwd.row_offset.data(), 0}));
}

}  // namespace longctx
