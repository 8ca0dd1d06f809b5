// Retrieval evaluation (eval/retrieval.hpp): the KV-cache greedy decoder against an argmax loop
// over full-sequence logits, the grid (order, progress, determinism, no free answers, bad input),
// exact and partial scoring through a model forced to say the answer, and loss + retrieval beyond
// the training length for every attention kind.
#include <longctx/model/checkpoint.hpp>
#include <longctx/eval/eval.hpp>
#include <longctx/eval/retrieval.hpp>
#include <longctx/train/trainer.hpp>

#include "helpers.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

namespace longctx {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;

const char* kFiller =
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness "
    "was upon the face of the deep. And the Spirit of God moved upon the face of the waters. And God said, Let there "
    "be light: and there was light. And God saw the light, that it was good: and God divided the light from the "
    "darkness.\n";

TaskFiller filler() { return TaskFiller({kFiller, kFiller}); }

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

TEST(Retrieval, GreedyOverTheKvCacheEqualsArgmaxOverFullLogits) {
  const auto tok = make_tokenizer("bytes");
  for (const char* kind : {"full", "moba", "topk"}) {
    Transformer m(tiny(kind, 256), 3);
    const TaskExample ex = make_task_example(TaskKind::passkey, filler(), *tok, 150, 0.4, 5);
    const std::vector<int32_t> want = argmax_loop(m, ex.prompt_tokens, 6);
    EXPECT_EQ(greedy_complete(m, ex.prompt_tokens, 6), want) << kind;
    EXPECT_EQ(greedy_complete(m, ex.prompt_tokens, 6, 37), want) << kind << " (chunked prefill)";
  }
}

TEST(Retrieval, GridOrderProgressDeterminismAndNoFreeAnswers) {
  const auto tok = make_tokenizer("bytes");
  Transformer m(tiny("moba", 256), 1);
  TaskGridOptions o;
  o.kinds = {TaskKind::passkey, TaskKind::vartrack};
  o.lengths = {240, 256};
  o.depths = {0.0, 1.0};
  o.trials = 2;
  std::vector<int64_t> seen;
  o.progress = [&](int64_t done, int64_t total, const TaskCell&) {
    EXPECT_EQ(total, 8);
    seen.push_back(done);
  };
  const TaskGrid a = evaluate_tasks(m, *tok, filler(), o), b = evaluate_tasks(m, *tok, filler(), o);
  EXPECT_EQ(seen, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8}));
  ASSERT_EQ(a.cells.size(), 8u);
  EXPECT_EQ(a.cells[1].kind, TaskKind::passkey);
  EXPECT_EQ(a.cells[1].length, 240);
  EXPECT_EQ(a.cells[1].depth, 1.0);
  EXPECT_EQ(a.cells[2].length, 256);
  EXPECT_EQ(a.cells[4].kind, TaskKind::vartrack);
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(a.cells[i].sample, b.cells[i].sample);
    EXPECT_EQ(a.cells[i].trials, 2);
  }
  EXPECT_EQ(a.cells[0].sample.size(), 6u);   // " " + 5 digits worth of bytes
  EXPECT_EQ(a.cells[4].sample.size(), 20u);  // four names of 4 letters, each after a space
  EXPECT_EQ(a.accuracy, 0.0) << "an untrained model cannot know the key";
  EXPECT_EQ(a.partial, 0.0);
  // a cell's examples do not depend on the rest of the grid
  o.progress = {};
  o.kinds = {TaskKind::vartrack};
  o.lengths = {256};
  o.depths = {0.0};
  EXPECT_EQ(evaluate_tasks(m, *tok, filler(), o).cells[0].sample, a.cells[6].sample);
  o.lengths = {300};
  expect_error([&] { evaluate_tasks(m, *tok, filler(), o); }, "raise it with --max-seq-len");
  o.lengths = {120};
  o.depths = {2.0};
  expect_error([&] { evaluate_tasks(m, *tok, filler(), o); }, "depth must be in [0, 1], got 2");
  o.depths = {0.5};
  expect_error([&] { evaluate_tasks(m, *tok, filler(), o); },
               "length 120 is too short for the vartrack task (its inserts, query and answer take");
}

// A one-layer model that ignores context: attention and FFN outputs are zero, the embeddings are
// one-hot and the head maps token t to next[t], so greedy decoding says next[last], next[next[last]], ...
Transformer bigram_model(const std::map<int32_t, int32_t>& next, int64_t max_seq_len) {
  Transformer m(ModelConfig::from_json({{"vocab_size", 256}, {"d_model", 256}, {"n_layers", 1}, {"n_heads", 2},
                                        {"d_ff", 8}, {"max_seq_len", max_seq_len}, {"tie_embeddings", false},
                                        {"attention", {{"kind", "full"}}}}),
                1);
  m.param("layers.0.attention.wo").value.fill(0.0f);
  m.param("layers.0.feed_forward.w2").value.fill(0.0f);
  Tensor& emb = m.param("tok_embeddings.weight").value;
  Tensor& head = m.param("output.weight").value;
  emb.fill(0.0f);
  head.fill(0.0f);
  for (int64_t t = 0; t < 256; ++t) emb.f32()[t * 256 + t] = 1.0f;
  for (const auto& [from, to] : next) head.f32()[int64_t(to) * 256 + from] = 1.0f;
  return m;
}

