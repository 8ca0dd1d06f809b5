// `longctx bench moe` driver; times library internals (the SwiGLU engine and the MoE expert groups, core/gemm).
#include "moe_bench.hpp"

#include <fmt/core.h>
#include <malloc.h>
#include <longctx/core/error.hpp>
#include <longctx/nn/ffn.hpp>
#include <longctx/moe/moe.hpp>

#include <cstdio>
#include <ctime>
#include <functional>
#include <random>
#include <sstream>

#include "common.hpp"
#include "core/gemm.hpp"
#include "core/parallel.hpp"
#include "nn/swiglu.hpp"
#include "moe/experts.hpp"

namespace longctx::bench {

namespace {

struct Case {
  bool moe = false;
  int64_t experts = 1, k = 1, d_ff = 0;
  int64_t active_ff() const { return k * d_ff; }
  int64_t total_ff() const { return experts * d_ff; }
};

Case parse_case(const std::string& spec) {
  std::vector<int64_t> v;
  std::stringstream ss(spec);
  std::string kind, part;
  std::getline(ss, kind, ':');
  while (std::getline(ss, part, ':')) v.push_back(std::stoll(part));
  Case c;
  if (kind == "dense" && v.size() == 1) {
    c.d_ff = v[0];
  } else if (kind == "moe" && v.size() == 3) {
    c = {true, v[0], v[1], v[2]};
  } else {
    LONGCTX_CHECK(false, "bench moe: case must be dense:<d_ff> or moe:<experts>:<k>:<d_ff>, got '", spec, "'");
  }
  LONGCTX_CHECK(c.d_ff > 0 && c.k >= 1 && c.k <= c.experts, "bench moe: bad case '", spec, "' (need d_ff > 0, 1 <= k <= experts)");
  return c;
}

// Best wall time and best process CPU time (all threads) over `reps` runs of fn. On a shared,
// oversubscribed machine the CPU time is the steadier measure of the work done.
struct Timing {
  double wall = 1e300, cpu = 1e300;
};

Timing time_wall_and_cpu(const std::function<void()>& fn, int reps) {
  auto now = [](clockid_t id) {
    timespec ts{};
    clock_gettime(id, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  };
  Timing t;
  for (int r = 0; r < reps; ++r) {
    const double w0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_PROCESS_CPUTIME_ID);
    fn();
    t.wall = std::min(t.wall, now(CLOCK_MONOTONIC) - w0);
    t.cpu = std::min(t.cpu, now(CLOCK_PROCESS_CPUTIME_ID) - c0);
  }
  return t;
}

Tensor random_tensor(std::vector<int64_t> shape, uint64_t seed) {
  Tensor t(std::move(shape));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = dist(rng);
  return t;
}

nlohmann::json run_case(const MoeBenchConfig& cfg) {
  const Case c = parse_case(cfg.cases.at(0));
  const bool bwd = cfg.modes.at(0) == "fwdbwd";
  const int64_t n = cfg.tokens, d = cfg.d_model;
  const Tensor x = random_tensor({n, d}, 1), dy = random_tensor({n, d}, 2);
  // useful work: 3 GEMMs of 2 n d f_active flops forward, twice that again backward
  const double flops = 6.0 * double(n) * double(d) * double(c.active_ff()) * (bwd ? 3.0 : 1.0);
  nlohmann::json row{{"case", cfg.cases[0]}, {"mode", cfg.modes[0]}, {"active_ff", c.active_ff()},
                     {"total_ff", c.total_ff()}};
  if (!c.moe) {
    const ffn::SwigluWeights w = ffn::init_swiglu(d, c.d_ff, 3);
    const Timing t = time_wall_and_cpu([&] {
      ffn::SwigluForward f = ffn::swiglu_forward(w, x);
      if (bwd) ffn::swiglu_backward(w, x, f, dy);
    }, cfg.reps);
    row["time_s"] = t.wall;
    row["cpu_s"] = t.cpu;
    row["gflops"] = flops / t.wall / 1e9;
    row["gflops_per_cpu_s"] = flops / t.cpu / 1e9;
    return row;
  }
  moe::Config mc;
  mc.d_model = d;
  mc.d_ff = c.d_ff;
  mc.num_experts = c.experts;
  mc.top_k = c.k;
  mc.load_balance_weight = 0.01f;
  mc.z_loss_weight = 1e-3f;
  const moe::Weights w = moe::init_weights(mc, 3);
  moe::Forward last;
  const Timing t = time_wall_and_cpu([&] {
    moe::Forward f = moe::forward(mc, w, x);
    if (bwd) moe::backward(mc, w, x, f, dy);
    last = std::move(f);
  }, cfg.reps);
  row["time_s"] = t.wall;
  row["cpu_s"] = t.cpu;
  row["gflops"] = flops / t.wall / 1e9;
  row["gflops_per_cpu_s"] = flops / t.cpu / 1e9;
  // the expert GEMM phase alone, on the last forward's routing
  const int64_t rows = last.offsets.back();
  Tensor dy_perm = random_tensor({rows, d}, 4), dx_perm({rows, d});
  moe::Grads g;
  g.dw1 = Tensor({c.experts, d, c.d_ff});
  g.dw3 = Tensor({c.experts, d, c.d_ff});
  g.dw2 = Tensor({c.experts, c.d_ff, d});
  std::vector<swiglu::Group> groups = moe::detail::expert_groups(mc, w, last);
  moe::detail::set_expert_grads(mc, groups, last.offsets, dy_perm.f32(), dx_perm.f32(), g);
  const Timing te = time_wall_and_cpu([&] {
    swiglu::forward(groups, d, c.d_ff);
    if (bwd) swiglu::backward(groups, d, c.d_ff);
  }, cfg.reps);
  const double expert_flops = 6.0 * double(rows) * double(d) * double(c.d_ff) * (bwd ? 3.0 : 1.0);
  row["experts_time_s"] = te.wall;
  row["experts_gflops"] = expert_flops / te.wall / 1e9;
  row["experts_gflops_per_cpu_s"] = expert_flops / te.cpu / 1e9;
  int64_t max_load = 0;
  for (int64_t l : last.stats.tokens_per_expert) max_load = std::max(max_load, l);
  row["max_load_over_mean"] = double(max_load) * double(c.experts) / double(rows);
  row["router_entropy"] = last.stats.router_entropy;
  return row;
}

// GFLOP per CPU-second of the same 2048^3 sgemm bench::sgemm_gflops times: the peak in units that
// do not shrink when other processes take the cores.
double sgemm_gflops_per_cpu_s(int reps) {
  const int64_t n = 2048;
  std::vector<float> a(size_t(n * n), 1.0f), b(size_t(n * n), 0.5f), c(size_t(n * n));
  const Timing t = time_wall_and_cpu([&] { gemm::sgemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n); },
                                     std::max(reps, 3));
  return 2.0 * double(n * n) * double(n) / t.cpu / 1e9;
}

std::vector<std::string> worker_args(const MoeBenchConfig& cfg, const std::string& spec, const std::string& mode) {
  return {"bench", "moe", "--worker", "--cases", spec, "--modes", mode, "--tokens", std::to_string(cfg.tokens),
          "--d-model", std::to_string(cfg.d_model), "--threads", std::to_string(parallel::max_threads()),
          "--reps", std::to_string(cfg.reps)};
}

}  // namespace

