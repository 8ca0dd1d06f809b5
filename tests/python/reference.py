"""Plain PyTorch references of every longctx kernel, in float64, written from the definitions in
docs/DESIGN.md and the headers (dense masks, explicit loops over sequences and segments). Their
autograd gradients are checked against finite differences (torch.autograd.gradcheck) in the
tests; the kernels are then checked against them."""
import math

import torch
import torch.nn.functional as F

F64 = torch.float64


def lengths(cu, total):
    """Sequence lengths of cu_seqlens (None: one sequence of `total`)."""
    if cu is None:
        return [total]
    cu = [int(c) for c in cu]
    return [b - a for a, b in zip(cu, cu[1:])]


def cu_of(lens):
    return torch.tensor([0] + list(torch.tensor(lens).cumsum(0).tolist()), dtype=torch.int32)


def random_qkv(total_q, total_k, hq, hkv, d, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(total_q, hq, d, generator=g)
    k = torch.randn(total_k, hkv, d, generator=g)
    v = torch.randn(total_k, hkv, d, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def attention(q, k, v, mask, scale=None):
    """softmax(scale q k^T) v over the keys mask [Hq, Tq, Tk] allows; query head h reads KV head
    h // (Hq / Hkv). A row without keys gets output 0 and LSE -inf. Returns out, lse [Hq, Tq]."""
    hq, hkv, d = q.shape[1], k.shape[1], q.shape[2]
    scale = d ** -0.5 if scale is None else scale
    kk, vv = k.repeat_interleave(hq // hkv, dim=1), v.repeat_interleave(hq // hkv, dim=1)
    s = torch.einsum("qhd,khd->hqk", q, kk) * scale
    seen = mask.any(-1, keepdim=True)
    s = torch.where(mask, s, torch.full_like(s, -math.inf))
    s = torch.where(seen, s, torch.zeros_like(s))  # rows that see nothing: finite, then zeroed
    lse = torch.logsumexp(s, -1, keepdim=True)
    p = torch.exp(s - lse) * mask
    out = torch.einsum("hqk,khd->qhd", p, vv)
    return out, torch.where(seen, lse, torch.full_like(lse, -math.inf)).squeeze(-1)


def dense_mask(q_lens, k_lens, hq, causal=True, window=0):
    """[Hq, Tq, Tk]: each sequence's queries are its last tokens (bottom-right); query i of a
    sequence sits at key position i + lk - lq and sees keys <= it (causal), within the last
    `window` positions (window > 0)."""
    tq, tk = sum(q_lens), sum(k_lens)
    m = torch.zeros(tq, tk, dtype=torch.bool)
    q0 = k0 = 0
    for lq, lk in zip(q_lens, k_lens):
        p = torch.arange(lq)[:, None] + (lk - lq)
        j = torch.arange(lk)[None, :]
        vis = torch.ones(lq, lk, dtype=torch.bool)
        if causal:
            vis &= j <= p
        if window:
            vis &= j > p - window
        m[q0:q0 + lq, k0:k0 + lk] = vis
        q0, k0 = q0 + lq, k0 + lk
    return m.expand(hq, tq, tk)


def block_mask(q, cu, block, chosen):
    """[Hq, T, T]: every query's own block causally plus the (strictly past) blocks chosen(h, t)
    lists (sequence-local block indices)."""
    t_total, hq = q.shape[0], q.shape[1]
    m = torch.zeros(hq, t_total, t_total, dtype=torch.bool)
    s0 = 0
    for n in lengths(cu, t_total):
        for t in range(n):
            own = t // block
            m[:, s0 + t, s0 + own * block:s0 + t + 1] = True
            for h in range(hq):
                for j in chosen[h][s0 + t]:
                    m[h, s0 + t, s0 + j * block:s0 + min((j + 1) * block, n)] = True
        s0 += n
    return m


def past_block_topk(score_fn, q, k, cu, block, top_k, group_select=False):
    """The top_k - 1 strictly past blocks of each (query head, query) by score_fn(q_t [Hq, d],
    block keys [B, Hkv, d]) -> [Hq] (all when fewer), as a list per head of sets per token.
    group_select: scores summed over each KV head's query heads."""
    t_total, hq, hkv = q.shape[0], q.shape[1], k.shape[1]
    chosen = [[set() for _ in range(t_total)] for _ in range(hq)]
    s0 = 0
    for n in lengths(cu, t_total):
        nb = -(-n // block)
        for t in range(n):
            own = t // block
            if own == 0 or top_k == 1:
                continue
            scores = torch.stack([score_fn(q[s0 + t], k[s0 + j * block:s0 + (j + 1) * block]) for j in range(own)])
            if group_select:
                scores = scores.view(own, hkv, hq // hkv).sum(-1).repeat_interleave(hq // hkv, dim=1)
            take = min(top_k - 1, own)
            for h in range(hq):
                chosen[h][s0 + t] = set(torch.topk(scores[:, h], take).indices.tolist())
        s0 += n
        assert nb >= 1 or n == 0
    return chosen


def mean_key_score(qt, kb):
    """MoBA's gate: q . mean(block keys), per query head."""
    hq, hkv = qt.shape[0], kb.shape[1]
    return (qt * kb.mean(0).repeat_interleave(hq // hkv, dim=0)).sum(-1)


def quest_bound(qt, kb):
    """Quest's upper bound of q . k over a block: sum_i max(q_i min_i, q_i max_i)."""
    hq, hkv = qt.shape[0], kb.shape[1]
    lo = kb.min(0).values.repeat_interleave(hq // hkv, dim=0)
    hi = kb.max(0).values.repeat_interleave(hq // hkv, dim=0)
    return torch.maximum(qt * lo, qt * hi).sum(-1)


def token_topk_mask(q, k, cu, top_k):
    """[Hq, T, T]: each query's top_k causally visible keys by q . k."""
    hq, hkv = q.shape[1], k.shape[1]
    causal = dense_mask(lengths(cu, q.shape[0]), lengths(cu, k.shape[0]), hq)
    s = torch.einsum("qhd,khd->hqk", q, k.repeat_interleave(hq // hkv, dim=1)).masked_fill(~causal, -math.inf)
    m = torch.zeros_like(causal)
    idx = torch.topk(s, min(top_k, s.shape[-1]), dim=-1).indices
    m.scatter_(-1, idx, True)
    return m & causal


def chosen_from_csr(row_offset, visited, hq, t_total):
    """The kernels' CSR selection (row h * T + t) as chosen[h][t] sets."""
    ro, vi = row_offset.tolist(), visited.tolist()
    return [[set(vi[ro[h * t_total + t]:ro[h * t_total + t + 1]]) for t in range(t_total)] for h in range(hq)]


def chosen_from_padded(selected):
    """MoBA's [Hq, T, slots] (-1 padded) as chosen[h][t] sets."""
    return [[{j for j in row if j >= 0} for row in head.tolist()] for head in selected]


# --- NSA (arXiv 2502.11089), as include/longctx/attention/nsa/nsa.hpp defines it -------------------

def nsa_compress(kv, cu, cfg, comp):
    """Compressed keys (or values) [Tc, Hkv, d] and their cu: block i of a sequence covers
    [i*stride, i*stride + l); MLP phi(block) = W2 silu(W1 vec(block + pos) + b1) + b2, or the mean."""
    l, stride = cfg["block_len"], cfg["stride"]
    out, cu_c, s0 = [], [0], 0
    for n in lengths(cu, kv.shape[0]):
        nc = 0
        while nc * stride + l <= n:
            blk = kv[s0 + nc * stride:s0 + nc * stride + l]  # [l, Hkv, d]
            if comp is None:
                out.append(blk.mean(0))
            else:
                pos, w1, b1, w2, b2 = comp
                vec = (blk + pos[:, None, :]).permute(1, 0, 2).reshape(kv.shape[1], -1)  # [Hkv, l*d]
                out.append(F.silu(vec @ w1.T + b1) @ w2.T + b2)
            nc += 1
        cu_c.append(cu_c[-1] + nc)
        s0 += n
    empty = kv.new_zeros(0, kv.shape[1], kv.shape[2])
    return (torch.stack(out) if out else empty), cu_c


def nsa_forward(q, k, v, x, gate_w, gate_b, ck, cv, cfg, cu, selected=None):
    """out [T, Hq, d] and the selection [T, Hkv, top_n] (computed, or the given one)."""
    t_total, hq, hkv, d = q.shape[0], q.shape[1], k.shape[1], q.shape[2]
    l, stride, ls, top_n, local = cfg["block_len"], cfg["stride"], cfg["select_len"], cfg["top_n"], cfg["local_blocks"]
    kc, cu_c = nsa_compress(k, cu, cfg, ck)
    vc, _ = nsa_compress(v, cu, cfg, cv)
    lens = lengths(cu, t_total)
    mask_c = torch.zeros(hq, t_total, kc.shape[0], dtype=torch.bool)
    s0 = 0
    for si, n in enumerate(lens):
        for t in range(n):
            for b in range(cu_c[si + 1] - cu_c[si]):
                mask_c[:, s0 + t, cu_c[si] + b] = t >= b * stride + l - 1
        s0 += n
    out_c, lse_c = attention(q, kc, vc, mask_c)
    if selected is None:
        scale = d ** -0.5
        p = torch.exp(torch.einsum("qhd,khd->hqk", q, kc.repeat_interleave(hq // hkv, dim=1)) * scale
                      - lse_c[..., None]) * mask_c
        selected = torch.full((t_total, hkv, top_n), -1, dtype=torch.int32)
        s0 = 0
        for si, n in enumerate(lens):
            nb = -(-n // ls)
            for t in range(n):
                own = t // ls
                imp = torch.zeros(hq, nb, dtype=F64)
                for b in range(cu_c[si + 1] - cu_c[si]):
                    for j in range(nb):
                        ov = min(b * stride + l, (j + 1) * ls) - max(b * stride, j * ls)
                        if ov > 0:
                            imp[:, j] += p[:, s0 + t, cu_c[si] + b].detach().double() * ov / l
                imp = imp.view(hkv, hq // hkv, nb).sum(1)
                for g in range(hkv):
                    cand = sorted(range(own + 1), key=lambda j: (not (j == 0 or own - j < local), -imp[g, j].item(), -j))
                    pick = sorted(cand[:top_n])
                    selected[s0 + t, g, :len(pick)] = torch.tensor(pick, dtype=torch.int32)
            s0 += n
    mask_s = torch.zeros(hq, t_total, t_total, dtype=torch.bool)
    s0 = 0
    for n in lens:
        for t in range(n):
            for h in range(hq):
                for j in selected[s0 + t, h // (hq // hkv)].tolist():
                    if j >= 0:
                        mask_s[h, s0 + t, s0 + j * ls:s0 + min((j + 1) * ls, t + 1)] = True
        s0 += n
    out_s, _ = attention(q, k, v, mask_s)
    out_w, _ = attention(q, k, v, dense_mask(lens, lens, hq, window=cfg["window"]))
    gates = torch.sigmoid(x @ gate_w.T + gate_b).view(t_total, hq, 3)
    out = gates[..., 0:1] * out_c + gates[..., 1:2] * out_s + gates[..., 2:3] * out_w
    return out, selected, gates


# --- Infini-attention (arXiv 2404.07143), as include/longctx/attention/infini/infini.hpp --------------

INFINI_EPS = 1e-6


def infini_forward(q, k, v, beta, cu, segment_len, update="linear", q_local=None, k_local=None):
    t_total, hq, hkv, d = q.shape[0], q.shape[1], k.shape[1], q.shape[2]
    group = hq // hkv
    seg_lens = []
    for n in lengths(cu, t_total):
        seg_lens += [min(segment_len, n - a) for a in range(0, n, segment_len)]
    local, _ = attention(q if q_local is None else q_local, k if k_local is None else k_local, v,
                         dense_mask(seg_lens, seg_lens, hq))
    sigma = lambda t: F.elu(t) + 1  # noqa: E731
    mem_out, s0 = [], 0
    for n in lengths(cu, t_total):
        M = q.new_zeros(hkv, d, d)
        z = q.new_zeros(hkv, d)
        for a in range(0, n, segment_len):
            e = min(a + segment_len, n)
            sq = sigma(q[s0 + a:s0 + e])  # [n, Hq, d]
            Mq, zq = M.repeat_interleave(group, dim=0), z.repeat_interleave(group, dim=0)
            num = torch.einsum("nhi,hij->nhj", sq, Mq)
            den = (sq * zq).sum(-1, keepdim=True) + INFINI_EPS
            mem_out.append(num / den)
            sk, vs = sigma(k[s0 + a:s0 + e]), v[s0 + a:s0 + e]
            if update == "delta":
                vs = vs - torch.einsum("nhi,hij->nhj", sk, M) / ((sk * z).sum(-1, keepdim=True) + INFINI_EPS)
            M = M + torch.einsum("nhi,nhj->hij", sk, vs)
            z = z + sk.sum(0)
        s0 += n
    gate = torch.sigmoid(beta)[None, :, None]
    return gate * torch.cat(mem_out) + (1 - gate) * local


# --- sparse MoE FFN (include/longctx/moe/moe.hpp, docs/MOE.md) ---------------------------------------

def moe_forward(x, w, cfg, noise=None):
    """out, aux_loss, experts [n, k] of the MoE layer; w: dict of float64 weights."""
    n, E, k = x.shape[0], w["w_gate"].shape[1], cfg["top_k"]
    h = x @ w["w_gate"]
    if cfg["router"] == "noisy" and noise is not None:
        h = h + noise * F.softplus(x @ w["w_noise"])
    lse = torch.logsumexp(h, -1)
    probs = torch.softmax(h, -1)
    score = h + w["expert_bias"] if cfg["router"] == "bias_free" else h
    sel = torch.topk(score.detach(), k, dim=-1).indices  # the routing choice: a constant
    hs = h.gather(1, sel)
    gate = torch.softmax(hs, -1) if cfg["gate_norm"] == "selected" else probs.gather(1, sel)
    kept = torch.ones(n, k, dtype=torch.bool)
    if cfg["capacity_factor"] > 0:
        cap = math.ceil(cfg["capacity_factor"] * n * k / E)
        used = [0] * E
        for j in range(k):
            for t in range(n):
                e = int(sel[t, j])
                kept[t, j] = used[e] < cap
                used[e] += int(kept[t, j])

    def expert(xt, w1, w3, w2):
        return (F.silu(xt @ w1) * (xt @ w3)) @ w2

    out = x.new_zeros(x.shape)
    if cfg["num_shared"] > 0:
        out = out + expert(x, w["shared_w1"], w["shared_w3"], w["shared_w2"])
    for t in range(n):
        for j in range(k):
            if kept[t, j]:
                e = int(sel[t, j])
                out[t] = out[t] + gate[t, j] * expert(x[t], w["w1"][e], w["w3"][e], w["w2"][e])
    importance = x.new_zeros(E).index_add(0, sel.flatten(), gate.flatten())
    mean = importance.mean()
    imp_loss = ((importance - mean) ** 2).mean() / mean ** 2
    routed = torch.bincount(sel.flatten(), minlength=E).to(x.dtype)
    lb_loss = E * ((routed / (n * k)) * probs.mean(0)).sum()
    z_loss = (lse ** 2).mean()
    aux = cfg["importance_weight"] * imp_loss + cfg["load_balance_weight"] * lb_loss + cfg["z_loss_weight"] * z_loss
    return out, aux, sel
