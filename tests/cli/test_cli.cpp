// Smoke tests of the real `longctx` binary: it runs, writes what it says, and fails clearly.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "cli_helpers.hpp"

namespace {

using longctx::testing::CliRun;
using longctx::testing::run_cli;
using longctx::testing::tiny_run_dir;

TEST(Cli, BenchAttentionWritesOneRowPerMethodAndLength) {
  const auto path = std::filesystem::temp_directory_path() / "longctx_cli_bench.json";
  std::filesystem::remove(path);
  const CliRun r = run_cli("bench attention --methods dense,moba --lengths 300,512 --heads 2 --kv-heads 1 "
                        "--head-dim 32 --block-size 64 --top-k 2 --reps 1 --min-seconds 0 --json " + path.string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("speedup"), std::string::npos) << r.output;
  std::ifstream f(path);
  const nlohmann::json j = nlohmann::json::parse(f);
  ASSERT_EQ(j["rows"].size(), 4u);
  EXPECT_GT(j["machine"]["sgemm_gflops"].get<double>(), 0.0);
  for (const auto& row : j["rows"]) {
    EXPECT_GT(row["time_s"].get<double>(), 0.0);
    EXPECT_GT(row["peak_rss_mb"].get<double>(), 0.0);
    EXPECT_GT(row["speedup"].get<double>(), 0.0);
    if (row["method"] == "moba") {
      // 2 blocks of 64 per query at most: fewer pairs than dense causal at these lengths
      EXPECT_GT(row["ideal_speedup"].get<double>(), 1.0);
    } else {
      EXPECT_EQ(row["ideal_speedup"].get<double>(), 1.0);
    }
  }
  std::filesystem::remove(path);
}

TEST(Cli, BenchDecodeAndThresholdRun) {
  const auto path = std::filesystem::temp_directory_path() / "longctx_cli_decode.json";
  std::filesystem::remove(path);
  CliRun r = run_cli("bench decode --lengths 300 --heads 4 --kv-heads 2 --head-dim 16 --block-size 64 --top-k 2 "
                     "--chunk 8 --min-seconds 0 --json " + path.string());
  ASSERT_EQ(r.status, 0) << r.output;
  std::ifstream f(path);
  const nlohmann::json j = nlohmann::json::parse(f);
  ASSERT_EQ(j["rows"].size(), 8u);  // 4 methods x (decode, chunk8)
  for (const auto& row : j["rows"]) EXPECT_GT(row["tokens_per_s"].get<double>(), 0.0);
  std::filesystem::remove(path);
  // storages side by side, errors against fp32, and a cascade-pruning budget
  r = run_cli("bench decode --methods dense,moba --lengths 300 --heads 4 --kv-heads 2 --head-dim 32 --block-size 64 "
              "--top-k 2 --dtypes bf16,int8 --kv-budgets 100 --kv-window 8 --chunk-max-length 0 --min-seconds 0 --json " +
              path.string());
  ASSERT_EQ(r.status, 0) << r.output;
  const nlohmann::json k = nlohmann::json::parse(std::ifstream(path));
  ASSERT_EQ(k["rows"].size(), 6u);  // 2 methods x 2 dtypes, then the budget x 2 dtypes
  for (const auto& row : k["rows"]) {
    EXPECT_GT(row["x_bf16"].get<double>(), 0.0);
    if (row["method"] == "dense/budget=100") {
      EXPECT_LT(row["kv_mb"].get<double>(), 0.1);
      continue;
    }
    EXPECT_LT(row["err_rel"].get<double>(), row["dtype"] == "int8" ? 0.05 : 0.01) << row.dump();
    EXPECT_GT(row["err_rel"].get<double>(), 0.0) << row.dump();
  }
  std::filesystem::remove(path);
  r = run_cli("bench threshold --length 256 --queries 4 --block-size 16 --taus 0.9 --top-ks 2");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("threshold/heuristic"), std::string::npos) << r.output;
  // moba with its key convolution in front of the kernel
  r = run_cli("bench attention --methods topk,threshold,moba --lengths 128 --heads 2 --kv-heads 1 --head-dim 16 "
              "--block-size 16 --top-k 2 --key-conv 3 --key-conv-bias true --reps 1 --min-seconds 0 --json " + path.string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("keys_frac"), std::string::npos) << r.output;
  std::ifstream g(path);
  const nlohmann::json rows = nlohmann::json::parse(g)["rows"];
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[2]["method"], "moba");
  EXPECT_EQ(rows[2]["key_conv"], 3);
  std::filesystem::remove(path);
}

