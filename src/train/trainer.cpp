#include <longctx/core/error.hpp>
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
                         "ckpt_every", "moba_to_full_step", "score_last"},
                     "train config");
  try {
    c.tokenizer = j.value("tokenizer", c.tokenizer);
    c.seq_len = j.value("seq_len", c.seq_len);
    c.batch_tokens = j.value("batch_tokens", c.batch_tokens);
    c.accum = j.value("accum", c.accum);
    c.steps = j.value("steps", c.steps);
    c.warmup = j.value("warmup", c.warmup);
    c.lr = j.value("lr", c.lr);
    c.min_lr = j.value("min_lr", c.min_lr);
    c.grad_clip = j.value("grad_clip", c.grad_clip);
    c.adam.beta1 = j.value("beta1", c.adam.beta1);
    c.adam.beta2 = j.value("beta2", c.adam.beta2);
    c.adam.eps = j.value("eps", c.adam.eps);
    c.adam.weight_decay = j.value("weight_decay", c.adam.weight_decay);
    c.seed = j.value("seed", c.seed);
    c.eval_every = j.value("eval_every", c.eval_every);
    c.eval_tokens = j.value("eval_tokens", c.eval_tokens);
    c.ckpt_every = j.value("ckpt_every", c.ckpt_every);
    c.moba_to_full_step = j.value("moba_to_full_step", c.moba_to_full_step);
    c.score_last = j.value("score_last", c.score_last);
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(concat("longctx: train config: ", e.what()));
  }
  LONGCTX_CHECK(c.seq_len > 0, "train config: seq_len must be > 0, got ", c.seq_len);
  LONGCTX_CHECK(c.batch_tokens >= c.seq_len, "train config: batch_tokens (", c.batch_tokens, ") must be >= seq_len (",
                c.seq_len, ")");
  LONGCTX_CHECK(c.accum >= 1, "train config: accum must be >= 1, got ", c.accum);
  LONGCTX_CHECK(c.steps >= 1, "train config: steps must be >= 1, got ", c.steps);
  LONGCTX_CHECK(c.lr > 0 && c.min_lr >= 0, "train config: lr must be > 0 and min_lr >= 0");
  LONGCTX_CHECK(c.eval_every > 0 && c.ckpt_every > 0, "train config: eval_every and ckpt_every must be > 0");
  LONGCTX_CHECK(c.score_last >= 0 && c.score_last <= c.seq_len, "train config: score_last must be in [0, seq_len = ",
                c.seq_len, "], got ", c.score_last);
  return c;
}

nlohmann::json TrainConfig::to_json() const {
  return {{"tokenizer", tokenizer}, {"seq_len", seq_len},     {"batch_tokens", batch_tokens},
          {"accum", accum},         {"steps", steps},         {"warmup", warmup},
          {"lr", lr},               {"min_lr", min_lr},       {"grad_clip", grad_clip},
          {"beta1", adam.beta1},    {"beta2", adam.beta2},    {"eps", adam.eps},
          {"weight_decay", adam.weight_decay}, {"seed", seed}, {"eval_every", eval_every},
          {"eval_tokens", eval_tokens}, {"ckpt_every", ckpt_every}, {"moba_to_full_step", moba_to_full_step},
          {"score_last", score_last}};
}

Trainer::Trainer(const ModelConfig& model, const TrainConfig& train, Corpus corpus, uint64_t init_seed)
    : cfg_(train), model_(model, init_seed), opt_(model_.params(), train.adam), corpus_(std::move(corpus)) {
  LONGCTX_CHECK(train.seq_len <= model.max_seq_len, "train config: seq_len (", train.seq_len,
                ") exceeds the model's max_seq_len (", model.max_seq_len, ")");
  eval_ = cfg_.score_last > 0
              ? tail_eval_batches(corpus_.val, cfg_.seq_len, cfg_.batch_tokens, cfg_.score_last, cfg_.eval_tokens)
              : eval_batches(corpus_.val, cfg_.seq_len, cfg_.batch_tokens, cfg_.eval_tokens);
}

