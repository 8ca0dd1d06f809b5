// `longctx bench infini` driver; times library internals (attention/infini/memory.hpp: the memory pass alone).
#include "infini_bench.hpp"

#include <fmt/core.h>
#include <longctx/attention/dense/flash.hpp>
#include <longctx/attention/infini/infini.hpp>
#include <longctx/core/error.hpp>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>

#include "attention/infini/memory.hpp"
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

// Wall seconds and process CPU seconds (user + sys, all threads). On this shared machine other
// processes take cores away; CPU time per token is much less sensitive to that than wall time
// (it still includes OpenMP threads spinning at barriers).
struct Times {
  double wall = 0, cpu = 0;
};
class Stopwatch {
 public:
  Stopwatch() : wall0_(std::chrono::steady_clock::now()), cpu0_(cpu_now()) {}
  Times elapsed() const {
    return {std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0_).count(), cpu_now() - cpu0_};
  }

 private:
  static double cpu_now() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
  }
  std::chrono::steady_clock::time_point wall0_;
  double cpu0_;
};

// Wall and CPU time of the fastest of at least `reps` runs (and `min_seconds` in total).
Times fastest(const std::function<void()>& fn, int reps, double min_seconds) {
  Times best{1e300, 0};
  double total = 0;
  for (int r = 0; r < reps || total < min_seconds; ++r) {
    const Stopwatch sw;
    fn();
    const Times t = sw.elapsed();
    if (t.wall < best.wall) best = t;
    total += t.wall;
  }
  return best;
}

// Figures every case reports: wall tokens/s, tokens per CPU-second scaled by the thread count.
nlohmann::json timing_row(const char* kind, int64_t n, Times t, double flops) {
  const int threads = parallel::max_threads();
  return {{"case", kind},         {"seq_len", n},
          {"time_s", t.wall},     {"tokens_per_s", n / t.wall},
          {"cpu_s", t.cpu},       {"cpu_tokens_per_s", n * threads / t.cpu},
          {"gflops", flops / t.wall / 1e9}};
}

nlohmann::json stream_case(const InfiniBenchConfig& cfg, int64_t n) {
  LONGCTX_CHECK(n % cfg.chunk == 0 && cfg.window % cfg.chunk == 0,
                "bench infini: lengths and --window must be multiples of --chunk (", cfg.chunk, "), got ", n, " and ",
                cfg.window);
  // Two pre-generated chunks fed alternately: the input never exists as a whole, so the process
  // holds only the stream state, the chunks and one chunk's outputs.
  std::vector<Tensor> pool;
  for (uint64_t c = 0; c < 2; ++c)
    for (auto [heads, seed] : {std::pair{cfg.heads, 1}, {cfg.kv_heads, 2}, {cfg.kv_heads, 3}})
      pool.push_back(random_normal({cfg.chunk, heads, cfg.head_dim}, 10 * c + uint64_t(seed)));
  const std::vector<float> beta(size_t(cfg.heads), 0.0f);
  double checksum = 0, best = 1e300;
  std::vector<double> feeds;  // wall seconds of every feed() of the fastest run
  const Times t = fastest(
      [&] {
        std::vector<double> f;
        const Stopwatch run;
        InfiniStream stream(cfg.heads, cfg.kv_heads, cfg.head_dim, beta, options_of(cfg));
        for (int64_t pos = 0, i = 0; pos < n; pos += cfg.chunk, ++i) {
          const Tensor* c = &pool[size_t(3 * (i % 2))];
          const Stopwatch one;
          const Tensor out = stream.feed({c[0], c[1], c[2]});
          f.push_back(one.elapsed().wall);
          checksum += out.f32()[0];
        }
        const double total = run.elapsed().wall;
        if (total < best) best = total, feeds = f;
      },
      cfg.reps, cfg.min_seconds);
  const double flops = 4.0 * cfg.head_dim * cfg.heads * local_pairs(n, cfg.segment) + memory_flops_per_token(cfg) * n;
  nlohmann::json row = timing_row("infini-stream", n, t, flops);
  // The fastest feed among the first / last window of feeds: the per-token cost at the start and
  // at the end of the stream, each the best of the same number of samples, so the moments when
  // other processes leave the cores to us count equally at both ends.
  const size_t k = std::min(feeds.size(), size_t(cfg.window / cfg.chunk));
  row["best_feed_tps_first"] = double(cfg.chunk) / *std::min_element(feeds.begin(), feeds.begin() + k);
  row["best_feed_tps_last"] = double(cfg.chunk) / *std::min_element(feeds.end() - k, feeds.end());
  row["checksum"] = checksum;
  return row;
}

nlohmann::json dense_case(const InfiniBenchConfig& cfg, int64_t n) {
  const Tensor q = random_normal({n, cfg.heads, cfg.head_dim}, 1), k = random_normal({n, cfg.kv_heads, cfg.head_dim}, 2),
               v = random_normal({n, cfg.kv_heads, cfg.head_dim}, 3);
  const Times t = fastest([&] { flash_attention_forward(q, k, v); }, cfg.reps, cfg.min_seconds);
  return timing_row("dense-flash", n, t, 4.0 * cfg.head_dim * cfg.heads * (double(n) * (n + 1) / 2));
}

