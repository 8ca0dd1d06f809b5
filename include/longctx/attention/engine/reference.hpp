// Naive references: plain loops over a dense [Hq, Tq, Tk] visibility mask, in float or double.
// Obviously right and slow; the fast kernels are tested against them, and they are tested
// against finite differences (tests/attention/test_reference_gradcheck.cpp). Each mechanism's
// mask lives beside its kernel (moba/reference.hpp, sparse/reference.hpp, ...).
#pragma once
#include <longctx/attention/common.hpp>

#include <cstdint>
#include <vector>

namespace longctx::reference {

struct Shape {
  int64_t tq, tk;
  int hq, hkv, d;
};

// mask[(h * tq + i) * tk + j] != 0 iff query row i of head h may attend key row j.
using Mask = std::vector<uint8_t>;

// a . b over d entries, in T (every reference scores with it).
template <class T>
T row_dot(const T* a, const T* b, int d) {
  T s = 0;
  for (int c = 0; c < d; ++c) s += a[c] * b[c];
  return s;
}

// Causal / sliding-window / varlen visibility, the rule of longctx::AttentionOptions and Varlen.
Mask dense_mask(const Shape& s, const Varlen& varlen, const AttentionOptions& opts);

// out[Tq, Hq, d], lse[Hq, Tq] of softmax(scale * q k^T masked) v; rows with no visible key give
// out = 0, lse = -inf.
template <class T>
void attention_forward(const Shape& s, const std::vector<T>& q, const std::vector<T>& k,
                       const std::vector<T>& v, T scale, const Mask& mask, std::vector<T>& out,
                       std::vector<T>& lse);

// Gradients of sum(out o dout) with respect to q, k, v (the mask is a constant).
template <class T>
void attention_backward(const Shape& s, const std::vector<T>& q, const std::vector<T>& k,
                        const std::vector<T>& v, T scale, const Mask& mask, const std::vector<T>& dout,
                        std::vector<T>& dq, std::vector<T>& dk, std::vector<T>& dv);

}  // namespace longctx::reference
