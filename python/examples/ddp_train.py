"""Data-parallel training of a small language model whose attention is longctx's, over
torch.distributed (gloo backend, CPU). Every rank holds the whole model and trains on its share of
each global batch of packed, mixed-length sequences; DistributedDataParallel averages the
gradients, so N ranks take the same steps as one process on the global batch (tests/python/
test_distributed.py checks the parameters agree). docs/PYTHON.md "Beyond one machine".

One machine, 2 processes (127.0.0.1, a free port):
    PYTHONPATH=build/python /usr/bin/python3 python/examples/ddp_train.py --nproc 2 --steps 20
One process over the same global batches (for comparison):
    PYTHONPATH=build/python /usr/bin/python3 python/examples/ddp_train.py --steps 20
Across machines, one process per machine (torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
    PYTHONPATH=build/python torchrun --nnodes 2 --nproc-per-node 1 --node-rank R \\
        --master-addr HOST0 --master-port 29500 python/examples/ddp_train.py --steps 20
"""
import argparse
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import longctx


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    def __init__(self, d, heads, kv_heads, attention):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.attn = longctx.LlamaAttention(d, heads, kv_heads, attention=attention)
        self.up, self.gate, self.down = nn.Linear(d, 2 * d, bias=False), nn.Linear(d, 2 * d, bias=False), nn.Linear(2 * d, d, bias=False)

    def forward(self, h, cu, max_seqlen):
        h = h + self.attn(self.norm1(h), cu, max_seqlen)
        x = self.norm2(h)
        return h + self.down(nn.functional.silu(self.gate(x)) * self.up(x))


class TinyLM(nn.Module):
    """Embedding, longctx attention blocks (packed varlen: [tokens, d] with cu_seqlens), LM head."""

    def __init__(self, vocab, d, layers, heads, kv_heads, attention):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, kv_heads, attention) for _ in range(layers))
        self.norm, self.head = RMSNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, tokens, cu, max_seqlen):
        h = self.emb(tokens)
        for b in self.blocks:
            h = b(h, cu, max_seqlen)
        return self.head(self.norm(h))


def global_batch(step, args):
    """The step's sequences, the same on every rank, of mixed lengths: a first half drawn from a
    fixed Markov chain (each token has 2 likely successors: learnable from the current token),
    then the first half repeated (a copy task: predictable only by attending to the first half)."""
    chain = torch.randint(0, args.vocab, (args.vocab, 2), generator=torch.Generator().manual_seed(args.seed))
    g = torch.Generator().manual_seed(args.seed * 100003 + step)
    lengths = [args.seq_len - 7 * (i % 3) for i in range(args.batch)]
    seqs = []
    for n in lengths:
        half = [int(torch.randint(0, args.vocab, (1,), generator=g))]
        for _ in range((n + 1) // 2 - 1):
            half.append(int(chain[half[-1], torch.randint(0, 2, (1,), generator=g)]))
        seqs.append(torch.tensor(half + half)[:n])
    return seqs


def pack(seqs):
    """Tokens [T], next-token targets (-100 at each sequence's last token), cu_seqlens, longest."""
    tokens = torch.cat(seqs)
    targets = torch.cat([torch.cat([s[1:], torch.tensor([-100])]) for s in seqs])
    cu = torch.tensor([0] + [len(s) for s in seqs]).cumsum(0).to(torch.int32)
    return tokens, targets, cu, max(len(s) for s in seqs)


def train(rank, world, args, init_method=None):
    torch.set_num_threads(args.threads)  # also longctx's OpenMP threads (one libgomp)
    if world > 1:
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    torch.manual_seed(args.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    attention = {"kind": args.attention, **({"block_size": args.block, "top_k": args.top_k} if args.attention == "moba" else {})}
    model = TinyLM(args.vocab, args.d_model, args.layers, args.heads, args.kv_heads, attention)
    ddp = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    for step in range(args.steps):
        seqs = global_batch(step, args)
        tokens, targets, cu, longest = pack(seqs[rank::world])  # this rank's share
        logits = ddp(tokens, cu, longest)
        loss_sum = nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
        # DDP averages gradients over ranks; scaled by world / (global target count), the average
        # is the gradient of the global mean loss whatever each rank's share of tokens.
        global_targets = sum(len(s) - 1 for s in seqs)
        opt.zero_grad()
        (loss_sum * world / global_targets).backward()
        opt.step()
        total = loss_sum.detach().clone()
        if world > 1:
            dist.all_reduce(total)
        if rank == 0 and (step % args.log_every == 0 or step == args.steps - 1):
            print(f"step {step}: loss {total.item() / global_targets:.4f}", flush=True)
    if rank == 0 and args.save:
        torch.save(model.state_dict(), args.save)
    if world > 1:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawned(rank, world, port, args):
    train(rank, world, args, f"tcp://127.0.0.1:{port}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=1, help="processes to start on this machine (ignored under torchrun)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4, help="sequences per global batch")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--attention", default="moba", choices=["full", "moba"])
    p.add_argument("--block", type=int, default=16, help="moba block size")
    p.add_argument("--top-k", type=int, default=2, help="moba blocks per query")
    p.add_argument("--vocab", type=int, default=32)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="threads per process")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--save", help="write rank 0's final state_dict here")
    args = p.parse_args()
    if "RANK" in os.environ:  # under torchrun
        train(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args, "env://")
    elif args.nproc > 1:
        mp.spawn(spawned, args=(args.nproc, free_port(), args), nprocs=args.nproc)
    else:
        train(0, 1, args)


if __name__ == "__main__":
    main()
