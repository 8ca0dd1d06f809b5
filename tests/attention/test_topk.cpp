// Top-k sparse attention (block level by Quest bound, token level) against the naive reference:
// same visited keys, same outputs and gradients; top_k covering every key is dense; bad input.
#include <longctx/attention/dense/flash.hpp>
#include <longctx/attention/sparse/reference.hpp>
#include <longctx/attention/sparse/topk.hpp>

#include "sparse_helpers.hpp"

namespace longctx {
namespace {

using testing::random_tensor;
using testing::rel_error;
using testing::to_vec;

struct TopkCase {
  std::vector<int64_t> q_lens, k_lens;
  int hq, hkv, d;
  int64_t block, top_k;
  bool token_level;
  DType dtype;
  bool group_select = false;
};

void PrintTo(const TopkCase& c, std::ostream* os) {
  *os << "q" << c.q_lens.size() << "_" << c.q_lens[0] << "_k" << c.k_lens[0] << "_h" << c.hq << "x" << c.hkv << "_d"
      << c.d << "_B" << c.block << "_top" << c.top_k << (c.token_level ? "_tokens_" : "_blocks_") << dtype_name(c.dtype)
      << (c.group_select ? "_group" : "");
}

Varlen varlen_of(const std::vector<int64_t>& ql, const std::vector<int64_t>& kl) {
  return ql.size() == 1 && ql == kl ? Varlen{} : Varlen::from_lengths(ql, kl);
}

class TopkVsReference : public ::testing::TestWithParam<TopkCase> {};

TEST_P(TopkVsReference, SelectionForwardAndBackwardMatch) {
  const TopkCase& c = GetParam();
  const Varlen vl = varlen_of(c.q_lens, c.k_lens);
  int64_t tq = 0, tk = 0;
  for (size_t i = 0; i < c.q_lens.size(); ++i) tq += c.q_lens[i], tk += c.k_lens[i];
  const Tensor q = random_tensor({tq, c.hq, c.d}, 21, 1.0f, c.dtype);
  const Tensor k = random_tensor({tk, c.hkv, c.d}, 22, 1.0f, c.dtype);
  const Tensor v = random_tensor({tk, c.hkv, c.d}, 23, 1.0f, c.dtype);
  const Tensor dout = random_tensor({tq, c.hq, c.d}, 24);
  const TopkOptions opts{c.block, c.top_k, c.token_level, 0.0f, c.group_select};
  const SparseResult r = topk_attention_forward(q, k, v, vl, opts);
  const AttentionGrads g = sparse_attention_backward(q, k, v, r, dout, vl);

  const reference::Shape s = testing::shape_of(q, k);
  const auto qd = to_vec<double>(q), kd = to_vec<double>(k);
  const reference::Mask mask =
      reference::topk_mask<double>(s, qd, kd, vl, c.block, c.top_k, c.token_level, c.group_select);
  ASSERT_EQ(testing::mask_of(r, s, vl), mask);
  const double scale = 1.0 / std::sqrt(double(c.d));
  testing::expect_matches_reference(q, k, v, dout, mask, scale, r, g);
  EXPECT_LE(r.max_keys, c.token_level ? c.top_k : c.top_k * c.block);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, TopkVsReference,
    ::testing::Values(TopkCase{{37}, {37}, 2, 1, 16, 8, 3, false, DType::f32},
                      TopkCase{{50}, {50}, 4, 2, 8, 7, 2, false, DType::f32},
                      TopkCase{{1}, {1}, 1, 1, 8, 4, 2, false, DType::f32},
                      TopkCase{{13, 40, 5}, {13, 40, 5}, 3, 3, 12, 6, 4, false, DType::f32},
                      TopkCase{{9, 3}, {41, 30}, 4, 1, 16, 8, 3, false, DType::bf16},
                      TopkCase{{33}, {33}, 2, 1, 16, 8, 5, true, DType::f32},
                      TopkCase{{7, 20}, {30, 20}, 4, 2, 8, 1, 1, true, DType::bf16},
                      // one selection per KV head (group_select): GQA 4/2, MQA 3/1 varlen with a
                      // one-token sequence, bottom-right chunks in bf16
                      TopkCase{{50}, {50}, 4, 2, 8, 7, 3, false, DType::f32, true},
                      TopkCase{{1, 29, 44}, {1, 29, 44}, 3, 1, 12, 5, 4, false, DType::f32, true},
                      TopkCase{{9, 3}, {41, 30}, 4, 1, 16, 8, 3, false, DType::bf16, true},
                      TopkCase{{70}, {70}, 2, 2, 8, 8, 3, false, DType::f32, true}));  // group of one: per head

TEST(Topk, CoveringEveryKeyIsDense) {
  const Tensor q = random_tensor({45, 4, 16}, 1), k = random_tensor({45, 2, 16}, 2), v = random_tensor({45, 2, 16}, 3);
  const Tensor dout = random_tensor({45, 4, 16}, 4);
  const AttentionResult dense = flash_attention_forward(q, k, v);
  const AttentionGrads gd = flash_attention_backward(q, k, v, dense, dout);
  for (int mode = 0; mode < 3; ++mode) {  // blocks, blocks with group_select, tokens
    const bool tokens = mode == 2;
    const SparseResult r = topk_attention_forward(q, k, v, {}, {8, tokens ? 45 : 6, tokens, 0.0f, mode == 1});
    EXPECT_LT(rel_error(r.out, to_vec<float>(dense.out)), 1e-5) << mode;
    EXPECT_LT(rel_error(r.lse, to_vec<float>(dense.lse)), 1e-5) << mode;
    const AttentionGrads g = sparse_attention_backward(q, k, v, r, dout);
    EXPECT_LT(rel_error(g.dq, to_vec<float>(gd.dq)), 1e-5) << mode;
    EXPECT_LT(rel_error(g.dk, to_vec<float>(gd.dk)), 1e-5) << mode;
    EXPECT_LT(rel_error(g.dv, to_vec<float>(gd.dv)), 1e-5) << mode;
  }
}

// With group_select every query head of a KV head attends the same blocks, and they differ from
// the per-head choice somewhere (the option does something).
TEST(Topk, GroupSelectSharesTheBlocksOfAGroup) {
  const Tensor q = random_tensor({96, 4, 8}, 5), k = random_tensor({96, 2, 8}, 6), v = random_tensor({96, 2, 8}, 7);
  const SparseResult shared = topk_attention_forward(q, k, v, {}, {8, 3, false, 0.0f, true});
  const SparseResult own = topk_attention_forward(q, k, v, {}, {8, 3, false, 0.0f, false});
  auto blocks = [](const SparseResult& r, int h, int64_t t) {
    const size_t i = size_t(h) * 96 + size_t(t);
    return std::vector<int32_t>(r.visited.begin() + r.row_offset[i], r.visited.begin() + r.row_offset[i + 1]);
  };
  bool differs = false;
  for (int64_t t = 0; t < 96; ++t)
    for (int h = 0; h < 4; ++h) {
      ASSERT_EQ(blocks(shared, h, t), blocks(shared, h / 2 * 2, t)) << "head " << h << " token " << t;
      differs = differs || blocks(shared, h, t) != blocks(own, h, t);
    }
  EXPECT_TRUE(differs);
}

TEST(Topk, Deterministic) {
  const Tensor q = random_tensor({70, 4, 16}, 1), k = random_tensor({70, 2, 16}, 2), v = random_tensor({70, 2, 16}, 3);
  const Tensor dout = random_tensor({70, 4, 16}, 4);
  const SparseResult a = topk_attention_forward(q, k, v, {}, {8, 3, false, 0.0f});
  const SparseResult b = topk_attention_forward(q, k, v, {}, {8, 3, false, 0.0f});
  EXPECT_TRUE(testing::bitwise_equal(a.out, b.out));
  const AttentionGrads ga = sparse_attention_backward(q, k, v, a, dout), gb = sparse_attention_backward(q, k, v, b, dout);
  EXPECT_TRUE(testing::bitwise_equal(ga.dk, gb.dk));
  EXPECT_TRUE(testing::bitwise_equal(ga.dq, gb.dq));
}

TEST(Topk, BadInputThrowsClearly) {
  const Tensor q = random_tensor({8, 4, 8}, 1), k = random_tensor({8, 2, 8}, 2), v = random_tensor({8, 2, 8}, 3);
  const Tensor k3 = random_tensor({8, 3, 8}, 2);
  auto msg = [](auto&& fn) {
    try {
      fn();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no throw");
  };
  EXPECT_NE(msg([&] { topk_attention_forward(q, k, v, {}, {8, 0, false, 0.0f}); }).find("top_k must be > 0, got 0"),
            std::string::npos);
  EXPECT_NE(msg([&] { topk_attention_forward(q, k, v, {}, {0, 2, false, 0.0f}); }).find("block_size must be > 0"),
            std::string::npos);
  EXPECT_NE(msg([&] { topk_attention_forward(q, k3, k3, {}, {8, 2, false, 0.0f}); }).find("query heads (4)"),
            std::string::npos);
  const SparseResult r = topk_attention_forward(q, k, v, {}, {4, 2, false, 0.0f});
  const Tensor q2 = random_tensor({9, 4, 8}, 1), k2 = random_tensor({9, 2, 8}, 2);
  EXPECT_NE(msg([&] { sparse_attention_backward(q2, k2, k2, r, random_tensor({9, 4, 8}, 5)); }).find("out must have shape [9, 4, 8]"),
            std::string::npos);
}

}  // namespace
}  // namespace longctx
