#!/usr/bin/python3
"""The longctx model in PyTorch (Debian's python3-torch, eager, float32): the reference for
`longctx bench train` (scripts/bench_vs_pytorch.sh runs both side by side).

Same architecture and shapes as src/model/transformer.cpp: RMSNorm, RoPE with half-split pairs,
SwiGLU, tied embeddings, causal softmax attention (PyTorch 1.13 has no fused attention, so this is
the plain eager formulation; MoBA has no PyTorch counterpart here, so the reference is full
attention). Times forward + backward + clipping + AdamW on random tokens and prints tokens/s.
"""
import argparse, json, math, time

import torch
import torch.nn.functional as F


def rmsnorm(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


class Block(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        d, h, kv, f = c["d_model"], c["n_heads"], c.get("n_kv_heads", c["n_heads"]), c["d_ff"]
        self.h, self.kv, self.dh = h, kv, d // h
        self.attn_norm = torch.nn.Parameter(torch.ones(d))
        self.ffn_norm = torch.nn.Parameter(torch.ones(d))
        self.wq = torch.nn.Linear(d, h * self.dh, bias=False)
        self.wk = torch.nn.Linear(d, kv * self.dh, bias=False)
        self.wv = torch.nn.Linear(d, kv * self.dh, bias=False)
        self.wo = torch.nn.Linear(h * self.dh, d, bias=False)
        self.w1 = torch.nn.Linear(d, f, bias=False)
        self.w3 = torch.nn.Linear(d, f, bias=False)
        self.w2 = torch.nn.Linear(f, d, bias=False)

    def forward(self, x, cos, sin, mask):
        T = x.shape[0]
        h = rmsnorm(x, self.attn_norm)
        q = rope(self.wq(h).view(T, self.h, self.dh), cos, sin).transpose(0, 1)
        k = rope(self.wk(h).view(T, self.kv, self.dh), cos, sin).transpose(0, 1)
        v = self.wv(h).view(T, self.kv, self.dh).transpose(0, 1)
        if self.kv != self.h:
            k = k.repeat_interleave(self.h // self.kv, 0)
            v = v.repeat_interleave(self.h // self.kv, 0)
        s = (q @ k.transpose(1, 2)) / math.sqrt(self.dh)
        a = torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1) @ v
        x = x + self.wo(a.transpose(0, 1).reshape(T, -1))
        h = rmsnorm(x, self.ffn_norm)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class Model(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.emb = torch.nn.Embedding(c["vocab_size"], c["d_model"])
        self.blocks = torch.nn.ModuleList(Block(c) for _ in range(c["n_layers"]))
        self.norm = torch.nn.Parameter(torch.ones(c["d_model"]))

    def forward(self, tokens, cos, sin, mask):
        x = self.emb(tokens)
        for b in self.blocks:
            x = b(x, cos, sin, mask)
        return rmsnorm(x, self.norm) @ self.emb.weight.t()


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    c = json.load(open(args.config))
    c = c.get("model", c)
    assert c.get("attention", {}).get("kind", "full") == "full", "the PyTorch reference runs full attention only"
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    T, dh = args.seq_len, c["d_model"] // c["n_heads"]
    model = Model(c)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    inv = c.get("rope_theta", 10000.0) ** (-2.0 * torch.arange(dh // 2, dtype=torch.float64) / dh)
    cos, sin = torch.cos(pos * inv).float()[:, None, :], torch.sin(pos * inv).float()[:, None, :]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    tokens = torch.randint(0, c["vocab_size"], (T,))
    targets = torch.randint(0, c["vocab_size"], (T,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(tokens, cos, sin, mask), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()  # warm-up
    best = min(timed(step) for _ in range(args.steps))
    params = sum(p.numel() for p in model.parameters())
    print(f"pytorch {torch.__version__} train step: {params} params, 1 x {T} tokens, "
          f"{torch.get_num_threads()} threads: {best:.3f} s/step, {T / best:.0f} tokens/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": [{"engine": "pytorch", "version": torch.__version__, "seconds_per_step": best,
                                 "tokens_per_s": T / best, "params": params, "tokens": T}]}, f, indent=2)


if __name__ == "__main__":
    main()
