// The transformer's forward in plain double-precision loops (attention through the naive
// references), for checking the fast model's loss and, by finite differences, its gradients.
#pragma once
#include <longctx/attention/engine/reference.hpp>
#include <longctx/model/config.hpp>
#include <longctx/model/transformer.hpp>

#include <vector>

namespace longctx::reference {

// The discrete choices of the sparse layers, per layer: the visibility masks of moba, topk and
// threshold layers (full layers too) and the selected blocks of nsa layers. A model_loss call
// with an empty tape records them; later calls with the recorded tape replay them, so finite
// differences around a point hold the selection fixed (no gradient flows through a top-k or a
// stop rule, as in the fast backward).
struct SelectionTape {
  std::vector<Mask> masks;
  std::vector<std::vector<int32_t>> nsa;
  bool recorded = false;
};

// Mean next-token loss of `batch` under `params` (one vector per Transformer parameter, same order
// and shapes) plus the MoE layers' weighted balancing losses: the training objective.
// `force_full` runs moba/topk/threshold layers as full attention, as
// Transformer::force_full_attention (nsa and infini layers keep their kind). Noisy MoE routers
// draw the Transformer's train-time noise at its default seed (set_moe_noise_seed(0)).
double model_loss(const ModelConfig& cfg, const std::vector<std::vector<double>>& params, const Batch& batch,
                  bool force_full = false, SelectionTape* tape = nullptr);

}  // namespace longctx::reference
