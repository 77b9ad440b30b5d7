// SPDX-License-Identifier: MIT
// llama2c: reader of the legacy llama2.c checkpoint (v0, as run.c reads it) and its tokenizer.
// Tensors are presented with Hugging Face names and layout: q/k rows are permuted from the
// interleaved (Meta) rotary layout that llama2.c uses to HF's rotate_half layout.
//
// Checkpoint layout (little-endian; llama2.c run.c, memory_map_weights):
//   int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size (< 0: unshared classifier), seq_len
//   f32 token_embedding (vocab, dim)
//       rms_att   (layers, dim)                   wq (layers, n_heads*hs, dim)
//       wk        (layers, n_kv_heads*hs, dim)    wv (layers, n_kv_heads*hs, dim)
//       wo        (layers, dim, n_heads*hs)       rms_ffn (layers, dim)
//       w1        (layers, hidden, dim)           w2 (layers, dim, hidden)    w3 (layers, hidden, dim)
//       rms_final (dim)
//       freq_cis_real, freq_cis_imag (seq_len, hs/2) each: skipped
//       wcls      (vocab, dim)                    only when vocab_size < 0
//   (hs = dim / n_heads; every matrix is stored (out, in), PyTorch order.)
// Tokenizer (tok512.bin / tokenizer.bin): int32 max_token_length, then per token of the
// checkpoint's vocabulary: f32 score, int32 length, length bytes (not NUL-terminated).
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "caldera/caldera-plugin.h"

#define L2C_HEADER_BYTES 28
#define L2C_MAX_NAME     96

enum l2c_kind {  // the weight kinds, in file order
    L2C_EMB = 0, L2C_RMS_ATT, L2C_WQ, L2C_WK, L2C_WV, L2C_WO, L2C_RMS_FFN, L2C_W1, L2C_W2, L2C_W3,
    L2C_RMS_FINAL, L2C_WCLS, L2C_N_KINDS
};

struct l2c_tensor {
    char               name[L2C_MAX_NAME];     // Meta/llama2.c-style name
    char               hf_name[L2C_MAX_NAME];  // Hugging Face name
    enum l2c_kind      kind;
    int32_t            ndim;
    int64_t            ne[2];
    size_t             off;                    // byte offset of the data in the file
    int                permute_heads;          // > 0: rows are permuted (number of heads)
};

struct l2c_priv {
    char *                    path_opt;        // option "path"
    char *                    tokenizer;       // option "tokenizer"
    uint8_t *                 map;
    size_t                    size;
    struct l2c_tensor *       tensors;
    int64_t                   n_tensors;
    struct caldera_meta *     meta;
    struct caldera_model_desc desc;
};

#define OFF(x) offsetof(struct l2c_priv, x)
static const struct caldera_option l2c_options[] = {
    { "path", "llama2.c checkpoint (.bin)", OFF(path_opt), CALDERA_OPT_PATH, { .str = NULL }, 0, 0, NULL, 0, 0 },
    { "tokenizer", "tokenizer file; empty: tok512.bin or tokenizer.bin beside the checkpoint, if present",
      OFF(tokenizer), CALDERA_OPT_PATH, { .str = NULL }, 0, 0, NULL, 0, 0 },
    { NULL }
};

static void l2c_close(struct caldera_inst * inst) {
    struct l2c_priv * p = caldera_inst_priv(inst);
    if (p->map) munmap(p->map, p->size);
    caldera_free(p->tensors);
    caldera_meta_free(p->meta);
    p->map = NULL;
    p->size = 0;
    p->tensors = NULL;
    p->n_tensors = 0;
    p->meta = NULL;
    memset(&p->desc, 0, sizeof(p->desc));
}

static int l2c_mul(int64_t a, int64_t b, int64_t * out) { return __builtin_mul_overflow(a, b, out); }

static int l2c_is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); }

