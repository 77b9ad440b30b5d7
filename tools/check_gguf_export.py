#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Cross-check an export of a llama-family GGUF (caldera-convert MODEL.gguf OUT) against the
# reference `gguf` Python package: each GGUF tensor is dequantized by gguf-py, renamed to its
# Hugging Face name, and q/k rows are un-permuted from llama.cpp's rotary layout (the inverse of
# convert_hf_to_gguf.py permute: view (heads, hd/2, 2, in), swap the middle axes). The
# export must hold the same values (f32: bit for bit).
# Usage: python3 check_gguf_export.py MODEL.gguf EXPORT_DIR
import re
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors import safe_open

BLK = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
       "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
       "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
       "output.weight": "lm_head.weight"}


def field(r, key):
    f = r.fields[key]
    return f.parts[f.data[0]][0]


def main(gguf_path, out_dir):
    r = GGUFReader(gguf_path)
    arch = "llama"  # the llama-family keys; other families are not checked here
    heads = int(field(r, f"{arch}.attention.head_count"))
    kv = int(field(r, f"{arch}.attention.head_count_kv"))
    bad = 0
    n = 0
    with safe_open(f"{out_dir}/model.safetensors", framework="numpy") as f:
        names = set(f.keys())
        for t in r.tensors:
            m = re.match(r"blk\.(\d+)\.(\w+)\.weight$", t.name)
            hf = f"model.layers.{m.group(1)}.{BLK[m.group(2)]}.weight" if m else TOP[t.name]
            shape = [int(x) for x in reversed(t.shape)]  # GGUF ne[] is fastest-first
            w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
            if m and m.group(2) in ("attn_q", "attn_k"):
                h = heads if m.group(2) == "attn_q" else kv
                rows, cols = w.shape
                w = w.reshape(h, rows // h // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
            if hf not in names:
                print(f"{hf} ({t.name}) missing from the export")
                bad += 1
                continue
            e = f.get_tensor(hf)
            if list(e.shape) != list(w.shape) or e.tobytes() != np.ascontiguousarray(w).tobytes():
                d = np.max(np.abs(e.astype(np.float64) - w)) if e.shape == w.shape else float("nan")
                print(f"{hf}: differs from gguf-py ({t.tensor_type.name}), max |diff| {d:g}")
                bad += 1
            n += 1
    print(f"{n} tensors compared with gguf-py: {'OK, bit-identical' if bad == 0 else f'{bad} differ'}")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: check_gguf_export.py MODEL.gguf EXPORT_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
