// The synthetic retrieval tasks (text/tasks.hpp): filler units, every task's format, exact token
// length, needles and query at line/sentence boundaries near their depths, the answer present and
// scored, determinism, SentencePiece, bad input; and their mix into training batches
// (text/task_mix.hpp): the fraction, answer-only scoring and answer weights, the curriculum,
// determinism, the config.
#include <longctx/text/task_mix.hpp>
#include <sentencepiece_trainer.h>

#include "helpers.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

namespace longctx {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;

// KJV-like filler: numbered verses wrapped at 80 columns (line boundaries inside sentences, and
// sentence boundaries inside lines).
const char* kVerses =
    "  1 In the beginning God created the heaven and the earth.\n"
    "  2 And the earth was without form, and void; and darkness was upon the face of\n"
    "the deep. And the Spirit of God moved upon the face of the waters.\n"
    "  3 And God said, Let there be light: and there was light.\n"
    "  4 And God saw the light, that it was good: and God divided the light from the\n"
    "darkness.\n"
    "  5 And God called the light Day, and the darkness he called Night. And the\n"
    "evening and the morning were the first day.\n";

TaskFiller verse_filler() { return TaskFiller({kVerses, kVerses}); }

bool sentence_end(char c) { return c == '.' || c == '!' || c == '?'; }

// Position p of filler text t is a unit boundary: its start or end, after a newline, or after a
// sentence end and its spaces.
bool at_boundary(const std::string& t, size_t p) {
  if (p == 0 || p == t.size() || t[p - 1] == '\n') return true;
  size_t q = p;
  while (q > 0 && t[q - 1] == ' ') --q;
  return q < p && q > 0 && sentence_end(t[q - 1]);
}

// Checks an example made with the byte tokenizer; returns the filler text with the inserts and the
// query taken out.
std::string check_byte_example(const TaskExample& ex, int64_t length, const std::string& source) {
  const auto tok = make_tokenizer("bytes");
  EXPECT_EQ(int64_t(ex.prompt_tokens.size()), length);
  EXPECT_EQ(tok->decode(ex.prompt_tokens), ex.prompt);
  EXPECT_EQ(tok->decode(ex.answer_tokens), ex.task.answer);
  EXPECT_TRUE(score_answer(ex.task, ex.task.answer).exact) << ex.task.answer;
  EXPECT_EQ(ex.prompt.substr(ex.prompt.size() - ex.task.query.size()), ex.task.query);
  EXPECT_EQ(ex.insert_tokens.size(), ex.task.inserts.size());
  int64_t fixed = int64_t(ex.task.query.size());
  for (const auto& in : ex.task.inserts) fixed += int64_t(in.text.size());
  const double n_filler = double(length - fixed);
  std::string filler;  // the prompt without inserts and query
  size_t at = 0;
  for (size_t i = 0; i < ex.task.inserts.size(); ++i) {
    const std::string& text = ex.task.inserts[i].text;
    const size_t pos = size_t(ex.insert_tokens[i]);
    EXPECT_EQ(text.back(), '\n') << "an insert is a whole line";
    EXPECT_EQ(ex.prompt.substr(pos, text.size()), text) << "insert " << i;
    filler += ex.prompt.substr(at, pos - at);
    at = pos + text.size();
    EXPECT_TRUE(at_boundary(filler, filler.size()) || filler.size() == 0)
        << "insert " << i << " cuts the filler: ..." << filler.substr(filler.size() - std::min<size_t>(20, filler.size()));
    // within one line (at most 80 bytes here) of its depth among the filler tokens
    EXPECT_LE(std::abs(double(filler.size()) - ex.task.inserts[i].depth * n_filler), 80.0) << "insert " << i;
  }
  filler += ex.prompt.substr(at, ex.prompt.size() - ex.task.query.size() - at);
  EXPECT_EQ(int64_t(filler.size()), int64_t(n_filler));
  EXPECT_TRUE(at_boundary(filler, filler.size())) << "the query follows a unit boundary";
  // the filler is the source text from some point on (cyclically)
  const std::string twice = source + source + source;
  EXPECT_NE(twice.find(filler.substr(0, std::min<size_t>(filler.size(), source.size()))), std::string::npos);
  for (const std::string& item : ex.task.items) EXPECT_NE(ex.prompt.find(item), std::string::npos) << item;
  return filler;
}

TEST(TaskFiller, UnitsAreLinesAndSentencesAndLongRunsAreCutAtSpaces) {
  const TaskFiller f({"Hello there. How are you?\nFine!  ok", "e.g.x"});
  ASSERT_EQ(f.units(), 5u);
  EXPECT_EQ(f.unit(0), "Hello there. ");
  EXPECT_EQ(f.unit(1), "How are you?\n");
  EXPECT_EQ(f.unit(2), "Fine!  ");
  EXPECT_EQ(f.unit(3), "ok\n");
  EXPECT_EQ(f.unit(4), "e.g.x\n");  // a period without a space ends nothing; the text gets a final newline
  EXPECT_EQ(f.unit_at(0), 0u);
  EXPECT_EQ(f.unit_at(1), 1u);
  EXPECT_EQ(f.unit_at(f.chars() - 1), 0u);  // past the last start: wraps around
  std::string words;
  for (int i = 0; i < 120; ++i) words += "word ";
  const TaskFiller w({words});
  for (size_t i = 0; i < w.units(); ++i) {
    EXPECT_LE(w.unit(i).size(), TaskFiller::kMaxUnitChars);
    EXPECT_TRUE(w.unit(i).back() == ' ' || w.unit(i).back() == '\n') << "cut after a space";
  }
  std::string accents;  // no space at all: cut at a UTF-8 character start
  for (int i = 0; i < 300; ++i) accents += "\xC3\xA9";
  const TaskFiller a({accents});
  ASSERT_GE(a.units(), 3u);
  for (size_t i = 1; i < a.units(); ++i) EXPECT_EQ(a.unit(i)[0], '\xC3');
  expect_error([] { TaskFiller({" \n", "\t"}); }, "filler text is empty");
  expect_error([] { TaskFiller(std::vector<std::string>{}); }, "filler text is empty");
}

TEST(Tasks, EveryTaskHasExactLengthBoundariesDepthsAndItsAnswer) {
  const auto tok = make_tokenizer("bytes");
  const TaskFiller f = verse_filler();
  const std::string source = std::string(kVerses) + "\n" + kVerses;  // the filler, cyclically
  for (TaskKind kind : all_task_kinds())
    for (int64_t length : {400, 777, 2000})  // 2000 > the filler: it wraps around
      for (double depth : {0.0, 0.3, 0.5, 1.0}) {
        SCOPED_TRACE(::testing::Message() << enum_name(kind) << " length " << length << " depth " << depth);
        const TaskExample ex = make_task_example(kind, f, *tok, length, depth, 7 + uint64_t(length));
        check_byte_example(ex, length, source);
      }
}

TEST(Tasks, FormatsOfEachTask) {
  const auto tok = make_tokenizer("bytes");
  const TaskFiller f = verse_filler();
  const auto example = [&](TaskKind k) { return make_task_example(k, f, *tok, 1500, 0.4, 3); };
  {
    const TaskExample ex = example(TaskKind::passkey);
    const std::string key = ex.task.items.at(0);
    EXPECT_TRUE(std::regex_match(key, std::regex(R"(\d{5})")));
    EXPECT_EQ(ex.task.inserts.at(0).text, "The pass key is " + key + ". Remember it. " + key + " is the pass key.\n");
    EXPECT_EQ(ex.task.query, "What is the pass key? The pass key is");
    EXPECT_EQ(ex.task.answer, " " + key);
  }
  {
    const TaskExample ex = example(TaskKind::multikey);
    ASSERT_EQ(ex.task.inserts.size(), 4u);
    const std::regex re(R"(The pass key of ([a-z]+) is (\d{5})\. Remember it\.\n)");
    std::set<std::string> labels, keys;
    std::smatch m;
    std::string asked_key;
    for (const auto& in : ex.task.inserts) {
      ASSERT_TRUE(std::regex_match(in.text, m, re)) << in.text;
      labels.insert(m[1]);
      keys.insert(m[2]);
      if (ex.task.query == "What is the pass key of " + std::string(m[1]) + "? The pass key of " + std::string(m[1]) + " is")
        asked_key = m[2];
    }
    EXPECT_EQ(labels.size(), 4u) << "distractors have other labels";
    EXPECT_EQ(keys.size(), 4u);
    EXPECT_EQ(asked_key, ex.task.items.at(0)) << ex.task.query;
  }
  {
    const TaskExample ex = example(TaskKind::multivalue);
    ASSERT_EQ(ex.task.inserts.size(), 4u);
    ASSERT_EQ(ex.task.items.size(), 4u);
    for (size_t i = 0; i < 4; ++i) EXPECT_NE(ex.task.inserts[i].text.find(ex.task.items[i] + ".\n"), std::string::npos);
    EXPECT_EQ(ex.task.answer, " " + ex.task.items[0] + ", " + ex.task.items[1] + ", " + ex.task.items[2] + ", " +
                                  ex.task.items[3]) << "in the order they appear";
    EXPECT_TRUE(std::regex_match(ex.task.query, std::regex("What are all the pass keys of [a-z]+\\? The pass keys of [a-z]+ are")));
  }
  {
    const TaskExample ex = example(TaskKind::vartrack);
    ASSERT_EQ(ex.task.inserts.size(), 8u);
    ASSERT_EQ(ex.task.items.size(), 4u);
    std::smatch m;
    ASSERT_TRUE(std::regex_match(ex.task.query, m, std::regex(R"(Which variables hold the value (\d{5})\? They are)")));
    const std::string value = m[1];
    // follow the chain from the value through the prompt, in document order
    std::vector<std::string> chain;
    for (size_t i = 0; i < 8; ++i) {
      const std::string& text = ex.task.inserts[i].text;
      if (text == "VAR " + ex.task.items[0] + " = " + value + ".\n") chain.push_back(ex.task.items[0]);
      else if (!chain.empty() && std::regex_match(text, m, std::regex(R"(VAR ([A-Z]{4}) = VAR ([A-Z]{4})\.\n)")) &&
               m[2] == chain.back())
        chain.push_back(m[1]);
    }
    EXPECT_EQ(chain, ex.task.items) << "each link after the one it copies";
    EXPECT_EQ(ex.task.answer, " " + chain[0] + " " + chain[1] + " " + chain[2] + " " + chain[3]);
    EXPECT_NE(ex.prompt.find(" = " + value + "."), std::string::npos);
    EXPECT_EQ(std::regex_search(ex.prompt, std::regex(R"(VAR [A-Z]{4} = \d{5}\.)")), true);
  }
  {
    const TaskExample ex = example(TaskKind::kvrecall);
    ASSERT_EQ(ex.task.inserts.size(), 1u);
    std::smatch m;
    ASSERT_TRUE(std::regex_match(ex.task.query, m, std::regex(R"(What is the value of ([a-z]{4})\? The value of \1 is)")));
    EXPECT_NE(ex.task.inserts[0].text.find(std::string(m[1]) + " " + ex.task.items.at(0)), std::string::npos);
    EXPECT_TRUE(std::regex_match(ex.task.inserts[0].text,
                                 std::regex(R"(Table of values: ([a-z]{4} \d{5}; ){5}[a-z]{4} \d{5}\.\n)")));
  }
  {
    const TaskExample ex = example(TaskKind::copy);
    EXPECT_TRUE(std::regex_match(ex.task.items.at(0), std::regex("[a-z]{4}_[a-z]{5}")));
    EXPECT_EQ(ex.task.inserts.at(0).text, "static int " + ex.task.items[0] + "(void);\n");
    EXPECT_EQ(ex.task.answer, " " + ex.task.items[0]);
  }
}

TEST(Tasks, DeterministicPerSeedAndVariedAcrossSeeds) {
  const auto tok = make_tokenizer("bytes");
  const TaskFiller f = verse_filler();
  for (TaskKind kind : all_task_kinds()) {
    const TaskExample a = make_task_example(kind, f, *tok, 600, 0.5, 11), b = make_task_example(kind, f, *tok, 600, 0.5, 11);
    EXPECT_EQ(a.prompt_tokens, b.prompt_tokens);
    EXPECT_EQ(a.task.answer, b.task.answer);
    std::set<std::string> answers, prompts;
    for (uint64_t s = 0; s < 20; ++s) {
      const TaskExample e = make_task_example(kind, f, *tok, 600, 0.5, s);
      answers.insert(e.task.answer);
      prompts.insert(e.prompt);
    }
    EXPECT_GE(answers.size(), 19u) << enum_name(kind);
    EXPECT_GE(prompts.size(), 19u) << enum_name(kind);
  }
}

TEST(Tasks, DocumentsHaveExactLengthAndEndWithTheAnswer) {
  const auto tok = make_tokenizer("bytes");
  const TaskFiller f = verse_filler();
  for (TaskKind kind : all_task_kinds()) {
    const auto doc = make_task_document(kind, f, *tok, 513, 0.5, 4);
    ASSERT_TRUE(doc.has_value()) << enum_name(kind);
    ASSERT_EQ(doc->tokens.size(), 513u);
    const TaskPrompt task = make_task_prompt(kind, 0.5, 4);
    const std::vector<int32_t> tail(doc->tokens.begin() + doc->answer_begin, doc->tokens.end());
    EXPECT_EQ(tok->decode(tail), task.answer + "\n");
    EXPECT_EQ(tok->decode({doc->tokens.begin(), doc->tokens.begin() + doc->answer_begin}).substr(
                  size_t(doc->answer_begin) - task.query.size()),
              task.query);
    EXPECT_FALSE(make_task_document(kind, f, *tok, task_fixed_tokens(task, *tok) + int64_t(task.answer.size()), 0.5, 4))
        << "one token short of the answer's newline";
    EXPECT_TRUE(make_task_document(kind, f, *tok, task_fixed_tokens(task, *tok) + int64_t(task.answer.size()) + 1, 0.5, 4))
        << "no filler at all still fits";
  }
}

TEST(Tasks, AnswerScoring) {
  TaskPrompt one{TaskKind::passkey, {}, "", " 71432", {"71432"}};
  for (const char* ok : {" 71432", "71432", " 71432\n", " 71432.", "\n71432 is"})
    EXPECT_TRUE(score_answer(one, ok).exact) << ok;
  for (const char* bad : {" 7143", " 714321", " 71433", "", "   ", "x71432", " 17432", " 71 432", " 71432a", " 71432_"}) {
    EXPECT_FALSE(score_answer(one, bad).exact) << bad;
    EXPECT_EQ(score_answer(one, bad).partial, 0.0) << bad;
  }
  TaskPrompt many{TaskKind::vartrack, {}, "", " ABCD EFGH IJKL MNOP", {"ABCD", "EFGH", "IJKL", "MNOP"}};
  EXPECT_TRUE(score_answer(many, " ABCD EFGH IJKL MNOP").exact);
  EXPECT_TRUE(score_answer(many, "MNOP, IJKL; EFGH ABCD").exact) << "any order";
  EXPECT_EQ(score_answer(many, " ABCD EFGH IJ").partial, 0.5);
  EXPECT_FALSE(score_answer(many, " ABCD EFGH IJ").exact);
  EXPECT_EQ(score_answer(many, " ABCDE FGH").partial, 0.0) << "whole words only";
  EXPECT_EQ(score_answer(many, " MNOP").partial, 0.25);
}

TEST(Tasks, BadInputIsRejected) {
  const auto tok = make_tokenizer("bytes");
  const TaskFiller f = verse_filler();
  expect_error([&] { make_task_example(TaskKind::passkey, f, *tok, 90, 0.5, 1); },
               "length 90 is too short for the passkey task's inserts and query (96 tokens)");
  expect_error([&] { make_task_example(TaskKind::vartrack, f, *tok, 300, 1.5, 1); }, "depth must be in [0, 1], got 1.5");
  expect_error([&] { make_task_prompt(TaskKind::copy, -0.1, 1); }, "depth must be in [0, 1]");
  expect_error([&] { make_task_prompt(TaskKind::copy, std::nan(""), 1); }, "depth must be in [0, 1]");
}

TEST(Tasks, SentencePieceExamplesHaveExactLengthAndTheirAnswer) {
  const fs::path dir = fs::temp_directory_path() / "longctx_test_tasks_spm";
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "text.txt") << [] { std::string s; for (int i = 0; i < 30; ++i) s += kVerses; return s; }();
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + (dir / "text.txt").string() + " --model_prefix=" + (dir / "spm").string() +
      " --vocab_size=300 --model_type=bpe --byte_fallback=true --split_digits=true --minloglevel=2");
  ASSERT_TRUE(status.ok()) << status.ToString();
  const auto tok = make_tokenizer("spm:" + (dir / "spm.model").string());
  const TaskFiller f = verse_filler();
  for (TaskKind kind : all_task_kinds())
    for (int64_t length : {300, 640})
      for (double depth : {0.0, 0.5, 1.0}) {
        SCOPED_TRACE(::testing::Message() << enum_name(kind) << " length " << length << " depth " << depth);
        const TaskExample ex = make_task_example(kind, f, *tok, length, depth, 3);
        ASSERT_EQ(int64_t(ex.prompt_tokens.size()), length);
        for (size_t i = 0; i < ex.task.inserts.size(); ++i) {
          const std::vector<int32_t> ins = tok->encode(ex.task.inserts[i].text);
          const auto at = ex.prompt_tokens.begin() + ex.insert_tokens[i];
          EXPECT_TRUE(std::equal(ins.begin(), ins.end(), at)) << "insert " << i;
        }
        EXPECT_TRUE(score_answer(ex.task, tok->decode(ex.answer_tokens)).exact) << tok->decode(ex.answer_tokens);
        EXPECT_NE(ex.prompt.find(ex.task.items[0]), std::string::npos);
        // the insert sits at a unit boundary: the whole filler unit before it is intact
        EXPECT_NE(ex.prompt.find(ex.task.query), std::string::npos);
      }
  const auto doc = make_task_document(TaskKind::multivalue, f, *tok, 500, 0.2, 9);
  ASSERT_TRUE(doc.has_value());
  EXPECT_EQ(doc->tokens.size(), 500u);
  // mixed into batches: the scored targets of each task document are its answer
  const std::vector<std::vector<int32_t>> docs{tok->encode(std::string(kVerses) + kVerses)};
  const TaskMix mix = TaskMix::from_json({{"fraction", 1.0}, {"kinds", {"passkey", "copy"}}, {"score", "answer"}}, 160);
  const Batch b = mixed_batch(WindowSampler(docs), f, *tok, mix, 160, 640, 2, 0, 0);
  ASSERT_EQ(b.cu_seqlens, (std::vector<int64_t>{0, 160, 320, 480, 640}));
  for (size_t s = 0; s + 1 < b.cu_seqlens.size(); ++s) {
    std::vector<int32_t> scored;
    for (int64_t t = b.cu_seqlens[s]; t < b.cu_seqlens[s + 1]; ++t)
      if (b.targets[size_t(t)] >= 0) scored.push_back(b.targets[size_t(t)]);
    const std::string answer = tok->decode(scored), text = tok->decode({b.tokens.begin() + b.cu_seqlens[s],
                                                                          b.tokens.begin() + b.cu_seqlens[s + 1]});
    EXPECT_TRUE(std::regex_match(answer, std::regex(R"( ?(\d{5}|[a-z]{4}_[a-z]{5}))"))) << answer;
    EXPECT_NE(text.find(answer.substr(answer.find_first_not_of(' '))), std::string::npos) << "the answer is in the document";
  }
}

