// The naive references' backward against central finite differences of their forward, in double.
#include <longctx/attention/engine/reference.hpp>
#include <longctx/attention/sparse/reference.hpp>
#include <longctx/attention/moba/reference.hpp>

#include "helpers.hpp"

namespace longctx {
namespace {

using reference::Mask;
using reference::Shape;

using testing::random_vec;

// L = sum(out o w); checks dL/dq, dL/dk, dL/dv of the reference backward against
// (L(x + h) - L(x - h)) / 2h for every element.
void gradcheck(const Shape& s, const Mask& mask, double scale) {
  auto q = random_vec(size_t(s.tq * s.hq * s.d), 1), k = random_vec(size_t(s.tk * s.hkv * s.d), 2),
       v = random_vec(size_t(s.tk * s.hkv * s.d), 3), w = random_vec(size_t(s.tq * s.hq * s.d), 4);
  std::vector<double> dq, dk, dv, out, lse;
  reference::attention_backward(s, q, k, v, scale, mask, w, dq, dk, dv);
  auto loss = [&] {
    reference::attention_forward(s, q, k, v, scale, mask, out, lse);
    double l = 0;
    for (size_t i = 0; i < out.size(); ++i) l += out[i] * w[i];
    return l;
  };
  testing::expect_gradients_match_differences({{&q, &dq, "q"}, {&k, &dk, "k"}, {&v, &dv, "v"}}, loss, 1e-6, 1e-7);
}

TEST(ReferenceGradcheck, DenseCausalGqaVarlen) {
  const Shape s{9, 9, 4, 2, 3};
  AttentionOptions opts;
  gradcheck(s, reference::dense_mask(s, Varlen::same({1, 5, 3}), opts), 0.7);
}

TEST(ReferenceGradcheck, WindowBottomRightNonCausal) {
  const Shape s{5, 9, 2, 1, 4};
  AttentionOptions w;
  w.window = 3;
  gradcheck(s, reference::dense_mask(s, Varlen::from_lengths({2, 3}, {4, 5}), w), 0.5);
  AttentionOptions full;
  full.causal = false;
  gradcheck(s, reference::dense_mask(s, Varlen::from_lengths({2, 3}, {4, 5}), full), 0.5);
}

TEST(ReferenceGradcheck, MobaMask) {
  const Shape s{11, 11, 2, 1, 3};
  auto q = random_vec(size_t(11 * 2 * 3), 7), k = random_vec(size_t(11 * 3), 8);
  gradcheck(s, reference::moba_mask<double>(s, q, k, Varlen{}, 2, 2), 0.6);
}

TEST(ReferenceGradcheck, TopkAndThresholdMasks) {
  const Shape s{12, 12, 2, 1, 3};
  auto q = random_vec(size_t(12 * 2 * 3), 9), k = random_vec(size_t(12 * 3), 10);
  gradcheck(s, reference::topk_mask<double>(s, q, k, Varlen{}, 3, 2, false), 0.6);
  gradcheck(s, reference::topk_mask<double>(s, q, k, Varlen{}, 1, 4, true), 0.6);
  gradcheck(s, reference::threshold_mask<double>(s, q, k, Varlen{}, 3, 0.6, 0.7, false), 0.6);
  gradcheck(s, reference::topk_mask<double>(s, q, k, Varlen{}, 3, 2, false, true), 0.6);  // group_select
}

}  // namespace
}  // namespace longctx
