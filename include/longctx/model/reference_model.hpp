// The transformer's forward in plain double-precision loops (attention through the naive
// references), for checking the fast model's loss and, by finite differences, its gradients.
#pragma once
#include <longctx/model/config.hpp>
#include <longctx/model/transformer.hpp>

#include <vector>

namespace longctx::reference {

// Mean next-token loss of `batch` under `params` (one vector per Transformer parameter, same order
// and shapes) plus the MoE layers' weighted balancing losses: the training objective.
// `force_full` runs MoBA layers as full attention, as Transformer::force_full_attention.
double model_loss(const ModelConfig& cfg, const std::vector<std::vector<double>>& params, const Batch& batch,
                  bool force_full = false);

}  // namespace longctx::reference