// ---- the training mix ------------------------------------------------------------------------

std::vector<std::vector<int32_t>> real_docs() {  // text without any task's words
  const auto tok = make_tokenizer("bytes");
  std::string s;
  for (int i = 0; i < 60; ++i) s += "and darkness was upon the face of the deep; ";
  return {tok->encode(s), tok->encode(s + "and the evening")};
}

TaskMix mix_of(const nlohmann::json& j, int64_t seq_len) { return TaskMix::from_json(j, seq_len); }

// The sequences of a batch as text.
std::vector<std::string> sequences(const Batch& b) {
  const auto tok = make_tokenizer("bytes");
  std::vector<std::string> out;
  for (size_t s = 0; s + 1 < b.cu_seqlens.size(); ++s)
    out.push_back(tok->decode({b.tokens.begin() + b.cu_seqlens[s], b.tokens.begin() + b.cu_seqlens[s + 1]}));
  return out;
}

TEST(TaskMix, FractionOfSequencesIsHonouredAndBatchesAreDeterministic) {
  const auto tok = make_tokenizer("bytes");
  const auto docs = real_docs();
  const WindowSampler windows(docs);
  const TaskFiller f = verse_filler();
  const TaskMix mix = mix_of({{"fraction", 0.25}, {"kinds", {"passkey"}}}, 128);
  int64_t tasks = 0, total = 0;
  for (uint64_t i = 0; i < 200; ++i) {
    const Batch b = mixed_batch(windows, f, *tok, mix, 128, 512, 3, i, 0);
    ASSERT_EQ(b.size(), 512);
    EXPECT_TRUE(b.weights.empty());
    for (const std::string& s : sequences(b)) {
      ++total;
      tasks += s.find("The pass key is") != std::string::npos;
    }
  }
  EXPECT_GE(total, 800) << "4 sequences of 128 per batch, more where a real window meets its document's end";
  EXPECT_NEAR(double(tasks) / double(total), 0.25, 0.05);
  const Batch a = mixed_batch(windows, f, *tok, mix, 128, 512, 3, 7, 0), b = mixed_batch(windows, f, *tok, mix, 128, 512, 3, 7, 0);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.targets, b.targets);
  EXPECT_EQ(a.cu_seqlens, b.cu_seqlens);
  EXPECT_NE(mixed_batch(windows, f, *tok, mix, 128, 512, 4, 7, 0).tokens, a.tokens) << "another seed";
  const TaskMix none = mix_of({{"fraction", 0.0}}, 128);
  for (const std::string& s : sequences(mixed_batch(windows, f, *tok, none, 128, 512, 3, 1, 0)))
    EXPECT_EQ(s.find("pass key"), std::string::npos);
}

