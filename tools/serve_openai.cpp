#include "serve_openai.hpp"

#include <longctx/core/error.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>

namespace longctx::serve {

namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw BadRequest(message, param); }

// Fields longctx reads, and fields it accepts only with their neutral value (what it does anyway).
const std::set<std::string> kCommonFields{"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                                          "stream", "stream_options", "user", "n", "presence_penalty",
                                          "frequency_penalty", "logit_bias", "logprobs"};
const std::set<std::string> kCompletionFields{"prompt", "echo", "best_of", "suffix"};
const std::set<std::string> kChatFields{"messages", "max_completion_tokens", "top_logprobs"};

// A field that must be absent, null or `neutral` (a feature longctx does not implement).
void neutral_only(const json& body, const char* name, const json& neutral) {
  if (body.contains(name) && !body.at(name).is_null() && body.at(name) != neutral)
    bad(name, concat(name, " = ", body.at(name).dump(), " is not supported by longctx serve (only ", neutral.dump(), ")"));
}

double number(const json& body, const char* name, double def, double lo, double hi, bool lo_open) {
  if (!body.contains(name) || body.at(name).is_null()) return def;
  const json& v = body.at(name);
  const double x = v.is_number() ? v.get<double>() : NAN;
  if (!(std::isfinite(x) && (lo_open ? x > lo : x >= lo) && x <= hi))
    bad(name, concat(name, " must be a number in ", lo_open ? "(" : "[", lo, ", ", hi, "], got ", v.dump()));
  return x;
}

int64_t integer(const json& body, const char* name, int64_t def, int64_t lo) {
  if (!body.contains(name) || body.at(name).is_null()) return def;
  const json& v = body.at(name);
  if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) || v.get<int64_t>() < lo)
    bad(name, concat(name, " must be an integer >= ", lo, ", got ", v.dump()));
  return v.get<int64_t>();
}

std::vector<std::string> stop_strings(const json& body) {
  if (!body.contains("stop") || body.at("stop").is_null()) return {};
  const json& s = body.at("stop");
  const json list = s.is_string() ? json::array({s}) : s;
  if (!list.is_array() || list.size() > 4) bad("stop", "stop must be a string or a list of at most 4 strings, got " + s.dump());
  std::vector<std::string> out;
  for (const json& x : list) {
    if (!x.is_string() || x.get<std::string>().empty()) bad("stop", "stop strings must be non-empty strings, got " + x.dump());
    out.push_back(x.get<std::string>());
  }
  return out;
}

// A message's text: a string, or a list of {"type": "text", "text": ...} parts.
std::string message_text(const json& m, size_t i) {
  const std::string where = concat("messages[", i, "].content");
  if (!m.contains("content") || m.at("content").is_null()) bad("messages", where + " is missing");
  const json& c = m.at("content");
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) bad("messages", where + " must be a string or a list of text parts, got " + c.dump().substr(0, 80));
  std::string text;
  for (const json& part : c) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part.at("text").is_string())
      bad("messages", where + ": only {\"type\": \"text\", \"text\": ...} parts are supported, got " + part.dump().substr(0, 80));
    text += part.at("text").get<std::string>();
  }
  return text;
}

std::string prompt_text(const json& body) {
  if (!body.contains("prompt")) bad("prompt", "prompt is required");
  const json& p = body.at("prompt");
  if (p.is_string()) return p.get<std::string>();
  if (p.is_array() && p.size() == 1 && p[0].is_string()) return p[0].get<std::string>();
  bad("prompt", "prompt must be a string (or a list of one string), got " + p.dump().substr(0, 80));
}

}  // namespace

std::string chat_prompt(const json& messages) {
  if (!messages.is_array() || messages.empty()) bad("messages", "messages must be a non-empty list");
  std::string text;
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    if (!m.is_object() || !m.contains("role") || !m.at("role").is_string())
      bad("messages", concat("messages[", i, "] must be an object with a role, got ", m.dump().substr(0, 80)));
    const std::string role = m.at("role").get<std::string>(), content = message_text(m, i);
    if (role == "system")
      text += content + "\n\n";
    else if (role == "user")
      text += "User: " + content + "\n\n";
    else if (role == "assistant")
      text += "Assistant: " + content + "\n\n";
    else
      bad("messages", concat("messages[", i, "].role '", role, "' is not system, user or assistant"));
  }
  return text + "Assistant:";
}

