// The `longctx` command-line tool.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <thread>

#include <longctx/core/error.hpp>
#include <longctx/core/threads.hpp>

#include "commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"longctx: long-context transformers on CPU: attention kernels, training, generation"};
  app.require_subcommand(1);
  // One --threads for every command, accepted after the subcommand too (fallthrough is inherited
  // by the subcommands added below); applied before any subcommand runs.
  int threads = 0;
  app.add_option("--threads", threads, "OpenMP threads for every command (0 = all cores)")->check(CLI::NonNegativeNumber);
  app.fallthrough();
  app.parse_complete_callback([&threads] {
    // more threads than cores only slows the kernels down; far more would exhaust memory
    const int most = 4 * std::max(1, int(std::thread::hardware_concurrency()));
    if (threads > most)
      throw std::invalid_argument(longctx::concat("--threads ", threads, ": at most ", most, " on this machine (4 x its ",
                                                  most / 4, " cores)"));
    if (threads > 0) longctx::parallel::set_threads(threads);
  });
  CLI::App* bench = app.add_subcommand("bench", "Kernel speed and memory, method vs method");
  bench->require_subcommand(1);
  longctx::cli::add_bench_attention(*bench);
  longctx::cli::add_bench_decode(*bench);
  longctx::cli::add_bench_batch_decode(*bench);
  longctx::cli::add_bench_train(*bench);
  longctx::cli::add_bench_infini(*bench);
  longctx::cli::add_bench_moe(*bench);
  longctx::cli::add_bench_exp(*bench);
  longctx::cli::add_train(app);
  longctx::cli::add_eval(app);
  longctx::cli::add_passkey_corpus(app);
  longctx::cli::add_generate(app);
  longctx::cli::add_export(app);
  longctx::cli::add_import_hf(app);
  longctx::cli::add_serve(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "longctx: error: %s\n", longctx::message_of(e).c_str());
    return 1;
  }
  return 0;
}