TEST(TaskMix, AnswerOnlyScoringAndAnswerWeights) {
  const auto tok = make_tokenizer("bytes");
  const auto docs = real_docs();
  const WindowSampler windows(docs);
  const TaskFiller f = verse_filler();
  const TaskMix only = mix_of({{"fraction", 1.0}, {"kinds", {"passkey", "kvrecall"}}, {"score", "answer"}}, 200);
  const Batch b = mixed_batch(windows, f, *tok, only, 200, 800, 5, 0, 0);
  ASSERT_EQ(b.cu_seqlens.size(), 5u);
  for (size_t s = 0; s + 1 < b.cu_seqlens.size(); ++s) {
    std::vector<int32_t> scored;
    for (int64_t t = b.cu_seqlens[s]; t < b.cu_seqlens[s + 1]; ++t)
      if (b.targets[size_t(t)] >= 0) scored.push_back(b.targets[size_t(t)]);
    const std::string answer = tok->decode(scored);
    ASSERT_TRUE(std::regex_match(answer, std::regex(R"( \d{5}\n)"))) << answer;
    EXPECT_NE(sequences(b)[s].find(answer.substr(1, 5)), std::string::npos) << "the answer is in the document";
  }
  const TaskMix weighted = mix_of({{"fraction", 0.5}, {"kinds", {"copy"}}, {"answer_weight", 4.0}}, 128);
  for (uint64_t i = 0; i < 4; ++i) {
    const Batch w = mixed_batch(windows, f, *tok, weighted, 128, 512, 5, i, 0);
    ASSERT_EQ(w.weights.size(), w.tokens.size());
    const std::vector<std::string> seqs = sequences(w);
    for (size_t s = 0; s + 1 < w.cu_seqlens.size(); ++s) {
      std::vector<int32_t> heavy;
      for (int64_t t = w.cu_seqlens[s]; t < w.cu_seqlens[s + 1]; ++t) {
        EXPECT_GE(w.targets[size_t(t)], 0) << "score all: every target counts";
        EXPECT_TRUE(w.weights[size_t(t)] == 1.0f || w.weights[size_t(t)] == 4.0f);
        if (w.weights[size_t(t)] == 4.0f) heavy.push_back(w.targets[size_t(t)]);
      }
      if (seqs[s].find("static int") != std::string::npos)
        EXPECT_TRUE(std::regex_match(tok->decode(heavy), std::regex(R"( [a-z]{4}_[a-z]{5}\n)"))) << tok->decode(heavy);
      else
        EXPECT_TRUE(heavy.empty()) << "real text weighs 1";
    }
  }
}

