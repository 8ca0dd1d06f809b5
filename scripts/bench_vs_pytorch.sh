#!/usr/bin/env bash
# Training throughput of longctx vs the same model in PyTorch (Debian's python3-torch, eager fp32),
# same shapes and thread count, one after the other in one run; JSON into docs/results/.
#   scripts/bench_vs_pytorch.sh [seq_len]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt_need.sh
need python3-torch
T=${1:-4096}
threads=$(nproc)
out=docs/results
mkdir -p $out
./build/longctx bench train --config configs/bench_6x256_full.json --seq-len "$T" --threads "$threads" --json $out/train_longctx_full.json
./build/longctx bench train --config configs/bench_6x256_moba.json --seq-len "$T" --threads "$threads" --json $out/train_longctx_moba.json
bench/torch_train.py --config configs/bench_6x256_full.json --seq-len "$T" --threads "$threads" --json $out/train_pytorch_full.json
/usr/bin/python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
tps = {k: json.load(open(f"{out}/train_{k}.json"))["rows"][0]["tokens_per_s"] for k in ("longctx_full", "longctx_moba", "pytorch_full")}
print(f"longctx full / pytorch: {tps['longctx_full'] / tps['pytorch_full']:.2f}x, "
      f"longctx moba / pytorch: {tps['longctx_moba'] / tps['pytorch_full']:.2f}x")
PY
