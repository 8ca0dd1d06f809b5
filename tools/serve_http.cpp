#include "serve_http.hpp"

#include <longctx/core/error.hpp>

#include <ctime>
#include <optional>

namespace longctx::serve {

namespace {

using nlohmann::json;

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message, const std::string& type,
                const std::string& param = "") {
  send_json(res, status, error_body(message, type, param));
}

// Counts a completion as open until its response is written (a stream: until it ends).
struct OpenRequest {
  explicit OpenRequest(std::atomic<int64_t>& n) : n_(n) { ++n_; }
  ~OpenRequest() {
    if (armed_) --n_;
  }
  void hand_over() { armed_ = false; }  // the stream's end counts it off instead

 private:
  std::atomic<int64_t>& n_;
  bool armed_ = true;
};

}  // namespace

HttpServer::HttpServer(Engine& engine, ModelInfo model, int threads) : engine_(engine), model_(std::move(model)) {
  server_.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  server_.set_payload_max_length(size_t(64) << 20);
  server_.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    const EngineStats s = engine_.stats();
    send_json(res, s.stopping ? 503 : 200,
              {{"status", s.stopping ? "shutting_down" : "ok"}, {"active", s.active}, {"queued", s.queued},
               {"finished", s.finished}, {"largest_batch", s.largest_batch}});
  });
  server_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200,
              {{"object", "list"},
               {"data", json::array({{{"id", model_.name}, {"object", "model"}, {"created", 0}, {"owned_by", "longctx"}}})}});
  });
  server_.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) { completions(req, res, false); });
  server_.Post("/v1/chat/completions",
               [this](const httplib::Request& req, httplib::Response& res) { completions(req, res, true); });
  // httplib's own refusals (no such route, a body over the limit, ...) get the same JSON errors
  server_.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 404)
      send_error(res, 404, concat("no route ", req.method, " ", req.path, " (longctx serve has GET /health, GET /v1/models, ",
                                  "POST /v1/completions, POST /v1/chat/completions)"), "not_found_error");
    else
      send_error(res, res.status, concat("HTTP ", res.status, " for ", req.method, " ", req.path), "invalid_request_error");
  });
  server_.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = message_of(e);
    } catch (...) {
    }
    send_error(res, 500, what, "server_error");
  });
}

int HttpServer::bind(const std::string& host, int port) {
  const int bound = port == 0 ? server_.bind_to_any_port(host) : server_.bind_to_port(host, port) ? port : -1;
  LONGCTX_CHECK(bound > 0, "serve: cannot listen on ", host, ":", port, " (port in use, or not an address of this machine)");
  return bound;
}

void HttpServer::listen() { server_.listen_after_bind(); }

void HttpServer::stop() { server_.stop(); }

void HttpServer::completions(const httplib::Request& req, httplib::Response& res, bool chat) {
  OpenRequest open(open_);
  const json body = json::parse(req.body, nullptr, false);
  if (body.is_discarded()) return send_error(res, 400, "the request body is not JSON", "invalid_request_error");
  ParsedRequest p;
  try {
    p = parse_request(body, chat, model_);
  } catch (const BadRequest& e) {
    return send_error(res, 400, e.what(), "invalid_request_error", e.param);
  }
  const int64_t prompt_tokens = int64_t(p.request.prompt.size());
  std::shared_ptr<Job> job;
  try {
    job = engine_.submit(std::move(p.request));
  } catch (const Busy& e) {
    res.set_header("Retry-After", "1");
    return send_error(res, 503, e.what(), "server_overloaded");
  }
  Job::Update u = job->next();  // it has started (its KV cache exists) or ended
  if (!u.error.empty()) return send_error(res, 500, u.error, "server_error");
  const Reply reply{chat, concat(chat ? "chatcmpl-" : "cmpl-", ++ids_), model_.name, int64_t(std::time(nullptr))};
  if (p.stream) {
    open.hand_over();
    return stream(res, job, std::move(u), reply, prompt_tokens, p.include_usage);
  }
  std::string text = u.text;
  while (!u.finished) {
    u = job->next();
    text += u.text;
  }
  if (!u.error.empty()) return send_error(res, 500, u.error, "server_error");
  send_json(res, 200, full_response(reply, text, u.finish_reason, prompt_tokens, u.completion_tokens));
}

// Server-sent events: "data: <chunk>\n\n" as text comes, the closing chunk (finish_reason), the
// usage chunk if asked, then "data: [DONE]\n\n". A client that goes away cancels its job.
void HttpServer::stream(httplib::Response& res, const std::shared_ptr<Job>& job, Job::Update first, const Reply& reply,
                        int64_t prompt_tokens, bool include_usage) {
  struct State {
    std::shared_ptr<Job> job;
    std::optional<Job::Update> first;
    bool opened = false;
  };
  auto st = std::make_shared<State>(State{job, std::move(first), false});
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [st, reply, prompt_tokens, include_usage](size_t, httplib::DataSink& sink) {
        auto send = [&](const std::string& event) {
          const std::string line = "data: " + event + "\n\n";
          return sink.write(line.data(), line.size());
        };
        Job::Update u = st->first ? std::move(*st->first) : st->job->next();
        st->first.reset();
        if (reply.chat && !st->opened && !send(dump(stream_chunk(reply, "", "", true)))) return false;
        st->opened = true;
        if (!u.text.empty() && !send(dump(stream_chunk(reply, u.text)))) return false;
        if (!u.finished) return true;
        if (!u.error.empty()) {
          if (!send(dump(error_body(u.error, "server_error")))) return false;
        } else {
          if (!send(dump(stream_chunk(reply, "", u.finish_reason)))) return false;
          if (include_usage && !send(dump(usage_chunk(reply, prompt_tokens, u.completion_tokens)))) return false;
        }
        if (!send("[DONE]")) return false;
        sink.done();
        return true;
      },
      [this, st](bool success) {
        if (!success) st->job->cancel();
        --open_;
      });
}

}  // namespace longctx::serve
