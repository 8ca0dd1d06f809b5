// Training machinery: tokenizers, batches, optimizer, checkpoints (round trip, corruption,
// resume), and a tiny model memorising a short text.
#include <longctx/model/checkpoint.hpp>
#include <longctx/core/error.hpp>
#include <longctx/model/safetensors.hpp>
#include <longctx/train/trainer.hpp>
#include <sentencepiece_trainer.h>

#include "helpers.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

namespace longctx {
namespace {

namespace fs = std::filesystem;

const char* kText =
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters.\n";

// A corpus folder with the text as train and val documents.
fs::path make_corpus(const std::string& name, int copies) {
  const fs::path dir = fs::temp_directory_path() / ("longctx_test_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir / "train");
  fs::create_directories(dir / "val");
  std::ofstream(dir / "train" / "a.txt") << [&] { std::string s; for (int i = 0; i < copies; ++i) s += kText; return s; }();
  std::ofstream(dir / "val" / "b.txt") << kText;
  return dir;
}

ModelConfig small_model(int64_t vocab, const std::string& attention = "full") {
  return ModelConfig::from_json({{"vocab_size", vocab}, {"d_model", 32}, {"n_layers", 2}, {"n_heads", 2},
                                 {"d_ff", 64}, {"max_seq_len", 256},
                                 {"attention", testing::attention_json(attention, {{"block_size", 16}, {"top_k", 2}})}});
}

TrainConfig small_train() {
  return TrainConfig::from_json({{"seq_len", 64}, {"batch_tokens", 256}, {"steps", 300}, {"warmup", 10},
                                 {"lr", 1e-2}, {"min_lr", 1e-3}, {"weight_decay", 0.0}, {"eval_tokens", 256}});
}

TEST(Tokenizer, BytesRoundTrip) {
  const auto tok = make_tokenizer("bytes");
  const std::string s = "Grüße, \n\t\x01 KJV";
  EXPECT_EQ(tok->decode(tok->encode(s)), s);
  EXPECT_EQ(tok->vocab_size(), 256);
  EXPECT_THROW(make_tokenizer("wordpiece"), std::invalid_argument);
  EXPECT_THROW(make_tokenizer("spm:/no/such/model"), std::invalid_argument);
}

TEST(Tokenizer, SentencePieceRoundTrip) {
  const fs::path dir = make_corpus("spm", 20);
  const std::string prefix = (dir / "spm").string();
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + (dir / "train" / "a.txt").string() + " --model_prefix=" + prefix +
      " --vocab_size=320 --model_type=bpe --byte_fallback=true --minloglevel=2");
  ASSERT_TRUE(status.ok()) << status.ToString();  // (trainer errors name the flag)
  const auto tok = make_tokenizer("spm:" + prefix + ".model");
  EXPECT_EQ(tok->vocab_size(), 320);
  const std::string s = "And God said, Let there be light: and there was light.";
  EXPECT_EQ(tok->decode(tok->encode(s)), s);
  EXPECT_LT(tok->encode(s).size(), s.size());  // merges happened
  // the model's bytes rebuild it without the file (what a checkpoint embeds)
  const auto copy = make_tokenizer("spm:/not/there.model", tok->serialized());
  EXPECT_EQ(copy->encode(s), tok->encode(s));
  EXPECT_EQ(make_tokenizer("bytes")->serialized(), "");
  const std::string utf8 = "Gr\u00fc\u00dfe \u20ac \U0001D11E";  // 2-, 3- and 4-byte sequences (byte fallback)
  EXPECT_EQ(tok->decode(tok->encode(utf8)), utf8);
  // SentencePiece would map other bytes to <unk>: refused, naming the offset (and, in a corpus, the file)
  testing::expect_error([&] { tok->encode("ok \xff\xfe"); }, "byte 3 (0xff) is not valid UTF-8");
  for (const std::string bad : {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "a\xe2\x82", "\x80"})
    testing::expect_error([&] { tok->encode(bad); }, "is not valid UTF-8");  // overlong, surrogate, > U+10FFFF, cut, stray
  // a checkpoint carries its SentencePiece model: it loads after the model file is gone, and so
  // does its weights-only export
  {
    TrainConfig tc = small_train();
    tc.tokenizer = "spm:" + prefix + ".model";
    Trainer t(small_model(tok->vocab_size()), tc, load_corpus(dir.string(), *tok), 1);
    const std::string ckpt = (dir / "spm_run.safetensors").string(), lean = (dir / "spm_lean.safetensors").string();
    t.save(ckpt);
    fs::rename(prefix + ".model", prefix + ".moved");
    const CheckpointInfo info = read_checkpoint_info(ckpt);
    EXPECT_EQ(info.tokenizer, tc.tokenizer);
    EXPECT_EQ(make_tokenizer(info.tokenizer, info.tokenizer_model)->encode(s), tok->encode(s));
    EXPECT_LT(export_weights(ckpt, lean), fs::file_size(ckpt));
    const SafetensorsFile exported = load_safetensors(lean);
    EXPECT_EQ(exported.tensors.size(), t.model().params().size());  // the weights, no AdamW moments
    EXPECT_EQ(exported.metadata.count("longctx.state"), 0u);
    const CheckpointInfo lean_info = read_checkpoint_info(lean);
    EXPECT_EQ(lean_info.tokenizer_model, info.tokenizer_model);
    EXPECT_NO_THROW(load_model(lean));
    testing::expect_error([&] { export_weights(lean, lean); }, "must not be the checkpoint itself");
    fs::rename(prefix + ".moved", prefix + ".model");
  }
  std::ofstream(dir / "train" / "z.txt") << "fine text, then \xe9t\xe9 in Latin-1";
  testing::expect_error([&] { load_corpus(dir.string(), *tok); }, "z.txt: tokenizer: SentencePiece needs UTF-8 text; byte 16");
}

// Missing, empty and too-short corpora are named, as is a split that is missing or holds no text.
TEST(Corpus, MissingEmptyOrTooShortIsNamed) {
  const auto tok = make_tokenizer("bytes");
  const fs::path dir = fs::temp_directory_path() / "longctx_test_badcorpus";
  fs::remove_all(dir);
  testing::expect_error([&] { load_corpus(dir.string(), *tok); }, "no such folder");
  fs::create_directories(dir / "train");
  testing::expect_error([&] { load_corpus(dir.string(), *tok); }, "no .txt documents in");
  std::ofstream(dir / "train" / "notes.md") << "not a .txt";
  testing::expect_error([&] { load_corpus(dir.string(), *tok); }, "no .txt documents in");
  std::ofstream(dir / "train" / "empty.txt") << "";
  std::ofstream(dir / "train" / "one.txt") << "x";
  testing::expect_error([&] { load_corpus(dir.string(), *tok); }, "every document in");
  std::ofstream(dir / "train" / "two.txt") << "xy";
  testing::expect_error([&] { load_corpus(dir.string(), *tok); }, "missing folder");  // no val/
  fs::create_directories(dir / "val");
  std::ofstream(dir / "val" / "v.txt") << "ab";
  // two tokens are enough for one target: a tiny corpus trains (windows shorter than seq_len)
  const Corpus c = load_corpus(dir.string(), *tok);
  EXPECT_EQ(c.train.size(), 1u);
  EXPECT_EQ(c.train_tokens(), 2);
  const Batch b = sample_batch(c.train, 64, 16, 1, 0);
  EXPECT_EQ(b.size(), 16);
  EXPECT_EQ(b.tokens[0], 'x');
  EXPECT_EQ(b.targets[0], 'y');
}

TEST(Batches, PackedWindowsWithNextTokenTargetsAndDeterminism) {
  std::vector<std::vector<int32_t>> docs{{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {20, 21, 22}};
  const Batch a = sample_batch(docs, 4, 11, 5, 0), b = sample_batch(docs, 4, 11, 5, 0), c = sample_batch(docs, 4, 11, 5, 1);
  EXPECT_EQ(a.size(), 11);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_NE(a.tokens, c.tokens);
  for (size_t s = 0; s + 1 < a.cu_seqlens.size(); ++s) {
    EXPECT_LE(a.cu_seqlens[s + 1] - a.cu_seqlens[s], 4);
    for (int64_t t = a.cu_seqlens[s]; t < a.cu_seqlens[s + 1]; ++t)
      EXPECT_EQ(a.targets[size_t(t)], a.tokens[size_t(t)] + 1) << "target is the next token of the same document";
  }
  const auto ev = eval_batches(docs, 4, 8, 100);
  int64_t targets = 0;
  for (const Batch& e : ev) targets += e.size();
  EXPECT_EQ(targets, 9 + 2);  // every position with a successor, once
}

TEST(Batches, TailBatchesScoreOnlyTheLastTokensOfWholeDocuments) {
  std::vector<std::vector<int32_t>> docs{{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {20, 21, 22}, {30, 31, 32, 33, 34, 35}};
  const Batch a = tail_batch(docs, 6, 12, 2, 5, 0), b = tail_batch(docs, 6, 12, 2, 5, 0);
  EXPECT_EQ(a.tokens, b.tokens);
  ASSERT_GE(a.cu_seqlens.size(), 2u);
  EXPECT_LE(a.size(), 12);
  for (size_t s = 0; s + 1 < a.cu_seqlens.size(); ++s) {
    const int64_t begin = a.cu_seqlens[s], end = a.cu_seqlens[s + 1];
    const int32_t first = a.tokens[size_t(begin)];
    const auto& doc = *std::find_if(docs.begin(), docs.end(), [&](const auto& d) {
      return std::find(d.begin(), d.end(), first) != d.end();
    });
    EXPECT_EQ(end - begin, std::min<int64_t>(6, int64_t(doc.size()) - 1)) << "the whole tail, at most seq_len";
    EXPECT_EQ(a.tokens[size_t(end - 1)], doc[doc.size() - 2]) << "ends at the document's end";
    for (int64_t t = begin; t < end; ++t)
      EXPECT_EQ(a.targets[size_t(t)], t >= end - 2 ? a.tokens[size_t(t)] + 1 : -1) << "only the last 2 are scored";
  }
  const auto ev = tail_eval_batches(docs, 6, 8, 2, 100);
  ASSERT_EQ(ev.size(), 2u);  // tails of 6 and 2 fill one batch of 8; the third document's 5 start another
  EXPECT_EQ(ev[0].tokens, (std::vector<int32_t>{3, 4, 5, 6, 7, 8, 20, 21}));
  EXPECT_EQ(ev[0].targets, (std::vector<int32_t>{-1, -1, -1, -1, 8, 9, 21, 22}));
  EXPECT_EQ(ev[1].tokens, (std::vector<int32_t>{30, 31, 32, 33, 34}));
  EXPECT_EQ(tail_eval_batches(docs, 6, 8, 2, 8).size(), 1u) << "max_tokens stops before the third document";
  testing::expect_error([&] { tail_batch(docs, 6, 12, 0, 5, 0); }, "score_last > 0");
  testing::expect_error([] { TrainConfig::from_json({{"seq_len", 8}, {"score_last", 9}}); },
                        "score_last must be in [0, seq_len = 8]");
}

TEST(Optimizer, ScheduleClippingAndAdamWStep) {
  EXPECT_DOUBLE_EQ(lr_at(0, 10, 100, 1.0, 0.1), 0.1);
  EXPECT_DOUBLE_EQ(lr_at(9, 10, 100, 1.0, 0.1), 1.0);
  EXPECT_NEAR(lr_at(55, 10, 100, 1.0, 0.1), 0.55, 1e-12);  // halfway through the cosine
  EXPECT_DOUBLE_EQ(lr_at(100, 10, 100, 1.0, 0.1), 0.1);
  std::vector<Param> ps;
  ps.push_back({"w", Tensor({2}), Tensor({2}), true});
  ps[0].value.f32()[0] = 1.0f, ps[0].value.f32()[1] = -2.0f;
  ps[0].grad.f32()[0] = 3.0f, ps[0].grad.f32()[1] = 4.0f;
  EXPECT_DOUBLE_EQ(clip_grad_norm(ps, 1.0), 5.0);
  EXPECT_FLOAT_EQ(ps[0].grad.f32()[0], 0.6f);
  AdamW opt(ps, {0.9, 0.99, 1e-8, 0.5});
  opt.step(ps, 0.1);
  // first step: m_hat = g, v_hat = g^2, so the update is lr * sign(g); decay multiplies by 1 - lr*wd
  EXPECT_NEAR(ps[0].value.f32()[0], 1.0 * 0.95 - 0.1, 1e-6);
  EXPECT_NEAR(ps[0].value.f32()[1], -2.0 * 0.95 - 0.1, 1e-6);
}

TEST(Training, TinyModelMemorisesAShortText) {
  // One sequence, always the same: every token is determined by its prefix, so the loss can go to ~0.
  const auto tok = make_tokenizer("bytes");
  const std::vector<int32_t> ids = tok->encode(kText);
  Batch b;
  b.tokens.assign(ids.begin(), ids.end() - 1);
  b.targets.assign(ids.begin() + 1, ids.end());
  b.cu_seqlens = {0, b.size()};
  Transformer model(small_model(256, "moba"), 1);
  AdamW opt(model.params(), {0.9, 0.95, 1e-8, 0.0});
  const double before = model.forward(b, false);
  double loss = 0;
  for (int step = 0; step < 300; ++step) {
    model.zero_grad();
    loss = model.forward(b, true);
    model.backward();
    clip_grad_norm(model.params(), 1.0);
    opt.step(model.params(), 1e-2);
  }
  EXPECT_GT(before, 5.0);  // ~ln 256 at initialisation
  EXPECT_LT(model.forward(b, false), 0.05) << "loss after 300 steps (last train step: " << loss << ")";
}

// One layer of each kind with its own parameters or stop rule, small enough for seq_len 64.
ModelConfig small_kinds_model(const nlohmann::json& layer0, const nlohmann::json& layer1) {
  nlohmann::json j = small_model(256).to_json();
  j["layers"][0]["attention"] = layer0;
  j["layers"][1]["attention"] = layer1;
  return ModelConfig::from_json(j);
}
const nlohmann::json kNsa{{"kind", "nsa"}, {"block_len", 8}, {"stride", 4}, {"select_len", 8}, {"top_n", 3},
                          {"local_blocks", 1}, {"window", 16}, {"hidden", 16}};
const nlohmann::json kInfini{{"kind", "infini"}, {"segment_len", 16}, {"update", "delta"}};
const nlohmann::json kThreshold{{"kind", "threshold"}, {"block_size", 8}, {"tau", 0.9}};

TEST(Training, NsaInfiniThresholdModelsLearn) {
  // 30 steps on the repeated text: the loss must fall well below its start (~ln 256 = 5.5)
  const fs::path dir = make_corpus("kinds_learn", 8);
  const auto tok = make_tokenizer("bytes");
  const Corpus corpus = load_corpus(dir.string(), *tok);
  for (const auto& [a, b] : {std::pair{kNsa, kInfini}, std::pair{kThreshold, kThreshold}}) {
    Trainer t(small_kinds_model(a, b), small_train(), corpus, 1);
    std::vector<std::pair<Param*, Tensor>> own;  // the kinds' own parameters, as initialised
    for (Param& p : t.model().params())
      if (p.name.find(".attention.nsa.") != std::string::npos || p.name.find(".attention.infini.") != std::string::npos)
        own.emplace_back(&p, p.value.clone());
    const double first = t.step().loss;
    double last = first;
    for (int i = 0; i < 29; ++i) last = t.step().loss;
    EXPECT_GT(first, 5.0) << a.dump();
    EXPECT_LT(last, 3.2) << a.dump() << " then " << b.dump();
    for (const auto& [p, init] : own)  // they get gradients and train
      EXPECT_NE(std::memcmp(p->value.raw(), init.raw(), init.nbytes()), 0) << p->name;
  }
}

TEST(Checkpoint, NsaInfiniModelRoundTrips) {
  const fs::path dir = make_corpus("ckpt_kinds", 4);
  const auto tok = make_tokenizer("bytes");
  Trainer t(small_kinds_model(kNsa, kInfini), small_train(), load_corpus(dir.string(), *tok), 3);
  t.step();
  const std::string path = (dir / "k.safetensors").string();
  t.save(path);
  Transformer m = load_model(path);
  Transformer& orig = t.model();
  ASSERT_EQ(m.params().size(), orig.params().size());
  for (size_t i = 0; i < m.params().size(); ++i) {
    EXPECT_EQ(m.params()[i].name, orig.params()[i].name);
    EXPECT_EQ(std::memcmp(m.params()[i].value.raw(), orig.params()[i].value.raw(), m.params()[i].value.nbytes()), 0)
        << m.params()[i].name;
  }
  EXPECT_NO_THROW(m.param("layers.0.attention.nsa.compress_k.w1"));
  EXPECT_NE(m.param("layers.1.attention.infini.beta").value.at(0), 0.0f);  // trained one step away from 0
  EXPECT_EQ(m.config().to_json(), orig.config().to_json());
  // the reloaded model computes what the trained one does, and resuming restores it too
  Batch b;
  b.tokens = tok->encode("And God said, Let there be light");
  b.cu_seqlens = {0, b.size()};
  const Tensor want = orig.logits(b), got = m.logits(b);
  EXPECT_EQ(std::memcmp(want.raw(), got.raw(), want.nbytes()), 0);
  Trainer resumed(small_kinds_model(kNsa, kInfini), small_train(), load_corpus(dir.string(), *tok), 99);
  resumed.resume(path);
  for (size_t i = 0; i < orig.params().size(); ++i)
    EXPECT_EQ(std::memcmp(resumed.model().params()[i].value.raw(), orig.params()[i].value.raw(),
                          orig.params()[i].value.nbytes()), 0) << orig.params()[i].name;
}

// MoBA's key convolution trains (its taps leave the identity) and its Params round-trip.
TEST(Checkpoint, MobaKeyConvTrainsAndRoundTrips) {
  const fs::path dir = make_corpus("ckpt_key_conv", 4);
  const auto tok = make_tokenizer("bytes");
  const nlohmann::json conv{{"kind", "moba"}, {"block_size", 8}, {"top_k", 2}, {"key_conv", 3}, {"key_conv_bias", true}};
  Trainer t(small_kinds_model(conv, {{"kind", "full"}}), small_train(), load_corpus(dir.string(), *tok), 3);
  const Tensor init = t.model().param("layers.0.attention.moba.key_conv.weight").value.clone();
  for (int i = 0; i < 3; ++i) t.step();
  const Tensor& taps = t.model().param("layers.0.attention.moba.key_conv.weight").value;
  EXPECT_NE(std::memcmp(taps.raw(), init.raw(), init.nbytes()), 0);
  const std::string path = (dir / "kc.safetensors").string();
  t.save(path);
  Transformer m = load_model(path);
  EXPECT_EQ(m.config().to_json(), t.model().config().to_json());
  Batch b;
  b.tokens = tok->encode("And God said, Let there be light");
  b.cu_seqlens = {0, b.size()};
  const Tensor want = t.model().logits(b), got = m.logits(b);
  EXPECT_EQ(std::memcmp(want.raw(), got.raw(), want.nbytes()), 0);
}

TEST(Checkpoint, SaveLoadRoundTripIsBitExact) {
  const fs::path dir = make_corpus("ckpt", 4);
  const auto tok = make_tokenizer("bytes");
  Trainer t(small_model(256, "moba"), small_train(), load_corpus(dir.string(), *tok), 3);
  t.step();
  const std::string path = (dir / "c.safetensors").string();
  t.save(path);
  for (const auto& e : fs::directory_iterator(dir)) EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos);
  std::string spec;
  Transformer m = load_model(path, &spec);
  EXPECT_EQ(spec, "bytes");
  ASSERT_EQ(m.params().size(), t.model().params().size());
  for (size_t i = 0; i < m.params().size(); ++i)
    EXPECT_EQ(std::memcmp(m.params()[i].value.raw(), t.model().params()[i].value.raw(), m.params()[i].value.nbytes()), 0);
  EXPECT_EQ(m.config().to_json(), t.model().config().to_json());
}

TEST(Checkpoint, ResumeEqualsUninterruptedRun) {
  const fs::path dir = make_corpus("resume", 4);
  const auto tok = make_tokenizer("bytes");
  const Corpus corpus = load_corpus(dir.string(), *tok);
  Trainer straight(small_model(256, "moba"), small_train(), corpus, 5);
  std::vector<double> losses;
  for (int i = 0; i < 4; ++i) losses.push_back(straight.step().loss);

  Trainer first(small_model(256, "moba"), small_train(), corpus, 5);
  first.step();
  first.step();
  const std::string path = (dir / "r.safetensors").string();
  first.save(path);
  Trainer second(small_model(256, "moba"), small_train(), corpus, 999);  // other init: resume must overwrite it
  second.resume(path);
  EXPECT_EQ(second.steps_done(), 2);
  EXPECT_EQ(second.step().loss, losses[2]);
  EXPECT_EQ(second.step().loss, losses[3]);
  for (size_t i = 0; i < straight.model().params().size(); ++i)
    ASSERT_EQ(std::memcmp(second.model().params()[i].value.raw(), straight.model().params()[i].value.raw(),
                          straight.model().params()[i].value.nbytes()), 0) << straight.model().params()[i].name;
}

// Every MoE router is reachable from the config and trains: per-step routing stats add up, the
// bias_free layer's bias moves by +-rate per expert per step, and a resumed run (same noise, same
// bias) equals an uninterrupted one.
TEST(Training, MoeRoutersFromConfigTrainLogAndResume) {
  const fs::path dir = make_corpus("moe_routers", 8);
  const auto tok = make_tokenizer("bytes");
  const Corpus corpus = load_corpus(dir.string(), *tok);
  const nlohmann::json noisy{{"kind", "moe"}, {"num_experts", 4}, {"top_k", 2}, {"d_ff", 32}, {"router", "noisy"},
                             {"importance_weight", 0.01}, {"capacity_factor", 1.0}};
  const nlohmann::json bias_free{{"kind", "moe"}, {"num_experts", 4}, {"top_k", 1}, {"d_ff", 32},
                                 {"router", "bias_free"}, {"gate_norm", "all"}, {"bias_update_rate", 0.01},
                                 {"load_balance_weight", 0.0}};
  const ModelConfig cfg = ModelConfig::from_json(
      {{"vocab_size", 256}, {"d_model", 32}, {"n_layers", 2}, {"n_heads", 2}, {"d_ff", 64}, {"max_seq_len", 256},
       {"layers", {{{"ffn", noisy}}, {{"ffn", bias_free}}}}});
  EXPECT_EQ(cfg.to_json()["layers"][0]["ffn"]["router"], "noisy");
  EXPECT_EQ(ModelConfig::from_json(cfg.to_json()).to_json(), cfg.to_json());
  TrainConfig tc = small_train();
  tc.accum = 2;
  Trainer straight(cfg, tc, corpus, 3);
  std::vector<double> losses;
  for (int i = 0; i < 6; ++i) {
    const StepStats s = straight.step();
    losses.push_back(s.loss);
    ASSERT_EQ(s.moe.size(), 2u);
    for (const MoeLayerStats& m : s.moe) {
      EXPECT_EQ(m.tokens, s.tokens);  // both micro-batches
      int64_t routed = 0, kept = 0;
      for (int64_t r : m.stats.routed_per_expert) routed += r;
      for (int64_t k : m.stats.tokens_per_expert) kept += k;
      EXPECT_EQ(routed, s.tokens * (m.layer == 0 ? 2 : 1));
      EXPECT_EQ(kept, routed - m.stats.dropped_assignments);
      EXPECT_GT(m.stats.router_entropy, 0.0);
    }
    ASSERT_EQ(s.moe[1].expert_bias.size(), 4u);
    for (float b : s.moe[1].expert_bias)  // a sum of i +-0.01 steps (0 for an expert exactly at the mean)
      EXPECT_NEAR(std::abs(b) * 100, std::round(std::abs(b) * 100), 1e-3) << b;
    EXPECT_TRUE(s.moe[0].expert_bias.empty());
  }
  EXPECT_LT(losses.back(), losses.front());
  double moved = 0;
  for (const Param& p : straight.model().params())
    if (p.name == "layers.1.feed_forward.expert_bias")
      for (int64_t e = 0; e < 4; ++e) moved += std::abs(p.value.f32()[e]);
  EXPECT_GT(moved, 0.0);  // the bias is a Param, so it is checkpointed

  Trainer first(cfg, tc, corpus, 3);
  for (int i = 0; i < 3; ++i) first.step();
  const std::string path = (dir / "moe.safetensors").string();
  first.save(path);
  Trainer second(cfg, tc, corpus, 77);
  second.resume(path);
  for (int i = 3; i < 6; ++i) EXPECT_EQ(second.step().loss, losses[size_t(i)]) << "step " << i + 1;
}

// Progressive sparsity: top-k layers start with every block (so step 1 is full attention) and
// threshold layers with all the mass, reaching their own top_k / tau at sparsity_steps.
TEST(Training, SparsityScheduleWidensTopkAndThresholdEarly) {
  TrainConfig tc = small_train();  // seq_len 64
  tc.sparsity_steps = 4;
  tc.sparsity_shape = ScheduleShape::cosine;
  EXPECT_EQ(TrainConfig::from_json(tc.to_json()).to_json(), tc.to_json());
  const AttentionSpec topk = TopkOptions{16, 2, false, 0.0f}, thr = ThresholdOptions{16, 0.8f, StopRule::bound, 0.0f};
  double kept = 0;
  EXPECT_EQ(scheduled_spec(topk, tc, 0, &kept).get<TopkOptions>().top_k, 4);  // all 4 blocks of 64 tokens
  EXPECT_EQ(kept, 1.0);
  EXPECT_EQ(scheduled_spec(topk, tc, 2, &kept).get<TopkOptions>().top_k, 3);  // cosine midpoint: ratio 0.75
  EXPECT_EQ(scheduled_spec(topk, tc, 4, &kept).get<TopkOptions>().top_k, 2);
  EXPECT_EQ(kept, 0.5);
  EXPECT_EQ(scheduled_spec(topk, tc, 99, nullptr).get<TopkOptions>().top_k, 2);
  EXPECT_FLOAT_EQ(scheduled_spec(thr, tc, 0, &kept).get<ThresholdOptions>().tau, 1.0f);
  EXPECT_FLOAT_EQ(scheduled_spec(thr, tc, 4, &kept).get<ThresholdOptions>().tau, 0.8f);
  EXPECT_FLOAT_EQ(float(kept), 0.8f);
  testing::expect_error([] { TrainConfig::from_json({{"sparsity_shape", "step"}}); },
                        "sparsity_shape must be 'linear' or 'cosine', got 'step'");

  const fs::path dir = make_corpus("sparsity", 4);
  const auto tok = make_tokenizer("bytes");
  const Corpus corpus = load_corpus(dir.string(), *tok);
  Trainer scheduled(small_model(256, "topk"), tc, corpus, 5);  // block_size 16, top_k 2
  Trainer full(small_model(256, "full"), small_train(), corpus, 5);
  const StepStats first = scheduled.step();
  EXPECT_NEAR(first.loss, full.step().loss, 1e-5);  // every block kept: dense causal attention
  ASSERT_EQ(first.sparsity.size(), 2u);
  EXPECT_EQ(first.sparsity[0].kept_ratio, 1.0);
  std::vector<double> ratios;
  for (int i = 0; i < 5; ++i) ratios.push_back(scheduled.step().sparsity[1].kept_ratio);
  EXPECT_EQ(ratios, (std::vector<double>{1.0, 0.75, 0.75, 0.5, 0.5}));  // blocks 4, 3, 3, 2, 2 of 4
  EXPECT_EQ(scheduled.model().config().attention[0].get<TopkOptions>().top_k, 2);  // the config keeps its own
}

// Infini's gates start toward local attention and train at their own learning rate: Adam's first
// step moves each beta by lr(0) * infini_beta_lr / lr (the step of a bias-corrected first moment
// is +-lr), not by lr(0) as every other weight.
TEST(Training, InfiniBetaHasItsOwnLearningRateAndStartsLocal) {
  const fs::path dir = make_corpus("infini_beta", 4);
  const auto tok = make_tokenizer("bytes");
  const ModelConfig cfg = ModelConfig::from_json({{"vocab_size", 256}, {"d_model", 32}, {"n_layers", 2}, {"n_heads", 2},
                                                 {"d_ff", 64}, {"max_seq_len", 256},
                                                 {"attention", {{"kind", "infini"}, {"segment_len", 16}}}});
  TrainConfig tc = small_train();  // lr 1e-2, warmup 10
  tc.infini_beta_lr = 0.05;
  Trainer t(cfg, tc, load_corpus(dir.string(), *tok), 1);
  const std::vector<LayerGates> g0 = infini_gates(t.model());
  ASSERT_EQ(g0.size(), 2u);
  EXPECT_EQ(g0[1].layer, 1);
  for (double w : g0[0].memory_weight) EXPECT_NEAR(w, 1.0 / (1.0 + std::exp(2.0)), 1e-7);  // beta_init -2
  std::vector<float> before;
  for (const Param& p : t.model().params())
    if (is_infini_beta(p.name)) {
      EXPECT_FALSE(p.decay);
      before.insert(before.end(), p.value.f32(), p.value.f32() + p.value.numel());
    }
  const StepStats s = t.step();
  size_t i = 0;
  for (const Param& p : t.model().params())
    if (is_infini_beta(p.name))
      for (int64_t h = 0; h < p.value.numel(); ++h, ++i)
        EXPECT_NEAR(std::abs(p.value.f32()[h] - before[i]), s.lr * 0.05 / 1e-2, 0.02 * s.lr * 0.05 / 1e-2)  // eps
            << p.name << "[" << h << "]";
  EXPECT_EQ(TrainConfig::from_json(tc.to_json()).infini_beta_lr, 0.05);
  testing::expect_error([] { TrainConfig::from_json({{"infini_beta_lr", -1}}); }, "infini_beta_lr must be >= 0");
}

// A loss with per-target weights is sum(w * loss) / sum(w): weights all 2 change nothing, a weight
// of 0 is the same as no target (loss and gradients to the bit), and any weights give the weighted
// mean of the per-token losses.
TEST(Training, WeightedLossIsTheWeightedMeanAndZeroWeightMeansNoTarget) {
  const auto tok = make_tokenizer("bytes");
  const std::vector<std::vector<int32_t>> docs{tok->encode(std::string(kText) + kText)};
  const Batch b = sample_batch(docs, 64, 128, 3, 0);
  Transformer m(small_model(256), 7);
  const auto loss_and_grads = [&](const Batch& x) {
    m.zero_grad();
    const double loss = m.forward(x, true);
    m.backward();
    std::vector<std::vector<float>> g;
    for (const Param& p : m.params()) g.emplace_back(p.grad.f32(), p.grad.f32() + p.grad.numel());
    return std::make_pair(loss, g);
  };
  const auto plain = loss_and_grads(b);
  Batch twice = b;
  twice.weights.assign(size_t(b.size()), 2.0f);
  EXPECT_EQ(loss_and_grads(twice), plain);
  Batch zero = b, none = b;
  zero.weights.assign(size_t(b.size()), 1.0f);
  for (size_t t = 0; t < size_t(b.size()); t += 3) zero.weights[t] = 0.0f, none.targets[t] = -1;
  EXPECT_EQ(loss_and_grads(zero), loss_and_grads(none));
  Batch weighted = b;
  const std::vector<double> per_token = m.token_losses(b);
  double sum = 0, wsum = 0;
  for (size_t t = 0; t < size_t(b.size()); ++t) {
    weighted.weights.push_back(float(1 + t % 5));
    sum += double(weighted.weights[t]) * per_token[t];
    wsum += double(weighted.weights[t]);
  }
  EXPECT_NEAR(m.forward(weighted, false), sum / wsum, 1e-9);
  weighted.weights.pop_back();
  testing::expect_error([&] { m.forward(weighted, false); }, "batch: 127 weights for 128 tokens");
}

// Task documents mixed into training (text/task_mix.hpp): a resumed run sees the batches an
// uninterrupted one would (the curriculum's step included), held-out answer losses per task, and
// settings that cannot work are refused.
TrainConfig task_train() {
  return TrainConfig::from_json(
      {{"seq_len", 200}, {"batch_tokens", 400}, {"steps", 10}, {"warmup", 2}, {"lr", 1e-2}, {"eval_tokens", 200},
       {"tasks", {{"fraction", 0.5}, {"kinds", {"passkey", "kvrecall"}}, {"min_length", 160}, {"curriculum_steps", 3},
                  {"answer_weight", 2.0}, {"eval_docs", 2}}}});
}

TEST(Training, TaskMixResumesBitExactAndLogsAnswerLosses) {
  const fs::path dir = make_corpus("task_mix", 20);
  const auto tok = make_tokenizer("bytes");
  const Corpus corpus = load_corpus(dir.string(), *tok);
  Trainer straight(small_model(256), task_train(), corpus, 5);
  std::vector<double> losses;
  for (int i = 0; i < 4; ++i) losses.push_back(straight.step().loss);
  Trainer first(small_model(256), task_train(), corpus, 5);
  first.step();
  first.step();
  const std::string path = (dir / "r.safetensors").string();
  first.save(path);
  Trainer second(small_model(256), task_train(), corpus, 999);
  second.resume(path);
  EXPECT_EQ(second.step().loss, losses[2]);
  EXPECT_EQ(second.step().loss, losses[3]);
  for (size_t i = 0; i < straight.model().params().size(); ++i)
    ASSERT_EQ(std::memcmp(second.model().params()[i].value.raw(), straight.model().params()[i].value.raw(),
                          straight.model().params()[i].value.nbytes()), 0) << straight.model().params()[i].name;
  const std::vector<Trainer::AnswerLoss> answers = straight.evaluate_answers();
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_EQ(answers[0].kind, TaskKind::passkey);
  EXPECT_EQ(answers[1].kind, TaskKind::kvrecall);
  for (const auto& a : answers) EXPECT_TRUE(std::isfinite(a.loss) && a.loss > 0) << a.loss;
  EXPECT_TRUE(Trainer(small_model(256), small_train(), corpus, 5).evaluate_answers().empty()) << "no mix, no answers";
  EXPECT_EQ(TrainConfig::from_json(task_train().to_json()).to_json(), task_train().to_json());
  EXPECT_FALSE(small_train().to_json().contains("tasks")) << "a run without a mix records none";
  // another mix is another data stream: resume refuses it
  TrainConfig other = task_train();
  other.tasks.fraction = 0.25;
  Trainer third(small_model(256), other, corpus, 5);
  testing::expect_error([&] { third.resume(path); }, "used other data settings (checkpoint vs config): tasks.fraction");
}

TEST(Training, TaskMixSettingsThatCannotWorkAreRefused) {
  const fs::path dir = make_corpus("task_mix_bad", 4);
  const auto tok = make_tokenizer("bytes");
  const Corpus corpus = load_corpus(dir.string(), *tok);
  testing::expect_error([] { TrainConfig::from_json({{"seq_len", 200}, {"score_last", 7}, {"tasks", {{"fraction", 0.5}}}}); },
                        "tasks (fraction 0.5) and score_last (7) exclude each other");
  testing::expect_error([] { TrainConfig::from_json({{"seq_len", 200}, {"tasks", 0.5}}); }, "tasks must be an object");
  const TrainConfig tc = TrainConfig::from_json(
      {{"seq_len", 200}, {"batch_tokens", 400}, {"tasks", {{"fraction", 0.5}, {"kinds", {"vartrack"}}, {"min_length", 120}}}});
  testing::expect_error([&] { Trainer(small_model(256), tc, corpus, 1); },
                        "tasks.min_length 120 is too short for the vartrack task");
}

// A step of several micro-batches abandoned between them changes nothing: the step after it is the
// step an uninterrupted trainer takes.
TEST(Training, AbandonedStepChangesNothing) {
  const fs::path dir = make_corpus("abandon", 4);
  const auto tok = make_tokenizer("bytes");
  const Corpus corpus = load_corpus(dir.string(), *tok);
  TrainConfig tc = small_train();
  tc.accum = 3;
  Trainer straight(small_model(256), tc, corpus, 5), stopped(small_model(256), tc, corpus, 5);
  std::vector<int64_t> seen;
  const StepStats a = stopped.step([&](int64_t done) {
    seen.push_back(done);
    return done == 2;
  });
  EXPECT_TRUE(a.abandoned);
  EXPECT_EQ(seen, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(stopped.steps_done(), 0);
  const StepStats b = stopped.step(), want = straight.step();
  EXPECT_FALSE(b.abandoned);
  EXPECT_EQ(b.loss, want.loss);
  for (size_t i = 0; i < straight.model().params().size(); ++i)
    ASSERT_EQ(std::memcmp(stopped.model().params()[i].value.raw(), straight.model().params()[i].value.raw(),
                          straight.model().params()[i].value.nbytes()), 0)
        << straight.model().params()[i].name;
}

TEST(Checkpoint, CorruptOrMismatchedFilesGiveClearErrors) {
  const fs::path dir = make_corpus("corrupt", 4);
  const auto tok = make_tokenizer("bytes");
  Trainer t(small_model(256), small_train(), load_corpus(dir.string(), *tok), 1);
  const std::string good = (dir / "good.safetensors").string();
  t.save(good);
  using testing::expect_error;
  // truncated: cut the last bytes of the data
  const std::string cut = (dir / "cut.safetensors").string();
  fs::copy_file(good, cut);
  fs::resize_file(cut, fs::file_size(good) - 100);
  expect_error([&] { load_model(cut); }, "data offsets do not match");
  // garbage header
  const std::string junk = (dir / "junk.safetensors").string();
  std::ofstream(junk) << "\x10\0\0\0\0\0\0\0{not json at all" << std::string(64, 'x');
  expect_error([&] { load_model(junk); }, "corrupt checkpoint");
  expect_error([&] { load_model((dir / "missing.safetensors").string()); }, "cannot open checkpoint");
  // a checkpoint of another model
  Trainer other(small_model(256, "moba"), small_train(), load_corpus(dir.string(), *tok), 1);
  expect_error([&] { other.resume(good); },
               "was trained with another model config (checkpoint vs config): layers[0].attention.kind");
  // the same model with other data settings names the first one that differs
  TrainConfig reseeded = small_train();
  reseeded.seed += 1;
  Trainer resown(small_model(256), reseeded, load_corpus(dir.string(), *tok), 1);
  expect_error([&] { resown.resume(good); }, "used other data settings (checkpoint vs config): seed: ");
  // a weights-only file (no optimizer state, no train metadata) is named as such on resume
  const SafetensorsFile full = load_safetensors(good);
  std::vector<std::pair<std::string, const Tensor*>> weights;
  for (const auto& [name, tensor] : full.tensors)
    if (name.rfind("optimizer.", 0) != 0) weights.push_back({name, &tensor});
  std::map<std::string, std::string> meta = full.metadata;
  const std::string lean = (dir / "weights_only.safetensors").string();
  save_safetensors(lean, weights, meta);
  Trainer again(small_model(256), small_train(), load_corpus(dir.string(), *tok), 1);
  expect_error([&] { again.resume(lean); }, "has no AdamW moment 'optimizer.m.");
  meta.erase("longctx.train_config");
  save_safetensors(lean, weights, meta);
  expect_error([&] { again.resume(lean); }, "has no longctx.train_config (a weights-only file? start from it with --init-from)");
  EXPECT_NO_THROW(load_model(lean));  // inference needs only the weights
}

TEST(Checkpoint, InitFromLoadsWeightsOnlyAndStartsAtStepZero) {
  const fs::path dir = make_corpus("initfrom", 4);
  const auto tok = make_tokenizer("bytes");
  const Corpus corpus = load_corpus(dir.string(), *tok);
  Trainer source(small_model(256, "moba"), small_train(), corpus, 5);
  source.step();
  source.step();
  const std::string path = (dir / "src.safetensors").string();
  source.save(path);
  // another init seed and a longer max_seq_len (a fine-tune at longer lengths is allowed)
  ModelConfig longer = small_model(256, "moba");
  longer.max_seq_len = 1024;
  Trainer tuned(longer, small_train(), corpus, 999);
  tuned.init_from(path);
  EXPECT_EQ(tuned.steps_done(), 0);
  for (size_t i = 0; i < source.model().params().size(); ++i)
    ASSERT_EQ(std::memcmp(tuned.model().params()[i].value.raw(), source.model().params()[i].value.raw(),
                          source.model().params()[i].value.nbytes()), 0) << source.model().params()[i].name;
  // the first fine-tune step sees training batch 0 at the source's weights: same loss as the source there
  const Batch b0 = sample_batch(corpus.train, small_train().seq_len, small_train().batch_tokens, small_train().seed, 0);
  const double source_loss = source.model().forward(b0, false);
  const StepStats first = tuned.step();
  EXPECT_EQ(first.step, 1);
  EXPECT_DOUBLE_EQ(first.loss, source_loss);
  EXPECT_NEAR(first.lr, lr_at(0, small_train().warmup, small_train().steps, small_train().lr, small_train().min_lr), 1e-15)
      << "a fresh schedule, not the source's step";
  testing::expect_error([&] { tuned.init_from(path); }, "already run 1 steps");
}

TEST(Checkpoint, InitFromRejectsAnotherModelNamingTheFirstDifference) {
  const fs::path dir = make_corpus("initfrom_bad", 4);
  const auto tok = make_tokenizer("bytes");
  const Corpus corpus = load_corpus(dir.string(), *tok);
  Trainer source(small_model(256, "moba"), small_train(), corpus, 5);
  const std::string path = (dir / "src.safetensors").string();
  source.save(path);
  ModelConfig wider = small_model(256, "moba");
  wider.d_ff = 96;
  Trainer w(wider, small_train(), corpus, 5);
  testing::expect_error([&] { w.init_from(path); }, "another model config (checkpoint vs config): d_ff: 64 vs 96");
  EXPECT_EQ(first_difference({{"a", {1, 2}}}, {{"a", {1, 3}}}), "a[1]: 2 vs 3");
  EXPECT_EQ(first_difference({{"a", 1}}, {{"a", 1}, {"b", true}}), "b: (absent) vs true");
  EXPECT_EQ(first_difference({{"a", 1.0}}, {{"a", 1.0}}), "");
}

// Continued training with another attention kind: the shared weights come from the checkpoint, a
// kind's own weights the checkpoint lacks stay as initialised, and the checkpoint's kind weights
// the model lacks are skipped.
TEST(Checkpoint, InitFromMaySwitchAttentionKinds) {
  const fs::path dir = make_corpus("initfrom_switch", 4);
  const auto tok = make_tokenizer("bytes");
  const Corpus corpus = load_corpus(dir.string(), *tok);
  Trainer source(small_model(256, "full"), small_train(), corpus, 5);
  source.step();
  const std::string path = (dir / "full.safetensors").string();
  source.save(path);
  Trainer nsa(small_model(256, "nsa"), small_train(), corpus, 7), fresh(small_model(256, "nsa"), small_train(), corpus, 7);
  nsa.init_from(path);
  std::map<std::string, const Param*> from_source;
  for (const Param& p : source.model().params()) from_source[p.name] = &p;
  int64_t kind_weights = 0;
  for (size_t i = 0; i < nsa.model().params().size(); ++i) {
    const Param& p = nsa.model().params()[i];
    const auto it = from_source.find(p.name);
    const Param& want = it != from_source.end() ? *it->second : fresh.model().params()[i];
    kind_weights += it == from_source.end();
    EXPECT_EQ(it == from_source.end(), p.name.find(".attention.nsa.") != std::string::npos) << p.name;
    ASSERT_EQ(std::memcmp(p.value.raw(), want.value.raw(), want.value.nbytes()), 0) << p.name;
  }
  EXPECT_GT(kind_weights, 0);
  // back: NSA's own weights in the file are skipped
  const std::string nsa_path = (dir / "nsa.safetensors").string();
  nsa.save(nsa_path);
  Trainer full(small_model(256, "full"), small_train(), corpus, 5);
  EXPECT_NO_THROW(full.init_from(nsa_path));
  // a file of the same kind still has to hold every weight of it
  std::vector<std::pair<std::string, const Tensor*>> some;
  const SafetensorsFile f = load_safetensors(nsa_path);
  for (const auto& [name, t] : f.tensors)
    if (name.find("layers.0.attention.nsa.") == std::string::npos) some.push_back({name, &t});
  const std::string partial = (dir / "nsa_partial.safetensors").string();
  save_safetensors(partial, some, f.metadata);
  Trainer again(small_model(256, "nsa"), small_train(), corpus, 7);
  testing::expect_error([&] { again.init_from(partial); }, "no tensor 'layers.0.attention.nsa.");
}

}  // namespace
}  // namespace longctx

namespace longctx {
namespace {

// PoSE: two chunks per sequence, the first at 0.., the second contiguous after a skip, every
// position inside the span, the same draw for the same seed, and skips that use the span.
TEST(Pose, PositionsAreTwoChunksInsideTheSpan) {
  Batch b;
  b.cu_seqlens = {0, 1, 65, 129, 129 + 40};
  b.tokens.assign(169, 0);
  int64_t highest = 0;
  for (uint64_t seed = 0; seed < 50; ++seed) {
    pose_positions(b, 256, seed);
    ASSERT_EQ(b.positions.size(), b.tokens.size());
    EXPECT_EQ(b.positions[0], 0) << "a one-token sequence keeps position 0";
    for (size_t s = 1; s + 1 < b.cu_seqlens.size(); ++s) {
      const int64_t begin = b.cu_seqlens[s], n = b.cu_seqlens[s + 1] - begin;
      int64_t jumps = 0;
      EXPECT_EQ(b.positions[size_t(begin)], 0);
      for (int64_t t = 1; t < n; ++t) {
        const int64_t step = b.positions[size_t(begin + t)] - b.positions[size_t(begin + t - 1)];
        EXPECT_GE(step, 1);
        jumps += step > 1;
      }
      EXPECT_LE(jumps, 1);
      EXPECT_LT(b.positions[size_t(begin + n - 1)], 256);
      highest = std::max(highest, b.positions[size_t(begin + n - 1)]);
    }
    const std::vector<int64_t> first = b.positions;
    pose_positions(b, 256, seed);
    EXPECT_EQ(b.positions, first);
  }
  EXPECT_GT(highest, 200) << "the skips reach into the span";
  pose_positions(b, 64, 1);  // span = the sequence's length: no room to skip (64-token sequences 1 and 2)
  for (size_t s = 1; s <= 2; ++s)
    for (int64_t t = b.cu_seqlens[s]; t < b.cu_seqlens[s + 1]; ++t)
      EXPECT_EQ(b.positions[size_t(t)], t - b.cu_seqlens[s]);
  testing::expect_error([&] { pose_positions(b, 63, 1); }, "a sequence of 64 tokens does not fit a span of 63");
}

TEST(Pose, TrainConfigChecksTheSpan) {
  nlohmann::json j = small_train().to_json();
  j["pose_span"] = 32;
  testing::expect_error([&] { TrainConfig::from_json(j); }, "pose_span must be 0 (off) or >= seq_len (64), got 32");
  j["pose_span"] = 512;
  const TrainConfig t = TrainConfig::from_json(j);
  EXPECT_EQ(t.pose_span, 512);
  EXPECT_EQ(TrainConfig::from_json(t.to_json()).pose_span, 512);
  const fs::path dir = make_corpus("pose", 4);
  const auto tok = make_tokenizer("bytes");
  testing::expect_error([&] { Trainer(small_model(256), t, load_corpus(dir.string(), *tok), 1); },
                        "pose_span (512) exceeds the model's max_seq_len (256)");
  j["pose_span"] = 256;
  Trainer trainer(small_model(256), TrainConfig::from_json(j), load_corpus(dir.string(), *tok), 1);
  const double first = trainer.step().loss;
  double last = first;
  for (int i = 0; i < 20; ++i) last = trainer.step().loss;
  EXPECT_TRUE(std::isfinite(last));
  EXPECT_LT(last, first) << "trains with skipped positions";
}

}  // namespace
}  // namespace longctx
