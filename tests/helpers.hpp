// Test helpers: seeded random tensors, conversions to the references' vectors, error metrics.
#pragma once
#include <gtest/gtest.h>
#include <longctx/attention/common.hpp>
#include <longctx/attention/engine/reference.hpp>
#include <longctx/attention/kind/kind.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <functional>
#include <string>
#include <cmath>
#include <random>
#include <stdexcept>
#include <vector>

#include "core/json_fields.hpp"

namespace longctx::testing {

// The message of the std::invalid_argument fn() throws, or "no throw".
inline std::string message_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no throw";
}

// A model config's attention object {"kind": kind, ...} with those of `fields` that the kind has
// (tests that run one config over several kinds give every kind the same block_size / top_k).
inline nlohmann::json attention_json(const std::string& kind, const nlohmann::json& fields) {
  nlohmann::json j{{"kind", kind}};
  AttentionSpec::defaults(attention_kind_from_name(kind)).visit([&](auto o) {
    for (const std::string& name : field_names(o))
      if (fields.contains(name)) j[name] = fields.at(name);
  });
  return j;
}

inline Tensor random_tensor(std::vector<int64_t> shape, uint64_t seed, float scale = 1.0f,
                            DType dtype = DType::f32) {
  return random_normal(std::move(shape), seed, scale, dtype);
}

// n standard-normal doubles from a seeded generator (for the references' finite-difference checks).
inline std::vector<double> random_vec(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, 1.0);
  std::vector<double> v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

template <class T>
std::vector<T> to_vec(const Tensor& t) {
  std::vector<T> v(size_t(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[size_t(i)] = T(t.at(i));
  return v;
}

// max |a - b| / max(max |b|, 1): relative to the largest reference value, absolute when the
// reference is all below 1 (e.g. a gradient that is exactly zero in exact arithmetic).
template <class T>
double rel_error(const Tensor& a, const std::vector<T>& b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.at(i), y = double(b[size_t(i)]);
    if (std::isinf(y) && x == y) continue;
    num = std::max(num, std::abs(x - y));
    den = std::max(den, std::abs(y));
  }
  return num / std::max(den, 1.0);
}

inline bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

inline reference::Shape shape_of(const Tensor& q, const Tensor& k) {
  return {q.dim(0), k.dim(0), int(q.dim(1)), int(k.dim(1)), int(q.dim(2))};
}

// With bf16 K/V the kernels' tile products take bf16 inputs (Q, P, dO and dS rounded per tile,
// 2^-9 relative each; DESIGN.md "GEMM"), so their error is bf16's, not fp32 accumulation's.
inline double products_tol(const Tensor& k, double f32_tol) { return k.dtype() == DType::bf16 ? 3e-3 : f32_tol; }

// Compares a fast kernel's forward (r) and backward (g) with the naive reference under `mask`,
// in double on the same (possibly bf16-rounded) inputs, so the tolerance covers only the fast
// kernel's arithmetic: fp32 accumulation, or bf16 products for bf16 inputs (products_tol).
inline void expect_matches_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                                     const reference::Mask& mask, double scale, const AttentionResult& r,
                                     const AttentionGrads& g, double f32_tol = 2e-5) {
  const double tol = products_tol(k, f32_tol);
  const reference::Shape s = shape_of(q, k);
  std::vector<double> out, lse, dq, dk, dv;
  const auto qd = to_vec<double>(q), kd = to_vec<double>(k), vd = to_vec<double>(v);
  reference::attention_forward(s, qd, kd, vd, scale, mask, out, lse);
  reference::attention_backward(s, qd, kd, vd, scale, mask, to_vec<double>(dout), dq, dk, dv);
  EXPECT_LT(rel_error(r.out, out), tol);
  EXPECT_LT(rel_error(r.lse, lse), tol);
  EXPECT_LT(rel_error(g.dq, dq), 5 * tol);
  EXPECT_LT(rel_error(g.dk, dk), 5 * tol);
  EXPECT_LT(rel_error(g.dv, dv), 5 * tol);
}

// One input of a finite-difference check: the values to nudge, the analytic gradient, a name.
struct FdCheck {
  std::vector<double>* x;
  const std::vector<double>* grad;
  std::string name;
};

// Central differences (loss(x + h) - loss(x - h)) / 2h of every element of every input against
// its analytic gradient, to tol * (1 + |gradient|). Stops at the first mismatch (fatal failure).
inline void expect_gradients_match_differences(const std::vector<FdCheck>& checks, const std::function<double()>& loss,
                                               double h, double tol) {
  for (const FdCheck& c : checks) {
    ASSERT_EQ(c.x->size(), c.grad->size()) << c.name;
    for (size_t i = 0; i < c.x->size(); ++i) {
      const double keep = (*c.x)[i];
      (*c.x)[i] = keep + h;
      const double lp = loss();
      (*c.x)[i] = keep - h;
      const double lm = loss();
      (*c.x)[i] = keep;
      ASSERT_NEAR((*c.grad)[i], (lp - lm) / (2 * h), tol * (1 + std::abs((*c.grad)[i]))) << c.name << "[" << i << "]";
    }
  }
}

// Expects f() to throw an exception whose message contains `needle` (errors must name the
// argument and its value).
inline void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one mentioning '" << needle << "'";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace longctx::testing
