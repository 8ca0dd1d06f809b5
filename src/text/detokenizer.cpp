#include <longctx/text/detokenizer.hpp>

#include <algorithm>

namespace longctx {

namespace {

// Whether s ends inside a UTF-8 character (a lead byte without all its continuation bytes).
bool incomplete_utf8_tail(const std::string& s) {
  size_t i = s.size(), n = 0;  // continuation bytes at the end
  while (i > 0 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80 && n < 3) --i, ++n;
  if (i == 0) return n > 0;
  const unsigned lead = static_cast<unsigned char>(s[i - 1]);
  const size_t need = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : lead >= 0xC0 ? 1 : 0;
  return need > n;
}

}  // namespace

StreamDecoder::StreamDecoder(const Tokenizer& tok, const std::vector<int32_t>& shown)
    : tok_(tok), ids_(shown.end() - int64_t(std::min(shown.size(), kContext)), shown.end()), emitted_(ids_.size()) {}

std::string StreamDecoder::push(int32_t id) {
  ids_.push_back(id);
  return emit(false);
}

std::string StreamDecoder::flush() { return emit(true); }

std::string StreamDecoder::emit(bool all) {
  const std::vector<int32_t> ctx(ids_.begin(), ids_.begin() + int64_t(emitted_));
  const std::string before = tok_.decode(ctx), after = tok_.decode(ids_);
  const bool stuck = all || ids_.size() - emitted_ > kContext;  // never hold text back for long
  if (after.compare(0, before.size(), before) != 0 && !stuck) return "";  // not a clean extension yet: wait
  std::string add = after.substr(std::min(before.size(), after.size()));
  if (!add.empty() && incomplete_utf8_tail(add) && !stuck) return "";
  emitted_ = ids_.size();
  if (ids_.size() > kContext) {  // keep a few tokens of context
    ids_.erase(ids_.begin(), ids_.end() - int64_t(kContext));
    emitted_ = ids_.size();
  }
  return add;
}

}  // namespace longctx
