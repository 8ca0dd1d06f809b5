#include "decode_bench.hpp"

#include <fmt/core.h>
#include <longctx/core/threads.hpp>
#include <longctx/attention/cache/cascade_pruning.hpp>
#include <longctx/attention/cache/decode.hpp>
#include <longctx/attention/dense/flash.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
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
  void fill(KVCache& cache, int64_t n) {
    const int64_t chunk = 4096;
    if (noise.empty()) {
      noise.resize(size_t(chunk) * hkv * d);
      for (float& x : noise) x = 0.3f * nd(rng);
    }
    for (int64_t t0 = 0; t0 < n; t0 += chunk) {
      const int64_t len = std::min(chunk, n - t0);
      Tensor k({len, hkv, d}), v({len, hkv, d});
      for (int64_t i = 0; i < len; ++i) {
        const std::vector<float>& c = centre((t0 + i) / 64);
        for (int64_t e = 0; e < int64_t(hkv) * d; ++e) {
          k.f32()[i * hkv * d + e] = c[size_t(e)] + noise[size_t((((t0 / chunk) * 31 + i) % chunk) * hkv * d + e)];
          v.f32()[i * hkv * d + e] = noise[size_t((i * 7 + 13) % chunk * hkv * d + e)] * 3.0f;
        }
      }
      cache.append(k, v);  // stored in the cache's dtype
    }
  }
  Tensor queries(int64_t q_len, int64_t n) {
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
    return q;
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

double max_abs_error(const Tensor& a, const Tensor& b) {
  double e = 0;
  for (int64_t i = 0; i < a.numel(); ++i) e = std::max(e, std::abs(double(a.f32()[i]) - double(b.f32()[i])));
  return e;
}

}  // namespace

