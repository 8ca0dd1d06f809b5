#include "infini_bench.hpp"

#include <fmt/core.h>
#include <longctx/attention/flash.hpp>
#include <longctx/attention/infini.hpp>
#include <longctx/error.hpp>

#include <cstdio>

#include "attention/infini_memory.hpp"
#include "common.hpp"
#include "core/parallel.hpp"

namespace longctx::bench {

namespace {

InfiniOptions options_of(const InfiniBenchConfig& cfg) {
  InfiniOptions o;
  o.segment_len = cfg.segment;
  o.update = cfg.update == "delta" ? InfiniUpdate::delta : InfiniUpdate::linear;
  return o;
}

// GEMM flops of the memory part per token: readout sigma(q) M per query head (2 d^2), update
// sigma(K)^T V per KV head (2 d^2; the delta rule's retrieval sigma(K) M doubles it).
double memory_flops_per_token(const InfiniBenchConfig& cfg) {
  const double dd = double(cfg.head_dim) * cfg.head_dim;
  return 2.0 * dd * cfg.heads + 2.0 * dd * cfg.kv_heads * (cfg.update == "delta" ? 2 : 1);
}

// Causal (query, key) pairs per head of n tokens split into segments of `segment`.
double local_pairs(int64_t n, int64_t segment) {
  double pairs = 0;
  for (int64_t a = 0; a < n; a += segment) {
    const double m = double(std::min(segment, n - a));
    pairs += m * (m + 1) / 2;
  }
  return pairs;
}

nlohmann::json stream_case(const InfiniBenchConfig& cfg, int64_t n) {
  // Two pre-generated chunks fed alternately: the input never exists as a whole, so the process
  // holds only the stream state, the chunks and one chunk's outputs.
  std::vector<Tensor> pool;
  for (uint64_t c = 0; c < 2; ++c)
    for (auto [heads, seed] : {std::pair{cfg.heads, 1}, {cfg.kv_heads, 2}, {cfg.kv_heads, 3}})
      pool.push_back(random_tensor({cfg.chunk, heads, cfg.head_dim}, 10 * c + uint64_t(seed)));
  const std::vector<float> beta(size_t(cfg.heads), 0.0f);
  double checksum = 0;
  const double t = time_best(
      [&] {
        InfiniStream stream(cfg.heads, cfg.kv_heads, cfg.head_dim, beta, options_of(cfg));
        for (int64_t pos = 0, i = 0; pos < n; pos += cfg.chunk, ++i) {
          const Tensor* c = &pool[size_t(3 * (i % 2))];
          const Tensor out = stream.feed({c[0], c[1], c[2]});
          checksum += out.f32()[0];
        }
      },
      cfg.reps, cfg.min_seconds);
  const double flops = 4.0 * cfg.head_dim * cfg.heads * local_pairs(n, cfg.segment) + memory_flops_per_token(cfg) * n;
  return {{"case", "infini-stream"}, {"seq_len", n},      {"time_s", t},
          {"tokens_per_s", n / t},   {"gflops", flops / t / 1e9}, {"checksum", checksum}};
}

nlohmann::json dense_case(const InfiniBenchConfig& cfg, int64_t n) {
  const Tensor q = random_tensor({n, cfg.heads, cfg.head_dim}, 1), k = random_tensor({n, cfg.kv_heads, cfg.head_dim}, 2),
               v = random_tensor({n, cfg.kv_heads, cfg.head_dim}, 3);
  const double t = time_best([&] { flash_attention_forward(q, k, v); }, cfg.reps, cfg.min_seconds);
  const double flops = 4.0 * cfg.head_dim * cfg.heads * (double(n) * (n + 1) / 2);
  return {{"case", "dense-flash"}, {"seq_len", n}, {"time_s", t}, {"tokens_per_s", n / t}, {"gflops", flops / t / 1e9}};
}

// The memory part alone (readout mixed into the output + update, every segment of one sequence).
nlohmann::json memory_case(const InfiniBenchConfig& cfg, int64_t n) {
  const Tensor q = random_tensor({n, cfg.heads, cfg.head_dim}, 1), k = random_tensor({n, cfg.kv_heads, cfg.head_dim}, 2),
               v = random_tensor({n, cfg.kv_heads, cfg.head_dim}, 3), local = random_tensor({n, cfg.heads, cfg.head_dim}, 4);
  Tensor out({n, cfg.heads, cfg.head_dim});
  const attn::Problem p = attn::make_problem("bench infini", q, k, v, Varlen{}, AttentionOptions{});
  const attn::infini::MemoryPass mp{p, q, k, v, std::vector<float>(size_t(cfg.heads), 0.5f), cfg.segment,
                                    options_of(cfg).update};
  const double t = time_best([&] { attn::infini::memory_forward(mp, local, out.f32(), nullptr, nullptr); }, cfg.reps,
                             cfg.min_seconds);
  return {{"case", "infini-memory"}, {"seq_len", n}, {"time_s", t}, {"tokens_per_s", n / t},
          {"gflops", memory_flops_per_token(cfg) * n / t / 1e9}};
}

std::vector<std::string> worker_args(const InfiniBenchConfig& cfg, const std::string& kind, int64_t n) {
  return {"bench", "infini", "--worker", "--case", kind, "--case-length", std::to_string(n),
          "--heads", std::to_string(cfg.heads), "--kv-heads", std::to_string(cfg.kv_heads),
          "--head-dim", std::to_string(cfg.head_dim), "--segment", std::to_string(cfg.segment),
          "--chunk", std::to_string(cfg.chunk), "--update", cfg.update, "--threads", std::to_string(cfg.threads),
          "--reps", std::to_string(cfg.reps), "--min-seconds", std::to_string(cfg.min_seconds)};
}

}  // namespace

void run_infini_bench(const InfiniBenchConfig& cfg, bool worker) {
  LONGCTX_CHECK(cfg.heads % cfg.kv_heads == 0, "bench infini: --heads (", cfg.heads, ") must be a multiple of --kv-heads (",
                cfg.kv_heads, ")");
  if (cfg.threads > 0) parallel::set_threads(cfg.threads);
  if (worker) {
    const int64_t n = cfg.case_length;
    LONGCTX_CHECK(n > 0, "bench infini: --case-length must be > 0, got ", n);
    nlohmann::json row;
    if (cfg.case_kind == "stream") row = stream_case(cfg, n);
    else if (cfg.case_kind == "dense") row = dense_case(cfg, n);
    else if (cfg.case_kind == "memory") row = memory_case(cfg, n);
    else LONGCTX_CHECK(false, "bench infini: unknown --case '", cfg.case_kind, "'");
    std::puts(row.dump().c_str());
    return;
  }
  const int threads = parallel::max_threads();
  const double peak = sgemm_gflops();
  fmt::print("sgemm peak: {:.1f} GFLOP/s on {} threads; {} q heads / {} kv heads, d={}, segment {}, chunk {}, {} update\n",
             peak, threads, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.segment, cfg.chunk, cfg.update);
  std::vector<std::pair<std::string, int64_t>> cases;
  for (int64_t n : cfg.lengths) cases.push_back({"stream", n});
  if (cfg.memory_length > 0) cases.push_back({"memory", cfg.memory_length});
  for (int64_t n : cfg.dense_lengths) cases.push_back({"dense", n});

  std::vector<nlohmann::json> rows;
  for (const auto& [kind, n] : cases) {
    nlohmann::json row = run_worker(worker_args(cfg, kind, n));
    fmt::print(stderr, "  {} n={}: {:.3f} s, {:.0f} MB\n", kind, n, row["time_s"].get<double>(),
               row["peak_rss_mb"].get<double>());
    row["frac_sgemm"] = row["gflops"].get<double>() / peak;
    rows.push_back(std::move(row));
  }
  // streamed lengths relative to the first (shortest) one: the constant-memory, linear-cost targets
  const nlohmann::json* first = nullptr;
  for (auto& r : rows)
    if (r["case"] == "infini-stream") {
      if (!first) first = &r;
      r["tps_vs_first"] = r["tokens_per_s"].get<double>() / (*first)["tokens_per_s"].get<double>();
      r["rss_vs_first"] = r["peak_rss_mb"].get<double>() / (*first)["peak_rss_mb"].get<double>();
    }
  print_table(rows, {{"case", "case", ""}, {"seq_len", "seq_len", ""}, {"time_s", "time_s", "{:.3f}"},
                     {"tokens_per_s", "tokens/s", "{:.0f}"}, {"gflops", "GFLOP/s", "{:.1f}"},
                     {"frac_sgemm", "of_sgemm", "{:.2f}"}, {"peak_rss_mb", "peak_MB", "{:.0f}"},
                     {"tps_vs_first", "tok/s_vs_first", "{:.3f}"}, {"rss_vs_first", "MB_vs_first", "{:.3f}"}});
  if (!cfg.json.empty()) write_json(cfg.json, machine_info(threads, peak), rows);
}

}  // namespace longctx::bench
