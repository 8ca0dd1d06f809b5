// `longctx train` stopped the hard way: SIGKILL at many moments, some inside a checkpoint write,
// each followed by --resume; and SIGINT / SIGTERM, which save and exit. After every stop the
// checkpoint on disk loads, the log holds whole lines, one per step, and the finished run's loss
// curve and weights are bit-equal to an uninterrupted run's (same config, one thread).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <unistd.h>
#include <longctx/model/checkpoint.hpp>
#include <longctx/model/safetensors.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli_helpers.hpp"

namespace {

namespace fs = std::filesystem;
using longctx::testing::run_cli;
using longctx::testing::spawn_cli;
using longctx::testing::wait_cli;

// Under AddressSanitizer (scripts/sanitize.sh) everything runs 3-5x slower: fewer kills.
bool sanitized() {
#if defined(__SANITIZE_ADDRESS__)
  return true;
#else
  return std::getenv("LONGCTX_SANITIZED") != nullptr;
#endif
}

// A tiny corpus and a config of `steps` steps, each a few milliseconds, with a checkpoint every
// `ckpt_every` steps: about 0.5M parameters, so a checkpoint (weights + AdamW moments) is ~5.5 MB.
fs::path run_dir(const std::string& name, int steps, int ckpt_every) {
  const fs::path dir = longctx::testing::tiny_run_dir(name);
  std::ofstream(dir / "config.json") << R"({"model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 1024,
    "max_seq_len": 64, "attention": {"kind": "full"}},
    "train": {"seq_len": 64, "batch_tokens": 64, "warmup": 2, "eval_tokens": 64, "steps": )"
                                     << steps << R"(, "eval_every": )" << steps << R"(, "ckpt_every": )" << ckpt_every
                                     << "}}";
  return dir;
}

std::vector<std::string> train_args(const fs::path& dir, const std::string& out) {
  return {
      "train", "--threads",         "1", "--config", (dir / "config.json").string(), "--data", (dir / "data").string(),
      "--out", (dir / out).string()};
}

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// The log's records; fails the test on a torn or unreadable line.
std::vector<nlohmann::json> read_log(const fs::path& p) {
  const std::string text = read_text(p);
  EXPECT_TRUE(text.empty() || text.back() == '\n')
      << p << " ends in a torn line: " << text.substr(text.rfind('\n') + 1);
  std::vector<nlohmann::json> records;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    records.push_back(nlohmann::json::parse(line, nullptr, false));
    EXPECT_FALSE(records.back().is_discarded()) << p << " has an unreadable line: " << line;
  }
  return records;
}

// The step a checkpoint holds, after loading every tensor of it (which checks the file is whole).
int64_t checkpoint_step(const fs::path& p) {
  const longctx::SafetensorsFile f = longctx::load_safetensors(p.string());
  EXPECT_GT(f.tensors.size(), 0u);
  EXPECT_EQ(longctx::read_checkpoint_info(p.string()).model.d_model, 64);
  return nlohmann::json::parse(f.metadata.at("longctx.state")).at("step").get<int64_t>();
}

int partial_checkpoints(const fs::path& out) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(out))
    n += e.path().filename().string().rfind("checkpoint.safetensors.tmp.", 0) == 0;
  return n;
}

// The step in "resumed from <ckpt> at step N" of a launch's output, or -1 when it never got there.
int64_t resumed_step(const std::string& output) {
  const std::string mark = " at step ";
  const size_t at = output.find("resumed from ");
  if (at == std::string::npos) return -1;
  return std::stoll(output.substr(output.find(mark, at) + mark.size()));
}

// Waits until the process creates its n-th checkpoint temp file in `out`, the start of a write
// (true), or exits first (false). inotify, so the kill lands within microseconds of the creation.
bool wait_for_checkpoint_write(int watch, pid_t pid, int n) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::minutes(5);  // a hang guard only
  alignas(inotify_event) char buf[4096];
  while (std::chrono::steady_clock::now() < give_up) {
    pollfd p{watch, POLLIN, 0};
    if (poll(&p, 1, 20) > 0) {
      const ssize_t len = read(watch, buf, sizeof buf);
      for (ssize_t i = 0; i < len;) {
        const auto* e = reinterpret_cast<const inotify_event*>(buf + i);
        if (e->len > 0 && std::string(e->name).rfind("checkpoint.safetensors.tmp.", 0) == 0 && --n == 0) return true;
        i += ssize_t(sizeof(inotify_event) + e->len);
      }
    } else if (siginfo_t info{};
               waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid) {
      return false;  // exited (left for wait_cli to reap)
    }
  }
  return true;
}

std::string command(const std::vector<std::string>& args) {
  std::string cmd;
  for (const std::string& a : args) cmd += (cmd.empty() ? "" : " ") + a;
  return cmd;
}

