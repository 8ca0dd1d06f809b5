// `longctx serve` over HTTP on a free loopback port: completions and chat, streamed (server-sent
// events) and not, answer what the model generates greedily; stop strings, seeds, JSON errors for
// bad requests; two clients decoded in one batch; a full queue answers 503, a client that leaves
// is cancelled; SIGTERM finishes the accepted requests and exits 0.
#include <httplib.h>
#include <longctx/model/checkpoint.hpp>
#include <signal.h>
#include <unistd.h>

#include "cli_helpers.hpp"
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

namespace longctx {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A byte-level model (moba and full layers, GQA) with random weights whose head never prefers a
// byte >= 128, so greedy text is ASCII (valid UTF-8 however it is cut into chunks).
std::string make_checkpoint(const fs::path& dir) {
  const ModelConfig cfg = ModelConfig::from_json(
      {{"vocab_size", 256}, {"d_model", 64}, {"n_layers", 2}, {"n_heads", 4}, {"n_kv_heads", 2}, {"d_ff", 128},
       {"max_seq_len", 2048}, {"tie_embeddings", false}, {"attention", {{"kind", "moba"}, {"block_size", 64}, {"top_k", 3}}},
       {"full_attention_last_n", 1}});
  Transformer m(cfg, 3);
  for (Param& p : m.params())
    if (p.value.ndim() >= 2)
      for (int64_t i = 0; i < p.value.numel(); ++i) p.value.f32()[i] *= 4.0f;
  Tensor& head = m.param("output.weight").value;
  std::fill(head.f32() + 128 * 64, head.f32() + 256 * 64, 0.0f);
  const std::string path = (dir / "tiny.safetensors").string();
  save_weights(path, m, {cfg, "bytes", "", {}});
  return path;
}

// The model's greedy continuation of `prompt` (bytes), as the server must produce it.
std::string greedy(const std::string& checkpoint, const std::string& prompt, int64_t n) {
  Transformer m = load_model(checkpoint);
  DecodeState st = m.new_decode_state(int64_t(prompt.size()) + n);
  Tensor logits = m.prefill(st, std::vector<int32_t>(prompt.begin(), prompt.end()), 512);
  std::string out;
  for (int64_t i = 0; i < n; ++i) {
    out.push_back(char(std::max_element(logits.f32(), logits.f32() + 256) - logits.f32()));
    if (i + 1 < n) logits = m.extend(st, {int32_t(uint8_t(out.back()))});
  }
  return out;
}

// The events of a server-sent event stream: each "data: ..." payload, "[DONE]" included; a stream
// its client left (`cut`) may end inside an event, which is dropped.
std::vector<std::string> events(const std::string& body, bool cut = false) {
  std::vector<std::string> out;
  size_t at = 0;
  for (size_t end; (end = body.find("\n\n", at)) != std::string::npos; at = end + 2) {
    const std::string e = body.substr(at, end - at);
    EXPECT_EQ(e.rfind("data: ", 0), 0u) << e;
    out.push_back(e.substr(6));
  }
  if (!cut) {
    EXPECT_EQ(at, body.size()) << "unterminated event: " << body.substr(at);
  }
  return out;
}

// A stream's text (completion "text" or chat "delta.content") and its finish_reason; checks the
// stream ends with "[DONE]" unless it was `cut`.
std::pair<std::string, std::string> stream_text(const std::string& body, bool chat, bool cut = false) {
  const std::vector<std::string> ev = events(body, cut);
  EXPECT_FALSE(ev.empty());
  if (!cut) {
    EXPECT_EQ(ev.back(), "[DONE]");
  }
  std::string text, reason;
  for (size_t i = 0; i < ev.size() && ev[i] != "[DONE]"; ++i) {
    const json j = json::parse(ev[i]);
    EXPECT_EQ(j["object"], chat ? "chat.completion.chunk" : "text_completion");
    if (j["choices"].empty()) continue;  // the usage chunk
    const json& c = j["choices"][0];
    if (chat && i == 0) {
      EXPECT_EQ(c["delta"]["role"], "assistant");
    }
    text += chat ? c["delta"].value("content", "") : c["text"].get<std::string>();
    if (!c["finish_reason"].is_null()) reason = c["finish_reason"];
  }
  return {text, reason};
}

class Serve : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("longctx_serve_" + std::to_string(getpid()));
    fs::create_directories(dir_);
    checkpoint_ = make_checkpoint(dir_);
  }
  void TearDown() override {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      testing::wait_cli(pid_);
    }
    fs::remove_all(dir_);
  }

  // Starts `longctx serve` on a free port and waits for it to listen.
  void start(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args{"serve", "--checkpoint", checkpoint_, "--port", "0", "--model-name", "tiny"};
    args.insert(args.end(), extra.begin(), extra.end());
    log_ = (dir_ / "serve.log").string();
    pid_ = testing::spawn_cli(args, log_);
    const std::regex listening("listening on http://127\\.0\\.0\\.1:([0-9]+)");
    for (int i = 0; i < 600; ++i) {
      std::smatch m;
      const std::string log = read_log();
      if (std::regex_search(log, m, listening)) {
        port_ = std::stoi(m[1]);
        return;
      }
      ASSERT_EQ(waitpid(pid_, nullptr, WNOHANG), 0) << "serve exited: " << log;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    FAIL() << "serve did not start: " << read_log();
  }

  // Sends SIGTERM and returns the exit status.
  int stop() {
    kill(pid_, SIGTERM);
    const int status = testing::wait_cli(pid_);
    pid_ = -1;
    return status;
  }

  std::string read_log() const {
    std::ifstream f(log_);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
  }

  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(120, 0);
    return c;
  }

  httplib::Result post(const std::string& path, const json& body) const {
    return client().Post(path.c_str(), body.dump(), "application/json");
  }

  json health() const {
    const auto r = client().Get("/health");
    EXPECT_TRUE(r);
    return r ? json::parse(r->body) : json();
  }

  fs::path dir_;
  std::string checkpoint_, log_;
  pid_t pid_ = -1;
  int port_ = 0;
};

