// MoBA prefill (docs/DESIGN.md "MoBA") on the block-sparse engine (attention/engine/block_sparse):
// the gate is q . mean key per block (one GEMM per own-block query tile against the block means,
// then a one-pass top-(k-1) per query); the engine attends the own block causally and the selected
// blocks block-major, and runs the backward with the same selection.
#include <longctx/attention/moba/key_conv.hpp>
#include <longctx/attention/moba/moba.hpp>
#include <longctx/core/error.hpp>
#include <longctx/core/fields.hpp>

#include <algorithm>

#include "attention/engine/block_sparse.hpp"
#include "attention/engine/varlen.hpp"

namespace longctx {

using namespace attn;

namespace {

// The problem, its blocks, and the past-block slots per query: top_k - 1, or fewer when no sequence
// has that many past blocks (so a huge top_k costs no memory).
struct Moba {
  Problem p;
  BlockGrid grid;
  int64_t slots;
};

Moba make_moba(const char* who, const Tensor& q, const Tensor& k, const Tensor& v, const Varlen& varlen,
               const MobaOptions& opts) {
  opts.validate(std::string(who) + ": ");
  AttentionOptions ao;
  ao.softmax_scale = opts.softmax_scale;
  Problem p = make_problem(who, q, k, v, varlen, ao);
  BlockGrid grid(p, opts.block_size);
  const int64_t slots = std::min(opts.top_k - 1, std::max<int64_t>(grid.max_blocks - 1, 0));
  return {std::move(p), std::move(grid), slots};
}

}  // namespace

void MobaOptions::validate(const std::string& prefix) const {
  require(block_size > 0, prefix, "block_size", block_size, "> 0");
  require(top_k > 0, prefix, "top_k", top_k, "> 0");
  require(key_conv >= 0 && key_conv <= kMaxKeyConv, prefix, "key_conv", key_conv,
          "in [0, " + std::to_string(kMaxKeyConv) + "] (0: none)");
}

MobaResult moba_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Varlen& varlen,
                                  const MobaOptions& opts) {
  const Moba m = make_moba("moba_attention_forward", q, k, v, varlen, opts);
  const Problem& p = m.p;
  // out: every row is written (own block first, fresh; a query without keys gets 0 at the end)
  MobaResult r{{Tensor::uninitialized({p.tq, p.hq, p.d}), Tensor({p.hq, p.tq}), {}}, opts, {}, m.slots};
  const std::vector<Tile> tiles = own_block_tiles(p, m.grid.B);
  r.selected = select_top_blocks(p, m.grid, q, block_features(p, m.grid, k, BlockGate::mean), tiles, m.slots,
                                 opts.group_select);
  RunningStates st(p, r.out);
  const Selectors sel = invert_selection(p, m.grid, {r.selected.data(), nullptr, m.slots});
  attend_blocks(p, m.grid, q, k, v, tiles, &sel, st, &r.lse);
  return r;
}

AttentionGrads moba_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const MobaResult& fwd,
                                       const Tensor& dout, const Varlen& varlen) {
  const char* who = "moba_attention_backward";
  const Moba m = make_moba(who, q, k, v, varlen, fwd.moba);
  const Problem& p = m.p;
  check_f32_shape(who, "out", fwd.out, {p.tq, p.hq, p.d});
  check_f32_shape(who, "lse", fwd.lse, {p.hq, p.tq});
  check_f32_shape(who, "dout", dout, {p.tq, p.hq, p.d});
  LONGCTX_CHECK(fwd.slots == m.slots && fwd.selected.size() == size_t(p.hq) * p.tq * m.slots, who,
                ": the forward result's selection (", fwd.slots, " slots, ", fwd.selected.size(),
                " entries) does not match top_k = ", fwd.moba.top_k, " and ", p.hq, " heads x ", p.tq, " queries");
  const std::vector<float> delta = rowsum_dout_out(dout, fwd.out);
  return block_sparse_backward(p, m.grid, {q, k, v, dout, fwd.lse.f32(), delta.data()},
                               invert_selection(p, m.grid, {fwd.selected.data(), nullptr, m.slots}));
}

}  // namespace longctx
