#include <longctx/core/error.hpp>
#include <longctx/train/optimizer.hpp>

#include <cmath>

#include "core/parallel.hpp"

namespace longctx {

AdamW::AdamW(const std::vector<Param>& params, AdamWConfig cfg) : cfg_(cfg) {
  for (const Param& p : params) {
    m_.emplace_back(p.value.shape());
    v_.emplace_back(p.value.shape());
  }
}

void AdamW::step(std::vector<Param>& params, double lr) {
  LONGCTX_CHECK(params.size() == m_.size(), "AdamW: ", params.size(), " params but state for ", m_.size());
  ++t_;
  const float b1 = float(cfg_.beta1), b2 = float(cfg_.beta2), eps = float(cfg_.eps);
  const float c1 = float(1.0 / (1.0 - std::pow(cfg_.beta1, double(t_))));
  const float c2 = float(1.0 / (1.0 - std::pow(cfg_.beta2, double(t_))));
  for (size_t i = 0; i < params.size(); ++i) {
    float *w = params[i].value.f32(), *m = m_[i].f32(), *v = v_[i].f32();
    const float* g = params[i].grad.f32();
    const double lr_i = lr * params[i].lr_scale;
    const float decay = params[i].decay ? float(1.0 - lr_i * cfg_.weight_decay) : 1.0f;
    const int64_t n = params[i].value.numel();
#pragma omp parallel for schedule(static) if (parallel::worth_threads(n))
    for (int64_t j = 0; j < n; ++j) {
      m[j] = b1 * m[j] + (1 - b1) * g[j];
      v[j] = b2 * v[j] + (1 - b2) * g[j] * g[j];
      w[j] = w[j] * decay - float(lr_i) * (m[j] * c1) / (std::sqrt(v[j] * c2) + eps);
    }
  }
}

double lr_at(int64_t step, int64_t warmup, int64_t total, double max_lr, double min_lr) {
  if (step < warmup) return max_lr * double(step + 1) / double(warmup);
  if (step >= total) return min_lr;
  const double progress = double(step - warmup) / double(std::max<int64_t>(1, total - warmup));
  return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

double clip_grad_norm(std::vector<Param>& params, double max_norm) {
  double sq = 0;
  for (const Param& p : params)
    for (int64_t j = 0; j < p.grad.numel(); ++j) sq += double(p.grad.f32()[j]) * p.grad.f32()[j];
  const double norm = std::sqrt(sq);
  if (max_norm > 0 && norm > max_norm) {
    const float s = float(max_norm / norm);
    for (Param& p : params)
      for (int64_t j = 0; j < p.grad.numel(); ++j) p.grad.f32()[j] *= s;
  }
  return norm;
}

}  // namespace longctx
