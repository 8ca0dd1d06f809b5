// The HTTP side of `longctx serve` (cpp-httplib): the OpenAI-compatible routes over an Engine,
// streamed as server-sent events, and JSON errors for everything that goes wrong.
#pragma once
#include <httplib.h>

#include <atomic>
#include <memory>
#include <string>

#include "serve_engine.hpp"
#include "serve_openai.hpp"

namespace longctx::serve {

class HttpServer {
 public:
  // `threads`: HTTP worker threads (each open request holds one while it waits for its text).
  HttpServer(Engine& engine, ModelInfo model, int threads);
  // Binds host:port (port 0: any free port) and returns the port; throws naming them on failure.
  int bind(const std::string& host, int port);
  void listen();  // serves until stop()
  void stop();
  int64_t open_requests() const { return open_; }  // completions still being answered

 private:
  void completions(const httplib::Request& req, httplib::Response& res, bool chat);
  void stream(httplib::Response& res, const std::shared_ptr<Job>& job, Job::Update first, const Reply& reply,
              int64_t prompt_tokens, bool include_usage);

  Engine& engine_;
  const ModelInfo model_;
  httplib::Server server_;
  std::atomic<int64_t> ids_{0}, open_{0};
};

}  // namespace longctx::serve
