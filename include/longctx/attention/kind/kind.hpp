// The attention kinds a model layer (or a decode call) can run, each with its kernel's own
// options struct: full (dense flash, attention/dense), moba, topk, threshold (attention/sparse),
// nsa and infini. AttentionSpec holds exactly one kind's options; the kind is which one it holds,
// so a kind and options of another kind cannot be combined by mistake.
#pragma once
#include <longctx/attention/common.hpp>
#include <longctx/attention/infini/infini.hpp>
#include <longctx/attention/moba/moba.hpp>
#include <longctx/attention/nsa/nsa.hpp>
#include <longctx/attention/sparse/threshold.hpp>
#include <longctx/attention/sparse/topk.hpp>
#include <longctx/core/fields.hpp>

#include <cstdint>
#include <string>
#include <variant>

namespace longctx {

// In the order of AttentionSpec::Options' alternatives.
enum class AttentionKind : uint8_t { full, moba, topk, threshold, nsa, infini };
template <>
struct EnumNames<AttentionKind> {
  static constexpr std::array<const char*, 6> names{"full", "moba", "topk", "threshold", "nsa", "infini"};
};
// Throws "unknown attention kind 'x' (available: full, moba, topk, threshold, nsa, infini)".
AttentionKind attention_kind_from_name(const std::string& name);

// moba, topk and threshold: parameter-free sparse approximations of full attention. A model can
// run them as full attention (Transformer::force_full_attention); nsa and infini have their own
// parameters and keep their architecture.
bool approximates_full(AttentionKind k);

struct AttentionSpec {
  // full: the model's layers are causal with the default scale, so its fields list is empty.
  using Options = std::variant<AttentionOptions, MobaOptions, TopkOptions, ThresholdOptions, NsaConfig, InfiniOptions>;
  Options options;

  AttentionSpec() = default;
  template <class O>
  AttentionSpec(O o) : options(std::move(o)) {}  // NOLINT: a kind's options are its spec
  static AttentionSpec defaults(AttentionKind k);  // the kind with its kernel's default options

  AttentionKind kind() const { return AttentionKind(options.index()); }
  const char* name() const { return enum_name(kind()); }
  template <class O>
  const O& get() const {
    return std::get<O>(options);
  }
  template <class F>
  decltype(auto) visit(F&& f) {
    return std::visit(std::forward<F>(f), options);
  }
  template <class F>
  decltype(auto) visit(F&& f) const {
    return std::visit(std::forward<F>(f), options);
  }
  // Throws "<prefix><field> must be <rule>, got <value>" (each options struct's validate()).
  void validate(const std::string& prefix) const;
  // Block of the KV cache statistics (MoBA's key sums, Quest's min/max) this kind reads in
  // decode; 0 when it reads none (full, token-level topk, nsa, infini).
  int64_t stats_block_size() const;
  // A full layer's sliding window (AttentionOptions::window); 0 (none) for every other kind.
  int64_t window() const { return kind() == AttentionKind::full ? get<AttentionOptions>().window : 0; }
};

}  // namespace longctx