TEST(Cli, BenchExpReportsBothExps) {
  const auto path = std::filesystem::temp_directory_path() / "longctx_cli_exp.json";
  std::filesystem::remove(path);
  const CliRun r = run_cli("bench exp --elements 256 --length 40 --heads 2 --kv-heads 1 --head-dim 16 --rounds 1 "
                           "--min-seconds 0 --json " + path.string());
  ASSERT_EQ(r.status, 0) << r.output;
  std::ifstream f(path);
  const nlohmann::json j = nlohmann::json::parse(f);
  ASSERT_EQ(j["rows"].size(), 4u);  // (exp, dense-fwd) x (poly6, poly3)
  const auto& rows = j["rows"];
  EXPECT_EQ(rows[0]["exp"], "poly6");
  EXPECT_EQ(rows[1]["exp"], "poly3");
  EXPECT_LT(rows[0]["max_rel_err"].get<double>(), 3e-7);
  EXPECT_GT(rows[1]["max_rel_err"].get<double>(), 5e-5);  // the degree-3 polynomial's 7.5e-5
  EXPECT_LT(rows[1]["max_rel_err"].get<double>(), 8e-5);
  for (int i : {0, 1}) EXPECT_GT(rows[i]["elements_per_s"].get<double>(), 0.0);
  EXPECT_EQ(rows[2]["case"], "dense-fwd");
  EXPECT_LT(rows[2]["out_rel_err"].get<double>(), 1e-5);
  EXPECT_GT(rows[3]["out_rel_err"].get<double>(), rows[2]["out_rel_err"].get<double>());
  EXPECT_LT(rows[3]["out_rel_err"].get<double>(), 1e-3);
  std::filesystem::remove(path);
}

TEST(Cli, UnknownMethodFailsWithAClearMessage) {
  const CliRun r = run_cli("bench attention --methods nosuch --lengths 64");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("unknown method 'nosuch'"), std::string::npos) << r.output;
}

TEST(Cli, BadKernelArgumentIsReported) {
  CliRun r = run_cli("bench attention --methods dense --lengths 64 --heads 3 --kv-heads 2");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("query heads (3) must be a multiple of kv heads (2)"), std::string::npos) << r.output;
  // checked before any worker starts
  r = run_cli("bench attention --methods moba --lengths 64 --block-size 0");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("bench attention: block_size must be > 0, got 0"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("worker failed"), std::string::npos) << r.output;
  r = run_cli("bench attention --methods moba --lengths 64 --key-conv 3 --mode decode");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("bench attention: --key-conv is not timed in decode mode"), std::string::npos) << r.output;
  r = run_cli("bench attention --methods moba --lengths 64 --key-conv 17");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("bench attention: key_conv must be in [0, 16] (0: none), got 17"), std::string::npos) << r.output;
  r = run_cli("bench attention --methods dense --lengths 64,0");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--lengths: must be >= 1"), std::string::npos) << r.output;
}

}  // namespace

namespace {

namespace fs = std::filesystem;

size_t lines_of(const fs::path& p) {
  std::ifstream f(p);
  size_t n = 0;
  for (std::string l; std::getline(f, l);) n += !l.empty();
  return n;
}

TEST(Cli, TrainResumeEvalGenerate) {
  const fs::path dir = tiny_run_dir();
  const std::string common = "--config " + (dir / "config.json").string() + " --data " + (dir / "data").string() +
                             " --out " + (dir / "run").string();
  CliRun r = run_cli("train " + common);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("unigram entropy"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(dir / "run" / "checkpoint.safetensors"));
  EXPECT_EQ(lines_of(dir / "run" / "log.jsonl"), 3u);

  r = run_cli("train " + common + " --resume --steps 5");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
  EXPECT_EQ(lines_of(dir / "run" / "log.jsonl"), 5u);  // steps 4 and 5 appended

  const std::string ckpt = (dir / "run" / "checkpoint.safetensors").string();
  r = run_cli("eval --checkpoint " + ckpt + " --data " + (dir / "data").string() + " --seq-len 64 --bucket 16 --json " +
              (dir / "eval.json").string());
  ASSERT_EQ(r.status, 0) << r.output;
  const nlohmann::json ev = nlohmann::json::parse(std::ifstream(dir / "eval.json"));
  EXPECT_EQ(ev["rows"].size(), 4u);
  EXPECT_GT(ev["summary"]["val_loss"].get<double>(), 0.0);

  r = run_cli("generate --checkpoint " + ckpt + " --prompt 'And God' --tokens 12 --seed 3");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.rfind("And God", 0), 0u) << r.output;
  EXPECT_NE(r.output.find("tokens/s"), std::string::npos) << r.output;

