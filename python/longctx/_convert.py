"""Tensors across the binding: torch tensors go to C++ by DLPack without a copy, C++ results come
back the same way (docs/PYTHON.md "Zero-copy")."""
import torch


def arg(t, name):
    """A tensor as the C++ side borrows it: detached (DLPack refuses tensors that require grad; the
    result shares memory and version counter), and contiguous, which copies only a tensor that is
    not (the kernels read row-major [tokens, heads, head_dim] memory)."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"longctx: {name} must be a torch.Tensor, got {type(t).__name__}")
    return t.detach().contiguous()


def grad_arg(g):
    """An incoming gradient as the C++ backward takes it: contiguous float32."""
    return g.detach().contiguous().float()


def tensor(array):
    """A longctx Array (a view of a C++ buffer) as a torch tensor over the same memory."""
    return torch.from_dlpack(array)


def like(array, ref):
    """A C++ gradient (float32) as a tensor of ref's dtype: zero-copy when ref is float32."""
    t = torch.from_dlpack(array)
    return t if ref is None or t.dtype == ref.dtype else t.to(ref.dtype)

