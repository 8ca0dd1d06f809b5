"""The binding itself: inputs borrowed and results viewed without copies (torch and NumPy),
non-contiguous inputs, option dicts, threads, and bad input raising ValueError / TypeError with
the C++ message."""
import gc

import numpy as np
import pytest
import torch

import longctx
import reference as ref
from helpers import close
from longctx import _core


def test_inputs_are_borrowed_not_copied():
    t = torch.randn(5, 2, 8)
    assert _core.address_of(t) == t.data_ptr()
    b = t.to(torch.bfloat16)
    assert _core.address_of(b) == b.data_ptr()
    a = np.random.default_rng(0).standard_normal((5, 2, 8), dtype=np.float32)
    assert _core.address_of(a) == a.ctypes.data
    view = t[1:]  # contiguous, at an offset
    assert _core.address_of(view) == view.data_ptr()


def test_results_are_views_of_the_cpp_buffers():
    q, k, v = ref.random_qkv(12, 12, 2, 2, 8, seed=20)
    fwd = _core.moba_forward(q, k, v, None, None, {"block_size": 4, "top_k": 2}, None)
    a, b, n = torch.from_dlpack(fwd.out), torch.from_dlpack(fwd.out), np.asarray(fwd.out)
    assert a.data_ptr() == b.data_ptr() == n.ctypes.data
    a[0, 0, 0] = 123.0
    assert n[0, 0, 0] == 123.0
    expected = a.clone()
    del fwd, b, n
    gc.collect()
    assert torch.equal(a, expected)  # the tensor keeps the C++ result alive
    out = longctx.moba_attn_varlen(q.requires_grad_(), k, v, None, None, 4, 2)
    assert out.data_ptr() == torch.from_dlpack(out.grad_fn.fwd.out).data_ptr()


def test_changing_an_output_in_place_before_backward_is_refused():
    """The C++ backward reads the forward's output from the buffer the returned tensor views."""
    q, k, v = (t.requires_grad_() for t in ref.random_qkv(8, 8, 2, 2, 8, seed=24))
    out = longctx.flash_attn_varlen_func(q, k, v, None, None, None, None, causal=True)
    out.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_numpy_arrays_in_and_out():
    q, k, v = ref.random_qkv(9, 9, 4, 2, 8, seed=21)
    cu = np.array([0, 4, 9], dtype=np.int64)
    fwd = _core.flash_forward(q.numpy(), k.numpy(), v.numpy(), cu, cu, 5, 5, True, None, 0)
    expected = longctx.flash_attn_varlen_func(q, k, v, torch.from_numpy(cu), torch.from_numpy(cu), 5, 5, causal=True)
    np.testing.assert_array_equal(np.from_dlpack(fwd.out), expected.numpy())
    dq, dk, dv = _core.flash_backward(q.numpy(), k.numpy(), v.numpy(), fwd, np.ones((9, 4, 8), np.float32), [0, 4, 9],
                                      [0, 4, 9])
    assert np.asarray(dk).shape == (9, 2, 8) and np.isfinite(np.asarray(dq)).all()


def test_non_contiguous_inputs():
    """The autograd functions make them contiguous (a copy); the raw binding refuses them."""
    q, k, v = ref.random_qkv(10, 10, 2, 2, 8, seed=22)
    qt = q.transpose(0, 1).contiguous().transpose(0, 1)  # same values, strided
    assert not qt.is_contiguous()
    close(longctx.moba_attn_varlen(qt, k, v, None, None, 4, 2), longctx.moba_attn_varlen(q, k, v, None, None, 4, 2),
          0, what="strided q")
    with pytest.raises(ValueError, match="q must be contiguous"):
        _core.moba_forward(qt, k, v, None, None, {}, None)


def test_options_are_read_like_the_cpp_config():
    assert longctx.attention_options("moba", {"top_k": 5}) == {"kind": "moba", "block_size": 512, "top_k": 5,
                                                               "group_select": False, "key_conv": 0,
                                                               "key_conv_bias": False}
    names = [n for n, _, _ in longctx.options_help("nsa")]
    assert names == ["block_len", "stride", "select_len", "top_n", "local_blocks", "window", "compress", "hidden"]
    assert longctx.moe_options({"router": "noisy"})["router"] == "noisy"


def test_threads_are_shared_with_torch():
    before = torch.get_num_threads()
    try:
        longctx.set_threads(2)
        assert longctx.get_threads() == 2 and torch.get_num_threads() == 2
        torch.set_num_threads(1)
        assert longctx.get_threads() == 1
        with pytest.raises(ValueError, match="threads must be in"):
            longctx.set_threads(0)
    finally:
        torch.set_num_threads(before)


