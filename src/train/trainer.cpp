#include <longctx/core/error.hpp>
#include <longctx/core/memory.hpp>
#include <longctx/model/checkpoint.hpp>
#include <longctx/train/trainer.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/json_fields.hpp"

namespace longctx {

TrainConfig TrainConfig::from_json(const nlohmann::json& j) {
  TrainConfig c;
  check_known_fields(j, {"tokenizer", "seq_len", "batch_tokens", "accum", "steps", "warmup", "lr", "min_lr",
                         "grad_clip", "beta1", "beta2", "eps", "weight_decay", "seed", "eval_every", "eval_tokens",
                         "ckpt_every", "moba_to_full_step", "score_last", "sparsity_steps", "sparsity_shape", "infini_beta_lr",
                         "tasks", "pose_span"},
                     "train config");
  try {
    c.tokenizer = read_value(j, "tokenizer", c.tokenizer, "train config");
    c.seq_len = read_value(j, "seq_len", c.seq_len, "train config");
    c.batch_tokens = read_value(j, "batch_tokens", c.batch_tokens, "train config");
    c.accum = read_value(j, "accum", c.accum, "train config");
    c.steps = read_value(j, "steps", c.steps, "train config");
    c.warmup = read_value(j, "warmup", c.warmup, "train config");
    c.lr = read_value(j, "lr", c.lr, "train config");
    c.min_lr = read_value(j, "min_lr", c.min_lr, "train config");
    c.grad_clip = read_value(j, "grad_clip", c.grad_clip, "train config");
    c.adam.beta1 = read_value(j, "beta1", c.adam.beta1, "train config");
    c.adam.beta2 = read_value(j, "beta2", c.adam.beta2, "train config");
    c.adam.eps = read_value(j, "eps", c.adam.eps, "train config");
    c.adam.weight_decay = read_value(j, "weight_decay", c.adam.weight_decay, "train config");
    c.seed = read_value(j, "seed", c.seed, "train config");
    c.eval_every = read_value(j, "eval_every", c.eval_every, "train config");
    c.eval_tokens = read_value(j, "eval_tokens", c.eval_tokens, "train config");
    c.ckpt_every = read_value(j, "ckpt_every", c.ckpt_every, "train config");
    c.moba_to_full_step = read_value(j, "moba_to_full_step", c.moba_to_full_step, "train config");
    c.score_last = read_value(j, "score_last", c.score_last, "train config");
    c.sparsity_steps = read_value(j, "sparsity_steps", c.sparsity_steps, "train config");
    c.infini_beta_lr = read_value(j, "infini_beta_lr", c.infini_beta_lr, "train config");
    c.pose_span = read_value(j, "pose_span", c.pose_span, "train config");
    c.sparsity_shape = enum_from_name<ScheduleShape>(
        read_value<std::string>(j, "sparsity_shape", enum_name(c.sparsity_shape), "train config"),
        "train config: sparsity_shape");
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(concat("longctx: train config: ", e.what()));
  }
  LONGCTX_CHECK(c.seq_len > 0, "train config: seq_len must be > 0, got ", c.seq_len);
  LONGCTX_CHECK(c.batch_tokens >= c.seq_len, "train config: batch_tokens (", c.batch_tokens, ") must be >= seq_len (",
                c.seq_len, ")");
  LONGCTX_CHECK(c.accum >= 1, "train config: accum must be >= 1, got ", c.accum);
  LONGCTX_CHECK(c.steps >= 1, "train config: steps must be >= 1, got ", c.steps);
  LONGCTX_CHECK(c.warmup >= 0, "train config: warmup must be >= 0, got ", c.warmup);
  LONGCTX_CHECK(c.lr > 0 && std::isfinite(c.lr), "train config: lr must be a finite number > 0, got ", c.lr);
  LONGCTX_CHECK(c.min_lr >= 0 && c.min_lr <= c.lr, "train config: min_lr must be in [0, lr = ", c.lr, "], got ", c.min_lr);
  LONGCTX_CHECK(c.grad_clip >= 0 && std::isfinite(c.grad_clip), "train config: grad_clip must be >= 0 (0: no clipping), got ",
                c.grad_clip);
  LONGCTX_CHECK(c.adam.beta1 >= 0 && c.adam.beta1 < 1 && c.adam.beta2 >= 0 && c.adam.beta2 < 1,
                "train config: beta1 and beta2 must be in [0, 1), got ", c.adam.beta1, " and ", c.adam.beta2);
  LONGCTX_CHECK(c.adam.eps > 0 && std::isfinite(c.adam.eps), "train config: eps must be > 0, got ", c.adam.eps);
  LONGCTX_CHECK(c.adam.weight_decay >= 0 && std::isfinite(c.adam.weight_decay),
                "train config: weight_decay must be >= 0, got ", c.adam.weight_decay);
  LONGCTX_CHECK(c.eval_every > 0 && c.ckpt_every > 0, "train config: eval_every and ckpt_every must be > 0");
  LONGCTX_CHECK(c.eval_tokens > 0, "train config: eval_tokens must be > 0, got ", c.eval_tokens);
  LONGCTX_CHECK(c.infini_beta_lr >= 0 && std::isfinite(c.infini_beta_lr),
                "train config: infini_beta_lr must be >= 0 (0: the model's lr), got ", c.infini_beta_lr);
  LONGCTX_CHECK(c.sparsity_steps >= 0, "train config: sparsity_steps must be >= 0 (0: no schedule), got ",
                c.sparsity_steps);
  LONGCTX_CHECK(c.moba_to_full_step >= -1, "train config: moba_to_full_step must be >= 0, or -1 for never, got ",
                c.moba_to_full_step);
  LONGCTX_CHECK(c.score_last >= 0 && c.score_last <= c.seq_len, "train config: score_last must be in [0, seq_len = ",
                c.seq_len, "], got ", c.score_last);
  LONGCTX_CHECK(c.pose_span == 0 || c.pose_span >= c.seq_len, "train config: pose_span must be 0 (off) or >= seq_len (",
                c.seq_len, "), got ", c.pose_span);
  if (j.contains("tasks")) c.tasks = TaskMix::from_json(j.at("tasks"), c.seq_len);
  LONGCTX_CHECK(!(c.tasks.enabled() && c.score_last > 0), "train config: tasks (fraction ", c.tasks.fraction,
                ") and score_last (", c.score_last, ") exclude each other: a mix is language modelling on whole batches");
  return c;
}

nlohmann::json TrainConfig::to_json() const {
  nlohmann::json j{{"tokenizer", tokenizer}, {"seq_len", seq_len},     {"batch_tokens", batch_tokens},
          {"accum", accum},         {"steps", steps},         {"warmup", warmup},
          {"lr", lr},               {"min_lr", min_lr},       {"grad_clip", grad_clip},
          {"beta1", adam.beta1},    {"beta2", adam.beta2},    {"eps", adam.eps},
          {"weight_decay", adam.weight_decay}, {"seed", seed}, {"eval_every", eval_every},
          {"eval_tokens", eval_tokens}, {"ckpt_every", ckpt_every}, {"moba_to_full_step", moba_to_full_step},
          {"score_last", score_last}, {"sparsity_steps", sparsity_steps},
          {"sparsity_shape", enum_name(sparsity_shape)}, {"infini_beta_lr", infini_beta_lr}};
  if (tasks.enabled()) j["tasks"] = tasks.to_json();
  if (pose_span > 0) j["pose_span"] = pose_span;
  return j;
}

void pose_positions(Batch& b, int64_t span, uint64_t seed) {
  b.positions.assign(size_t(b.size()), 0);
  for (size_t i = 0; i + 1 < b.cu_seqlens.size(); ++i) {
    const int64_t begin = b.cu_seqlens[i], n = b.cu_seqlens[i + 1] - begin;
    LONGCTX_CHECK(n <= span, "pose: a sequence of ", n, " tokens does not fit a span of ", span);
    const uint64_t h = seed_mix(seed, i);
    const int64_t cut = n < 2 ? n : 1 + int64_t(h % uint64_t(n - 1)),
                  skip = int64_t(seed_mix(h, 1) % uint64_t(span - n + 1));
    for (int64_t t = 0; t < n; ++t) b.positions[size_t(begin + t)] = t < cut ? t : t + skip;
  }
}

AttentionSpec scheduled_spec(const AttentionSpec& spec, const TrainConfig& t, int64_t step, double* kept_ratio) {
  if (kept_ratio) *kept_ratio = 1.0;
  if (t.sparsity_steps == 0) return spec;
  if (spec.kind() == AttentionKind::topk) {
    TopkOptions o = spec.get<TopkOptions>();
    const int64_t available = o.token_level ? t.seq_len : (t.seq_len + o.block_size - 1) / o.block_size;
    if (o.top_k < available) {
      const SparsitySchedule s(double(o.top_k) / double(available), t.sparsity_steps, t.sparsity_shape);
      o.top_k = std::max(o.top_k, s.kept(step, available));
    }
    if (kept_ratio) *kept_ratio = std::min(1.0, double(o.top_k) / double(available));
    return o;
  }
  if (spec.kind() == AttentionKind::threshold) {
    ThresholdOptions o = spec.get<ThresholdOptions>();
    o.tau = float(SparsitySchedule(o.tau, t.sparsity_steps, t.sparsity_shape).kept_ratio(step));
    if (kept_ratio) *kept_ratio = o.tau;
    return o;
  }
  return spec;
}

bool is_infini_beta(const std::string& param_name) {
  const std::string tail = ".attention.infini.beta";
  return param_name.size() > tail.size() && param_name.compare(param_name.size() - tail.size(), tail.size(), tail) == 0;
}

std::vector<LayerGates> infini_gates(const Transformer& model) {
  std::vector<LayerGates> out;
  for (int64_t l = 0; l < model.config().n_layers; ++l) {
    if (model.config().attention[size_t(l)].kind() != AttentionKind::infini) continue;
    const std::string name = concat("layers.", l, ".attention.infini.beta");
    const auto p = std::find_if(model.params().begin(), model.params().end(), [&](const Param& q) { return q.name == name; });
    LONGCTX_CHECK(p != model.params().end(), "infini_gates: the model has no ", name);
    LayerGates g{l, {}};
    for (int64_t h = 0; h < p->value.numel(); ++h) g.memory_weight.push_back(1.0 / (1.0 + std::exp(-double(p->value.f32()[h]))));
    out.push_back(std::move(g));
  }
  return out;
}

double training_bytes(const ModelConfig& m, const TrainConfig& t) {
  double per_token = 2.0 * double(m.vocab_size);  // logits and their gradient
  for (int64_t l = 0; l < m.n_layers; ++l) {
    const FfnSpec& f = m.ffn[size_t(l)];
    const double ffn_width = f.kind == "moe" ? double(moe_config(m, l).d_ff * (f.top_k + f.num_shared)) : double(m.d_ff);
    const double routing = f.kind == "moe" ? double(f.num_experts + 2 * f.top_k * m.d_model) : 0.0;  // gathered rows
    const AttentionSpec& a = m.attention[size_t(l)];
    const bool key_conv = a.kind() == AttentionKind::moba && a.get<MobaOptions>().key_conv > 0;  // keeps its input
    per_token += 8.0 * double(m.d_model) + (key_conv ? 3.0 : 2.0) * double(m.n_kv_heads * m.head_dim()) + 3.0 * ffn_width +
                 routing;
  }
  return model_bytes(m) + 2 * 4 * param_count(m) + 4 * per_token * double(t.batch_tokens);
}

namespace {

const TrainConfig& fits_in_memory(const ModelConfig& m, const TrainConfig& t) {
  m.validate();
  memory::require_fits(training_bytes(m, t),
                       concat("training a model of ", param_count(m), " parameters on micro-batches of ",
                              t.batch_tokens, " tokens (weights, gradients, AdamW moments and activations)"));
  return t;
}

// The mean loss over every scored target of the batches (each batch's mean weighted by its targets).
double mean_target_loss(Transformer& model, const std::vector<Batch>& batches) {
  double sum = 0;
  int64_t n = 0;
  for (const Batch& b : batches) {
    int64_t targets = 0;
    for (int32_t t : b.targets) targets += t >= 0;
    sum += model.forward(b, false) * double(targets);
    n += targets;
  }
  return n ? sum / double(n) : 0.0;
}

// The documents' text again (the filler of task documents).
TaskFiller filler_of(const std::vector<std::vector<int32_t>>& docs, const Tokenizer& tok) {
  std::vector<std::string> texts;
  for (const auto& d : docs) texts.push_back(tok.decode(d));
  return TaskFiller(texts);
}

}  // namespace

Trainer::Trainer(const ModelConfig& model, const TrainConfig& train, Corpus corpus, uint64_t init_seed,
                 std::shared_ptr<const Tokenizer> tokenizer)
    : cfg_(fits_in_memory(model, train)), model_(model, init_seed), opt_(model_.params(), train.adam), corpus_(std::move(corpus)) {
  LONGCTX_CHECK(train.seq_len <= model.max_seq_len, "train config: seq_len (", train.seq_len,
                ") exceeds the model's max_seq_len (", model.max_seq_len, ")");
  LONGCTX_CHECK(train.pose_span <= model.max_seq_len, "train config: pose_span (", train.pose_span,
                ") exceeds the model's max_seq_len (", model.max_seq_len, "): raise max_seq_len to it (RoPE positions)");
  for (Param& p : model_.params())
    if (is_infini_beta(p.name) && cfg_.infini_beta_lr > 0) p.lr_scale = cfg_.infini_beta_lr / cfg_.lr;
  eval_ = cfg_.score_last > 0
              ? tail_eval_batches(corpus_.val, cfg_.seq_len, cfg_.batch_tokens, cfg_.score_last, cfg_.eval_tokens)
              : eval_batches(corpus_.val, cfg_.seq_len, cfg_.batch_tokens, cfg_.eval_tokens);
  if (cfg_.tasks.enabled()) {
    tok_ = tokenizer ? std::move(tokenizer) : std::shared_ptr<const Tokenizer>(make_tokenizer(cfg_.tokenizer));
    task_filler_ = std::make_unique<const TaskFiller>(filler_of(corpus_.train, *tok_));
    for (const auto& [kind, weight] : cfg_.tasks.kinds) {
      const TaskPrompt p = make_task_prompt(kind, 0.5, 0);
      const int64_t need = task_fixed_tokens(p, *tok_) + int64_t(tok_->encode(p.answer + "\n").size());
      LONGCTX_CHECK(need <= cfg_.tasks.min_length + 1, "train config: tasks.min_length ", cfg_.tasks.min_length,
                    " is too short for the ", enum_name(kind), " task (its inserts, query and answer take about ", need,
                    " tokens)");
    }
    if (cfg_.tasks.eval_docs > 0)
      task_eval_ = task_eval_batches(filler_of(corpus_.val, *tok_), *tok_, cfg_.tasks, cfg_.batch_tokens, cfg_.seed);
  }
}

StepStats Trainer::step(const std::function<bool(int64_t)>& between_micro_batches) {
  const auto t0 = std::chrono::steady_clock::now();
  model_.force_full_attention(cfg_.moba_to_full_step >= 0 && step_ >= cfg_.moba_to_full_step);
  std::vector<LayerSparsity> sparsity;
  if (cfg_.sparsity_steps > 0)
    for (int64_t l = 0; l < model_.config().n_layers; ++l) {
      const AttentionSpec& own = model_.config().attention[size_t(l)];
      if (own.kind() != AttentionKind::topk && own.kind() != AttentionKind::threshold) continue;
      double kept = 1;
      model_.set_running_attention(l, scheduled_spec(own, cfg_, step_, &kept));
      sparsity.push_back({l, kept});
    }
  model_.zero_grad();
  double loss = 0;
  int64_t tokens = 0;
  std::vector<MoeLayerStats> moe;  // routing summed over the micro-batches
  for (int64_t micro = 0; micro < cfg_.accum; ++micro) {
    const uint64_t index = uint64_t(step_ * cfg_.accum + micro);
    Batch b =
        cfg_.score_last > 0  ? tail_batch(corpus_.train, cfg_.seq_len, cfg_.batch_tokens, cfg_.score_last, cfg_.seed, index)
        : cfg_.tasks.enabled() ? mixed_batch(WindowSampler(corpus_.train), *task_filler_, *tok_, cfg_.tasks, cfg_.seq_len,
                                             cfg_.batch_tokens, cfg_.seed, index, step_)
                               : sample_batch(corpus_.train, cfg_.seq_len, cfg_.batch_tokens, cfg_.seed, index);
    if (cfg_.pose_span > 0) pose_positions(b, cfg_.pose_span, seed_mix(cfg_.seed, index));
    model_.set_moe_noise_seed(cfg_.seed * 0x100000001B3ull + index);  // a resumed run draws the same noise
    loss += model_.forward(b, true) / double(cfg_.accum);
    add_moe_stats(moe, model_.moe_stats());
    model_.backward();
    tokens += b.size();
    if (micro + 1 < cfg_.accum && between_micro_batches && between_micro_batches(micro + 1)) {
      StepStats s{step_, loss, 0.0, 0.0, 0.0, tokens};
      s.abandoned = true;
      return s;
    }
  }
  if (cfg_.accum > 1)
    for (Param& p : model_.params())
      for (int64_t j = 0; j < p.grad.numel(); ++j) p.grad.f32()[j] /= float(cfg_.accum);
  const double norm = clip_grad_norm(model_.params(), cfg_.grad_clip);
  const double lr = lr_at(step_, cfg_.warmup, cfg_.steps, cfg_.lr, cfg_.min_lr);
  opt_.step(model_.params(), lr);
  model_.update_expert_biases(moe);
  ++step_;
  tokens_seen_ += double(tokens);
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  StepStats s{step_, loss, lr, norm, double(tokens) / dt, tokens};
  s.moe = std::move(moe);
  s.sparsity = std::move(sparsity);
  return s;
}

double Trainer::evaluate() { return mean_target_loss(model_, eval_); }

std::vector<Trainer::AnswerLoss> Trainer::evaluate_answers() {
  std::vector<AnswerLoss> out;
  for (const TaskEvalSet& set : task_eval_) out.push_back({set.kind, mean_target_loss(model_, set.batches)});
  return out;
}

void Trainer::save(const std::string& path) const {
  std::vector<std::pair<std::string, const Tensor*>> tensors;
  const auto& params = model_.params();
  for (const Param& p : params) tensors.push_back({p.name, &p.value});
  for (size_t i = 0; i < params.size(); ++i) {
    tensors.push_back({"optimizer.m." + params[i].name, &opt_.m()[i]});
    tensors.push_back({"optimizer.v." + params[i].name, &opt_.v()[i]});
  }
  const nlohmann::json state{{"step", step_}, {"adam_steps", opt_.steps()}, {"tokens_seen", tokens_seen_}};
  if (tokenizer_model_.empty() && cfg_.tokenizer != "bytes") tokenizer_model_ = make_tokenizer(cfg_.tokenizer)->serialized();
  std::map<std::string, std::string> metadata =
      checkpoint_metadata({model_.config(), cfg_.tokenizer, tokenizer_model_, special_tokens_});
  metadata["longctx.train_config"] = cfg_.to_json().dump();
  metadata["longctx.state"] = state.dump();
  save_safetensors(path, tensors, metadata);
}

void Trainer::init_from(const std::string& path) {
  LONGCTX_CHECK(step_ == 0, "init-from: the trainer has already run ", step_, " steps");
  const SafetensorsFile f = load_safetensors(path);
  nlohmann::json saved = checkpoint_config(f.metadata, path).to_json(), ours = model_.config().to_json();
  saved.erase("max_seq_len");
  ours.erase("max_seq_len");
  // The attention kinds may differ: continued training of a model with another attention (as the
  // MoBA and NSA papers switch a full-attention model); a new kind's own weights start as initialised.
  bool switched = false;
  for (size_t l = 0; saved["layers"].is_array() && l < saved["layers"].size() && l < ours["layers"].size(); ++l) {
    switched |= saved["layers"][l]["attention"] != ours["layers"][l]["attention"];
    saved["layers"][l].erase("attention");
    ours["layers"][l].erase("attention");
  }
  const std::string diff = first_difference(saved, ours);
  LONGCTX_CHECK(diff.empty(), "init-from: checkpoint ", path, " has another model config (checkpoint vs config): ",
                diff);
  if (const CheckpointInfo info = checkpoint_info(f.metadata, path); info.tokenizer == cfg_.tokenizer) {
    tokenizer_model_ = info.tokenizer_model;  // the fine-tune carries the same tokenizer on
    special_tokens_ = info.special_tokens;
  }
  load_weights(model_, f, path, switched);
}

void Trainer::resume(const std::string& path) {
  const SafetensorsFile f = load_safetensors(path);
  const ModelConfig saved = checkpoint_config(f.metadata, path);
  const std::string model_diff = first_difference(saved.to_json(), model_.config().to_json());
  LONGCTX_CHECK(model_diff.empty(), "resume: checkpoint ", path,
                " was trained with another model config (checkpoint vs config): ", model_diff);
  // a training checkpoint's own metadata, each piece named when missing or malformed
  const auto metadata_json = [&](const char* key) {
    const auto it = f.metadata.find(key);
    LONGCTX_CHECK(it != f.metadata.end(), "resume: checkpoint ", path, " has no ", key,
                  " (a weights-only file? start from it with --init-from)");
    const nlohmann::json j = nlohmann::json::parse(it->second, nullptr, false);
    LONGCTX_CHECK(j.is_object(), "resume: checkpoint ", path, ": ", key, " is not a JSON object");
    return j;
  };
  const TrainConfig saved_train = TrainConfig::from_json(metadata_json("longctx.train_config"));
  // the settings that decide which batches come next
  const auto data_settings = [](const TrainConfig& c) {
    return nlohmann::json{{"seed", c.seed},   {"seq_len", c.seq_len},    {"batch_tokens", c.batch_tokens},
                          {"accum", c.accum}, {"tokenizer", c.tokenizer},
                          {"tasks", c.tasks.enabled() ? c.tasks.to_json() : nlohmann::json()},
                          {"pose_span", c.pose_span}};
  };
  const std::string data_diff = first_difference(data_settings(saved_train), data_settings(cfg_));
  LONGCTX_CHECK(data_diff.empty(), "resume: checkpoint ", path, " used other data settings (checkpoint vs config): ",
                data_diff);
  load_weights(model_, f, path);
  special_tokens_ = checkpoint_info(f.metadata, path).special_tokens;
  auto& params = model_.params();
  for (size_t i = 0; i < params.size(); ++i)
    for (const char* moment : {"m", "v"}) {
      const std::string name = concat("optimizer.", moment, ".", params[i].name);
      LONGCTX_CHECK(f.has(name), "resume: checkpoint ", path, " has no AdamW moment '", name,
                    "' (a weights-only file? start from it with --init-from)");
      Tensor& dst = moment[0] == 'm' ? opt_.m()[i] : opt_.v()[i];
      std::memcpy(dst.raw(), f.at(name).raw(), dst.nbytes());  // shapes checked by load_weights
    }
  const nlohmann::json state = metadata_json("longctx.state");
  const std::string what = concat("resume: checkpoint ", path, ": longctx.state");
  step_ = read_value<int64_t>(state, "step", -1, what);
  const int64_t adam_steps = read_value<int64_t>(state, "adam_steps", -1, what);
  LONGCTX_CHECK(step_ >= 0 && adam_steps >= 0, what, " needs step and adam_steps >= 0");
  opt_.set_steps(adam_steps);
  tokens_seen_ = read_value<double>(state, "tokens_seen", 0.0, what);
}

}  // namespace longctx
