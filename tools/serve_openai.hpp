// The OpenAI API's JSON for `longctx serve` (docs/SERVE.md): requests of /v1/completions and
// /v1/chat/completions checked and made engine Requests, and the response objects and stream
// chunks. No HTTP here (serve_http.hpp).
#pragma once
#include <longctx/model/checkpoint.hpp>
#include <longctx/text/tokenizer.hpp>
#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string>

#include "serve_engine.hpp"

namespace longctx::serve {

// A request the server answers 400 {"error": {"message", "type": "invalid_request_error", "param"}}.
struct BadRequest : std::runtime_error {
  BadRequest(const std::string& message, std::string p = "") : std::runtime_error(message), param(std::move(p)) {}
  std::string param;  // the field at fault, if one is
};

// The chat template for every model (Hugging Face chat templates are Jinja, which longctx does not
// run): each system message's text, then "User: <text>" and "Assistant: <text>" turns, each
// followed by a blank line, and a closing "Assistant:" that the model continues. Generation also
// stops before "\nUser:" (the model starting the next turn itself).
std::string chat_prompt(const nlohmann::json& messages);
inline const char* kChatTurnStop = "\nUser:";

// What the model and the server bring to a request.
struct ModelInfo {
  const Tokenizer* tokenizer = nullptr;
  SpecialTokens special;
  int64_t context = 0;  // prompt + max_tokens at most
  std::string name;
};

struct ParsedRequest {
  Request request;
  bool stream = false, include_usage = false;
};

// Checks a request body against the endpoint's fields (an unknown one, or one longctx does not
// implement with a value other than its neutral one, is a BadRequest naming it) and encodes its
// prompt. Defaults: max_tokens 16 (completions) or 256 (chat) within the context left,
// temperature 1, top_p 1, top_k 0 (all; an extension), a random seed.
ParsedRequest parse_request(const nlohmann::json& body, bool chat, const ModelInfo& model);

// The pieces of a response; `id` is "cmpl-N" or "chatcmpl-N".
struct Reply {
  bool chat = false;
  std::string id, model;
  int64_t created = 0;
};
// The whole (non-streamed) response.
nlohmann::json full_response(const Reply& r, const std::string& text, const std::string& finish_reason,
                             int64_t prompt_tokens, int64_t completion_tokens);
// One stream chunk: new text (chat: a content delta; `role_only`: the opening {"role": "assistant"}
// delta), or with a finish_reason the closing one.
nlohmann::json stream_chunk(const Reply& r, const std::string& text, const std::string& finish_reason = "",
                            bool role_only = false);
// The chunk with the usage that closes a stream when stream_options.include_usage asks for it.
nlohmann::json usage_chunk(const Reply& r, int64_t prompt_tokens, int64_t completion_tokens);

// {"error": {"message", "type", "param", "code": null}}.
nlohmann::json error_body(const std::string& message, const std::string& type, const std::string& param = "");

// JSON text of a value whose strings may hold invalid UTF-8 (model output): replaced, not refused.
std::string dump(const nlohmann::json& j);

}  // namespace longctx::serve
