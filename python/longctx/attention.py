"""Attention kernels as torch.autograd.Functions over packed varlen batches: q [total_q, Hq, d],
k and v [total_k, Hkv, d] (Hq a multiple of Hkv: GQA/MQA, K/V never copied), cu_seqlens int32 or
int64 prefix sums of the sequence lengths (None: one sequence). float32 or bfloat16 q/k/v
(nsa's x and weights, infini: float32). The output has q's dtype; LSE and gradients are computed
in float32 (gradients returned in each input's dtype). The C++ kernels and their options:
docs/DESIGN.md; this API: docs/PYTHON.md."""
from typing import NamedTuple

import torch

from . import _core
from ._convert import arg, grad_arg, like, tensor


class _Flash(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale, causal, window):
        q_, k_, v_ = arg(q, "q"), arg(k, "k"), arg(v, "v")
        fwd = _core.flash_forward(q_, k_, v_, cu_q, cu_k, max_q, max_k, causal, softmax_scale, window)
        out, lse = tensor(fwd.out), tensor(fwd.lse)
        ctx.save_for_backward(q_, k_, v_, out)  # out: autograd then refuses a backward after it was changed in place
        ctx.fwd, ctx.cu = fwd, (cu_q, cu_k)
        ctx.mark_non_differentiable(lse)
        return out.to(q.dtype), lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, _ = ctx.saved_tensors
        dq, dk, dv = _core.flash_backward(q, k, v, ctx.fwd, grad_arg(dout), *ctx.cu)
        return like(dq, q), like(dk, k), like(dv, v), None, None, None, None, None, None, None


def _window_of(causal, window_size):
    """FlashAttention's (causal, window_size=(left, right)) as the C++ (causal, window): keys
    j with i - left <= j <= i + right (-1: unbounded) of query position i. The C++ kernel has causal
    sliding windows: window = left + 1 keys ending at the query."""
    try:
        left, right = (int(w) for w in window_size)
    except (TypeError, ValueError):
        raise TypeError(f"longctx: flash_attn_varlen_func: window_size must be a pair of ints, got {window_size!r}") from None
    if left < -1 or right < -1:
        raise ValueError(f"longctx: flash_attn_varlen_func: window_size entries must be >= -1, got {window_size!r}")
    if not causal and right == 0:
        causal = True  # (left, 0) without causal is a causal window, as in FlashAttention
    if not causal and (left, right) != (-1, -1):
        raise ValueError(f"longctx: flash_attn_varlen_func: window_size={window_size!r} without causal is a "
                         "two-sided local window, not implemented (the C++ kernel has causal sliding windows only)")
    return causal, 0 if left < 0 else left + 1


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """FlashAttention's flash_attn_varlen_func (flash_attn 2.x signature and semantics): causal is
    bottom-right aligned when a sequence has fewer queries than keys; window_size=(left, right)
    with causal (or right == 0) is a sliding window of left + 1 keys. Refused (ValueError): dropout,
    softcap, ALiBi, a paged KV cache, two-sided windows. Always deterministic. With
    return_attn_probs, returns (out, softmax_lse [Hq, total_q], None): probabilities are never
    materialised. A query that sees no key gets output 0 and LSE -inf."""
    for name, value, none in (("dropout_p", dropout_p, 0.0), ("softcap", softcap, 0.0),
                              ("alibi_slopes", alibi_slopes, None), ("block_table", block_table, None)):
        if value is not none and value != none:
            raise ValueError(f"longctx: flash_attn_varlen_func: {name}={value!r} is not implemented (only {none!r})")
    causal, window = _window_of(bool(causal), window_size)
    out, lse = _Flash.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal, window)
    return (out, lse, None) if return_attn_probs else out


class _Moba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu, max_seqlen, options, softmax_scale):
        q_, k_, v_ = arg(q, "q"), arg(k, "k"), arg(v, "v")
        fwd = _core.moba_forward(q_, k_, v_, cu, max_seqlen, options, softmax_scale)
        out, selected = tensor(fwd.out), tensor(fwd.selected)
        ctx.save_for_backward(q_, k_, v_, out)
        ctx.fwd, ctx.cu = fwd, cu
        ctx.mark_non_differentiable(selected)
        return out.to(q.dtype), selected

    @staticmethod
    def backward(ctx, dout, _dsel):
        q, k, v, _ = ctx.saved_tensors
        dq, dk, dv = _core.moba_backward(q, k, v, ctx.fwd, grad_arg(dout), ctx.cu)
        return like(dq, q), like(dk, k), like(dv, v), None, None, None, None


def moba_attn_varlen(q, k, v, cu_seqlens, max_seqlen, moba_chunk_size, moba_topk, *, softmax_scale=None,
                     group_select=False, return_selection=False):
    """MoBA (MoonshotAI/MoBA's moba_attn_varlen): causal attention of each query over its own
    chunk of moba_chunk_size keys plus the moba_topk - 1 past chunks whose mean key scores highest
    (the own chunk counts inside moba_topk). Differs from the reference repository at
    moba_topk = 1: own chunk only, not full attention. GQA allowed. group_select: one selection
    per KV head (NSA's rule). return_selection adds `selected` [Hq, total_q, slots] int32: the past
    chunks each query chose, sequence-local, ascending, -1 padded."""
    options = {"block_size": moba_chunk_size, "top_k": moba_topk, "group_select": bool(group_select)}
    out, selected = _Moba.apply(q, k, v, cu_seqlens, max_seqlen, options, softmax_scale)
    return (out, selected) if return_selection else out


