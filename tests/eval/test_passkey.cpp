// Passkey retrieval: the prompt builder (exact length, needle depth, determinism, bad input), the
// KV-cache greedy scorer against an argmax loop over full-sequence logits, the answer check, the
// grid, and loss + passkey beyond the training length for every attention kind.
#include <longctx/model/checkpoint.hpp>
#include <longctx/eval/eval.hpp>
#include <longctx/eval/passkey.hpp>
#include <longctx/train/trainer.hpp>
#include <sentencepiece_trainer.h>

#include "helpers.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

namespace longctx {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;

const char* kFiller =
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness "
    "was upon the face of the deep. And the Spirit of God moved upon the face of the waters. And God said, Let there "
    "be light: and there was light. And God saw the light, that it was good: and God divided the light from the "
    "darkness.\n";

std::string filler() { return passkey_filler({kFiller, kFiller}); }

// Where the needle sentence sits in the prompt text, and how long the needle and question are.
struct Layout {
  size_t needle, needle_len, question_len;
};
Layout layout_of(const PasskeyExample& ex) {
  const size_t n = ex.prompt.find(" The pass key is " + ex.key + ".");
  const std::string tail = ex.key + " is the pass key. ";
  const size_t end = ex.prompt.find(tail, n) + tail.size();
  const size_t q = ex.prompt.rfind(" What is the pass key? The pass key is");
  return {n, end - n, ex.prompt.size() - q};
}

TEST(Passkey, BytePromptHasExactLengthNeedleAtDepthAndTheKey) {
  const auto tok = make_tokenizer("bytes");
  const std::string f = filler();
  for (int64_t length : {120, 333, 1000})  // 1000 > the filler: it wraps around
    for (double depth : {0.0, 0.3, 0.5, 1.0}) {
      const PasskeyExample ex = make_passkey_example(f, *tok, length, depth, 7);
      ASSERT_EQ(int64_t(ex.prompt_tokens.size()), length);
      EXPECT_EQ(tok->decode(ex.prompt_tokens), ex.prompt);
      ASSERT_EQ(ex.key.size(), 5u);
      EXPECT_EQ(ex.answer, " " + ex.key);
      EXPECT_EQ(tok->decode(ex.answer_tokens), ex.answer);
      const Layout l = layout_of(ex);
      ASSERT_NE(l.needle, std::string::npos);
      EXPECT_EQ(int64_t(l.needle), ex.needle_token);
      const double n_filler = double(length) - double(l.needle_len + l.question_len);
      EXPECT_NEAR(double(l.needle), depth * n_filler, 1.0) << "length " << length << " depth " << depth;
      EXPECT_EQ(ex.prompt.substr(ex.prompt.size() - 15), "The pass key is");
      EXPECT_EQ(passkey_document(ex), ex.prompt + " " + ex.key + "\n");
    }
}

TEST(Passkey, DeterministicPerSeedAndVariedAcrossSeeds) {
  const auto tok = make_tokenizer("bytes");
  const std::string f = filler();
  const PasskeyExample a = make_passkey_example(f, *tok, 200, 0.5, 11), b = make_passkey_example(f, *tok, 200, 0.5, 11);
  EXPECT_EQ(a.prompt, b.prompt);
  EXPECT_EQ(a.key, b.key);
  std::set<std::string> keys, prompts;
  for (uint64_t s = 0; s < 20; ++s) {
    const PasskeyExample e = make_passkey_example(f, *tok, 200, 0.5, s);
    keys.insert(e.key);
    prompts.insert(e.prompt);
  }
  EXPECT_GE(keys.size(), 19u);
  EXPECT_GE(prompts.size(), 19u);  // filler offsets differ too
}

TEST(Passkey, BadInputIsRejected) {
  const auto tok = make_tokenizer("bytes");
  const std::string f = filler();
  expect_error([&] { make_passkey_example(f, *tok, 50, 0.5, 1); }, "length 50 is too short for the needle and the question");
  expect_error([&] { make_passkey_example(f, *tok, 200, 1.5, 1); }, "depth must be in [0, 1], got 1.5");
  expect_error([&] { make_passkey_example(f, *tok, 200, -0.1, 1); }, "depth must be in [0, 1]");
  expect_error([&] { make_passkey_example(f, *tok, 200, std::nan(""), 1); }, "depth must be in [0, 1]");
  expect_error([&] { make_passkey_example(" \n ", *tok, 200, 0.5, 1); }, "filler corpus is empty");
  expect_error([&] { passkey_filler({}); }, "filler corpus is empty");
  expect_error([&] { passkey_filler({"", "  \n"}); }, "filler corpus is empty");
}

TEST(Passkey, SentencePiecePromptHasExactLength) {
  const fs::path dir = fs::temp_directory_path() / "longctx_test_passkey_spm";
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "text.txt") << [] { std::string s; for (int i = 0; i < 30; ++i) s += kFiller; return s; }();
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + (dir / "text.txt").string() + " --model_prefix=" + (dir / "spm").string() +
      " --vocab_size=300 --model_type=bpe --byte_fallback=true --minloglevel=2");
  ASSERT_TRUE(status.ok()) << status.ToString();
  const auto tok = make_tokenizer("spm:" + (dir / "spm.model").string());
  const std::string f = filler();
  for (int64_t length : {100, 180, 400})
    for (double depth : {0.0, 0.5, 1.0}) {
      const PasskeyExample ex = make_passkey_example(f, *tok, length, depth, 3);
      ASSERT_EQ(int64_t(ex.prompt_tokens.size()), length) << "depth " << depth;
      EXPECT_EQ(tok->encode(ex.prompt), ex.prompt_tokens);
      EXPECT_NE(ex.prompt.find("The pass key is " + ex.key + ". Remember it."), std::string::npos);
      EXPECT_TRUE(passkey_correct(tok->decode(ex.answer_tokens), ex.key)) << tok->decode(ex.answer_tokens);
      // the needle's token position within a few tokens of its depth among the filler tokens
      const int64_t needle_tokens = int64_t(tok->encode(ex.prompt.substr(layout_of(ex).needle, layout_of(ex).needle_len)).size());
      const int64_t question_tokens = int64_t(tok->encode(" What is the pass key? The pass key is").size());
      EXPECT_NEAR(double(ex.needle_token), depth * double(length - needle_tokens - question_tokens), 3.0);
    }
}

