// Running the real `longctx` binary from tests, and a tiny corpus + config to train on.
#pragma once
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace longctx::testing {

struct CliRun {
  int status;
  std::string output;  // stdout and stderr
};

inline CliRun run_cli(const std::string& args) {
  const std::string cmd = std::string(LONGCTX_CLI_PATH) + " " + args + " 2>&1";
  FILE* f = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, f)) > 0;) out.append(buf, n);
  return {pclose(f), out};
}

// A tiny corpus (data/train, data/val) and config (config.json: MoBA + a full last layer, 3 steps)
// in a fresh temp folder of this name (tests running in parallel use different names).
inline std::filesystem::path tiny_run_dir(const std::string& name = "longctx_cli_train") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / name;
  fs::remove_all(dir);
  fs::create_directories(dir / "data" / "train");
  fs::create_directories(dir / "data" / "val");
  std::string text;
  for (int i = 0; i < 40; ++i) text += "And God said, Let there be light: and there was light. ";
  std::ofstream(dir / "data" / "train" / "a.txt") << text;
  std::ofstream(dir / "data" / "val" / "b.txt") << text;
  std::ofstream(dir / "config.json") << R"({"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64,
    "max_seq_len": 64, "attention": {"kind": "moba", "block_size": 16, "top_k": 2}, "full_attention_last_n": 1},
    "train": {"seq_len": 64, "batch_tokens": 256, "steps": 3, "warmup": 1, "eval_every": 2, "ckpt_every": 2,
    "eval_tokens": 256}})";
  return dir;
}

}  // namespace longctx::testing