class _KeyConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, cu):
        x_, w_, b_ = arg(x, "x"), arg(weight, "weight"), arg(bias, "bias")
        ctx.save_for_backward(x_, w_)
        ctx.bias, ctx.cu = bias is not None, cu
        return tensor(_core.key_conv_forward(x_, w_, b_, cu))

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dx, dw, db = _core.key_conv_backward(x, w, ctx.bias, grad_arg(dy), ctx.cu)
        return tensor(dx), tensor(dw), (tensor(db) if ctx.bias else None), None


def key_conv(x, weight, bias=None, cu_seqlens=None):
    """MoBA's learned key convolution (docs/DESIGN.md "MoBA key convolution"): a causal depthwise
    convolution over each sequence's keys x [total, Hkv, d], weight [K, Hkv * d] (tap K - 1 weighs
    the token itself), bias None or [Hkv * d]; keys before a sequence's start count as 0. float32."""
    return _KeyConv.apply(x, weight, bias, cu_seqlens)


class SparseSelection(NamedTuple):
    """The keys a top-k or threshold call visited, per (head, query) row h * total_q + t: CSR
    offsets into visited (extra past blocks at block level, the own block being implicit; all
    attended keys at token level), sequence-local indices."""
    row_offset: torch.Tensor
    visited: torch.Tensor
    mean_keys: float
    max_keys: int
    stop_rule: str


class _Sparse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu, max_seqlen, kind, options, softmax_scale, results):
        q_, k_, v_ = arg(q, "q"), arg(k, "k"), arg(v, "v")
        fwd = _core.sparse_forward(kind, q_, k_, v_, cu, max_seqlen, options, softmax_scale)
        results.append(fwd)  # for the selection's statistics
        out, row_offset, visited = tensor(fwd.out), tensor(fwd.row_offset), tensor(fwd.visited)
        ctx.save_for_backward(q_, k_, v_, out)
        ctx.fwd, ctx.cu = fwd, cu
        ctx.mark_non_differentiable(row_offset, visited)
        return out.to(q.dtype), row_offset, visited

    @staticmethod
    def backward(ctx, dout, _drow, _dvis):
        q, k, v, _ = ctx.saved_tensors
        dq, dk, dv = _core.sparse_backward(q, k, v, ctx.fwd, grad_arg(dout), ctx.cu)
        return like(dq, q), like(dk, k), like(dv, v), None, None, None, None, None, None


def _sparse(kind, q, k, v, cu_seqlens, max_seqlen, softmax_scale, return_selection, options):
    results = []
    out, row_offset, visited = _Sparse.apply(q, k, v, cu_seqlens, max_seqlen, kind, options, softmax_scale, results)
    if not return_selection:
        return out
    fwd = results[0]
    return out, SparseSelection(row_offset, visited, fwd.mean_keys, fwd.max_keys, fwd.stop_rule)


def topk_attn_varlen(q, k, v, cu_seqlens=None, max_seqlen=None, *, softmax_scale=None, return_selection=False,
                     **options):
    """Top-k sparse attention. options (longctx.options_help('topk')): block_size (64), top_k (8:
    blocks, own block included, ranked by the Quest bound; or keys when token_level), token_level
    (False), group_select (False: per query head; True: one choice per KV head from the bounds
    summed over its query heads, NSA's rule). return_selection adds a SparseSelection."""
    return _sparse("topk", q, k, v, cu_seqlens, max_seqlen, softmax_scale, return_selection, options)


def threshold_attn_varlen(q, k, v, cu_seqlens=None, max_seqlen=None, *, softmax_scale=None, return_selection=False,
                          **options):
    """Mass-threshold sparse attention: blocks by descending score until the unvisited ones hold
    less than 1 - tau of the mass. options (longctx.options_help('threshold')): block_size (64),
    tau (0.95), stop_rule ('bound' or 'heuristic'). return_selection adds a SparseSelection."""
    return _sparse("threshold", q, k, v, cu_seqlens, max_seqlen, softmax_scale, return_selection, options)


NSA_COMPRESSOR = ("pos", "w1", "b1", "w2", "b2")


class NsaSelection(NamedTuple):
    """selected [total_q, Hkv, top_n] int32: the blocks each query's KV group read (sequence-local,
    ascending, -1 padded); gates [total_q, Hq, 3]: sigmoid gates of (compressed, selected, window)."""
    selected: torch.Tensor
    gates: torch.Tensor


