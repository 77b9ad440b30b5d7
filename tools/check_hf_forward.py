#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Cross-check of an exported folder (caldera-convert output) against a known fact: a small
# NumPy implementation of Hugging Face's LlamaForCausalLM forward (rotate_half RoPE, GQA,
# RMSNorm, SwiGLU) decodes greedily from the exported weights and the tokenizer stored in the
# safetensors __metadata__. For stories260K, shared/data/README.md gives the expected text.
# If the q/k rows were left in llama2.c's interleaved order, the text would differ.
# Usage: python3 check_hf_forward.py EXPORT_DIR ["Once upon a time" [EXPECTED_PREFIX]]
import json
import os
import sys

import numpy as np
from safetensors import safe_open

KNOWN = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
         "One day, she saw a big, red ball. She wanted to play with it, but it was too high")


def load(folder):
    cfg = json.load(open(os.path.join(folder, "config.json")))
    w = {}
    with safe_open(os.path.join(folder, "model.safetensors"), framework="numpy") as f:
        meta = f.metadata()
        for k in f.keys():
            w[k] = f.get_tensor(k).astype(np.float32)
    tokens = json.loads(meta["tokenizer.ggml.tokens"])
    scores = json.loads(meta["tokenizer.ggml.scores"])
    return cfg, w, tokens, scores


def encode(text, tokens, scores):
    # SentencePiece-style BPE as llama2.c does it: dummy prefix, characters, best-score merges.
    ids = {t: i for i, t in enumerate(tokens)}
    out = []
    for ch in " " + text:
        if ch in ids:
            out.append(ids[ch])
        else:
            out.extend(ids["<0x%02X>" % b] for b in ch.encode("utf-8"))
    while True:
        best, where = None, -1
        for i in range(len(out) - 1):
            m = ids.get(tokens[out[i]] + tokens[out[i + 1]])
            if m is not None and (best is None or scores[m] > scores[best]):
                best, where = m, i
        if best is None:
            return [1] + out  # BOS first
        out[where:where + 2] = [best]


def decode(ids, tokens):
    s = b""
    for i in ids:
        t = tokens[i]
        if t.startswith("<0x") and len(t) == 6:
            s += bytes([int(t[3:5], 16)])
        else:
            s += t.encode("utf-8")
    return s.decode("utf-8", "replace")


def rms(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def forward(cfg, w, ids):
    L, H, KV = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // H
    eps, theta = cfg["rms_norm_eps"], cfg.get("rope_theta", 10000.0)
    T = len(ids)
    x = w["model.embed_tokens.weight"][ids]
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.outer(np.arange(T), inv)
    cos = np.cos(np.concatenate([ang, ang], -1)).astype(np.float32)
    sin = np.sin(np.concatenate([ang, ang], -1)).astype(np.float32)

    def rope(t):  # (heads, T, hd), HF rotate_half
        rot = np.concatenate([-t[..., hd // 2:], t[..., :hd // 2]], -1)
        return t * cos + rot * sin

    mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
    for l in range(L):
        p = f"model.layers.{l}."
        h = rms(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, H, hd).transpose(1, 0, 2)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, KV, hd).transpose(1, 0, 2)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, KV, hd).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        k = np.repeat(k, H // KV, 0)
        v = np.repeat(v, H // KV, 0)
        a = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(1, 0, 2).reshape(T, H * hd)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"], eps)
        g = h @ w[p + "mlp.gate_proj.weight"].T
        u = h @ w[p + "mlp.up_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x[-1] @ head.T


def main():
    folder = sys.argv[1]
    prompt = sys.argv[2] if len(sys.argv) > 2 else "Once upon a time"
    expected = sys.argv[3] if len(sys.argv) > 3 else KNOWN
    cfg, w, tokens, scores = load(folder)
    ids = encode(prompt, tokens, scores)
    n0 = len(ids)
    while len(ids) < n0 + 60:
        ids.append(int(np.argmax(forward(cfg, w, ids))))
    text = decode(ids[1:], tokens).lstrip(" ")
    ok = text.startswith(expected) or expected.startswith(text)
    print(text)
    print("OK: matches the expected continuation" if ok else "MISMATCH with the expected continuation")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
