#!/usr/bin/python3
"""The Python package's two targets (issue 16), each measured side by side in one process:

  train     a user's PyTorch training step (q/k/v projections, attention, output projection, loss,
            backward, SGD step) over T tokens on the CPU, with longctx.moba_attn_varlen vs the same
            step with MoBA written naively in PyTorch (moba_naive below: the semantics of
            MoonshotAI/MoBA's pure-PyTorch reference, dense masks). Target: >= 10x at 16K tokens.
  overhead  moba_attn_varlen forward + backward called from Python (autograd, DLPack, option
            parsing) vs the same C++ kernels timed inside C++ on the same tensors
            (longctx._core.time_attention). Target: < 5% at 4K tokens.

Reps alternate between the two sides so that a busy machine slows both alike; medians reported.
  PYTHONPATH=build/python /usr/bin/python3 bench/python_bench.py train --tokens 16384
  PYTHONPATH=build/python /usr/bin/python3 bench/python_bench.py overhead --tokens 4096
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

import longctx


def moba_naive(q, k, v, cu_seqlens, chunk, top_k):
    """MoBA as the paper (Lu et al., arXiv 2502.13189, sec. 2) describes it, in plain PyTorch: per
    sequence and head, the gate scores each query against the mean key of every chunk; future
    chunks are excluded, the query's own chunk is always taken, and the top_k chunks (own
    included) form a token mask, intersected with the causal mask; then dense masked softmax
    attention. Memory O(heads * seq^2): the scores are materialised."""
    hq, hkv, d = q.shape[1], k.shape[1], q.shape[2]
    k, v = k.repeat_interleave(hq // hkv, dim=1), v.repeat_interleave(hq // hkv, dim=1)
    outs = []
    bounds = cu_seqlens.tolist()
    for s0, s1 in zip(bounds, bounds[1:]):
        n = s1 - s0
        nb = -(-n // chunk)
        pos = torch.arange(n)
        own = pos // chunk
        causal = pos[None, :] <= pos[:, None]
        heads = []
        for h in range(hq):  # one head at a time: the [n, n] scores of all heads at once would not fit
            qh, kh, vh = q[s0:s1, h], k[s0:s1, h], v[s0:s1, h]
            padded = torch.nn.functional.pad(kh, (0, 0, 0, nb * chunk - n))
            counts = torch.clamp(n - torch.arange(nb) * chunk, max=chunk)
            means = padded.view(nb, chunk, d).sum(1) / counts[:, None]
            gate = qh @ means.T  # [n, nb]
            gate = gate.masked_fill(torch.arange(nb)[None, :] > own[:, None], -math.inf)
            gate = gate.masked_fill(torch.arange(nb)[None, :] == own[:, None], math.inf)
            top = torch.topk(gate, min(top_k, nb), dim=-1).indices
            chosen = torch.zeros(n, nb, dtype=torch.bool).scatter_(1, top, True) & (gate > -math.inf)
            mask = chosen.repeat_interleave(chunk, dim=1)[:, :n] & causal
            scores = (qh @ kh.T) / math.sqrt(d)
            heads.append(torch.softmax(scores.masked_fill(~mask, -math.inf), dim=-1) @ vh)
        outs.append(torch.stack(heads, dim=1))
    return torch.cat(outs)


class AttentionStep(torch.nn.Module):
    """The part of a user's model the step exercises: projections around one attention call."""

    def __init__(self, d_model, heads, kv_heads, attend):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d_model // heads
        self.q = torch.nn.Linear(d_model, d_model, bias=False)
        self.k = torch.nn.Linear(d_model, kv_heads * self.hd, bias=False)
        self.v = torch.nn.Linear(d_model, kv_heads * self.hd, bias=False)
        self.o = torch.nn.Linear(d_model, d_model, bias=False)
        self.attend = attend

    def forward(self, x, cu, max_seqlen):
        t = x.shape[0]
        out = self.attend(self.q(x).view(t, self.heads, self.hd), self.k(x).view(t, self.kv_heads, self.hd),
                          self.v(x).view(t, self.kv_heads, self.hd), cu, max_seqlen)
        return self.o(out.reshape(t, -1))


