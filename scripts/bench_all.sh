#!/usr/bin/env bash
# Every benchmark behind docs/BENCHMARKS.md, one after the other (run it on an otherwise idle
# machine: each table's ratios are measured side by side, but absolute times follow the load).
# Output: docs/results/*.json and the tables on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
B=./build/longctx
out=docs/results
mkdir -p $out
scripts/bench_attention_targets.sh
$B bench attention --methods dense,nsa --lengths 65536 --heads 16 --kv-heads 1 --head-dim 128 --mode fwd \
   --reps 1 --min-seconds 0 --json $out/nsa_fwd_64k.json
$B bench attention --methods dense,nsa --lengths 65536 --heads 16 --kv-heads 1 --head-dim 128 --mode decode \
   --json $out/nsa_decode_64k.json
$B bench moe --cases dense:2816,moe:8:2:1408,moe:64:8:352 --reps 2 --rounds 2 --json $out/moe.json
$B bench decode --lengths 4096,65536,1048576 --min-seconds 0.3 --json $out/decode.json
$B bench threshold --length 32768 --queries 128 --json $out/threshold.json
$B bench infini --json $out/infini.json
scripts/bench_vs_pytorch.sh 4096
