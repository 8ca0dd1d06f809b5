"""The drop-in modules: LlamaAttention of every kind and MoEFeedForward, against plain PyTorch
where the kind is dense, on packed varlen and batched input, and trained inside a small model."""
import math

import pytest
import torch
from torch import nn

import longctx
import reference as ref
from helpers import close

KINDS = [
    "full",
    {"kind": "moba", "block_size": 4, "top_k": 2},
    {"kind": "moba", "block_size": 4, "top_k": 2, "key_conv": 3, "key_conv_bias": True},
    {"kind": "topk", "block_size": 4, "top_k": 2},
    {"kind": "threshold", "block_size": 4, "tau": 0.9},
    {"kind": "nsa", "block_len": 4, "stride": 2, "select_len": 4, "top_n": 2, "local_blocks": 1, "window": 4,
     "hidden": 8},
    {"kind": "nsa", "block_len": 4, "stride": 4, "select_len": 4, "top_n": 2, "local_blocks": 1, "window": 4,
     "compress": "mean"},
    {"kind": "infini", "segment_len": 5, "update": "delta"},
]


def test_rope_depends_on_relative_position_only():
    rope = longctx.RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 8, dtype=torch.float64)
    dots = [(rope(q, torch.tensor([p + 3])) * rope(k, torch.tensor([p]))).sum() for p in (0, 5, 11)]
    close(torch.stack(dots), dots[0].expand(3), 1e-12, what="q.k at distance 3")
    close(rope(q, torch.tensor([7])).norm(), q.norm(), 1e-12, what="norm")


def test_full_attention_module_matches_plain_pytorch():
    torch.manual_seed(1)
    m = longctx.LlamaAttention(32, 4, 2, attention="full")
    lens = [5, 1, 11]
    x = torch.randn(17, 32)
    cu = ref.cu_of(lens)
    out = m(x, cu, 11)
    pos = longctx.modules.positions(cu, 17)
    md = {n: p.double() for n, p in m.named_parameters()}
    h = x.double()
    q = (h @ md["q_proj.weight"].T).view(17, 4, 8)
    k = (h @ md["k_proj.weight"].T).view(17, 2, 8)
    v = (h @ md["v_proj.weight"].T).view(17, 2, 8)
    rq, rk = m.rope(q, pos), m.rope(k, pos)
    o, _ = ref.attention(rq, rk, v, ref.dense_mask(lens, lens, 4))
    close(out, o.reshape(17, 32) @ md["o_proj.weight"].T, 2e-5, what="module output")
    assert pos.tolist() == [0, 1, 2, 3, 4, 0] + list(range(11))


@pytest.mark.parametrize("attention", KINDS, ids=lambda a: a if isinstance(a, str) else a["kind"])
def test_module_varlen_batches_and_gradients(attention):
    """Packed sequences give each sequence's own result; [batch, seq, d] equals packing it;
    every parameter (projections, NSA compressors and gate, Infini beta) gets a gradient."""
    torch.manual_seed(2)
    m = longctx.LlamaAttention(32, 4, 2, attention=attention)
    x = torch.randn(3, 10, 32)
    batched = m(x)
    packed = m(x.reshape(30, 32), ref.cu_of([10, 10, 10]), 10)
    close(batched.reshape(30, 32), packed, 1e-6, what="batched vs packed")
    mixed = torch.randn(19, 32)
    together = m(mixed, ref.cu_of([7, 12]), 12)
    close(together[:7], m(mixed[:7]), 2e-6, what="first sequence alone")
    close(together[7:], m(mixed[7:]), 2e-6, what="second sequence alone")
    together.square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_moe_module_matches_the_function_and_keeps_the_shape():
    torch.manual_seed(3)
    m = longctx.MoEFeedForward(16, 12, {"num_experts": 4, "top_k": 2, "num_shared": 1})
    x = torch.randn(2, 5, 16)
    out = m(x)
    assert out.shape == x.shape and m.aux_loss.ndim == 0 and m.info.expert.shape == (10, 2)
    w = {n: getattr(m, n) for n in ("w_gate", "w1", "w3", "w2", "shared_w1", "shared_w3", "shared_w2")}
    expected, aux, _ = longctx.moe_ffn(x.reshape(10, 16), **w, **m.options)
    close(out.reshape(10, 16), expected, 0, what="module vs function")
    assert aux.item() == m.aux_loss.item() > 0


def test_bias_free_module_updates_its_buffer():
    m = longctx.MoEFeedForward(8, 6, {"num_experts": 4, "top_k": 1, "gate_norm": "all", "router": "bias_free"})
    assert "expert_bias" in dict(m.named_buffers()) and "expert_bias" not in dict(m.named_parameters())
    m(torch.randn(9, 8))
    m.update_expert_bias()
    assert m.expert_bias.abs().sum() > 0


class TinyLM(nn.Module):
    """A user's model with longctx layers swapped in: embedding, one attention and one MoE block."""

    def __init__(self, attention, vocab=16, d=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.attn = longctx.LlamaAttention(d, 4, 2, attention=attention)
        self.ffn = longctx.MoEFeedForward(d, 24, {"num_experts": 4, "top_k": 2, "load_balance_weight": 0.01})
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens, cu):
        h = self.emb(tokens)
        h = h + self.attn(h, cu)
        h = h + self.ffn(h)
        return self.head(h)


@pytest.mark.parametrize("attention", ["full", {"kind": "moba", "block_size": 4, "top_k": 2}])
def test_a_model_with_longctx_layers_trains(attention):
    torch.manual_seed(4)
    model = TinyLM(attention)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    tokens = torch.randint(0, 16, (24,))
    cu = ref.cu_of([9, 15])
    losses = []
    for _ in range(25):
        logits = model(tokens, cu)
        loss = nn.functional.cross_entropy(logits[:-1], tokens[1:]) + model.ffn.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0] and all(math.isfinite(v) for v in losses)
