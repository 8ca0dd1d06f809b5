#include "moe/experts.hpp"

namespace longctx::moe::detail {

std::vector<swiglu::Group> expert_groups(const Config& c, const Weights& w, const Forward& fwd) {
  const int64_t d = c.d_model, f = c.d_ff;
  std::vector<swiglu::Group> groups(size_t(c.num_experts));
  for (int64_t e = 0; e < c.num_experts; ++e) {
    const int64_t r0 = fwd.offsets[size_t(e)];
    swiglu::Group& g = groups[size_t(e)];
    g.rows = fwd.offsets[size_t(e + 1)] - r0;
    g.x = fwd.x_perm.f32() + r0 * d;
    g.w1 = w.w1.f32() + e * d * f;
    g.w3 = w.w3.f32() + e * d * f;
    g.w2 = w.w2.f32() + e * f * d;
    // the engine writes a, b, y in the forward and only reads a, b in the backward
    g.a = const_cast<float*>(fwd.a.f32()) + r0 * f;
    g.b = const_cast<float*>(fwd.b.f32()) + r0 * f;
    g.y = const_cast<float*>(fwd.y_perm.f32()) + r0 * d;
  }
  return groups;
}

void set_expert_grads(const Config& c, std::vector<swiglu::Group>& groups, const std::vector<int64_t>& offsets,
                      const float* dy_perm, float* dx_perm, Grads& g) {
  const int64_t d = c.d_model, f = c.d_ff;
  for (int64_t e = 0; e < c.num_experts; ++e) {
    swiglu::Group& gr = groups[size_t(e)];
    const int64_t r0 = offsets[size_t(e)];
    gr.dy = dy_perm + r0 * d;
    gr.dx = dx_perm + r0 * d;
    gr.dw1 = g.dw1.f32() + e * d * f;
    gr.dw3 = g.dw3.f32() + e * d * f;
    gr.dw2 = g.dw2.f32() + e * f * d;
  }
}

}  // namespace longctx::moe::detail
