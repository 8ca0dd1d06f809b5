// The MoE layer: route, permute into per-expert runs, run the experts on the SwiGLU engine,
// combine with the gates; backward in the reverse order.
#include <longctx/core/error.hpp>
#include <longctx/moe/moe.hpp>

#include <cmath>
#include <cstring>
#include <random>

#include "core/simd.hpp"
#include "nn/swiglu.hpp"
#include "moe/dispatch.hpp"
#include "moe/experts.hpp"
#include "moe/router.hpp"
#include "moe/token_chunks.hpp"

namespace longctx::moe {

namespace {

void check_shape(const Tensor& t, const std::vector<int64_t>& shape, const char* name) {
  LONGCTX_CHECK(t.shape() == shape && t.dtype() == DType::f32, "moe: ", name, " must be f32 ", shape_str(shape),
                ", got ", dtype_name(t.dtype()), " ", t.shape_str());
}

void check_weights(const Config& c, const Weights& w) {
  const int64_t d = c.d_model, f = c.d_ff, E = c.num_experts, sf = c.num_shared * c.d_ff;
  check_shape(w.w_gate, {d, E}, "w_gate");
  if (c.router == Router::noisy) check_shape(w.w_noise, {d, E}, "w_noise");
  if (c.router == Router::bias_free) check_shape(w.expert_bias, {E}, "expert_bias");
  check_shape(w.w1, {E, d, f}, "w1");
  check_shape(w.w3, {E, d, f}, "w3");
  check_shape(w.w2, {E, f, d}, "w2");
  if (c.num_shared > 0) {
    check_shape(w.shared_w1, {d, sf}, "shared_w1");
    check_shape(w.shared_w3, {d, sf}, "shared_w3");
    check_shape(w.shared_w2, {sf, d}, "shared_w2");
  }
}

void fill_normal(Tensor& t, float stddev, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.0f, stddev);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = dist(rng);
}

swiglu::Group shared_group(const Weights& w, const Tensor& x, const Forward& fwd) {
  swiglu::Group g = swiglu::group_of(x.dim(0), x.f32(), w.shared_w1.f32(), w.shared_w3.f32(), w.shared_w2.f32());
  g.a = const_cast<float*>(fwd.shared_a.f32());
  g.b = const_cast<float*>(fwd.shared_b.f32());
  g.y = const_cast<float*>(fwd.shared_y.f32());
  return g;
}

}  // namespace

void validate(const Config& c) {
  LONGCTX_CHECK(c.d_model > 0, "moe: d_model must be > 0, got ", c.d_model);
  LONGCTX_CHECK(c.d_ff > 0, "moe: d_ff must be > 0, got ", c.d_ff);
  LONGCTX_CHECK(c.num_experts > 0, "moe: num_experts must be > 0, got ", c.num_experts);
  LONGCTX_CHECK(c.top_k >= 1 && c.top_k <= c.num_experts, "moe: top_k must be in [1, num_experts = ",
                c.num_experts, "], got ", c.top_k);
  LONGCTX_CHECK(c.num_shared >= 0, "moe: num_shared must be >= 0, got ", c.num_shared);
  LONGCTX_CHECK(c.dropless || (c.capacity_factor > 0 && std::isfinite(c.capacity_factor)),
                "moe: capacity_factor must be > 0 (or set dropless), got ", c.capacity_factor);
  LONGCTX_CHECK(!(c.top_k == 1 && c.norm == GateNorm::selected),
                "moe: top_k = 1 with GateNorm::selected makes every gate 1.0, so the router gets no gradient "
                "from the task loss; use GateNorm::all (Switch) or top_k >= 2");
  LONGCTX_CHECK(c.importance_weight >= 0, "moe: importance_weight must be >= 0, got ", c.importance_weight);
  LONGCTX_CHECK(c.load_balance_weight >= 0, "moe: load_balance_weight must be >= 0, got ", c.load_balance_weight);
  LONGCTX_CHECK(c.z_loss_weight >= 0, "moe: z_loss_weight must be >= 0, got ", c.z_loss_weight);
  LONGCTX_CHECK(c.bias_update_rate >= 0, "moe: bias_update_rate must be >= 0, got ", c.bias_update_rate);
}

