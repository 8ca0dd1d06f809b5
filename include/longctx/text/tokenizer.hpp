// Tokenizers: bytes (vocabulary 256, nothing to train) or a SentencePiece model trained on the
// corpus's training split (scripts/prepare_data.sh). A tokenizer is named by a spec string,
// "bytes" or "spm:<path to .model>", which checkpoints record.
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace longctx {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual std::string spec() const = 0;
  // The model file's bytes (SentencePiece's serialized proto; empty for bytes), so a checkpoint
  // can carry its tokenizer (longctx.tokenizer_model).
  virtual std::string serialized() const = 0;
};

// "bytes" or "spm:<path>"; throws naming the spec when it cannot be loaded. With `serialized`
// (a model's bytes, from a checkpoint) an spm tokenizer is built from them, not from the path.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& spec, const std::string& serialized = "");

}  // namespace longctx