def train_step(model, opt, x, target, cu, max_seqlen):
    t0 = time.perf_counter()
    loss = torch.nn.functional.mse_loss(model(x, cu, max_seqlen), target)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def bench_train(a):
    torch.manual_seed(0)
    cu = torch.tensor([0] + [a.tokens // a.seqs] * a.seqs).cumsum(0).to(torch.int32)
    x, target = torch.randn(a.tokens, a.d_model), torch.randn(a.tokens, a.d_model)
    longest = a.tokens // a.seqs

    def fast(q, k, v, cu, m):
        return longctx.moba_attn_varlen(q, k, v, cu, m, a.chunk, a.top_k)

    def naive(q, k, v, cu, m):
        return moba_naive(q, k, v, cu, a.chunk, a.top_k)

    models = {}
    for name, attend in (("longctx", fast), ("naive", naive)):
        torch.manual_seed(1)
        m = AttentionStep(a.d_model, a.heads, a.kv_heads, attend)
        models[name] = (m, torch.optim.SGD(m.parameters(), lr=1e-3))
    with torch.no_grad():  # the two sides compute the same function
        ref, fst = models["naive"][0](x, cu, longest), models["longctx"][0](x, cu, longest)
        err = (ref - fst).abs().max().item()
    times = {"longctx": [], "naive": []}
    for r in range(a.warmup + a.reps):
        for name in ("longctx", "naive"):
            s = train_step(*models[name], x, target, cu, longest)
            if r >= a.warmup:
                times[name].append(s)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"target": "train step with moba_attn_varlen vs naive PyTorch MoBA (>= 10x)", "tokens": a.tokens,
            "sequences": a.seqs, "heads": a.heads, "kv_heads": a.kv_heads, "head_dim": a.d_model // a.heads,
            "chunk": a.chunk, "top_k": a.top_k, "threads": torch.get_num_threads(), "max_abs_diff_outputs": err,
            "seconds": times, "median_longctx_s": med["longctx"], "median_naive_s": med["naive"],
            "speedup": med["naive"] / med["longctx"]}


def bench_overhead(a):
    torch.manual_seed(0)
    q = torch.randn(a.tokens, a.heads, a.d_model // a.heads, requires_grad=True)
    k = torch.randn(a.tokens, a.kv_heads, a.d_model // a.heads, requires_grad=True)
    v = torch.randn(a.tokens, a.kv_heads, a.d_model // a.heads, requires_grad=True)
    dout = torch.randn(q.shape)
    cu = torch.tensor([0] + [a.tokens // a.seqs] * a.seqs).cumsum(0).to(torch.int32)
    longest = a.tokens // a.seqs
    options = {"block_size": a.chunk, "top_k": a.top_k}

    def python_call():
        c0, t0 = time.process_time(), time.perf_counter()
        out = longctx.moba_attn_varlen(q, k, v, cu, longest, a.chunk, a.top_k)
        out.backward(dout)
        return time.perf_counter() - t0, time.process_time() - c0

    def cpp_call():  # wall time from inside C++; CPU time of the process around the call
        c0 = time.process_time()
        wall = longctx._core.time_attention("moba", options, qd, kd, vd, cu, dout, 1)[0]
        return wall, time.process_time() - c0

    qd, kd, vd = q.detach(), k.detach(), v.detach()
    times = {"python": [], "cpp": [], "python_cpu": [], "cpp_cpu": []}
    for r in range(a.warmup + a.reps):
        for side, call in (("python", python_call), ("cpp", cpp_call)):
            wall, cpu = call()
            if r >= a.warmup:
                times[side].append(wall)
                times[side + "_cpu"].append(cpu)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"target": "moba_attn_varlen fwd+bwd from Python vs the C++ kernels timed in C++ (< 5%)", "tokens": a.tokens,
            "sequences": a.seqs, "heads": a.heads, "kv_heads": a.kv_heads, "head_dim": a.d_model // a.heads,
            "chunk": a.chunk, "top_k": a.top_k, "threads": torch.get_num_threads(), "seconds": times,
            "median_python_s": med["python"], "median_cpp_s": med["cpp"],
            "overhead": med["python"] / med["cpp"] - 1,
            # CPU seconds of the whole process (all threads): steadier than wall time on a shared machine
            "overhead_cpu_time": med["python_cpu"] / med["cpp_cpu"] - 1}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", choices=["train", "overhead"])
    p.add_argument("--tokens", type=int, default=None, help="default: 16384 (train), 4096 (overhead)")
    p.add_argument("--seqs", type=int, default=1, help="packed sequences of tokens / seqs each")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=512, help="moba_chunk_size")
    p.add_argument("--top-k", type=int, default=3, help="moba_topk")
    p.add_argument("--reps", type=int, default=None, help="measured reps per side (default 3 train, 20 overhead)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="default: all cores")
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args()
    torch.set_num_threads(a.threads or os.cpu_count())  # torch's and longctx's (one libgomp)
    if a.tokens is None:
        a.tokens = 16384 if a.target == "train" else 4096
    if a.reps is None:
        a.reps = 3 if a.target == "train" else 20
    r = bench_train(a) if a.target == "train" else bench_overhead(a)
    r["command"] = "bench/python_bench.py " + " ".join(sys.argv[1:])
    print(json.dumps({k: v for k, v in r.items() if k != "seconds"}, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
