# Sourced by the experiment scripts: train_stage DIR CONFIG THREADS [train args...] trains one
# stage on $data unless DIR's log already reaches the config's last step, and resumes a started one
# (train --resume), so a script can be stopped and restarted at will.
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