  // the prompt from a file or standard input; a chunked prefill and a bf16 cache give the same
  // greedy text as one call over an fp32 cache (stdout only: the timing line differs)
  std::ofstream(dir / "prompt.txt") << "And God said, Let there be";
  auto text = [&](const std::string& args) {
    const fs::path out = dir / "generated.txt";
    const std::string cmd = std::string(LONGCTX_CLI_PATH) + " generate --checkpoint " + ckpt +
                            " --tokens 20 --temperature 0 " + args + " > " + out.string() + " 2>/dev/null";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    std::ifstream f(out);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  };
  const std::string whole = text("--prompt-file " + (dir / "prompt.txt").string());
  EXPECT_EQ(whole.rfind("And God said, Let there be", 0), 0u) << whole;
  EXPECT_GT(whole.size(), std::string("And God said, Let there be").size());
  EXPECT_EQ(text("--prompt-file " + (dir / "prompt.txt").string() + " --prefill-chunk 3"), whole);
  EXPECT_EQ(text("--prompt-file - < " + (dir / "prompt.txt").string()), whole);
  EXPECT_EQ(text("--prompt 'And God said, Let there be' --kv-dtype bf16").substr(0, 30), whole.substr(0, 30));
  EXPECT_EQ(text("--prompt 'And God said, Let there be' --kv-dtype int8").substr(0, 30), whole.substr(0, 30));
  // a weights-only export generates the same text and is no training checkpoint
  const std::string lean = (dir / "lean.safetensors").string();
  r = run_cli("export --checkpoint " + ckpt + " --out " + lean);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--weights-only is the one export format so far"), std::string::npos) << r.output;
  r = run_cli("export --checkpoint " + ckpt + " --out " + lean + " --weights-only");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_LT(fs::file_size(lean), fs::file_size(ckpt) / 2);
  {
    const fs::path out = dir / "generated.txt";
    const std::string cmd = std::string(LONGCTX_CLI_PATH) + " generate --checkpoint " + lean +
                            " --tokens 20 --temperature 0 --prompt-file " + (dir / "prompt.txt").string() + " > " +
                            out.string() + " 2>/dev/null";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    std::ifstream f(out);
    EXPECT_EQ(std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()), whole);
  }
  r = run_cli("train --config " + (dir / "config.json").string() + " --data " + (dir / "data").string() + " --out " +
              (dir / "lean_run").string() + " --init-from " + lean + " --steps 1");
  EXPECT_EQ(r.status, 0) << r.output;  // a fine-tune starts from it

  r = run_cli("generate --checkpoint " + ckpt + " --prompt-file " + (dir / "none.txt").string());
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("cannot read --prompt-file"), std::string::npos) << r.output;
  r = run_cli("generate --checkpoint " + ckpt + " --kv-dtype int4");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--kv-dtype"), std::string::npos) << r.output;
}

// Bad output paths and conflicting runs are refused before any work (issue 19's first items).
TEST(Cli, RefusesBeforeWorking) {
  const fs::path dir = tiny_run_dir("longctx_cli_refuse");
  const std::string common = "--config " + (dir / "config.json").string() + " --data " + (dir / "data").string() +
                             " --out " + (dir / "run").string();
  CliRun r = run_cli("train " + common + " --steps 1");
  ASSERT_EQ(r.status, 0) << r.output;
  r = run_cli("train " + common + " --steps 1");  // a second fresh run into the same folder
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("already holds a run (checkpoint.safetensors): continue it with --resume"),
            std::string::npos)
      << r.output;
  r = run_cli("train " + common + " --steps 2 --overwrite");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(lines_of(dir / "run" / "log.jsonl"), 2u);  // replaced, not appended

  const std::string ckpt = (dir / "run" / "checkpoint.safetensors").string();
  r = run_cli("eval --checkpoint " + ckpt + " --data " + (dir / "data").string() + " --json " +
              (dir / "missing" / "x.json").string());
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("does not exist"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("eval took"), std::string::npos) << "the evaluation ran before the path was checked";

  r = run_cli("generate --checkpoint " + ckpt + " --threads 100000 --prompt a --tokens 1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--threads 100000: at most"), std::string::npos) << r.output;
  r = run_cli("generate --checkpoint " + ckpt + " --top-p 0 --prompt 'And God'");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("top_p must be in (0, 1], got 0"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("And God"), std::string::npos) << "the prompt was echoed before the options were checked";
  r = run_cli("generate --checkpoint " + ckpt + " --prompt 'And God' --tokens 70");  // the model was trained on 64
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("run past the 64 positions the model was trained on"), std::string::npos) << r.output;
  r = run_cli("generate --checkpoint " + ckpt + " --prompt 'And God' --tokens 0");  // the prompt's logits only
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("decoded 0 tokens"), std::string::npos) << r.output;
  r = run_cli("generate --checkpoint " + ckpt + " --prompt a --tokens 100000000000");  // caches past the RAM
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("generate: 1 prompt + 100000000000 new tokens (the weights, a RoPE table and KV caches of "
                          "100000000001 positions) needs"),
            std::string::npos)
      << r.output;

  // bench train defaults to the config's max_seq_len (64 here) and refuses a longer --seq-len
  r = run_cli("bench train --config " + (dir / "config.json").string() + " --steps 1");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("1 x 64 tokens"), std::string::npos) << r.output;
  r = run_cli("bench train --config " + (dir / "config.json").string() + " --steps 1 --seq-len 128");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--seq-len 128 is longer than the config's max_seq_len (64)"), std::string::npos)
      << r.output;
}

