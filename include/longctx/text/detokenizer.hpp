// Incremental detokenisation: the text each new token adds, for streaming generated text.
#pragma once
#include <longctx/text/tokenizer.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace longctx {

// The text a token adds is decode(context + token) past decode(context) over the last few tokens,
// O(1) per token (a tokenizer may merge or strip a leading space, so a token is not decoded
// alone). Text is held back while it is not a clean extension of what was shown, or ends in an
// unfinished UTF-8 character, for at most a few tokens.
class StreamDecoder {
 public:
  // `shown`: the tokens already shown (the prompt), whose last few are the first context.
  StreamDecoder(const Tokenizer& tok, const std::vector<int32_t>& shown);
  std::string push(int32_t id);  // the new text to show (may be empty)
  std::string flush();           // what is still held back (the end of the output)

 private:
  std::string emit(bool all);
  static constexpr size_t kContext = 8;
  const Tokenizer& tok_;
  std::vector<int32_t> ids_;
  size_t emitted_ = 0;  // ids_[0, emitted_) are shown
};

}  // namespace longctx