TEST(Passkey, AnswerCheck) {
  for (const char* ok : {" 71432", "71432", " 71432\n", " 71432.", "\n71432 is"}) EXPECT_TRUE(passkey_correct(ok, "71432")) << ok;
  for (const char* bad : {" 7143", " 714321", " 71433", "", "   ", "x71432", " 17432", " 71 432"})
    EXPECT_FALSE(passkey_correct(bad, "71432")) << bad;
}

ModelConfig tiny(const std::string& kind, int64_t max_seq_len) {
  return ModelConfig::from_json({{"vocab_size", 256}, {"d_model", 32}, {"n_layers", 2}, {"n_heads", 4},
                                 {"n_kv_heads", 2}, {"d_ff", 64}, {"max_seq_len", max_seq_len},
                                 {"attention", testing::attention_json(kind, {{"block_size", 16}, {"top_k", 2}})}});
}

// The reference: recompute the logits of the whole sequence for every new token.
std::vector<int32_t> argmax_loop(Transformer& m, std::vector<int32_t> seq, int64_t n) {
  std::vector<int32_t> out;
  const int64_t V = m.config().vocab_size;
  for (int64_t i = 0; i < n; ++i) {
    Batch b;
    b.tokens = seq;
    b.cu_seqlens = {0, int64_t(seq.size())};
    const Tensor lg = m.logits(b);
    const float* last = lg.f32() + (int64_t(seq.size()) - 1) * V;
    int32_t best = 0;
    for (int32_t v = 1; v < V; ++v) best = last[v] > last[best] ? v : best;
    out.push_back(best);
    seq.push_back(best);
  }
  return out;
}

