// `longctx bench exp` driver; times a library internal (core/simd.hpp: exp_scaled_sum under each
// simd::ExpImpl).
#include "exp_bench.hpp"

#include <fmt/core.h>
#include <longctx/attention/dense/flash.hpp>
#include <longctx/attention/engine/reference.hpp>
#include <longctx/core/error.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "common.hpp"
#include "core/parallel.hpp"
#include "core/simd.hpp"

namespace longctx::bench {

namespace {

constexpr simd::ExpImpl kImpls[] = {simd::ExpImpl::poly6, simd::ExpImpl::poly3};
const char* name_of(simd::ExpImpl e) { return e == simd::ExpImpl::poly3 ? "poly3" : "poly6"; }

// Runs fn with `impl` selected, then restores the default.
template <class F>
auto with_exp(simd::ExpImpl impl, F&& fn) {
  struct Restore {
    ~Restore() { simd::set_exp_impl(simd::ExpImpl::poly6); }
  } restore;
  simd::set_exp_impl(impl);
  return fn();
}

// Relative error of the exp loop against std::exp over the softmax's range [-87.3, 0] (scores
// minus their row max, down to where exp underflows to 0), on a grid of 2^23 points.
nlohmann::json accuracy_row(simd::ExpImpl impl) {
  const int64_t n = int64_t(1) << 23;
  const double lo = -87.3;
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) x[size_t(i)] = float(lo * double(i) / double(n - 1));
  std::vector<float> e = x;
  with_exp(impl, [&] { return simd::exp_scaled_sum(e.data(), n, 1.0f, 0.0f); });
  double worst = 0, sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double want = std::exp(double(x[size_t(i)])), err = std::abs(double(e[size_t(i)]) - want) / want;
    worst = std::max(worst, err);
    sum += err;
  }
  return {{"case", "exp"}, {"exp", name_of(impl)}, {"max_rel_err", worst}, {"mean_rel_err", sum / double(n)}};
}

}  // namespace

void run_exp_bench(const ExpBenchConfig& cfg) {
  LONGCTX_CHECK(cfg.elements > 0 && cfg.length > 0, "bench exp: --elements and --length must be > 0, got ", cfg.elements,
                " and ", cfg.length);
  LONGCTX_CHECK(cfg.heads % cfg.kv_heads == 0, "bench exp: --heads (", cfg.heads, ") must be a multiple of --kv-heads (",
                cfg.kv_heads, ")");
  LONGCTX_CHECK(cfg.rounds >= 1, "bench exp: --rounds must be >= 1, got ", cfg.rounds);
  std::vector<nlohmann::json> exp_rows, attn_rows;
  for (simd::ExpImpl impl : kImpls) exp_rows.push_back(accuracy_row(impl));

  // The exp loop on one thread (each attention thread runs its own), in place: x <- exp(-x) keeps
  // the values finite (they settle near 0.567), and the loop is branch-free, so its cost does not
  // depend on them.
  std::vector<float> buf(static_cast<size_t>(cfg.elements));
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = float(i % 997) / 997.0f;
  // Dense causal attention over one sequence, on all threads, and its float64 reference.
  const Tensor q = random_normal({cfg.length, cfg.heads, cfg.head_dim}, 1),
               k = random_normal({cfg.length, cfg.kv_heads, cfg.head_dim}, 2),
               v = random_normal({cfg.length, cfg.kv_heads, cfg.head_dim}, 3);
  fmt::print("bench exp: float64 reference of dense attention at {} tokens...\n", cfg.length);
  std::fflush(stdout);
  const reference::Shape shape{cfg.length, cfg.length, cfg.heads, cfg.kv_heads, cfg.head_dim};
  auto as_double = [](const Tensor& t) { return std::vector<double>(t.f32(), t.f32() + t.numel()); };
  std::vector<double> ref_out, ref_lse;
  reference::attention_forward<double>(shape, as_double(q), as_double(k), as_double(v), 1.0 / std::sqrt(double(cfg.head_dim)),
                                       reference::dense_mask(shape, Varlen{}, AttentionOptions{}), ref_out, ref_lse);

  double exp_best[2] = {1e300, 1e300}, attn_best[2] = {1e300, 1e300};
  AttentionResult results[2];
  for (int r = 0; r < cfg.rounds; ++r)
    for (int i = 0; i < 2; ++i)
      with_exp(kImpls[i], [&] {
        exp_best[i] = std::min(exp_best[i], time_best([&] {
                                 volatile float s = simd::exp_scaled_sum(buf.data(), cfg.elements, -1.0f, 0.0f);
                                 (void)s;
                               }, 1000, cfg.min_seconds));
        attn_best[i] = std::min(attn_best[i], time_best([&] { results[i] = flash_attention_forward(q, k, v); }, 1,
                                                        cfg.min_seconds));
        return 0;
      });
  const double flops = 4.0 * cfg.head_dim * cfg.heads * (double(cfg.length) * double(cfg.length + 1) / 2);
  for (int i = 0; i < 2; ++i) {
    exp_rows[size_t(i)]["elements_per_s"] = double(cfg.elements) / exp_best[i];
    exp_rows[size_t(i)]["speed_vs_poly6"] = exp_best[0] / exp_best[i];
    double out_err = 0, out_max = 0, lse_err = 0;
    for (size_t j = 0; j < ref_out.size(); ++j) {
      out_err = std::max(out_err, std::abs(double(results[i].out.f32()[j]) - ref_out[j]));
      out_max = std::max(out_max, std::abs(ref_out[j]));
    }
    for (size_t j = 0; j < ref_lse.size(); ++j) lse_err = std::max(lse_err, std::abs(double(results[i].lse.f32()[j]) - ref_lse[j]));
    attn_rows.push_back({{"case", "dense-fwd"}, {"exp", name_of(kImpls[i])}, {"seq_len", cfg.length},
                         {"time_s", attn_best[i]}, {"gflops", flops / attn_best[i] / 1e9},
                         {"speed_vs_poly6", attn_best[0] / attn_best[i]}, {"out_max_abs_err", out_err},
                         {"out_rel_err", out_err / out_max}, {"lse_max_abs_err", lse_err}});
  }
  fmt::print("exp loop: {} elements on 1 thread; dense forward: {} q heads / {} kv heads, d={}, {} threads\n",
             cfg.elements, cfg.heads, cfg.kv_heads, cfg.head_dim, parallel::max_threads());
  print_table(exp_rows, {{"case", "case", ""}, {"exp", "exp", ""}, {"max_rel_err", "max_rel_err", "{:.2e}"},
                         {"mean_rel_err", "mean_rel_err", "{:.2e}"}, {"elements_per_s", "elem/s", "{:.3e}"},
                         {"speed_vs_poly6", "vs_poly6", "{:.3f}"}});
  print_table(attn_rows, {{"case", "case", ""}, {"exp", "exp", ""}, {"seq_len", "seq_len", ""},
                          {"time_s", "time_s", "{:.4f}"}, {"gflops", "GFLOP/s", "{:.1f}"},
                          {"speed_vs_poly6", "vs_poly6", "{:.3f}"}, {"out_max_abs_err", "out_max_err", "{:.2e}"},
                          {"out_rel_err", "out_rel_err", "{:.2e}"}, {"lse_max_abs_err", "lse_max_err", "{:.2e}"}});
  if (!cfg.json.empty()) {
    std::vector<nlohmann::json> rows = exp_rows;
    rows.insert(rows.end(), attn_rows.begin(), attn_rows.end());
    write_json(cfg.json, machine_info(parallel::max_threads(), Peaks{}), rows);
  }
}

}  // namespace longctx::bench
