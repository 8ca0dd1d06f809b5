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
};

// "bytes" or "spm:<path>"; throws naming the spec when it cannot be loaded.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& spec);

}  // namespace longctx
