#!/usr/bin/env bash
# The compute benchmarks (docs/BENCHMARKS.md "Own GEMM kernels"): every figure beside the machine's
# peaks measured in the same run, and the engine at the commit before its own kernels (built here
# from git into build-baseline/, OpenBLAS products) run back to back with the current build.
# Run it on an otherwise idle machine; ~15 minutes. JSON into docs/results/compute_*.json.
#   scripts/bench_compute.sh [baseline-commit]
set -euo pipefail
cd "$(dirname "$0")/.."
base_commit=${1:-5e1b0bd}
B=./build/longctx
out=docs/results
mkdir -p $out
if [ ! -x build-baseline/longctx ] || [ "$(cat build-baseline/.commit 2>/dev/null)" != "$base_commit" ]; then
  rm -rf build-baseline-src && git worktree prune
  git worktree add -f --detach build-baseline-src "$base_commit"
  cmake -S build-baseline-src -B build-baseline -G Ninja -DCMAKE_BUILD_TYPE=Release -DLONGCTX_TESTS=OFF > /dev/null
  cmake --build build-baseline -j"$(nproc)" --target longctx_cli
  echo "$base_commit" > build-baseline/.commit
  git worktree remove --force build-baseline-src
fi
OLD=./build-baseline/longctx
uptime
dense="--methods dense --lengths 16384 --heads 8 --kv-heads 8 --head-dim 128 --min-seconds 0"
$B bench attention $dense --mode fwd --reps 2 --json $out/compute_dense_fwd.json
$B bench attention $dense --mode fwd --reps 2 --dtype bf16 --json $out/compute_dense_fwd_bf16.json
$B bench attention $dense --mode fwdbwd --reps 1 --json $out/compute_dense_fwdbwd.json
$OLD bench attention $dense --mode fwd --reps 2 --json $out/compute_dense_fwd_baseline.json
$OLD bench attention $dense --mode fwdbwd --reps 1 --json $out/compute_dense_fwdbwd_baseline.json
for mode in fwd fwdbwd; do
  for k in 3 12; do
    $B bench attention --methods dense,moba --lengths 65536 --heads 1 --kv-heads 1 --head-dim 128 --block-size 4096 \
      --top-k $k --mode $mode --reps 1 --min-seconds 0 --json $out/compute_moba_b4096_top${k}_$mode.json
  done
  $B bench attention --methods dense,moba --lengths 32768 --heads 1 --kv-heads 1 --head-dim 128 --block-size 128 \
    --top-k 8 --mode $mode --reps 1 --min-seconds 0 --json $out/compute_moba_b128_top8_$mode.json
  $B bench attention --methods dense,topk,nsa --lengths 32768 --heads 4 --kv-heads 1 --head-dim 128 --block-size 512 \
    --top-k 8 --mode $mode --reps 1 --min-seconds 0 --json $out/compute_topk_nsa_$mode.json
done
# Training steps: three rounds, the engines alternating, so a slow stretch of the shared machine
# hits all of them; the summary keeps each engine's best round.
for round in 1 2 3; do
  for run in "$OLD full_baseline configs/bench_6x256_full.json" "$B full configs/bench_6x256_full.json" \
             "$B full_bf16 configs/bench_6x256_full_bf16.json"; do
    set -- $run
    $1 bench train --config "$3" --seq-len 4096 --steps 5 --json $out/compute_train_$2.r$round.json
  done
done
source scripts/apt_need.sh
need python3-torch
bench/torch_train.py --config configs/bench_6x256_full.json --seq-len 4096 --threads "$(nproc)" \
  --json $out/compute_train_pytorch.json
/usr/bin/python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def tps(name):
    return json.load(open(f"{out}/compute_train_{name}.json"))["rows"][0]["tokens_per_s"]
best = {k: max(tps(f"{k}.r{r}") for r in (1, 2, 3)) for k in ("full_baseline", "full", "full_bf16")}
best["pytorch"] = tps("pytorch")
print("train tokens/s, best of 3 rounds: " + ", ".join(f"{k} {v:.0f}" for k, v in best.items()))
print(f"fp32 / baseline {best['full'] / best['full_baseline']:.2f}x, "
      f"bf16 / baseline {best['full_bf16'] / best['full_baseline']:.2f}x, "
      f"fp32 / pytorch {best['full'] / best['pytorch']:.2f}x")
PY
uptime
