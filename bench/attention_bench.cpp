// `longctx bench attention` (reads library internals, core/gemm.hpp, to name the GEMM kernels in use):
// kernel time, GFLOP/s and fractions of the peaks measured in the same run.
#include <fmt/core.h>
#include <longctx/core/threads.hpp>
#include <longctx/core/error.hpp>

#include <cstdio>

#include "attention_methods.hpp"
#include "common.hpp"
#include "core/gemm.hpp"
#include "option_flags.hpp"

namespace longctx::bench {

namespace {

// Forward counts 4*d flops per attended pair (Q K^T and P V); backward 2.5x that.
double flops_per_pair(const AttentionBenchConfig& cfg) { return 4.0 * cfg.head_dim * (cfg.backward ? 3.5 : 1.0); }

nlohmann::json run_case(const AttentionBenchConfig& cfg) {
  const std::string& method = cfg.methods.at(0);
  const int64_t n = cfg.lengths.at(0);
  const auto it = attention_methods().find(method);
  LONGCTX_CHECK(it != attention_methods().end(), "bench attention: unknown method '", method, "'");
  const DType dt = cfg.dtype == "bf16" ? DType::bf16 : DType::f32;
  const int64_t total = n * cfg.batch, q_len = cfg.decode ? 1 : n, total_q = q_len * cfg.batch;
  AttentionInputs in{random_normal({total_q, cfg.heads, cfg.head_dim}, 1, 1.0f, dt),
                     random_normal({total, cfg.kv_heads, cfg.head_dim}, 2, 1.0f, dt),
                     random_normal({total, cfg.kv_heads, cfg.head_dim}, 3, 1.0f, dt),
                     random_normal({total_q, cfg.heads, cfg.head_dim}, 4),
                     Varlen::from_lengths(std::vector<int64_t>(size_t(cfg.batch), q_len),
                                          std::vector<int64_t>(size_t(cfg.batch), n))};
  const MethodRun m = it->second(in, cfg);
  const double t = time_best(m.run, cfg.reps, cfg.min_seconds);
  nlohmann::json row{{"method", method},  {"seq_len", n},          {"batch", cfg.batch},
                     {"time_s", t},       {"attended_pairs", m.attended_pairs},
                     {"gflops", m.attended_pairs * flops_per_pair(cfg) / t / 1e9}};
  if (cfg.decode) row["tokens_per_s"] = cfg.batch / t;
  for (auto& [k, v] : m.extra.items()) row[k] = v;
  return row;
}

std::vector<std::string> worker_args(const AttentionBenchConfig& cfg, const std::string& method, int64_t n) {
  std::vector<std::string> args{"bench", "attention", "--worker", "--methods", method, "--lengths", std::to_string(n),
                                "--batch", std::to_string(cfg.batch), "--heads", std::to_string(cfg.heads),
                                "--kv-heads", std::to_string(cfg.kv_heads), "--head-dim", std::to_string(cfg.head_dim),
                                "--mode", cfg.backward ? "fwdbwd" : cfg.decode ? "decode" : "fwd", "--dtype", cfg.dtype,
                                "--threads", std::to_string(parallel::max_threads()), "--reps", std::to_string(cfg.reps),
                                "--min-seconds", std::to_string(cfg.min_seconds)};
  for (const auto& a : option_args("", cfg.moba, cfg.topk, cfg.threshold)) args.push_back(a);
  for (const auto& a : option_args("nsa-", cfg.nsa)) args.push_back(a);
  return args;
}

}  // namespace

void run_attention_bench(const AttentionBenchConfig& cfg, bool worker) {
  LONGCTX_CHECK(!cfg.methods.empty() && !cfg.lengths.empty(), "bench attention: need at least one method and length");
  for (const auto& m : cfg.methods)
    LONGCTX_CHECK(attention_methods().count(m), "bench attention: unknown method '", m, "'");
  LONGCTX_CHECK(cfg.heads % cfg.kv_heads == 0, "bench attention: query heads (", cfg.heads,
                ") must be a multiple of kv heads (", cfg.kv_heads, ")");
  // the chosen methods' options are checked here, before any worker starts
  for (const auto& m : cfg.methods) {
    const std::string prefix = "bench attention: ";
    if (m == "moba") cfg.moba.validate(prefix);
    LONGCTX_CHECK(m != "moba" || !cfg.decode || cfg.moba.key_conv == 0, prefix,
                  "--key-conv is not timed in decode mode (a step convolves one key), got ", cfg.moba.key_conv);
    if (m == "topk") cfg.topk.validate(prefix);
    if (m == "threshold") cfg.threshold.validate(prefix);
    if (m == "nsa") cfg.nsa.validate(prefix);
  }
  if (worker) {
    std::puts(run_case(cfg).dump().c_str());
    return;
  }
  const int threads = parallel::max_threads();
  Peaks peaks = measure_peaks(false);
  fmt::print("{} x {} q heads / {} kv heads, d={}, {}, {}, {} threads\n", cfg.batch, cfg.heads, cfg.kv_heads,
             cfg.head_dim, cfg.backward ? "forward+backward" : cfg.decode ? "decode step" : "forward", cfg.dtype, threads);
  std::vector<nlohmann::json> rows;
  Progress progress("bench attention", "cases", 0);
  const double cases = double(cfg.lengths.size() * cfg.methods.size());
  for (int64_t n : cfg.lengths) {
    std::vector<nlohmann::json> same_len;
    for (const auto& m : cfg.methods) {
      nlohmann::json row = run_worker(worker_args(cfg, m, n));
      progress.report(double(rows.size() + same_len.size() + 1), cases,
                      fmt::format("({} n={}: {:.4f} s)", m, n, row["time_s"].get<double>()));
      same_len.push_back(std::move(row));
    }
    // speedups against dense at the same shape, when dense ran
    for (auto& r : same_len)
      for (const auto& d : same_len)
        if (d["method"] == "dense") {
          r["speedup"] = d["time_s"].get<double>() / r["time_s"].get<double>();
          r["ideal_speedup"] = d["attended_pairs"].get<double>() / r["attended_pairs"].get<double>();
          r["frac_of_ideal"] = r["speedup"].get<double>() / r["ideal_speedup"].get<double>();
        }
    for (auto& r : same_len) rows.push_back(std::move(r));
  }
  // The peak is measured before and after the cases; the higher one is the less disturbed (the
  // machine is shared), and using it keeps the fractions conservative.
  peaks = peaks.max(measure_peaks(false));
  // bf16 storage runs the tile products on bf16 inputs: judged against the bf16 dot peak.
  const double peak = cfg.dtype == "bf16" && peaks.bf16_gflops > 0 ? peaks.bf16_gflops : peaks.fma_gflops;
  fmt::print(
      "peaks (same run, {} threads): fp32 FMA {:.0f}, bf16 dot {:.0f}, sgemm {:.0f} ({}), OpenBLAS sgemm {:.0f} "
      "GFLOP/s\n",
      threads, peaks.fma_gflops, peaks.bf16_gflops, peaks.sgemm_gflops, gemm::describe(), peaks.openblas_sgemm_gflops);
  for (auto& r : rows) {
    r["frac_sgemm"] = r["gflops"].get<double>() / peaks.sgemm_gflops;
    r["frac_peak"] = r["gflops"].get<double>() / peak;
  }
  std::vector<Column> columns{{"method", "method", ""},
                              {"seq_len", "seq_len", ""},
                              {"time_s", "time_s", "{:.4f}"},
                              {"gflops", "GFLOP/s", "{:.1f}"},
                              {"frac_peak", "of_peak", "{:.2f}"},
                              {"frac_sgemm", "of_sgemm", "{:.2f}"},
                              {"speedup", "speedup", "{:.2f}"},
                              {"ideal_speedup", "ideal", "{:.2f}"},
                              {"frac_of_ideal", "of_ideal", "{:.2f}"},
                              {"keys_frac", "keys_frac", "{:.3f}"},
                              {"peak_rss_mb", "peak_MB", "{:.0f}"}};
  if (cfg.decode) columns.insert(columns.begin() + 3, {"tokens_per_s", "tok/s", "{:.1f}"});
  print_table(rows, columns);
  if (!cfg.json.empty()) write_json(cfg.json, machine_info(threads, peaks), rows);
}

}  // namespace longctx::bench
