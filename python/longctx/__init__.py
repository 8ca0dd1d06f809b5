"""longctx from PyTorch: long-context attention (dense flash, MoBA, NSA, top-k, mass threshold,
Infini-attention) and the sparse MoE FFN on CPUs, as torch.autograd.Functions and nn.Modules over
the C++ kernels (docs/PYTHON.md). Import with PYTHONPATH=build/python after scripts/setup.sh.

Errors of the C++ library arrive as ValueError (bad values, shapes, options) or TypeError (wrong
types or dtypes) carrying its message. Threads: the kernels use the calling thread's OpenMP
thread count, which torch.set_num_threads and longctx.set_threads both set."""
from . import _core
from ._core import attention_options, get_threads, moe_options, options_help, set_threads
from .attention import (NsaSelection, SparseSelection, flash_attn_varlen_func, infini_attn_varlen, key_conv,
                        moba_attn_varlen, nsa_attn_varlen, threshold_attn_varlen, topk_attn_varlen)
from .modules import LlamaAttention, MoEFeedForward, RotaryEmbedding
from .moe import MoEInfo, moe_ffn, moe_update_expert_bias

__all__ = ["flash_attn_varlen_func", "moba_attn_varlen", "topk_attn_varlen", "threshold_attn_varlen",
           "nsa_attn_varlen", "infini_attn_varlen", "moe_ffn", "moe_update_expert_bias", "LlamaAttention",
           "MoEFeedForward", "RotaryEmbedding", "SparseSelection", "NsaSelection", "MoEInfo", "attention_options",
           "moe_options", "options_help", "set_threads", "get_threads"]
