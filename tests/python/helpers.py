"""Shared by the Python tests: run a longctx function and its float64 reference on the same
inputs and compare outputs and gradients."""
import torch


def leaf(t):
    return t.detach().clone().requires_grad_(t.is_floating_point())


def close(a, b, atol, rtol=1e-3, what=""):
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def compare(kernel, reference, inputs, atol=2e-4, rtol=1e-3, seed=1, grads=None):
    """kernel(*inputs) (as given) against reference(*inputs in float64): outputs, and the
    gradients of <out, dout> for a random dout with respect to every floating input (or the
    indices in `grads`). Returns the kernel's output."""
    xs = [leaf(t) if isinstance(t, torch.Tensor) else t for t in inputs]
    out = kernel(*xs)
    g = torch.Generator().manual_seed(seed)
    dout = torch.randn(out.shape, generator=g)
    out.float().backward(dout)
    rs = [leaf(t.double()) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs]
    rout = reference(*rs)
    rout.backward(dout.double())
    close(out, rout, atol, rtol, "output")
    for i, (x, r) in enumerate(zip(xs, rs)):
        if isinstance(x, torch.Tensor) and x.is_floating_point() and (grads is None or i in grads):
            assert x.grad is not None and x.grad.dtype == x.dtype, f"input {i}: gradient missing or not {x.dtype}"
            close(x.grad, r.grad, atol * 4, rtol, f"gradient of input {i}")
    return out
