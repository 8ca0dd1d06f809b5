// Writes the fuzz targets' seed corpus (run once by hand; its outputs are committed):
//   build-fuzz/make_corpus fuzz/corpus/checkpoint_load_fuzz fuzz/corpus/safetensors_header_fuzz
// The loader's seeds are tiny longctx checkpoints of several model kinds (as load_model reads
// them); the header parser's seeds are small hand-made files, valid and hostile.
#include <longctx/model/checkpoint.hpp>

#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace {

using longctx::Tensor;

void save_model(const std::string& dir, const std::string& name, const nlohmann::json& config) {
  const longctx::Transformer m(longctx::ModelConfig::from_json(config), 1);
  std::vector<std::pair<std::string, const Tensor*>> tensors;
  for (const longctx::Param& p : m.params()) tensors.push_back({p.name, &p.value});
  longctx::save_safetensors(dir + "/" + name, tensors,
                            {{"format", "longctx"},
                             {"longctx.model_config", m.config().to_json().dump()},
                             {"longctx.tokenizer", "bytes"}});
}

void write_raw(const std::string& dir, const std::string& name, const std::string& header, size_t data_bytes) {
  std::ofstream f(dir + "/" + name, std::ios::binary | std::ios::trunc);
  for (int i = 0; i < 8; ++i) f.put(char((header.size() >> (8 * i)) & 0xff));
  f << header << std::string(data_bytes, '\x01');
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: make_corpus <checkpoint corpus dir> <header corpus dir>\n");
    return 2;
  }
  const std::string load = argv[1], header = argv[2];
  const nlohmann::json base{{"vocab_size", 16}, {"d_model", 8}, {"n_layers", 1}, {"n_heads", 2},
                            {"d_ff", 16},       {"max_seq_len", 32}};
  auto with = [&](const nlohmann::json& extra) {
    nlohmann::json j = base;
    j.update(extra);
    return j;
  };
  save_model(load, "full.safetensors", base);
  save_model(load, "moba_hybrid.safetensors",
             with({{"n_layers", 2}, {"attention", {{"kind", "moba"}, {"block_size", 4}, {"top_k", 2}}},
                   {"full_attention_last_n", 1}}));
  save_model(load, "nsa.safetensors",
             with({{"attention", {{"kind", "nsa"}, {"block_len", 4}, {"stride", 2}, {"select_len", 4}, {"top_n", 2},
                                  {"local_blocks", 1}, {"window", 4}, {"hidden", 4}}}}));
  save_model(load, "infini.safetensors", with({{"attention", {{"kind", "infini"}, {"segment_len", 4}}}}));
  save_model(load, "moe_untied_gqa_bf16.safetensors",
             with({{"n_kv_heads", 1}, {"tie_embeddings", false}, {"matmul_precision", "bf16"},
                   {"ffn", {{"kind", "moe"}, {"num_experts", 4}, {"top_k", 2}, {"d_ff", 8}}}}));

  save_model(header, "checkpoint.safetensors", base);

  const std::string a = R"("a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]})";
  const std::string b = R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]})";
  write_raw(header, "two_tensors", "{" + a + "," + b + R"(,"__metadata__":{"format":"pt"}})", 22);
  write_raw(header, "empty_header", "{}", 0);
  write_raw(header, "zero_sized", R"({"z":{"dtype":"F32","shape":[0,5],"data_offsets":[0,0]},)" + a + "}", 16);
  write_raw(header, "overlap", "{" + a + R"(,"c":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 16);
  write_raw(header, "hole", "{" + a + R"(,"c":{"dtype":"F32","shape":[1],"data_offsets":[20,24]}})", 24);
  write_raw(header, "duplicate_key", "{" + a + "," + a + "}", 16);
  write_raw(header, "big_dims", R"({"a":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904,0],"data_offsets":[0,0]}})", 0);
  write_raw(header, "metadata_number", R"({"__metadata__":{"step":5}})", 0);
  write_raw(header, "padded", "{" + a + "}      ", 16);
  return 0;
}
