#!/usr/bin/env bash
# Fuzzes the checkpoint reader: builds the libFuzzer targets of fuzz/ with clang (ASan + UBSan)
# into build-fuzz/, then runs each for the given seconds (default 30) from its committed seed
# corpus fuzz/corpus/<target>/ (new inputs go to build-fuzz/corpus/<target>/). Any crash, leak,
# sanitizer report, timeout (10 s per input) or out-of-memory (2 GB) fails the run, printing where
# the input that caused it was saved (build-fuzz/artifacts/). Reproduce one with
#   build-fuzz/<target> build-fuzz/artifacts/<file>
# CI (.ci/run) runs `scripts/fuzz.sh 30`; before changing the reader, run a longer one, e.g.
# `scripts/fuzz.sh 1800` (half an hour per target). The build takes about 5 minutes on 2 cores.
#   scripts/fuzz.sh [seconds per target]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
[[ "$secs" =~ ^[1-9][0-9]*$ ]] || { echo "usage: scripts/fuzz.sh [seconds per target], got '$secs'" >&2; exit 2; }
targets=(safetensors_header_fuzz checkpoint_load_fuzz)
cmake -S fuzz -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ > /dev/null
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]}"
mkdir -p build-fuzz/artifacts
# one OpenMP thread: inputs run deterministically and fast; leak checks and no sanitizer recovery
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/corpus/$t"
  log="build-fuzz/$t.log"
  echo "fuzz: $t for ${secs} s (log: $log)"
  if "build-fuzz/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="build-fuzz/artifacts/$t-" "build-fuzz/corpus/$t" "fuzz/corpus/$t" > "$log" 2>&1; then
    grep -E "^stat::number_of_executed_units|^#[0-9]+.*DONE" "$log" | sed 's/^/  /' || true
  else
    status=1
    tail -n 60 "$log"
    echo "fuzz: $t FAILED; the input that caused it:" >&2
    grep -ho "Test unit written to .*" "$log" | sed 's/^Test unit written to /  /' >&2 || echo "  (none saved; see $log)" >&2
  fi
done
exit "$status"
