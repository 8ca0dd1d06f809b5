#include "run_folder.hpp"

#include <fcntl.h>
#include <fmt/core.h>
#include <longctx/core/error.hpp>
#include <longctx/core/files.hpp>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

namespace longctx::cli {

namespace fs = std::filesystem;

namespace {

}  // namespace

void lock_run_folder(const std::string& out) {
  const std::string path = out + "/train.lock";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  LONGCTX_CHECK(fd >= 0, "train: cannot create ", path, ": ", std::strerror(errno));
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    throw std::runtime_error(
        concat("longctx: train: another `longctx train` is running in ", out, " (it holds ", path, ")"));
  }
}

void remove_partial_files(const std::string& out) {
  std::vector<std::string> removed;
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    for (const std::string prefix : {"checkpoint.safetensors.tmp.", "log.jsonl.tmp."}) {
      const bool pid_tail =
          name.size() > prefix.size() && std::all_of(name.begin() + std::ptrdiff_t(prefix.size()), name.end(),
                                                     [](unsigned char c) { return std::isdigit(c) != 0; });
      if (name.rfind(prefix, 0) == 0 && pid_tail) {
        fs::remove(e.path());
        removed.push_back(name);
      }
    }
  }
  std::string names;
  for (const std::string& n : removed) names += (names.empty() ? "" : ", ") + n;
  if (!removed.empty())
    fmt::print(stderr, "removed {} partial file(s) of an interrupted write: {}\n", removed.size(), names);
}

StepLog::StepLog(const std::string& path, bool append) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (append ? 0 : O_TRUNC), 0644);
  LONGCTX_CHECK(fd_ >= 0, "train: cannot write the log ", path, ": ", std::strerror(errno));
}

StepLog::~StepLog() { ::close(fd_); }

void StepLog::append(const nlohmann::json& record) {
  const std::string line = record.dump() + "\n";
  write_all(fd_, line.data(), line.size(), "the log " + path_);
}

void StepLog::sync() { ::fsync(fd_); }

void trim_log(const std::string& path, int64_t step) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return;
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::map<int64_t, std::string> lines;
  int64_t unreadable = 0, after = 0;
  std::istringstream ss(text);
  for (std::string line; std::getline(ss, line);) {
    const nlohmann::json rec = nlohmann::json::parse(line, nullptr, false);
    const bool whole = !ss.eof();  // a last line without its newline is torn
    if (!whole || rec.is_discarded() || !rec.is_object() || !rec.contains("step") || !rec["step"].is_number_integer()) {
      unreadable += !line.empty();
      continue;
    }
    const int64_t s = rec["step"].get<int64_t>();
    if (s > step)
      ++after;
    else
      lines[s] = line;
  }
  std::string kept;
  for (const auto& [s, line] : lines) kept += line + "\n";
  if (kept != text) {
    write_file_atomically(path, [&](const auto& put) { put(kept.data(), kept.size()); });
    fmt::print(stderr, "log {}: kept steps up to the checkpoint's {} ({} line(s) after it dropped, {} unreadable)\n",
               path, step, after, unreadable);
  }
  if (lines.size() != size_t(step))
    fmt::print(stderr, "warning: log {} has lines for {} of the checkpoint's {} steps (cut short or edited?)\n", path,
               lines.size(), step);
}

void save_checkpoint(Trainer& trainer, const std::string& path, bool tty) {
  double mb = 0;  // weights + the two AdamW moments
  for (const Param& p : trainer.model().params()) mb += 3.0 * double(p.value.nbytes()) / 1e6;
  std::mutex m;
  std::condition_variable cv;
  bool finished = false, announced = false;
  const auto t0 = std::chrono::steady_clock::now();
  std::thread watch([&] {
    std::unique_lock lock(m);
    if (!cv.wait_for(lock, std::chrono::seconds(2), [&] { return finished; })) {
      fmt::print(stderr, "{}saving checkpoint ({:.0f} MB)... ", tty ? "\n" : "", mb);
      std::fflush(stderr);
      announced = true;
    }
  });
  const auto stop_watch = [&] {
    {
      std::lock_guard lock(m);
      finished = true;
    }
    cv.notify_one();
    watch.join();
  };
  try {
    trainer.save(path);
  } catch (...) {
    stop_watch();
    if (announced) fmt::print(stderr, "failed\n");
    throw;
  }
  stop_watch();
  if (announced)
    fmt::print(stderr, "done in {:.1f} s\n",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

}  // namespace longctx::cli