q0, k0, v0 = ref.random_qkv(10, 10, 4, 2, 8, seed=23)
cu0 = ref.cu_of([4, 6])
BAD = [  # call, exception, the C++ (or binding) message
    (lambda: longctx.flash_attn_varlen_func(q0[0], k0, v0, None, None, None, None), ValueError,
     "q must be \\[tokens, heads, head_dim\\]"),
    (lambda: longctx.flash_attn_varlen_func(q0[:, :3], k0, v0, None, None, None, None), ValueError,
     "query heads \\(3\\) must be a multiple of kv heads \\(2\\)"),
    (lambda: longctx.flash_attn_varlen_func(q0, k0, v0, cu0, cu0, 5, 6), ValueError,
     "max_seqlen_q must be >= the longest sequence \\(6\\), got 5"),
    (lambda: longctx.flash_attn_varlen_func(q0, k0, v0, torch.tensor([0, 4, 9]), cu0, 6, 6), ValueError,
     "cu_seqlens_q ends at 9 but the tensor has 10 rows"),
    (lambda: longctx.flash_attn_varlen_func(q0, k0, v0, cu0, cu0, 6, 6, dropout_p=0.1), ValueError, "dropout_p"),
    (lambda: longctx.flash_attn_varlen_func(q0, k0, v0, cu0, cu0, 6, 6, window_size=(2, 2)), ValueError,
     "two-sided local window"),
    (lambda: longctx.flash_attn_varlen_func(q0.double(), k0, v0, cu0, cu0, 6, 6), TypeError,
     "q must be float32 or bfloat16, got float64"),
    (lambda: longctx.flash_attn_varlen_func(q0.tolist(), k0, v0, cu0, cu0, 6, 6), TypeError,
     "q must be a torch.Tensor, got list"),
    (lambda: longctx.flash_attn_varlen_func(q0, k0, v0, cu0.float(), cu0, 6, 6), TypeError,
     "cu_seqlens_q must be int32 or int64, got float32"),
    (lambda: longctx.flash_attn_varlen_func(q0, k0, v0, cu0, cu0, 6, 6, softmax_scale=-1.0), ValueError,
     "softmax_scale must be finite and > 0"),
    (lambda: longctx.moba_attn_varlen(q0, k0, v0, cu0, 6, 0, 2), ValueError, "block_size must be > 0, got 0"),
    (lambda: longctx.moba_attn_varlen(q0, k0, v0, cu0, 6, 4, 2.5), ValueError, "top_k must be an integer, got 2.5"),
    (lambda: longctx.topk_attn_varlen(q0, k0, v0, cu0, 6, blocksize=4), ValueError,
     "unknown field 'blocksize' \\(topk fields: block_size, top_k, token_level, group_select\\)"),
    (lambda: longctx.threshold_attn_varlen(q0, k0, v0, cu0, 6, tau=1.5), ValueError, "tau must be in \\(0, 1\\]"),
    (lambda: longctx.threshold_attn_varlen(q0, k0, v0, cu0, 6, stop_rule="guess"), ValueError,
     "stop_rule must be 'bound' or 'heuristic', got 'guess'"),
    (lambda: longctx.infini_attn_varlen(q0.bfloat16(), k0, v0, torch.zeros(4), cu0, 6), ValueError,
     "q must be f32, got bf16"),
    (lambda: longctx.infini_attn_varlen(q0, k0, v0, torch.zeros(3), cu0, 6), ValueError,
     "beta has 3 entries but q has 4 heads"),
    (lambda: longctx.nsa_attn_varlen(q0, k0, v0, torch.zeros(10, 5), torch.zeros(12, 5), torch.zeros(11), cu0, 6,
                                     compress="mean"), ValueError, "gate_b must have 3 \\* heads = 12 entries, got 11"),
    (lambda: longctx.moe_ffn(torch.zeros(3, 4), torch.zeros(4, 2), torch.zeros(2, 4, 5), torch.zeros(2, 4, 5),
                             torch.zeros(2, 5, 4), top_k=3), ValueError, "top_k"),
    (lambda: longctx.moe_ffn(torch.zeros(3, 4), torch.zeros(4, 2), torch.zeros(2, 4, 5), torch.zeros(2, 4, 5),
                             torch.zeros(2, 4, 4)), ValueError, "w2 must be f32 \\[2, 5, 4\\]"),
    (lambda: longctx.LlamaAttention(32, 4, attention={"kind": "moba", "top_k": 0}), ValueError,
     "top_k must be > 0, got 0"),
    (lambda: longctx.LlamaAttention(32, 4, attention="sliding"), ValueError, "unknown attention kind 'sliding'"),
]


@pytest.mark.parametrize("call,exc,message", BAD)
def test_bad_input_raises_with_the_cpp_message(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_moe_refuses_a_negative_gradient_on_aux_loss():
    w = dict(w_gate=torch.randn(4, 2), w1=torch.randn(2, 4, 5), w3=torch.randn(2, 4, 5), w2=torch.randn(2, 5, 4))
    w = {n: t.requires_grad_() for n, t in w.items()}
    out, aux, _ = longctx.moe_ffn(torch.randn(3, 4), **w, top_k=2, load_balance_weight=0.1)
    with pytest.raises(ValueError, match="gradient reaching aux_loss must be finite and >= 0"):
        (out.sum() - aux).backward()
