// Bench plumbing; times library internals (core/gemm, core/simd) for the machine's peaks.
#include "common.hpp"

#include <fmt/core.h>
#include <longctx/core/error.hpp>
#include <longctx/core/files.hpp>
#include <omp.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <thread>

#include "core/gemm.hpp"
#include "core/simd.hpp"

extern char** environ;

namespace longctx::bench {

double time_best(const std::function<void()>& fn, int min_reps, double min_seconds) {
  using clock = std::chrono::steady_clock;
  double best = 1e300, total = 0;
  for (int r = 0; r < min_reps || total < min_seconds; ++r) {
    const auto t0 = clock::now();
    fn();
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    best = std::min(best, dt);
    total += dt;
    if (r >= 1000) break;
  }
  return best;
}

std::vector<double> time_interleaved(const std::vector<std::function<void()>>& fns, int min_reps, double min_seconds) {
  using clock = std::chrono::steady_clock;
  std::vector<double> best(fns.size(), 1e300);
  double total = 0;
  for (int r = 0; r < min_reps || total < min_seconds; ++r) {
    for (size_t i = 0; i < fns.size(); ++i) {
      const auto t0 = clock::now();
      fns[i]();
      const double dt = std::chrono::duration<double>(clock::now() - t0).count();
      best[i] = std::min(best[i], dt);
      total += dt;
    }
    if (r >= 1000) break;
  }
  return best;
}

double sgemm_gflops(int n) {
  std::vector<float> a(size_t(n) * n, 1.0f), b(size_t(n) * n, 0.5f), c(size_t(n) * n);
  gemm::set_blas_threads(omp_get_max_threads());
  const double t = time_best([&] { gemm::sgemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n); }, 3, 1.0);
  return 2.0 * n * n * double(n) / t / 1e9;
}

double stream_read_gbps(size_t bytes) {
  const int64_t n = int64_t(bytes / sizeof(float));
  std::vector<float> a(size_t(n), 1.0f);
  float sink = 0;
  const double t = time_best([&] {
    float s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
    for (int64_t i = 0; i < n; i += 4096) s += simd::dot(a.data() + i, a.data() + i, std::min<int64_t>(4096, n - i));
    sink += s;
  }, 3, 0.5);
  if (sink == -1) std::puts("");  // keep the reads
  return double(bytes) / t / 1e9;
}

nlohmann::json run_worker(const std::vector<std::string>& args) {
  std::vector<std::string> full{"/proc/self/exe"};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : full) argv.push_back(s.data());
  argv.push_back(nullptr);

  int out_pipe[2];
  if (pipe(out_pipe) != 0) throw std::runtime_error("bench: pipe failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  posix_spawn_file_actions_addclose(&fa, out_pipe[0]);
  pid_t pid;
  if (posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv.data(), environ) != 0)
    throw std::runtime_error("bench: could not start a worker process");
  posix_spawn_file_actions_destroy(&fa);
  close(out_pipe[1]);
  std::string output;
  char buf[4096];
  for (ssize_t r; (r = read(out_pipe[0], buf, sizeof buf)) > 0;) output.append(buf, size_t(r));
  close(out_pipe[0]);
  int status = 0;
  rusage ru{};
  wait4(pid, &status, 0, &ru);
  std::string cmd;
  for (auto& a : args) cmd += " " + a;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error("bench: worker failed (longctx" + cmd + ")");
  // the worker's result is its last non-empty stdout line
  while (!output.empty() && output.back() == '\n') output.pop_back();
  nlohmann::json row = nlohmann::json::parse(output.substr(output.rfind('\n') + 1));
  row["peak_rss_mb"] = double(ru.ru_maxrss) / 1024.0;  // Linux reports KiB
  return row;
}

void print_table(const std::vector<nlohmann::json>& rows, const std::vector<Column>& columns) {
  std::vector<std::vector<std::string>> cells;
  std::vector<size_t> width;
  for (const Column& c : columns) width.push_back(c.header.size());
  for (const auto& r : rows) {
    std::vector<std::string> line;
    for (size_t i = 0; i < columns.size(); ++i) {
      const auto it = r.find(columns[i].key);
      std::string s = "-";
      if (it != r.end() && !it->is_null()) {
        if (it->is_string())
          s = it->get<std::string>();
        else if (it->is_number_integer())
          s = std::to_string(it->get<int64_t>());
        else
          s = fmt::format(fmt::runtime(columns[i].format), it->get<double>());
      }
      width[i] = std::max(width[i], s.size());
      line.push_back(std::move(s));
    }
    cells.push_back(std::move(line));
  }
  auto print_line = [&](const std::vector<std::string>& line) {
    std::string s;
    for (size_t i = 0; i < line.size(); ++i) s += fmt::format("{:>{}}  ", line[i], width[i]);
    std::puts(s.c_str());
  };
  std::vector<std::string> header;
  for (const Column& c : columns) header.push_back(c.header);
  print_line(header);
  for (const auto& line : cells) print_line(line);
  std::fflush(stdout);
}

