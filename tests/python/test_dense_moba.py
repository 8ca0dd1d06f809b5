"""flash_attn_varlen_func and moba_attn_varlen against plain PyTorch in float64, forward and
backward, on the C++ tests' awkward shapes; bf16; the references' gradients against finite
differences."""
import pytest
import torch

import longctx
import reference as ref
from helpers import close, compare

FLASH_CASES = [  # q_lens, k_lens, hq, hkv, d, causal, window_size
    ([13], [13], 4, 4, 16, True, (-1, -1)),
    ([1, 7, 20], [1, 7, 20], 4, 2, 8, True, (-1, -1)),  # one-token sequence, mixed varlen, GQA
    ([5, 9], [12, 9], 6, 2, 8, True, (-1, -1)),  # fewer queries than keys: bottom-right
    ([6, 3], [4, 3], 2, 2, 8, True, (-1, -1)),  # more queries than keys: the first see nothing
    ([9, 4], [9, 4], 4, 1, 8, False, (-1, -1)),  # non-causal MQA
    ([17, 6], [17, 6], 2, 2, 8, True, (4, 0)),  # sliding window of 5 keys
    ([11], [11], 2, 1, 8, False, (2, 0)),  # (left, 0) without causal: a causal window
]


@pytest.mark.parametrize("q_lens,k_lens,hq,hkv,d,causal,window", FLASH_CASES)
def test_flash_matches_reference(q_lens, k_lens, hq, hkv, d, causal, window):
    q, k, v = ref.random_qkv(sum(q_lens), sum(k_lens), hq, hkv, d, seed=len(q_lens) + hq)
    cu_q, cu_k = ref.cu_of(q_lens), ref.cu_of(k_lens)
    left = window[0]
    mask = ref.dense_mask(q_lens, k_lens, hq, causal=causal or window[1] == 0, window=0 if left < 0 else left + 1)

    def kernel(q, k, v):
        return longctx.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(q_lens), max(k_lens), causal=causal,
                                              window_size=window)

    compare(kernel, lambda q, k, v: ref.attention(q, k, v, mask)[0], [q, k, v])
    _, lse, probs = longctx.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(q_lens), max(k_lens), causal=causal,
                                                   window_size=window, return_attn_probs=True)
    rlse = ref.attention(q.double(), k.double(), v.double(), mask)[1]
    assert probs is None and torch.equal(torch.isinf(lse), torch.isinf(rlse))
    close(lse[~torch.isinf(lse)], rlse[~torch.isinf(rlse)], 1e-4, what="lse")


def test_flash_scale_and_default_one_sequence():
    q, k, v = ref.random_qkv(10, 10, 2, 2, 8, seed=3)
    mask = ref.dense_mask([10], [10], 2)
    compare(lambda q, k, v: longctx.flash_attn_varlen_func(q, k, v, None, None, None, None, softmax_scale=0.7,
                                                           causal=True),
            lambda q, k, v: ref.attention(q, k, v, mask, scale=0.7)[0], [q, k, v])


def test_reference_attention_gradcheck():
    """The reference's autograd gradients equal finite differences (float64), including rows
    that see no key."""
    q, k, v = (t.double().requires_grad_() for t in ref.random_qkv(7, 5, 4, 2, 3, seed=4))
    mask = ref.dense_mask([4, 3], [2, 3], 4)
    assert not mask.any(-1).all()  # some query sees nothing
    assert torch.autograd.gradcheck(lambda q, k, v: ref.attention(q, k, v, mask)[0], (q, k, v))


MOBA_CASES = [  # lens, hq, hkv, d, block, top_k, group_select
    ([37], 4, 4, 8, 8, 3, False),  # length not divisible by the block
    ([1, 20, 33], 4, 2, 8, 8, 2, False),  # one token, mixed varlen, GQA
    ([25], 2, 1, 8, 4, 1, False),  # top_k = 1: own block only
    ([29, 16], 4, 2, 8, 8, 3, True),  # group-shared selection
]


@pytest.mark.parametrize("lens,hq,hkv,d,block,top_k,group", MOBA_CASES)
def test_moba_matches_reference(lens, hq, hkv, d, block, top_k, group):
    q, k, v = ref.random_qkv(sum(lens), sum(lens), hq, hkv, d, seed=sum(lens))
    cu = ref.cu_of(lens)
    chosen = ref.past_block_topk(ref.mean_key_score, q.double(), k.double(), cu, block, top_k, group)
    _, selected = longctx.moba_attn_varlen(q, k, v, cu, max(lens), block, top_k, group_select=group,
                                           return_selection=True)
    assert selected.dtype == torch.int32 and selected.shape[:2] == (hq, sum(lens))
    assert ref.chosen_from_padded(selected) == chosen
    mask = ref.block_mask(q, cu, block, chosen)
    compare(lambda q, k, v: longctx.moba_attn_varlen(q, k, v, cu, max(lens), block, top_k, group_select=group),
            lambda q, k, v: ref.attention(q, k, v, mask)[0], [q, k, v])


