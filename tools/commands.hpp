// Each subcommand lives in its own file and adds itself to the CLI here.
#pragma once
#include <CLI/CLI.hpp>

#include <cstdlib>
#include <string>

namespace longctx::cli {

// An option check for integers >= `least`: "must be >= <least><hint>" (text that is not a number
// is left to CLI11's own conversion error).
inline CLI::Validator at_least(long long least, const std::string& hint = "") {
  return CLI::Validator(
      [least, hint](const std::string& v) {
        char* end = nullptr;
        const long long n = std::strtoll(v.c_str(), &end, 10);
        return *end != '\0' || n >= least ? std::string() : "must be >= " + std::to_string(least) + hint;
      },
      "INT >= " + std::to_string(least));
}

// `longctx bench attention`
void add_bench_attention(CLI::App& bench);
// `longctx bench decode`
void add_bench_decode(CLI::App& bench);
// `longctx bench batch-decode`
void add_bench_batch_decode(CLI::App& bench);
// `longctx bench train`
void add_bench_train(CLI::App& bench);
// `longctx bench infini`
void add_bench_infini(CLI::App& bench);
// `longctx bench moe`
void add_bench_moe(CLI::App& bench);
// `longctx bench exp`
void add_bench_exp(CLI::App& bench);
// `longctx train`
void add_train(CLI::App& app);
// `longctx eval`
void add_eval(CLI::App& app);
// `longctx passkey-corpus`
void add_passkey_corpus(CLI::App& app);
// `longctx generate`
void add_generate(CLI::App& app);
// `longctx export`
void add_export(CLI::App& app);
// `longctx import-hf`
void add_import_hf(CLI::App& app);
// `longctx serve`
void add_serve(CLI::App& app);

}  // namespace longctx::cli
