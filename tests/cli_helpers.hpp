// Running the real `longctx` binary from tests, and a tiny corpus + config to train on.
#pragma once
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

extern char** environ;

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

// Starts the `longctx` binary with these arguments, its stdout and stderr going to the file
// `output`, and returns at once with its pid (for tests that signal it; wait with wait_cli).
inline pid_t spawn_cli(const std::vector<std::string>& args, const std::string& output) {
  std::vector<std::string> words{LONGCTX_CLI_PATH};
  words.insert(words.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& w : words) argv.push_back(w.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  posix_spawn_file_actions_addopen(&files, 1, output.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&files, 1, 2);
  pid_t pid = 0;
  const int err = posix_spawn(&pid, argv[0], &files, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&files);
  if (err != 0) throw std::runtime_error("cannot start " + words[0] + ": error " + std::to_string(err));
  return pid;
}

// Waits for a process started by spawn_cli; returns its wait status (WIFEXITED, WTERMSIG, ...).
inline int wait_cli(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) throw std::runtime_error("waitpid failed: error " + std::to_string(errno));
  return status;
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