TEST(TaskMix, CurriculumGrowsTheTaskLength) {
  const auto tok = make_tokenizer("bytes");
  const auto docs = real_docs();
  const WindowSampler windows(docs);
  const TaskFiller f = verse_filler();
  const TaskMix mix = mix_of({{"fraction", 1.0}, {"kinds", {"passkey"}}, {"min_length", 120}, {"max_length", 400},
                              {"curriculum_steps", 100}}, 400);
  EXPECT_EQ(mix.max_length_at(0), 120);
  EXPECT_EQ(mix.max_length_at(50), 260);
  EXPECT_EQ(mix.max_length_at(100), 400);
  EXPECT_EQ(mix.max_length_at(1000), 400);
  int64_t longest0 = 0, longest100 = 0;
  for (uint64_t i = 0; i < 20; ++i) {
    for (const std::string& s : sequences(mixed_batch(windows, f, *tok, mix, 400, 1600, 2, i, 0)))
      if (s.find("pass key") != std::string::npos) longest0 = std::max(longest0, int64_t(s.size()));
    for (const std::string& s : sequences(mixed_batch(windows, f, *tok, mix, 400, 1600, 2, i, 100)))
      if (s.find("pass key") != std::string::npos) longest100 = std::max(longest100, int64_t(s.size()));
  }
  EXPECT_EQ(longest0, 120);
  EXPECT_GT(longest100, 350);
}

