#!/usr/bin/env bash
# The multi-key chain of docs/EXPERIMENTS.md section 7 ("Multi-key with a 16-key local window",
# issue 15): section 7's model with layer 0 a sliding window of 16 keys instead of 64, trained on
# passkey : multi-key 1 : 3 documents (three quarters of the sequences, the rest real text) in a
# chain of stages, each `train --init-from` its parent with a new cosine schedule, from the swa
# family's stage 1 (runs/retrieval_swa/stage1, trained here if missing). Two branches share the
# first two stages:
#   w16 (3000 steps, lr 2e-3) -> w16b (6000, 1.5e-3) -> w16c (9000, 1e-3) -> w16e (18000, 1e-3)   -> w16g (12000, 7e-4)
#                                                   \-> w16d (9000, 2e-3) -> w16f (18000, 1.5e-3) -> w16h (12000, 7e-4)
# Each stage is scored by the RULER grid (passkey and multi-key, 1x / 2x / 4x = 256 / 512 / 1024
# tokens, 20 prompts per length) into runs/multikey/<stage>.eval.json. Steps are 2048 tokens.
#   scripts/multikey_chain.sh [--jobs N] [STAGE ...]   (default: w16g w16h, the two branches' ends;
#   a stage's parents run first; a finished stage or eval is not redone, an interrupted one resumes;
#   --jobs N: N stages side by side, one thread each, default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt_need.sh
need jq
source scripts/experiment_lib.sh

data=data/kjv
root=runs/multikey
base=configs/experiments/retrieval_stage2_swa.json
jobs=2
[ "${1:-}" = --jobs ] && { jobs=$2; shift 2; }
# stage: parent steps lr min_lr seed init_seed eval_every
declare -A spec=(
  [w16]="stage1 3000 0.002 0.0002 12 1235 250"
  [w16b]="w16 6000 0.0015 0.00015 13 1236 500"
  [w16c]="w16b 9000 0.001 0.0001 14 1237 500"
  [w16d]="w16b 9000 0.002 0.0002 15 1237 500"
  [w16e]="w16c 18000 0.001 0.0001 16 1238 1000"
  [w16f]="w16d 18000 0.0015 0.00015 17 1239 1000"
  [w16g]="w16e 12000 0.0007 0.00007 18 1240 1000"
  [w16h]="w16f 12000 0.0007 0.00007 19 1241 1000")
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(w16g w16h)
for s in "${stages[@]}"; do
  [ -n "${spec[$s]:-}" ] || { echo "multikey_chain.sh: unknown stage '$s' (known: ${!spec[*]})" >&2; exit 2; }
done
[ -d "$data/train" ] || scripts/prepare_data.sh kjv
mkdir -p "$root"
echo "=== stage 1 (the swa family's): runs/retrieval_swa/stage1" >&2
train_stage runs/retrieval_swa/stage1 configs/experiments/tasks_kjv_s128_nope.json 1 --init-seed 1234

checkpoint() { [ "$1" = stage1 ] && echo runs/retrieval_swa/stage1/checkpoint.safetensors || echo "$root/$1/checkpoint.safetensors"; }

one_stage() {  # trains and scores a stage, its parents first
  local name=$1 parent steps lr min_lr seed init every
  read -r parent steps lr min_lr seed init every <<< "${spec[$name]}"
  # (set -e does not reach inside a job's `&& ||` list: every step that can fail returns)
  [ "$parent" = stage1 ] || one_stage "$parent" || return
  jq --argjson steps "$steps" --argjson lr "$lr" --argjson min_lr "$min_lr" --argjson seed "$seed" --argjson every "$every" '
      .model.layers[0].attention.window = 16 | .train.steps = $steps | .train.lr = $lr
      | .train.min_lr = $min_lr | .train.eval_every = $every | .train.seed = $seed
      | .train.tasks.fraction = 0.75 | .train.tasks.kinds = {"passkey": 1, "multikey": 3}' "$base" > "$root/$name.json" || return
  echo "=== $name from $parent" >&2
  train_stage "$root/$name" "$root/$name.json" 1 --init-from "$(checkpoint "$parent")" --init-seed "$init" || return
  [ -f "$root/$name.eval.json" ] && return
  ./longctx eval --checkpoint "$root/$name/checkpoint.safetensors" --data "$data" --seq-len 256 --bucket 64 \
    --max-tokens 65536 --ruler-tasks passkey,multikey --ruler-lengths 1x,2x,4x --ruler-trials 4 --threads 1 \
    --json "$root/$name.eval.json"
}

stage_log() { echo "$root/$1.run.log"; }

# A stage that several requested ones are or descend from runs first, alone (two jobs must not
# train it).
declare -A seen=()
for s in "${stages[@]}"; do
  a=$s
  while [ "$a" != stage1 ]; do
    if [ "${seen[$a]:-}" = 1 ]; then one_stage "$a" > "$(stage_log "$a")" 2>&1 || { echo "FAILED $a" >&2; exit 1; }; fi
    seen[$a]=1 a=${spec[$a]%% *}
  done
done

run_jobs "$jobs" stage_log one_stage "${stages[@]}"
