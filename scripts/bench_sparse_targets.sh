#!/usr/bin/env bash
# The measurements behind issue 18 item 4 (fast top-k and mass-threshold training) and issue 15
# item 3 (MoBA with small blocks stays fast), all on the block-sparse engine: each line one
# `longctx bench attention` run with dense side by side (speedup, ideal = attended pairs of dense /
# of the method, of_ideal), then training steps of the same 8K model with full, top-k and
# threshold attention. JSON into docs/results/sparse_*.json. About an hour on an idle 2-core machine
# (dense forward + backward at 32K with 4 heads is most of it).
#   scripts/bench_sparse_targets.sh [CHECKPOINT]   CHECKPOINT: also time training steps from a
#                                                   trained model's weights (bench train --init-from)
set -euo pipefail
cd "$(dirname "$0")/.."
B=./build/longctx
out=docs/results
mkdir -p "$out"
# top-k and threshold, the 8K training model's attention shape (2 heads of 64, B = 64, top-24)
$B bench attention --methods dense,topk,threshold --lengths 8192 --heads 2 --kv-heads 2 --head-dim 64 \
   --block-size 64 --top-k 24 --mode fwdbwd --json $out/sparse_fwdbwd_8k.json
# at 32K, 4 query heads over 1 KV head, d = 128: large blocks (the issue's shape) and small ones
for bk in 512:8 64:32; do
  $B bench attention --methods dense,topk,threshold --lengths 32768 --heads 4 --kv-heads 1 --head-dim 128 \
     --block-size ${bk%:*} --top-k ${bk#*:} --mode fwdbwd --reps 1 --min-seconds 0 \
     --json $out/sparse_fwdbwd_32k_B${bk%:*}.json
done
# MoBA with small blocks: B = 128, top-8 at 32K, forward and forward + backward
for mode in fwd fwdbwd; do
  $B bench attention --methods dense,moba --lengths 32768 --heads 1 --kv-heads 1 --head-dim 128 \
     --block-size 128 --top-k 8 --mode $mode --reps 3 --min-seconds 0 --json $out/moba_B128_${mode}_32k.json
done
# training steps: the same model with full, top-k and threshold attention (random weights; the line
# after each reports the keys the sparse layers attended)
for k in full topk threshold; do
  $B bench train --config configs/bench_8k_$k.json --steps 3 --json $out/sparse_train_8k_$k.json
done
if (($#)); then
  for k in full topk threshold; do
    $B bench train --config configs/bench_8k_$k.json --steps 3 --init-from "$1" --json $out/sparse_train_8k_${k}_trained.json
  done
fi
