#!/usr/bin/env bash
# The table of docs/EXPERIMENTS.md section 2 from the outputs of scripts/experiments.sh: one markdown
# row per run that has finished, in the order given (default: the driver's order).
#
#   scripts/experiments_table.sh [--root runs/experiments] [RUN ...]
#
# Columns: parameters; validation loss (nats/byte, `longctx eval` over the val split) and its ratio
# to the full-attention run; loss of the last position bucket; passkey accuracy at 1x and 4x the
# training length (after the passkey fine-tune); training tokens/s (median over steps, validation
# excluded); eval tokens/s (the loss pass); peak RSS of the 4x passkey eval; the passkey fine-tune's
# last validation loss on the answer tokens (docs/EVAL.md: uniform digit guessing scores 1.64).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt_need.sh
need jq

root=runs/experiments
if [ "${1:-}" = --root ]; then root=$2; shift 2; fi
order=(full moba moba_last_full topk threshold nsa infini moe)
(($#)) && order=("$@")

full_loss=""
[ -f "$root/full/eval.json" ] && full_loss=$(jq .machine.val_loss "$root/full/eval.json")

echo "| run | attention (per layer) | FFN | params | val loss | vs full | last bucket loss | passkey 1x | passkey 4x | train tok/s | eval tok/s | 4x eval peak RSS | FT answer loss |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for run in "${order[@]}"; do
  dir=$root/$run
  [ -f "$dir/eval.json" ] && [ -f "$dir/passkey.json" ] && [ -f "$dir/log.jsonl" ] || { echo "($run: not finished)" >&2; continue; }
  train_tps=$(jq -s '[.[] | select(has("val_loss") | not) | .tokens_per_s] | sort | .[length / 2 | floor]' "$dir/log.jsonl")
  ft_loss=$(jq -s '[.[] | select(has("val_loss"))][-1].val_loss' "$dir/passkey/log.jsonl")
  jq -r --arg run "$run" --arg full "$full_loss" --argjson train_tps "$train_tps" --argjson ft "$ft_loss" \
    --slurpfile pk "$dir/passkey.json" '
    def pct: . * 100 | round | tostring + "%";
    def acc($i): $pk[0].passkey as $p | [$p.cells[] | select(.length == $p.lengths[$i])] |
      ((map(.correct) | add) / (map(.trials) | add) | pct) + " (" + ((map(.correct) | add) | tostring) + "/" +
      ((map(.trials) | add) | tostring) + ")";
    .machine as $m | $m.model.config as $c |
    "| \($run) | \($m.model.attention | join(",")) | \($c.layers[0].ffn.kind)" +
    (if ($c.layers[0].ffn.kind) == "moe" then " E\($c.layers[0].ffn.num_experts) k\($c.layers[0].ffn.top_k)" else "" end) +
    " | \($m.model.parameters) | \($m.val_loss * 10000 | round / 10000)" +
    " | \(if $full == "" then "" else (($m.val_loss / ($full | tonumber) - 1) * 1000 | round / 10 | tostring) + "%" end)" +
    " | \(.rows[-1].loss * 10000 | round / 10000) | \(acc(0)) | \(acc(1))" +
    " | \($train_tps | round) | \($m.tokens_per_s | round) | \($pk[0].machine.peak_rss_mb | round) MiB | \($ft * 1000 | round / 1000) |"
  ' "$dir/eval.json"
done