TEST(TaskMix, ConfigDefaultsRoundTripAndErrors) {
  const TaskMix d = mix_of({{"fraction", 0.5}}, 256);
  EXPECT_EQ(d.kinds.size(), all_task_kinds().size());
  EXPECT_EQ(d.min_length, 256);
  EXPECT_EQ(d.max_length, 256);
  EXPECT_EQ(d.score, TaskScoring::all);
  const TaskMix w = mix_of({{"fraction", 0.3}, {"kinds", {{"passkey", 2.0}, {"vartrack", 1}}}, {"min_length", 100},
                            {"curriculum_steps", 10}, {"score", "answer"}, {"answer_weight", 3.0}, {"eval_docs", 2}}, 256);
  ASSERT_EQ(w.kinds.size(), 2u);
  EXPECT_EQ(w.kinds[0], (std::pair<TaskKind, double>{TaskKind::passkey, 2.0}));
  EXPECT_EQ(TaskMix::from_json(w.to_json(), 256).to_json(), w.to_json());
  expect_error([] { mix_of({{"fractoin", 0.5}}, 64); }, "unknown field 'fractoin'");
  expect_error([] { mix_of({{"fraction", 1.5}}, 64); }, "fraction must be in [0, 1], got 1.5");
  expect_error([] { mix_of({{"fraction", 0.5}, {"kinds", {"passkey", "needle"}}}, 64); },
               "tasks.kinds must be 'passkey', 'multikey', 'multivalue', 'vartrack', 'kvrecall' or 'copy', got 'needle'");
  expect_error([] { mix_of({{"fraction", 0.5}, {"kinds", {"copy", "copy"}}}, 64); }, "names 'copy' twice");
  expect_error([] { mix_of({{"fraction", 0.5}, {"kinds", {{"copy", 0}}}}, 64); }, "the weight of copy must be > 0");
  expect_error([] { mix_of({{"fraction", 0.5}, {"kinds", nlohmann::json::array()}}, 64); }, "at least one task");
  expect_error([] { mix_of({{"fraction", 0.5}, {"max_length", 65}}, 64); }, "max_length <= seq_len = 64");
  expect_error([] { mix_of({{"fraction", 0.5}, {"min_length", 40}, {"max_length", 30}}, 64); }, "min_length <= max_length");
  expect_error([] { mix_of({{"fraction", 0.5}, {"score", "some"}}, 64); }, "tasks.score must be 'all' or 'answer'");
  expect_error([] { mix_of({{"fraction", 0.5}, {"answer_weight", 0.0}}, 64); }, "answer_weight must be > 0");
  expect_error([] { mix_of({{"fraction", 0.5}, {"curriculum_steps", -1}}, 64); }, "curriculum_steps must be >= 0");
}

