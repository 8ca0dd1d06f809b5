"""topk_attn_varlen and threshold_attn_varlen against plain PyTorch in float64, forward and
backward, with their selections."""
import math

import pytest
import torch

import longctx
import reference as ref
from helpers import close, compare

TOPK_CASES = [  # lens, hq, hkv, d, block, top_k, group_select
    ([37], 4, 4, 8, 8, 3, False),
    ([1, 21, 30], 4, 2, 8, 8, 2, False),
    ([26], 2, 1, 8, 4, 1, False),
    ([5, 40], 4, 2, 8, 8, 3, True),
]


@pytest.mark.parametrize("lens,hq,hkv,d,block,top_k,group", TOPK_CASES)
def test_block_topk_matches_reference(lens, hq, hkv, d, block, top_k, group):
    q, k, v = ref.random_qkv(sum(lens), sum(lens), hq, hkv, d, seed=sum(lens) + 1)
    cu = ref.cu_of(lens)
    chosen = ref.past_block_topk(ref.quest_bound, q.double(), k.double(), cu, block, top_k, group_select=group)
    _, sel = longctx.topk_attn_varlen(q, k, v, cu, max(lens), block_size=block, top_k=top_k, group_select=group,
                                      return_selection=True)
    assert ref.chosen_from_csr(sel.row_offset, sel.visited, hq, sum(lens)) == chosen
    mask = ref.block_mask(q, cu, block, chosen)
    assert sel.mean_keys == pytest.approx(mask.sum().item() / (hq * sum(lens)))
    assert sel.max_keys == mask.sum(-1).max().item()
    compare(lambda q, k, v: longctx.topk_attn_varlen(q, k, v, cu, max(lens), block_size=block, top_k=top_k,
                                                     group_select=group),
            lambda q, k, v: ref.attention(q, k, v, mask)[0], [q, k, v])


@pytest.mark.parametrize("lens,top_k", [([23], 5), ([1, 9, 17], 3)])
def test_token_topk_matches_reference(lens, top_k):
    q, k, v = ref.random_qkv(sum(lens), sum(lens), 4, 2, 8, seed=9)
    cu = ref.cu_of(lens)
    mask = ref.token_topk_mask(q.double(), k.double(), cu, top_k)
    _, sel = longctx.topk_attn_varlen(q, k, v, cu, max(lens), top_k=top_k, token_level=True, return_selection=True)
    got = ref.chosen_from_csr(sel.row_offset, sel.visited, 4, sum(lens))
    s0 = 0
    for n in lens:
        for t in range(s0, s0 + n):
            for h in range(4):
                assert got[h][t] == {j - s0 for j in mask[h, t].nonzero().flatten().tolist()}
        s0 += n
    compare(lambda q, k, v: longctx.topk_attn_varlen(q, k, v, cu, max(lens), top_k=top_k, token_level=True),
            lambda q, k, v: ref.attention(q, k, v, mask)[0], [q, k, v])


@pytest.mark.parametrize("stop_rule", ["bound", "heuristic"])
def test_threshold_matches_reference_over_its_selection(stop_rule):
    """The output and gradients are exact attention over the blocks it visited; with the bound
    rule the attention mass it dropped is provably below 1 - tau."""
    lens, tau, block = [45, 1, 20], 0.8, 4
    q, k, v = ref.random_qkv(66, 66, 4, 2, 8, seed=10)
    q = q * 2  # peaked attention, so that blocks get dropped
    cu = ref.cu_of(lens)
    opts = dict(block_size=block, tau=tau, stop_rule=stop_rule)
    _, sel = longctx.threshold_attn_varlen(q, k, v, cu, 45, return_selection=True, **opts)
    assert sel.stop_rule == stop_rule
    chosen = ref.chosen_from_csr(sel.row_offset, sel.visited, 4, 66)
    mask = ref.block_mask(q, cu, block, chosen)
    causal = ref.dense_mask(lens, lens, 4)
    assert mask.sum() < causal.sum()  # it did skip keys
    if stop_rule == "bound":
        s = torch.einsum("qhd,khd->hqk", q.double(), k.double().repeat_interleave(2, dim=1)) / math.sqrt(8)
        p = torch.softmax(s.masked_fill(~causal, -math.inf), -1)
        assert ((p * (causal & ~mask)).sum(-1) < 1 - tau).all()
    compare(lambda q, k, v: longctx.threshold_attn_varlen(q, k, v, cu, 45, **opts),
            lambda q, k, v: ref.attention(q, k, v, mask)[0], [q, k, v])


def test_threshold_tau_one_is_dense():
    q, k, v = ref.random_qkv(30, 30, 2, 2, 8, seed=11)
    cu = ref.cu_of([30])
    close(longctx.threshold_attn_varlen(q, k, v, cu, 30, block_size=4, tau=1.0),
          longctx.flash_attn_varlen_func(q, k, v, cu, cu, 30, 30, causal=True), 1e-5, what="tau = 1 vs dense")
