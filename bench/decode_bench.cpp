#include "decode_bench.hpp"

#include <fmt/core.h>
#include <longctx/core/threads.hpp>
#include <longctx/attention/cache/decode.hpp>
#include <longctx/attention/dense/flash.hpp>

#include <chrono>
#include <cmath>

#include <random>

#include "common.hpp"

namespace longctx::bench {

namespace {

// Synthetic cache content with structure (so the threshold method has something to find):
// keys = a random centre per 64-token run and KV head + noise; values random. Queries aim at the
// centres of a few random earlier runs. Cheap to build at 1M tokens (a fixed noise table).
struct Source {
  int hkv, hq, d;
  std::vector<float> noise;  // 4096 tokens x Hkv x d
  std::mt19937_64 rng{7};
  std::normal_distribution<float> nd{0.0f, 1.0f};
  std::vector<std::vector<float>> centres;  // per run of 64 tokens

  const std::vector<float>& centre(int64_t run) {
    while (int64_t(centres.size()) <= run) {
      std::vector<float> c(size_t(hkv) * d);
      for (float& x : c) x = nd(rng);
      centres.push_back(std::move(c));
    }
    return centres[size_t(run)];
  }
  void fill(KVCache& cache, int64_t n, DType dt) {
    const int64_t chunk = 4096;
    if (noise.empty()) {
      noise.resize(size_t(chunk) * hkv * d);
      for (float& x : noise) x = 0.3f * nd(rng);
    }
    Tensor k({chunk, hkv, d}), v({chunk, hkv, d});
    for (int64_t t0 = 0; t0 < n; t0 += chunk) {
      const int64_t len = std::min(chunk, n - t0);
      for (int64_t i = 0; i < len; ++i) {
        const std::vector<float>& c = centre((t0 + i) / 64);
        for (int64_t e = 0; e < int64_t(hkv) * d; ++e) {
          k.f32()[i * hkv * d + e] = c[size_t(e)] + noise[size_t((((t0 / chunk) * 31 + i) % chunk) * hkv * d + e)];
          v.f32()[i * hkv * d + e] = noise[size_t((i * 7 + 13) % chunk * hkv * d + e)] * 3.0f;
        }
      }
      if (len < chunk) {
        Tensor kt({len, hkv, d}), vt({len, hkv, d});
        std::copy_n(k.f32(), kt.numel(), kt.f32());
        std::copy_n(v.f32(), vt.numel(), vt.f32());
        cache.append(kt.to(dt), vt.to(dt));
      } else {
        cache.append(k.to(dt), v.to(dt));
      }
    }
  }
  Tensor queries(int64_t q_len, int64_t n, DType dt) {
    Tensor q({q_len, hq, d});
    for (int64_t t = 0; t < q_len; ++t)
      for (int h = 0; h < hq; ++h) {
        float* x = q.f32() + (t * hq + h) * d;
        for (int c = 0; c < d; ++c) x[c] = 0.3f * nd(rng);
        for (int e = 0; e < 2; ++e) {
          const int64_t run = std::uniform_int_distribution<int64_t>(0, (n - 1) / 64)(rng);
          const std::vector<float>& c = centre(run);
          for (int i = 0; i < d; ++i) x[i] += 1.5f * c[size_t((h / (hq / hkv)) * d + i)];
        }
      }
    return q.to(dt);
  }
};

// A method's spec: "dense" (full attention), moba, topk, threshold; "moba/group" and
// "topk/group" are the method with group-shared selection (group_select).
AttentionSpec spec_of(const std::string& method, const DecodeBenchConfig& cfg) {
  const std::string base = method.substr(0, method.find("/group"));
  const bool group = base.size() < method.size();
  LONGCTX_CHECK(!group || base == "moba" || base == "topk", "bench decode: '/group' applies to moba and topk, got '",
                method, "'");
  if (base == "dense") return AttentionSpec{};
  switch (attention_kind_from_name(base)) {
    case AttentionKind::moba: {
      MobaOptions o = cfg.moba;
      o.group_select = o.group_select || group;
      return o;
    }
    case AttentionKind::topk: {
      TopkOptions o = cfg.topk;
      o.group_select = o.group_select || group;
      return o;
    }
    case AttentionKind::threshold: return cfg.threshold;
    default: LONGCTX_CHECK(false, "bench decode: unknown method '", method, "' (dense, moba, topk, threshold)");
  }
  return {};
}

}  // namespace

void run_decode_bench(const DecodeBenchConfig& cfg) {
  LONGCTX_CHECK(cfg.moba.key_conv == 0, "bench decode: --key-conv is not timed here (a decode step convolves one key "
                "before the attention over the cache), got ", cfg.moba.key_conv);
  const int threads = parallel::max_threads();
  const double gflops = sgemm_gflops();
  const DType dt = cfg.dtype == "bf16" ? DType::bf16 : DType::f32;
  std::vector<nlohmann::json> rows;
  Progress progress("bench decode", "cases", 0);
  const double cases = double(cfg.lengths.size() * cfg.methods.size());
  double done = 0;
  for (const int64_t n : cfg.lengths) {
    KVCache cache({n, cfg.kv_heads, cfg.head_dim, cfg.moba.block_size, dt});
    Source src{cfg.kv_heads, cfg.heads, cfg.head_dim, {}};
    src.fill(cache, n, dt);
    const double kv_bytes = 2.0 * double(n) * cfg.kv_heads * cfg.head_dim * double(dtype_size(dt));
    const double stream = stream_read_gbps(size_t(kv_bytes));
    const Tensor q1 = src.queries(1, n, dt);
    const int64_t chunk = std::min(cfg.chunk, n);
    const Tensor qc = src.queries(chunk, n, dt);
    double dense_tps = 0, dense_chunk_tps = 0;
    for (const std::string& method : cfg.methods) {
      const AttentionSpec spec = spec_of(method, cfg);
      SparseResult r;
      const double t = time_best([&] { r = attention_over_cache(q1, cache, spec); }, 3, cfg.min_seconds);
      nlohmann::json row{{"cache_len", n},      {"method", method},         {"mode", "decode"},
                         {"ms", t * 1e3},       {"tokens_per_s", 1.0 / t},  {"keys_mean", r.mean_keys},
                         {"keys_max", r.max_keys}, {"stream_gbps", stream}};
      if (method == "dense") {
        dense_tps = 1.0 / t;
        row["gbps"] = kv_bytes / t / 1e9;
        row["bw_fraction"] = kv_bytes / t / 1e9 / stream;
      }
      if (dense_tps > 0) row["speedup"] = (1.0 / t) / dense_tps;
      rows.push_back(row);
      progress.report(++done, cases, fmt::format("(decode n={} {}: {:.3f} ms)", n, method, t * 1e3));
      if (n > cfg.chunk_max_length) continue;
      // The last `chunk` tokens of the cache as one chunked-prefill call.
      const double tc = time_best([&] { r = attention_over_cache(qc, cache, spec); }, 1, cfg.min_seconds);
      nlohmann::json crow{{"cache_len", n},          {"method", method},           {"mode", fmt::format("chunk{}", chunk)},
                          {"ms", tc * 1e3},          {"tokens_per_s", chunk / tc}, {"keys_mean", r.mean_keys},
                          {"keys_max", r.max_keys}};
      if (method == "dense") dense_chunk_tps = chunk / tc;
      if (dense_chunk_tps > 0) crow["speedup"] = (chunk / tc) / dense_chunk_tps;
      rows.push_back(crow);
    }
  }
  fmt::print("sgemm peak: {:.1f} GFLOP/s on {} threads; cache {} x {} KV heads x d={} ({}), {} q heads; "
             "moba/topk B={} k={}, threshold tau={} (bound rule, B={})\n",
             gflops, threads, cfg.dtype, cfg.kv_heads, cfg.head_dim, cfg.dtype, cfg.heads, cfg.moba.block_size,
             cfg.moba.top_k, cfg.threshold.tau, cfg.threshold.block_size);
  print_table(rows, {{"cache_len", "cache", "{:.0f}"},
                     {"mode", "mode", "%s"},
                     {"method", "method", "%s"},
                     {"ms", "ms/call", "{:.3f}"},
                     {"tokens_per_s", "tokens/s", "{:.1f}"},
                     {"speedup", "x dense", "{:.2f}"},
                     {"keys_mean", "keys mean", "{:.0f}"},
                     {"keys_max", "keys max", "{:.0f}"},
                     {"gbps", "GB/s", "{:.2f}"},
                     {"stream_gbps", "stream GB/s", "{:.2f}"},
                     {"bw_fraction", "of stream", "{:.2f}"}});
  if (!cfg.json.empty()) write_json(cfg.json, machine_info(threads, Peaks{.sgemm_gflops = gflops}), rows);
}

namespace {
// ||a - b||_F / ||b||_F
double frobenius_rel_error(const Tensor& a, const Tensor& b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.f32()[i], y = b.f32()[i];
    num += (x - y) * (x - y);
    den += y * y;
  }
  return std::sqrt(num / den);
}
}  // namespace

