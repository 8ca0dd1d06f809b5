// Hugging Face Llama import against a PyTorch twin of LlamaForCausalLM (hf_llama_twin.py, run
// with Debian's python3-torch): small random checkpoints in HF's layout (sharded or not; F32,
// BF16, F16; tied or untied head; MHA, GQA, MQA) must give the twin's logits and greedy
// continuation; training-free attention kinds replace the pretrained one; bad folders are
// refused naming what is wrong; `longctx import-hf` + `longctx generate` continue a prompt as the
// twin does. Skipped, saying why, only when torch cannot be imported.
#include <longctx/model/hf_import.hpp>
#include <longctx/text/tokenizer.hpp>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include "cli_helpers.hpp"
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace longctx {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::expect_error;

const std::string kPrompt = "And God said, Let there be light";

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

json read_json(const fs::path& p) { return json::parse(read_file(p)); }

void write_json(const fs::path& p, const json& j) { std::ofstream(p) << j.dump(2); }

// The prompt as LlamaTokenizer encodes it: BOS, then the SentencePiece pieces.
std::vector<int32_t> prompt_tokens(const Tokenizer& tok) {
  std::vector<int32_t> ids = tok.encode(kPrompt);
  ids.insert(ids.begin(), 1);
  return ids;
}

// The twin's variants (folder, shape, weights' dtype and files), before the tokenizer fills in
// the vocabulary and the prompt.
json twin_spec() {
  const json base{{"hidden", 32}, {"layers", 2}, {"heads", 4}, {"kv_heads", 2}, {"ffn", 48}, {"max_pos", 64},
                  {"eps", 1e-5}, {"rope_theta", 10000.0}, {"tied", false}, {"dtype", "f32"}, {"shards", 1},
                  {"seed", 1}, {"greedy", 8}};
  auto variant = [&](const std::string& name, const json& changes) {
    json v = base;
    v.update(changes);
    v["dir"] = name;
    return v;
  };
  return {{"variants",
           {variant("gqa_f32", {{"inv_freq", true}}),
            variant("mha_tied_bf16_shards", {{"kv_heads", 4}, {"tied", true}, {"dtype", "bf16"}, {"shards", 3}, {"seed", 2}}),
            variant("mqa_f16_shards",
                    {{"kv_heads", 1}, {"dtype", "f16"}, {"shards", 2}, {"seed", 3}, {"rope_theta", 500000.0}, {"eps", 1e-6}}),
            variant("missing", {{"drop", "model.layers.1.mlp.up_proj.weight"}, {"greedy", 0}})}}};
}

class HfImportTest : public ::testing::Test {
 protected:
  // The twin's folders, written by one run of the twin (torch takes seconds to import) into a
  // folder named by a hash of the script and the spec, which the suite's other test processes
  // (ctest runs each test alone) then reuse; a process writes its own copies under work_.
  static void SetUpTestSuite() {
    const std::string python = LONGCTX_TORCH_PYTHON;
    const std::string script = std::string(LONGCTX_SOURCE_DIR) + "/tests/model/hf_llama_twin.py";
    const json spec = twin_spec();
    root_ = fs::temp_directory_path() /
            ("longctx_hf_twin_" + std::to_string(std::hash<std::string>{}(read_file(script) + spec.dump())));
    work_ = fs::temp_directory_path() / ("longctx_hf_import_" + std::to_string(getpid()));
    fs::remove_all(work_);
    fs::create_directories(work_);
    has_torch_ = fs::exists(root_ / "done") || std::system((python + " -c 'import torch' > /dev/null 2>&1").c_str()) == 0;
    if (!has_torch_) return;
    if (!fs::exists(root_ / "done")) write_twin_folders(python, script, spec);
    prompt_ = prompt_tokens(*make_tokenizer("spm:" + (root_ / "spm.model").string()));
  }

  static void TearDownTestSuite() { fs::remove_all(work_); }

  static void write_twin_folders(const std::string& python, const std::string& script, json spec) {
    const fs::path tmp = work_ / "twin";
    fs::create_directories(tmp);
    std::string text;  // a SentencePiece BPE tokenizer with Llama's special ids (unk 0, bos 1, eos 2)
    for (int i = 0; i < 30; ++i) text += "And God said, Let there be light: and there was light. And God saw the light.\n";
    std::ofstream(tmp / "corpus.txt") << text;
    const auto status = sentencepiece::SentencePieceTrainer::Train(
        "--input=" + (tmp / "corpus.txt").string() + " --model_prefix=" + (tmp / "spm").string() +
        " --vocab_size=300 --model_type=bpe --byte_fallback=true --minloglevel=2");
    ASSERT_TRUE(status.ok()) << status.ToString();
    const auto tok = make_tokenizer("spm:" + (tmp / "spm.model").string());
    for (json& v : spec["variants"]) {
      v["vocab"] = tok->vocab_size() + 4;  // HF pads the embedding rows past the tokenizer's
      v["tokens"] = prompt_tokens(*tok);
      v["dir"] = (tmp / v["dir"].get<std::string>()).string();
    }
    write_json(tmp / "spec.json", spec);
    const std::string cmd = python + " " + script + " " + (tmp / "spec.json").string();
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    for (const json& v : spec["variants"])
      fs::copy_file(tmp / "spm.model", fs::path(v["dir"].get<std::string>()) / "tokenizer.model");
    std::ofstream(tmp / "done") << "1";
    std::error_code ec;  // another process may have finished first: then its folder serves
    fs::rename(tmp, root_, ec);
  }

  void SetUp() override {
    if (!has_torch_)
      GTEST_SKIP() << LONGCTX_TORCH_PYTHON << " cannot import torch: the Hugging Face import tests need Debian's "
                   << "python3-torch (scripts/setup.sh installs it)";
  }

  static fs::path dir(const std::string& name) { return root_ / name; }

  // A copy of a variant's folder whose config.json passes through `edit`.
  static std::string edited_copy(const std::string& from, const std::string& name, const std::function<void(json&)>& edit) {
    const fs::path to = work_ / name;
    fs::remove_all(to);
    fs::copy(dir(from), to);
    json c = read_json(to / "config.json");
    edit(c);
    write_json(to / "config.json", c);
    return to.string();
  }

  static Tensor logits_of(Transformer& m, const std::vector<int32_t>& tokens) {
    Batch b;
    b.tokens = tokens;
    b.cu_seqlens = {0, int64_t(tokens.size())};
    return m.logits(b);
  }

  static double twin_error(const Tensor& logits, const json& twin) {
    std::vector<double> want;
    for (const json& row : twin["logits"])
      for (const json& x : row) want.push_back(x.get<double>());
    EXPECT_EQ(int64_t(want.size()), logits.numel());
    return testing::rel_error(logits, want);
  }

  static bool has_torch_;  // or the twin's folders are there already
  static fs::path root_, work_;
  static std::vector<int32_t> prompt_;
};

bool HfImportTest::has_torch_ = false;
fs::path HfImportTest::root_, HfImportTest::work_;
std::vector<int32_t> HfImportTest::prompt_;

// Greedy decoding over the KV cache: prefill, then one extend per token.
std::vector<int32_t> greedy(Transformer& m, const std::vector<int32_t>& prompt, int n) {
  DecodeState st = m.new_decode_state(int64_t(prompt.size()) + n);
  Tensor logits = m.prefill(st, prompt, 4);
  std::vector<int32_t> out;
  const int64_t V = m.config().vocab_size;
  for (int i = 0; i < n; ++i) {
    out.push_back(int32_t(std::max_element(logits.f32(), logits.f32() + V) - logits.f32()));
    logits = m.extend(st, {out.back()});
  }
  return out;
}

TEST_F(HfImportTest, LogitsAndGreedyContinuationMatchTheTwin) {
  for (const std::string name : {"gqa_f32", "mha_tied_bf16_shards", "mqa_f16_shards"}) {
    SCOPED_TRACE(name);
    const json twin = read_json(dir(name) / "twin.json");
    HfImport hf = import_hf(dir(name).string());
    const ModelConfig& c = hf.model.config();
    EXPECT_EQ(c.tie_embeddings, name == "mha_tied_bf16_shards");
    EXPECT_EQ(c.n_kv_heads, name == "gqa_f32" ? 2 : name == "mqa_f16_shards" ? 1 : 4);
    EXPECT_EQ(c.max_seq_len, 64);
    EXPECT_EQ(c.norm_eps, name == "mqa_f16_shards" ? 1e-6 : 1e-5);
    EXPECT_EQ(c.rope_theta, name == "mqa_f16_shards" ? 500000.0 : 10000.0);
    // fp32 against the twin's float64 on the same (rounded) weights
    EXPECT_LT(twin_error(logits_of(hf.model, prompt_), twin), 1e-5);
    ASSERT_GT(twin["margin"].get<double>(), 1e-3);  // greedy ties would make the next check luck
    EXPECT_EQ(greedy(hf.model, prompt_, 8), twin["greedy"].get<std::vector<int32_t>>());
    // what the checkpoint will carry: the tokenizer's bytes, Llama's BOS and EOS
    EXPECT_EQ(hf.info.tokenizer_model, read_file(root_ / "spm.model"));
    EXPECT_EQ(hf.info.special_tokens.bos, 1);
    EXPECT_EQ(hf.info.special_tokens.eos, std::vector<int32_t>{2});
  }
}

// MoBA and top-k select over the pretrained keys with no parameters of their own: with blocks that
// cover the prompt they are the dense model; with fewer they really are sparse.
TEST_F(HfImportTest, TrainingFreeKindsReplaceTheAttention) {
  const json twin = read_json(dir("gqa_f32") / "twin.json");
  for (const std::string kind : {"moba", "topk"}) {
    HfImport all = import_hf(dir("gqa_f32").string(), {{"attention", {{"kind", kind}, {"block_size", 4}, {"top_k", 16}}}});
    EXPECT_EQ(all.model.attention_kind(0), attention_kind_from_name(kind));
    EXPECT_LT(twin_error(logits_of(all.model, prompt_), twin), 1e-5) << kind;
    HfImport sparse = import_hf(dir("gqa_f32").string(), {{"attention", {{"kind", kind}, {"block_size", 2}, {"top_k", 2}}},
                                                          {"full_attention_last_n", 1}});
    EXPECT_EQ(sparse.model.attention_kind(0), attention_kind_from_name(kind));
    EXPECT_EQ(sparse.model.attention_kind(1), AttentionKind::full);
    EXPECT_GT(twin_error(logits_of(sparse.model, prompt_), twin), 1e-3) << kind;
  }
}

// NSA and Infini-attention add parameters no Llama checkpoint has: they start as a new longctx
// model's (the seed's), the rest is the checkpoint's.
TEST_F(HfImportTest, NsaAndInfiniStartFromTheirOwnInit) {
  const json nsa{{"kind", "nsa"}, {"block_len", 4}, {"stride", 2}, {"select_len", 4}, {"top_n", 3}, {"local_blocks", 1},
                 {"window", 4}};
  HfImport hf = import_hf(dir("gqa_f32").string(),
                          {{"layers", {{{"attention", nsa}}, {{"attention", {{"kind", "infini"}}}}}}}, 7);
  Transformer fresh(hf.model.config(), 7);
  for (const std::string p : {"layers.0.attention.nsa.gate_w", "layers.1.attention.infini.beta"})
    EXPECT_TRUE(testing::bitwise_equal(hf.model.param(p).value, fresh.param(p).value)) << p;
  EXPECT_FALSE(testing::bitwise_equal(hf.model.param("layers.0.attention.wq").value, fresh.param("layers.0.attention.wq").value));
  const Tensor logits = logits_of(hf.model, prompt_);
  for (int64_t i = 0; i < logits.numel(); ++i) ASSERT_TRUE(std::isfinite(logits.f32()[i]));
}

TEST_F(HfImportTest, BadFoldersAreRefusedNamingTheProblem) {
  expect_error([&] { import_hf(dir("missing").string()); }, "no tensor 'model.layers.1.mlp.up_proj.weight'");
  auto refused = [&](const std::string& name, const std::function<void(json&)>& edit, const std::string& needle) {
    const std::string d = edited_copy("gqa_f32", name, edit);
    expect_error([&] { import_hf(d); }, needle);
  };
  refused("mistral", [](json& c) { c["architectures"] = {"MistralForCausalLM"}; },
          "architecture 'MistralForCausalLM' is not supported (longctx imports LlamaForCausalLM)");
  refused("gpt2", [](json& c) { c.erase("architectures"), c["model_type"] = "gpt2"; }, "architecture 'gpt2'");
  refused("scaled", [](json& c) { c["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}}; },
          "rope_scaling {\"factor\":8.0,\"rope_type\":\"llama3\"} is not supported");
  refused("bias", [](json& c) { c["attention_bias"] = true; }, "attention_bias is true");
  refused("gelu", [](json& c) { c["hidden_act"] = "gelu"; }, "hidden_act 'gelu' is not supported");
  refused("head_dim", [](json& c) { c["head_dim"] = 16; }, "head_dim 16 is not hidden_size / num_attention_heads (8)");
  refused("no_vocab", [](json& c) { c.erase("vocab_size"); }, "config.json: no vocab_size");
  refused("wider", [](json& c) { c["intermediate_size"] = 64; },
          "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [48, 32], this config expects [64, 32]");
  refused("one_layer", [](json& c) { c["num_hidden_layers"] = 1; },
          "tensor 'model.layers.1.input_layernorm.weight' is not a weight of a Llama model of this config (1 layers, "
          "untied head)");
  refused("tied", [](json& c) { c["tie_word_embeddings"] = true; },
          "tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight");
  expect_error([&] { import_hf(dir("gqa_f32").string(), {{"d_model", 64}}); },
               "hf import: overrides: unknown field 'd_model'");
  expect_error([&] { import_hf(dir("gqa_f32").string(), {{"layers", {{{"ffn", {{"kind", "moe"}}}}, json::object()}}}); },
               "layer 0: ffn kind 'moe': a Llama checkpoint has dense SwiGLU FFNs");
  const std::string no_tok = edited_copy("gqa_f32", "no_tokenizer", [](json&) {});
  fs::remove(fs::path(no_tok) / "tokenizer.model");
  expect_error([&] { import_hf(no_tok); }, "has no tokenizer.model");
  const fs::path shards = work_ / "lost_shard";
  fs::remove_all(shards);
  fs::copy(dir("mha_tied_bf16_shards"), shards);
  fs::remove(shards / "model-00002-of-00003.safetensors");
  expect_error([&] { import_hf(shards.string()); }, "names the shard model-00002-of-00003.safetensors, which is not in");
}

// BOS and EOS as config.json and tokenizer_config.json say (LlamaConfig's 1 and 2 by default).
TEST_F(HfImportTest, SpecialTokensFollowTheConfigs) {
  const std::string list = edited_copy("gqa_f32", "eos_list", [](json& c) { c["eos_token_id"] = {2, 5}; });
  EXPECT_EQ(import_hf(list).info.special_tokens.eos, (std::vector<int32_t>{2, 5}));
  const std::string none = edited_copy("gqa_f32", "no_special", [](json& c) {
    c["bos_token_id"] = nullptr;
    c["eos_token_id"] = nullptr;
  });
  const SpecialTokens n = import_hf(none).info.special_tokens;
  EXPECT_EQ(n.bos, -1);
  EXPECT_TRUE(n.eos.empty());
  const std::string no_bos = edited_copy("gqa_f32", "no_bos", [](json& c) { c.erase("bos_token_id"); });
  EXPECT_EQ(import_hf(no_bos).info.special_tokens.bos, 1);
  write_json(fs::path(no_bos) / "tokenizer_config.json", {{"add_bos_token", false}});
  EXPECT_EQ(import_hf(no_bos).info.special_tokens.bos, -1);
}

// The command line end to end: import, then generate greedily from text (the BOS the checkpoint
// records is prepended, the embedded tokenizer encodes and decodes) as the twin continues.
TEST_F(HfImportTest, ImportThenGenerateContinuesAsTheTwin) {
  const fs::path ckpt = work_ / "imported.safetensors";
  const std::string folder = edited_copy("gqa_f32", "to_generate", [](json&) {});
  const testing::CliRun imp = testing::run_cli("import-hf --model-dir " + folder + " --out " + ckpt.string());
  ASSERT_EQ(imp.status, 0) << imp.output;
  EXPECT_NE(imp.output.find("2 layers, d_model 32, 4 heads over 2 KV heads"), std::string::npos) << imp.output;
  fs::remove(fs::path(folder) / "tokenizer.model");  // the checkpoint carries its tokenizer
  const CheckpointInfo info = read_checkpoint_info(ckpt.string());
  EXPECT_EQ(info.special_tokens.bos, 1);
  EXPECT_EQ(info.special_tokens.eos, std::vector<int32_t>{2});
  const auto tok = make_tokenizer("spm:" + (root_ / "spm.model").string());
  std::vector<int32_t> all = prompt_;
  const json twin = read_json(dir("gqa_f32") / "twin.json");
  for (const json& t : twin["greedy"]) all.push_back(t.get<int32_t>());
  const std::string want = tok->decode(all).substr(tok->decode(prompt_).size());
  const testing::CliRun gen = testing::run_cli("generate --checkpoint " + ckpt.string() + " --prompt '" + kPrompt +
                                               "' --tokens 8 --temperature 0");
  ASSERT_EQ(gen.status, 0) << gen.output;
  EXPECT_EQ(gen.output.substr(0, kPrompt.size() + want.size()), kPrompt + want) << gen.output;
}

}  // namespace
}  // namespace longctx