ParsedRequest parse_request(const json& body, bool chat, const ModelInfo& model) {
  if (!body.is_object()) bad("", "the request body must be a JSON object");
  for (const auto& [key, value] : body.items())
    if (!kCommonFields.count(key) && !(chat ? kChatFields : kCompletionFields).count(key))
      bad(key, concat("unknown field '", key, "' for ", chat ? "/v1/chat/completions" : "/v1/completions"));
  neutral_only(body, "n", 1);
  neutral_only(body, "presence_penalty", 0);
  neutral_only(body, "frequency_penalty", 0);
  neutral_only(body, "logit_bias", json::object());
  neutral_only(body, "logprobs", chat ? json(false) : json(0));
  neutral_only(body, "top_logprobs", 0);
  neutral_only(body, "echo", false);
  neutral_only(body, "best_of", 1);
  neutral_only(body, "suffix", "");
  if (body.contains("model") && !body.at("model").is_string()) bad("model", "model must be a string");
  ParsedRequest p;
  if (body.contains("stream") && !body.at("stream").is_boolean() && !body.at("stream").is_null())
    bad("stream", "stream must be true or false, got " + body.at("stream").dump());
  p.stream = body.value("stream", false);
  if (body.contains("stream_options") && !body.at("stream_options").is_null()) {
    const json& o = body.at("stream_options");
    if (!o.is_object() || (o.contains("include_usage") && !o.at("include_usage").is_boolean()))
      bad("stream_options", "stream_options must be {\"include_usage\": true|false}, got " + o.dump());
    p.include_usage = o.value("include_usage", false);
  }
  Request& r = p.request;
  r.sampler.temperature = number(body, "temperature", 1.0, 0.0, 1e6, false);
  r.sampler.top_p = number(body, "top_p", 1.0, 0.0, 1.0, true);
  r.sampler.top_k = integer(body, "top_k", 0, 0);
  r.seed = body.contains("seed") && !body.at("seed").is_null() ? uint64_t(integer(body, "seed", 0, INT64_MIN))
                                                               : std::random_device{}();
  r.stop = stop_strings(body);
  if (chat) r.stop.push_back(kChatTurnStop);
  const std::string text = chat ? chat_prompt(body.contains("messages") ? body.at("messages") : json())
                                : prompt_text(body);
  try {
    r.prompt = model.tokenizer->encode(text);
  } catch (const std::invalid_argument& e) {
    bad(chat ? "messages" : "prompt", message_of(e));
  }
  if (model.special.bos >= 0) r.prompt.insert(r.prompt.begin(), model.special.bos);
  if (r.prompt.empty()) bad("prompt", "the prompt encodes to no tokens");
  const int64_t prompt = int64_t(r.prompt.size()), room = model.context - prompt;
  if (room < 1)
    bad(chat ? "messages" : "prompt", concat("the prompt has ", prompt, " tokens; the context is ", model.context,
                                             " tokens and leaves none to generate"));
  const char* limit = chat && body.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  const bool given = body.contains(limit) && !body.at(limit).is_null();
  r.max_tokens = given ? integer(body, limit, 0, 1) : std::min<int64_t>(chat ? 256 : 16, room);
  if (r.max_tokens > room)
    bad(limit, concat("the prompt (", prompt, " tokens) + ", limit, " (", r.max_tokens, ") exceed the context of ",
                      model.context, " tokens"));
  return p;
}

json full_response(const Reply& r, const std::string& text, const std::string& finish_reason, int64_t prompt_tokens,
                   int64_t completion_tokens) {
  json choice{{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish_reason}};
  if (r.chat)
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  else
    choice["text"] = text;
  return {{"id", r.id},
          {"object", r.chat ? "chat.completion" : "text_completion"},
          {"created", r.created},
          {"model", r.model},
          {"choices", json::array({choice})},
          {"usage",
           {{"prompt_tokens", prompt_tokens},
            {"completion_tokens", completion_tokens},
            {"total_tokens", prompt_tokens + completion_tokens}}}};
}

json stream_chunk(const Reply& r, const std::string& text, const std::string& finish_reason, bool role_only) {
  json choice{{"index", 0}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
  if (!finish_reason.empty()) choice["finish_reason"] = finish_reason;
  if (r.chat) {
    choice["delta"] = role_only ? json{{"role", "assistant"}, {"content", ""}}
                                : finish_reason.empty() ? json{{"content", text}} : json::object();
  } else {
    choice["text"] = text;
  }
  return {{"id", r.id},
          {"object", r.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", r.created},
          {"model", r.model},
          {"choices", json::array({choice})}};
}

json usage_chunk(const Reply& r, int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"id", r.id},
          {"object", r.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", r.created},
          {"model", r.model},
          {"choices", json::array()},
          {"usage",
           {{"prompt_tokens", prompt_tokens},
            {"completion_tokens", completion_tokens},
            {"total_tokens", prompt_tokens + completion_tokens}}}};
}

json error_body(const std::string& message, const std::string& type, const std::string& param) {
  return {{"error",
           {{"message", message}, {"type", type}, {"param", param.empty() ? json(nullptr) : json(param)}, {"code", nullptr}}}};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace longctx::serve
