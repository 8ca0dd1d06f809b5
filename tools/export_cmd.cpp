// `longctx export`: the inference part of a training checkpoint, self-contained.
#include <fmt/core.h>
#include <longctx/core/error.hpp>
#include <longctx/model/checkpoint.hpp>

#include <filesystem>

#include "commands.hpp"
#include "common.hpp"

namespace longctx::cli {

namespace {

struct Options {
  std::string checkpoint, out;
  bool weights_only = false;
};

void run(const Options& o) {
  LONGCTX_CHECK(o.weights_only, "export: --weights-only is the one export format so far; say it");
  bench::check_output_path(o.out, "export: --out");
  const uint64_t before = std::filesystem::file_size(o.checkpoint);
  const uint64_t after = export_weights(o.checkpoint, o.out);
  fmt::print(stderr, "exported the weights, model config and tokenizer of {} ({:.1f} MB) to {} ({:.1f} MB)\n",
             o.checkpoint, double(before) / 1e6, o.out, double(after) / 1e6);
}

}  // namespace

void add_export(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* c = app.add_subcommand("export", "Write a checkpoint's weights, model config and tokenizer, self-contained");
  c->add_option("--checkpoint", o->checkpoint, "checkpoint.safetensors written by `longctx train`")->required()->check(CLI::ExistingFile);
  c->add_option("--out", o->out, "The file to write (safetensors)")->required();
  c->add_flag("--weights-only", o->weights_only,
              "Drop the AdamW moments and the training state (a third of the size; eval, generate and "
              "train --init-from take it, --resume does not)");
  c->callback([o] { run(*o); });
}

}  // namespace longctx::cli