StepStats Trainer::step(const std::function<bool(int64_t)>& between_micro_batches) {
  const auto t0 = std::chrono::steady_clock::now();
  model_.force_full_attention(cfg_.moba_to_full_step >= 0 && step_ >= cfg_.moba_to_full_step);
  model_.zero_grad();
  double loss = 0;
  int64_t tokens = 0;
  for (int64_t micro = 0; micro < cfg_.accum; ++micro) {
    const uint64_t index = uint64_t(step_ * cfg_.accum + micro);
    const Batch b = cfg_.score_last > 0
                        ? tail_batch(corpus_.train, cfg_.seq_len, cfg_.batch_tokens, cfg_.score_last, cfg_.seed, index)
                        : sample_batch(corpus_.train, cfg_.seq_len, cfg_.batch_tokens, cfg_.seed, index);
    loss += model_.forward(b, true) / double(cfg_.accum);
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
  ++step_;
  tokens_seen_ += double(tokens);
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return {step_, loss, lr, norm, double(tokens) / dt, tokens};
}

double Trainer::evaluate() {
  double sum = 0;
  int64_t n = 0;
  for (const Batch& b : eval_) {
    int64_t targets = 0;
    for (int32_t t : b.targets) targets += t >= 0;
    sum += model_.forward(b, false) * double(targets);
    n += targets;
  }
  return n ? sum / double(n) : 0.0;
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
  save_safetensors(path, tensors,
                   {{"format", "longctx"},
                    {"longctx.model_config", model_.config().to_json().dump()},
                    {"longctx.train_config", cfg_.to_json().dump()},
                    {"longctx.tokenizer", cfg_.tokenizer},
                    {"longctx.state", state.dump()}});
}

void Trainer::init_from(const std::string& path) {
  LONGCTX_CHECK(step_ == 0, "init-from: the trainer has already run ", step_, " steps");
  const SafetensorsFile f = load_safetensors(path);
  nlohmann::json saved = checkpoint_config(f.metadata, path).to_json(), ours = model_.config().to_json();
  saved.erase("max_seq_len");
  ours.erase("max_seq_len");
  const std::string diff = first_difference(saved, ours);
  LONGCTX_CHECK(diff.empty(), "init-from: checkpoint ", path, " has another model config (checkpoint vs config): ",
                diff);
  load_weights(model_, f, path);
}

void Trainer::resume(const std::string& path) {
  const SafetensorsFile f = load_safetensors(path);
  const ModelConfig saved = checkpoint_config(f.metadata, path);
  const std::string model_diff = first_difference(saved.to_json(), model_.config().to_json());
  LONGCTX_CHECK(model_diff.empty(), "resume: checkpoint ", path,
                " was trained with another model config (checkpoint vs config): ", model_diff);
  const TrainConfig saved_train = TrainConfig::from_json(nlohmann::json::parse(f.metadata.at("longctx.train_config")));
  // the settings that decide which batches come next
  const auto data_settings = [](const TrainConfig& c) {
    return nlohmann::json{{"seed", c.seed},   {"seq_len", c.seq_len},    {"batch_tokens", c.batch_tokens},
                          {"accum", c.accum}, {"tokenizer", c.tokenizer}};
  };
  const std::string data_diff = first_difference(data_settings(saved_train), data_settings(cfg_));
  LONGCTX_CHECK(data_diff.empty(), "resume: checkpoint ", path, " used other data settings (checkpoint vs config): ",
                data_diff);
  load_weights(model_, f, path);
  auto& params = model_.params();
  for (size_t i = 0; i < params.size(); ++i) {
    std::memcpy(opt_.m()[i].raw(), f.at("optimizer.m." + params[i].name).raw(), opt_.m()[i].nbytes());
    std::memcpy(opt_.v()[i].raw(), f.at("optimizer.v." + params[i].name).raw(), opt_.v()[i].nbytes());
  }
  const auto state = nlohmann::json::parse(f.metadata.at("longctx.state"));
  step_ = state.at("step").get<int64_t>();
  opt_.set_steps(state.at("adam_steps").get<int64_t>());
  tokens_seen_ = state.at("tokens_seen").get<double>();
}

}  // namespace longctx
