// The experts of a forward as SwiGLU engine groups: expert e runs on its permuted rows
// [offsets[e], offsets[e+1]) with its slices of w1, w3, w2. Forward fields only; the backward
// sets dy, dx and the weight-gradient pointers.
#pragma once
#include <longctx/moe/moe.hpp>

#include <vector>

#include "nn/swiglu.hpp"

namespace longctx::moe::detail {

std::vector<swiglu::Group> expert_groups(const Config& cfg, const Weights& w, const Forward& fwd);

// Points each group's dy, dx and weight gradients at expert e's part of these buffers.
void set_expert_grads(const Config& cfg, std::vector<swiglu::Group>& groups, const std::vector<int64_t>& offsets,
                      const float* dy_perm, float* dx_perm, Grads& g);

}  // namespace longctx::moe::detail
