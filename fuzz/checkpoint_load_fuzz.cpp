// libFuzzer target: the whole checkpoint loading path on arbitrary files: load_safetensors (header
// checks, data, non-finite values), checkpoint_config (the model config metadata), the
// Transformer of that config and load_weights. The input is written to a file (the loader reads
// files). Every refusal must be a std::runtime_error or std::invalid_argument whose message starts
// "longctx: "; anything else escaping (std::bad_alloc, a JSON library exception) is a crash, as are
// sanitizer reports. A model that loads then computes logits on a few tokens (finite but huge
// weights overflow to NaN there: the first fuzz run found simd::exp_approx converting NaN to int,
// undefined behaviour, now fixed; the input is in the seed corpus).
#include <longctx/model/checkpoint.hpp>

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace {

// RoPE's table is max_seq_len long whatever the file holds; the loader is asked for a short one.
constexpr int64_t kSeqLen = 16;

const std::string& input_path() {
  static const std::string path = [] {
    const char* dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    return std::string(dir) + "/longctx_checkpoint_fuzz." + std::to_string(getpid()) + ".safetensors";
  }();
  return path;
}

void check_message(const std::exception& e) {
  if (std::string(e.what()).rfind("longctx: ", 0) != 0) {
    std::fprintf(stderr, "checkpoint_load_fuzz: error without the longctx prefix: %s\n", e.what());
    std::abort();
  }
}

int remove_input(const std::string& path) {
  std::remove(path.c_str());
  return 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace longctx;
  const std::string& path = input_path();
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(data, 1, size, f) != size || std::fclose(f) != 0) {
    std::perror(path.c_str());
    std::abort();
  }
  try {
    std::string tokenizer;
    Transformer m = load_model(path, &tokenizer, kSeqLen);
    const int32_t vocab = int32_t(m.config().vocab_size);
    Batch b;
    b.tokens = {0, 1 % vocab, 2 % vocab, 3 % vocab};
    b.cu_seqlens = {0, 4};
    (void)m.logits(b);
  } catch (const std::runtime_error& e) {
    check_message(e);
  } catch (const std::invalid_argument& e) {
    check_message(e);
  }
  return remove_input(path);
}
