// The model's building blocks, forward next to backward: linear maps, RMSNorm, RoPE and the
// cross-entropy loss (the SwiGLU FFN is nn/swiglu.hpp, shared with the MoE experts). Row-major activations [tokens,
// features]; weights of linear maps are stored [in, out] so y = x W. Products use core/gemm, threaded (these are called
// outside parallel regions); elementwise work is split over tokens with OpenMP.
#pragma once
#include <cstdint>
#include <vector>

#include "core/gemm.hpp"

namespace longctx::nn {

// y[T, out] = x[T, in] W[in, out]; `pr` is the products' input precision (core/gemm.hpp).
void linear_forward(const float* x, int64_t T, int64_t in, const float* w, int64_t out, float* y,
                    gemm::Precision pr = gemm::Precision::f32);
// dx[T, in] = dy W^T (added to dx when accumulate), dw[in, out] += x^T dy
void linear_backward(const float* x, const float* dy, int64_t T, int64_t in, const float* w, int64_t out, float* dx,
                     bool accumulate, float* dw, gemm::Precision pr = gemm::Precision::f32);

// y = x / sqrt(mean(x^2) + eps) * w per row; rstd[t] = 1 / sqrt(mean(x_t^2) + eps) is saved.
void rmsnorm_forward(const float* x, const float* w, int64_t T, int64_t D, float eps, float* y, float* rstd);
// dx (+)= d/dx, dw += d/dw of sum(y o dy)
void rmsnorm_backward(const float* x, const float* w, const float* rstd, const float* dy, int64_t T, int64_t D,
                      float* dx, bool accumulate, float* dw);

// Rotary position embedding (RoFormer eq. 34, Llama's half-split pairing: feature i rotates with
// i + head_dim/2 by angle pos * theta^(-2i/head_dim)).
class Rope {
 public:
  Rope(int64_t max_pos, int64_t head_dim, double theta);
  // x[T, H, head_dim] rotated in place by +angle (forward) or -angle (inverse = backward).
  void apply(float* x, int64_t T, int64_t H, const int64_t* pos, bool inverse) const;
  int64_t max_pos() const { return max_pos_; }

 private:
  int64_t max_pos_, half_;
  std::vector<float> cos_, sin_;
};

// Mean cross-entropy over rows whose target is >= 0 (-1 = no target), weighted by `weights` when
// given (sum of w * loss over sum of w; nullptr: every row weighs 1); writes dlogits (the gradient
// of that mean) when given. Returns the weighted sum of losses, the number of targets, the sum of
// their weights and each row's (unweighted) loss (0 where there is no target).
struct LossSum {
  double sum;
  int64_t count;
  double weight;
  std::vector<double> rows;
};
LossSum cross_entropy(const float* logits, int64_t T, int64_t V, const int32_t* targets, const float* weights,
                      float* dlogits);

}  // namespace longctx::nn