// The train log carries each step's MoE routing and progressive-sparsity ratios.
TEST(Cli, TrainLogsMoeRoutingAndSparsity) {
  const fs::path dir = tiny_run_dir("longctx_cli_moe_log");
  std::ofstream(dir / "moe.json") << R"({"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64,
    "max_seq_len": 64, "attention": {"kind": "topk", "block_size": 16, "top_k": 2},
    "ffn": {"kind": "moe", "num_experts": 4, "top_k": 1, "d_ff": 16, "router": "bias_free", "gate_norm": "all"}},
    "train": {"seq_len": 64, "batch_tokens": 256, "steps": 3, "warmup": 1, "eval_every": 3, "ckpt_every": 3,
    "eval_tokens": 256, "sparsity_steps": 2}})";
  const CliRun r = run_cli("train --config " + (dir / "moe.json").string() + " --data " + (dir / "data").string() +
                           " --out " + (dir / "run").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("memory: about"), std::string::npos) << r.output;
  std::ifstream log(dir / "run" / "log.jsonl");
  std::string line;
  std::vector<nlohmann::json> steps;
  while (std::getline(log, line)) steps.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(steps.size(), 3u);
  for (const nlohmann::json& s : steps) {
    ASSERT_TRUE(s.contains("moe")) << s.dump();
    EXPECT_EQ(s["moe"]["1"]["load"].size(), 4u);
    EXPECT_EQ(s["moe"]["1"]["expert_bias"].size(), 4u);
    EXPECT_GT(s["moe"]["0"]["router_entropy"].get<double>(), 0.0);
  }
  EXPECT_EQ(steps[0]["kept_ratio"]["0"], 1.0);  // all 4 blocks at step 1
  EXPECT_EQ(steps[2]["kept_ratio"]["1"], 0.5);  // top_k 2 of 4 from step sparsity_steps on
}

TEST(Cli, TrainRejectsBadConfigAndMissingData) {
  const fs::path dir = tiny_run_dir("longctx_cli_badconfig");
  std::ofstream(dir / "bad.json") << R"({"model": {"n_heads": 3, "d_model": 32}})";
  CliRun r = run_cli("train --config " + (dir / "bad.json").string() + " --data " + (dir / "data").string());
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("n_heads (3) must divide d_model (32)"), std::string::npos) << r.output;
  // a huge model is refused with its memory before anything is allocated or loaded
  std::ofstream(dir / "huge.json") << R"({"model": {"d_model": 8192, "n_heads": 64, "n_layers": 512, "d_ff": 32768}})";
  r = run_cli("train --config " + (dir / "huge.json").string() + " --data " + (dir / "data").string());
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("needs"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("more than this machine's"), std::string::npos) << r.output;
  std::ofstream(dir / "layers.json") << R"({"model": {"n_layers": 100000000}})";
  r = run_cli("train --config " + (dir / "layers.json").string() + " --data " + (dir / "data").string());
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("n_layers must be in [1, 65536], got 100000000"), std::string::npos) << r.output;
  r = run_cli("train --config " + (dir / "config.json").string() + " --data " + (dir / "nodata").string());
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("no such folder"), std::string::npos) << r.output;
}

}  // namespace
