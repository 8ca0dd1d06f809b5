// Dense flash attention against the naive reference: forward, backward, awkward shapes.
#include <longctx/attention/dense/flash.hpp>
#include <longctx/core/error.hpp>

#include "core/simd.hpp"
#include "helpers.hpp"

namespace longctx {
namespace {

using testing::random_tensor;
using testing::rel_error;
using testing::to_vec;

struct FlashCase {
  std::vector<int64_t> q_lens, k_lens;
  int hq, hkv, d;
  bool causal;
  int64_t window;
  DType dtype;
  float scale;
};

std::string name_of(const FlashCase& c) {
  std::string s = "q";
  for (auto l : c.q_lens) s += "_" + std::to_string(l);
  s += "_k";
  for (auto l : c.k_lens) s += "_" + std::to_string(l);
  return s + "_h" + std::to_string(c.hq) + "x" + std::to_string(c.hkv) + "_d" + std::to_string(c.d) +
         (c.causal ? "_causal" : "_full") + "_w" + std::to_string(c.window) + "_" + dtype_name(c.dtype);
}

void PrintTo(const FlashCase& c, std::ostream* os) { *os << name_of(c); }

class FlashVsReference : public ::testing::TestWithParam<FlashCase> {};

TEST_P(FlashVsReference, ForwardAndBackwardMatch) {
  const FlashCase& c = GetParam();
  const Varlen vl = c.q_lens.size() == 1 ? Varlen{} : Varlen::from_lengths(c.q_lens, c.k_lens);
  int64_t tq = 0, tk = 0;
  for (size_t i = 0; i < c.q_lens.size(); ++i) tq += c.q_lens[i], tk += c.k_lens[i];
  const Tensor q = random_tensor({tq, c.hq, c.d}, 1, 1.0f, c.dtype);
  const Tensor k = random_tensor({tk, c.hkv, c.d}, 2, 1.0f, c.dtype);
  const Tensor v = random_tensor({tk, c.hkv, c.d}, 3, 1.0f, c.dtype);
  const Tensor dout = random_tensor({tq, c.hq, c.d}, 4);
  AttentionOptions opts;
  opts.causal = c.causal;
  opts.window = c.window;
  opts.softmax_scale = c.scale;

  const AttentionResult r = flash_attention_forward(q, k, v, vl, opts);
  const AttentionGrads g = flash_attention_backward(q, k, v, r, dout, vl);

  const auto mask = reference::dense_mask(testing::shape_of(q, k), vl, opts);
  testing::expect_matches_reference(q, k, v, dout, mask, c.scale > 0 ? c.scale : 1.0 / std::sqrt(double(c.d)), r, g);
}

const FlashCase kCases[] = {
    {{300}, {300}, 2, 2, 64, true, 0, DType::f32, 0},            // one sequence, not a tile multiple
    {{1}, {1}, 1, 1, 64, true, 0, DType::f32, 0},                // one token
    {{257}, {257}, 4, 1, 128, true, 0, DType::f32, 0},           // MQA, d = 128
    {{200}, {200}, 8, 2, 64, true, 0, DType::f32, 0.3f},         // GQA 8/2, scale override
    {{1, 70, 300, 5}, {1, 70, 300, 5}, 4, 2, 64, true, 0, DType::f32, 0},  // varlen, mixed lengths
    {{37, 1, 130}, {300, 64, 131}, 2, 1, 64, true, 0, DType::f32, 0},      // q_len < kv_len: bottom-right
    {{300}, {300}, 2, 1, 64, true, 77, DType::f32, 0},           // sliding window
    {{50, 90}, {400, 90}, 2, 2, 64, true, 33, DType::f32, 0},    // window + bottom-right
    {{120, 33}, {90, 260}, 2, 1, 64, false, 0, DType::f32, 0},   // non-causal, lq != lk
    {{300}, {300}, 4, 2, 128, true, 0, DType::bf16, 0},          // bf16 storage
    {{20}, {10}, 2, 2, 64, true, 0, DType::f32, 0},              // more queries than keys: early rows see nothing
};

INSTANTIATE_TEST_SUITE_P(Shapes, FlashVsReference, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return name_of(info.param); });

TEST(Flash, RowsWithoutKeysAreZeroWithNegInfLse) {
  const Tensor q = random_tensor({20, 1, 64}, 1), k = random_tensor({10, 1, 64}, 2), v = random_tensor({10, 1, 64}, 3);
  const AttentionResult r = flash_attention_forward(q, k, v);
  // lq = 20 > lk = 10: query i sits at key position i - 10, so rows 0..9 see no key.
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(r.lse.at(i), -std::numeric_limits<float>::infinity());
    for (int c = 0; c < 64; ++c) EXPECT_EQ(r.out.at(i * 64 + c), 0.0f);
  }
  EXPECT_TRUE(std::isfinite(r.lse.at(10)));
  const AttentionGrads g = flash_attention_backward(q, k, v, r, random_tensor({20, 1, 64}, 4));
  for (int64_t i = 0; i < g.dq.numel(); ++i) ASSERT_TRUE(std::isfinite(g.dq.at(i)));
}