Weights init_weights(const Config& c, uint64_t seed) {
  validate(c);
  const int64_t d = c.d_model, f = c.d_ff, E = c.num_experts, sf = c.num_shared * c.d_ff;
  std::mt19937_64 rng(seed);
  Weights w;
  w.w_gate = Tensor({d, E});
  fill_normal(w.w_gate, 1.0f / std::sqrt(float(d)), rng);
  if (c.router == Router::noisy) w.w_noise = Tensor({d, E});
  w.expert_bias = Tensor({E});
  w.w1 = Tensor({E, d, f});
  w.w3 = Tensor({E, d, f});
  w.w2 = Tensor({E, f, d});
  fill_normal(w.w1, 1.0f / std::sqrt(float(d)), rng);
  fill_normal(w.w3, 1.0f / std::sqrt(float(d)), rng);
  fill_normal(w.w2, 1.0f / std::sqrt(float(f)), rng);
  if (sf > 0) {
    w.shared_w1 = Tensor({d, sf});
    w.shared_w3 = Tensor({d, sf});
    w.shared_w2 = Tensor({sf, d});
    fill_normal(w.shared_w1, 1.0f / std::sqrt(float(d)), rng);
    fill_normal(w.shared_w3, 1.0f / std::sqrt(float(d)), rng);
    fill_normal(w.shared_w2, 1.0f / std::sqrt(float(sf)), rng);
  }
  return w;
}

Forward forward(const Config& c, const Weights& w, const Tensor& x, const Options& opts) {
  validate(c);
  check_weights(c, w);
  LONGCTX_CHECK(x.dtype() == DType::f32 && x.ndim() == 2 && x.dim(1) == c.d_model && x.dim(0) >= 1,
                "moe: x must be f32 [tokens >= 1, ", c.d_model, "], got ", dtype_name(x.dtype()), " ", x.shape_str());
  const int64_t n = x.dim(0), d = c.d_model, f = c.d_ff, E = c.num_experts, k = c.top_k;
  Forward fwd;
  detail::route(c, w, x, opts, fwd);

  detail::Dispatch dp =
      detail::make_dispatch(fwd.expert, n, k, E, c.dropless ? -1 : detail::capacity_of(c.capacity_factor, n, k, E));
  fwd.stats.routed_per_expert = dp.routed;
  fwd.stats.dropped_assignments = dp.dropped_assignments;
  fwd.stats.dropped_tokens = dp.dropped_tokens;
  for (int64_t e = 0; e < E; ++e) fwd.stats.tokens_per_expert.push_back(dp.offsets[size_t(e + 1)] - dp.offsets[size_t(e)]);
  fwd.slot = std::move(dp.slot);
  fwd.offsets = std::move(dp.offsets);
  fwd.row_token = std::move(dp.row_token);

  const int64_t rows = fwd.offsets.back();
  fwd.x_perm = Tensor({rows, d});
  fwd.a = Tensor({rows, f});
  fwd.b = Tensor({rows, f});
  fwd.y_perm = Tensor({rows, d});
  detail::gather_rows(x.f32(), fwd.row_token, d, fwd.x_perm.f32());
  swiglu::forward(detail::expert_groups(c, w, fwd), d, f);

  fwd.out = Tensor({n, d});
  if (c.num_shared > 0) {
    const int64_t sf = c.num_shared * f;
    fwd.shared_a = Tensor({n, sf});
    fwd.shared_b = Tensor({n, sf});
    fwd.shared_y = Tensor({n, d});
    swiglu::forward({shared_group(w, x, fwd)}, d, sf);
    std::memcpy(fwd.out.f32(), fwd.shared_y.f32(), fwd.out.nbytes());
  }
  detail::combine_rows(fwd.y_perm.f32(), fwd.slot, fwd.gate.data(), n, k, d, c.num_shared > 0, fwd.out.f32());
  detail::aux_losses(c, fwd);
  return fwd;
}

