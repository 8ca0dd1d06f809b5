#!/usr/bin/env bash
# The tables of docs/EXPERIMENTS.md section 5 from the outputs of scripts/experiments.sh: per run
# name, the mean and the spread (min..max) over its seeds of
#   - passkey and multi-key needle accuracy at 1x, 2x, 4x the training length (RULER grid, exact
#     match, %; the FFN runs: passkey at 1x only),
#   - validation loss (nats/byte over windows of the training length of held-out books) and the
#     loss of the last position bucket,
#   - training tokens/s of the run's last stage (median over its steps: one thread, two jobs side
#     by side, so a comparison of runs, not a benchmark),
# and the per-seed numbers as JSON lines with --raw.
#
#   scripts/experiments_table.sh [--root runs/retrieval] [--raw] [NAME ...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt_need.sh
need jq

root=runs/retrieval raw=0
while (($#)); do
  case $1 in
    --root) root=$2; shift 2 ;;
    --raw) raw=1; shift ;;
    *) break ;;
  esac
done
names=(full moba moba_small_kconv moba_b4 moba_b4_kconv moba_b2 moba_b2_kconv moba_last_full nsa topk topk_progressive topk_4m threshold infini ffn_dense ffn_moe
  ffn_moe_bias_free)
(($#)) && names=("$@")

# One JSON object per finished run (an eval.json exists); an accuracy the eval did not run is null.
rows=$(for name in "${names[@]}"; do
  for dir in "$root/$name".s*; do
    [ -f "$dir/eval.json" ] || continue
    log=$dir/stage2/log.jsonl; [ -f "$log" ] || log=$dir/stage1/log.jsonl
    jq -c --arg name "$name" --arg run "${dir##*/}" --slurpfile log "$log" '
      .ruler as $r |
      def acc($task; $i): [$r.summary[] | select(.task == $task and .length == $r.lengths[$i])] |
        if length == 0 then null else .[0].correct / .[0].trials * 100 end;
      {name: $name, run: $run, params: .summary.model.parameters,
       pk1: acc("passkey"; 0), pk2: acc("passkey"; 1), pk4: acc("passkey"; 2),
       mk1: acc("multikey"; 0), mk2: acc("multikey"; 1), mk4: acc("multikey"; 2),
       loss: .summary.val_loss, last: .rows[-1].loss,
       tps: ([$log[] | .tokens_per_s] | sort | .[length / 2 | floor])}' "$dir/eval.json"
  done
done)
if ((raw)); then echo "$rows"; exit 0; fi
[ -n "$rows" ] || { echo "experiments_table.sh: no finished run under $root" >&2; exit 1; }

echo "$rows" | jq -rs --argjson order "$(printf '%s\n' "${names[@]}" | jq -R . | jq -s .)" '
  def r($f): . * $f | round / $f;
  def stat($k; $f): map(.[$k]) | map(select(. != null)) |
    if length == 0 then "-" else (add / length) as $m |
      "\($m | r($f))" + (if length > 1 then " (\(min | r($f))..\(max | r($f)))" else "" end) end;
  group_by(.name) | map({key: .[0].name, value: .}) | from_entries as $g |
  "| run | seeds | params | passkey 1x | 2x | 4x | multi-key 1x | 2x | 4x | val loss | last-bucket loss | train tokens/s |",
  "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ($order[] | select($g[.]) | . as $n | $g[$n] |
   "| \($n) | \(length) | \(.[0].params) | \(stat("pk1"; 1)) | \(stat("pk2"; 1)) | \(stat("pk4"; 1)) | " +
   "\(stat("mk1"; 1)) | \(stat("mk2"; 1)) | \(stat("mk4"; 1)) | \(stat("loss"; 1000)) | \(stat("last"; 1000)) | " +
   "\(stat("tps"; 1)) |")'