// The memory part alone (readout mixed into the output + update, every segment of one sequence),
// alternated with the sgemm peak measurement so both see the same machine load.
nlohmann::json memory_case(const InfiniBenchConfig& cfg, int64_t n) {
  const Tensor q = random_normal({n, cfg.heads, cfg.head_dim}, 1), k = random_normal({n, cfg.kv_heads, cfg.head_dim}, 2),
               v = random_normal({n, cfg.kv_heads, cfg.head_dim}, 3), local = random_normal({n, cfg.heads, cfg.head_dim}, 4);
  Tensor out({n, cfg.heads, cfg.head_dim});
  const attn::Problem p = attn::make_problem("bench infini", q, k, v, Varlen{}, AttentionOptions{});
  const attn::infini::MemoryPass mp{p, q, k, v, std::vector<float>(size_t(cfg.heads), 0.5f), cfg.segment,
                                    options_of(cfg).update};
  Times best{1e300, 0};
  double peak = 0;
  for (int r = 0; r < std::max(3, cfg.reps); ++r) {
    peak = std::max(peak, sgemm_gflops());
    const Times t = fastest([&] { attn::infini::memory_forward(mp, local, out.f32(), nullptr, nullptr); }, 1, 0.0);
    if (t.wall < best.wall) best = t;
  }
  nlohmann::json row = timing_row("infini-memory", n, best, memory_flops_per_token(cfg) * n);
  row["sgemm_interleaved"] = peak;
  row["frac_sgemm_interleaved"] = row["gflops"].get<double>() / peak;
  return row;
}

std::vector<std::string> worker_args(const InfiniBenchConfig& cfg, const std::string& kind, int64_t n) {
  return {"bench", "infini", "--worker", "--case", kind, "--case-length", std::to_string(n),
          "--heads", std::to_string(cfg.heads), "--kv-heads", std::to_string(cfg.kv_heads),
          "--head-dim", std::to_string(cfg.head_dim), "--segment", std::to_string(cfg.segment),
          "--chunk", std::to_string(cfg.chunk), "--window", std::to_string(cfg.window), "--update", cfg.update, "--threads", std::to_string(parallel::max_threads()),
          "--reps", std::to_string(cfg.reps), "--min-seconds", std::to_string(cfg.min_seconds)};
}

}  // namespace

void run_infini_bench(const InfiniBenchConfig& cfg, bool worker) {
  LONGCTX_CHECK(cfg.heads % cfg.kv_heads == 0, "bench infini: --heads (", cfg.heads, ") must be a multiple of --kv-heads (",
                cfg.kv_heads, ")");
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
  Progress progress("bench infini", "cases", 0);
  for (const auto& [kind, n] : cases) {
    nlohmann::json row = run_worker(worker_args(cfg, kind, n));
    progress.report(double(rows.size() + 1), double(cases.size()),
                    fmt::format("({} n={}: {:.3f} s, {:.0f} MB)", kind, n, row["time_s"].get<double>(),
                                row["peak_rss_mb"].get<double>()));
    row["frac_sgemm"] = row["gflops"].get<double>() / peak;
    rows.push_back(std::move(row));
  }
  // streamed lengths relative to the first (shortest) one: the constant-memory, linear-cost targets
  const nlohmann::json* first = nullptr;
  for (auto& r : rows)
    if (r["case"] == "infini-stream") {
      if (!first) first = &r;
      for (const char* key : {"tokens_per_s", "cpu_tokens_per_s", "peak_rss_mb"})
        r[std::string(key) + "_vs_first"] = r[key].get<double>() / (*first)[key].get<double>();
    }
  print_table(rows, {{"case", "case", ""}, {"seq_len", "seq_len", ""}, {"time_s", "time_s", "{:.3f}"},
                     {"tokens_per_s", "tok/s", "{:.0f}"}, {"cpu_tokens_per_s", "cpu_tok/s", "{:.0f}"},
                     {"gflops", "GFLOP/s", "{:.1f}"}, {"frac_sgemm", "of_sgemm", "{:.2f}"},
                     {"frac_sgemm_interleaved", "of_sgemm_near", "{:.2f}"}, {"peak_rss_mb", "peak_MB", "{:.0f}"},
                     {"tokens_per_s_vs_first", "tok/s_vs_1st", "{:.3f}"},
                     {"cpu_tokens_per_s_vs_first", "cpu_tok/s_vs_1st", "{:.3f}"},
                     {"peak_rss_mb_vs_first", "MB_vs_1st", "{:.3f}"},
                     {"best_feed_tps_first", "best_feed_1st", "{:.0f}"},
                     {"best_feed_tps_last", "best_feed_last", "{:.0f}"}});
  if (!cfg.json.empty()) write_json(cfg.json, machine_info(threads, Peaks{.sgemm_gflops = peak}), rows);
}

}  // namespace longctx::bench