void run_decode_bench(const DecodeBenchConfig& cfg) {
  LONGCTX_CHECK(cfg.moba.key_conv == 0, "bench decode: --key-conv is not timed here (a decode step convolves one key "
                "before the attention over the cache), got ", cfg.moba.key_conv);
  LONGCTX_CHECK(!cfg.dtypes.empty(), "bench decode: --dtypes needs at least one of f32, bf16, int8");
  std::vector<KVDType> dtypes;
  for (const std::string& name : cfg.dtypes) dtypes.push_back(enum_from_name<KVDType>(name, "bench decode: --dtypes"));
  const int threads = parallel::max_threads();
  const double gflops = sgemm_gflops();
  std::vector<nlohmann::json> rows;
  Progress progress("bench decode", "cases", 0);
  const double cases = double(cfg.lengths.size() * cfg.methods.size());
  double done = 0;
  for (const int64_t n : cfg.lengths) {
    // One cache per dtype of the same content, plus an fp32 one for the reference outputs.
    Source src{cfg.kv_heads, cfg.heads, cfg.head_dim, {}};
    std::vector<std::unique_ptr<KVCache>> caches;
    auto make_cache = [&](KVDType dt) {
      auto c = std::make_unique<KVCache>(KVCacheOptions{n, cfg.kv_heads, cfg.head_dim, cfg.moba.block_size, dt});
      src.fill(*c, n);
      return c;
    };
    for (KVDType dt : dtypes) caches.push_back(make_cache(dt));
    const auto f32_at = std::find(dtypes.begin(), dtypes.end(), KVDType::f32);
    const std::unique_ptr<KVCache> own_f32 = f32_at == dtypes.end() ? make_cache(KVDType::f32) : nullptr;
    const KVCache& reference = own_f32 ? *own_f32 : *caches[size_t(f32_at - dtypes.begin())];
    const auto bf16_at = std::find(dtypes.begin(), dtypes.end(), KVDType::bf16);
    auto kv_bytes = [&](KVDType dt) { return 2.0 * double(n) * cfg.kv_heads * kv_row_bytes(dt, cfg.head_dim); };
    double largest = 0;
    for (KVDType dt : dtypes) largest = std::max(largest, kv_bytes(dt));
    const double stream = stream_read_gbps(size_t(largest));
    const Tensor q1 = src.queries(1, n);
    const int64_t chunk = std::min(cfg.chunk, n);
    const Tensor qc = src.queries(chunk, n);
    std::vector<double> dense_tps(dtypes.size(), 0.0), dense_chunk_tps(dtypes.size(), 0.0);
    // The dtypes' calls timed in turn, round after round, so that a change in the machine's load
    // hits them alike; rows carry the error of each output against the fp32 cache's.
    auto measure = [&](const std::string& method, const AttentionSpec& spec, const Tensor& q, const std::string& mode,
                       std::vector<double>& dense) {
      const Tensor ref = attention_over_cache(q, reference, spec).out;
      std::vector<SparseResult> r(dtypes.size());
      std::vector<std::function<void()>> calls;
      for (size_t i = 0; i < dtypes.size(); ++i)
        calls.push_back([&, i] { r[i] = attention_over_cache(q, *caches[i], spec); });
      const std::vector<double> t = time_interleaved(calls, mode == "decode" ? 3 : 1, cfg.min_seconds);
      const double tokens = double(q.dim(0));
      for (size_t i = 0; i < dtypes.size(); ++i) {
        nlohmann::json row{{"cache_len", n},
                           {"method", method},
                           {"mode", mode},
                           {"dtype", enum_name(dtypes[i])},
                           {"ms", t[i] * 1e3},
                           {"tokens_per_s", tokens / t[i]},
                           {"keys_mean", r[i].mean_keys},
                           {"keys_max", r[i].max_keys},
                           {"err_max", max_abs_error(r[i].out, ref)},
                           {"err_rel", frobenius_rel_error(r[i].out, ref)},
                           {"kv_mb", kv_bytes(dtypes[i]) / 1e6}};
        if (method == "dense") dense[i] = tokens / t[i];
        if (dense[i] > 0) row["speedup"] = tokens / t[i] / dense[i];
        if (bf16_at != dtypes.end()) row["x_bf16"] = t[size_t(bf16_at - dtypes.begin())] / t[i];
        if (mode == "decode") {
          row["stream_gbps"] = stream;
          if (method == "dense") {
            row["gbps"] = kv_bytes(dtypes[i]) / t[i] / 1e9;
            row["bw_fraction"] = kv_bytes(dtypes[i]) / t[i] / 1e9 / stream;
          }
        }
        rows.push_back(row);
      }
      return t;
    };
    for (const std::string& method : cfg.methods) {
      const AttentionSpec spec = spec_of(method, cfg);
      const std::vector<double> t = measure(method, spec, q1, "decode", dense_tps);
      progress.report(++done, cases, fmt::format("(decode n={} {}: {:.3f} ms)", n, method, t[0] * 1e3));
      if (n <= cfg.chunk_max_length) measure(method, spec, qc, fmt::format("chunk{}", chunk), dense_chunk_tps);
    }
    // Cascade pruning: the cache holds B of the n tokens; a step appends one, attends densely,
    // adds the attention mass to the importance and evicts the least important token.
    for (const int64_t budget : cfg.kv_budgets) {
      if (budget >= n) continue;
      CascadePruningOptions po;
      po.budget = {budget}, po.window = cfg.kv_window, po.sink = cfg.kv_sink, po.chunk = 1;
      std::vector<std::unique_ptr<KVCache>> pruned;
      std::vector<CascadePruner> pruners;
      for (KVDType dt : dtypes) {
        pruned.push_back(std::make_unique<KVCache>(
            KVCacheOptions{budget + 1, cfg.kv_heads, cfg.head_dim, cfg.moba.block_size, dt, false}));
        src.fill(*pruned.back(), budget);
        pruners.emplace_back(po, 1);
      }
      const Tensor k1 = random_normal({1, cfg.kv_heads, cfg.head_dim}, 1), v1 = random_normal({1, cfg.kv_heads, cfg.head_dim}, 2);
      const float scale = 1.0f / std::sqrt(float(cfg.head_dim));
      std::vector<std::function<void()>> calls;
      for (size_t i = 0; i < dtypes.size(); ++i)
        calls.push_back([&, i] {
          KVCache& c = *pruned[i];
          c.append(k1, v1);
          const SparseResult r = attention_over_cache(q1, c, {});
          pruners[i].after_attention(0, q1, r.lse, scale, {&c});
        });
      const std::vector<double> t = time_interleaved(calls, 3, cfg.min_seconds);
      for (size_t i = 0; i < dtypes.size(); ++i) {
        nlohmann::json row{{"cache_len", n},
                           {"method", fmt::format("dense/budget={}", budget)},
                           {"mode", "decode"},
                           {"dtype", enum_name(dtypes[i])},
                           {"ms", t[i] * 1e3},
                           {"tokens_per_s", 1.0 / t[i]},
                           {"keys_mean", double(budget)},
                           {"kv_mb", double(pruned[i]->memory_bytes()) / 1e6}};
        if (dense_tps[i] > 0) row["speedup"] = 1.0 / t[i] / dense_tps[i];
        if (bf16_at != dtypes.end()) row["x_bf16"] = t[size_t(bf16_at - dtypes.begin())] / t[i];
        rows.push_back(row);
      }
    }
  }
  fmt::print("sgemm peak: {:.1f} GFLOP/s on {} threads; cache {} KV heads x d={}, {} q heads, fp32 queries; "
             "moba/topk B={} k={}, threshold tau={} (bound rule, B={}); errors against the fp32 cache's output\n",
             gflops, threads, cfg.kv_heads, cfg.head_dim, cfg.heads, cfg.moba.block_size, cfg.moba.top_k,
             cfg.threshold.tau, cfg.threshold.block_size);
  print_table(rows, {{"cache_len", "cache", "{:.0f}"},
                     {"mode", "mode", "%s"},
                     {"method", "method", "%s"},
                     {"dtype", "kv", "%s"},
                     {"ms", "ms/call", "{:.3f}"},
                     {"tokens_per_s", "tokens/s", "{:.1f}"},
                     {"speedup", "x dense", "{:.2f}"},
                     {"x_bf16", "x bf16", "{:.2f}"},
                     {"err_max", "err max", "{:.2e}"},
                     {"err_rel", "err rel", "{:.2e}"},
                     {"keys_mean", "keys mean", "{:.0f}"},
                     {"kv_mb", "KV MB", "{:.1f}"},
                     {"gbps", "GB/s", "{:.2f}"},
                     {"stream_gbps", "stream GB/s", "{:.2f}"},
                     {"bw_fraction", "of stream", "{:.2f}"}});
  if (!cfg.json.empty()) write_json(cfg.json, machine_info(threads, Peaks{.sgemm_gflops = gflops}), rows);
}

void run_threshold_bench(const ThresholdBenchConfig& cfg) {
  const int64_t n = cfg.length, nq = std::min(cfg.queries, cfg.length);
  KVCache cache({n, cfg.kv_heads, cfg.head_dim, cfg.block_size, KVDType::f32});
  Source src{cfg.kv_heads, cfg.heads, cfg.head_dim, {}};
  src.fill(cache, n);
  const Tensor q = src.queries(nq, n);
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
