// Each subcommand lives in its own file and adds itself to the CLI here.
#pragma once
#include <CLI/CLI.hpp>

namespace longctx::cli {

// `longctx bench attention`
void add_bench_attention(CLI::App& bench);
// `longctx bench moe`
void add_bench_moe(CLI::App& bench);

}  // namespace longctx::cli