def test_moba_covering_the_sequence_is_dense_causal():
    lens = [30, 7]
    q, k, v = ref.random_qkv(37, 37, 2, 2, 8, seed=5)
    cu = ref.cu_of(lens)
    moba = longctx.moba_attn_varlen(q, k, v, cu, 30, 8, 4)
    dense = longctx.flash_attn_varlen_func(q, k, v, cu, cu, 30, 30, causal=True)
    close(moba, dense, 1e-5, what="moba with top_k * block >= length vs dense")


@pytest.mark.parametrize("fn", ["flash", "moba", "topk"])
def test_bf16_inputs(fn):
    """bf16 q/k/v: output and gradients in bf16, close to the reference on the rounded values
    (the tile products take bf16 inputs, summing in fp32)."""
    lens = [19, 12]
    q, k, v = ref.random_qkv(31, 31, 4, 2, 16, seed=6, dtype=torch.bfloat16)
    cu = ref.cu_of(lens)
    if fn == "flash":
        mask = ref.dense_mask(lens, lens, 4)
        kernel = lambda q, k, v: longctx.flash_attn_varlen_func(q, k, v, cu, cu, 19, 19, causal=True)  # noqa: E731
    elif fn == "moba":
        chosen = ref.past_block_topk(ref.mean_key_score, q.double(), k.double(), cu, 4, 2)
        mask = ref.block_mask(q, cu, 4, chosen)
        kernel = lambda q, k, v: longctx.moba_attn_varlen(q, k, v, cu, 19, 4, 2)  # noqa: E731
    else:
        chosen = ref.past_block_topk(ref.quest_bound, q.double(), k.double(), cu, 4, 3)
        mask = ref.block_mask(q, cu, 4, chosen)
        kernel = lambda q, k, v: longctx.topk_attn_varlen(q, k, v, cu, 19, block_size=4, top_k=3)  # noqa: E731
    out = compare(kernel, lambda q, k, v: ref.attention(q, k, v, mask)[0], [q, k, v], atol=3e-2, rtol=3e-2)
    assert out.dtype == torch.bfloat16


def test_gqa_gradient_sums_over_the_group():
    """GQA without copies: dK of a KV head is the sum over its query heads; equal to running
    the expanded (copied) K/V through the kernel."""
    q, k, v = ref.random_qkv(12, 12, 4, 1, 8, seed=7)
    cu = ref.cu_of([12])
    qa, ka, va = (t.clone().requires_grad_() for t in (q, k, v))
    longctx.moba_attn_varlen(qa, ka, va, cu, 12, 4, 2).sum().backward()
    qb = q.clone().requires_grad_()
    kb, vb = (t.clone().requires_grad_() for t in (k, v))
    longctx.moba_attn_varlen(qb, kb.expand(12, 4, 8), vb.expand(12, 4, 8), cu, 12, 4, 2).sum().backward()
    close(ka.grad, kb.grad, 1e-5, what="dk")
    close(qa.grad, qb.grad, 1e-5, what="dq")


def reference_key_conv(x, w, b, lens):
    """Causal depthwise convolution per sequence in plain PyTorch (torch's conv1d, left zero padding)."""
    kernel, outs, start = w.shape[0], [], 0
    for n in lens:
        seq = x[start:start + n].reshape(n, -1).T.unsqueeze(0)  # [1, C, n]
        y = torch.nn.functional.conv1d(torch.nn.functional.pad(seq, (kernel - 1, 0)), w.T.unsqueeze(1),
                                       b, groups=seq.shape[1])
        outs.append(y[0].T.reshape(n, *x.shape[1:]))
        start += n
    return torch.cat(outs)


@pytest.mark.parametrize("lens,kernel,bias", [([1, 7, 2], 3, True), ([5], 5, False), ([2, 9], 4, True)])
def test_key_conv_matches_reference(lens, kernel, bias):
    """Forward and gradients (keys, taps, bias) against torch's conv1d in float64; a kernel longer
    than a sequence and one-token sequences never read another sequence's keys."""
    g = torch.Generator().manual_seed(kernel)
    x = torch.randn(sum(lens), 2, 3, generator=g)
    w = torch.randn(kernel, 6, generator=g)
    b = torch.randn(6, generator=g) if bias else None
    cu = ref.cu_of(lens)
    inputs = [x, w] + ([b] if bias else [])
    compare(lambda x, w, *b: longctx.key_conv(x, w, b[0] if b else None, cu),
            lambda x, w, *b: reference_key_conv(x, w, b[0] if b else None, lens), inputs, atol=1e-5)
