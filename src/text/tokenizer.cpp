#include <longctx/core/error.hpp>
#include <longctx/text/tokenizer.hpp>
#include <sentencepiece_processor.h>

#include <algorithm>

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
  std::string serialized() const override { return ""; }
};

// The offset of the first byte that is not part of a well-formed UTF-8 sequence (RFC 3629: no
// overlong forms, no surrogates, nothing past U+10FFFF), or -1 when the text is valid.
int64_t first_invalid_utf8(const std::string& text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned c = s[i];
    size_t len = 0;
    unsigned lo = 0x80, hi = 0xBF;  // the range of the second byte
    if (c < 0x80) len = 1;
    else if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else return int64_t(i);
    if (i + len > n) return int64_t(i);
    for (size_t k = 1; k < len; ++k)
      if (s[i + k] < (k == 1 ? lo : 0x80) || s[i + k] > (k == 1 ? hi : 0xBF)) return int64_t(i);
    i += len;
  }
  return -1;
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(std::string path, const std::string& serialized) : path_(std::move(path)) {
    const auto status = serialized.empty() ? sp_.Load(path_) : sp_.LoadFromSerializedProto(serialized);
    LONGCTX_CHECK(status.ok(), "tokenizer: cannot load SentencePiece model '", path_, "'",
                  serialized.empty() ? "" : " (the copy in the checkpoint)", ": ", status.ToString());
  }
  // SentencePiece reads UTF-8 and would turn other bytes into <unk>, losing them: refused instead.
  std::vector<int32_t> encode(const std::string& text) const override {
    const int64_t bad = first_invalid_utf8(text);
    LONGCTX_CHECK(bad < 0, "tokenizer: SentencePiece needs UTF-8 text; byte ", bad, " (0x", std::hex,
                  int(static_cast<unsigned char>(text[size_t(std::max<int64_t>(bad, 0))])), std::dec,
                  ") is not valid UTF-8 (convert with iconv, or train with the bytes tokenizer)");
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
  std::string serialized() const override { return sp_.serialized_model_proto(); }

 private:
  std::string path_;
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& spec, const std::string& serialized) {
  if (spec == "bytes") return std::make_unique<ByteTokenizer>();
  if (spec.rfind("spm:", 0) == 0) return std::make_unique<SentencePieceTokenizer>(spec.substr(4), serialized);
  throw std::invalid_argument(concat("longctx: unknown tokenizer '", spec, "' (use 'bytes' or 'spm:<model path>')"));
}

}  // namespace longctx