class _Nsa(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cu, max_seqlen, options, softmax_scale, q, k, v, x, gate_w, gate_b, *compressors):
        q_, k_, v_, x_ = arg(q, "q"), arg(k, "k"), arg(v, "v"), arg(x, "x")
        ck, cv = compressors[:5], compressors[5:]
        ck_ = None if ck[0] is None else tuple(arg(t, "compress_k") for t in ck)
        cv_ = None if cv[0] is None else tuple(arg(t, "compress_v") for t in cv)
        fwd = _core.nsa_forward(q_, k_, v_, x_, arg(gate_w, "gate_w"), arg(gate_b, "gate_b"), ck_, cv_, cu,
                                max_seqlen, options, softmax_scale)
        out, selected, gates = tensor(fwd.out), tensor(fwd.selected), tensor(fwd.gates)
        ctx.save_for_backward(q_, k_, v_, x_, out, gate_w, gate_b, *compressors)
        ctx.fwd, ctx.cu = fwd, cu
        ctx.mark_non_differentiable(selected, gates)
        return out.to(q.dtype), selected, gates

    @staticmethod
    def backward(ctx, dout, _dsel, _dgates):
        q, k, v, x, _, gate_w, gate_b, *compressors = ctx.saved_tensors
        g = _core.nsa_backward(q, k, v, x, ctx.fwd, grad_arg(dout), ctx.cu)
        names = [f"compress_{c}.{n}" for c in "kv" for n in NSA_COMPRESSOR]
        dcomp = [like(g[n], t) if t is not None and n in g else None for n, t in zip(names, compressors)]
        return (None, None, None, None, like(g["q"], q), like(g["k"], k), like(g["v"], v), like(g["x"], x),
                like(g["gate_w"], gate_w), like(g["gate_b"], gate_b), *dcomp)


def nsa_attn_varlen(q, k, v, x, gate_w, gate_b, cu_seqlens=None, max_seqlen=None, compress_k=None, compress_v=None,
                    *, softmax_scale=None, return_selection=False, **options):
    """Native Sparse Attention: compressed, selected and sliding-window branches mixed by sigmoid
    gates sigmoid(x gate_w^T + gate_b), rows ordered (head, branch). x [total_q, gate_in] float32
    (the layer's hidden state), gate_w [3 Hq, gate_in], gate_b [3 Hq]. compress_k / compress_v:
    (pos [l, d], w1 [hidden, l d], b1 [hidden], w2 [d, hidden], b2 [d]) each for the MLP
    compressor, None for compress='mean'. options (longctx.options_help('nsa')): block_len,
    stride, select_len, top_n, local_blocks, window, compress, hidden (init only). Gradients flow
    to q, k, v, x and every weight; return_selection adds an NsaSelection."""
    comps = []
    for name, c in (("compress_k", compress_k), ("compress_v", compress_v)):
        if c is None:
            comps += [None] * 5
        elif len(c) != 5:
            raise ValueError(f"longctx: nsa_attn_varlen: {name} must be (pos, w1, b1, w2, b2), got {len(c)} entries")
        else:
            comps += list(c)
    out, selected, gates = _Nsa.apply(cu_seqlens, max_seqlen, dict(options), softmax_scale, q, k, v, x, gate_w, gate_b,
                                      *comps)
    return (out, NsaSelection(selected, gates)) if return_selection else out


class _Infini(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cu, max_seqlen, options, softmax_scale, q, k, v, beta, q_local, k_local):
        q_, k_, v_ = arg(q, "q"), arg(k, "k"), arg(v, "v")
        ql, kl = arg(q_local, "q_local"), arg(k_local, "k_local")
        fwd = _core.infini_forward(q_, k_, v_, ql, kl, arg(beta, "beta"), cu, max_seqlen, options, softmax_scale)
        out = tensor(fwd.out)
        ctx.save_for_backward(q_, k_, v_, out, beta, ql, kl)
        ctx.fwd, ctx.cu = fwd, cu
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, _, beta, ql, kl = ctx.saved_tensors
        g = _core.infini_backward(q, k, v, ql, kl, ctx.fwd, grad_arg(dout), ctx.cu)
        local = [like(g[n], t) if t is not None else None for n, t in (("q_local", ql), ("k_local", kl))]
        return (None, None, None, None, like(g["q"], q), like(g["k"], k), like(g["v"], v), like(g["beta"], beta),
                *local)


def infini_attn_varlen(q, k, v, beta, cu_seqlens=None, max_seqlen=None, q_local=None, k_local=None, *,
                       softmax_scale=None, **options):
    """Infini-attention (float32): causal attention inside segments of segment_len tokens plus a
    compressive memory read with q and written with k, v, mixed per query head by sigmoid(beta)
    (beta [Hq]). q_local / k_local (RoPE'd) feed the local attention when given; q / k then only
    the memory, as the paper does. options (longctx.options_help('infini')): segment_len (2048),
    update ('linear' or 'delta'). Gradients flow to q, k, v, beta and the local q/k."""
    return _Infini.apply(cu_seqlens, max_seqlen, dict(options), softmax_scale, q, k, v, beta, q_local, k_local)


__all__ = ["flash_attn_varlen_func", "moba_attn_varlen", "topk_attn_varlen", "threshold_attn_varlen",
           "nsa_attn_varlen", "infini_attn_varlen", "SparseSelection", "NsaSelection", "NSA_COMPRESSOR"]