// What a killed run (of this or an older version) leaves and resume repairs: log lines past the
// checkpoint, a step logged twice, a torn last line, partial files of interrupted writes.
TEST(TrainKill, ResumeRepairsTheLogAndRemovesPartialFiles) {
  const fs::path dir = run_dir("longctx_train_repair", 3, 1), out = dir / "run", log = out / "log.jsonl";
  longctx::testing::CliRun r = run_cli(command(train_args(dir, "run")));
  ASSERT_EQ(r.status, 0) << r.output;
  const std::vector<nlohmann::json> before = read_log(log);
  ASSERT_EQ(before.size(), 3u);
  nlohmann::json stale = before[1], ahead = before[2];
  stale["loss"] = 99.0;  // an older copy of step 2: the later line wins
  ahead["step"] = 4;
  std::ofstream(log, std::ios::trunc) << before[0].dump() << "\n"
                                      << stale.dump() << "\n"
                                      << before[1].dump() << "\n"
                                      << before[2].dump() << "\n"
                                      << ahead.dump() << "\n"
                                      << R"({"step": 5, "lo)";
  std::ofstream(out / "checkpoint.safetensors.tmp.12345") << "partial";
  std::ofstream(out / "log.jsonl.tmp.777") << "partial";
  std::ofstream(out / "checkpoint.safetensors.tmp.mine") << "not a pid: kept";
  r = run_cli(command(train_args(dir, "run")) + " --resume --steps 4");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("removed 2 partial file(s)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("kept steps up to the checkpoint's 3 (1 line(s) after it dropped, 1 unreadable)"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(out / "checkpoint.safetensors.tmp.12345"));
  EXPECT_FALSE(fs::exists(out / "log.jsonl.tmp.777"));
  EXPECT_TRUE(fs::exists(out / "checkpoint.safetensors.tmp.mine"));
  const std::vector<nlohmann::json> after = read_log(log);
  ASSERT_EQ(after.size(), 4u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(after[i], before[i]) << "step " << i + 1;
  EXPECT_EQ(after[3]["step"], 4);
  EXPECT_NE(after[3]["loss"], ahead["loss"]) << "step 4 was trained again, not kept from the killed run";
}

// A second run in a folder a live run holds is refused (the lock goes with the process, even a
// killed one).
TEST(TrainKill, TwoRunsInOneFolderAreRefused) {
  const fs::path dir = run_dir("longctx_train_lock", 2, 1), out = dir / "run";
  fs::create_directories(out);
  const int fd = open((out / "train.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(flock(fd, LOCK_EX | LOCK_NB), 0);  // this process plays the live run
  longctx::testing::CliRun r = run_cli(command(train_args(dir, "run")));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("another `longctx train` is running in " + out.string()), std::string::npos) << r.output;
  close(fd);
  r = run_cli(command(train_args(dir, "run")) + " --overwrite");
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST(TrainKill, SigkillAnywhereThenResumeReproducesTheUninterruptedRun) {
  const int steps = 80, kills = sanitized() ? 20 : 40;
  const fs::path dir = run_dir("longctx_train_kill", steps, 1);
  const auto t0 = std::chrono::steady_clock::now();
  const longctx::testing::CliRun ref =
      run_cli("train --threads 1 --config " + (dir / "config.json").string() + " --data " + (dir / "data").string() +
              " --out " + (dir / "ref").string());
  ASSERT_EQ(ref.status, 0) << ref.output;
  const double ref_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const fs::path out = dir / "run", ckpt = out / "checkpoint.safetensors", output = dir / "launch.txt";
  fs::create_directories(out);
  std::mt19937 rng(19);
  int launches = 0, mid_write = 0, mid_write_by_chance = 0, timed_at_write = 0, resumes_seen = 0;
  int64_t on_disk = 0;  // the checkpoint's step (0: none yet)
  bool finished = false;
  for (int k = 0; k < kills && !finished; ++k) {
    const bool resume = fs::exists(ckpt);
    std::vector<std::string> args = train_args(dir, "run");
    args.push_back(resume ? "--resume" : "--overwrite");
    // every third kill waits for the start of the 1st-3rd checkpoint write; the others land at a
    // random moment of the first 8% of an uninterrupted run's time (start-up included)
    const bool at_write = k % 3 == 0;
    const int watch = inotify_init1(IN_CLOEXEC);
    ASSERT_GE(watch, 0);
    ASSERT_GE(inotify_add_watch(watch, out.c_str(), IN_CREATE), 0);
    const pid_t pid = spawn_cli(args, output.string());
    ++launches;
    if (at_write) {
      timed_at_write += wait_for_checkpoint_write(watch, pid, 1 + int(rng() % 3));
    } else {
      std::this_thread::sleep_for(
          std::chrono::duration<double>(std::uniform_real_distribution<double>(0, 0.08)(rng) * ref_seconds));
    }
    kill(pid, SIGKILL);
    const int status = wait_cli(pid);
    close(watch);
    const std::string said = read_text(output);
    if (WIFEXITED(status)) {  // it finished before the kill
      ASSERT_EQ(WEXITSTATUS(status), 0) << said;
      finished = true;
    } else {
      ASSERT_EQ(WTERMSIG(status), SIGKILL) << said;
    }
    if (resume) {
      const int64_t from = resumed_step(said);
      if (from >= 0) {
        EXPECT_EQ(from, on_disk) << "launch " << launches << ":\n" << said;
      }
      resumes_seen += from >= 0;
    }
    const bool partial = partial_checkpoints(out) > 0;
    mid_write += partial;
    mid_write_by_chance += partial && !at_write;
    if (fs::exists(ckpt)) {
      const int64_t step = checkpoint_step(ckpt);
      EXPECT_GE(step, on_disk) << "the checkpoint went back in time after launch " << launches;
      on_disk = step;
    }
    // whole lines, one per step from 1, at most one step ahead of the checkpoint (logged before
    // its save); the next resume drops that one
    const std::vector<nlohmann::json> log = read_log(out / "log.jsonl");
    for (size_t i = 0; i < log.size(); ++i)
      ASSERT_EQ(log[i].value("step", -1), int64_t(i) + 1) << "launch " << launches;
    EXPECT_TRUE(int64_t(log.size()) == on_disk || int64_t(log.size()) == on_disk + 1)
        << log.size() << " log lines, checkpoint at step " << on_disk << ", launch " << launches;
  }
  std::vector<std::string> args = train_args(dir, "run");
  args.push_back(fs::exists(ckpt) ? "--resume" : "--overwrite");
  const int status = wait_cli(spawn_cli(args, output.string()));
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << read_text(output);
  EXPECT_EQ(partial_checkpoints(out), 0) << "partial checkpoints of killed runs were left behind";
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "%d launches killed (%d timed at a checkpoint write), %d left a partial checkpoint (killed mid-write; %d "
      "of them by a randomly timed kill), %d resumes checked; uninterrupted run %.2f s, whole test %.1f s\n",
      launches - int(finished), timed_at_write, mid_write, mid_write_by_chance, resumes_seen, ref_seconds, seconds);
  EXPECT_GT(mid_write, 0) << "no kill landed inside a checkpoint write";

  const std::vector<nlohmann::json> got = read_log(out / "log.jsonl"), want = read_log(dir / "ref" / "log.jsonl");
  ASSERT_EQ(got.size(), size_t(steps));
  ASSERT_EQ(want.size(), size_t(steps));
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i]["step"], want[i]["step"]);
    for (const char* key : {"loss", "lr", "grad_norm"})  // bit-equal: the same steps on the same thread
      EXPECT_EQ(got[i][key].get<double>(), want[i][key].get<double>()) << key << " at step " << i + 1;
  }
  EXPECT_EQ(got.back()["val_loss"].get<double>(), want.back()["val_loss"].get<double>());
  const longctx::SafetensorsFile a = longctx::load_safetensors(ckpt.string()),
                                 b = longctx::load_safetensors((dir / "ref" / "checkpoint.safetensors").string());
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const longctx::Tensor &x = a.tensors[i].second, &y = b.at(a.tensors[i].first);
    ASSERT_EQ(x.nbytes(), y.nbytes());
    EXPECT_EQ(std::memcmp(x.raw(), y.raw(), x.nbytes()), 0)
        << a.tensors[i].first << " differs from the uninterrupted run";
  }
}

