"""moe_ffn against plain PyTorch in float64: outputs, routing, aux loss and the gradients of
<out, dout> + c * aux_loss for every weight; the bias-free router's update; the reference
against finite differences."""
import pytest
import torch

import longctx
import reference as ref
from helpers import close, leaf

N, D, F, E = 13, 6, 5, 4


def weights(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    w = {"w_gate": torch.randn(D, E, generator=g), "w1": torch.randn(E, D, F, generator=g) / D ** 0.5,
         "w3": torch.randn(E, D, F, generator=g) / D ** 0.5, "w2": torch.randn(E, F, D, generator=g) / F ** 0.5}
    if cfg["router"] == "noisy":
        w["w_noise"] = 0.5 * torch.randn(D, E, generator=g)
    if cfg["router"] == "bias_free":
        w["expert_bias"] = torch.randn(E, generator=g)
    s = cfg["num_shared"] * F
    if s:
        w.update(shared_w1=torch.randn(D, s, generator=g) / D ** 0.5, shared_w3=torch.randn(D, s, generator=g) / D ** 0.5,
                 shared_w2=torch.randn(s, D, generator=g) / s ** 0.5)
    return w


CASES = [  # options; aux coefficient in the loss (0: aux_loss unused)
    (dict(top_k=2, num_shared=1, importance_weight=0.1, load_balance_weight=0.05, z_loss_weight=0.01), 0.7),
    (dict(top_k=2, gate_norm="all", capacity_factor=1.0, load_balance_weight=0.05), 1.0),  # tokens dropped
    (dict(top_k=1, gate_norm="all", router="bias_free", importance_weight=0.2), 0.0),
    (dict(top_k=2, router="noisy", z_loss_weight=0.02), 2.0),
]


@pytest.mark.parametrize("options,aux_coef", CASES)
def test_moe_matches_reference(options, aux_coef):
    cfg = longctx.moe_options(options)
    w = weights(cfg, seed=len(options))
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(15))
    dout = torch.randn(N, D, generator=torch.Generator().manual_seed(16))
    kw = {n: leaf(t) if n != "expert_bias" else t for n, t in w.items()}
    xk = leaf(x)
    out, aux, info = longctx.moe_ffn(xk, training=True, noise_seed=5, **kw, **options)
    ((out * dout).sum() + aux_coef * aux).backward()

    rw = {n: leaf(t.double()) if n != "expert_bias" else t.double() for n, t in w.items()}
    xr = leaf(x.double())
    noise = info.forward.noise
    noise = torch.from_dlpack(noise).double() if cfg["router"] == "noisy" else None
    rout, raux, rsel = ref.moe_forward(xr, rw, cfg, noise)
    ((rout * dout.double()).sum() + aux_coef * raux).backward()

    assert torch.equal(info.expert.long(), rsel)
    close(out, rout, 2e-5, what="out")
    close(aux, raux, 2e-5, what="aux_loss")
    assert info.stats["aux_loss"] == pytest.approx(aux.item(), rel=1e-6)
    if cfg["capacity_factor"] > 0:
        assert info.stats["dropped_assignments"] > 0
    close(xk.grad, xr.grad, 1e-4, what="dx")
    for n, t in kw.items():
        if n != "expert_bias":
            close(t.grad, rw[n].grad, 1e-4, what=f"d{n}")


def test_moe_reference_gradcheck():
    cfg = longctx.moe_options(dict(top_k=2, num_shared=1, capacity_factor=1.0, importance_weight=0.3,
                                   load_balance_weight=0.2, z_loss_weight=0.1))
    w = {n: t.double().requires_grad_() for n, t in weights(cfg, seed=17).items()}
    x = torch.randn(7, D, dtype=torch.float64).requires_grad_()
    names = list(w)

    def loss(x, *ws):
        out, aux, _ = ref.moe_forward(x, dict(zip(names, ws)), cfg)
        return out.sum() + aux
    assert torch.autograd.gradcheck(loss, (x, *w.values()))


def test_bias_free_update_changes_the_bias_in_place():
    options = dict(top_k=1, gate_norm="all", router="bias_free", bias_update_rate=0.25)
    w = weights(longctx.moe_options(options), seed=18)
    bias = w["expert_bias"]
    before, address = bias.clone(), bias.data_ptr()
    _, _, info = longctx.moe_ffn(torch.randn(N, D), **w, **options)
    longctx.moe_update_expert_bias(bias, info)
    load = torch.tensor(info.stats["routed_per_expert"], dtype=torch.float32)
    assert bias.data_ptr() == address
    close(bias, before + 0.25 * torch.sign(load.mean() - load), 1e-7, what="expert_bias")
