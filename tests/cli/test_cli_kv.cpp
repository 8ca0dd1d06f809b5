// `generate` and `eval` with the KV cache flags: --kv-dtype int8 and SpAtten cascade pruning
// (--kv-budget, --kv-window, --kv-sink) on a tiny full-attention run; the loss by decoding equals
// the forward's when nothing is pruned; bad budgets and sparse layers are refused clearly.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "cli_helpers.hpp"

namespace {

namespace fs = std::filesystem;
using longctx::testing::CliRun;
using longctx::testing::run_cli;

nlohmann::json eval_json(const std::string& ckpt, const fs::path& dir, const std::string& flags) {
  const fs::path out = dir / "eval.json";
  fs::remove(out);
  const CliRun r = run_cli("eval --checkpoint " + ckpt + " --data " + (dir / "data").string() +
                           " --seq-len 64 --max-tokens 256 --json " + out.string() + " " + flags);
  EXPECT_EQ(r.status, 0) << r.output;
  std::ifstream f(out);
  return f ? nlohmann::json::parse(f) : nlohmann::json{};
}

TEST(CliKv, BudgetAndInt8InGenerateAndEval) {
  const fs::path dir = longctx::testing::tiny_run_dir("longctx_cli_kv");
  std::ofstream(dir / "config.json") << R"({"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64,
    "max_seq_len": 64, "attention": {"kind": "full"}},
    "train": {"seq_len": 64, "batch_tokens": 256, "steps": 2, "warmup": 1, "eval_every": 2, "ckpt_every": 2,
    "eval_tokens": 256}})";
  CliRun r = run_cli("train --config " + (dir / "config.json").string() + " --data " + (dir / "data").string() +
                     " --out " + (dir / "run").string());
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string ckpt = (dir / "run" / "checkpoint.safetensors").string();

  r = run_cli("generate --checkpoint " + ckpt + " --prompt 'And God said, Let there be light: and there was' "
              "--tokens 10 --kv-budget 24 --kv-window 4 --kv-sink 2 --kv-dtype int8");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.rfind("And God said, Let there be light: and there was", 0), 0u) << r.output;
  EXPECT_NE(r.output.find("int8 KV cache, budget 24 (window 4, sink 2)"), std::string::npos) << r.output;
  r = run_cli("generate --checkpoint " + ckpt + " --prompt 'And God' --kv-budget 5");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("budget 5 must be >= sink 4 + max(window 32"), std::string::npos) << r.output;

  // Nothing pruned (a budget of the whole window): the decoded loss is the forward's.
  const nlohmann::json plain = eval_json(ckpt, dir, "");
  const nlohmann::json whole = eval_json(ckpt, dir, "--kv-budget 64 --kv-window 4");
  ASSERT_TRUE(whole["summary"]["kv"]["loss_by_decode"].get<bool>());
  EXPECT_FALSE(plain["summary"]["kv"]["loss_by_decode"].get<bool>());
  const double loss = plain["summary"]["val_loss"].get<double>();
  EXPECT_NEAR(whole["summary"]["val_loss"].get<double>(), loss, 1e-4 * loss);
  // A real budget, with the passkey decode under it, and int8.
  const nlohmann::json pruned =
      eval_json(ckpt, dir, "--kv-budget 24 --kv-window 4 --kv-sink 2 --passkey-lengths 120 --passkey-trials 1 "
                           "--passkey-depths 0.5");
  EXPECT_EQ(pruned["summary"]["kv"]["budget"], nlohmann::json::array({24}));
  EXPECT_TRUE(std::isfinite(pruned["summary"]["val_loss"].get<double>()));
  EXPECT_NE(pruned["summary"]["val_loss"].get<double>(), loss) << "tokens were pruned";
  EXPECT_EQ(pruned["passkey"]["cells"].size(), 1u);
  const nlohmann::json i8 = eval_json(ckpt, dir, "--kv-dtype int8");
  EXPECT_NEAR(i8["summary"]["val_loss"].get<double>(), loss, 0.01 * loss);

  // Cascade pruning runs over dense attention only: the MoBA run of the other CLI tests refuses.
  std::ofstream(dir / "moba.json") << R"({"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64,
    "max_seq_len": 64, "attention": {"kind": "moba", "block_size": 16, "top_k": 2}},
    "train": {"seq_len": 64, "batch_tokens": 256, "steps": 1, "warmup": 1, "eval_tokens": 256}})";
  r = run_cli("train --config " + (dir / "moba.json").string() + " --data " + (dir / "data").string() + " --out " +
              (dir / "moba").string());
  ASSERT_EQ(r.status, 0) << r.output;
  r = run_cli("generate --checkpoint " + (dir / "moba" / "checkpoint.safetensors").string() +
              " --prompt 'And God' --kv-budget 40");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("runs over dense attention, but layer 0 is moba"), std::string::npos) << r.output;
}

}  // namespace
