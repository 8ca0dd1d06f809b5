// `longctx train`: train a model from a config file on a prepared corpus.
#include <fmt/core.h>
#include <longctx/core/error.hpp>
#include <longctx/core/memory.hpp>
#include <longctx/core/threads.hpp>
#include <longctx/model/checkpoint.hpp>
#include <longctx/train/trainer.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include "commands.hpp"
#include "common.hpp"
#include "run_folder.hpp"

namespace longctx::cli {

namespace {

namespace fs = std::filesystem;

// The exit status of a run stopped by SIGINT or SIGTERM after saving: 128 + the signal's number, the
// shell's convention for a command ended by a signal (130, 143), so `train && eval` does not go on.
int interrupted_status(int sig) { return 128 + sig; }

// The signal (SIGINT, SIGTERM) that asked the run to stop; the loop saves a checkpoint and exits.
volatile std::sig_atomic_t g_stop_signal = 0;

void on_stop_signal(int sig) {
  if (g_stop_signal != 0) {  // a second one quits at once: the last checkpoint on disk is whole
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_stop_signal = sig;
  static const char note[] =
      "\nlongctx: train: stopping after this step to save a checkpoint (signal again to quit at once)\n";
  [[maybe_unused]] const ssize_t n = write(2, note, sizeof note - 1);  // async-signal-safe, unlike fmt
}

// A step's MoE routing as the log keeps it: per MoE layer the assignments each expert processed
// (after dropping), dropped tokens, router entropy, the weighted aux loss and a bias_free bias.
nlohmann::json moe_record(const std::vector<MoeLayerStats>& layers) {
  nlohmann::json out = nlohmann::json::object();
  for (const MoeLayerStats& m : layers) {
    nlohmann::json r{{"load", m.stats.tokens_per_expert}, {"dropped_tokens", m.stats.dropped_tokens},
                     {"router_entropy", m.stats.router_entropy}, {"aux_loss", m.stats.aux_loss}};
    if (!m.expert_bias.empty()) r["expert_bias"] = m.expert_bias;
    out[std::to_string(m.layer)] = r;
  }
  return out;
}

// Entropy (nats) of the token distribution of the training split: the loss of the best model that
// ignores context, the bar a trained model must clear.
double unigram_entropy(const Corpus& c) {
  std::map<int32_t, double> counts;
  double n = 0;
  for (const auto& d : c.train)
    for (int32_t t : d) counts[t] += 1, n += 1;
  double h = 0;
  for (const auto& [t, k] : counts) h -= k / n * std::log(k / n);
  return h;
}

struct Options {
  std::string config, data, out = "runs/latest", init_from;
  int64_t steps = 0;
  bool resume = false, overwrite = false;
  uint64_t init_seed = 1234;
};

// Returns the process's exit status: 0, or interrupted_status() when a signal stopped the run.
int run(const Options& o) {
  // a fresh run never replaces another one's checkpoint and log
  for (const char* file : {"checkpoint.safetensors", "log.jsonl"})
    LONGCTX_CHECK(o.resume || o.overwrite || !fs::exists(fs::path(o.out) / file), "train: ", o.out,
                  " already holds a run (", file, "): continue it with --resume, replace it with --overwrite, ",
                  "or choose another --out");
  LONGCTX_CHECK(!(o.resume && o.overwrite), "train: --resume and --overwrite exclude each other");
  std::ifstream cf(o.config);
  LONGCTX_CHECK(cf.good(), "train: cannot read config '", o.config, "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(cf);
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(concat("longctx: train: config '", o.config, "' is not valid JSON: ", e.what()));
  }
  nlohmann::json tj = j.value("train", nlohmann::json::object());
  nlohmann::json mj = j.value("model", nlohmann::json::object());
  std::optional<CheckpointInfo> src;  // a fine-tune: the checkpoint fills in the model and the tokenizer
  if (!o.init_from.empty()) {
    src = read_checkpoint_info(o.init_from);
    if (!tj.contains("tokenizer")) tj["tokenizer"] = src->tokenizer;
    LONGCTX_CHECK(tj["tokenizer"] == src->tokenizer, "train: --init-from ", o.init_from, " was trained with tokenizer '",
                  src->tokenizer, "', the config asks for ", tj["tokenizer"].dump());
  }
  TrainConfig tc = TrainConfig::from_json(tj);
  if (src && !j.contains("model")) {
    mj = src->model.to_json();
    mj["max_seq_len"] = std::max(src->model.max_seq_len, tc.seq_len);
  }
  if (o.steps > 0) tc.steps = o.steps;
  // a fine-tune reads the tokenizer from its source checkpoint (the model file may be elsewhere)
  const std::shared_ptr<const Tokenizer> tok =
      make_tokenizer(tc.tokenizer, src && src->tokenizer == tc.tokenizer ? src->tokenizer_model : "");
  if (!mj.contains("vocab_size")) mj["vocab_size"] = tok->vocab_size();
  const ModelConfig mc = ModelConfig::from_json(mj);
  LONGCTX_CHECK(mc.vocab_size >= tok->vocab_size(), "train: model vocab_size (", mc.vocab_size,
                ") is smaller than the tokenizer's (", tok->vocab_size(), ")");
  fmt::print(stderr, "loading corpus {} ({})...\n", o.data, tc.tokenizer);
  Corpus corpus = load_corpus(o.data, *tok);
  const double h1 = unigram_entropy(corpus);
  fs::create_directories(o.out);
  lock_run_folder(o.out);
  remove_partial_files(o.out);
  const std::string ckpt = o.out + "/checkpoint.safetensors", log_path = o.out + "/log.jsonl";
  Trainer trainer(mc, tc, std::move(corpus), o.init_seed, tok);
  if (o.resume) {
    LONGCTX_CHECK(fs::exists(ckpt), "train: --resume but no checkpoint at ", ckpt);
    trainer.resume(ckpt);
    fmt::print(stderr, "resumed from {} at step {}\n", ckpt, trainer.steps_done());
    trim_log(log_path, trainer.steps_done());
  } else {
    fs::remove(ckpt);  // --overwrite: the replaced run's checkpoint must not outlive its log
    if (!o.init_from.empty()) {
      trainer.init_from(o.init_from);
      fmt::print(stderr, "initialised from the weights of {} (fresh optimizer, step 0)\n", o.init_from);
    }
  }
  fmt::print(stderr, "model: {} parameters, {} layers, d={}, {} threads; unigram entropy of the training tokens: {:.4f} nats\n",
             trainer.model().num_params(), mc.n_layers, mc.d_model, parallel::max_threads(), h1);
  fmt::print(stderr, "memory: about {} for training (weights, gradients, AdamW, activations) of {}\n",
             memory::format_bytes(training_bytes(mc, tc)), memory::format_bytes(double(memory::limit())));
  StepLog log(log_path, o.resume);
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  const bool tty = isatty(2);
  const auto start = std::chrono::steady_clock::now();
  const int64_t first = trainer.steps_done();
  int64_t saved = o.resume ? first : -1;  // the step of the checkpoint on disk (-1: none yet)
  double smooth_tps = 0;
  // A step of many micro-batches reports its progress every few seconds and stops on a signal.
  auto last_note = std::chrono::steady_clock::now();
  const auto between_micro_batches = [&](int64_t done) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_note > std::chrono::seconds(5)) {
      fmt::print(stderr, "{}step {}: micro-batch {}/{}{}", tty ? "\r" : "", trainer.steps_done() + 1, done, tc.accum,
                 tty ? "\033[K" : "\n");
      last_note = now;
    }
    return g_stop_signal != 0;
  };
  while (trainer.steps_done() < tc.steps && !g_stop_signal) {
    const StepStats s = trainer.step(between_micro_batches);
    if (s.abandoned) break;
    smooth_tps = smooth_tps == 0 ? s.tokens_per_s : 0.9 * smooth_tps + 0.1 * s.tokens_per_s;
    nlohmann::json rec{{"step", s.step}, {"loss", s.loss}, {"lr", s.lr}, {"grad_norm", s.grad_norm},
                       {"tokens_per_s", s.tokens_per_s}};
    if (!s.moe.empty()) rec["moe"] = moe_record(s.moe);
    for (const LayerSparsity& ls : s.sparsity) rec["kept_ratio"][std::to_string(ls.layer)] = ls.kept_ratio;
    for (const LayerGates& g : infini_gates(trainer.model())) rec["infini_gate"][std::to_string(g.layer)] = g.memory_weight;
    const bool eval_now = s.step % tc.eval_every == 0 || s.step == tc.steps;
    if (eval_now) rec["val_loss"] = trainer.evaluate();
    double answer_loss = 0;  // with a task mix: the mean over the tasks of their held-out answer losses
    if (eval_now)
      for (const Trainer::AnswerLoss& a : trainer.evaluate_answers()) {
        rec["val_answer_loss"][enum_name(a.kind)] = a.loss;
        answer_loss += a.loss / double(tc.tasks.kinds.size());
      }
    log.append(rec);
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double remaining = elapsed / double(s.step - first) * double(tc.steps - s.step);
    const int width = 24, done = int(width * s.step / tc.steps);
    const std::string line = fmt::format("step {}/{} [{}{}] loss {:.4f} lr {:.2e} {:.0f} tok/s ETA {}{}{}", s.step,
                                         tc.steps, std::string(size_t(done), '#'), std::string(size_t(width - done), '.'),
                                         s.loss, s.lr, smooth_tps, bench::format_duration(remaining),
                                         eval_now ? fmt::format(" | val_loss {:.4f}", rec["val_loss"].get<double>()) : "",
                                         rec.contains("val_answer_loss") ? fmt::format(" answer {:.4f}", answer_loss) : "");
    if (tty)
      fmt::print(stderr, "\r{}{}", line, eval_now ? "\n" : "\033[K");
    else if (eval_now || s.step % 10 == 0)
      fmt::print(stderr, "{}\n", line);
    if (s.step % tc.ckpt_every == 0 || s.step == tc.steps) {
      log.sync();
      save_checkpoint(trainer, ckpt, tty);
      saved = s.step;
    }
  }
  if (g_stop_signal) {
    if (saved != trainer.steps_done()) {
      log.sync();
      save_checkpoint(trainer, ckpt, tty);
    }
    fmt::print(stderr, "\ninterrupted ({}): checkpoint at step {} saved to {}; continue with --resume\n",
               g_stop_signal == SIGINT ? "SIGINT" : "SIGTERM", trainer.steps_done(), ckpt);
    return interrupted_status(g_stop_signal);
  }
  fmt::print(stderr, "done: {} steps, checkpoint {}, log {}\n", trainer.steps_done(), ckpt, log_path);
  return 0;
}

}  // namespace

