// `longctx import-hf`: a Hugging Face Llama folder as a self-contained longctx checkpoint.
#include <fmt/core.h>
#include <longctx/core/error.hpp>
#include <longctx/model/hf_import.hpp>
#include <longctx/text/tokenizer.hpp>

#include <filesystem>

#include "commands.hpp"
#include "common.hpp"

namespace longctx::cli {

namespace {

struct Options {
  std::string model_dir, out, attention;
  int64_t full_last = -1, max_seq_len = 0;
  uint64_t seed = 0;
};

void run(const Options& o) {
  bench::check_output_path(o.out, "import-hf: --out");
  nlohmann::json overrides = nlohmann::json::object();
  if (!o.attention.empty()) {  // a kind's name, or a JSON object as a model config's "attention"
    overrides["attention"] = o.attention.front() == '{' ? nlohmann::json::parse(o.attention, nullptr, false)
                                                        : nlohmann::json{{"kind", o.attention}};
    LONGCTX_CHECK(!overrides["attention"].is_discarded(), "import-hf: --attention is not JSON: ", o.attention);
  }
  if (o.full_last >= 0) overrides["full_attention_last_n"] = o.full_last;
  if (o.max_seq_len > 0) overrides["max_seq_len"] = o.max_seq_len;
  const HfImport hf = import_hf(o.model_dir, overrides, o.seed);
  const ModelConfig& c = hf.model.config();
  // the tokenizer must load and its ids fit the model's vocabulary (HF pads the embeddings, never fewer rows)
  const auto tok = make_tokenizer(hf.info.tokenizer, hf.info.tokenizer_model);
  LONGCTX_CHECK(tok->vocab_size() <= c.vocab_size, "import-hf: tokenizer.model has ", tok->vocab_size(),
                " pieces, more than the model's vocab_size ", c.vocab_size);
  std::vector<int32_t> special = hf.info.special_tokens.eos;
  if (hf.info.special_tokens.bos >= 0) special.push_back(hf.info.special_tokens.bos);
  for (int32_t id : special)
    LONGCTX_CHECK(id >= 0 && id < c.vocab_size, "import-hf: config.json: special token id ", id, " is outside [0, ",
                  c.vocab_size, ")");
  save_weights(o.out, hf.model, hf.info);
  std::string kinds;
  for (const AttentionSpec& a : c.attention) kinds += std::string(kinds.empty() ? "" : ",") + a.name();
  fmt::print(stderr,
             "imported {}: {} layers, d_model {}, {} heads over {} KV heads, d_ff {}, vocab {}, {} parameters, "
             "attention {}; wrote {} ({:.1f} MB)\n",
             o.model_dir, c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ff, c.vocab_size, hf.model.num_params(),
             kinds, o.out, double(std::filesystem::file_size(o.out)) / 1e6);
}

}  // namespace

void add_import_hf(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* c = app.add_subcommand("import-hf", "Make a Hugging Face Llama folder (config.json, safetensors weights, "
                                                "tokenizer.model) a longctx checkpoint");
  c->add_option("--model-dir", o->model_dir, "The Hugging Face model folder")->required()->check(CLI::ExistingDirectory);
  c->add_option("--out", o->out, "The checkpoint to write (safetensors)")->required();
  c->add_option("--attention", o->attention,
                "Replace every layer's attention: a kind (moba, topk, threshold: training-free; nsa, infini: new "
                "parameters, need a fine-tune) or a JSON object as a model config's \"attention\"");
  c->add_option("--full-attention-last-n", o->full_last, "Keep the last N layers full (with --attention)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--max-seq-len", o->max_seq_len, "Positions (default: max_position_embeddings)")->check(at_least(1));
  c->add_option("--seed", o->seed, "Initialises the parameters nsa or infini layers add")->capture_default_str();
  c->callback([o] { run(*o); });
}

}  // namespace longctx::cli
