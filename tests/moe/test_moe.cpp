// The fast MoE layer against the naive reference (forward, stats, backward) on awkward shapes,
// k = E as a dense mixture, the bias-free router's rules, determinism, and bad input.
#include <longctx/nn/ffn.hpp>

#include <cmath>

#include "core/parallel.hpp"
#include "moe_helpers.hpp"

namespace longctx {
namespace {

using moe::GateNorm;
using moe::Router;

template <class T>
std::vector<T> cat(std::initializer_list<const Tensor*> ts) {
  std::vector<T> v;
  for (const Tensor* t : ts) {
    auto p = testing::to_vec<T>(*t);
    v.insert(v.end(), p.begin(), p.end());
  }
  return v;
}

// Fast forward + backward vs the reference in double, at float tolerance.
void compare_with_reference(const moe::Config& c, int64_t n, uint64_t seed) {
  const moe::Weights w = testing::random_moe_weights(c, seed);
  const Tensor x = testing::random_tensor({n, c.d_model}, seed + 10);
  const Tensor dy = testing::random_tensor({n, c.d_model}, seed + 11);
  const moe::Forward f = moe::forward(c, w, x, {true, seed});
  const auto p = moe::reference::params_of<double>(w);
  const auto noise = testing::noise_of<double>(f);
  const auto r = moe::reference::forward(c, p, testing::to_vec<double>(x), n, noise);
  EXPECT_LT(testing::rel_error(f.out, r.out), 1e-5);
  EXPECT_EQ(f.expert, r.expert);
  for (size_t a = 0; a < r.gate.size(); ++a) EXPECT_NEAR(f.gate[a], r.gate[a], 1e-6);
  EXPECT_EQ(f.stats.dropped_assignments, r.dropped_assignments);
  EXPECT_EQ(f.stats.dropped_tokens, r.dropped_tokens);
  EXPECT_NEAR(f.stats.importance_loss, r.importance_loss, 1e-5 * (1 + r.importance_loss));
  EXPECT_NEAR(f.stats.load_balance_loss, r.load_balance_loss, 1e-5);
  EXPECT_NEAR(f.stats.z_loss, r.z_loss, 1e-5 * (1 + r.z_loss));
  EXPECT_NEAR(f.stats.aux_loss, r.aux_loss, 1e-5 * (1 + r.aux_loss));
  int64_t kept = 0;
  for (int64_t e : f.stats.tokens_per_expert) kept += e;
  EXPECT_EQ(kept, n * c.top_k - r.dropped_assignments);

  const moe::Grads g = moe::backward(c, w, x, f, dy);
  std::vector<double> dx;
  const auto rg = moe::reference::backward(c, p, testing::to_vec<double>(x), n, noise, testing::to_vec<double>(dy), dx);
  EXPECT_LT(testing::rel_error(g.dx, dx), 1e-5);
  EXPECT_LT(testing::rel_error(g.dw_gate, rg.w_gate), 1e-5);
  if (c.router == Router::noisy) {
    EXPECT_LT(testing::rel_error(g.dw_noise, rg.w_noise), 1e-5);
  }
  EXPECT_LT(testing::rel_error(g.dw1, rg.w1), 1e-5);
  EXPECT_LT(testing::rel_error(g.dw3, rg.w3), 1e-5);
  EXPECT_LT(testing::rel_error(g.dw2, rg.w2), 1e-5);
  if (c.num_shared > 0) {
    EXPECT_LT(testing::rel_error(g.dshared_w1, rg.shared_w1), 1e-5);
    EXPECT_LT(testing::rel_error(g.dshared_w3, rg.shared_w3), 1e-5);
    EXPECT_LT(testing::rel_error(g.dshared_w2, rg.shared_w2), 1e-5);
  }
}

moe::Config aux(moe::Config c) {
  c.importance_weight = 0.5f;
  c.load_balance_weight = 0.01f;
  c.z_loss_weight = 0.001f;
  return c;
}

TEST(Moe, TopkMatchesReference) {
  compare_with_reference(aux(testing::small_moe(Router::topk, GateNorm::selected, 5, 2)), 37, 1);
  compare_with_reference(testing::small_moe(Router::topk, GateNorm::selected, 7, 3), 1, 2);  // one token
}

TEST(Moe, NoisyMatchesReferenceInTrainingAndEval) {
  const moe::Config c = aux(testing::small_moe(Router::noisy, GateNorm::selected, 6, 2));
  compare_with_reference(c, 29, 3);
  // evaluation: no noise, the same choices as the plain top-k router with the same W_g
  const moe::Weights w = testing::random_moe_weights(c, 3);
  const Tensor x = testing::random_tensor({29, c.d_model}, 13);
  const moe::Forward f = moe::forward(c, w, x, {false, 3});
  EXPECT_TRUE(f.noise.empty());
  moe::Config plain = c;
  plain.router = Router::topk;
  EXPECT_TRUE(testing::bitwise_equal(f.out, moe::forward(plain, w, x).out));
  const moe::Grads g = moe::backward(c, w, x, f, testing::random_tensor({29, c.d_model}, 14));
  for (int64_t i = 0; i < g.dw_noise.numel(); ++i) ASSERT_EQ(g.dw_noise.f32()[i], 0.0f);
}

TEST(Moe, SwitchAndBiasFreeMatchReference) {
  compare_with_reference(aux(testing::small_moe(Router::topk, GateNorm::all, 4, 1)), 33, 4);
  compare_with_reference(aux(testing::small_moe(Router::bias_free, GateNorm::selected, 8, 2)), 41, 5);
  compare_with_reference(aux(testing::small_moe(Router::bias_free, GateNorm::all, 3, 2)), 17, 6);
}

TEST(Moe, SharedExpertsAndCapacityMatchReference) {
  moe::Config c = aux(testing::small_moe(Router::topk, GateNorm::selected, 4, 2));
  c.num_shared = 2;
  compare_with_reference(c, 23, 7);
  c.dropless = false;
  c.capacity_factor = 0.6;
  compare_with_reference(c, 300, 8);  // more than one row tile per expert
  c.capacity_factor = 0.1;            // most assignments dropped, some tokens entirely
  const moe::Weights w = testing::random_moe_weights(c, 9);
  const moe::Forward f = moe::forward(c, w, testing::random_tensor({40, c.d_model}, 19));
  EXPECT_GT(f.stats.dropped_tokens, 0);
  compare_with_reference(c, 40, 9);
}

TEST(Moe, KEqualsEIsTheDenseSoftmaxMixture) {
  const moe::Config c = testing::small_moe(Router::topk, GateNorm::selected, 3, 3);
  const moe::Weights w = testing::random_moe_weights(c, 10);
  const int64_t n = 11, d = c.d_model, f = c.d_ff;
  const Tensor x = testing::random_tensor({n, d}, 20);
  const moe::Forward fwd = moe::forward(c, w, x);
  std::vector<double> want(size_t(n * d), 0.0);
  for (int64_t e = 0; e < c.num_experts; ++e) {
    ffn::SwigluWeights ew{Tensor({d, f}), Tensor({d, f}), Tensor({f, d})};
    std::memcpy(ew.w1.f32(), w.w1.f32() + e * d * f, ew.w1.nbytes());
    std::memcpy(ew.w3.f32(), w.w3.f32() + e * d * f, ew.w3.nbytes());
    std::memcpy(ew.w2.f32(), w.w2.f32() + e * f * d, ew.w2.nbytes());
    const Tensor y = ffn::swiglu_forward(ew, x).y;
    for (int64_t t = 0; t < n; ++t) {
      double z[3], m = -1e30, s = 0;  // softmax over all E of x W_g
      for (int64_t i = 0; i < 3; ++i) {
        z[i] = 0;
        for (int64_t a = 0; a < d; ++a) z[i] += double(x.f32()[t * d + a]) * w.w_gate.f32()[a * 3 + i];
        m = std::max(m, z[i]);
      }
      for (double v : z) s += std::exp(v - m);
      for (int64_t a = 0; a < d; ++a) want[size_t(t * d + a)] += std::exp(z[e] - m) / s * y.f32()[t * d + a];
    }
  }
  EXPECT_LT(testing::rel_error(fwd.out, want), 1e-5);
}

TEST(Moe, AuxLossesAtUniformRouting) {
  // W_g = 0: every router probability is 1/E, so Switch's loss is exactly 1 whatever the
  // dispatch, and the z-loss is (ln E)^2.
  moe::Config c = testing::small_moe(Router::topk, GateNorm::selected, 8, 2);
  moe::Weights w = moe::init_weights(c, 11);
  w.w_gate.fill(0.0f);
  const moe::Forward f = moe::forward(c, w, testing::random_tensor({16, c.d_model}, 21));
  EXPECT_NEAR(f.stats.load_balance_loss, 1.0, 1e-6);
  EXPECT_NEAR(f.stats.z_loss, std::log(8.0) * std::log(8.0), 1e-5);
  EXPECT_NEAR(f.stats.router_entropy, std::log(8.0), 1e-5);
  // ties go to the lower expert index: every token picks experts 0 and 1
  EXPECT_EQ(f.stats.routed_per_expert, (std::vector<int64_t>{16, 16, 0, 0, 0, 0, 0, 0}));
}

TEST(Moe, BiasFreeBiasSelectsButDoesNotGate) {
  moe::Config c = testing::small_moe(Router::bias_free, GateNorm::selected, 4, 2);
  c.bias_update_rate = 0.25f;
  moe::Weights w = testing::random_moe_weights(c, 12);
  w.expert_bias.fill(0.0f);
  w.expert_bias.f32()[3] = 1e3f;  // expert 3 wins every selection
  const Tensor x = testing::random_tensor({10, c.d_model}, 22);
  const moe::Forward f = moe::forward(c, w, x);
  EXPECT_EQ(f.stats.routed_per_expert[3], 10);
  for (int64_t t = 0; t < 10; ++t) {  // gates are the softmax of the unbiased logits of the pair
    const int32_t a = f.expert[size_t(t * 2)], b = f.expert[size_t(t * 2 + 1)];
    const float za = f.logits.f32()[t * 4 + a], zb = f.logits.f32()[t * 4 + b];
    EXPECT_NEAR(f.gate[size_t(t * 2)], 1.0f / (1.0f + std::exp(zb - za)), 1e-6);
  }
  // update: overloaded expert 3 goes down by gamma, under-loaded experts up, at-mean unchanged
  moe::Stats s;
  s.routed_per_expert = {5, 0, 5, 10};  // mean 5
  moe::update_expert_bias(c, w, s);
  EXPECT_EQ(w.expert_bias.f32()[0], 0.0f);
  EXPECT_EQ(w.expert_bias.f32()[1], 0.25f);
  EXPECT_EQ(w.expert_bias.f32()[3], 1e3f - 0.25f);
}

TEST(Moe, DeterministicAndIndependentOfThreads) {
  moe::Config c = aux(testing::small_moe(Router::noisy, GateNorm::selected, 5, 2));
  c.num_shared = 1;
  c.d_model = 32;
  c.d_ff = 48;
  const moe::Weights w = testing::random_moe_weights(c, 13);
  const Tensor x = testing::random_tensor({700, c.d_model}, 23), dy = testing::random_tensor({700, c.d_model}, 24);
  auto run = [&] {
    const moe::Forward f = moe::forward(c, w, x, {true, 5});
    return std::pair{f.out.clone(), moe::backward(c, w, x, f, dy)};
  };
  const int threads = parallel::max_threads();
  const auto [o1, g1] = run();
  const auto [o2, g2] = run();
  parallel::set_threads(1);
  const auto [o3, g3] = run();
  parallel::set_threads(threads);
  for (const auto* o : {&o2, &o3}) EXPECT_TRUE(testing::bitwise_equal(o1, *o));
  for (const auto* g : {&g2, &g3}) {
    EXPECT_TRUE(testing::bitwise_equal(g1.dx, g->dx));
    EXPECT_TRUE(testing::bitwise_equal(g1.dw1, g->dw1));
    EXPECT_TRUE(testing::bitwise_equal(g1.dw2, g->dw2));
    EXPECT_TRUE(testing::bitwise_equal(g1.dw_gate, g->dw_gate));
  }
}

template <class Fn>
void expect_throw_with(Fn&& fn, const std::string& text) {
  try {
    fn();
    ADD_FAILURE() << "no exception, expected one containing: " << text;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

TEST(Moe, BadInputThrowsClearErrors) {
  moe::Config c = testing::small_moe(Router::topk, GateNorm::selected, 4, 2);
  c.top_k = 5;
  expect_throw_with([&] { moe::validate(c); }, "top_k must be in [1, num_experts = 4], got 5");
  c.top_k = 0;
  expect_throw_with([&] { moe::validate(c); }, "top_k must be in [1, num_experts = 4], got 0");
  c.top_k = 1;
  expect_throw_with([&] { moe::validate(c); }, "top_k = 1 with GateNorm::selected makes every gate 1.0");
  c.top_k = 2;
  c.dropless = false;
  c.capacity_factor = 0;
  expect_throw_with([&] { moe::validate(c); }, "capacity_factor must be > 0 (or set dropless), got 0");
  c.capacity_factor = -1;
  expect_throw_with([&] { moe::validate(c); }, "capacity_factor must be > 0 (or set dropless), got -1");
  c.capacity_factor = 1;
  c.num_experts = 0;
  expect_throw_with([&] { moe::validate(c); }, "num_experts must be > 0, got 0");
  c.num_experts = 4;
  c.load_balance_weight = -1;
  expect_throw_with([&] { moe::validate(c); }, "load_balance_weight must be >= 0, got -1");
  c.load_balance_weight = 0;
  const moe::Weights w = moe::init_weights(c, 1);
  expect_throw_with([&] { moe::forward(c, w, Tensor({3, 5})); }, "x must be f32 [tokens >= 1, 6], got f32 [3, 5]");
  moe::Config wide = c;
  wide.d_ff = 7;
  expect_throw_with([&] { moe::forward(wide, w, Tensor({3, 6})); }, "w1 must be f32 [4, 6, 7], got f32 [4, 6, 5]");
  const moe::Forward f = moe::forward(c, w, Tensor({3, 6}));
  expect_throw_with([&] { moe::backward(c, w, Tensor({3, 6}), f, Tensor({2, 6})); }, "dy must be f32 [3, 6], got f32 [2, 6]");
}

TEST(DenseFfn, MatchesSingleExpertReferenceAndGradients) {
  // A dense SwiGLU FFN is the MoE reference with one expert and gate 1 (softmax over all of one logit).
  moe::Config c = testing::small_moe(Router::topk, GateNorm::all, 1, 1);
  c.d_ff = 300;  // several d_ff slices in the weight gradients
  const moe::Weights mw = moe::init_weights(c, 14);
  ffn::SwigluWeights w{Tensor({c.d_model, c.d_ff}), Tensor({c.d_model, c.d_ff}), Tensor({c.d_ff, c.d_model})};
  std::memcpy(w.w1.f32(), mw.w1.f32(), w.w1.nbytes());
  std::memcpy(w.w3.f32(), mw.w3.f32(), w.w3.nbytes());
  std::memcpy(w.w2.f32(), mw.w2.f32(), w.w2.nbytes());
  const int64_t n = 301;
  const Tensor x = testing::random_tensor({n, c.d_model}, 24), dy = testing::random_tensor({n, c.d_model}, 25);
  const auto p = moe::reference::params_of<double>(mw);
  const auto r = moe::reference::forward(c, p, testing::to_vec<double>(x), n, {});
  const ffn::SwigluForward f = ffn::swiglu_forward(w, x);
  EXPECT_LT(testing::rel_error(f.y, r.out), 1e-5);
  std::vector<double> dx;
  const auto rg = moe::reference::backward(c, p, testing::to_vec<double>(x), n, {}, testing::to_vec<double>(dy), dx);
  const ffn::SwigluGrads g = ffn::swiglu_backward(w, x, f, dy);
  EXPECT_LT(testing::rel_error(g.dx, dx), 1e-5);  // the router adds nothing: its dz = 0 for E = 1
  EXPECT_LT(testing::rel_error(g.dw1, rg.w1), 1e-5);
  EXPECT_LT(testing::rel_error(g.dw3, rg.w3), 1e-5);
  EXPECT_LT(testing::rel_error(g.dw2, rg.w2), 1e-5);
  expect_throw_with([&] { ffn::swiglu_forward(w, Tensor({2, 5})); }, "ffn: x must be [tokens, 6], got [2, 5]");
}

}  // namespace
}  // namespace longctx
