#include <longctx/core/error.hpp>
#include <longctx/nn/ffn.hpp>

#include <cmath>
#include <random>

#include "nn/swiglu.hpp"

namespace longctx::ffn {

namespace {

void check_shapes(const SwigluWeights& w, const Tensor& x) {
  LONGCTX_CHECK(w.w1.ndim() == 2, "ffn: w1 must be [d_model, d_ff], got ", w.w1.shape_str());
  const int64_t d = w.w1.dim(0), f = w.w1.dim(1);
  LONGCTX_CHECK(w.w3.shape() == w.w1.shape(), "ffn: w3 must match w1 ", w.w1.shape_str(), ", got ", w.w3.shape_str());
  LONGCTX_CHECK(w.w2.ndim() == 2 && w.w2.dim(0) == f && w.w2.dim(1) == d, "ffn: w2 must be [", f, ", ", d, "], got ",
                w.w2.shape_str());
  LONGCTX_CHECK(x.ndim() == 2 && x.dim(1) == d, "ffn: x must be [tokens, ", d, "], got ", x.shape_str());
}

swiglu::Group group_of(const SwigluWeights& w, const Tensor& x) {
  return swiglu::group_of(x.dim(0), x.f32(), w.w1.f32(), w.w3.f32(), w.w2.f32());
}

}  // namespace

SwigluWeights init_swiglu(int64_t d_model, int64_t d_ff, uint64_t seed) {
  LONGCTX_CHECK(d_model > 0, "ffn: d_model must be > 0, got ", d_model);
  LONGCTX_CHECK(d_ff > 0, "ffn: d_ff must be > 0, got ", d_ff);
  SwigluWeights w{Tensor({d_model, d_ff}), Tensor({d_model, d_ff}), Tensor({d_ff, d_model})};
  std::mt19937_64 rng(seed);
  for (Tensor* t : {&w.w1, &w.w3, &w.w2}) {
    std::normal_distribution<float> dist(0.0f, 1.0f / std::sqrt(float(t->dim(0))));
    for (int64_t i = 0; i < t->numel(); ++i) t->f32()[i] = dist(rng);
  }
  return w;
}

SwigluForward swiglu_forward(const SwigluWeights& w, const Tensor& x) {
  check_shapes(w, x);
  const int64_t n = x.dim(0), d = w.w1.dim(0), f = w.w1.dim(1);
  SwigluForward out{Tensor({n, d}), Tensor({n, f}), Tensor({n, f})};
  swiglu::Group g = group_of(w, x);
  g.a = out.a.f32();
  g.b = out.b.f32();
  g.y = out.y.f32();
  swiglu::forward({g}, d, f);
  return out;
}

SwigluGrads swiglu_backward(const SwigluWeights& w, const Tensor& x, const SwigluForward& fwd, const Tensor& dy) {
  check_shapes(w, x);
  const int64_t n = x.dim(0), d = w.w1.dim(0), f = w.w1.dim(1);
  const std::vector<int64_t> act_shape{n, f};
  LONGCTX_CHECK(fwd.a.shape() == act_shape && fwd.b.shape() == act_shape,
                "ffn: saved activations must be [", n, ", ", f, "], got ", fwd.a.shape_str());
  LONGCTX_CHECK(dy.shape() == x.shape(), "ffn: dy must be ", x.shape_str(), ", got ", dy.shape_str());
  SwigluGrads gr{Tensor({n, d}), Tensor({d, f}), Tensor({d, f}), Tensor({f, d})};
  swiglu::Group g = group_of(w, x);
  // the engine only reads a, b in the backward
  g.a = const_cast<float*>(fwd.a.f32());
  g.b = const_cast<float*>(fwd.b.f32());
  g.dy = dy.f32();
  g.dx = gr.dx.f32();
  g.dw1 = gr.dw1.f32();
  g.dw3 = gr.dw3.f32();
  g.dw2 = gr.dw2.f32();
  swiglu::backward({g}, d, f);
  return gr;
}

}  // namespace longctx::ffn
