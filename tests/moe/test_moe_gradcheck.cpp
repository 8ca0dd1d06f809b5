// The MoE reference backward against central finite differences of its forward, in double, for
// every router, both gate normalisations, every aux loss, shared experts and token dropping.
#include "moe_helpers.hpp"

namespace longctx {
namespace {

using moe::GateNorm;
using moe::Router;

// L = sum(out o w) + aux_loss; checks every weight and input gradient.
void gradcheck(const moe::Config& c, int64_t n, uint64_t seed) {
  const moe::Weights w = testing::random_moe_weights(c, seed);
  auto p = moe::reference::params_of<double>(w);
  auto x = testing::to_vec<double>(testing::random_tensor({n, c.d_model}, seed + 10));
  const auto dy = testing::to_vec<double>(testing::random_tensor({n, c.d_model}, seed + 11));
  const auto noise = c.router == Router::noisy ? testing::to_vec<double>(testing::random_tensor({n, c.num_experts}, seed + 12))
                                               : std::vector<double>{};
  std::vector<double> dx;
  const auto g = moe::reference::backward(c, p, x, n, noise, dy, dx);
  const auto base = moe::reference::forward(c, p, x, n, noise);
  auto loss = [&] {
    const auto r = moe::reference::forward(c, p, x, n, noise);
    EXPECT_EQ(r.expert, base.expert) << "a finite-difference step changed the routing";
    double l = r.aux_loss;
    for (size_t i = 0; i < r.out.size(); ++i) l += r.out[i] * dy[i];
    return l;
  };
  std::vector<testing::FdCheck> checks{
      {&x, &dx, "x"},
      {&p.w_gate, &g.w_gate, "w_gate"},
      {&p.w1, &g.w1, "w1"},
      {&p.w3, &g.w3, "w3"},
      {&p.w2, &g.w2, "w2"},
      {&p.shared_w1, &g.shared_w1, "shared_w1"},
      {&p.shared_w3, &g.shared_w3, "shared_w3"},
      {&p.shared_w2, &g.shared_w2, "shared_w2"}};
  if (c.router == Router::noisy) checks.push_back({&p.w_noise, &g.w_noise, "w_noise"});
  testing::expect_gradients_match_differences(checks, loss, 1e-6, 2e-7);
}

moe::Config with_aux(moe::Config c) {
  c.importance_weight = 0.7f;
  c.load_balance_weight = 0.3f;
  c.z_loss_weight = 0.2f;
  return c;
}

TEST(MoeGradcheck, TopkSelectedAllAuxLossesSharedExpert) {
  moe::Config c = with_aux(testing::small_moe(Router::topk, GateNorm::selected, 4, 2));
  c.num_shared = 1;
  gradcheck(c, 5, 1);
}

TEST(MoeGradcheck, NoisyTopkEachAuxLossAlone) {
  moe::Config c = testing::small_moe(Router::noisy, GateNorm::selected, 4, 2);
  gradcheck(c, 5, 2);
  c.importance_weight = 1.0f;
  gradcheck(c, 5, 3);
  c.importance_weight = 0;
  c.load_balance_weight = 1.0f;
  gradcheck(c, 5, 4);
  c.load_balance_weight = 0;
  c.z_loss_weight = 1.0f;
  gradcheck(c, 5, 5);
}

TEST(MoeGradcheck, SwitchTop1SoftmaxOverAll) {
  gradcheck(with_aux(testing::small_moe(Router::topk, GateNorm::all, 3, 1)), 6, 6);
}

TEST(MoeGradcheck, BiasFreeRouterBothNorms) {
  gradcheck(with_aux(testing::small_moe(Router::bias_free, GateNorm::all, 5, 2)), 4, 7);
  gradcheck(with_aux(testing::small_moe(Router::bias_free, GateNorm::selected, 5, 3)), 4, 8);
}

TEST(MoeGradcheck, CapacityDropsTokens) {
  moe::Config c = with_aux(testing::small_moe(Router::topk, GateNorm::selected, 3, 2));
  c.dropless = false;
  c.capacity_factor = 0.5;
  const moe::Weights w = testing::random_moe_weights(c, 9);
  const auto r = moe::reference::forward(c, moe::reference::params_of<double>(w),
                                         testing::to_vec<double>(testing::random_tensor({7, c.d_model}, 19)), 7, {});
  ASSERT_GT(r.dropped_assignments, 0);  // the case exercises dropping
  gradcheck(c, 7, 9);
}

}  // namespace
}  // namespace longctx
