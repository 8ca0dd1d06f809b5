// Base64 (RFC 4648, with padding) for binary blobs inside JSON strings, such as a SentencePiece
// model embedded in a checkpoint's safetensors metadata (metadata values must be text).
#pragma once
#include <string>
#include <string_view>

namespace longctx {

std::string base64_encode(std::string_view bytes);
// Throws std::invalid_argument "<what>: not base64 (...)" on a bad length or character.
std::string base64_decode(std::string_view text, const std::string& what);

}  // namespace longctx