void write_json_file(const std::string& path, const nlohmann::json& doc) {
  // model output may be invalid UTF-8: replaced, not refused
  const std::string text = doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  write_file_atomically(path, [&](const auto& put) { put(text.data(), text.size()); });
}

void write_json(const std::string& path, const nlohmann::json& machine, const std::vector<nlohmann::json>& rows) {
  write_json_file(path, {{"machine", machine}, {"rows", rows}});
}

void check_output_path(const std::string& path, const std::string& flag) {
  if (path.empty()) return;
  const std::filesystem::path p(path), dir = p.parent_path().empty() ? "." : p.parent_path();
  LONGCTX_CHECK(std::filesystem::is_directory(dir), flag, " ", path, ": folder ", dir.string(), " does not exist");
  LONGCTX_CHECK(!std::filesystem::is_directory(p), flag, " ", path, " is a folder, not a file");
}

ModelConfig read_model_config(const std::string& path, const std::string& flag) {
  std::ifstream f(path);
  LONGCTX_CHECK(f.good(), flag, ": cannot read config '", path, "'");
  const nlohmann::json j = nlohmann::json::parse(f);
  return ModelConfig::from_json(j.contains("model") ? j["model"] : j);
}

std::string format_duration(double seconds) {
  const int s = int(seconds);
  return s >= 3600 ? fmt::format("{}h{:02}m", s / 3600, s / 60 % 60) : fmt::format("{}m{:02}s", s / 60, s % 60);
}

Progress::Progress(std::string what, std::string unit, double every_s)
    : what_(std::move(what)), unit_(std::move(unit)), every_s_(every_s),
      start_(std::chrono::steady_clock::now()) {}

void Progress::report(double done, double total, const std::string& note) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (elapsed - last_ < every_s_ && done < total) return;
  last_ = elapsed;
  const std::string eta = done > 0 && done < total ? ", ETA " + format_duration(elapsed / done * (total - done)) : "";
  fmt::print(stderr, "{}: {:.0f}/{:.0f} {}{}, elapsed {}{}\n", what_, done, total, unit_, note.empty() ? "" : " " + note,
             format_duration(elapsed), eta);
}

double peak_rss_mb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;  // Linux reports KiB
}

void run_program(const std::vector<std::string>& args) {
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  std::string cmd;
  for (auto& s : copy) argv.push_back(s.data()), cmd += (cmd.empty() ? "" : " ") + s;
  argv.push_back(nullptr);
  pid_t pid;
  if (args.empty() || posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0)
    throw std::runtime_error("cannot start: " + cmd);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error("failed: " + cmd);
}

namespace {

// The first line of `cmd`'s output ("" if it fails).
std::string first_line_of(const std::string& cmd) {
  std::string out;
  if (FILE* f = popen(cmd.c_str(), "r")) {
    char buf[256];
    if (std::fgets(buf, sizeof buf, f)) out = buf;
    if (pclose(f) != 0) out.clear();
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

}  // namespace

nlohmann::json machine_info(int threads, const Peaks& peaks) {
  std::string model = "unknown", flags;
  std::ifstream cpu("/proc/cpuinfo");
  for (std::string line; std::getline(cpu, line);) {
    if (line.rfind("model name", 0) == 0 && model == "unknown") model = line.substr(line.find(':') + 2);
    if (line.rfind("flags", 0) == 0 && flags.empty()) flags = line.substr(line.find(':') + 1) + " ";
  }
  nlohmann::json vector_flags = nlohmann::json::array();
  for (const char* f : {"fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_bf16"})
    if (flags.find(std::string(" ") + f + " ") != std::string::npos) vector_flags.push_back(f);
  const std::string src = LONGCTX_SOURCE_DIR;
  std::string commit = first_line_of("git -C '" + src + "' rev-parse --short HEAD 2>/dev/null");
  // -dirty: tracked files differ from the commit (bench results, which runs rewrite, excepted)
  if (!commit.empty() &&
      !first_line_of("git -C '" + src + "' status --porcelain -uno -- . ':!docs/results' 2>/dev/null").empty())
    commit += "-dirty";
  return {{"cpu", model},
          {"cpu_flags", vector_flags},
          {"cores", std::thread::hardware_concurrency()},
          {"threads", threads},
          {"gemm", gemm::describe()},
          {"commit", commit.empty() ? "unknown" : commit},
          {"peaks", peaks.to_json()},
          {"sgemm_gflops", peaks.sgemm_gflops}};
}

}  // namespace longctx::bench
