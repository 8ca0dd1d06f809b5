"""Drop-in nn.Modules: Llama-style attention whose kind is chosen as in the C++ model config, and
the MoE FFN. Both take [batch, seq, d_model] (equal-length sequences) or packed [tokens, d_model]
with cu_seqlens, and return the input's shape."""
import torch
from torch import nn

from . import _core
from .attention import (NSA_COMPRESSOR, flash_attn_varlen_func, infini_attn_varlen, key_conv, moba_attn_varlen,
                        nsa_attn_varlen, threshold_attn_varlen, topk_attn_varlen)
from .moe import MOE_WEIGHTS, moe_ffn, moe_update_expert_bias


def positions(cu_seqlens, total):
    """Each token's position inside its sequence (int64 [total]); cu_seqlens None: one sequence."""
    pos = torch.arange(total, dtype=torch.int64)
    if cu_seqlens is None:
        return pos
    cu = torch.as_tensor(cu_seqlens, dtype=torch.int64)
    return pos - torch.repeat_interleave(cu[:-1], cu[1:] - cu[:-1], output_size=total)


class RotaryEmbedding(nn.Module):
    """RoPE with Llama's half-split pairing, as the C++ model (src/nn/layers.hpp): feature i
    rotates with i + head_dim/2 by the angle pos * theta^(-2i/head_dim)."""

    def __init__(self, head_dim, theta=10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"longctx: RotaryEmbedding: head_dim must be even, got {head_dim}")
        self.head_dim, self.theta = head_dim, float(theta)

    def forward(self, x, pos):
        """x [tokens, heads, head_dim] rotated by its tokens' positions pos [tokens]."""
        half = self.head_dim // 2
        inv_freq = self.theta ** (-torch.arange(half, dtype=torch.float64) * 2 / self.head_dim)
        angle = pos.to(torch.float64)[:, None] * inv_freq[None, :]
        cos, sin = angle.cos().to(x.dtype)[:, None, :], angle.sin().to(x.dtype)[:, None, :]
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def _packed(x, cu_seqlens, max_seqlen, who):
    """x as [tokens, d_model] with its cu_seqlens and max_seqlen."""
    if x.dim() == 3:
        if cu_seqlens is not None:
            raise ValueError(f"longctx: {who}: cu_seqlens goes with packed [tokens, d_model] input, got "
                             f"[batch, seq, d_model] {list(x.shape)}")
        b, s, d = x.shape
        return x.reshape(b * s, d), torch.arange(0, b * s + 1, s, dtype=torch.int32), s
    if x.dim() != 2:
        raise ValueError(f"longctx: {who}: input must be [batch, seq, d_model] or [tokens, d_model], got {list(x.shape)}")
    return x, cu_seqlens, max_seqlen