// Tokenizer -> tokenizer.ggml.* keys (GGUF names, as llama.cpp's SentencePiece "llama" model).
static int l2c_read_tokenizer(struct caldera_inst * inst, const char * path, int64_t vocab) {
    struct l2c_priv * p = caldera_inst_priv(inst);
    uint8_t * buf = NULL;
    const char ** strs = NULL;
    size_t * lens = NULL;
    float * scores = NULL;
    int32_t * types = NULL;
    char * conv = NULL;
    int fd = -1, rc = 0;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return caldera_error(inst, errno == ENOENT ? CALDERA_ERR_NOT_FOUND : CALDERA_ERR_IO, "%s: cannot open tokenizer: %s",
                             path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = caldera_error(inst, CALDERA_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    size_t size = (size_t) st.st_size;
    if (!(buf = caldera_malloc(size + 1))) goto nomem;
    for (size_t got = 0; got < size;) {
        ssize_t k = read(fd, buf + got, size - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            rc = caldera_error(inst, CALDERA_ERR_IO, "%s: read failed: %s", path, k < 0 ? strerror(errno) : "short read");
            goto fail;
        }
        got += (size_t) k;
    }
    if (size < 4) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tokenizer of %zu bytes is truncated (no max_token_length)", path, size);
        goto fail;
    }
    int32_t max_len;
    memcpy(&max_len, buf, 4);
    if (max_len <= 0) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: max_token_length %d; must be > 0", path, (int) max_len);
        goto fail;
    }
    // every token takes 8 bytes at least (score, length): the file must hold the vocabulary before
    // we allocate for it
    if ((uint64_t) vocab > (size - 4) / 8) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tokenizer of %zu bytes cannot hold the %" PRId64 " tokens of the "
                           "checkpoint (8 bytes at least each)", path, size, vocab);
        goto fail;
    }
    if (!(strs = caldera_malloc((size_t) vocab * sizeof(*strs))) || !(lens = caldera_malloc((size_t) vocab * sizeof(*lens))) ||
        !(scores = caldera_malloc((size_t) vocab * sizeof(*scores))) ||
        !(types = caldera_malloc((size_t) vocab * sizeof(*types)))) {
        goto nomem;
    }
    size_t pos = 4;
    for (int64_t i = 0; i < vocab; i++) {
        int32_t len;
        if (size - pos < 8) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: truncated at token %" PRId64 " of %" PRId64 " (offset %zu)",
                               path, i, vocab, pos);
            goto fail;
        }
        memcpy(&scores[i], buf + pos, 4);
        memcpy(&len, buf + pos + 4, 4);
        pos += 8;
        if (len < 0 || len > max_len) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: token %" PRId64 " has length %d; allowed 0..%d (max_token_length)",
                               path, i, (int) len, (int) max_len);
            goto fail;
        }
        if (size - pos < (size_t) len) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: truncated in the bytes of token %" PRId64 " of %" PRId64, path, i,
                               vocab);
            goto fail;
        }
        strs[i] = (const char *) buf + pos;
        lens[i] = (size_t) len;
        pos += (size_t) len;
        // GGUF token types: 1 normal, 2 unknown, 3 control, 6 byte ("<0xHH>"). The token is not
        // NUL-terminated: look at its 6 bytes only.
        const char * tk = strs[i];
        if (i == 0) types[i] = 2;
        else if (i == 1 || i == 2) types[i] = 3;
        else if (len == 6 && memcmp(tk, "<0x", 3) == 0 && l2c_is_hex(tk[3]) && l2c_is_hex(tk[4]) && tk[5] == '>') types[i] = 6;
        else types[i] = 1;
    }
    if (pos != size) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: %zu bytes after the last of %" PRId64 " tokens; vocabulary mismatch?",
                           path, size - pos, vocab);
        goto fail;
    }
    // llama2.c's export wrote SentencePiece's U+2581 ("▁") as a space; GGUF's "llama" model keeps
    // "▁" (llama.cpp escapes spaces to it before the lookup), so normal tokens get it back.
    size_t conv_size = 0;
    for (int64_t i = 0; i < vocab; i++) {
        if (types[i] != 1) continue;
        for (size_t j = 0; j < lens[i]; j++) conv_size += strs[i][j] == ' ' ? 3 : 0;
        conv_size += lens[i];
    }
    if (!(conv = caldera_malloc(conv_size + 1))) goto nomem;
    for (int64_t i = 0, at = 0; i < vocab; i++) {
        if (types[i] != 1 || !memchr(strs[i], ' ', lens[i])) continue;
        char * d = conv + at;
        size_t o = 0;
        for (size_t j = 0; j < lens[i]; j++) {
            if (strs[i][j] == ' ') {
                memcpy(d + o, "\xe2\x96\x81", 3);
                o += 3;
            } else {
                d[o++] = strs[i][j];
            }
        }
        strs[i] = d;
        lens[i] = o;
        at += (int64_t) o;
    }
    int r = 0;
    r |= caldera_meta_set_string(p->meta, "tokenizer.ggml.model", "llama");
    r |= caldera_meta_set_string_array_n(p->meta, "tokenizer.ggml.tokens", vocab, strs, lens);
    r |= caldera_meta_set_array(p->meta, "tokenizer.ggml.scores", CALDERA_META_F32, vocab, scores);
    r |= caldera_meta_set_array(p->meta, "tokenizer.ggml.token_type", CALDERA_META_I32, vocab, types);
    r |= caldera_meta_set_int(p->meta, "tokenizer.ggml.bos_token_id", CALDERA_META_U32, 1);
    r |= caldera_meta_set_int(p->meta, "tokenizer.ggml.eos_token_id", CALDERA_META_U32, 2);
    r |= caldera_meta_set_int(p->meta, "tokenizer.ggml.unknown_token_id", CALDERA_META_U32, 0);
    if (r) goto nomem;
    goto fail;
