#include <longctx/attention/kind/kind.hpp>
#include <longctx/core/error.hpp>

namespace longctx {

AttentionKind attention_kind_from_name(const std::string& name) {
  const auto& names = EnumNames<AttentionKind>::names;
  for (size_t i = 0; i < names.size(); ++i)
    if (name == names[i]) return AttentionKind(i);
  std::string available;
  for (const char* n : names) available += (available.empty() ? "" : ", ") + std::string(n);
  LONGCTX_CHECK(false, "unknown attention kind '", name, "' (available: ", available, ")");
  return AttentionKind::full;
}

bool approximates_full(AttentionKind k) {
  return k == AttentionKind::moba || k == AttentionKind::topk || k == AttentionKind::threshold;
}

AttentionSpec AttentionSpec::defaults(AttentionKind k) {
  switch (k) {
    case AttentionKind::full: return AttentionOptions{};
    case AttentionKind::moba: return MobaOptions{};
    case AttentionKind::topk: return TopkOptions{};
    case AttentionKind::threshold: return ThresholdOptions{};
    case AttentionKind::nsa: return NsaConfig{};
    case AttentionKind::infini: return InfiniOptions{};
  }
  return {};
}

void AttentionSpec::validate(const std::string& prefix) const {
  visit([&](const auto& o) { o.validate(prefix); });
}

int64_t AttentionSpec::stats_block_size() const {
  switch (kind()) {
    case AttentionKind::moba: return get<MobaOptions>().block_size;
    case AttentionKind::topk: return get<TopkOptions>().token_level ? 0 : get<TopkOptions>().block_size;
    case AttentionKind::threshold: return get<ThresholdOptions>().block_size;
    case AttentionKind::full:
    case AttentionKind::nsa:
    case AttentionKind::infini: return 0;
  }
  return 0;
}

}  // namespace longctx