TEST(TaskMix, EvalBatchesScoreOnlyAnswers) {
  const auto tok = make_tokenizer("bytes");
  const TaskFiller f = verse_filler();
  const TaskMix mix = mix_of({{"fraction", 0.5}, {"kinds", {"passkey", "multivalue"}}, {"eval_docs", 3}}, 300);
  const std::vector<TaskEvalSet> sets = task_eval_batches(f, *tok, mix, 600, 1);
  ASSERT_EQ(sets.size(), 2u);
  EXPECT_EQ(sets[1].kind, TaskKind::multivalue);
  for (const TaskEvalSet& s : sets) {
    ASSERT_EQ(s.batches.size(), 2u) << "3 documents of 300, two per batch of 600";
    int64_t docs = 0;
    for (const Batch& b : s.batches) {
      docs += int64_t(b.cu_seqlens.size()) - 1;
      for (size_t q = 0; q + 1 < b.cu_seqlens.size(); ++q) {
        std::vector<int32_t> scored;
        for (int64_t t = b.cu_seqlens[q]; t < b.cu_seqlens[q + 1]; ++t)
          if (b.targets[size_t(t)] >= 0) scored.push_back(b.targets[size_t(t)]);
        EXPECT_EQ(tok->decode(scored).back(), '\n');
        EXPECT_GE(scored.size(), 7u);
      }
    }
    EXPECT_EQ(docs, 3);
  }
  EXPECT_EQ(task_eval_batches(f, *tok, mix, 600, 1)[0].batches[0].tokens, sets[0].batches[0].tokens);
}

}  // namespace
}  // namespace longctx