TEST(Passkey, GreedyOverTheKvCacheEqualsArgmaxOverFullLogits) {
  const auto tok = make_tokenizer("bytes");
  for (const char* kind : {"full", "moba", "topk"}) {
    Transformer m(tiny(kind, 256), 3);
    const PasskeyExample ex = make_passkey_example(filler(), *tok, 150, 0.4, 5);
    const std::vector<int32_t> want = argmax_loop(m, ex.prompt_tokens, 6);
    EXPECT_EQ(greedy_complete(m, ex.prompt_tokens, 6), want) << kind;
    EXPECT_EQ(greedy_complete(m, ex.prompt_tokens, 6, 37), want) << kind << " (chunked prefill)";
  }
}

TEST(Passkey, GridOrderProgressDeterminismAndNoFreeAnswers) {
  const auto tok = make_tokenizer("bytes");
  Transformer m(tiny("moba", 256), 1);
  PasskeyOptions o;
  o.lengths = {120, 160};
  o.depths = {0.0, 1.0};
  o.trials = 2;
  std::vector<int64_t> seen;
  o.progress = [&](int64_t done, int64_t total, const PasskeyCell&) {
    EXPECT_EQ(total, 4);
    seen.push_back(done);
  };
  const PasskeyGrid a = evaluate_passkey(m, *tok, filler(), o), b = evaluate_passkey(m, *tok, filler(), o);
  EXPECT_EQ(seen, (std::vector<int64_t>{1, 2, 3, 4, 1, 2, 3, 4}));
  ASSERT_EQ(a.cells.size(), 4u);
  EXPECT_EQ(a.cells[1].length, 120);
  EXPECT_EQ(a.cells[1].depth, 1.0);
  EXPECT_EQ(a.cells[2].length, 160);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(a.cells[i].sample, b.cells[i].sample);
    EXPECT_EQ(a.cells[i].sample.size(), 6u);  // " " + 5 digits worth of bytes
    EXPECT_EQ(a.cells[i].trials, 2);
  }
  EXPECT_EQ(a.accuracy, 0.0) << "an untrained model cannot know the key";
  o.lengths = {300};
  expect_error([&] { evaluate_passkey(m, *tok, filler(), o); }, "raise it with --max-seq-len");
  o.lengths = {120};
  o.depths = {2.0};
  expect_error([&] { evaluate_passkey(m, *tok, filler(), o); }, "depth must be in [0, 1], got 2");
}

// A checkpoint trained at 64 tokens, evaluated at 3x that: loss and passkey run for every kind.
TEST(Passkey, LossAndPasskeyBeyondTheTrainingLengthForEveryAttentionKind) {
  const fs::path dir = fs::temp_directory_path() / "longctx_test_passkey_long";
  fs::remove_all(dir);
  fs::create_directories(dir / "train");
  fs::create_directories(dir / "val");
  std::ofstream(dir / "train" / "a.txt") << filler();
  std::ofstream(dir / "val" / "a.txt") << filler() << filler();
  const auto tok = make_tokenizer("bytes");
  const Corpus corpus = load_corpus(dir.string(), *tok);
  for (const char* kind : {"full", "moba", "topk"}) {
    Trainer t(tiny(kind, 64), TrainConfig::from_json({{"seq_len", 64}, {"batch_tokens", 128}, {"steps", 2},
                                                      {"eval_tokens", 64}}),
              corpus, 2);
    t.step();
    const std::string path = (dir / (std::string(kind) + ".safetensors")).string();
    t.save(path);
    Transformer m = load_model(path, nullptr, 200);
    const EvalResult r = evaluate_positions(m, corpus.val, 192, 64, 1 << 20);
    EXPECT_TRUE(std::isfinite(r.loss)) << kind;
    EXPECT_EQ(r.buckets.size(), 3u);
    PasskeyOptions o;
    o.lengths = {190};
    o.depths = {0.5};
    o.trials = 1;
    const PasskeyGrid g = evaluate_passkey(m, *tok, filler(), o);
    ASSERT_EQ(g.cells.size(), 1u);
    EXPECT_EQ(g.cells[0].sample.size(), 6u) << kind;
    Transformer short_model = load_model(path);
    expect_error([&] { evaluate_passkey(short_model, *tok, filler(), o); }, "exceeds the model's max_seq_len 64");
  }
}

}  // namespace
}  // namespace longctx