void run_moe_bench(const MoeBenchConfig& cfg, bool worker) {
  LONGCTX_CHECK(!cfg.cases.empty() && !cfg.modes.empty(), "bench moe: need at least one case and mode");
  for (const auto& s : cfg.cases) parse_case(s);
  gemm::set_blas_threads(parallel::max_threads());
  if (worker) {
    // Keep freed buffers in the heap so repeated steps reuse them, as a training loop's caching
    // allocator would; otherwise every step maps fresh pages and the kernel zeroes them (about a
    // fifth of a 16k-token fwd+bwd step here). Applies to the dense and the MoE cases alike.
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, -1);
    std::puts(run_case(cfg).dump().c_str());
    return;
  }
  const int threads = parallel::max_threads();
  const double peak = sgemm_gflops();
  const double peak_cpu = sgemm_gflops_per_cpu_s(cfg.reps);
  fmt::print("sgemm peak: {:.1f} GFLOP/s on {} threads ({:.1f} GFLOP per CPU-second); {} tokens, d_model {}\n", peak,
             threads, peak_cpu, cfg.tokens, cfg.d_model);
  std::vector<nlohmann::json> rows;
  Progress progress("bench moe", "cases", 0);
  const double cases = double(cfg.modes.size() * size_t(cfg.rounds) * cfg.cases.size());
  double done = 0;
  for (const auto& mode : cfg.modes) {
    std::vector<nlohmann::json> same_mode(cfg.cases.size());
    for (int round = 0; round < cfg.rounds; ++round)
      for (size_t i = 0; i < cfg.cases.size(); ++i) {
        nlohmann::json row = run_worker(worker_args(cfg, cfg.cases[i], mode));
        progress.report(++done, cases, fmt::format("({} {}: {:.4f} s)", cfg.cases[i], mode, row["time_s"].get<double>()));
        if (round == 0 || row["time_s"].get<double>() < same_mode[i]["time_s"].get<double>()) same_mode[i] = row;
      }
    for (auto& row : same_mode) {
      row["frac_sgemm"] = row["gflops"].get<double>() / peak;
      row["cpu_frac_sgemm"] = row["gflops_per_cpu_s"].get<double>() / peak_cpu;
      if (row.contains("experts_gflops")) {
        row["experts_frac_sgemm"] = row["experts_gflops"].get<double>() / peak;
        row["experts_cpu_frac_sgemm"] = row["experts_gflops_per_cpu_s"].get<double>() / peak_cpu;
      }
    }
    // time relative to the dense FFN with the same active width, and the one with the same total
    for (auto& r : same_mode)
      for (const auto& dn : same_mode) {
        if (dn["case"].get<std::string>().rfind("dense:", 0) != 0) continue;
        if (dn["active_ff"] == r["active_ff"]) {
          r["vs_dense_active"] = r["time_s"].get<double>() / dn["time_s"].get<double>();
          r["cpu_vs_dense_active"] = r["cpu_s"].get<double>() / dn["cpu_s"].get<double>();
        }
        if (dn["total_ff"] == r["total_ff"])
          r["vs_dense_total"] = r["time_s"].get<double>() / dn["time_s"].get<double>();
      }
    for (auto& r : same_mode) rows.push_back(std::move(r));
  }
  print_table(rows, {{"case", "case", ""}, {"mode", "mode", ""}, {"time_s", "time_s", "{:.4f}"},
                     {"gflops", "GFLOP/s", "{:.1f}"}, {"frac_sgemm", "of_sgemm", "{:.2f}"},
                     {"cpu_s", "cpu_s", "{:.3f}"}, {"vs_dense_active", "vs_active", "{:.2f}"},
                     {"cpu_vs_dense_active", "cpu_vs_active", "{:.2f}"}, {"vs_dense_total", "vs_total", "{:.2f}"},
                     {"cpu_frac_sgemm", "cpu_of_sgemm", "{:.2f}"},
                     {"experts_gflops", "expert_GFLOP/s", "{:.1f}"}, {"experts_frac_sgemm", "expert_of_sgemm", "{:.2f}"},
                     {"experts_cpu_frac_sgemm", "expert_cpu_of_sgemm", "{:.2f}"},
                     {"max_load_over_mean", "max_load", "{:.2f}"}, {"peak_rss_mb", "peak_MB", "{:.0f}"}});
  if (!cfg.json.empty()) write_json(cfg.json, machine_info(threads, Peaks{.sgemm_gflops = peak}), rows);
}

}  // namespace longctx::bench
