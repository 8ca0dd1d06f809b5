"""Data-parallel training across two processes (torch.distributed, gloo, 127.0.0.1) with longctx
attention ends at the parameters of one process training on the same global batches."""
import os
import pathlib
import subprocess
import sys

import torch

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "python" / "examples"
SCRIPT = EXAMPLES / "ddp_train.py"
ARGS = ["--steps", "4", "--batch", "5", "--seq-len", "40", "--block", "8"]


def run(extra, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, str(SCRIPT), *ARGS, *extra], env=env, capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_two_ranks_match_one_process(tmp_path):
    two, one = tmp_path / "two.pt", tmp_path / "one.pt"
    log2 = run(["--nproc", "2", "--save", str(two)], tmp_path)
    log1 = run(["--save", str(one)], tmp_path)
    assert log1.splitlines()[0] == log2.splitlines()[0]  # same first loss
    a, b = torch.load(two), torch.load(one)
    sys.path.insert(0, str(EXAMPLES))
    import ddp_train
    torch.manual_seed(0)
    init = ddp_train.TinyLM(32, 64, 2, 4, 2, {"kind": "moba", "block_size": 8, "top_k": 2}).state_dict()
    moved = max((b[k] - init[k]).abs().max().item() for k in b)
    assert moved > 5e-3  # training changed the weights (4 AdamW steps of lr 3e-3)...
    for k in b:  # ...and both runs the same way, up to fp32 summation order
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")
