#include "nn/layers.hpp"

#include <longctx/core/error.hpp>

#include <cmath>

#include "core/parallel.hpp"

#include "core/gemm.hpp"
#include "core/simd.hpp"

namespace longctx::nn {

void linear_forward(const float* x, int64_t T, int64_t in, const float* w, int64_t out, float* y, gemm::Precision pr) {
  gemm::gemm(pr, false, false, T, out, in, 1.0f, x, in, w, out, 0.0f, y, out);
}

void linear_backward(const float* x, const float* dy, int64_t T, int64_t in, const float* w, int64_t out, float* dx,
                     bool accumulate, float* dw, gemm::Precision pr) {
  if (dx) gemm::gemm(pr, false, true, T, in, out, 1.0f, dy, out, w, out, accumulate ? 1.0f : 0.0f, dx, in);
  gemm::gemm(pr, true, false, in, out, T, 1.0f, x, in, dy, out, 1.0f, dw, out);
}

void rmsnorm_forward(const float* x, const float* w, int64_t T, int64_t D, float eps, float* y, float* rstd) {
#pragma omp parallel for schedule(static) if (parallel::worth_threads(T * D))
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * D;
    const float r = 1.0f / std::sqrt(simd::dot(xt, xt, D) / float(D) + eps);
    rstd[t] = r;
    for (int64_t i = 0; i < D; ++i) y[t * D + i] = xt[i] * r * w[i];
  }
}

void rmsnorm_backward(const float* x, const float* w, const float* rstd, const float* dy, int64_t T, int64_t D,
                      float* dx, bool accumulate, float* dw) {
  // y_i = w_i x_i r with r = (mean x^2 + eps)^-1/2:  dx_i = r w_i dy_i - x_i r^3 / D * sum_j w_j dy_j x_j
#pragma omp parallel for schedule(static) if (parallel::worth_threads(T * D))
  for (int64_t t = 0; t < T; ++t) {
    const float *xt = x + t * D, *dyt = dy + t * D;
    const float r = rstd[t];
    float s = 0.0f;
    for (int64_t i = 0; i < D; ++i) s += w[i] * dyt[i] * xt[i];
    const float c = s * r * r * r / float(D);
    float* dxt = dx + t * D;
    for (int64_t i = 0; i < D; ++i) {
      const float g = r * w[i] * dyt[i] - xt[i] * c;
      dxt[i] = accumulate ? dxt[i] + g : g;
    }
  }
  for (int64_t t = 0; t < T; ++t)  // serial over tokens: a fixed summation order
    for (int64_t i = 0; i < D; ++i) dw[i] += dy[t * D + i] * x[t * D + i] * rstd[t];
}

Rope::Rope(int64_t max_pos, int64_t head_dim, double theta)
    : max_pos_(max_pos), half_(head_dim / 2), cos_(size_t(max_pos * half_)), sin_(size_t(max_pos * half_)) {
  LONGCTX_CHECK(head_dim % 2 == 0, "rope: head_dim must be even, got ", head_dim);
  for (int64_t p = 0; p < max_pos; ++p)
    for (int64_t i = 0; i < half_; ++i) {
      const double angle = double(p) * std::pow(theta, -2.0 * double(i) / double(head_dim));
      cos_[size_t(p * half_ + i)] = float(std::cos(angle));
      sin_[size_t(p * half_ + i)] = float(std::sin(angle));
    }
}

void Rope::apply(float* x, int64_t T, int64_t H, const int64_t* pos, bool inverse) const {
  const float sign = inverse ? -1.0f : 1.0f;
  for (int64_t t = 0; t < T; ++t)  // checked before the parallel loop: exceptions cannot leave it
    LONGCTX_CHECK(pos[t] >= 0 && pos[t] < max_pos_, "rope: position ", pos[t], " outside the table of ", max_pos_,
                  " (model max_seq_len)");
#pragma omp parallel for schedule(static) if (parallel::worth_threads(T * H * 2 * half_))
  for (int64_t t = 0; t < T; ++t) {
    const float *c = &cos_[size_t(pos[t] * half_)], *s = &sin_[size_t(pos[t] * half_)];
    for (int64_t h = 0; h < H; ++h) {
      float* v = x + (t * H + h) * 2 * half_;
      for (int64_t i = 0; i < half_; ++i) {
        const float a = v[i], b = v[i + half_];
        v[i] = a * c[i] - sign * b * s[i];
        v[i + half_] = b * c[i] + sign * a * s[i];
      }
    }
  }
}

LossSum cross_entropy(const float* logits, int64_t T, int64_t V, const int32_t* targets, const float* weights,
                      float* dlogits) {
  int64_t count = 0;
  double weight = 0;
  for (int64_t t = 0; t < T; ++t) {
    LONGCTX_CHECK(targets[t] < V, "cross_entropy: target ", targets[t], " >= vocab size ", V);
    if (targets[t] < 0) continue;
    LONGCTX_CHECK(!weights || (weights[t] >= 0 && std::isfinite(weights[t])), "cross_entropy: weight ",
                  weights ? weights[t] : 0.0f, " at ", t, " must be finite and >= 0");
    count += 1;
    weight += weights ? double(weights[t]) : 1.0;
  }
  std::vector<double> row_loss(size_t(T), 0.0);  // summed serially below: deterministic
  const float inv = weight > 0 ? 1.0f / float(weight) : 0.0f;
#pragma omp parallel for schedule(static) if (parallel::worth_threads(T * V))
  for (int64_t t = 0; t < T; ++t) {
    const float* z = logits + t * V;
    if (targets[t] < 0) {
      if (dlogits) std::fill_n(dlogits + t * V, V, 0.0f);
      continue;
    }
    const float m = simd::max_of(z, V);
    double sum = 0;
    for (int64_t i = 0; i < V; ++i) sum += std::exp(double(z[i] - m));
    const double lse = double(m) + std::log(sum);
    row_loss[size_t(t)] = lse - double(z[targets[t]]);
    if (dlogits) {
      const float scale = weights ? weights[t] * inv : inv;
      float* g = dlogits + t * V;
      for (int64_t i = 0; i < V; ++i) g[i] = float(std::exp(double(z[i]) - lse)) * scale;
      g[targets[t]] -= scale;
    }
  }
  double total = 0;
  for (size_t t = 0; t < row_loss.size(); ++t) total += weights ? double(weights[t]) * row_loss[t] : row_loss[t];
  return {total, count, weight, std::move(row_loss)};
}

}  // namespace longctx::nn