nomem:
    rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
fail:
    caldera_free(conv);
    caldera_free(types);
    caldera_free(scores);
    caldera_free(lens);
    caldera_free(strs);
    caldera_free(buf);
    if (fd >= 0) close(fd);
    return rc;
}

static void l2c_add(struct l2c_priv * p, enum l2c_kind kind, const char * name, const char * hf, int64_t rows,
                    int64_t cols, size_t off, int heads) {
    struct l2c_tensor * t = &p->tensors[p->n_tensors++];
    snprintf(t->name, sizeof(t->name), "%s", name);
    snprintf(t->hf_name, sizeof(t->hf_name), "%s", hf);
    t->kind = kind;
    t->ndim = cols > 0 ? 2 : 1;
    t->ne[0] = rows;
    t->ne[1] = cols > 0 ? cols : 0;
    t->off = off;
    t->permute_heads = heads;
}

static int l2c_open(struct caldera_inst * inst, const char * path) {
    struct l2c_priv * p = caldera_inst_priv(inst);
    char * tok = NULL;
    int fd = -1, rc = 0;
    l2c_close(inst);
    if (!path || !path[0]) path = p->path_opt;
    if (!path || !path[0]) return caldera_error(inst, CALDERA_ERR_INVAL, "no path given; set option 'path'");
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return caldera_error(inst, errno == ENOENT ? CALDERA_ERR_NOT_FOUND : CALDERA_ERR_IO, "%s: cannot open: %s", path,
                             strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = caldera_error(inst, CALDERA_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    p->size = (size_t) st.st_size;
    if (p->size < L2C_HEADER_BYTES) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: file of %zu bytes is too small for the 28-byte llama2.c header",
                           path, p->size);
        goto fail;
    }
    void * m = mmap(NULL, p->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
        rc = caldera_error(inst, CALDERA_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
        goto fail;
    }
    p->map = m;
    int32_t h[7];
    memcpy(h, p->map, sizeof(h));
    static const char * const hname[7] = { "dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len" };
    for (int i = 0; i < 7; i++) {
        if (i != 5 && h[i] <= 0) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: header field %s = %d; must be > 0", path, hname[i], (int) h[i]);
            goto fail;
        }
    }
    int64_t dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kv = h[4], seq = h[6];
    int shared = h[5] > 0;
    int64_t vocab = h[5] > 0 ? h[5] : -(int64_t) h[5];
    if (vocab == 0) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: header field vocab_size = 0; must be nonzero", path);
        goto fail;
    }
    if (dim % heads != 0 || (dim / heads) % 2 != 0) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: dim %" PRId64 " / n_heads %" PRId64 " is not an even integer head size",
                           path, dim, heads);
        goto fail;
    }
    if (kv > heads || heads % kv != 0) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: n_kv_heads %" PRId64 " must divide n_heads %" PRId64, path, kv, heads);
        goto fail;
    }
    int64_t hs = dim / heads, kvd = kv * hs;
    // Element counts in file order, each checked for 64-bit overflow (the header is untrusted).
    int64_t cnt[L2C_N_KINDS] = { 0 };
    int ovf = 0;
    ovf |= l2c_mul(vocab, dim, &cnt[L2C_EMB]);
    ovf |= l2c_mul(layers, dim, &cnt[L2C_RMS_ATT]);
    ovf |= l2c_mul(layers, dim * dim, &cnt[L2C_WQ]);
    ovf |= l2c_mul(layers, dim * kvd, &cnt[L2C_WK]);
    cnt[L2C_WV] = cnt[L2C_WK];
    cnt[L2C_WO] = cnt[L2C_WQ];
    cnt[L2C_RMS_FFN] = cnt[L2C_RMS_ATT];
    ovf |= l2c_mul(layers, dim * hidden, &cnt[L2C_W1]);
    cnt[L2C_W2] = cnt[L2C_W3] = cnt[L2C_W1];
    cnt[L2C_RMS_FINAL] = dim;
    cnt[L2C_WCLS] = shared ? 0 : cnt[L2C_EMB];
    int64_t freq = seq * hs;  // both freq_cis tables: 2 * seq_len * hs / 2, before wcls
    int64_t total = 0, koff[L2C_N_KINDS] = { 0 };
    for (int k = 0; k < L2C_N_KINDS && !ovf; k++) {
        if (k == L2C_WCLS) ovf |= __builtin_add_overflow(total, freq, &total);
        koff[k] = total;
        ovf |= __builtin_add_overflow(total, cnt[k], &total);
    }
    // dim, hidden, heads < 2^31: dim * dim etc. above fit in int64; the products with
    // layers and vocab are checked.
    int64_t want;
    if (ovf || l2c_mul(total, 4, &want) || want > INT64_MAX - L2C_HEADER_BYTES) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: header sizes overflow 64 bits (dim %" PRId64 ", layers %" PRId64 ")",
                           path, dim, layers);
        goto fail;
    }
    want += L2C_HEADER_BYTES;
    if ((uint64_t) want != (uint64_t) p->size) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT,
                           "%s: the header (dim %" PRId64 ", hidden_dim %" PRId64 ", n_layers %" PRId64 ", n_heads %" PRId64
                           ", n_kv_heads %" PRId64 ", vocab_size %d, seq_len %" PRId64 ") needs %" PRId64 " bytes but the file has %zu",
                           path, dim, hidden, layers, heads, kv, (int) h[5], seq, want, p->size);
        goto fail;
    }
    int64_t n = 2 + 9 * layers + (shared ? 0 : 1);
    if (!(p->tensors = caldera_calloc((size_t) n, sizeof(*p->tensors)))) goto nomem;
    // Offsets: the start of kind k plus layer l times its per-layer size; f32 = 4 bytes.
