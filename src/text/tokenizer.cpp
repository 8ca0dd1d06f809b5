#include <longctx/core/error.hpp>
#include <longctx/text/tokenizer.hpp>
#include <sentencepiece_processor.h>

namespace longctx {

namespace {

class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> encode(const std::string& text) const override {
    return std::vector<int32_t>(reinterpret_cast<const uint8_t*>(text.data()),
                                reinterpret_cast<const uint8_t*>(text.data()) + text.size());
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids) {
      LONGCTX_CHECK(id >= 0 && id < 256, "byte tokenizer: id ", id, " outside [0, 256)");
      s.push_back(char(uint8_t(id)));
    }
    return s;
  }
  int64_t vocab_size() const override { return 256; }
  std::string spec() const override { return "bytes"; }
};

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(std::string path) : path_(std::move(path)) {
    const auto status = sp_.Load(path_);
    LONGCTX_CHECK(status.ok(), "tokenizer: cannot load SentencePiece model '", path_, "': ", status.ToString());
  }
  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int> ids;
    const auto status = sp_.Encode(text, &ids);
    LONGCTX_CHECK(status.ok(), "tokenizer: SentencePiece encode failed: ", status.ToString());
    return std::vector<int32_t>(ids.begin(), ids.end());
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string text;
    const auto status = sp_.Decode(std::vector<int>(ids.begin(), ids.end()), &text);
    LONGCTX_CHECK(status.ok(), "tokenizer: SentencePiece decode failed: ", status.ToString());
    return text;
  }
  int64_t vocab_size() const override { return sp_.GetPieceSize(); }
  std::string spec() const override { return "spm:" + path_; }

 private:
  std::string path_;
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& spec) {
  if (spec == "bytes") return std::make_unique<ByteTokenizer>();
  if (spec.rfind("spm:", 0) == 0) return std::make_unique<SentencePieceTokenizer>(spec.substr(4));
  throw std::invalid_argument(concat("longctx: unknown tokenizer '", spec, "' (use 'bytes' or 'spm:<model path>')"));
}

}  // namespace longctx
