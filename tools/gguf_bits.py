#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Real bits per weight of a GGUF file, read from its tensor table (no gguf package needed): for
# each tensor its ggml type, element count and stored bytes (from the type's block size and bytes
# per block, checked against the gap to the next tensor's offset). Prints one JSON object:
#   linear_bits   stored bits of the linear weights (blk.N.attn_q/k/v/output, ffn_gate/up/down)
#                 over their parameter count: the 210 weights caldera compresses in SmolLM2
#   file_bits     the whole file's size in bits over all its tensors' parameters
#   linear_types  {ggml type: number of linear weights of that type}, other_types the same for
#                 the rest (embeddings, norms)
# A reference tool for docs/results.md (tools/llama_peers.sh), never a build or test dependency.
# Usage: gguf_bits.py FILE.gguf
import json
import os
import re
import struct
import sys

# ggml type id: (name, elements per block, bytes per block), from ggml's type traits
TYPES = {0: ("f32", 1, 4), 1: ("f16", 1, 2), 2: ("q4_0", 32, 18), 3: ("q4_1", 32, 20), 6: ("q5_0", 32, 22),
         7: ("q5_1", 32, 24), 8: ("q8_0", 32, 34), 9: ("q8_1", 32, 36), 10: ("q2_k", 256, 84),
         11: ("q3_k", 256, 110), 12: ("q4_k", 256, 144), 13: ("q5_k", 256, 176), 14: ("q6_k", 256, 210),
         15: ("q8_k", 256, 292), 16: ("iq2_xxs", 256, 66), 17: ("iq2_xs", 256, 74), 18: ("iq3_xxs", 256, 98),
         19: ("iq1_s", 256, 50), 20: ("iq4_nl", 32, 18), 21: ("iq3_s", 256, 110), 22: ("iq2_s", 256, 82),
         23: ("iq4_xs", 256, 136), 24: ("i8", 1, 1), 25: ("i16", 1, 2), 26: ("i32", 1, 4), 27: ("i64", 1, 8),
         28: ("f64", 1, 8), 29: ("iq1_m", 256, 56), 30: ("bf16", 1, 2)}
LINEAR = re.compile(r"blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$")
# GGUF metadata value types: fixed sizes (8 = string, 9 = array)
VSIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class Reader:
    def __init__(self, data):
        self.d, self.p = data, 0

    def u(self, fmt):
        v = struct.unpack_from("<" + fmt, self.d, self.p)[0]
        self.p += struct.calcsize("<" + fmt)
        return v

    def s(self):
        n = self.u("Q")
        v = self.d[self.p:self.p + n].decode("utf-8", "replace")
        self.p += n
        return v

    def skip_value(self, t):
        if t == 8:
            self.s()
        elif t == 9:
            et, n = self.u("I"), self.u("Q")
            for _ in range(n):
                self.skip_value(et)
        else:
            self.p += VSIZE[t]


def main(path):
    with open(path, "rb") as f:
        data = f.read()
    r = Reader(data)
    if r.u("4s") != b"GGUF" or r.u("I") != 3:
        sys.exit(f"gguf_bits.py: {path}: not a GGUF v3 file")
    nt, nkv = r.u("Q"), r.u("Q")
    align = 32
    for _ in range(nkv):
        k, t = r.s(), r.u("I")
        if k == "general.alignment":
            align = r.u("I")
        else:
            r.skip_value(t)
    tensors = []
    for _ in range(nt):
        name, nd = r.s(), r.u("I")
        ne = 1
        for _ in range(nd):
            ne *= r.u("Q")
        t, off = r.u("I"), r.u("Q")
        if t not in TYPES:
            sys.exit(f"gguf_bits.py: {path}: tensor {name} has ggml type {t}, not in this tool's table")
        tname, blk, bb = TYPES[t]
        if ne % blk:
            sys.exit(f"gguf_bits.py: {path}: tensor {name}: {ne} elements, not whole blocks of {blk} ({tname})")
        tensors.append([name, tname, ne, ne // blk * bb, off])
    data_start = (r.p + align - 1) // align * align
    ordered = sorted(tensors, key=lambda x: x[4])
    for a, b in zip(ordered, ordered[1:] + [None]):
        gap = (b[4] if b else len(data) - data_start) - a[4]
        if not (a[3] <= gap < a[3] + align):
            sys.exit(f"gguf_bits.py: {path}: tensor {a[0]} ({a[1]}): {a[3]} bytes computed, {gap} between offsets")
    lin = [x for x in tensors if LINEAR.search(x[0])]
    rest = [x for x in tensors if not LINEAR.search(x[0])]

    def types(xs):
        out = {}
        for x in xs:
            out[x[1]] = out.get(x[1], 0) + 1
        return out

    lin_params = sum(x[2] for x in lin)
    all_params = sum(x[2] for x in tensors)
    print(json.dumps({
        "file": path, "file_bytes": os.path.getsize(path), "tensors": len(tensors), "params": all_params,
        "linear_weights": len(lin), "linear_params": lin_params,
        "linear_bits": sum(x[3] for x in lin) * 8 / lin_params if lin_params else None,
        "file_bits": os.path.getsize(path) * 8 / all_params,
        "linear_types": types(lin), "other_types": types(rest)}))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: gguf_bits.py FILE.gguf")
    main(sys.argv[1])
