// Mass-threshold attention against the naive reference (both stop rules), tau = 1 is dense,
// the bound rule's guarantee (dropped mass < 1 - tau) holds, gradients over the visited keys.
#include <longctx/attention/dense/flash.hpp>
#include <longctx/attention/sparse/reference.hpp>
#include <longctx/attention/sparse/threshold.hpp>

#include "sparse_helpers.hpp"

namespace longctx {
namespace {

using testing::random_tensor;
using testing::rel_error;
using testing::to_vec;

struct ThresholdCase {
  std::vector<int64_t> q_lens, k_lens;
  int hq, hkv;
  int64_t block;
  float tau;
  StopRule rule;
};
void PrintTo(const ThresholdCase& c, std::ostream* os) {
  *os << "n" << c.k_lens[0] << "_seqs" << c.q_lens.size() << "_h" << c.hq << "x" << c.hkv << "_B" << c.block << "_tau"
      << c.tau << "_" << enum_name(c.rule);
}

class ThresholdVsReference : public ::testing::TestWithParam<ThresholdCase> {};

TEST_P(ThresholdVsReference, VisitedForwardAndBackwardMatch) {
  const ThresholdCase& c = GetParam();
  const int d = 16;
  const Varlen vl = c.q_lens.size() == 1 && c.q_lens == c.k_lens ? Varlen{} : Varlen::from_lengths(c.q_lens, c.k_lens);
  int64_t tq = 0, tk = 0;
  for (size_t i = 0; i < c.q_lens.size(); ++i) tq += c.q_lens[i], tk += c.k_lens[i];
  // Clustered keys so that the bounds are informative and the rule stops early on some rows.
  const testing::Structured src = testing::structured_source(tk, c.hq, c.hkv, d, c.block, 1, 3.0f, 31);
  const Tensor q = random_tensor({tq, c.hq, d}, 32);  // overwritten below when shapes agree
  const Tensor& qq = tq == tk ? src.q : q;
  const Tensor dout = random_tensor({tq, c.hq, d}, 33);
  const ThresholdOptions opts{c.block, c.tau, c.rule, 0.0f};
  const SparseResult r = threshold_attention_forward(qq, src.k, src.v, vl, opts);
  EXPECT_EQ(r.stop_rule, enum_name(c.rule));
  const AttentionGrads g = sparse_attention_backward(qq, src.k, src.v, r, dout, vl);

  const reference::Shape s = testing::shape_of(qq, src.k);
  const auto qd = to_vec<double>(qq), kd = to_vec<double>(src.k);
  const double scale = 1.0 / std::sqrt(double(d));
  const reference::Mask mask =
      reference::threshold_mask<double>(s, qd, kd, vl, c.block, scale, c.tau, c.rule == StopRule::heuristic);
  ASSERT_EQ(testing::mask_of(r, s, vl), mask);
  testing::expect_matches_reference(qq, src.k, src.v, dout, mask, scale, r, g);
}

INSTANTIATE_TEST_SUITE_P(Cases, ThresholdVsReference,
                         ::testing::Values(ThresholdCase{{96}, {96}, 2, 1, 8, 0.9f, StopRule::bound},
                                           ThresholdCase{{77}, {77}, 4, 2, 8, 0.5f, StopRule::bound},
                                           ThresholdCase{{77}, {77}, 4, 2, 8, 0.9f, StopRule::heuristic},
                                           ThresholdCase{{30, 51}, {30, 51}, 2, 2, 6, 0.8f, StopRule::bound},
                                           ThresholdCase{{5, 9}, {40, 45}, 2, 1, 8, 0.95f, StopRule::heuristic},
                                           // a one-token sequence, GQA 4/2, bottom-right chunks
                                           ThresholdCase{{1, 40, 23}, {1, 40, 23}, 4, 2, 8, 0.8f, StopRule::bound},
                                           ThresholdCase{{7, 1}, {50, 33}, 4, 2, 8, 0.9f, StopRule::bound}));

TEST(Threshold, TauOneIsDense) {
  const Tensor q = random_tensor({61, 4, 16}, 1), k = random_tensor({61, 2, 16}, 2), v = random_tensor({61, 2, 16}, 3);
  const AttentionResult dense = flash_attention_forward(q, k, v);
  for (StopRule rule : {StopRule::bound, StopRule::heuristic}) {
    const SparseResult r = threshold_attention_forward(q, k, v, {}, {8, 1.0f, rule, 0.0f});
    EXPECT_LT(rel_error(r.out, to_vec<float>(dense.out)), 1e-5);
    EXPECT_LT(rel_error(r.lse, to_vec<float>(dense.lse)), 1e-5);
    EXPECT_DOUBLE_EQ(r.mean_keys, 31.0);  // (1 + ... + 61) / 61
    EXPECT_EQ(r.max_keys, 61);
  }
}

// The bound rule proves that the kept mass is >= tau: exp(lse_sparse - lse_dense) >= tau.
TEST(Threshold, BoundRuleKeepsAtLeastTauOfTheMass) {
  const int64_t n = 256;
  const testing::Structured src = testing::structured_source(n, 2, 1, 16, 16, 2, 4.0f, 7);
  const AttentionResult dense = flash_attention_forward(src.q, src.k, src.v);
  for (float tau : {0.5f, 0.9f, 0.99f}) {
    const SparseResult r = threshold_attention_forward(src.q, src.k, src.v, {}, {16, tau, StopRule::bound, 0.0f});
    for (int64_t i = 0; i < r.lse.numel(); ++i)
      ASSERT_GE(std::exp(double(r.lse.f32()[i]) - double(dense.lse.f32()[i])), double(tau) - 1e-5) << i;
    EXPECT_LT(r.mean_keys, double(n + 1) / 2);  // it did skip keys on this source
  }
}

TEST(Threshold, BadTauThrowsClearly) {
  const Tensor q = random_tensor({8, 2, 8}, 1), k = random_tensor({8, 1, 8}, 2);
  for (float tau : {0.0f, -0.5f, 1.5f, std::nanf("")}) {
    try {
      threshold_attention_forward(q, k, k, {}, {4, tau, StopRule::bound, 0.0f});
      ADD_FAILURE() << "no throw for tau " << tau;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("tau must be in (0, 1], got"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace longctx