// SIGINT and SIGTERM stop after the current step, save, say so and exit with 128 + the signal
// (the shell's status for a command a signal ended), and --resume continues from that step.
TEST(TrainKill, SigintAndSigtermSaveAndExitWith128PlusTheSignal) {
  for (const int sig : {SIGINT, SIGTERM}) {
    const std::string name = sig == SIGINT ? "SIGINT" : "SIGTERM";
    const fs::path dir = run_dir("longctx_train_" + name, 100000, 1000), log = dir / "run" / "log.jsonl";
    const fs::path output = dir / "launch.txt";
    const pid_t pid = spawn_cli(train_args(dir, "run"), output.string());
    // stop once two steps are logged (the run is far from its end); the deadline is a hang guard
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::minutes(5);
    // (counting newlines: a line being written may be read half, so no torn-line check here)
    while (std::ranges::count(read_text(log), '\n') < 2 && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    kill(pid, sig);
    const int status = wait_cli(pid);
    const std::string said = read_text(output);
    ASSERT_TRUE(WIFEXITED(status)) << name << ": " << said;
    EXPECT_EQ(WEXITSTATUS(status), 128 + sig) << said;
    const std::string mark = "interrupted (" + name + "): checkpoint at step ";
    const size_t at = said.find(mark);
    ASSERT_NE(at, std::string::npos) << said;
    const int64_t step = std::stoll(said.substr(at + mark.size()));
    EXPECT_GE(step, 2);
    EXPECT_EQ(checkpoint_step(dir / "run" / "checkpoint.safetensors"), step) << said;
    EXPECT_EQ(read_log(log).size(), size_t(step)) << said;

    const longctx::testing::CliRun r =
        run_cli(command(train_args(dir, "run")) + " --resume --steps " + std::to_string(step + 2));
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(resumed_step(r.output), step) << r.output;
    const std::vector<nlohmann::json> records = read_log(log);
    ASSERT_EQ(records.size(), size_t(step + 2));
    EXPECT_EQ(records.back()["step"], step + 2);
  }
}

}  // namespace
