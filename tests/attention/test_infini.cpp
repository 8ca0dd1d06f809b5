// Infini-attention: reference gradients vs finite differences, fast kernel vs reference (forward and
// backward, both update rules, GQA, varlen, separate RoPE'd local q/k), streaming in chunks vs one
// call, the first segment and short sequences, bad input.
#include <longctx/attention/dense/flash.hpp>
#include <longctx/attention/infini/infini.hpp>
#include <longctx/attention/infini/reference.hpp>

#include <numeric>
#include <tuple>

#include "helpers.hpp"

namespace longctx {
namespace {

using testing::random_tensor;
using testing::rel_error;
using testing::to_vec;

using testing::random_vec;

std::vector<int64_t> prefix_sums(const std::vector<int64_t>& lens) {
  std::vector<int64_t> cu{0};
  for (int64_t l : lens) cu.push_back(cu.back() + l);
  return cu;
}

std::vector<float> test_beta(int hq) {
  std::vector<float> b;
  for (int h = 0; h < hq; ++h) b.push_back(-1.0f + 0.7f * float(h % 4));
  return b;
}

// L = sum(out o w): every gradient of the double reference against (L(x + h) - L(x - h)) / 2h.
void gradcheck(InfiniUpdate update, bool separate_local) {
  const reference::InfiniShape s{8, 4, 2, 3};
  const reference::InfiniConfig cfg{{0, 5, 8}, 2, update, 0.6};
  const size_t nq = size_t(s.t * s.hq * s.d), nk = size_t(s.t * s.hkv * s.d);
  reference::InfiniData<double> in{random_vec(nq, 1), random_vec(nk, 2), random_vec(nk, 3), {}, {}};
  if (separate_local) {
    in.q_local = random_vec(nq, 4);
    in.k_local = random_vec(nk, 5);
  }
  std::vector<double> beta{-0.5, 0.3, 1.0, -1.2};
  const std::vector<double> w = random_vec(nq, 6);
  reference::InfiniGradsRef<double> g;
  reference::infini_backward(s, in, beta, cfg, w, g);
  auto loss = [&] {
    std::vector<double> out;
    reference::infini_forward(s, in, beta, cfg, out);
    return std::inner_product(out.begin(), out.end(), w.begin(), 0.0);
  };
  std::vector<testing::FdCheck> checks{
      {&in.q, &g.dq, "q"}, {&in.k, &g.dk, "k"}, {&in.v, &g.dv, "v"}, {&beta, &g.dbeta, "beta"}};
  if (separate_local) {
    checks.push_back({&in.q_local, &g.dq_local, "q_local"});
    checks.push_back({&in.k_local, &g.dk_local, "k_local"});
  }
  testing::expect_gradients_match_differences(checks, loss, 1e-6, 1e-6);
}

TEST(InfiniReferenceGradcheck, LinearUpdate) { gradcheck(InfiniUpdate::linear, false); }
TEST(InfiniReferenceGradcheck, DeltaUpdate) { gradcheck(InfiniUpdate::delta, false); }
TEST(InfiniReferenceGradcheck, DeltaUpdateSeparateLocalQK) { gradcheck(InfiniUpdate::delta, true); }
TEST(InfiniReferenceGradcheck, LinearUpdateSeparateLocalQK) { gradcheck(InfiniUpdate::linear, true); }

struct InfiniCase {
  std::vector<int64_t> lens;
  int hq, hkv, d;
  int64_t segment;
  InfiniUpdate update;
  bool separate_local;
};

// Random inputs of a case and their views for the fast kernel and the reference.
struct Inputs {
  Tensor q, k, v, ql, kl;
  int64_t t;
  Inputs(const InfiniCase& c, int64_t t_)
      : q(random_tensor({t_, c.hq, c.d}, 1)),
        k(random_tensor({t_, c.hkv, c.d}, 2)),
        v(random_tensor({t_, c.hkv, c.d}, 3)),
        ql(random_tensor({t_, c.hq, c.d}, 4)),
        kl(random_tensor({t_, c.hkv, c.d}, 5)),
        t(t_) {}
  InfiniInputs fast(bool sep) const { return {q, k, v, sep ? &ql : nullptr, sep ? &kl : nullptr}; }
  reference::InfiniData<double> ref(bool sep) const {
    return {to_vec<double>(q), to_vec<double>(k), to_vec<double>(v), sep ? to_vec<double>(ql) : std::vector<double>{},
            sep ? to_vec<double>(kl) : std::vector<double>{}};
  }
};

int64_t total(const std::vector<int64_t>& lens) { return std::accumulate(lens.begin(), lens.end(), int64_t(0)); }

class InfiniVsReference : public ::testing::TestWithParam<InfiniCase> {};

TEST_P(InfiniVsReference, ForwardAndBackwardMatch) {
  const InfiniCase& c = GetParam();
  const Inputs x(c, total(c.lens));
  const std::vector<int64_t> cu = c.lens.size() == 1 ? std::vector<int64_t>{} : prefix_sums(c.lens);
  const std::vector<float> beta = test_beta(c.hq);
  InfiniOptions opts;
  opts.segment_len = c.segment;
  opts.update = c.update;
  const InfiniResult r = infini_forward(x.fast(c.separate_local), beta, cu, opts);
  const Tensor dout = random_tensor({x.t, c.hq, c.d}, 7);
  const InfiniGrads g = infini_backward(x.fast(c.separate_local), beta, r, dout, cu);

  const reference::InfiniShape s{x.t, c.hq, c.hkv, c.d};
  const reference::InfiniConfig cfg{cu, c.segment, c.update, 1.0 / std::sqrt(double(c.d))};
  const std::vector<double> beta_d(beta.begin(), beta.end());
  std::vector<double> out;
  reference::infini_forward(s, x.ref(c.separate_local), beta_d, cfg, out);
  reference::InfiniGradsRef<double> rg;
  reference::infini_backward(s, x.ref(c.separate_local), beta_d, cfg, to_vec<double>(dout), rg);

  const double tol = 2e-4;
  EXPECT_LT(rel_error(r.out, out), tol);
  EXPECT_LT(rel_error(g.dq, rg.dq), tol);
  EXPECT_LT(rel_error(g.dk, rg.dk), tol);
  EXPECT_LT(rel_error(g.dv, rg.dv), tol);
  if (c.separate_local) {
    EXPECT_LT(rel_error(g.dq_local, rg.dq_local), tol);
    EXPECT_LT(rel_error(g.dk_local, rg.dk_local), tol);
  } else {
    EXPECT_TRUE(g.dq_local.empty() && g.dk_local.empty());
  }
  ASSERT_EQ(g.dbeta.size(), size_t(c.hq));
  for (int h = 0; h < c.hq; ++h) EXPECT_NEAR(g.dbeta[h], rg.dbeta[h], tol * (1 + std::abs(rg.dbeta[h]))) << h;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, InfiniVsReference,
    ::testing::Values(InfiniCase{{37}, 2, 2, 16, 8, InfiniUpdate::linear, false},
                      InfiniCase{{37}, 4, 1, 16, 8, InfiniUpdate::delta, true},
                      InfiniCase{{5, 20, 1, 13}, 4, 2, 8, 6, InfiniUpdate::delta, false},
                      InfiniCase{{5, 20, 1, 13}, 4, 2, 8, 6, InfiniUpdate::linear, true},
                      InfiniCase{{64, 3}, 2, 1, 32, 64, InfiniUpdate::linear, true},
                      InfiniCase{{70}, 3, 3, 8, 7, InfiniUpdate::delta, true},
                      InfiniCase{{300}, 2, 1, 16, 100, InfiniUpdate::delta, false},
                      InfiniCase{{1100}, 2, 1, 8, 520, InfiniUpdate::delta, true}));

// Feeding one sequence in chunks of many sizes (single tokens, chunks spanning several segments)
// gives the outputs of one call.
void streaming_matches_one_call(InfiniUpdate update, bool separate_local) {
  const InfiniCase c{{0}, 4, 2, 16, 8, update, separate_local};
  const Inputs x(c, 83);
  InfiniOptions opts;
  opts.segment_len = c.segment;
  opts.update = update;
  const std::vector<float> beta = test_beta(c.hq);
  const InfiniResult r = infini_forward(x.fast(separate_local), beta, {}, opts);

  InfiniStream stream(c.hq, c.hkv, c.d, beta, opts);
  auto slice = [](const Tensor& t, int64_t t0, int64_t n) {
    Tensor s({n, t.dim(1), t.dim(2)});
    std::copy_n(t.f32() + t0 * t.dim(1) * t.dim(2), s.numel(), s.f32());
    return s;
  };
  std::vector<float> streamed;
  int64_t pos = 0;
  for (int64_t n : {1, 3, 8, 13, 1, 1, 2, 19, 7, 7, 6, 15}) {
    const Tensor q = slice(x.q, pos, n), k = slice(x.k, pos, n), v = slice(x.v, pos, n), ql = slice(x.ql, pos, n),
                 kl = slice(x.kl, pos, n);
    const Tensor o = stream.feed({q, k, v, separate_local ? &ql : nullptr, separate_local ? &kl : nullptr});
    streamed.insert(streamed.end(), o.f32(), o.f32() + o.numel());
    pos += n;
    if (pos == 48) {  // reached exactly: 6 full segments absorbed,: the state one call checkpoints before segment 6
      const int64_t mm = c.hkv * c.d * c.d, zz = c.hkv * c.d;
      for (int64_t i = 0; i < mm; ++i) ASSERT_EQ(stream.memory().f32()[i], r.memory.f32()[6 * mm + i]) << i;
      for (int64_t i = 0; i < zz; ++i) ASSERT_EQ(stream.norm().f32()[i], r.norm.f32()[6 * zz + i]) << i;
    }
  }
  ASSERT_EQ(pos, x.t);
  EXPECT_EQ(stream.tokens(), x.t);
  EXPECT_LT(rel_error(r.out, streamed), 1e-5);  // bitwise equal with OpenBLAS 0.3.21 here
}

TEST(InfiniStreaming, ChunksEqualOneCallLinear) { streaming_matches_one_call(InfiniUpdate::linear, false); }
TEST(InfiniStreaming, ChunksEqualOneCallDeltaSeparateLocal) { streaming_matches_one_call(InfiniUpdate::delta, true); }

// A sequence shorter than a segment only has the first segment, which reads an empty memory:
// out = (1 - sigmoid(beta)) A_dot exactly, no NaN from the 0/0 readout.
TEST(Infini, FirstSegmentReadsZero) {
  const InfiniCase c{{0}, 2, 1, 8, 16, InfiniUpdate::delta, false};
  const Inputs x(c, 5);
  InfiniOptions opts;
  opts.segment_len = 16;
  opts.update = InfiniUpdate::delta;
  const std::vector<float> beta{0.4f, -2.0f};
  const InfiniResult r = infini_forward(x.fast(false), beta, {}, opts);
  const AttentionResult local = flash_attention_forward(x.q, x.k, x.v);
  for (int64_t t = 0; t < 5; ++t)
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < 8; ++j) {
        const int64_t i = (t * 2 + h) * 8 + j;
        ASSERT_NEAR(r.out.f32()[i], (1.0f - 1.0f / (1.0f + std::exp(-beta[h]))) * local.out.f32()[i], 1e-6) << i;
      }
  for (int64_t i = 0; i < r.memory.numel(); ++i) ASSERT_EQ(r.memory.f32()[i], 0.0f);
  const InfiniGrads g = infini_backward(x.fast(false), beta, r, random_tensor({5, 2, 8}, 9), {});
  for (const Tensor* t : {&g.dq, &g.dk, &g.dv})
    for (int64_t i = 0; i < t->numel(); ++i) ASSERT_TRUE(std::isfinite(t->f32()[i]));
}

TEST(Infini, DeterministicForAFixedThreadCount) {
  const InfiniCase c{{40, 29}, 4, 2, 16, 8, InfiniUpdate::delta, true};
  const Inputs x(c, 69);
  InfiniOptions opts;
  opts.segment_len = 8;
  opts.update = InfiniUpdate::delta;
  const std::vector<int64_t> cu{0, 40, 69};
  const Tensor dout = random_tensor({69, 4, 16}, 8);
  const InfiniResult a = infini_forward(x.fast(true), test_beta(4), cu, opts);
  const InfiniResult b = infini_forward(x.fast(true), test_beta(4), cu, opts);
  EXPECT_TRUE(testing::bitwise_equal(a.out, b.out));
  const InfiniGrads ga = infini_backward(x.fast(true), test_beta(4), a, dout, cu);
  const InfiniGrads gb = infini_backward(x.fast(true), test_beta(4), a, dout, cu);
  EXPECT_TRUE(testing::bitwise_equal(ga.dq, gb.dq) && testing::bitwise_equal(ga.dk, gb.dk) &&
              testing::bitwise_equal(ga.dv, gb.dv) && testing::bitwise_equal(ga.dk_local, gb.dk_local));
  EXPECT_EQ(ga.dbeta, gb.dbeta);
}

void expect_error(const std::function<void()>& fn, const std::string& text) {
  try {
    fn();
    FAIL() << "no exception, expected: " << text;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

TEST(Infini, BadInputThrowsClearErrors) {
  const Tensor q = random_tensor({6, 4, 8}, 1), k = random_tensor({6, 2, 8}, 2), v = random_tensor({6, 2, 8}, 3);
  const Tensor k3 = random_tensor({6, 3, 8}, 2), q_short = random_tensor({5, 4, 8}, 1);
  const std::vector<float> beta(4, 0.0f);
  InfiniOptions zero;
  zero.segment_len = 0;
  expect_error([&] { infini_forward({q, k, v}, beta, {}, zero); }, "infini_forward: segment_len must be > 0, got 0");
  expect_error([&] { infini_forward({q, k, v}, {0.0f, 0.0f, 0.0f}); }, "beta has 3 entries but q has 4 heads");
  expect_error([&] { infini_forward({q, k3, k3}, beta); }, "query heads (4) must be a multiple of kv heads (3)");
  expect_error([&] { infini_forward({q, k, v, &q_short, nullptr}, beta); }, "q_local shape [5, 4, 8] differs");
  expect_error([&] { infini_forward({q, k, v}, beta, {0, 4, 7}); }, "cu_seqlens_q ends at 7 but the tensor has 6 rows");
  expect_error([&] { infini_forward({q, k, v}, {0.0f, NAN, 0.0f, 0.0f}); }, "beta[1] is not finite");
  const Tensor q16 = q.to(DType::bf16);
  expect_error([&] { infini_forward({q16, k, v}, beta); }, "infini_forward: q must be f32, got bf16");
  expect_error([&] { InfiniStream(4, 3, 8, beta); }, "InfiniStream: query heads (4) must be a positive multiple of kv heads (3)");
  expect_error([&] { InfiniStream(4, 2, 8, beta, zero); }, "InfiniStream: segment_len must be > 0, got 0");
  InfiniStream st(4, 2, 8, beta);
  expect_error([&] { st.feed({q, k3, k3}); }, "InfiniStream::feed: k must be [6, 2, 8], got [6, 3, 8]");
  const InfiniResult r = infini_forward({q, k, v}, beta);
  expect_error([&] { infini_backward({q, k, v}, beta, r, q_short); }, "infini_backward: dout must have shape [6, 4, 8]");
}

}  // namespace
}  // namespace longctx
