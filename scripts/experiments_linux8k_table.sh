#!/usr/bin/env bash
# The tables of docs/EXPERIMENTS.md section 2 from the outputs of scripts/experiments_linux8k.sh: one
# markdown row per finished run, in the order given (default: the driver's order).
#
#   scripts/experiments_linux8k_table.sh [--root runs/experiments] [RUN ...]
#
# Quality: validation loss (nats/byte over the val split, 8192-token windows) and its change from
# the full-attention run; loss of the last 1024-position bucket; the same over 32768-token windows
# (4x the training length; last bucket = positions 28672-32767); passkey accuracy at 1x and 4x the
# training length after the passkey fine-tune, and that fine-tune's last validation loss on the
# answer tokens (docs/EVAL.md: uniform digit guessing scores 1.64).
# Cost: training tokens/s (from `experiments.sh --bench-only`, all runs timed back to back, when
# RUN/bench_train.json exists; else the median over the run's own steps, marked *), eval tokens/s at
# 1x and 4x, and the peak RSS of the 4x eval.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt_need.sh
need jq

root=runs/experiments
if [ "${1:-}" = --root ]; then root=$2; shift 2; fi
order=(full moba moba_last_full topk threshold nsa infini moe)
(($#)) && order=("$@")
files=(log.jsonl eval.json eval_4x.json passkey.json passkey/log.jsonl)

# One JSON object per finished run with everything the tables show.
rows=$(for run in "${order[@]}"; do
  dir=$root/$run ok=1
  for f in "${files[@]}"; do [ -f "$dir/$f" ] || ok=0; done
  ((ok)) || { echo "($run: not finished)" >&2; continue; }
  bench=null; [ -f "$dir/bench_train.json" ] && bench=$(jq .rows[0].tokens_per_s "$dir/bench_train.json")
  jq -n --arg run "$run" --argjson bench "$bench" --slurpfile log "$dir/log.jsonl" --slurpfile ft "$dir/passkey/log.jsonl" \
    --slurpfile e1 "$dir/eval.json" --slurpfile e4 "$dir/eval_4x.json" --slurpfile pk "$dir/passkey.json" '
    def acc($i): $pk[0].passkey as $p | [$p.cells[] | select(.length == $p.lengths[$i])] |
      {correct: (map(.correct) | add), trials: (map(.trials) | add)};
    $e1[0].summary as $m | $m.model.config.layers[0].ffn as $ffn |
    {run: $run, attention: ($m.model.attention | join(",")),
     ffn: ($ffn.kind + (if $ffn.kind == "moe" then " E\($ffn.num_experts) k\($ffn.top_k)" else "" end)),
     params: $m.model.parameters, loss: $m.val_loss, last: $e1[0].rows[-1].loss,
     loss4: $e4[0].summary.val_loss, last4: $e4[0].rows[-1].loss, pk1: acc(0), pk4: acc(1),
     ft: ([$ft[] | select(has("val_loss"))][-1].val_loss),
     train_tps: (if $bench != null then ($bench | round | tostring) else
       ([$log[] | select(has("val_loss") | not) | .tokens_per_s] | sort | .[length / 2 | floor] | round | tostring) + "*" end),
     eval_tps: $m.tokens_per_s, eval4_tps: $e4[0].summary.tokens_per_s, rss4: $e4[0].summary.peak_rss_mb}'
done | jq -s .)

jq -r '
  def f4: . * 10000 | round / 10000 | tostring;
  def pk: "\(.correct * 100 / .trials | round)% (\(.correct)/\(.trials))";
  (map(select(.run == "full"))[0].loss) as $full |
  def vs: if $full == null then "" else ((. / $full - 1) * 1000 | round / 10 | tostring) + "%" end;
  "| run | attention (per layer) | FFN | val loss | vs full | last bucket | val loss at 4x | last bucket at 4x | passkey 1x | passkey 4x | FT answer loss |",
  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  (.[] | "| \(.run) | \(.attention) | \(.ffn) | \(.loss | f4) | \(.loss | vs) | \(.last | f4) | \(.loss4 | f4) | \(.last4 | f4) | \(.pk1 | pk) | \(.pk4 | pk) | \(.ft * 1000 | round / 1000) |"),
  "",
  "| run | params | train tok/s | eval tok/s (8K windows) | eval tok/s (32K windows) | peak RSS of the 32K eval |",
  "|---|---:|---:|---:|---:|---:|",
  (.[] | "| \(.run) | \(.params) | \(.train_tps) | \(.eval_tps | round) | \(.eval4_tps | round) | \(.rss4 | round) MiB |")
' <<< "$rows"