// The bigram chain that says `answer` after a prompt ending in `last`, if no byte repeats in it.
std::optional<std::map<int32_t, int32_t>> chain_for(char last, const std::string& answer) {
  std::map<int32_t, int32_t> next;
  int32_t from = static_cast<unsigned char>(last);
  for (char c : answer) {
    if (next.count(from)) return std::nullopt;
    next[from] = static_cast<unsigned char>(c);
    from = static_cast<unsigned char>(c);
  }
  return next;
}

TEST(Retrieval, AModelThatSaysTheAnswerScoresExactAndPartialCredit) {
  const auto tok = make_tokenizer("bytes");
  for (TaskKind kind : {TaskKind::passkey, TaskKind::kvrecall, TaskKind::copy, TaskKind::multivalue}) {
    TaskGridOptions o;
    o.kinds = {kind};
    o.lengths = {400};
    o.depths = {0.3};
    o.trials = 1;
    // a grid seed whose example can be said by a bigram model: the answer's bytes do not repeat
    // (multivalue: its first value only, then the model stops making sense)
    std::optional<std::map<int32_t, int32_t>> next;
    for (o.seed = 1; !next; ++o.seed) {
      const TaskPrompt t = make_task_prompt(kind, 0.3, task_trial_seed(o.seed, kind, 400, 0, 0));
      next = chain_for(t.query.back(), kind == TaskKind::multivalue ? " " + t.items[0] + "," : t.answer);
    }
    --o.seed;
    Transformer m = bigram_model(*next, 512);
    const TaskGrid g = evaluate_tasks(m, *tok, filler(), o);
    ASSERT_EQ(g.cells.size(), 1u);
    const TaskPrompt t = make_task_prompt(kind, 0.3, task_trial_seed(o.seed, kind, 400, 0, 0));
    if (kind == TaskKind::multivalue) {
      EXPECT_EQ(g.cells[0].sample.substr(0, 7), " " + t.items[0] + ",") << "the first value, then nonsense";
      EXPECT_EQ(g.cells[0].correct, 0);
      EXPECT_EQ(g.cells[0].partial, 0.25) << "one of four values";
      EXPECT_EQ(g.partial, 0.25);
    } else {
      EXPECT_EQ(g.cells[0].sample, t.answer) << enum_name(kind);
      EXPECT_EQ(g.cells[0].correct, 1) << enum_name(kind);
      EXPECT_EQ(g.cells[0].accuracy, 1.0);
      EXPECT_EQ(g.cells[0].partial, 1.0);
      EXPECT_EQ(g.accuracy, 1.0);
      // one wrong last character and the answer is wrong
      std::map<int32_t, int32_t> off = *next;
      off[static_cast<unsigned char>(t.answer[t.answer.size() - 2])] = '#';
      Transformer wrong = bigram_model(off, 512);
      EXPECT_EQ(evaluate_tasks(wrong, *tok, filler(), o).accuracy, 0.0) << enum_name(kind);
    }
  }
}

// A checkpoint trained at 64 tokens, evaluated at 3x that: loss and retrieval run for every kind.
TEST(Retrieval, LossAndRetrievalBeyondTheTrainingLengthForEveryAttentionKind) {
  const fs::path dir = fs::temp_directory_path() / "longctx_test_retrieval_long";
  fs::remove_all(dir);
  fs::create_directories(dir / "train");
  fs::create_directories(dir / "val");
  std::ofstream(dir / "train" / "a.txt") << kFiller << kFiller;
  std::ofstream(dir / "val" / "a.txt") << kFiller << kFiller << kFiller << kFiller;
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
    TaskGridOptions o;
    o.kinds = {TaskKind::passkey, TaskKind::copy};
    o.lengths = {190};
    o.depths = {0.5};
    o.trials = 1;
    const TaskGrid g = evaluate_tasks(m, *tok, filler(), o);
    ASSERT_EQ(g.cells.size(), 2u);
    EXPECT_EQ(g.cells[0].sample.size(), 6u) << kind;
    EXPECT_EQ(g.cells[1].sample.size(), 11u) << kind;
    Transformer short_model = load_model(path);
    expect_error([&] { evaluate_tasks(short_model, *tok, filler(), o); }, "exceeds the model's max_seq_len 64");
  }
}

}  // namespace
}  // namespace longctx