void run_threshold_bench(const ThresholdBenchConfig& cfg) {
  const int64_t n = cfg.length, nq = std::min(cfg.queries, cfg.length);
  KVCache cache({n, cfg.kv_heads, cfg.head_dim, cfg.block_size, DType::f32});
  Source src{cfg.kv_heads, cfg.heads, cfg.head_dim, {}};
  src.fill(cache, n, DType::f32);
  const Tensor q = src.queries(nq, n, DType::f32);
  const Varlen vl = Varlen::from_lengths({nq}, {n});
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  const AttentionResult dense = flash_attention_forward(q, cache.keys(), cache.values(), vl);
  const double dense_s = std::chrono::duration<double>(clock::now() - t0).count();
  const double causal_keys = double(n) - double(nq - 1) / 2.0;  // mean visible keys of the queries
  std::vector<nlohmann::json> rows{{{"method", "dense"}, {"param", "-"}, {"rel_err", 0.0}, {"keys_frac", 1.0},
                                    {"keys_max_frac", 1.0}, {"seconds", dense_s}}};
  auto add = [&](const std::string& method, const std::string& param, const SparseResult& r, double secs) {
    rows.push_back({{"method", method},
                    {"param", param},
                    {"rel_err", frobenius_rel_error(r.out, dense.out)},
                    {"keys_frac", r.mean_keys / causal_keys},
                    {"keys_max_frac", double(r.max_keys) / double(n)},
                    {"seconds", secs}});
    fmt::print(stderr, "{} {}: done\n", method, param);
  };
  for (float tau : cfg.taus)
    for (StopRule rule : {StopRule::bound, StopRule::heuristic}) {
      t0 = clock::now();
      const SparseResult r = threshold_attention_forward(q, cache.keys(), cache.values(), vl,
                                                         {cfg.block_size, tau, rule, 0.0f});
      add(fmt::format("threshold/{}", enum_name(rule)), fmt::format("tau={}", tau), r,
          std::chrono::duration<double>(clock::now() - t0).count());
    }
  for (int64_t k : cfg.top_ks) {
    t0 = clock::now();
    const SparseResult r = topk_attention_forward(q, cache.keys(), cache.values(), vl, {cfg.block_size, k, false, 0.0f});
    add("topk", fmt::format("k={}", k), r, std::chrono::duration<double>(clock::now() - t0).count());
  }
  fmt::print("structured synthetic source: N={}, last {} queries, {} q heads / {} kv heads, d={}, B={}; keys in "
             "runs of 64 around a random centre (noise 0.3), queries = 1.5 x two random past centres + noise 0.3\n",
             n, nq, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.block_size);
  print_table(rows, {{"method", "method", ""},
                     {"param", "param", ""},
                     {"rel_err", "rel_err(F)", "{:.4f}"},
                     {"keys_frac", "keys_mean/causal", "{:.3f}"},
                     {"keys_max_frac", "keys_max/N", "{:.3f}"},
                     {"seconds", "seconds", "{:.2f}"}});
  if (!cfg.json.empty()) write_json(cfg.json, machine_info(parallel::max_threads(), Peaks{}), rows);
}

}  // namespace longctx::bench
