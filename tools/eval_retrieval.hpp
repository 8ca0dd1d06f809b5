// The retrieval grids of `longctx eval` (eval/retrieval.hpp): the passkey test and the RULER-style
// grid of tasks x lengths x depths, with their progress lines, tables and JSON sections.
#pragma once
#include <CLI/CLI.hpp>
#include <longctx/eval/retrieval.hpp>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace longctx::cli {

// Runs a grid with filler from the corpus's val/ split (held-out text), printing progress (cells,
// ETA weighted by length) and a table; returns the JSON section {lengths, depths, trials, seed,
// accuracy, partial, seconds, cells: [{task, length, depth, trials, correct, accuracy, partial,
// seconds, sample}]}. `what` names it in the output ("passkey", "ruler").
nlohmann::json run_task_grid(const std::string& what, const std::string& data, Transformer& model, const Tokenizer& tok,
                             TaskGridOptions o);

struct RulerFlags {
  bool on = false;
  std::vector<std::string> tasks, lengths;  // lengths: "2x" (times the training length) or tokens
  std::vector<double> depths{0.1, 0.3, 0.5, 0.7, 0.9};
  int64_t trials = 4;
  uint64_t seed = 1;
  bool requested() const { return on || !lengths.empty() || !tasks.empty(); }
};
void add_ruler_options(CLI::App& eval, RulerFlags& f);

// The grid the flags ask for (none: no lengths), lengths resolved against `train_length`.
TaskGridOptions ruler_grid(const RulerFlags& f, int64_t train_length, int64_t prefill_chunk);

// run_task_grid over the RULER grid, its section extended with the tasks, the lengths as given,
// the training length and a summary per task and length.
nlohmann::json run_ruler(const RulerFlags& f, int64_t train_length, const std::string& data, Transformer& model,
                         const Tokenizer& tok, const TaskGridOptions& grid);

}  // namespace longctx::cli