#define KOFF(k, l) ((size_t) L2C_HEADER_BYTES + 4 * (size_t) (koff[k] + (l) * (cnt[k] / layers)))
    char a[L2C_MAX_NAME], b[L2C_MAX_NAME];
    l2c_add(p, L2C_EMB, "tok_embeddings.weight", "model.embed_tokens.weight", vocab, dim, KOFF(L2C_EMB, 0), 0);
    for (int64_t l = 0; l < layers; l++) {
        static const struct { enum l2c_kind k; const char * meta; const char * hf; } ls[] = {
            { L2C_RMS_ATT, "attention_norm",     "input_layernorm" },
            { L2C_WQ,      "attention.wq",       "self_attn.q_proj" },
            { L2C_WK,      "attention.wk",       "self_attn.k_proj" },
            { L2C_WV,      "attention.wv",       "self_attn.v_proj" },
            { L2C_WO,      "attention.wo",       "self_attn.o_proj" },
            { L2C_RMS_FFN, "ffn_norm",           "post_attention_layernorm" },
            { L2C_W1,      "feed_forward.w1",    "mlp.gate_proj" },
            { L2C_W2,      "feed_forward.w2",    "mlp.down_proj" },
            { L2C_W3,      "feed_forward.w3",    "mlp.up_proj" },
        };
        for (size_t j = 0; j < sizeof(ls) / sizeof(ls[0]); j++) {
            int64_t rows = 0, cols = 0;
            int ph = 0;
            switch (ls[j].k) {
            case L2C_RMS_ATT: case L2C_RMS_FFN: rows = dim; break;
            case L2C_WQ: rows = dim; cols = dim; ph = (int) heads; break;
            case L2C_WK: rows = kvd; cols = dim; ph = (int) kv; break;
            case L2C_WV: rows = kvd; cols = dim; break;
            case L2C_WO: rows = dim; cols = dim; break;
            case L2C_W1: case L2C_W3: rows = hidden; cols = dim; break;
            case L2C_W2: rows = dim; cols = hidden; break;
            default: break;
            }
            snprintf(a, sizeof(a), "layers.%" PRId64 ".%s.weight", l, ls[j].meta);
            snprintf(b, sizeof(b), "model.layers.%" PRId64 ".%s.weight", l, ls[j].hf);
            l2c_add(p, ls[j].k, a, b, rows, cols, KOFF(ls[j].k, l), ph);
        }
    }
    l2c_add(p, L2C_RMS_FINAL, "norm.weight", "model.norm.weight", dim, 0, KOFF(L2C_RMS_FINAL, 0), 0);
    if (!shared) l2c_add(p, L2C_WCLS, "output.weight", "lm_head.weight", vocab, dim, KOFF(L2C_WCLS, 0), 0);
