#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# make-seeds.py: writes the seed corpora of the fuzz harnesses (tests/fuzz/corpus/<harness>/):
# small valid files of every format, written here with struct/json only (no third-party package),
# plus the repository's own small fixtures. Deterministic; run again after changing it:
#   python3 tests/fuzz/make-seeds.py
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "corpus")


def put(harness, name, data):
    d = os.path.join(OUT, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- GGUF ------------------------------------------------------------------------------------
def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gkv(key, t, v):
    out = gstr(key) + struct.pack("<I", t)
    if t == 8:
        return out + gstr(v)
    if t == 9:
        et, items = v
        out += struct.pack("<IQ", et, len(items))
        for x in items:
            out += gstr(x) if et == 8 else struct.pack({4: "<I", 5: "<i", 6: "<f", 0: "<B"}[et], x)
        return out
    return out + struct.pack({4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}[t], v)


def gguf(kvs, tensors, align=32):
    """tensors: (name, dims fastest-first, ggml type, raw bytes)."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(gkv(*kv) for kv in kvs)
    off, infos, data = 0, b"", b""
    for name, dims, ty, raw in tensors:
        infos += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ty, off)
        pad = (-len(raw)) % align
        data += raw + b"\0" * pad
        off += len(raw) + pad
    h = head + infos
    return h + b"\0" * ((-len(h)) % align) + data


def f32(n, k=0):
    return struct.pack("<%df" % n, *[(i + k) * 0.25 - 1 for i in range(n)])


def f16(n):
    return struct.pack("<%de" % n, *[i * 0.5 - 2 for i in range(n)])


llama_kv = [("general.architecture", 8, "llama"), ("llama.block_count", 4, 1), ("llama.embedding_length", 4, 8),
            ("llama.feed_forward_length", 4, 16), ("llama.attention.head_count", 4, 2),
            ("llama.attention.head_count_kv", 4, 1), ("llama.context_length", 4, 64),
            ("llama.rope.freq_base", 6, 10000.0), ("llama.attention.layer_norm_rms_epsilon", 6, 1e-5),
            ("tokenizer.ggml.model", 8, "llama"), ("tokenizer.ggml.tokens", 9, (8, ["<unk>", "<s>", "</s>", "a"])),
            ("tokenizer.ggml.scores", 9, (6, [0.0, 0.0, 0.0, -1.0])), ("tokenizer.ggml.token_type", 9, (5, [2, 3, 3, 1]))]
llama_t = [("token_embd.weight", [8, 4], 0, f32(32)), ("blk.0.attn_q.weight", [8, 8], 0, f32(64, 1)),
           ("blk.0.attn_k.weight", [8, 4], 1, f16(32)), ("blk.0.attn_norm.weight", [8], 0, f32(8)),
           ("output_norm.weight", [8], 0, f32(8))]
for i, (name, flag) in enumerate([("llama", 1), ("llama-raw", 0)]):
    put("gguf", name + ".gguf", bytes([flag]) + gguf(llama_kv, llama_t))
put("gguf", "meta-only.gguf", b"\1" + gguf([("general.architecture", 8, "x"), ("general.alignment", 4, 64),
                                            ("a.u64", 10, 2**40), ("a.i64", 11, -5), ("a.f64", 12, 0.5),
                                            ("a.bool", 7, True), ("a.arr", 9, (0, [1, 2, 3]))], [], 64))
# the repository's fixtures (every ggml block type, every metadata type)
for fx in ("meta.gguf", "types.gguf", "llama.gguf"):
    with open(os.path.join(ROOT, "formats/gguf/fixtures", fx), "rb") as f:
        put("gguf", "fixture-" + fx, b"\1" + f.read())


# --- safetensors -----------------------------------------------------------------------------
def st(tensors, meta=None):
    """tensors: (name, dtype, shape, raw bytes)."""
    hdr, data = {}, b""
    if meta is not None:
        hdr["__metadata__"] = meta
    for name, dt, shape, raw in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(hdr).encode()
    h += b" " * ((-(8 + len(h))) % 8)
    return struct.pack("<Q", len(h)) + h + data


st_tensors = [("model.embed_tokens.weight", "F32", [4, 8], f32(32)), ("model.norm.weight", "F16", [8], f16(8)),
              ("a.bf16", "BF16", [2, 2], b"\x80\x3f\x00\x40\x00\xc0\x00\x00"), ("a.i8", "I8", [3], b"\x01\xff\x7f"),
              ("a.u16", "U16", [2], b"\x01\x00\xff\xff"), ("a.bool", "BOOL", [2], b"\x00\x01"),
              ("a.f8", "F8_E4M3", [2], b"\x38\xb8"), ("a.f64", "F64", [1], struct.pack("<d", 1.5)),
              ("a.scalar", "I64", [], struct.pack("<q", -3)), ("a.empty", "F32", [0, 5], b"")]
typed = {"general.architecture": "llama", "llama.block_count": "1", "llama.embedding_length": "8",
         "llama.attention.head_count": "2", "llama.rope.freq_base": "10000.0", "tokenizer.ggml.tokens": '["a", "b"]',
         "caldera.meta_types": json.dumps({"llama.block_count": "u32", "llama.embedding_length": "u32",
                                           "llama.attention.head_count": "u32", "llama.rope.freq_base": "f32",
                                           "tokenizer.ggml.tokens": "array:string"})}
put("safetensors", "dtypes.safetensors", st(st_tensors, {"format": "pt"}))
put("safetensors", "typed-meta.safetensors", st(st_tensors[:2], typed))
put("safetensors", "empty.safetensors", st([]))
shutil.copy(os.path.join(ROOT, "formats/safetensors/fixtures/py_small.safetensors"), os.path.join(OUT, "safetensors"))

# --- safetensors folders: index, config.json, tokenizer.json, shard separated by "\n--\n" --------
SEP = b"\n--\n"
config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
          "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 4,
          "max_position_embeddings": 64, "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
          "rope_scaling": {"type": "linear", "factor": 2.0}, "bos_token_id": 1, "eos_token_id": 2}
tokenizer = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3}, "merges": ["a b", ["ab", "Ġ"]]},
             "added_tokens": [{"id": 4, "content": "<|endoftext|>", "special": True}]}
shard = st(st_tensors[:2])
index = {"metadata": {"total_size": 80}, "weight_map": {"model.embed_tokens.weight": "shard.safetensors",
                                                         "model.norm.weight": "shard.safetensors"}}
jd = lambda o: json.dumps(o).encode()
put("safetensors-dir", "sharded", SEP.join([jd(index), jd(config), jd(tokenizer), shard]))
put("safetensors-dir", "single", SEP.join([b"", jd(config), jd(tokenizer), shard]))
put("safetensors-dir", "single-typed-meta", SEP.join([b"", b"", b"", st(st_tensors[:2], typed)]))
hf = os.path.join(ROOT, "formats/safetensors/fixtures/hf_tok")
parts = [b""] + [open(os.path.join(hf, n), "rb").read() for n in ("config.json", "tokenizer.json", "model.safetensors")]
put("safetensors-dir", "fixture-hf_tok", SEP.join(parts))


# --- llama2.c --------------------------------------------------------------------------------
def l2c(dim, hidden, layers, heads, kv, vocab, seq, shared=True):
    hs = dim // heads
    n = vocab * dim * (1 if shared else 2) + layers * (2 * dim + 2 * dim * dim + 2 * dim * kv * hs + 3 * dim * hidden)
    n += dim + seq * hs
    hdr = struct.pack("<7i", dim, hidden, layers, heads, kv, vocab if shared else -vocab, seq)
    return hdr + struct.pack("<%df" % n, *[((i * 37) % 17) * 0.125 - 1 for i in range(n)])


put("llama2c", "tiny-shared.bin", l2c(8, 16, 1, 2, 1, 8, 4))
put("llama2c", "tiny-unshared.bin", l2c(8, 4, 2, 2, 2, 6, 2, shared=False))
put("llama2c", "tiny-4heads.bin", l2c(16, 8, 1, 4, 2, 4, 2))


def tok(vocab, maxlen=8):
    out = struct.pack("<i", maxlen)
    for i in range(vocab):
        s = {0: b"<unk>", 1: b"<s>", 2: b"</s>"}.get(i, b"<0x%02X>" % i if i < 8 else b"t%d" % i)
        out += struct.pack("<fi", -float(i), len(s)) + s
    return out


for v in (32, 40, 63):
    put("llama2c-tok", "tok%d.bin" % v, bytes([v - 32]) + tok(v))

# --- INI pipelines (synthetic model: no file needed) --------------------------------------------
for name in ("single_matrix_rtn.ini", "single_matrix_gptq.ini", "single_matrix_quip_sharp.ini", "single_matrix_gguf_out.ini"):
    with open(os.path.join(ROOT, "pipelines/examples", name), "rb") as f:
        put("ini", name, f.read())
put("ini", "minimal.ini", b"[caldera]\nreader = src\nwriter = out\nstages = q\n\n[src]\nplugin = synthetic\nlayers = 1\n"
    b"hidden = 64\nffn = 128\n\n[q]\nplugin = uniform\nbits = 4\n\n[out]\nplugin = safetensors\npath = out/x.safetensors\n")

# --- tokenizer: FLAGS TEXT "\n--\n" vocabulary-only GGUF -----------------------------------------
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


b2u = bytes_to_unicode()
merges = ["Ġ t", "h e", "Ġt he", "l l", "he ll", "Ġ w", "o r"]
toks = [b2u[b] for b in range(256)] + [m.replace(" ", "") for m in merges] + ["<|endoftext|>", "<u>"]
types = [1] * (len(toks) - 2) + [3, 4]
texts = [b"\x02Hello world! the <|endoftext|> 123  \xc3\xbcn\xc3\xafc\xc3\xb6d\xc3\xa9\n\t<u>",
         b"\x01 hell the world's 2024-01-01 \xf0\x9f\x98\x80 \xff\xfe", b"\x03<|endoftext|><|endoftext|>", b"\x00"]
for i, pre in enumerate(["smollm", "gpt-2", "llama-bpe", "qwen2"]):
    kv = [("tokenizer.ggml.model", 8, "gpt2"), ("tokenizer.ggml.pre", 8, pre), ("tokenizer.ggml.tokens", 9, (8, toks)),
          ("tokenizer.ggml.token_type", 9, (5, types)), ("tokenizer.ggml.merges", 9, (8, merges)),
          ("tokenizer.ggml.bos_token_id", 4, len(toks) - 2), ("tokenizer.ggml.eos_token_id", 4, len(toks) - 2)]
    put("tokenizer", "gpt2-%s" % pre, texts[i] + SEP + gguf(kv, []))
# SentencePiece ("llama"): stories260K's tok512 (scores, byte fallback)
tok512 = os.path.join(ROOT, "..", "shared", "data", "stories260K", "tok512.bin")
if os.path.exists(tok512):
    raw = open(tok512, "rb").read()
    pos, strs, scores, ttypes = 4, [], [], []
    for i in range(512):
        sc, ln = struct.unpack_from("<fi", raw, pos)
        pos += 8
        s = raw[pos:pos + ln]
        pos += ln
        strs.append(s.decode("utf-8", "replace"))
        scores.append(sc)
        ttypes.append(2 if i == 0 else 3 if i in (1, 2) else 6 if len(s) == 6 and s.startswith(b"<0x") else 1)
    kv = [("tokenizer.ggml.model", 8, "llama"), ("tokenizer.ggml.tokens", 9, (8, strs)),
          ("tokenizer.ggml.scores", 9, (6, scores)), ("tokenizer.ggml.token_type", 9, (5, ttypes)),
          ("tokenizer.ggml.bos_token_id", 4, 1), ("tokenizer.ggml.eos_token_id", 4, 2),
          ("tokenizer.ggml.unknown_token_id", 4, 0)]
    put("tokenizer", "llama-tok512", b"\x01Once upon a time, there was a little girl named Lily. \xe2\x96\x81\x00\xff" + SEP + gguf(kv, []))
