// Training: AdamW on packed varlen batches with warmup + cosine LR, gradient clipping and
// accumulation, periodic validation, JSONL log, atomic safetensors checkpoints and exact resume.
#pragma once
#include <longctx/attention/sparse/sparsity_schedule.hpp>
#include <longctx/model/checkpoint.hpp>
#include <longctx/model/transformer.hpp>
#include <longctx/text/corpus.hpp>
#include <longctx/text/task_mix.hpp>
#include <longctx/train/optimizer.hpp>
#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <string>

namespace longctx {

struct TrainConfig {
  std::string tokenizer = "bytes";  // "bytes" or "spm:<model>"
  int64_t seq_len = 512;            // tokens per sequence (packed varlen batches)
  int64_t batch_tokens = 8192;      // input tokens per micro-batch
  int64_t accum = 1;                // micro-batches per optimizer step
  int64_t steps = 1000;
  int64_t warmup = 50;
  double lr = 3e-3, min_lr = 3e-4, grad_clip = 1.0;
  AdamWConfig adam;
  uint64_t seed = 1;
  int64_t eval_every = 100, eval_tokens = 32768;
  int64_t ckpt_every = 100;
  int64_t moba_to_full_step = -1;  // from this step on, MoBA layers run as full attention (-1: never)
  // Progressive sparsity (SparsitySchedule): over the first sparsity_steps steps, top-k and
  // threshold layers go from keeping everything to their own top_k / tau (0: off).
  int64_t sparsity_steps = 0;
  // Infini-attention's gate logits beta train at their own peak learning rate (the schedule's
  // shape applies; 0 = the model's lr), without weight decay, as its reproductions advise.
  double infini_beta_lr = 1e-2;
  ScheduleShape sparsity_shape = ScheduleShape::cosine;
  int64_t score_last = 0;  // > 0: train and validate on whole documents' tails, scoring only their
                           // last score_last tokens (an answer-only fine-tune; corpus.hpp tail_batch)
  TaskMix tasks;  // synthetic retrieval documents mixed into the batches ("tasks" section; off by default)
  // > 0: PoSE positional skip-wise training (pose_positions below): training sequences' RoPE
  // positions reach up to pose_span - 1, so relative distances up to pose_span are seen with
  // seq_len-token sequences (0: positions 0..n-1). Validation keeps contiguous positions.
  int64_t pose_span = 0;

  static TrainConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

// PoSE (Zhu et al., "PoSE: Efficient Context Window Extension of LLMs via Positional Skip-wise
// Training", arXiv 2309.10400, sec. 3.2, with two chunks): each sequence of `b` (n tokens) is cut
// at a point c uniform in [1, n - 1] and its second chunk's positions are shifted by a skip u
// uniform in [0, span - n]: positions 0..c-1, then c+u..n-1+u. Drawn from (seed, sequence index);
// a one-token sequence keeps position 0. Requires span >= the longest sequence.
void pose_positions(Batch& b, int64_t span, uint64_t seed);

// A top-k or threshold layer's kept fraction in a step of progressive sparsity: kept blocks (or
// keys) over those of a seq_len sequence, or the kept attention mass tau.
struct LayerSparsity {
  int64_t layer;
  double kept_ratio;
};

// The options a top-k or threshold layer trains with at `step` under the train config's
// schedule (other kinds, or no schedule: `spec` itself). Top-k keeps
// SparsitySchedule(top_k / available).kept(step, available) of the `available` blocks (keys) of
// a seq_len sequence, never fewer than top_k; threshold keeps the mass kept_ratio(step) of a
// schedule whose target is tau.
AttentionSpec scheduled_spec(const AttentionSpec& spec, const TrainConfig& train, int64_t step,
                             double* kept_ratio = nullptr);

struct StepStats {
  int64_t step;  // the step just completed (1-based)
  double loss, lr, grad_norm, tokens_per_s;
  int64_t tokens;
  bool abandoned = false;  // stopped between micro-batches: nothing changed, the step is still to do
  std::vector<MoeLayerStats> moe;  // each MoE layer's routing over the step (bias after its update)
  std::vector<LayerSparsity> sparsity;  // top-k / threshold layers, when sparsity_steps > 0
};

// An infini layer's gates sigmoid(beta_h) per query head: the weight of the memory read against
// local attention (arXiv 2404.07143 eq. 6), logged per step.
struct LayerGates {
  int64_t layer;
  std::vector<double> memory_weight;
};
std::vector<LayerGates> infini_gates(const Transformer& model);
bool is_infini_beta(const std::string& param_name);  // "layers.<l>.attention.infini.beta"

// Memory a training run of these configs needs: the model's (model_bytes), AdamW's two moments,
// and an estimate of the activations one micro-batch keeps for the backward (about
// 4 (8 d_model + 2 kv_width + 3 ffn_width) bytes per token and layer, plus MoE routing, the
// logits and their gradient; within 25% of the peak RSS measured in docs/RELIABILITY.md). The
// Trainer refuses a run over memory::limit() with this number.
double training_bytes(const ModelConfig& model, const TrainConfig& train);

class Trainer {
 public:
  // `tokenizer` (the corpus's) builds the task documents of a "tasks" mix; without it the mix
  // makes one from train.tokenizer.
  Trainer(const ModelConfig& model, const TrainConfig& train, Corpus corpus, uint64_t init_seed,
          std::shared_ptr<const Tokenizer> tokenizer = nullptr);

  // Loads weights, optimizer state and step from a checkpoint written by save(); the model and
  // training configs must match the checkpoint's (throws naming the first difference).
  void resume(const std::string& checkpoint);
  void save(const std::string& checkpoint) const;
  // Starts from a checkpoint's weights only (a fine-tune): fresh optimizer, step 0. The model
  // config must equal the checkpoint's except max_seq_len (RoPE is computed, so a fine-tune may
  // run longer sequences) and the layers' attention kinds (continued training with another
  // attention: weights of a kind the checkpoint lacks start as initialised, the checkpoint's
  // weights of a kind the model lacks are skipped); throws naming the first difference. Call
  // before the first step.
  void init_from(const std::string& checkpoint);

  // One optimizer step. `between_micro_batches(done)`, if given, is called after each of the step's
  // `accum` micro-batches but the last; returning true abandons the step before the optimizer
  // runs (weights, optimizer state and step count unchanged), so a long step can be interrupted.
  StepStats step(const std::function<bool(int64_t done)>& between_micro_batches = {});
  double evaluate();   // mean validation loss over the fixed eval batches
  // With a "tasks" mix: each task's mean loss on the answer tokens of its held-out documents
  // (task_eval_batches over the validation text); empty without a mix or with eval_docs 0.
  struct AnswerLoss {
    TaskKind kind;
    double loss;
  };
  std::vector<AnswerLoss> evaluate_answers();
  int64_t steps_done() const { return step_; }
  Transformer& model() { return model_; }
  const TrainConfig& config() const { return cfg_; }

 private:
  TrainConfig cfg_;
  Transformer model_;
  AdamW opt_;
  Corpus corpus_;
  mutable std::string tokenizer_model_;  // the tokenizer model's bytes, saved in every checkpoint (read once)
  SpecialTokens special_tokens_;          // an imported model's BOS / EOS, carried on by its fine-tunes
  std::vector<Batch> eval_;
  std::shared_ptr<const Tokenizer> tok_;    // with a task mix: its tokenizer,
  std::unique_ptr<const TaskFiller> task_filler_;  // the training text as filler,
  std::vector<TaskEvalSet> task_eval_;     // and the held-out answer batches
  int64_t step_ = 0;
  double tokens_seen_ = 0;
};

}  // namespace longctx
