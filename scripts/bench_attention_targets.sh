#!/usr/bin/env bash
# The measurements behind docs/BENCHMARKS.md "Dense flash attention and MoBA": each line one
# `longctx bench attention` run (dense and MoBA side by side), JSON into docs/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
B=./build/longctx
out=docs/results
mkdir -p "$out"
$B bench attention --methods dense --lengths 16384 --heads 8 --kv-heads 8 --head-dim 128 --mode fwd --json $out/dense_fwd_16k.json
$B bench attention --methods dense --lengths 16384 --heads 8 --kv-heads 8 --head-dim 128 --mode fwdbwd --reps 1 --json $out/dense_fwdbwd_16k.json
for k in 3 12; do
  $B bench attention --methods dense,moba --lengths 65536,262144 --heads 1 --kv-heads 1 --head-dim 128 \
     --block-size 4096 --top-k $k --mode fwd --reps 1 --min-seconds 0 --json $out/moba_fwd_top$k.json
  $B bench attention --methods dense,moba --lengths 65536 --heads 1 --kv-heads 1 --head-dim 128 \
     --block-size 4096 --top-k $k --mode fwdbwd --reps 1 --min-seconds 0 --json $out/moba_fwdbwd_top$k.json
done