#undef KOFF

    struct caldera_model_desc * d = &p->desc;
    snprintf(d->arch, sizeof(d->arch), "llama");
    d->n_layers = layers;
    d->hidden = dim;
    d->ffn = hidden;
    d->n_heads = heads;
    d->n_kv_heads = kv;
    d->head_dim = hs;
    d->vocab = vocab;
    d->ctx_len = seq;
    d->rope_theta = 10000.0;   // llama2.c's fixed RoPE base
    d->norm_eps = 1e-5;        // llama2.c's rmsnorm epsilon
    d->tied_embeddings = shared;

    if (caldera_meta_init(&p->meta) < 0) goto nomem;
    int r = 0;
    r |= caldera_meta_set_string(p->meta, "general.architecture", "llama");
    r |= caldera_meta_set_int(p->meta, "llama.block_count", CALDERA_META_U32, layers);
    r |= caldera_meta_set_int(p->meta, "llama.context_length", CALDERA_META_U32, seq);
    r |= caldera_meta_set_int(p->meta, "llama.embedding_length", CALDERA_META_U32, dim);
    r |= caldera_meta_set_int(p->meta, "llama.feed_forward_length", CALDERA_META_U32, hidden);
    r |= caldera_meta_set_int(p->meta, "llama.attention.head_count", CALDERA_META_U32, heads);
    r |= caldera_meta_set_int(p->meta, "llama.attention.head_count_kv", CALDERA_META_U32, kv);
    r |= caldera_meta_set_int(p->meta, "llama.rope.dimension_count", CALDERA_META_U32, hs);
    r |= caldera_meta_set_int(p->meta, "llama.vocab_size", CALDERA_META_U32, vocab);
    r |= caldera_meta_set_float(p->meta, "llama.rope.freq_base", CALDERA_META_F32, d->rope_theta);
    r |= caldera_meta_set_float(p->meta, "llama.attention.layer_norm_rms_epsilon", CALDERA_META_F32, d->norm_eps);
    if (r) goto nomem;

    // Tokenizer: the option, else tok512.bin / tokenizer.bin beside the checkpoint.
    if (p->tokenizer && p->tokenizer[0]) {
        if ((rc = l2c_read_tokenizer(inst, p->tokenizer, vocab)) < 0) goto fail;
    } else {
        const char * slash = strrchr(path, '/');
        size_t dl = slash ? (size_t) (slash - path) + 1 : 0;
        static const char * const cand[] = { "tok512.bin", "tokenizer.bin" };
        if (!(tok = caldera_malloc(dl + 32))) goto nomem;
        for (size_t c = 0; c < 2; c++) {
            memcpy(tok, path, dl);
            snprintf(tok + dl, 32, "%s", cand[c]);
            struct stat ts;
            if (stat(tok, &ts) == 0 && S_ISREG(ts.st_mode)) {
                if ((rc = l2c_read_tokenizer(inst, tok, vocab)) < 0) goto fail;
                break;
            }
        }
    }
    caldera_inst_log(inst, CALDERA_LOG_DEBUG, "%s: llama2.c v0, dim %" PRId64 ", %" PRId64 " layers, vocab %" PRId64 "%s",
                     path, dim, layers, vocab, caldera_meta_find(p->meta, "tokenizer.ggml.tokens") >= 0 ? ", tokenizer" : "");
    goto done;
