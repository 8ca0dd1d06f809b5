"""nsa_attn_varlen and infini_attn_varlen against plain PyTorch in float64: outputs, the NSA
selection, and the gradients of every input and weight; the references against finite
differences."""
import pytest
import torch

import longctx
import reference as ref
from helpers import compare

NSA_CFG = dict(block_len=4, stride=2, select_len=4, top_n=3, local_blocks=1, window=5)


def nsa_inputs(lens, hq, hkv, d, gate_in, hidden, compress, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = ref.random_qkv(sum(lens), sum(lens), hq, hkv, d, seed)
    x = torch.randn(sum(lens), gate_in, generator=g)
    gate_w, gate_b = 0.5 * torch.randn(3 * hq, gate_in, generator=g), torch.randn(3 * hq, generator=g)
    l = NSA_CFG["block_len"]
    comps = []
    if compress == "mlp":
        for _ in range(2):
            comps += [0.3 * torch.randn(l, d, generator=g), torch.randn(hidden, l * d, generator=g) / (l * d) ** 0.5,
                      0.1 * torch.randn(hidden, generator=g), torch.randn(d, hidden, generator=g) / hidden ** 0.5,
                      0.1 * torch.randn(d, generator=g)]
    return [q, k, v, x, gate_w, gate_b] + comps


def nsa_kernel(cu, max_seqlen, compress, **extra):
    def run(q, k, v, x, gate_w, gate_b, *comps):
        ck, cv = (comps[:5], comps[5:]) if comps else (None, None)
        return longctx.nsa_attn_varlen(q, k, v, x, gate_w, gate_b, cu, max_seqlen, ck, cv, compress=compress,
                                       **NSA_CFG, **extra)
    return run


def nsa_reference(cu, selected):
    def run(q, k, v, x, gate_w, gate_b, *comps):
        ck, cv = (comps[:5], comps[5:]) if comps else (None, None)
        return ref.nsa_forward(q, k, v, x, gate_w, gate_b, ck, cv, NSA_CFG, cu, selected)[0]
    return run


@pytest.mark.parametrize("lens,hq,hkv,compress", [([1, 17, 26], 4, 2, "mlp"), ([23], 2, 2, "mean")])
def test_nsa_matches_reference(lens, hq, hkv, compress):
    inputs = nsa_inputs(lens, hq, hkv, 8, 10, 6, compress, seed=sum(lens))
    cu = ref.cu_of(lens)
    out, sel = nsa_kernel(cu, max(lens), compress, return_selection=True)(*inputs)
    dbl = [t.double() for t in inputs]
    rck, rcv = (dbl[6:11], dbl[11:]) if compress == "mlp" else (None, None)
    _, rsel, rgates = ref.nsa_forward(*dbl[:6], rck, rcv, NSA_CFG, cu)
    assert torch.equal(sel.selected, rsel)
    assert sel.gates.shape == (sum(lens), hq, 3) and torch.allclose(sel.gates.double(), rgates, atol=1e-5)
    compare(nsa_kernel(cu, max(lens), compress), nsa_reference(cu, sel.selected), inputs, atol=3e-4)


def test_nsa_reference_gradcheck():
    lens = [9]
    inputs = [t.double().requires_grad_() for t in nsa_inputs(lens, 2, 1, 4, 3, 3, "mlp", seed=12)]
    cu = ref.cu_of(lens)
    _, selected, _ = ref.nsa_forward(*inputs[:6], inputs[6:11], inputs[11:], NSA_CFG, cu)
    assert torch.autograd.gradcheck(nsa_reference(cu, selected), inputs)


INFINI_CASES = [  # lens, hq, hkv, segment, update, separate local q/k
    ([1, 13, 20], 4, 2, 6, "linear", False),
    ([1, 13, 20], 4, 2, 6, "delta", True),
    ([17], 2, 1, 5, "delta", False),
]


@pytest.mark.parametrize("lens,hq,hkv,segment,update,local", INFINI_CASES)
def test_infini_matches_reference(lens, hq, hkv, segment, update, local):
    g = torch.Generator().manual_seed(13)
    q, k, v = ref.random_qkv(sum(lens), sum(lens), hq, hkv, 8, seed=13)
    beta = torch.randn(hq, generator=g)
    inputs = [q, k, v, beta]
    if local:
        inputs += [torch.randn(q.shape, generator=g), torch.randn(k.shape, generator=g)]
    cu = ref.cu_of(lens)

    def kernel(q, k, v, beta, ql=None, kl=None):
        return longctx.infini_attn_varlen(q, k, v, beta, cu, max(lens), q_local=ql, k_local=kl, segment_len=segment,
                                          update=update)

    def reference(q, k, v, beta, ql=None, kl=None):
        return ref.infini_forward(q, k, v, beta, cu, segment, update, ql, kl)

    compare(kernel, reference, inputs, atol=3e-4)


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_infini_reference_gradcheck(update):
    g = torch.Generator().manual_seed(14)
    q, k, v = (t.double() for t in ref.random_qkv(9, 9, 2, 1, 3, seed=14))
    inputs = [t.requires_grad_() for t in (q, k, v, torch.randn(2, generator=g, dtype=torch.float64))]
    cu = ref.cu_of([4, 5])
    assert torch.autograd.gradcheck(lambda q, k, v, b: ref.infini_forward(q, k, v, b, cu, 3, update), inputs)
