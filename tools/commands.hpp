// Each subcommand lives in its own file and adds itself to the CLI here.
#pragma once
#include <CLI/CLI.hpp>

namespace longctx::cli {

// `longctx bench attention`
void add_bench_attention(CLI::App& bench);
// `longctx bench infini`
void add_bench_infini(CLI::App& bench);

}  // namespace longctx::cli