nomem:
    rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
fail:
    l2c_close(inst);
done:
    caldera_free(tok);
    if (fd >= 0) close(fd);
    return rc;
}

static int64_t l2c_n_tensors(struct caldera_inst * inst) {
    const struct l2c_priv * p = caldera_inst_priv(inst);
    return p->n_tensors;
}

static int l2c_check_index(struct caldera_inst * inst, int64_t i) {
    const struct l2c_priv * p = caldera_inst_priv(inst);
    if (i < 0 || i >= p->n_tensors) {
        return caldera_error(inst, CALDERA_ERR_RANGE, "tensor index %" PRId64 " out of range [0, %" PRId64 ")", i, p->n_tensors);
    }
    return 0;
}

static int l2c_tensor_info(struct caldera_inst * inst, int64_t i, struct caldera_tensor_info * out) {
    const struct l2c_priv * p = caldera_inst_priv(inst);
    int rc = l2c_check_index(inst, i);
    if (rc < 0) return rc;
    const struct l2c_tensor * t = &p->tensors[i];
    memset(out, 0, sizeof(*out));
    out->name = t->name;
    out->hf_name = t->hf_name;
    out->dtype = CALDERA_DTYPE_F32;
    out->ndim = t->ndim;
    out->ne[0] = t->ne[0];
    out->ne[1] = t->ndim == 2 ? t->ne[1] : 0;
    out->nbytes = 4 * (size_t) t->ne[0] * (size_t) (t->ndim == 2 ? t->ne[1] : 1);
    return 0;
}

// Meta (interleaved pairs) -> HF (rotate_half) row order of a q/k projection, per head:
// view the head's hd rows as (hd/2, 2), transpose to (2, hd/2): HF row r < hd/2 is Meta row
// 2r, HF row hd/2 + r is Meta row 2r + 1. (The inverse of the permute() in HF's
// convert_llama_weights_to_hf.py; llama2.c's export.py applies this same map to go to HF.)
static void l2c_permute_rows(const float * src, float * dst, int64_t rows, int64_t cols, int64_t heads) {
    int64_t hd = rows / heads, half = hd / 2;
    for (int64_t h = 0; h < heads; h++) {
        for (int64_t r = 0; r < half; r++) {
            for (int64_t s = 0; s < 2; s++) {
                const float * in = src + (size_t) (h * hd + 2 * r + s) * (size_t) cols;
                float * out = dst + (size_t) (h * hd + s * half + r) * (size_t) cols;
                memcpy(out, in, (size_t) cols * sizeof(float));
            }
        }
    }
}

static int l2c_read_tensor(struct caldera_inst * inst, int64_t i, enum caldera_dtype want, struct caldera_tensor * out,
                           int * owned) {
    const struct l2c_priv * p = caldera_inst_priv(inst);
    struct caldera_ctx * ctx = caldera_inst_ctx(inst);
    struct caldera_tensor tmp = { 0 };
    int rc = l2c_check_index(inst, i);
    if (rc < 0) return rc;
    const struct l2c_tensor * t = &p->tensors[i];
    struct caldera_tensor view = { 0 };
    view.data = p->map + t->off;   // 28 + 4k: 4-byte aligned in the page-aligned map
    view.dtype = CALDERA_DTYPE_F32;
    view.device = CALDERA_DEVICE_CPU;
    view.ndim = t->ndim;
    view.ne[0] = t->ne[0];
    view.ne[1] = t->ndim == 2 ? t->ne[1] : 0;
    view.ld = t->ndim == 2 ? t->ne[1] : 0;
    *owned = 0;
    if (!t->permute_heads && want == CALDERA_DTYPE_F32) {
        *out = view;
        return 0;
    }
    const struct caldera_tensor * src = &view;
    if (t->permute_heads) {
        if ((rc = caldera_tensor_alloc(ctx, CALDERA_DTYPE_F32, 2, view.ne, &tmp)) < 0) {
            return caldera_error(inst, rc, "tensor '%s': cannot allocate its copy", t->hf_name);
        }
        l2c_permute_rows(view.data, tmp.data, t->ne[0], t->ne[1], t->permute_heads);
        if (want == CALDERA_DTYPE_F32) {
            *out = tmp;
            *owned = 1;
            return 0;
        }
        src = &tmp;
    }
    if ((rc = caldera_tensor_alloc(ctx, want, view.ndim, view.ne, out)) < 0) {
        rc = caldera_error(inst, rc, "tensor '%s': cannot allocate a %s copy", t->hf_name, caldera_dtype_name(want));
        goto fail;
    }
    if ((rc = caldera_tensor_copy(ctx, out, src)) < 0) {
        caldera_tensor_free(out);
        rc = caldera_error(inst, rc, rc == CALDERA_ERR_NOMEM ? "tensor '%s': out of memory converting f32 to %s"
                                                             : "tensor '%s': no conversion from f32 to %s",
                           t->hf_name, caldera_dtype_name(want));
        goto fail;
    }
    *owned = 1;
fail:
    caldera_tensor_free(&tmp);
    return rc;
}

