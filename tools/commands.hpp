// Each subcommand lives in its own file and adds itself to the CLI here.
#pragma once
#include <CLI/CLI.hpp>

namespace longctx::cli {

// `longctx bench attention`
void add_bench_attention(CLI::App& bench);
// `longctx bench decode`
void add_bench_decode(CLI::App& bench);
// `longctx bench train`
void add_bench_train(CLI::App& bench);
// `longctx bench infini`
void add_bench_infini(CLI::App& bench);
// `longctx bench moe`
void add_bench_moe(CLI::App& bench);
// `longctx train`
void add_train(CLI::App& app);
// `longctx eval`
void add_eval(CLI::App& app);
// `longctx passkey-corpus`
void add_passkey_corpus(CLI::App& app);
// `longctx generate`
void add_generate(CLI::App& app);

}  // namespace longctx::cli
