// The files of a `longctx train` run folder, written so that a kill at any moment leaves a
// folder `--resume` continues from: the lock, the step log, the checkpoint writes.
#pragma once
#include <longctx/train/trainer.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace longctx::cli {

// Holds an exclusive lock on <out>/train.lock until the process ends (the kernel drops it even on
// SIGKILL), so two runs never write the same folder.
void lock_run_folder(const std::string& out);

// Removes the partial files of writes a killed run did not finish: save_safetensors' and the
// log's "<name>.tmp.<pid>". Call with the folder locked, so no live run is writing them.
void remove_partial_files(const std::string& out);

// log.jsonl: one JSON line per step, each sent in a single write() on an O_APPEND descriptor, so a
// killed process leaves only whole lines (a torn last line needs a crash of the machine; resume
// drops it).
class StepLog {
 public:
  StepLog(const std::string& path, bool append);
  StepLog(const StepLog&) = delete;
  StepLog& operator=(const StepLog&) = delete;
  ~StepLog();
  void append(const nlohmann::json& record);
  // Before a checkpoint: the log on disk then never lags behind it, even after a power cut.
  void sync();

 private:
  std::string path_;
  int fd_ = -1;
};

// On resume, makes the log one line per step up to the checkpoint's `step`: a killed run may have
// logged steps after its last checkpoint (they are trained again now) or left a torn last line.
// Lines that do not parse are dropped; for a step logged twice (logs of older versions) the later
// line is kept. Rewritten atomically, and only when something changes.
void trim_log(const std::string& path, int64_t step);

// Saves the checkpoint. A write still running after 2 s says so on stderr, then how long it took.
void save_checkpoint(Trainer& trainer, const std::string& path, bool tty);

}  // namespace longctx::cli
