#include "moe/router.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/gemm.hpp"
#include "core/parallel.hpp"
#include "core/simd.hpp"
#include "moe/token_chunks.hpp"

namespace longctx::moe::detail {

namespace {

uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Top-k of scores[0..E) by descending value, ties to the lower index (strict > while scanning up).
// `taken` is E bytes of scratch, left all zero.
void top_k(const float* scores, int64_t e_count, int64_t k, int32_t* out, uint8_t* taken) {
  for (int64_t j = 0; j < k; ++j) {
    int32_t best = -1;
    for (int64_t i = 0; i < e_count; ++i)
      if (!taken[i] && (best < 0 || scores[i] > scores[best])) best = int32_t(i);
    out[j] = best;
    taken[best] = 1;
  }
  for (int64_t j = 0; j < k; ++j) taken[out[j]] = 0;
}

}  // namespace

float standard_normal(uint64_t seed, int64_t token, int64_t expert) {
  const uint64_t base = splitmix64(seed ^ splitmix64(uint64_t(token) * 0x100000001b3ull + uint64_t(expert)));
  const double u1 = (double((base >> 11) | 1) ) * 0x1.0p-53;  // (0, 1)
  const double u2 = double(splitmix64(base) >> 11) * 0x1.0p-53;
  return float(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

void route(const Config& cfg, const Weights& w, const Tensor& x, const Options& opts, Forward& fwd) {
  const int64_t n = x.dim(0), d = cfg.d_model, E = cfg.num_experts, k = cfg.top_k;
  fwd.logits = Tensor({n, E});
  fwd.probs = Tensor({n, E});
  fwd.lse.assign(size_t(n), 0.0f);
  fwd.expert.assign(size_t(n * k), 0);
  fwd.gate.assign(size_t(n * k), 0.0f);
  gemm::sgemm(false, false, n, E, d, 1.0f, x.f32(), d, w.w_gate.f32(), E, 0.0f, fwd.logits.f32(), E);
  const bool noisy = cfg.router == Router::noisy && opts.training;
  if (noisy) {
    fwd.noise = Tensor({n, E});
    fwd.noise_pre = Tensor({n, E});
    gemm::sgemm(false, false, n, E, d, 1.0f, x.f32(), d, w.w_noise.f32(), E, 0.0f, fwd.noise_pre.f32(), E);
  }
  const bool biased = cfg.router == Router::bias_free;
  for_token_chunks(n, [&](int64_t t0, int64_t t1) {
    std::vector<float> score(static_cast<size_t>(E));
    std::vector<uint8_t> taken(static_cast<size_t>(E), 0);
    for (int64_t t = t0; t < t1; ++t) {
      float* z = fwd.logits.f32() + t * E;
      if (noisy)  // H = x W_g + N(0,1) o softplus(x W_noise)  (Shazeer 2017, eq. 4)
        for (int64_t i = 0; i < E; ++i) {
          const float eps = standard_normal(opts.noise_seed, t, i);
          fwd.noise.f32()[t * E + i] = eps;
          z[i] += eps * softplus(fwd.noise_pre.f32()[t * E + i]);
        }
      float* p = fwd.probs.f32() + t * E;
      const float m = *std::max_element(z, z + E);
      float sum = 0;
      for (int64_t i = 0; i < E; ++i) sum += p[i] = std::exp(z[i] - m);
      for (int64_t i = 0; i < E; ++i) p[i] /= sum;
      fwd.lse[size_t(t)] = m + std::log(sum);
      for (int64_t i = 0; i < E; ++i) score[size_t(i)] = z[i] + (biased ? w.expert_bias.f32()[i] : 0.0f);
      int32_t* sel = fwd.expert.data() + t * k;
      top_k(score.data(), E, k, sel, taken.data());
      float* g = fwd.gate.data() + t * k;
      if (cfg.norm == GateNorm::all) {
        for (int64_t j = 0; j < k; ++j) g[j] = p[sel[j]];
      } else {  // softmax over the selected logits; sel[0] holds the largest logit unless biased
        float ms = -std::numeric_limits<float>::infinity(), s = 0;
        for (int64_t j = 0; j < k; ++j) ms = std::max(ms, z[sel[j]]);
        for (int64_t j = 0; j < k; ++j) s += g[j] = std::exp(z[sel[j]] - ms);
        for (int64_t j = 0; j < k; ++j) g[j] /= s;
      }
    }
  });
}

void logit_grads(const Config& cfg, const Forward& fwd, const std::vector<float>& dgate, Tensor& dlogits) {
  const int64_t n = fwd.logits.dim(0), E = cfg.num_experts, k = cfg.top_k;
  dlogits = Tensor({n, E});
  // Per-expert coefficients of the load-balance gradient: dL/dp_ti = alpha * E * f_i / n (Switch eq. 4).
  std::vector<float> lb(size_t(E), 0.0f);
  if (cfg.load_balance_weight > 0)
    for (int64_t i = 0; i < E; ++i)
      lb[size_t(i)] = float(double(cfg.load_balance_weight) * E * double(fwd.stats.routed_per_expert[size_t(i)]) /
                            double(n * k) / double(n));
  const float zw = cfg.z_loss_weight > 0 ? 2.0f * cfg.z_loss_weight / float(n) : 0.0f;
  for_token_chunks(n, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int32_t* sel = fwd.expert.data() + t * k;
      const float* g = fwd.gate.data() + t * k;
      const float* dg = dgate.data() + t * k;
      const float* p = fwd.probs.f32() + t * E;
      float* dz = dlogits.f32() + t * E;
      float gdg = 0;
      for (int64_t j = 0; j < k; ++j) gdg += g[j] * dg[j];
      if (cfg.norm == GateNorm::selected) {
        // dz_i = g_i (dg_i - sum_j g_j dg_j) for i in S, 0 elsewhere
        for (int64_t j = 0; j < k; ++j) dz[sel[j]] += g[j] * (dg[j] - gdg);
      } else {
        // g_i = p_i for i in S: dz_j = p_j ([j in S] dg_j - sum_{i in S} p_i dg_i) over all E
        for (int64_t i = 0; i < E; ++i) dz[i] -= p[i] * gdg;
        for (int64_t j = 0; j < k; ++j) dz[sel[j]] += g[j] * dg[j];
      }
      if (cfg.load_balance_weight > 0) {  // through the full softmax: dz = p o (dp - <p, dp>)
        float pdp = 0;
        for (int64_t i = 0; i < E; ++i) pdp += p[i] * lb[size_t(i)];
        for (int64_t i = 0; i < E; ++i) dz[i] += p[i] * (lb[size_t(i)] - pdp);
      }
      if (zw > 0)  // d lse_t^2 / dz_ti = 2 lse_t p_ti
        for (int64_t i = 0; i < E; ++i) dz[i] += zw * fwd.lse[size_t(t)] * p[i];
    }
  });
}

void router_weight_grads(const Config& cfg, const Weights& w, const Tensor& x, const Forward& fwd,
                         const Tensor& dlogits, Grads& g, Tensor& dx) {
  const int64_t n = x.dim(0), d = cfg.d_model, E = cfg.num_experts;
  g.dw_gate = Tensor({d, E});
  dx = Tensor({n, d});
  gemm::sgemm(true, false, d, E, n, 1.0f, x.f32(), d, dlogits.f32(), E, 0.0f, g.dw_gate.f32(), E);
  gemm::sgemm(false, true, n, d, E, 1.0f, dlogits.f32(), E, w.w_gate.f32(), E, 0.0f, dx.f32(), d);
  if (cfg.router != Router::noisy) return;
  g.dw_noise = Tensor({d, E});
  if (fwd.noise.empty()) return;  // evaluation: no noise, no gradient
  // dH/d(x W_noise) = eps o softplus'(x W_noise) = eps o sigmoid(x W_noise)
  Tensor dpre({n, E});
  for_token_chunks(n, [&](int64_t t0, int64_t t1) {
    for (int64_t i = t0 * E; i < t1 * E; ++i)
      dpre.f32()[i] = dlogits.f32()[i] * fwd.noise.f32()[i] * float(simd::sigmoid(fwd.noise_pre.f32()[i]));
  });
  gemm::sgemm(true, false, d, E, n, 1.0f, x.f32(), d, dpre.f32(), E, 0.0f, g.dw_noise.f32(), E);
  gemm::sgemm(false, true, n, d, E, 1.0f, dpre.f32(), E, w.w_noise.f32(), E, 1.0f, dx.f32(), d);
}

}  // namespace longctx::moe::detail