void add_train(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* c = app.add_subcommand("train", "Train a model from a config file on a prepared corpus");
  c->add_option("--config", o->config, "JSON file with \"model\" and \"train\" sections (see configs/)")->required();
  c->add_option("--data", o->data, "Corpus folder with train/ and val/ (scripts/prepare_data.sh)")->required();
  c->add_option("--out", o->out, "Run folder: checkpoint.safetensors and log.jsonl")->capture_default_str();
  c->add_option("--steps", o->steps, "Override the config's step count")
      ->check(at_least(1, " (leave it out to train the config's steps)"));
  c->add_flag("--resume", o->resume, "Continue from <out>/checkpoint.safetensors");
  c->add_flag("--overwrite", o->overwrite, "Start afresh in an --out that already holds a run (replaces it)");
  c->add_option("--init-from", o->init_from,
                 "Start from this checkpoint's weights (fresh optimizer, step 0): a fine-tune. A config without "
                 "\"model\" reuses the checkpoint's; with one, it must match but for max_seq_len and the layers' "
                 "attention kinds (a kind's own weights then start as initialised)");
  c->add_option("--init-seed", o->init_seed, "Seed of the weight initialisation")->capture_default_str();
  c->footer(
      "Ctrl-C (SIGINT) or SIGTERM stops after the current step, saves a checkpoint and exits with status 130 "
      "or 143 (128 + the signal); a second one quits at once. Checkpoints and log lines are written atomically, "
      "so after any stop, even a kill, --resume continues from the last checkpoint and the log keeps one line "
      "per step.");
  c->callback([o] {
    if (const int status = run(*o); status != 0) throw CLI::RuntimeError(status);  // main returns it, printing nothing
  });
}

}  // namespace longctx::cli
