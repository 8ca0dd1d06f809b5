#include "eval_retrieval.hpp"

#include <fmt/core.h>
#include <longctx/core/error.hpp>
#include <longctx/text/corpus.hpp>

#include <cmath>
#include <filesystem>
#include <map>

#include "common.hpp"

namespace longctx::cli {

namespace {

nlohmann::json cell_json(const TaskCell& c) {
  return {{"task", enum_name(c.kind)}, {"length", c.length},     {"depth", c.depth},     {"trials", c.trials},
          {"correct", c.correct},      {"accuracy", c.accuracy}, {"partial", c.partial}, {"seconds", c.seconds},
          {"sample", c.sample}};
}

// "4x" -> 4 * train_length, "4096" -> 4096; throws naming the value.
int64_t resolve_length(const std::string& s, int64_t train_length) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  const bool multiple = end && *end == 'x' && end[1] == '\0';
  LONGCTX_CHECK(end != s.c_str() && (multiple || *end == '\0') && v > 0 && std::isfinite(v),
                "eval: --ruler-lengths: '", s, "' is neither a length in tokens nor a multiple of the training length "
                "like 2x");
  const double tokens = multiple ? v * double(train_length) : v;
  LONGCTX_CHECK(multiple || tokens == std::floor(tokens), "eval: --ruler-lengths: '", s, "' is not a whole number of tokens");
  return std::llround(tokens);
}

}  // namespace

nlohmann::json run_task_grid(const std::string& what, const std::string& data, Transformer& model, const Tokenizer& tok,
                             TaskGridOptions o) {
  const TaskFiller filler(load_split_texts((std::filesystem::path(data) / "val").string()));
  double work = 0, done = 0;  // in tokens read, for the ETA
  for (int64_t l : o.lengths) work += double(l) * double(o.depths.size() * o.kinds.size());
  bench::Progress progress(what, "tokens", 0);
  o.progress = [&](int64_t cells_done, int64_t cells, const TaskCell& c) {
    done += double(c.length);
    progress.report(done, work, fmt::format("(cell {}/{}: {} length {}, depth {:.2f}: {}/{} correct)", cells_done, cells,
                                            enum_name(c.kind), c.length, c.depth, c.correct, c.trials));
  };
  const TaskGrid g = evaluate_tasks(model, tok, filler, o);
  std::vector<nlohmann::json> cells;
  for (const TaskCell& c : g.cells) {
    nlohmann::json j = cell_json(c);
    j["sample_shown"] = nlohmann::json(c.sample).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
    cells.push_back(std::move(j));
  }
  bench::print_table(cells, {{"task", "task", ""}, {"length", "length", ""}, {"depth", "depth", "{:.2f}"},
                             {"correct", "correct", ""}, {"trials", "trials", ""}, {"accuracy", "accuracy", "{:.2f}"},
                             {"partial", "partial", "{:.2f}"}, {"seconds", "seconds", "{:.1f}"},
                             {"sample_shown", "first answer", ""}});
  for (auto& c : cells) c.erase("sample_shown");
  fmt::print("{} accuracy {:.3f} (partial {:.3f}) over {} cells x {} trials in {:.1f} s\n", what, g.accuracy, g.partial,
             g.cells.size(), o.trials, g.seconds);
  return {{"lengths", o.lengths}, {"depths", o.depths},     {"trials", o.trials},   {"seed", o.seed},
          {"accuracy", g.accuracy}, {"partial", g.partial}, {"seconds", g.seconds}, {"cells", cells}};
}

void add_ruler_options(CLI::App& c, RulerFlags& f) {
  c.add_flag("--ruler", f.on, "Run the RULER-style retrieval grid (at 1x the training length unless --ruler-lengths)");
  c.add_option("--ruler-tasks", f.tasks, "Tasks: passkey,multikey,multivalue,vartrack,kvrecall,copy (default: all)")
      ->delimiter(',');
  c.add_option("--ruler-lengths", f.lengths, "Lengths: multiples of the training length (1x,2x,4x) or tokens (implies --ruler)")
      ->delimiter(',');
  c.add_option("--ruler-depths", f.depths, "Depths of the asked needle in [0, 1]")->delimiter(',')
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  c.add_option("--ruler-trials", f.trials, "Examples per (task, length, depth) cell")->check(CLI::PositiveNumber)
      ->capture_default_str();
  c.add_option("--ruler-seed", f.seed, "Seed of the examples")->capture_default_str();
}

TaskGridOptions ruler_grid(const RulerFlags& f, int64_t train_length, int64_t prefill_chunk) {
  TaskGridOptions o;
  if (!f.requested()) return o;
  o.kinds.clear();
  for (const std::string& t : f.tasks) o.kinds.push_back(enum_from_name<TaskKind>(t, "eval: --ruler-tasks"));
  if (o.kinds.empty()) o.kinds = all_task_kinds();
  for (const std::string& l : f.lengths.empty() ? std::vector<std::string>{"1x"} : f.lengths)
    o.lengths.push_back(resolve_length(l, train_length));
  o.depths = f.depths;
  o.trials = f.trials;
  o.seed = f.seed;
  o.prefill_chunk = prefill_chunk;
  return o;
}

nlohmann::json run_ruler(const RulerFlags& f, int64_t train_length, const std::string& data, Transformer& model,
                         const Tokenizer& tok, const TaskGridOptions& grid) {
  nlohmann::json j = run_task_grid("ruler", data, model, tok, grid);
  std::vector<std::string> names;
  for (TaskKind k : grid.kinds) names.push_back(enum_name(k));
  j["tasks"] = names;
  j["length_names"] = f.lengths.empty() ? std::vector<std::string>{"1x"} : f.lengths;
  j["train_length"] = train_length;
  // accuracy and partial credit per (task, length), over the depths
  std::vector<nlohmann::json> summary;
  std::map<std::pair<std::string, int64_t>, size_t> row;
  for (const auto& c : j["cells"]) {
    const auto key = std::make_pair(c["task"].get<std::string>(), c["length"].get<int64_t>());
    if (!row.count(key)) {
      row[key] = summary.size();
      summary.push_back({{"task", key.first}, {"length", key.second}, {"trials", 0}, {"correct", 0}, {"partial", 0.0}});
    }
    nlohmann::json& s = summary[row[key]];
    s["trials"] = s["trials"].get<int64_t>() + c["trials"].get<int64_t>();
    s["correct"] = s["correct"].get<int64_t>() + c["correct"].get<int64_t>();
    s["partial"] = s["partial"].get<double>() + c["partial"].get<double>() * c["trials"].get<double>();
  }
  for (nlohmann::json& s : summary) {
    s["accuracy"] = s["correct"].get<double>() / s["trials"].get<double>();
    s["partial"] = s["partial"].get<double>() / s["trials"].get<double>();
  }
  bench::print_table(summary, {{"task", "task", ""}, {"length", "length", ""}, {"correct", "correct", ""},
                               {"trials", "trials", ""}, {"accuracy", "accuracy", "{:.3f}"}, {"partial", "partial", "{:.3f}"}});
  j["summary"] = summary;
  return j;
}

}  // namespace longctx::cli