class LlamaAttention(nn.Module):
    """Llama attention: q/k/v projections (bias-free, GQA when n_kv_heads < n_heads), RoPE, the
    kernel of the chosen kind, output projection. attention is a kind name or the C++ config's
    attention object, e.g. {"kind": "moba", "block_size": 512, "top_k": 3}: full, moba, topk,
    threshold, nsa (its compressors and gate are parameters here, initialised as in the C++
    model; the gate reads the module's input), moba with key_conv K > 0 (its taps, identity at
    init, and optional bias are parameters; keys are convolved before RoPE), infini (beta [n_heads] a parameter; the memory
    reads q/k before RoPE, the local attention after, as the paper). Options are checked at
    construction (ValueError naming the field). Always causal."""

    def __init__(self, d_model, n_heads, n_kv_heads=None, attention="full", rope_theta=10000.0, seed=0):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model % n_heads or n_heads % n_kv_heads:
            raise ValueError(f"longctx: LlamaAttention: n_heads ({n_heads}) must divide d_model ({d_model}) and "
                             f"n_kv_heads ({n_kv_heads}) must divide n_heads")
        spec = {"kind": attention} if isinstance(attention, str) else dict(attention)
        self.kind = spec.pop("kind", "full")
        self.attention = _core.attention_options(self.kind, spec)  # every field, defaults filled in
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=False)
        self.rope = RotaryEmbedding(self.head_dim, rope_theta)
        if self.kind == "nsa":
            w = _core.nsa_init_weights(self.options, n_heads, self.head_dim, d_model, seed)
            self.nsa = nn.ParameterDict({n.replace(".", "_"): nn.Parameter(torch.from_dlpack(a).clone())
                                         for n, a in w.items()})
        if self.kind == "infini":
            self.beta = nn.Parameter(torch.full((n_heads,), float(self.attention["beta_init"])))
        if self.kind == "moba" and self.attention["key_conv"] > 0:  # identity at init, as the C++ model
            taps = torch.zeros(self.attention["key_conv"], n_kv_heads * self.head_dim)
            taps[-1] = 1.0
            self.key_conv_weight = nn.Parameter(taps)
            self.key_conv_bias = (nn.Parameter(torch.zeros(n_kv_heads * self.head_dim))
                                  if self.attention["key_conv_bias"] else None)

    @property
    def options(self):
        """The kind's options without "kind", as the functions take them."""
        return {k: v for k, v in self.attention.items() if k != "kind"}

    def forward(self, x, cu_seqlens=None, max_seqlen=None):
        h, cu, max_seqlen = _packed(x, cu_seqlens, max_seqlen, "LlamaAttention")
        t = h.shape[0]
        q = self.q_proj(h).view(t, self.n_heads, self.head_dim)
        k = self.k_proj(h).view(t, self.n_kv_heads, self.head_dim)
        v = self.v_proj(h).view(t, self.n_kv_heads, self.head_dim)
        pos = positions(cu, t)
        if hasattr(self, "key_conv_weight"):  # MoBA's key convolution, before RoPE (docs/DESIGN.md)
            k = key_conv(k.float(), self.key_conv_weight, self.key_conv_bias, cu).to(k.dtype)
        qr, kr = self.rope(q, pos), self.rope(k, pos)
        o = self.options
        if self.kind == "full":
            out = flash_attn_varlen_func(qr, kr, v, cu, cu, max_seqlen, max_seqlen, causal=True)
        elif self.kind == "moba":
            out = moba_attn_varlen(qr, kr, v, cu, max_seqlen, o["block_size"], o["top_k"],
                                   group_select=o["group_select"])
        elif self.kind == "topk":
            out = topk_attn_varlen(qr, kr, v, cu, max_seqlen, **o)
        elif self.kind == "threshold":
            out = threshold_attn_varlen(qr, kr, v, cu, max_seqlen, **o)
        elif self.kind == "nsa":
            p = self.nsa
            comp = [tuple(p[f"compress_{c}_{n}"] for n in NSA_COMPRESSOR) if f"compress_{c}_pos" in p else None
                    for c in "kv"]
            out = nsa_attn_varlen(qr, kr, v, h.float(), p["gate_w"], p["gate_b"], cu, max_seqlen, *comp, **o)
        else:  # infini
            out = infini_attn_varlen(q, k, v, self.beta, cu, max_seqlen, q_local=qr, k_local=kr, **o)
        return self.o_proj(out.reshape(t, self.n_heads * self.head_dim).to(h.dtype)).view(x.shape)


class MoEFeedForward(nn.Module):
    """The sparse MoE FFN (longctx.moe_ffn) with its weights as parameters, initialised as the C++
    model does. options: the C++ config's MoE fields (longctx.options_help('moe')). After each
    forward, self.aux_loss holds the weighted balancing loss (add it to your loss) and self.info
    the routing (MoEInfo); with router 'bias_free' call update_expert_bias() after each step.
    float32."""

    def __init__(self, d_model, d_ff, options=None, seed=0):
        super().__init__()
        self.ffn = _core.moe_options(options)  # every field, defaults filled in
        self.seed, self.calls = seed, 0
        for name, a in _core.moe_init_weights(self.options, d_model, d_ff, seed).items():
            t = torch.from_dlpack(a).clone()
            if name == "expert_bias":
                self.register_buffer(name, t)
            else:
                setattr(self, name, nn.Parameter(t))
        self.aux_loss, self.info = None, None

    @property
    def options(self):
        return {k: v for k, v in self.ffn.items() if k != "kind"}

    def forward(self, x):
        h = x.reshape(-1, x.shape[-1])
        if self.training:
            self.calls += 1  # fresh router noise each training step
        w = {n: getattr(self, n) for n in MOE_WEIGHTS if hasattr(self, n)}
        out, self.aux_loss, self.info = moe_ffn(h, training=self.training,
                                                noise_seed=self.seed * 1000003 + self.calls, **w, **self.options)
        return out.view(x.shape)

    def update_expert_bias(self):
        """The bias-free router's balancing step from the last forward's loads."""
        if self.info is None or not hasattr(self, "expert_bias"):
            raise ValueError("longctx: MoEFeedForward.update_expert_bias needs router 'bias_free' and a forward first")
        moe_update_expert_bias(self.expert_bias, self.info)


__all__ = ["LlamaAttention", "MoEFeedForward", "RotaryEmbedding", "positions"]
