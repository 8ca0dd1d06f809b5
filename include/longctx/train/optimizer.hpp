// AdamW (Loshchilov & Hutter 2019: decoupled weight decay), the warmup + cosine learning-rate
// schedule, and global gradient-norm clipping.
#pragma once
#include <longctx/model/transformer.hpp>

#include <vector>

namespace longctx {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

class AdamW {
 public:
  AdamW(const std::vector<Param>& params, AdamWConfig cfg);
  // One update with learning rate lr (times each Param's lr_scale): m, v moments with bias
  // correction; decay lr * wd * w on Params with decay = true.
  void step(std::vector<Param>& params, double lr);
  int64_t steps() const { return t_; }
  // Moments, for checkpoints (same order as the params).
  std::vector<Tensor>& m() { return m_; }
  std::vector<Tensor>& v() { return v_; }
  const std::vector<Tensor>& m() const { return m_; }
  const std::vector<Tensor>& v() const { return v_; }
  void set_steps(int64_t t) { t_ = t; }

 private:
  AdamWConfig cfg_;
  std::vector<Tensor> m_, v_;
  int64_t t_ = 0;
};

// Linear warmup over `warmup` steps to max_lr, then cosine decay to min_lr at `total` steps.
double lr_at(int64_t step, int64_t warmup, int64_t total, double max_lr, double min_lr);

// Scales all gradients so their global L2 norm is at most max_norm (no-op if max_norm <= 0);
// returns the norm before clipping.
double clip_grad_norm(std::vector<Param>& params, double max_norm);

}  // namespace longctx