TEST_F(Serve, AnswersAndStreamsWhatTheModelGenerates) {
  start();
  EXPECT_EQ(health()["status"], "ok");
  const auto models = client().Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "tiny");

  const std::string prompt = "And God said";
  const std::string want = greedy(checkpoint_, prompt, 40);
  const json ask{{"prompt", prompt}, {"max_tokens", 40}, {"temperature", 0}};
  const auto whole = post("/v1/completions", ask);
  ASSERT_TRUE(whole);
  ASSERT_EQ(whole->status, 200) << whole->body;
  const json w = json::parse(whole->body);
  EXPECT_EQ(w["object"], "text_completion");
  EXPECT_EQ(w["model"], "tiny");
  EXPECT_EQ(w["choices"][0]["text"], want);
  EXPECT_EQ(w["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(w["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(w["usage"]["completion_tokens"], 40);

  json streamed = ask;
  streamed["stream"] = true;
  streamed["stream_options"] = {{"include_usage", true}};
  const auto s = post("/v1/completions", streamed);
  ASSERT_TRUE(s);
  ASSERT_EQ(s->status, 200) << s->body;
  EXPECT_EQ(s->get_header_value("Content-Type"), "text/event-stream");
  EXPECT_EQ(stream_text(s->body, false), (std::pair<std::string, std::string>{want, "length"}));
  const std::vector<std::string> ev = events(s->body);
  ASSERT_GE(ev.size(), 3u);
  EXPECT_EQ(json::parse(ev[ev.size() - 2])["usage"]["completion_tokens"], 40);

  // a stop string ends the text before it, streamed or not
  const std::string stop_at = want.substr(20, 3);
  const std::string before = want.substr(0, want.find(stop_at));
  json stopped = ask;
  stopped["stop"] = {stop_at};
  EXPECT_EQ(json::parse(post("/v1/completions", stopped)->body)["choices"][0]["text"], before);
  stopped["stream"] = true;
  EXPECT_EQ(stream_text(post("/v1/completions", stopped)->body, false), (std::pair<std::string, std::string>{before, "stop"}));

  // chat: the documented template, continued until "\nUser:" or max_tokens
  const std::string chat_want = greedy(checkpoint_, "Be brief.\n\nUser: Hello\n\nAssistant:", 30);
  const size_t turn = chat_want.find("\nUser:");
  const json chat{{"messages", {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Hello"}}}},
                  {"max_tokens", 30}, {"temperature", 0}};
  const json c = json::parse(post("/v1/chat/completions", chat)->body);
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(c["choices"][0]["message"]["content"], chat_want.substr(0, turn));
  EXPECT_EQ(c["choices"][0]["finish_reason"], turn == std::string::npos ? "length" : "stop");
  json chat_stream = chat;
  chat_stream["stream"] = true;
  EXPECT_EQ(stream_text(post("/v1/chat/completions", chat_stream)->body, true).first, chat_want.substr(0, turn));

  // sampling with a seed repeats; top_k is an extension
  const json sampled{{"prompt", prompt}, {"max_tokens", 30}, {"temperature", 0.9}, {"top_k", 20}, {"top_p", 0.95}, {"seed", 5}};
  EXPECT_EQ(json::parse(post("/v1/completions", sampled)->body)["choices"][0]["text"],
            json::parse(post("/v1/completions", sampled)->body)["choices"][0]["text"]);
  EXPECT_EQ(stop(), 0);
}

TEST_F(Serve, BadRequestsGetJsonErrors) {
  start({"--context", "64"});
  struct Case {
    std::string path, body;
    int status;
    std::string param, needle;
  };
  const Case cases[] = {
      {"/v1/completions", "{not json", 400, "", "the request body is not JSON"},
      {"/v1/completions", "[1, 2]", 400, "", "must be a JSON object"},
      {"/v1/completions", R"({"max_tokens": 4})", 400, "prompt", "prompt is required"},
      {"/v1/completions", R"({"prompt": 7})", 400, "prompt", "prompt must be a string"},
      {"/v1/completions", R"({"prompt": "a", "temperature": -1})", 400, "temperature", "temperature must be a number in [0"},
      {"/v1/completions", R"({"prompt": "a", "top_p": 0})", 400, "top_p", "top_p must be a number in (0, 1]"},
      {"/v1/completions", R"({"prompt": "a", "top_k": 2.5})", 400, "top_k", "top_k must be an integer >= 0"},
      {"/v1/completions", R"({"prompt": "a", "max_tokens": 0})", 400, "max_tokens", "max_tokens must be an integer >= 1"},
      {"/v1/completions", R"({"prompt": "a", "max_tokens": 100})", 400, "max_tokens",
       "the prompt (1 tokens) + max_tokens (100) exceed the context of 64 tokens"},
      {"/v1/completions", R"({"prompt": "a", "n": 3})", 400, "n", "n = 3 is not supported"},
      {"/v1/completions", R"({"prompt": "a", "stop": ["", "x"]})", 400, "stop", "stop strings must be non-empty"},
      {"/v1/completions", R"({"prompt": "a", "stream": "yes"})", 400, "stream", "stream must be true or false"},
      {"/v1/completions", R"({"prompt": "a", "temprature": 1})", 400, "temprature", "unknown field 'temprature'"},
      {"/v1/completions", R"({"prompt": ""})", 400, "prompt", "the prompt encodes to no tokens"},
      {"/v1/chat/completions", R"({"messages": []})", 400, "messages", "messages must be a non-empty list"},
      {"/v1/chat/completions", R"({"messages": [{"role": "robot", "content": "hi"}]})", 400, "messages",
       "messages[0].role 'robot' is not system, user or assistant"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user"}]})", 400, "messages", "messages[0].content is missing"},
      {"/v1/nothing", "{}", 404, "", "no route POST /v1/nothing"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    const auto r = client().Post(c.path.c_str(), c.body, "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, c.status);
    const json e = json::parse(r->body)["error"];
    EXPECT_NE(e["message"].get<std::string>().find(c.needle), std::string::npos) << e.dump();
    EXPECT_EQ(e["type"], c.status == 404 ? "not_found_error" : "invalid_request_error");
    if (!c.param.empty()) {
      EXPECT_EQ(e["param"], c.param);
    }
  }
  EXPECT_EQ(health()["status"], "ok");  // none of them reached the engine
  EXPECT_EQ(health()["finished"], 0);
}

// A streaming request that reads its first chunk and then, until `release`, holds on; with
// `leave` its client then closes the connection.
struct HeldStream {
  std::atomic<bool> started{false}, release{false};
  std::string body;
  std::thread thread;
  HeldStream(int port, const json& request, bool leave) {
    thread = std::thread([this, port, request, leave] {
      httplib::Client c("127.0.0.1", port);
      c.set_read_timeout(120, 0);
      httplib::Request req;
      req.method = "POST";
      req.path = "/v1/completions";
      req.body = request.dump();
      req.set_header("Content-Type", "application/json");
      req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
        body.append(data, n);
        started = true;
        while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(5));
        return !leave;
      };
      c.send(req);
    });
    while (!started) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // Lets the client go on (or leave) and returns what it read.
  std::string finish() {
    release = true;
    if (thread.joinable()) thread.join();
    return body;
  }
  ~HeldStream() { finish(); }
};

// The second client arrives while the first is generating (2000 tokens, so for a while): both
// are decoded in one batched step, and each gets its own greedy text (the first, what it read
// before leaving).
TEST_F(Serve, TwoClientsAreDecodedTogether) {
  start({"--max-batch", "2"});
  const std::string a = "In the beginning", b = "Blessed are they";
  HeldStream first(port_, {{"prompt", a}, {"max_tokens", 2000}, {"temperature", 0}, {"stream", true}}, true);
  const auto second = post("/v1/completions", {{"prompt", b}, {"max_tokens", 30}, {"temperature", 0}});
  const json h = health();
  const std::string got_a = stream_text(first.finish(), false, true).first;
  ASSERT_TRUE(second);
  EXPECT_EQ(json::parse(second->body)["choices"][0]["text"], greedy(checkpoint_, b, 30));
  EXPECT_EQ(h["largest_batch"], 2);
  ASSERT_FALSE(got_a.empty());
  EXPECT_EQ(got_a, greedy(checkpoint_, a, int64_t(got_a.size())));  // bytes: one token a character
  EXPECT_EQ(stop(), 0);
}

TEST_F(Serve, FullQueueGets503AndALeavingClientIsCancelled) {
  start({"--max-batch", "1", "--queue", "1"});
  auto running = std::make_unique<HeldStream>(
      port_, json{{"prompt", "a"}, {"max_tokens", 2000}, {"temperature", 0}, {"stream", true}}, true);
  int queued_status = 0;
  json queued_body;
  std::thread queued([&] {
    const auto r = post("/v1/completions", {{"prompt", "b"}, {"max_tokens", 5}});
    queued_status = r ? r->status : -1;
    queued_body = r ? json::parse(r->body) : json();
  });
  for (int i = 0; i < 1000 && health()["queued"] != 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(health()["queued"], 1);
  const auto refused = post("/v1/completions", {{"prompt", "c"}});
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 503);
  EXPECT_EQ(refused->get_header_value("Retry-After"), "1");
  const json e = json::parse(refused->body)["error"];
  EXPECT_EQ(e["type"], "server_overloaded");
  EXPECT_NE(e["message"].get<std::string>().find("1 requests running and 1 waiting"), std::string::npos) << e.dump();
  running.reset();  // the first client leaves: its job is cancelled long before its 2000 tokens
  queued.join();
  EXPECT_EQ(queued_status, 200);
  EXPECT_EQ(queued_body["usage"]["completion_tokens"], 5);
  for (int i = 0; i < 1000 && health()["active"] != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(health()["finished"], 2);
  EXPECT_EQ(stop(), 0);
}

TEST_F(Serve, SigtermFinishesAcceptedRequestsThenExits) {
  start();
  HeldStream running(port_, {{"prompt", "a"}, {"max_tokens", 1500}, {"temperature", 0}, {"stream", true},
                             {"stream_options", {{"include_usage", true}}}}, false);
  kill(pid_, SIGTERM);
  for (int i = 0; i < 1000 && health()["status"] != "shutting_down"; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const auto late = post("/v1/completions", {{"prompt", "b"}});
  ASSERT_TRUE(late);
  EXPECT_EQ(late->status, 503);
  EXPECT_NE(late->body.find("the server is shutting down"), std::string::npos) << late->body;
  const std::vector<std::string> ev = events(running.finish());
  ASSERT_GE(ev.size(), 3u);
  EXPECT_EQ(ev.back(), "[DONE]");
  EXPECT_EQ(json::parse(ev[ev.size() - 2])["usage"]["completion_tokens"], 1500);  // finished, not cut
  const int status = testing::wait_cli(pid_);
  pid_ = -1;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << read_log();
  EXPECT_NE(read_log().find("finishing 1 running and 0 waiting requests"), std::string::npos) << read_log();
}

}  // namespace
}  // namespace longctx
