#include "decode_flags.hpp"

#include <fmt/format.h>

#include "commands.hpp"

namespace longctx::cli {

void add_kv_dtype_option(CLI::App* c, std::string& kv_dtype) {
  const auto& names = EnumNames<KVDType>::names;
  c->add_option("--kv-dtype", kv_dtype, "KV cache storage: f32, bf16 or int8 (one scale per token and KV head)")
      ->check(CLI::IsMember(std::vector<std::string>(names.begin(), names.end())))
      ->capture_default_str();
}

void DecodeFlags::add(CLI::App* c) {
  add_kv_dtype_option(c, kv_dtype);
  c->add_option("--kv-budget", pruning.budget,
                "SpAtten cascade pruning: tokens each layer's KV cache keeps (one value, or one per layer, "
                "non-increasing); full-attention layers only")
      ->delimiter(',')
      ->check(at_least(1));
  c->add_option("--kv-window", pruning.window, "With --kv-budget: most recent tokens never pruned")
      ->check(at_least(1))
      ->capture_default_str();
  c->add_option("--kv-sink", pruning.sink, "With --kv-budget: first tokens never pruned")
      ->check(at_least(0))
      ->capture_default_str();
  c->add_option("--kv-chunk", pruning.chunk,
                "With --kv-budget: most tokens per step (0: a quarter of the smallest budget, at most 256)")
      ->check(at_least(0))
      ->capture_default_str();
}

DecodeOptions DecodeFlags::options(const std::string& who, int64_t layers) const {
  if (pruning.enabled()) pruning.validate(layers);
  return DecodeOptions(enum_from_name<KVDType>(kv_dtype, (who + ": --kv-dtype").c_str()), pruning);
}

std::string DecodeFlags::describe() const {
  if (!pruning.enabled()) return kv_dtype + " KV cache";
  std::string b;
  for (int64_t x : pruning.budget) b += (b.empty() ? "" : ",") + std::to_string(x);
  return fmt::format("{} KV cache, budget {} (window {}, sink {})", kv_dtype, b, pruning.window, pruning.sink);
}

}  // namespace longctx::cli
