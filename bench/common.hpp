// Shared pieces of every `longctx bench` driver: the machine's sgemm and memory-read peaks
// measured in the same run, best-of timing, one case per child process (so each case's peak RSS
// is its own), and the table / JSON output.
#pragma once
#include <longctx/model/config.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "peaks.hpp"

namespace longctx::bench {

// Best-of wall time in seconds of fn(): at least `min_reps` runs and `min_seconds` in total.
double time_best(const std::function<void()>& fn, int min_reps = 3, double min_seconds = 0.5);
// Best-of times of several calls run in turn (a round runs each once), at least `min_reps` rounds
// and `min_seconds` in total: a side-by-side comparison that a change in the machine's load hits
// alike.
std::vector<double> time_interleaved(const std::vector<std::function<void()>>& fns, int min_reps = 3,
                                     double min_seconds = 0.5);

// GFLOP/s of one large fp32 sgemm (n x n x n) on all threads, with the GEMM backend in use.
double sgemm_gflops(int n = 2048);

// GB/s of a streaming read (sum) over `bytes` of memory on all threads: the bandwidth peak.
double stream_read_gbps(size_t bytes);

// Runs this executable again with `args` (a worker invocation that prints one JSON object on its
// last stdout line) and returns that object with "peak_rss_mb" (the child's peak RSS) added.
// Throws with the child's stderr if it fails.
nlohmann::json run_worker(const std::vector<std::string>& args);

// Prints rows as an aligned table; `columns` are (json key, header, printf format) triples.
struct Column {
  std::string key, header, format;
};
void print_table(const std::vector<nlohmann::json>& rows, const std::vector<Column>& columns);

// Writes {"machine": ..., "rows": [...]} atomically (temp file + rename).
void write_json(const std::string& path, const nlohmann::json& machine, const std::vector<nlohmann::json>& rows);
// Writes any JSON document atomically (temp file + rename).
void write_json_file(const std::string& path, const nlohmann::json& doc);
// Throws, naming `flag`, unless a file at `path` could be created: its folder exists and is a
// folder. Commands call it before their work, so a typo in an output path loses nothing.
void check_output_path(const std::string& path, const std::string& flag);

// The model config of a JSON file: a train config's "model" section, or a model config itself.
ModelConfig read_model_config(const std::string& path, const std::string& flag);

// "1m05s" or "2h03m", for ETAs.
std::string format_duration(double seconds);

// A long phase's progress on stderr: "<what>: <done>/<total> <unit>, elapsed 0m12s, ETA 1m40s".
// report() prints at most every `every_s` seconds and always for the last unit, so a phase of a
// few seconds prints one line and a long one a line every few seconds. The ETA assumes the rest
// goes at the pace so far (units should be of equal cost: tokens, not windows of mixed length).
class Progress {
 public:
  Progress(std::string what, std::string unit, double every_s = 5);
  void report(double done, double total, const std::string& note = "");

 private:
  std::string what_, unit_;
  double every_s_, last_ = -1e300;
  std::chrono::steady_clock::time_point start_;
};

// Peak resident set size of this process so far, MiB (getrusage ru_maxrss).
double peak_rss_mb();

// Runs a program (argv[0] is its path) with this process's stdout and stderr and waits for it;
// throws naming the command if it cannot start or exits non-zero.
void run_program(const std::vector<std::string>& argv);

// What a result was measured on: CPU model and its vector flags, cores, threads, the GEMM backend
// and kernels, the git commit of the source tree, and the peaks measured in the same run.
nlohmann::json machine_info(int threads, const Peaks& peaks);

}  // namespace longctx::bench
