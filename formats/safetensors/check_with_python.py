#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Cross-check a file our writer produced with the reference Python `safetensors` package:
# it must load (the Rust parser validates header, offsets and sizes), and every tensor and
# metadata value must equal the closed forms that test-safetensors.c writes (write_known).
# Usage: python3 check_with_python.py BUILD/formats/safetensors/known.safetensors
import json
import math
import struct
import sys

import numpy as np
import safetensors
from safetensors import safe_open


def f32_to_bf16_bits(x):
    # x is exactly representable in bf16 here, so truncation is exact
    return struct.unpack("<I", struct.pack("<f", x))[0] >> 16


def expected():
    """name -> (dtype string, shape, raw little-endian bytes)"""
    out = {}

    def put(name, dt, shape, arr):
        out[name] = (dt, list(shape), np.asarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())

    i = np.arange
    put("f32", "F32", (3, 5), (i(15) * 0.25 - 1).astype(np.float32))
    put("f64", "F64", (2, 2, 2), i(8) / 3.0)
    put("f16", "F16", (4,), (i(4) * 0.5 - 1).astype(np.float16))
    put("bf16", "BF16", (2, 3), np.array([f32_to_bf16_bits((k - 3) * 0.125) for k in range(6)], dtype=np.uint16))
    put("f8_e4m3", "F8_E4M3", (4,), np.array([0x38, 0x40, 0xB8, 0x00], dtype=np.uint8))
    put("f8_e5m2", "F8_E5M2", (3,), np.array([0x3C, 0xC0, 0x7C], dtype=np.uint8))
    put("i8", "I8", (5,), (i(5) - 2).astype(np.int8))
    put("u8", "U8", (5,), (250 + i(5)).astype(np.uint8))
    put("i16", "I16", (2, 3), (i(6) * 1000 - 3000).astype(np.int16))
    put("u16", "U16", (3,), (60000 + i(3)).astype(np.uint16))
    put("i32", "I32", (1, 4), (i(4) * -100000).astype(np.int32))
    put("u32", "U32", (2,), (4000000000 + i(2)).astype(np.uint32))
    put("i64", "I64", (2,), (-(1 << 40) + i(2)).astype(np.int64))
    put("u64", "U64", (2,), np.array([(1 << 63) + k for k in range(2)], dtype=np.uint64))
    put("bool", "BOOL", (4,), (i(4) % 2).astype(np.bool_))
    put("w4d", "F32", (2, 1, 2, 3), (i(12) * 0.25 - 1).astype(np.float32))
    put("zero", "F32", (0, 3), np.zeros((0, 3), dtype=np.float32))
    put("strided", "F32", (3, 4), np.array([[r * 10 + c for c in range(4)] for r in range(3)], dtype=np.float32))
    return out


def main(path):
    fails = 0
    data = open(path, "rb").read()
    # 1. the reference parser accepts the file; compare raw bytes of every tensor
    got = dict(safetensors.deserialize(data))
    exp = expected()
    if set(got) != set(exp):
        print("tensor names differ:", sorted(set(got) ^ set(exp)))
        fails += 1
    for name, (dt, shape, raw) in exp.items():
        g = got.get(name)
        if g is None:
            continue
        if g["dtype"] != dt or list(g["shape"]) != shape or bytes(g["data"]) != raw:
            print(f"{name}: got {g['dtype']} {g['shape']} {bytes(g['data'])[:16]!r}, want {dt} {shape} {raw[:16]!r}")
            fails += 1
    # 2. numpy views through safe_open for the dtypes numpy has
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
        for name in ("f32", "f64", "f16", "i64", "u64", "bool", "strided"):
            arr = f.get_tensor(name)
            dt, shape, raw = exp[name]
            if list(arr.shape) != shape or arr.tobytes() != raw:
                print(f"{name}: numpy view differs")
                fails += 1
    # 3. metadata: strings as they are, other values as JSON text
    want_meta = {
        "format": "pt", "general.name": "known", "llama.block_count": 5, "llama.rope.freq_base": 10000.0,
        "x.flag": True, "x.big": -(1 << 50), "tokenizer.ggml.tokens": ["a", 'b"q', "\u00fc"],
        "tokenizer.ggml.scores": [0.0, -1.5, 2.25], "tokenizer.ggml.token_type": [1, -2],
    }
    for k, v in want_meta.items():
        s = meta.get(k)
        val = s if isinstance(v, str) else (json.loads(s) if s is not None else None)
        if val != v:
            print(f"metadata {k}: got {s!r}, want {v!r}")
            fails += 1
    eps = json.loads(meta["x.eps"])
    if np.float32(eps) != np.float32(1e-5):
        print("metadata x.eps:", meta["x.eps"])
        fails += 1
    types = json.loads(meta["caldera.meta_types"])
    if types.get("llama.block_count") != "u32" or types.get("tokenizer.ggml.tokens") != "array:string":
        print("caldera.meta_types:", types)
        fails += 1
    # 4. header padding: 8 + N is a multiple of 8 and the padding is spaces
    n = struct.unpack("<Q", data[:8])[0]
    hdr = data[8:8 + n]
    if (8 + n) % 8 or hdr.rstrip(b" ") != hdr[:len(hdr.rstrip(b" "))] or not hdr.rstrip(b" ").endswith(b"}"):
        print("header padding wrong")
        fails += 1
    print(f"{path}: {len(got)} tensors, {len(meta)} metadata keys: {'OK' if fails == 0 else f'{fails} FAILURES'}")
    return 1 if fails else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__ or "usage: check_with_python.py FILE", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
