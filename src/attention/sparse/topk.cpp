// Top-k prefill forward: the per-row engine with the block (Quest bound) or token row function.
#include <longctx/attention/sparse/topk.hpp>
#include <longctx/core/error.hpp>
#include <longctx/core/fields.hpp>

#include "attention/sparse/row_engine.hpp"

namespace longctx {

using namespace attn;

void TopkOptions::validate(const std::string& prefix) const {
  require(top_k > 0, prefix, "top_k", top_k, "> 0");
  require(block_size > 0, prefix, "block_size", block_size, "> 0");
  LONGCTX_CHECK(!(group_select && token_level), prefix, "group_select applies to block-level top-k only");
}

SparseResult topk_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Varlen& varlen,
                                    const TopkOptions& opts) {
  const char* who = "topk_attention_forward";
  opts.validate(std::string(who) + ": ");
  LONGCTX_CHECK(!opts.group_select, who, ": group_select is implemented for decode over a KV cache only "
                "(attention_over_cache); the prefill and training forward selects per query head");
  AttentionOptions ao;
  ao.softmax_scale = opts.softmax_scale;
  const Problem p = make_problem(who, q, k, v, varlen, ao);
  const std::vector<BlockStats> stats = opts.token_level ? std::vector<BlockStats>(p.seqs.size())
                                                         : build_block_stats(p, k, opts.block_size);
  const int64_t top_k = opts.top_k;
  const RowFn row = opts.token_level
                        ? RowFn([top_k](const SparseSource& src, const float* qr, int h, int64_t pos, SoftmaxState st,
                                        std::vector<int32_t>& vis, RowScratch& ws) {
                            return topk_tokens_row(src, qr, h, pos, top_k, st, vis, ws);
                          })
                        : RowFn([top_k](const SparseSource& src, const float* qr, int h, int64_t pos, SoftmaxState st,
                                        std::vector<int32_t>& vis, RowScratch& ws) {
                            return selected_blocks_row(src, qr, h, pos, top_k, select_quest_blocks, st, vis, ws);
                          });
  return sparse_forward(p, q, k, v, stats, row, opts.token_level, opts.token_level ? 0 : opts.block_size);
}

}  // namespace longctx
