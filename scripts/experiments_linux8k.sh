#!/usr/bin/env bash
# The head-to-head experiments of docs/EXPERIMENTS.md section 2 (issue 8): the same byte-level model
# (configs/experiments/linux8k_base.json: same data, tokens, seed) trained with each attention kind
# and with dense vs MoE FFN of the same active size, then
#   1. eval: validation loss and position-wise loss over 8192-token windows of the Linux val split,
#      and over 32768-token windows (4x the training length: length generalisation, time, memory);
#   2. the same short answer-only passkey fine-tune for every run (train --init-from, score_last 7);
#   3. passkey accuracy at 1x and 4x the training length.
# Results: runs/experiments/<run>/{config.json,log.jsonl,eval.json,eval_4x.json,passkey.json}; the tables
# (markdown) is printed by scripts/experiments_linux8k_table.sh.
#
#   scripts/experiments_linux8k.sh [--train-only | --eval-only | --bench-only] [RUN ...]   default: every run
#   below, in order; --bench-only times training steps of each run's config back to back
#   (`longctx bench train`, 8192 random tokens, best of 3), for throughput ratios measured side by side.
# A run whose checkpoint exists resumes (and a finished one is not retrained). RUN.sN (e.g. full.s2)
# repeats RUN with data seed N and weight-init seed 1234 + N, to measure run-to-run noise.
# Environment: STEPS (training steps, default from the base config), FT_STEPS (passkey fine-tune
# steps, 60), THREADS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt_need.sh
need jq

base=configs/experiments/linux8k_base.json
data=data/linux
ft_data=data/linux_passkey_ft
out_root=runs/experiments
threads=${THREADS:-2}
ft_steps=${FT_STEPS:-60}
seq_len=$(jq .train.seq_len "$base")

# Each run: a jq filter over the base config. Sparse kinds keep the same parameter count (their
# only extra weights are NSA's compressors and gates, Infini's per-head gate).
declare -A runs=(
  [full]='.'
  [moba]='.model.attention = {"kind": "moba", "block_size": 512, "top_k": 3}'
  [moba_last_full]='.model.attention = {"kind": "moba", "block_size": 512, "top_k": 3} | .model.full_attention_last_n = 1'
  [topk]='.model.attention = {"kind": "topk", "block_size": 64, "top_k": 24}'
  [threshold]='.model.attention = {"kind": "threshold", "block_size": 64, "tau": 0.95}'
  [nsa]='.model.attention = {"kind": "nsa", "block_len": 32, "stride": 16, "select_len": 64, "top_n": 16, "window": 512, "compress": "mean"}'
  [infini]='.model.attention = {"kind": "infini", "segment_len": 2048}'
  [moe]='.model.ffn = {"kind": "moe", "num_experts": 8, "top_k": 2, "d_ff": 172}'
)
order=(full moba moba_last_full topk threshold nsa infini moe)
phases=(train eval)
case ${1:-} in
  --train-only) phases=(train); shift ;;
  --eval-only) phases=(eval); shift ;;
  --bench-only) phases=(bench); shift ;;
esac
(($#)) && order=("$@")

[ -d "$data/train" ] || scripts/prepare_data.sh linux
[[ " ${phases[*]} " == *" eval "* && ! -d "$ft_data/train" ]] && ./longctx passkey-corpus --data "$data" --out "$ft_data" --docs 400 --length "$((seq_len - 8))" --seed 7

for run in "${order[@]}"; do
  name=${run%.s*} seed=
  [[ $run == *.s* ]] && seed=${run##*.s}
  filter=${runs[$name]:?unknown run $name (known: ${!runs[*]})}
  dir=$out_root/$run
  mkdir -p "$dir"
  jq "$filter${STEPS:+ | .train.steps = $STEPS}${seed:+ | .train.seed = $seed}" "$base" > "$dir/config.json"
  if [[ " ${phases[*]} " == *" train "* ]]; then
    echo "=== $run: train" >&2
    resume=(); [ -f "$dir/checkpoint.safetensors" ] && resume=(--resume)
    ./longctx train --config "$dir/config.json" --data "$data" --out "$dir" --threads "$threads" "${resume[@]}" \
      --init-seed $((1234 + ${seed:-0}))
  fi
  if [[ " ${phases[*]} " == *" bench "* ]]; then
    ./longctx bench train --config "$dir/config.json" --seq-len "$seq_len" --steps 3 --threads "$threads" \
      --json "$dir/bench_train.json"
  fi
  [[ " ${phases[*]} " == *" eval "* ]] || continue
  echo "=== $run: eval" >&2
  ./longctx eval --checkpoint "$dir/checkpoint.safetensors" --data "$data" --seq-len "$seq_len" --bucket 1024 \
    --max-tokens 131072 --threads "$threads" --json "$dir/eval.json"
  echo "=== $run: eval at 4x the training length" >&2
  ./longctx eval --checkpoint "$dir/checkpoint.safetensors" --data "$data" --seq-len $((4 * seq_len)) --bucket 4096 \
    --max-tokens 131072 --threads "$threads" --json "$dir/eval_4x.json"
  echo "=== $run: passkey fine-tune ($ft_steps steps) and passkey eval" >&2
  jq ".train.steps = $ft_steps | .train.warmup = 3 | .train.lr = 1e-3 | .train.eval_every = $ft_steps | .train.ckpt_every = $ft_steps | .train.score_last = 7" \
    "$dir/config.json" > "$dir/passkey_config.json"
  ./longctx train --config "$dir/passkey_config.json" --data "$ft_data" --out "$dir/passkey" --overwrite \
    --init-from "$dir/checkpoint.safetensors" --threads "$threads"
  ./longctx eval --checkpoint "$dir/passkey/checkpoint.safetensors" --data "$data" --no-loss \
    --passkey-lengths "$seq_len,$((4 * seq_len))" --passkey-depths 0.1,0.5,0.9 --passkey-trials 4 \
    --max-seq-len $((4 * seq_len)) --threads "$threads" --json "$dir/passkey.json"
done