TEST(Flash, DeterministicAcrossRuns) {
  const Tensor q = random_tensor({700, 4, 64}, 1), k = random_tensor({700, 2, 64}, 2), v = random_tensor({700, 2, 64}, 3);
  const Tensor dout = random_tensor({700, 4, 64}, 4);
  const AttentionResult a = flash_attention_forward(q, k, v), b = flash_attention_forward(q, k, v);
  EXPECT_TRUE(testing::bitwise_equal(a.out, b.out));
  const AttentionGrads ga = flash_attention_backward(q, k, v, a, dout), gb = flash_attention_backward(q, k, v, a, dout);
  EXPECT_TRUE(testing::bitwise_equal(ga.dq, gb.dq));
  EXPECT_TRUE(testing::bitwise_equal(ga.dk, gb.dk));
  EXPECT_TRUE(testing::bitwise_equal(ga.dv, gb.dv));
}

// The degree-3 exp (docs/DESIGN.md "Polynomial exp") in the kernels: forward and backward stay
// within its 7.5e-5 relative error of the float64 reference, and it is what changed the result.
TEST(Flash, Poly3ExpStaysCloseToReference) {
  const Tensor q = random_tensor({300, 4, 64}, 1), k = random_tensor({300, 2, 64}, 2), v = random_tensor({300, 2, 64}, 3);
  const Tensor dout = random_tensor({300, 4, 64}, 4);
  const Varlen vl = Varlen::same({1, 120, 179});
  const AttentionResult exact = flash_attention_forward(q, k, v, vl);
  struct Restore {
    ~Restore() { simd::set_exp_impl(simd::ExpImpl::poly6); }
  } restore;
  simd::set_exp_impl(simd::ExpImpl::poly3);
  const AttentionResult r = flash_attention_forward(q, k, v, vl);
  const AttentionGrads g = flash_attention_backward(q, k, v, r, dout, vl);
  EXPECT_GT(rel_error(r.out, to_vec<float>(exact.out)), 1e-6);
  const auto mask = reference::dense_mask(testing::shape_of(q, k), vl, AttentionOptions{});
  testing::expect_matches_reference(q, k, v, dout, mask, 1.0 / 8.0, r, g, 2e-4);
}

using testing::expect_error;

TEST(Flash, BadInputThrowsClearErrors) {
  const Tensor q = random_tensor({10, 3, 16}, 1), k = random_tensor({10, 2, 16}, 2), v = random_tensor({10, 2, 16}, 3);
  expect_error([&] { flash_attention_forward(q, k, v); }, "query heads (3) must be a multiple of kv heads (2)");
  const Tensor q2 = random_tensor({10, 2, 8}, 1);
  expect_error([&] { flash_attention_forward(q2, k, v); }, "head_dim of q (8) differs from k (16)");
  const Tensor v2 = random_tensor({9, 2, 16}, 3);
  const Tensor q4 = random_tensor({10, 4, 16}, 1);
  expect_error([&] { flash_attention_forward(q4, k, v2); }, "v shape [9, 2, 16] differs from k shape [10, 2, 16]");
  Varlen bad{{0, 6, 4, 10}, {0, 6, 4, 10}};
  expect_error([&] { flash_attention_forward(q4, k, v, bad); }, "cu_seqlens_q must be non-decreasing");
  Varlen short_end{{0, 4}, {0, 10}};
  expect_error([&] { flash_attention_forward(q4, k, v, short_end); }, "cu_seqlens_q ends at 4 but the tensor has 10 rows");
  AttentionOptions w;
  w.window = -1;
  expect_error([&] { flash_attention_forward(q4, k, v, {}, w); }, "window must be >= 0");
  const AttentionResult r = flash_attention_forward(q4, k, v);
  expect_error([&] { flash_attention_backward(q4, k, v, r, random_tensor({10, 4, 8}, 5)); },
               "dout must have shape [10, 4, 16], got [10, 4, 8]");
}

}  // namespace
}  // namespace longctx
