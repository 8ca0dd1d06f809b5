#!/usr/bin/env bash
# The long-context head-to-head of docs/EXPERIMENTS.md section 5 (issue 15), on the KJV with a
# byte-level model (2 layers, d_model 128, 4 heads, SwiGLU 344, 0.43 M parameters):
#   stage 1 (shared, full attention): configs/experiments/tasks_kjv_s128.json, 128-token passkey
#     documents only, 2.15 M tokens, init seed 1234: the short single-task stage in which a
#     retrieval circuit forms (EXPERIMENTS.md 5.1: whether and when it forms depends on the seed);
#   stage 2 (one per attention kind and seed, `train --init-from` stage 1, the kind switched):
#     configs/experiments/retrieval_stage2.json, 256-token sequences, half real text, half passkey
#     and multi-key needle documents of 248-256 tokens, 2 M tokens (a jump from 128 to 512 lost
#     the retrieval: EXPERIMENTS.md 5.1);
#   eval: validation loss and position-wise loss over 256-token windows of held-out books, and the
#     RULER grid (passkey, multi-key needle) at 1x, 2x, 4x the training length, depths 0.1..0.9,
#     4 trials per cell.
# Dense vs MoE FFN (same active parameters) cannot share stage 1 (other weights): those runs train
# stage 1 from scratch per seed (ffn_dense.sN, ffn_moe.sN) and are scored by loss and passkey at 128.
# Results: runs/retrieval/stage1/, runs/retrieval/<run>/{stage2/,eval.json,run.log};
# scripts/experiments_table.sh prints the tables.
#
# --family nope (EXPERIMENTS.md section 6): the same runs on a model built to generalise in length,
# as Llama 4's interleaved RoPE / NoPE layers: layer 1 (the retrieval layer, where the kind under
# test goes) has no positional encoding, and in stage 2 layer 0 becomes chunked local attention
# (MoBA with block 64 and top-1: each query sees its own 64-token chunk), so no layer ever sees a
# rotated distance beyond training; stage 1 has layer 1 NoPE and layer 0 full (a chunked layer 0 in
# stage 1 formed no retrieval in two seeds). Root runs/retrieval_nope; no moba_last_full (layer 1
# is the last) and no FFN runs.
#
# --family swa (EXPERIMENTS.md section 7): the nope family with layer 0 a sliding window of 64 keys
# (full attention, "window": 64) instead of 64-token chunks: every query sees its 63 predecessors,
# where a chunk's first tokens saw almost none. Same stage 1 (trained again under its own root).
#
#   scripts/experiments.sh [--jobs N] [--family rope|nope|swa] [RUN ...]
# RUN is NAME.sN (e.g. moba.s2: data seed N and init seed 1234 + N for the weights stage 1 lacks);
# default: every attention run with seeds 1, 2, 3, then the FFN runs. A finished stage or eval is
# not redone and an interrupted one resumes (train --resume): stop and restart the script at will.
# --jobs N: N runs side by side, one thread each (default 2: a model this small trains faster as
# two one-thread jobs than as one two-thread job).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt_need.sh
need jq

data=data/kjv
root=runs/retrieval
stage1=configs/experiments/tasks_kjv_s128.json
stage2=configs/experiments/retrieval_stage2.json
jobs=2 family=rope stage1_threads=2
while (($#)); do
  case $1 in
    --jobs) jobs=$2; shift 2 ;;
    --family) family=$2; shift 2 ;;
    *) break ;;
  esac
done
case $family in
  rope) ;;
  nope)
    root=runs/retrieval_nope
    stage1=configs/experiments/tasks_kjv_s128_nope.json
    stage2=configs/experiments/retrieval_stage2_nope.json
    stage1_threads=1 ;;  # as the stage 1 of section 6 was trained (bits depend on the thread count)
  swa)
    root=runs/retrieval_swa
    stage1=configs/experiments/tasks_kjv_s128_nope.json
    stage2=configs/experiments/retrieval_stage2_swa.json
    stage1_threads=1 ;;
  *) echo "experiments.sh: --family must be rope, nope or swa, got '$family'" >&2; exit 2 ;;
esac

