"""The sparse mixture-of-experts FFN (docs/MOE.md) as a torch.autograd.Function: E SwiGLU experts,
a router choosing top_k per token, optional shared experts, capacity, balancing losses. float32.
Weights (zero-copy each call): w_gate [d_model, E], w1 and w3 [E, d_model, d_ff], w2
[E, d_ff, d_model]; w_noise [d_model, E] (router 'noisy'); shared_w1, shared_w3 [d_model, S d_ff],
shared_w2 [S d_ff, d_model] (num_shared = S > 0); expert_bias [E] (router 'bias_free', a buffer
that gets no gradient)."""
from typing import NamedTuple

import torch

from . import _core
from ._convert import arg, grad_arg, like, tensor

MOE_WEIGHTS = ("w_gate", "w_noise", "w1", "w3", "w2", "shared_w1", "shared_w3", "shared_w2", "expert_bias")


class MoEInfo(NamedTuple):
    """What the router did: expert [tokens, top_k] int32 (by descending score), gate [tokens, top_k],
    stats (tokens per expert, drops, each balancing loss, router entropy) and the C++ forward
    (for longctx.moe_update_expert_bias)."""
    expert: torch.Tensor
    gate: torch.Tensor
    stats: dict
    forward: object


class _MoE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, options, training, noise_seed, results, x, *weights):
        x_ = arg(x, "x")
        w = {n: arg(t, n) for n, t in zip(MOE_WEIGHTS, weights) if t is not None}
        fwd = _core.moe_forward(x_, w, options, training, noise_seed)
        results.append(fwd)
        out = tensor(fwd.out)
        ctx.save_for_backward(x_, out, *weights)
        ctx.fwd = fwd
        return out, torch.tensor(fwd.aux_loss, dtype=torch.float32)

    @staticmethod
    def backward(ctx, dout, daux):
        x, _, *weights = ctx.saved_tensors
        w = {n: arg(t, n) for n, t in zip(MOE_WEIGHTS, weights) if t is not None}
        g = _core.moe_backward(x, w, ctx.fwd, grad_arg(dout), float(daux))
        dw = [like(g[n], t) if t is not None and n in g else None for n, t in zip(MOE_WEIGHTS, weights)]
        return (None, None, None, None, like(g["x"], x), *dw)


def moe_ffn(x, w_gate, w1, w3, w2, *, w_noise=None, shared_w1=None, shared_w3=None, shared_w2=None, expert_bias=None,
            training=True, noise_seed=0, **options):
    """out, aux_loss, info = moe_ffn(x [tokens, d_model], ...). options are the C++ config's MoE
    fields (longctx.options_help('moe')): num_experts (default: w1.shape[0]), top_k (2),
    num_shared, router ('topk', 'noisy', 'bias_free'), gate_norm ('selected', 'all'),
    capacity_factor (0: dropless), importance_weight, load_balance_weight (0.01), z_loss_weight,
    bias_update_rate. aux_loss is the weighted sum of the balancing losses: add it to the loss
    (its gradient reaches the router only then). training: the noisy router adds noise, drawn from
    noise_seed. The routing choice gets no gradient."""
    options = dict(options)
    options.setdefault("num_experts", int(w1.shape[0]) if isinstance(w1, torch.Tensor) and w1.dim() == 3 else 0)
    weights = dict(w_gate=w_gate, w_noise=w_noise, w1=w1, w3=w3, w2=w2, shared_w1=shared_w1, shared_w3=shared_w3,
                   shared_w2=shared_w2, expert_bias=expert_bias)
    results = []
    out, aux = _MoE.apply(options, bool(training), int(noise_seed), results, x, *(weights[n] for n in MOE_WEIGHTS))
    fwd = results[0]
    return out, aux, MoEInfo(tensor(fwd.expert), tensor(fwd.gate), fwd.stats, fwd)


def moe_update_expert_bias(expert_bias, info):
    """The bias-free router's balancing step after a forward: expert_bias (float32 [E], changed in
    place) += bias_update_rate * sign(mean load - load of the expert)."""
    with torch.no_grad():
        _core.moe_update_expert_bias(expert_bias, info.forward)


__all__ = ["moe_ffn", "moe_update_expert_bias", "MoEInfo", "MOE_WEIGHTS"]