static const struct caldera_meta * l2c_meta(struct caldera_inst * inst) {
    const struct l2c_priv * p = caldera_inst_priv(inst);
    return p->meta;
}

static int l2c_model_desc(struct caldera_inst * inst, struct caldera_model_desc * out) {
    const struct l2c_priv * p = caldera_inst_priv(inst);
    if (!p->map) return caldera_error(inst, CALDERA_ERR_INVAL, "model_desc: no checkpoint is open");
    *out = p->desc;
    return 0;
}

// llama2.c files have no magic: score a ".bin" whose header is consistent with its size.
static int l2c_probe_path(const char * path) {
    FILE * f = path ? fopen(path, "rb") : NULL;
    int32_t h[7];
    int score = 0;
    if (!f) return 0;
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) && fread(h, 4, 7, f) == 7) {
        int ok = h[0] > 0 && h[1] > 0 && h[2] > 0 && h[3] > 0 && h[4] > 0 && h[5] != 0 && h[6] > 0 &&
                 h[0] % h[3] == 0 && (h[0] / h[3]) % 2 == 0 && h[3] % h[4] == 0;
        if (ok) {
            int64_t dim = h[0], hid = h[1], L = h[2], hs = dim / h[3], kvd = (int64_t) h[4] * hs;
            int64_t v = h[5] > 0 ? h[5] : -(int64_t) h[5];
            // Overflow-safe in double: the sizes only need to match the file.
            double n = (double) v * dim * (h[5] > 0 ? 1 : 2) + (double) L * (2.0 * dim + 2.0 * dim * dim + 2.0 * dim * kvd +
                       3.0 * dim * hid) + dim + (double) h[6] * hs;
            if (n * 4 + L2C_HEADER_BYTES == (double) st.st_size) score = 70;
        }
    }
    fclose(f);
    return score;
}

static void l2c_uninit(struct caldera_inst * inst) { l2c_close(inst); }

static const struct caldera_format_ops llama2c_ops = {
    .struct_size  = sizeof(struct caldera_format_ops),
    .probe_path   = l2c_probe_path,
    .open         = l2c_open,
    .n_tensors    = l2c_n_tensors,
    .tensor_info  = l2c_tensor_info,
    .read_tensor  = l2c_read_tensor,
    .meta         = l2c_meta,
    .model_desc   = l2c_model_desc,
    .close        = l2c_close,
    .create       = NULL,
    .write_tensor = NULL,
    .finish       = NULL,
};

static const struct caldera_plugin llama2c_plugin = {
    .abi_version    = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size    = sizeof(struct caldera_plugin),
    .kind           = CALDERA_PLUGIN_KIND_FORMAT,
    .name           = "llama2c",
    .description    = "llama2.c legacy checkpoints (v0) and tokenizer: read only, HF names and layout",
    .version        = CALDERA_VERSION_INT(0, 1, 0),
    .format_version = 0,
    .priv_size      = sizeof(struct l2c_priv),
    .options        = l2c_options,
    .probe          = NULL,
    .check          = NULL,
    .check_shape    = NULL,
    .init           = NULL,
    .uninit         = l2c_uninit,
    .ops            = &llama2c_ops,
};

CALDERA_PLUGIN_DEFINE(llama2c_plugin)
