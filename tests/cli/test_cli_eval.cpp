// Smoke tests of `longctx passkey-corpus`, `longctx train --init-from` and `longctx eval` with
// passkey retrieval beyond the training length, JSON and plots.
#include <gtest/gtest.h>
#include <longctx/model/checkpoint.hpp>
#include <longctx/train/trainer.hpp>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "cli_helpers.hpp"

namespace {

namespace fs = std::filesystem;
using longctx::testing::CliRun;
using longctx::testing::run_cli;

std::string read(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A tiny run folder with a trained checkpoint (max_seq_len 64) at dir/run.
fs::path trained(const std::string& name) {
  const fs::path dir = longctx::testing::tiny_run_dir(name);
  const CliRun r = run_cli("train --config " + (dir / "config.json").string() + " --data " + (dir / "data").string() +
                           " --out " + (dir / "run").string());
  EXPECT_EQ(r.status, 0) << r.output;
  return dir;
}

TEST(CliPasskey, CorpusDocumentsAnswerTheirNeedlesAndFineTuneInitsFromACheckpoint) {
  const fs::path dir = trained("longctx_cli_passkey_corpus");
  const fs::path pk = dir / "pk";
  CliRun r = run_cli("passkey-corpus --data " + (dir / "data").string() + " --out " + pk.string() +
                     " --docs 4 --val-docs 2 --length 150 --seed 3");
  ASSERT_EQ(r.status, 0) << r.output;
  const std::regex doc_re(R"(^[^]* The pass key is (\d{5})\. Remember it\. \1 is the pass key\. [^]*)"
                          R"( What is the pass key\? The pass key is (\d{5})\n$)");
  const nlohmann::json manifest = nlohmann::json::parse(read(pk / "passkey.json"));
  for (const auto& [split, n] : {std::pair<std::string, size_t>{"train", 4}, {"val", 2}}) {
    ASSERT_EQ(manifest[split].size(), n);
    size_t files = 0;
    for (const auto& e : fs::directory_iterator(pk / split)) files += e.path().extension() == ".txt";
    EXPECT_EQ(files, n) << split;
    for (const auto& m : manifest[split]) {
      const std::string text = read(pk / split / m["file"].get<std::string>());
      std::smatch match;
      ASSERT_TRUE(std::regex_match(text, match, doc_re)) << text;
      EXPECT_EQ(match[1], match[2]) << "the answer is the needle's key";
      EXPECT_EQ(match[1], m["key"].get<std::string>());
      EXPECT_EQ(text.size(), 150u + 6u + 1u) << "prompt bytes + \" <key>\" + newline";
    }
  }
  r = run_cli("passkey-corpus --data " + (dir / "data").string() + " --out " + pk.string() + " --docs 1 --length 150");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("exists (remove it or pass --overwrite)"), std::string::npos) << r.output;

  // fine-tune: a config without "model" reuses the checkpoint's, max_seq_len raised to seq_len
  const std::string src = (dir / "run" / "checkpoint.safetensors").string();
  std::ofstream(dir / "ft.json") << R"({"train": {"seq_len": 160, "batch_tokens": 320, "steps": 2, "warmup": 1,
      "eval_every": 2, "ckpt_every": 2, "eval_tokens": 160}})";
  r = run_cli("train --config " + (dir / "ft.json").string() + " --data " + pk.string() + " --out " +
              (dir / "ft").string() + " --init-from " + src);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("initialised from the weights of"), std::string::npos) << r.output;
  const longctx::CheckpointInfo ft = longctx::read_checkpoint_info((dir / "ft" / "checkpoint.safetensors").string());
  EXPECT_EQ(ft.model.max_seq_len, 160);
  EXPECT_EQ(std::string(ft.model.attention[0].name()), "moba");
  // a config whose model differs is refused, naming the field
  std::ofstream(dir / "bad.json") << R"({"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 96,
    "max_seq_len": 64, "attention": {"kind": "moba", "block_size": 16, "top_k": 2}, "full_attention_last_n": 1},
    "train": {"seq_len": 64, "batch_tokens": 256, "steps": 1}})";
  r = run_cli("train --config " + (dir / "bad.json").string() + " --data " + pk.string() + " --out " +
              (dir / "bad").string() + " --init-from " + src);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("has another model config (checkpoint vs config): d_ff: 64 vs 96"), std::string::npos)
      << r.output;
}

