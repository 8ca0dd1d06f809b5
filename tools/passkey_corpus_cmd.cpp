// `longctx passkey-corpus`: a corpus folder of passkey documents (filler from a source corpus, a
// needle at a random depth, the question and the answer) for a passkey fine-tune
// (`longctx train --init-from`). Train documents take their filler from the source's train split,
// val documents from its val split.
#include <fmt/core.h>
#include <longctx/core/error.hpp>
#include <longctx/text/corpus.hpp>
#include <longctx/text/tasks.hpp>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <random>

#include "commands.hpp"

namespace longctx::cli {

namespace {

namespace fs = std::filesystem;

struct Options {
  std::string data, out, tokenizer = "bytes";
  int64_t docs = 0, val_docs = -1, length = 0;
  uint64_t seed = 1;
  bool overwrite = false;
};

// Writes `n` documents into dir/<split>/ with filler from the source's split; returns the
// (key, depth) of each for the manifest.
nlohmann::json write_split(const Options& o, const Tokenizer& tok, const std::string& split, int64_t n,
                           const fs::path& dir) {
  const TaskFiller filler(load_split_texts((fs::path(o.data) / split).string()));
  fs::create_directories(dir / split);
  std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ull + (split == "train" ? 1 : 2));
  nlohmann::json docs = nlohmann::json::array();
  for (int64_t i = 0; i < n; ++i) {
    const double depth = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    const TaskExample ex = make_task_example(TaskKind::passkey, filler, tok, o.length, depth, rng());
    const fs::path file = dir / split / fmt::format("passkey_{:06}.txt", i);
    std::ofstream f(file, std::ios::binary);
    f << ex.prompt << ex.task.answer << "\n";
    LONGCTX_CHECK(f.good(), "passkey-corpus: cannot write ", file.string());
    docs.push_back({{"file", file.filename().string()}, {"key", ex.task.items[0]}, {"depth", depth}});
  }
  return docs;
}

void run(const Options& o) {
  LONGCTX_CHECK(o.docs >= 1, "passkey-corpus: --docs must be >= 1, got ", o.docs);
  LONGCTX_CHECK(o.length >= 1, "passkey-corpus: --length must be >= 1, got ", o.length);
  const int64_t val_docs = o.val_docs >= 0 ? o.val_docs : std::max<int64_t>(1, o.docs / 10);
  LONGCTX_CHECK(val_docs >= 1, "passkey-corpus: --val-docs must be >= 1 (training evaluates on val/)");
  const fs::path out(o.out);
  if (fs::exists(out)) {
    LONGCTX_CHECK(o.overwrite, "passkey-corpus: ", o.out, " exists (remove it or pass --overwrite)");
  }
  const auto tok = make_tokenizer(o.tokenizer);
  // Built in a temporary folder next to the target and renamed at the end: an interrupted run
  // leaves no half corpus behind.
  const fs::path tmp = out.string() + ".partial";
  fs::remove_all(tmp);
  nlohmann::json manifest{{"source", o.data}, {"tokenizer", o.tokenizer}, {"length", o.length}, {"seed", o.seed}};
  manifest["train"] = write_split(o, *tok, "train", o.docs, tmp);
  manifest["val"] = write_split(o, *tok, "val", val_docs, tmp);
  std::ofstream(tmp / "passkey.json") << manifest.dump(1) << "\n";
  fs::remove_all(out);
  fs::rename(tmp, out);
  fmt::print(stderr, "wrote {} train and {} val passkey documents of {} prompt tokens ({}) to {}\n", o.docs, val_docs,
             o.length, o.tokenizer, o.out);
}

}  // namespace

void add_passkey_corpus(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* c = app.add_subcommand("passkey-corpus", "Write a corpus of passkey documents for a passkey fine-tune");
  c->add_option("--data", o->data, "Source corpus folder (filler text from its train/ and val/)")->required();
  c->add_option("--out", o->out, "Corpus folder to write (train/, val/, passkey.json)")->required();
  c->add_option("--docs", o->docs, "Training documents")->required();
  c->add_option("--val-docs", o->val_docs, "Validation documents (default: docs / 10, at least 1)");
  c->add_option("--length", o->length, "Prompt tokens per document (the answer and a newline follow)")->required();
  c->add_option("--tokenizer", o->tokenizer, "Tokenizer that counts the length: bytes or spm:<model> (the model's)")
      ->capture_default_str();
  c->add_option("--seed", o->seed, "Seed of keys, depths and filler offsets")->capture_default_str();
  c->add_flag("--overwrite", o->overwrite, "Replace --out if it exists");
  c->callback([o] { run(*o); });
}

}  // namespace longctx::cli
