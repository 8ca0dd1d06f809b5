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
  // the needle is a line of its own after a sentence end (the filler is one line of sentences), the
  // question after another
  const std::regex doc_re(R"(^([^]*\. )?The pass key is (\d{5})\. Remember it\. \2 is the pass key\.\n([^]*\. )?)"
                          R"(What is the pass key\? The pass key is (\d{5})\n$)");
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
      EXPECT_EQ(match[2], match[4]) << "the answer is the needle's key";
      EXPECT_EQ(match[2], m["key"].get<std::string>());
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
                     "--passkey-lengths 110,160 --passkey-depths 0,1 --passkey-trials 2 --json " +
                     (dir / "eval.json").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("(cell 4/4: passkey length"), std::string::npos) << r.output;
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
  r = run_cli("eval --checkpoint " + ckpt + " --data " + data + " --seq-len 64 --bucket 16 --passkey-lengths 110 "
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

// `train` with a task mix logs held-out answer losses; `eval --ruler-*` writes the RULER grid (its
// JSON keys, lengths as multiples of the training length) and its plot panels.
TEST(CliRuler, TrainWithATaskMixThenTheRulerGridAsJsonAndPlot) {
  const fs::path dir = longctx::testing::tiny_run_dir("longctx_cli_ruler");
  std::ofstream(dir / "tasks.json") << R"({"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64,
    "max_seq_len": 256, "attention": {"kind": "full"}},
    "train": {"seq_len": 256, "batch_tokens": 512, "steps": 2, "warmup": 1, "eval_every": 2, "ckpt_every": 2,
    "eval_tokens": 256, "tasks": {"fraction": 0.5, "kinds": ["passkey", "copy"], "min_length": 128, "eval_docs": 1}}})";
  CliRun r = run_cli("train --config " + (dir / "tasks.json").string() + " --data " + (dir / "data").string() +
                     " --out " + (dir / "run").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find(" answer "), std::string::npos) << r.output;
  std::istringstream log(read(dir / "run" / "log.jsonl"));
  std::string line, last;
  while (std::getline(log, line)) last = line;
  const nlohmann::json rec = nlohmann::json::parse(last);
  EXPECT_GT(rec["val_answer_loss"]["passkey"].get<double>(), 0.0) << last;
  EXPECT_GT(rec["val_answer_loss"]["copy"].get<double>(), 0.0) << last;

  const std::string ckpt = (dir / "run" / "checkpoint.safetensors").string(), data = (dir / "data").string();
  r = run_cli("eval --checkpoint " + ckpt + " --data " + data + " --no-loss --ruler-lengths 1x,300 --ruler-tasks "
              "passkey,copy --ruler-depths 0.1,0.9 --ruler-trials 1 --json " + (dir / "ruler.json").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("(cell 8/8: copy length 300"), std::string::npos) << r.output;
  const nlohmann::json ev = nlohmann::json::parse(read(dir / "ruler.json"));
  EXPECT_TRUE(ev["passkey"].is_null());
  const nlohmann::json& g = ev["ruler"];
  EXPECT_EQ(g["tasks"], nlohmann::json({"passkey", "copy"}));
  EXPECT_EQ(g["lengths"], nlohmann::json({256, 300}));
  EXPECT_EQ(g["length_names"], nlohmann::json({"1x", "300"}));
  EXPECT_EQ(g["train_length"], 256);
  EXPECT_EQ(g["depths"], nlohmann::json({0.1, 0.9}));
  ASSERT_EQ(g["cells"].size(), 8u);
  for (const char* key : {"task", "length", "depth", "trials", "correct", "accuracy", "partial", "seconds", "sample"})
    EXPECT_TRUE(g["cells"][7].contains(key)) << key;
  EXPECT_EQ(g["cells"][7]["task"], "copy");
  EXPECT_EQ(g["cells"][7]["sample"].get<std::string>().size(), 11u) << "a copy answer is 11 bytes";
  ASSERT_EQ(g["summary"].size(), 4u);
  EXPECT_EQ(g["summary"][3], nlohmann::json({{"task", "copy"}, {"length", 300}, {"trials", 2},
                                              {"correct", g["summary"][3]["correct"]},
                                              {"accuracy", g["summary"][3]["accuracy"]},
                                              {"partial", g["summary"][3]["partial"]}}));
  for (const char* key : {"accuracy", "partial", "seconds", "trials", "seed"}) EXPECT_TRUE(g.contains(key)) << key;

  r = run_cli("eval --checkpoint " + ckpt + " --data " + data + " --no-loss --ruler-lengths 2y");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("'2y' is neither a length in tokens nor a multiple of the training length"), std::string::npos)
      << r.output;
  r = run_cli("eval --checkpoint " + ckpt + " --data " + data + " --no-loss --ruler-tasks passkey,needle");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--ruler-tasks must be 'passkey', "), std::string::npos) << r.output;

  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) GTEST_SKIP() << "gnuplot not installed";
  r = run_cli("eval --checkpoint " + ckpt + " --data " + data + " --seq-len 256 --bucket 64 --max-tokens 512 "
              "--passkey-lengths 256 --passkey-depths 0.5 --passkey-trials 1 --ruler --ruler-tasks passkey,vartrack "
              "--ruler-depths 0.5 --ruler-trials 1 --plot " + (dir / "ruler.png").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(read(dir / "ruler.png").substr(1, 3), "PNG");
}

}  // namespace
