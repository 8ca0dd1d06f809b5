#!/usr/bin/python3
"""A PyTorch twin of Hugging Face's LlamaForCausalLM, for tests/model/test_hf_import.cpp.

No Hugging Face weights (and no `transformers`) exist on the test machines, so this writes small
random Llama checkpoints in HF's layout (config.json, model.safetensors or shards with
model.safetensors.index.json) and the twin's logits and greedy continuation, which longctx's
import must reproduce. The twin follows HF's modeling_llama math: RMSNorm, q/k/v/o projections
stored [out, in], RoPE by halves (rotate_half), GQA by repeating each KV head over its group,
a causal softmax, the SwiGLU MLP down(silu(gate(x)) * up(x)), a final norm and the (tied or
untied) LM head. It computes in float64 on the weights as stored (rounded to bf16 or f16), so the
comparison measures longctx's fp32 arithmetic only.

Usage: hf_llama_twin.py SPEC.json, where SPEC.json is {"variants": [{...}, ...]}; each variant
names its folder ("dir") and shape, and the twin writes <dir>/twin.json with "logits" [T][V] of
"tokens", "greedy" (the next "greedy" argmax tokens) and "margin" (the smallest top-1 minus top-2
logit gap along the greedy path).
"""
import json
import math
import os
import struct
import sys

import torch

DTYPES = {"f32": (torch.float32, "F32"), "bf16": (torch.bfloat16, "BF16"), "f16": (torch.float16, "F16")}


def make_weights(v):
    """HF tensor name -> float32 tensor, in HF's layout (nn.Linear weights are [out, in])."""
    g = torch.Generator().manual_seed(v["seed"])
    D, F, V = v["hidden"], v["ffn"], v["vocab"]
    H, Hkv = v["heads"], v["kv_heads"]
    dh = D // H

    def normal(*shape, std):
        return torch.randn(*shape, generator=g) * std

    def gain():
        return 1.0 + 0.2 * torch.randn(D, generator=g)

    w = {"model.embed_tokens.weight": normal(V, D, std=1.0)}
    for l in range(v["layers"]):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = gain()
        w[p + "self_attn.q_proj.weight"] = normal(H * dh, D, std=0.4)
        w[p + "self_attn.k_proj.weight"] = normal(Hkv * dh, D, std=0.4)
        w[p + "self_attn.v_proj.weight"] = normal(Hkv * dh, D, std=0.3)
        w[p + "self_attn.o_proj.weight"] = normal(D, H * dh, std=0.3)
        w[p + "post_attention_layernorm.weight"] = gain()
        w[p + "mlp.gate_proj.weight"] = normal(F, D, std=0.3)
        w[p + "mlp.up_proj.weight"] = normal(F, D, std=0.3)
        w[p + "mlp.down_proj.weight"] = normal(D, F, std=0.3)
        if v.get("inv_freq"):  # older HF files save RoPE's frequencies as a buffer
            w[p + "self_attn.rotary_emb.inv_freq"] = rope_inv_freq(dh, v["rope_theta"]).float()
    w["model.norm.weight"] = gain()
    if not v["tied"]:
        w["lm_head.weight"] = normal(V, D, std=0.3)
    dtype = DTYPES[v["dtype"]][0]
    return {n: t.to(dtype) for n, t in w.items()}


def rope_inv_freq(dh, theta):
    return 1.0 / (theta ** (torch.arange(0, dh, 2, dtype=torch.float64) / dh))


def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def forward(w, v, tokens):
    """Logits [T, V] of LlamaForCausalLM on one sequence, in float64."""
    W = {n: t.to(torch.float64) for n, t in w.items()}
    D, H, Hkv, eps = v["hidden"], v["heads"], v["kv_heads"], v["eps"]
    dh, T = D // H, len(tokens)
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), rope_inv_freq(dh, v["rope_theta"]))
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    x = W["model.embed_tokens.weight"][torch.tensor(tokens)]
    for l in range(v["layers"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = (h @ W[p + "self_attn.q_proj.weight"].T).view(T, H, dh).transpose(0, 1)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).view(T, Hkv, dh).transpose(0, 1)
        val = (h @ W[p + "self_attn.v_proj.weight"].T).view(T, Hkv, dh).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(H // Hkv, dim=0)  # HF repeat_kv: query head i reads KV head i // group
        val = val.repeat_interleave(H // Hkv, dim=0)
        scores = q @ k.transpose(1, 2) / math.sqrt(dh) + mask
        att = torch.softmax(scores, dim=-1) @ val
        x = x + att.transpose(0, 1).reshape(T, H * dh) @ W[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        gate = torch.nn.functional.silu(h @ W[p + "mlp.gate_proj.weight"].T)
        x = x + (gate * (h @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
    head = W["model.embed_tokens.weight"] if v["tied"] else W["lm_head.weight"]
    return rms_norm(x, W["model.norm.weight"], eps) @ head.T


def tensor_bytes(t):
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().tobytes()
    return t.contiguous().numpy().tobytes()


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        data = tensor_bytes(t)
        header[name] = {"dtype": DTYPES[{torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}[t.dtype]][1],
                        "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def write_checkpoint(v, w):
    d = v["dir"]
    os.makedirs(d, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "vocab_size": v["vocab"], "hidden_size": v["hidden"], "intermediate_size": v["ffn"],
              "num_hidden_layers": v["layers"], "num_attention_heads": v["heads"],
              "num_key_value_heads": v["kv_heads"], "max_position_embeddings": v["max_pos"],
              "rms_norm_eps": v["eps"], "rope_theta": v["rope_theta"], "rope_scaling": None,
              "tie_word_embeddings": v["tied"], "attention_bias": False, "bos_token_id": 1,
              "eos_token_id": 2, "torch_dtype": {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[v["dtype"]]}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    stored = {n: t for n, t in w.items() if n != v.get("drop")}
    names, shards = list(stored), v["shards"]
    if shards == 1:
        write_safetensors(os.path.join(d, "model.safetensors"), stored)
        return
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i * len(names) // shards:(i + 1) * len(names) // shards]
        write_safetensors(os.path.join(d, file), {n: stored[n] for n in part})
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in stored.values())
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def greedy(w, v, tokens, n):
    out, margin, seq = [], float("inf"), list(tokens)
    for _ in range(n):
        last = forward(w, v, seq)[-1]
        top = torch.topk(last, 2).values
        margin = min(margin, float(top[0] - top[1]))
        seq.append(int(last.argmax()))
        out.append(seq[-1])
    return out, margin


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    for v in spec["variants"]:
        w = make_weights(v)
        write_checkpoint(v, w)
        logits = forward(w, v, v["tokens"])
        tokens, margin = greedy(w, v, v["tokens"], v["greedy"])
        with open(os.path.join(v["dir"], "twin.json"), "w") as f:
            json.dump({"logits": logits.tolist(), "greedy": tokens, "margin": margin}, f)


if __name__ == "__main__":
    main()
