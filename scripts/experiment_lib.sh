# Sourced by the experiment scripts (experiments.sh, multikey_chain.sh): resumable training stages
# and a pool of background jobs, so a script can be stopped and restarted at will.

# train_stage DIR CONFIG THREADS [train args...]: trains one stage on $data unless DIR's log already
# reaches the config's last step, and resumes a started one (train --resume).
train_stage() {
  local dir=$1 config=$2 threads=$3; shift 3
  local steps; steps=$(jq .train.steps "$config")
  if [ -f "$dir/log.jsonl" ] && [ "$(tail -n 1 "$dir/log.jsonl" | jq .step)" = "$steps" ]; then return; fi
  if [ -f "$dir/checkpoint.safetensors" ]; then
    ./longctx train --config "$config" --data "$data" --out "$dir" --threads "$threads" --resume
  else
    ./longctx train --config "$config" --data "$data" --out "$dir" --threads "$threads" "$@"
  fi
}

# run_jobs JOBS LOG_OF FN ITEM...: runs `FN ITEM` for every ITEM, at most JOBS at once, each in the
# background with its output in the file `LOG_OF ITEM` prints (its folder made); fails if any did.
run_jobs() {
  local jobs=$1 log_of=$2 fn=$3; shift 3
  local running=0 failed=0 item log
  for item in "$@"; do
    if ((running >= jobs)); then wait -n || failed=1; running=$((running - 1)); fi
    log=$("$log_of" "$item")
    mkdir -p "$(dirname "$log")"
    echo "start $item (log: $log)" >&2
    ("$fn" "$item" > "$log" 2>&1 && echo "done $item" >&2 || { echo "FAILED $item (see $log)" >&2; exit 1; }) &
    running=$((running + 1))
  done
  while ((running > 0)); do wait -n || failed=1; running=$((running - 1)); done
  return $failed
}
