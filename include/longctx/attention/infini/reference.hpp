// Naive Infini-attention reference (docs/DESIGN.md "Infini-attention"): plain loops over sequences,
// segments and tokens for the memory, the dense-mask reference for the local attention, in float
// or double. The fast kernel (attention/infini/infini.hpp) is tested against it, and its backward against
// central finite differences (tests/attention/test_infini.cpp).
#pragma once
#include <longctx/attention/infini/infini.hpp>

#include <cstdint>
#include <vector>

namespace longctx::reference {

struct InfiniShape {
  int64_t t;  // tokens
  int hq, hkv, d;
};

// q [t, hq, d], k/v [t, hkv, d]; q_local/k_local empty = the local part uses q/k.
template <class T>
struct InfiniData {
  std::vector<T> q, k, v, q_local, k_local;
};

struct InfiniConfig {
  std::vector<int64_t> cu_seqlens;  // empty = one sequence
  int64_t segment_len;
  InfiniUpdate update;
  double scale;  // local softmax scale
};

template <class T>
void infini_forward(const InfiniShape& s, const InfiniData<T>& in, const std::vector<T>& beta,
                    const InfiniConfig& cfg, std::vector<T>& out);

// Gradients of sum(out o dout); dq_local/dk_local are filled only when q_local/k_local are given
// (otherwise the local part's gradient is in dq/dk).
template <class T>
struct InfiniGradsRef {
  std::vector<T> dq, dk, dv, dq_local, dk_local, dbeta;
};
template <class T>
void infini_backward(const InfiniShape& s, const InfiniData<T>& in, const std::vector<T>& beta,
                     const InfiniConfig& cfg, const std::vector<T>& dout, InfiniGradsRef<T>& g);

}  // namespace longctx::reference