Grads backward(const Config& c, const Weights& w, const Tensor& x, const Forward& fwd, const Tensor& dy) {
  validate(c);
  check_weights(c, w);
  const int64_t n = x.dim(0), d = c.d_model, f = c.d_ff, E = c.num_experts, k = c.top_k;
  LONGCTX_CHECK(fwd.out.shape() == x.shape() && int64_t(fwd.slot.size()) == n * k,
                "moe: backward needs the forward of this x ", x.shape_str(), ", got one of ", fwd.out.shape_str());
  LONGCTX_CHECK(dy.shape() == x.shape() && dy.dtype() == DType::f32, "moe: dy must be f32 ", x.shape_str(),
                ", got ", dtype_name(dy.dtype()), " ", dy.shape_str());
  Grads g;
  // Gates: dg_tj = <expert output, dy_t>; expert runs get dy_perm = g_tj * dy_t.
  const int64_t rows = fwd.offsets.back();
  std::vector<float> dgate(size_t(n * k), 0.0f);
  Tensor dy_perm({rows, d});
  detail::for_token_chunks(n, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t j = 0; j < k; ++j) {
        const int64_t s = fwd.slot[size_t(t * k + j)];
        if (s < 0) continue;
        const float* dyt = dy.f32() + t * d;
        dgate[size_t(t * k + j)] = simd::dot(fwd.y_perm.f32() + s * d, dyt, d);
        float* o = dy_perm.f32() + s * d;
        const float gt = fwd.gate[size_t(t * k + j)];
        for (int64_t i = 0; i < d; ++i) o[i] = gt * dyt[i];
      }
  });
  detail::aux_gate_grads(c, fwd, dgate);
  Tensor dlogits;
  detail::logit_grads(c, fwd, dgate, dlogits);
  detail::router_weight_grads(c, w, x, fwd, dlogits, g, g.dx);

  // Experts, on their permuted runs.
  g.dw1 = Tensor({E, d, f});
  g.dw3 = Tensor({E, d, f});
  g.dw2 = Tensor({E, f, d});
  Tensor dx_perm({rows, d});
  std::vector<swiglu::Group> groups = detail::expert_groups(c, w, fwd);
  detail::set_expert_grads(c, groups, fwd.offsets, dy_perm.f32(), dx_perm.f32(), g);
  swiglu::backward(groups, d, f);
  if (c.num_shared > 0) {
    const int64_t sf = c.num_shared * f;
    g.dshared_w1 = Tensor({d, sf});
    g.dshared_w3 = Tensor({d, sf});
    g.dshared_w2 = Tensor({sf, d});
    Tensor dx_shared({n, d});
    swiglu::Group sg = shared_group(w, x, fwd);
    sg.dy = dy.f32();
    sg.dx = dx_shared.f32();
    sg.dw1 = g.dshared_w1.f32();
    sg.dw3 = g.dshared_w3.f32();
    sg.dw2 = g.dshared_w2.f32();
    swiglu::backward({sg}, d, sf);
    simd::add_inplace(g.dx.f32(), dx_shared.f32(), g.dx.numel());
  }
  detail::combine_rows(dx_perm.f32(), fwd.slot, nullptr, n, k, d, true, g.dx.f32());
  return g;
}

void update_expert_bias(const Config& c, Weights& w, const Stats& stats) {
  validate(c);
  LONGCTX_CHECK(c.router == Router::bias_free, "moe: update_expert_bias needs Router::bias_free");
  check_shape(w.expert_bias, {c.num_experts}, "expert_bias");
  LONGCTX_CHECK(int64_t(stats.routed_per_expert.size()) == c.num_experts, "moe: stats hold ",
                stats.routed_per_expert.size(), " experts, config has ", c.num_experts);
  double mean = 0;
  for (int64_t l : stats.routed_per_expert) mean += double(l);
  mean /= double(c.num_experts);
  for (int64_t e = 0; e < c.num_experts; ++e) {
    const double diff = mean - double(stats.routed_per_expert[size_t(e)]);
    w.expert_bias.f32()[e] += c.bias_update_rate * float((diff > 0) - (diff < 0));
  }
}

}  // namespace longctx::moe