# Attention runs: a jq filter over the stage-2 config. Block sizes and budgets are scaled to the
# 256-token training length: MoBA's paper setting (block 512, top-3 at 8K: ~19% of the keys) becomes
# block 16, top-3; the small-block MoBA keeps that budget of 48 keys in 8-token blocks (Xiao et al.,
# arXiv 2511.11571: the gate's signal-to-noise grows as blocks shrink) with a 3-tap key convolution.
declare -A attention=(
  [full]='.'
  [moba]='.model.attention = {"kind": "moba", "block_size": 16, "top_k": 3}'
  [moba_small_kconv]='.model.attention = {"kind": "moba", "block_size": 8, "top_k": 6, "key_conv": 3}'
  [moba_last_full]='.model.attention = {"kind": "moba", "block_size": 16, "top_k": 3} | .model.full_attention_last_n = 1'
  [nsa]='.model.attention = {"kind": "nsa", "block_len": 8, "stride": 4, "select_len": 8, "top_n": 6, "local_blocks": 2, "window": 32, "compress": "mean"}'
  [topk]='.model.attention = {"kind": "topk", "block_size": 8, "top_k": 6}'
  [threshold]='.model.attention = {"kind": "threshold", "block_size": 8, "tau": 0.95}'
  [infini]='.model.attention = {"kind": "infini", "segment_len": 64}'
  [topk_progressive]='.model.attention = {"kind": "topk", "block_size": 8, "top_k": 6} | .train.sparsity_steps = 500'
  [topk_4m]='.model.attention = {"kind": "topk", "block_size": 8, "top_k": 6} | .train.steps = 2000'
  [moba_b4]='.model.attention = {"kind": "moba", "block_size": 4, "top_k": 12}'
  [moba_b4_kconv]='.model.attention = {"kind": "moba", "block_size": 4, "top_k": 12, "key_conv": 3}'
  [moba_b2]='.model.attention = {"kind": "moba", "block_size": 2, "top_k": 24}'
  [moba_b2_kconv]='.model.attention = {"kind": "moba", "block_size": 2, "top_k": 24, "key_conv": 3}'
)
# topk_progressive: top-k reached by progressive sparsity (train config sparsity_steps: from all
# blocks down to top-6 over the first 500 steps), easing the switch from the full-attention stage 1.
# topk_4m: top-k with twice the stage-2 tokens (4 M); not in the default list, run it by name.
# moba_b4*, moba_b2*: MoBA's blocks shrunk further at the same 48 keys, with and without the key
# convolution (the swa family's list has the two with it; run the others by name).
# FFN runs: a jq filter over the stage-1 config (experts of d_ff 172, top-2: 344 active, as dense);
# ffn_moe_bias_free: DeepSeek-V3's auxiliary-loss-free router instead of the load-balancing loss.
declare -A ffn=(
  [ffn_dense]='.'
  [ffn_moe]='.model.ffn = {"kind": "moe", "num_experts": 8, "top_k": 2, "d_ff": 172}'
  [ffn_moe_bias_free]='.model.ffn = {"kind": "moe", "num_experts": 8, "top_k": 2, "d_ff": 172, "router": "bias_free", "load_balance_weight": 0}'
)
names=(full moba moba_small_kconv moba_last_full nsa topk topk_progressive threshold infini)
if [ "$family" != rope ]; then
  unset 'attention[moba_last_full]'
  ffn=()
  names=(full moba moba_small_kconv nsa topk topk_progressive threshold infini)
  [ "$family" = swa ] && names+=(moba_b4_kconv moba_b2_kconv)
fi
order=()
if (($#)); then order=("$@"); else
  for s in 1 2 3; do for n in "${names[@]}"; do order+=("$n.s$s"); done; done
  [ "$family" != rope ] || for s in 1 2 3; do order+=("ffn_dense.s$s" "ffn_moe.s$s"); done
fi
for run in "${order[@]}"; do
  [[ $run == *.s* ]] || { echo "experiments.sh: '$run' needs a seed: NAME.sN (e.g. $run.s1)" >&2; exit 2; }
  [ -n "${attention[${run%.s*}]:-}${ffn[${run%.s*}]:-}" ] ||
    { echo "experiments.sh: unknown run '${run%.s*}' (known: ${names[*]} ${!ffn[*]})" >&2; exit 2; }
done
[ -d "$data/train" ] || scripts/prepare_data.sh kjv

source scripts/experiment_lib.sh

one_run() {  # NAME.sN
  local run=$1 name=${1%.s*} seed=${1##*.s} dir=$root/$1
  mkdir -p "$dir"
  if [ -n "${ffn[$name]:-}" ]; then
    jq "${ffn[$name]} | .train.seed = $seed" "$stage1" > "$dir/stage1.json"
    echo "=== $run: stage 1 from scratch" >&2
    train_stage "$dir/stage1" "$dir/stage1.json" 1 --init-seed $((1234 + seed)) || return
    [ -f "$dir/eval.json" ] && return
    ./longctx eval --checkpoint "$dir/stage1/checkpoint.safetensors" --data "$data" --seq-len 128 --bucket 32 \
      --max-tokens 65536 --ruler-tasks passkey --ruler-lengths 1x --ruler-trials 8 --threads 1 --json "$dir/eval.json"
    return
  fi
  jq "${attention[$name]} | .train.seed = $seed" "$stage2" > "$dir/stage2.json"
  echo "=== $run: stage 2 from $root/stage1" >&2
  train_stage "$dir/stage2" "$dir/stage2.json" 1 --init-from "$root/stage1/checkpoint.safetensors" \
    --init-seed $((1234 + seed)) || return
  [ -f "$dir/eval.json" ] && return
  echo "=== $run: eval" >&2
  ./longctx eval --checkpoint "$dir/stage2/checkpoint.safetensors" --data "$data" --seq-len 256 --bucket 64 \
    --max-tokens 65536 --ruler-tasks passkey,multikey --ruler-lengths 1x,2x,4x --ruler-trials 4 --threads 1 \
    --json "$dir/eval.json"
}

echo "=== stage 1 (shared): $root/stage1" >&2
train_stage "$root/stage1" "$stage1" "$stage1_threads" --init-seed 1234

# At most $jobs runs at once, each logging to <run>/run.log.
run_log() { echo "$root/$1/run.log"; }
run_jobs "$jobs" run_log one_run "${order[@]}"
