// Balancing losses (values and their gate gradients). Sums over tokens run serially in double,
// in token order.
#include <cmath>

#include "moe/router.hpp"

namespace longctx::moe::detail {

namespace {

// Imp_i = sum_t gate_ti over the selected (t, i) (Shazeer 2017, eq. 6).
std::vector<double> importance(const Config& cfg, const Forward& fwd) {
  std::vector<double> imp(size_t(cfg.num_experts), 0.0);
  for (size_t a = 0; a < fwd.gate.size(); ++a) imp[size_t(fwd.expert[a])] += fwd.gate[a];
  return imp;
}

struct Moments {
  double mean, var;
};

Moments moments(const std::vector<double>& v) {
  double m = 0, s = 0;
  for (double x : v) m += x;
  m /= double(v.size());
  for (double x : v) s += (x - m) * (x - m);
  return {m, s / double(v.size())};
}

}  // namespace

void aux_losses(const Config& cfg, Forward& fwd) {
  const int64_t n = fwd.logits.dim(0), E = cfg.num_experts, k = cfg.top_k;
  Stats& st = fwd.stats;
  const Moments imp = moments(importance(cfg, fwd));
  st.importance_loss = imp.var / (imp.mean * imp.mean);  // CV^2, population variance
  std::vector<double> prob_mean(size_t(E), 0.0);
  double entropy = 0, zsum = 0;
  for (int64_t t = 0; t < n; ++t) {
    const float *p = fwd.probs.f32() + t * E, *z = fwd.logits.f32() + t * E;
    entropy += fwd.lse[size_t(t)];  // -sum p log p = lse - sum p z, as log p_i = z_i - lse
    for (int64_t i = 0; i < E; ++i) {
      prob_mean[size_t(i)] += p[i];
      entropy -= double(p[i]) * z[i];
    }
    zsum += double(fwd.lse[size_t(t)]) * fwd.lse[size_t(t)];
  }
  double lb = 0;  // E * sum_i f_i P_i, f_i = share of the routed assignments (Switch eq. 4-6)
  for (int64_t i = 0; i < E; ++i)
    lb += double(st.routed_per_expert[size_t(i)]) / double(n * k) * prob_mean[size_t(i)] / double(n);
  st.load_balance_loss = double(E) * lb;
  st.z_loss = zsum / double(n);
  st.router_entropy = entropy / double(n);
  st.aux_loss = cfg.importance_weight * st.importance_loss + cfg.load_balance_weight * st.load_balance_loss +
                cfg.z_loss_weight * st.z_loss;
}

void aux_gate_grads(const Config& cfg, const Forward& fwd, std::vector<float>& dgate) {
  if (cfg.importance_weight <= 0) return;
  const std::vector<double> imp = importance(cfg, fwd);
  const Moments m = moments(imp);
  // d(var/mean^2)/dImp_i = 2 / (E mean^2) * ((Imp_i - mean) - var / mean)
  const double E = double(cfg.num_experts);
  for (size_t a = 0; a < dgate.size(); ++a) {
    const double x = imp[size_t(fwd.expert[a])];
    dgate[a] += float(cfg.importance_weight * 2.0 / (E * m.mean * m.mean) * ((x - m.mean) - m.var / m.mean));
  }
}

}  // namespace longctx::moe::detail