TEST(CliPasskey, EvalBeyondTrainingLengthWritesJsonAndPlots) {
  const fs::path dir = trained("longctx_cli_passkey_eval");
  const std::string ckpt = (dir / "run" / "checkpoint.safetensors").string(), data = (dir / "data").string();
  CliRun r = run_cli("eval --checkpoint " + ckpt + " --data " + data + " --seq-len 128 --bucket 32 " +
                     "--passkey-lengths 100,160 --passkey-depths 0,1 --passkey-trials 2 --json " +
                     (dir / "eval.json").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("(cell 4/4: length"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ETA"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("peak RSS"), std::string::npos) << r.output;
  const nlohmann::json ev = nlohmann::json::parse(read(dir / "eval.json"));
  const auto& s = ev["summary"];
  EXPECT_GT(s["val_loss"].get<double>(), 0.0);
  EXPECT_EQ(s["seq_len"], 128);
  EXPECT_EQ(ev["rows"].size(), 4u);
  EXPECT_GT(s["peak_rss_mb"].get<double>(), 0.0);
  EXPECT_GT(s["seconds"].get<double>(), 0.0);
  EXPECT_GT(s["tokens_per_s"].get<double>(), 0.0);
  EXPECT_EQ(s["model"]["trained_max_seq_len"], 64);
  EXPECT_GE(s["model"]["eval_max_seq_len"].get<int64_t>(), 160);
  EXPECT_EQ(s["model"]["attention"], nlohmann::json({"moba", "full"}));
  ASSERT_EQ(ev["passkey"]["cells"].size(), 4u);
  EXPECT_EQ(ev["passkey"]["cells"][3]["length"], 160);
  EXPECT_EQ(ev["passkey"]["cells"][3]["depth"], 1.0);
  EXPECT_EQ(ev["passkey"]["cells"][3]["trials"], 2);
  EXPECT_GE(ev["passkey"]["accuracy"].get<double>(), 0.0);

  r = run_cli("eval --checkpoint " + ckpt + " --data " + data + " --no-loss");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("leaves nothing to evaluate"), std::string::npos) << r.output;
  r = run_cli("eval --checkpoint " + ckpt + " --data " + data + " --no-loss --passkey --seq-len 128 --passkey-depths 0.5 "
              "--passkey-trials 1 --json " + (dir / "pk_only.json").string());
  ASSERT_EQ(r.status, 0) << r.output;
  const nlohmann::json pk = nlohmann::json::parse(read(dir / "pk_only.json"));
  EXPECT_EQ(pk["rows"].size(), 0u);
  EXPECT_EQ(pk["passkey"]["lengths"], nlohmann::json({128}));  // --passkey alone runs at --seq-len

  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) GTEST_SKIP() << "gnuplot not installed";
  r = run_cli("eval --checkpoint " + ckpt + " --data " + data + " --seq-len 64 --bucket 16 --passkey-lengths 100 "
              "--passkey-depths 0,0.5,1 --passkey-trials 1 --plot " + (dir / "eval.png").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(read(dir / "eval.png").substr(1, 3), "PNG");
  const fs::path script = fs::path(LONGCTX_CLI_PATH).parent_path().parent_path() / "scripts" / "plot_eval.sh";
  const std::string cmd = "bash " + script.string() + " --positions " + (dir / "cmp.png").string() + " " +
                          (dir / "eval.json").string() + " " + (dir / "eval.json").string() + " 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0);
  EXPECT_EQ(read(dir / "cmp.png").substr(1, 3), "PNG");
  EXPECT_NE(std::system(("bash " + script.string() + " --positions " + (dir / "x.png").string() + " " +
                         (dir / "pk_only.json").string() + " 2>/dev/null").c_str()), 0)
      << "a JSON without position-wise loss is refused";
}

}  // namespace
