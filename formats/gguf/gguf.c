// SPDX-License-Identifier: MIT
// gguf.c: the GGUF format plugin. Reads GGUF v2/v3 files (mmapped, every offset and count
// checked against the file size before use), dequantizes ggml block types to f32, maps
// llama-family names and layouts to Hugging Face's, and writes GGUF v3 files atomically.
//
// GGUF layout (all little-endian; "str" = u64 length + bytes, no NUL):
//   u32 magic "GGUF" | u32 version (2, 3) | u64 n_tensors | u64 n_kv
//   n_kv ×      { str key | u32 value_type | value }       value: scalar, str, or
//                                                           array = u32 elem_type, u64 n, n × elem
//   n_tensors × { str name | u32 n_dims | u64 ne[n_dims] (fastest first) | u32 ggml_type |
//                 u64 offset (from the data section, a multiple of the alignment) }
//   padding to `general.alignment` (u32, default 32) | tensor data
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "caldera/caldera-plugin.h"
#include "gguf-quants.h"

#define GGUF_DEFAULT_ALIGNMENT 32
// Far above any real file (tens of keys; tokenizer data are array values); bounds the memory a
// hostile header can make us spend on keys.
#define GGUF_MAX_KV            (1 << 20)
#define GGUF_PAR_GRAIN         (1 << 20)  // elements per chunk of parallel dequantization
#define GGUF_DTYPE_KEY         "caldera.gguf.dtype."  // + tensor name: dtype stored under a wider GGUF type

// ---------------------------------------------------------------------------------------------
// Private state.

struct gguf_tensor {
    char *                   name;      // NUL-terminated copy
    char *                   hf_name;   // == name when there is no mapping
    const struct gguf_type * type;      // storage type
    enum caldera_dtype       dtype;     // reported dtype (type->dtype or a convention dtype)
    int32_t                  ndim;
    int64_t                  ne[CALDERA_MAX_DIMS];  // PyTorch order (ne[0] slowest)
    uint64_t                 offset;    // from the start of the data section
    size_t                   nbytes;
    int64_t                  perm_heads; // > 0: rows were permuted by llama.cpp with this many heads
};

struct gguf_wtensor {
    char *   name;
    uint32_t type;
    uint32_t ndim;
    uint64_t dims[CALDERA_MAX_DIMS];   // GGUF order (fastest first)
    uint64_t offset;
};

struct gguf_buf {
    uint8_t * p;     // caldera_realloc memory
    size_t    len, cap;
};

struct gguf_writer {
    char *                path;      // final path
    char *                tmp_path;  // the file being written
    int                   fd;        // tmp_path
    int                   data_fd;   // unlinked spill file for tensor data
    struct gguf_buf       kv;        // serialized key/values of the file metadata
    uint64_t              n_kv;
    struct gguf_buf       kv_dtype;  // serialized GGUF_DTYPE_KEY entries, one per converted tensor
    uint64_t              n_kv_dtype;
    struct gguf_wtensor * t;
    int64_t               n, cap;
    uint64_t              data_len;
    int                   llama;          // arch llama: q/k rows get llama.cpp's permutation
    int64_t               heads_q, heads_kv; // from the metadata given to create (0: unknown)
};

struct gguf_priv {
    // options
    char *  path_opt;    // file to open / create when the caller passes no path
    int64_t alignment;   // writer: data alignment
    int     hf_layout;   // reader: undo llama.cpp's q/k permutation
    int     gguf_names;  // writer: HF llama names -> GGUF names, q/k permuted for arch llama
    // reader
    char *                path;
    uint8_t *             map;
    size_t                map_size;
    uint32_t              version;
    uint64_t              align;
    uint64_t              data_off;
    int64_t               n_tensors;
    struct gguf_tensor *   tensors;
    struct caldera_meta * meta;
    // writer
    struct gguf_writer *  w;
};

// ---------------------------------------------------------------------------------------------
// A set of (pointer, length) strings for duplicate detection (open addressing, FNV-1a).

struct strset {
    const char ** p;
    size_t *      n;
    uint64_t      cap;
};

static uint64_t fnv1a(const char * s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (uint8_t) s[i]) * 0x100000001b3ull;
    }
    return h;
}

static int strset_init(struct strset * s, uint64_t n) {
    uint64_t cap = 16;
    while (cap < 2 * n) {
        cap *= 2;
    }
    s->cap = cap;
    s->p   = caldera_calloc(cap, sizeof(*s->p));
    s->n   = caldera_calloc(cap, sizeof(*s->n));
    return (s->p && s->n) ? 0 : CALDERA_ERR_NOMEM;
}

static void strset_free(struct strset * s) {
    caldera_freep(&s->p);
    caldera_freep(&s->n);
}

// 1 if the string was there already, 0 if inserted (the set must have room).
static int strset_insert(struct strset * s, const char * str, size_t n) {
    uint64_t i = fnv1a(str, n) & (s->cap - 1);
    while (s->p[i]) {
        if (s->n[i] == n && memcmp(s->p[i], str, n) == 0) {
            return 1;
        }
        i = (i + 1) & (s->cap - 1);
    }
    s->p[i] = str;
    s->n[i] = n;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Bounds-checked reading from the mapped file.

struct rd {
    struct caldera_inst * inst;
    const char *          path;
    const uint8_t *       base;
    uint64_t              size;
    uint64_t              pos;
};

static uint64_t rd_left(const struct rd * r) { return r->size - r->pos; }

static int rd_need(struct rd * r, uint64_t n, const char * what) {
    if (n > rd_left(r)) {
        return caldera_error(r->inst, CALDERA_ERR_FORMAT,
                             "%s: truncated at offset %" PRIu64 ": %s needs %" PRIu64 " bytes, %" PRIu64
                             " left in the file of %" PRIu64 " bytes",
                             r->path, r->pos, what, n, rd_left(r), r->size);
    }
    return 0;
}

static int rd_u32(struct rd * r, uint32_t * v, const char * what) {
    int rc = rd_need(r, 4, what);
    if (rc < 0) return rc;
    memcpy(v, r->base + r->pos, 4);
    r->pos += 4;
    return 0;
}

static int rd_u64(struct rd * r, uint64_t * v, const char * what) {
    int rc = rd_need(r, 8, what);
    if (rc < 0) return rc;
    memcpy(v, r->base + r->pos, 8);
    r->pos += 8;
    return 0;
}

// A GGUF string: *s points into the map (not NUL-terminated).
static int rd_str(struct rd * r, const char ** s, uint64_t * n, const char * what) {
    uint64_t start = r->pos;
    int      rc    = rd_u64(r, n, what);
    if (rc < 0) return rc;
    if (*n > rd_left(r)) {
        return caldera_error(r->inst, CALDERA_ERR_FORMAT,
                             "%s: offset %" PRIu64 ": %s has length %" PRIu64 ", past the end of the file (%" PRIu64
                             " bytes left)",
                             r->path, start, what, *n, rd_left(r));
    }
    *s = (const char *) (r->base + r->pos);
    r->pos += *n;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Metadata values.

static size_t meta_scalar_size(uint32_t t) {
    switch (t) {
    case CALDERA_META_U8: case CALDERA_META_I8: case CALDERA_META_BOOL: return 1;
    case CALDERA_META_U16: case CALDERA_META_I16: return 2;
    case CALDERA_META_U32: case CALDERA_META_I32: case CALDERA_META_F32: return 4;
    case CALDERA_META_U64: case CALDERA_META_I64: case CALDERA_META_F64: return 8;
    default: return 0;
    }
}

static const char * meta_type_name(uint32_t t) {
    static const char * const names[] = { "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
                                          "string", "array", "u64", "i64", "f64" };
    return t < CALDERA_META_COUNT ? names[t] : "?";
}

// A scalar of type t at p (little-endian) into the meta under key.
static int meta_put_scalar(struct caldera_meta * m, const char * key, uint32_t t, const uint8_t * p) {
    switch (t) {
    case CALDERA_META_U8:   return caldera_meta_set_int(m, key, t, p[0]);
    case CALDERA_META_I8:   return caldera_meta_set_int(m, key, t, (int8_t) p[0]);
    case CALDERA_META_BOOL: return caldera_meta_set_int(m, key, t, p[0] != 0);
    case CALDERA_META_U16:  { uint16_t v; memcpy(&v, p, 2); return caldera_meta_set_int(m, key, t, v); }
    case CALDERA_META_I16:  { int16_t v;  memcpy(&v, p, 2); return caldera_meta_set_int(m, key, t, v); }
    case CALDERA_META_U32:  { uint32_t v; memcpy(&v, p, 4); return caldera_meta_set_int(m, key, t, v); }
    case CALDERA_META_I32:  { int32_t v;  memcpy(&v, p, 4); return caldera_meta_set_int(m, key, t, v); }
    case CALDERA_META_I64:  { int64_t v;  memcpy(&v, p, 8); return caldera_meta_set_int(m, key, t, v); }
    case CALDERA_META_U64:  { uint64_t v; memcpy(&v, p, 8); return caldera_meta_set_uint64(m, key, v); }
    case CALDERA_META_F32:  { float v;    memcpy(&v, p, 4); return caldera_meta_set_float(m, key, t, v); }
    case CALDERA_META_F64:  { double v;   memcpy(&v, p, 8); return caldera_meta_set_float(m, key, t, v); }
    default:                return CALDERA_ERR_BUG;
    }
}

// One key/value at r->pos into p->meta.
static int read_kv(struct gguf_priv * p, struct rd * r, struct strset * keys, uint64_t idx) {
    struct caldera_inst * inst = r->inst;
    const char **         sp   = NULL;
    size_t *              sl   = NULL;
    void *                tmp  = NULL;
    char *                key  = NULL;
    const char *          k;
    uint64_t              kn, off = r->pos;
    uint32_t              type;
    char                  what[128];
    int                   rc;

    snprintf(what, sizeof(what), "key %" PRIu64, idx);
    if ((rc = rd_str(r, &k, &kn, what)) < 0) goto fail;
    if (memchr(k, 0, kn)) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: offset %" PRIu64 ": key %" PRIu64
                           " contains a NUL byte; keys are text", r->path, off, idx);
        goto fail;
    }
    if (!(key = caldera_malloc(kn + 1))) { rc = CALDERA_ERR_NOMEM; goto fail; }
    memcpy(key, k, kn);
    key[kn] = 0;
    if (strset_insert(keys, k, kn)) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: offset %" PRIu64 ": duplicate key '%s'; keys must be unique",
                           r->path, off, key);
        goto fail;
    }
    snprintf(what, sizeof(what), "the type of key '%.60s'", key);
    if ((rc = rd_u32(r, &type, what)) < 0) goto fail;
    snprintf(what, sizeof(what), "the value of key '%.60s'", key);

    if (type == CALDERA_META_STRING) {
        const char * s;
        uint64_t     n;
        if ((rc = rd_str(r, &s, &n, what)) < 0) goto fail;
        rc = caldera_meta_set_string_n(p->meta, key, s, n);
    } else if (type == CALDERA_META_ARRAY) {
        uint32_t et;
        uint64_t n, aoff;
        if ((rc = rd_u32(r, &et, what)) < 0) goto fail;
        aoff = r->pos;
        if ((rc = rd_u64(r, &n, what)) < 0) goto fail;
        if (et == CALDERA_META_ARRAY) {
            rc = caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "%s: offset %" PRIu64 ": key '%s' is an array of arrays; "
                               "nested arrays are not supported (arrays of scalars and strings are)", r->path, off, key);
            goto fail;
        }
        if (et == CALDERA_META_STRING) {
            if (n > rd_left(r) / 8) {
                rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: offset %" PRIu64 ": key '%s': array of %" PRIu64
                                   " strings cannot fit in the %" PRIu64 " bytes left (8 bytes at least each)",
                                   r->path, aoff, key, n, rd_left(r));
                goto fail;
            }
            sp = caldera_malloc((size_t) (n ? n : 1) * sizeof(*sp));
            sl = caldera_malloc((size_t) (n ? n : 1) * sizeof(*sl));
            if (!sp || !sl) { rc = CALDERA_ERR_NOMEM; goto fail; }
            for (uint64_t i = 0; i < n; i++) {
                uint64_t len;
                snprintf(what, sizeof(what), "element %" PRIu64 " of key '%.60s'", i, key);
                if ((rc = rd_str(r, &sp[i], &len, what)) < 0) goto fail;
                sl[i] = (size_t) len;
            }
            rc = caldera_meta_set_string_array_n(p->meta, key, (int64_t) n, sp, sl);
        } else {
            size_t es = meta_scalar_size(et);
            if (!es) {
                rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: offset %" PRIu64 ": key '%s': unknown array element "
                                   "type %" PRIu32 "; allowed 0..12", r->path, aoff - 4, key, et);
                goto fail;
            }
            if (n > rd_left(r) / es) {
                rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: offset %" PRIu64 ": key '%s': array of %" PRIu64
                                   " %s elements runs past the end of the file (%" PRIu64 " bytes left)",
                                   r->path, aoff, key, n, meta_type_name(et), rd_left(r));
                goto fail;
            }
            // copy to aligned memory: the array in the file may sit at any address
            if (!(tmp = caldera_malloc((size_t) n * es + 1))) { rc = CALDERA_ERR_NOMEM; goto fail; }
            memcpy(tmp, r->base + r->pos, (size_t) n * es);
            if (et == CALDERA_META_BOOL) {
                for (uint64_t i = 0; i < n; i++) ((uint8_t *) tmp)[i] = ((uint8_t *) tmp)[i] != 0;
            }
            r->pos += n * es;
            rc = caldera_meta_set_array(p->meta, key, et, (int64_t) n, tmp);
        }
    } else {
        size_t es = meta_scalar_size(type);
        if (!es) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: offset %" PRIu64 ": key '%s': unknown value type %" PRIu32
                               "; allowed 0..12", r->path, off, key, type);
            goto fail;
        }
        if ((rc = rd_need(r, es, what)) < 0) goto fail;
        rc = meta_put_scalar(p->meta, key, type, r->base + r->pos);
        r->pos += es;
    }
    if (rc < 0) {
        rc = caldera_error(inst, rc, "%s: storing key '%s': %s", r->path, key, caldera_status_str(rc));
    }
fail:
    caldera_free(tmp);
    caldera_free(sp);
    caldera_free(sl);
    caldera_free(key);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Names: llama-family GGUF names to Hugging Face names.

static const struct { const char * gguf, * hf; } gguf_blk_names[] = {
    { "attn_q",      "self_attn.q_proj" },
    { "attn_k",      "self_attn.k_proj" },
    { "attn_v",      "self_attn.v_proj" },
    { "attn_output", "self_attn.o_proj" },
    { "ffn_gate",    "mlp.gate_proj" },
    { "ffn_up",      "mlp.up_proj" },
    { "ffn_down",    "mlp.down_proj" },
    { "attn_norm",   "input_layernorm" },
    { "ffn_norm",    "post_attention_layernorm" },
};

static const struct { const char * gguf, * hf; } gguf_top_names[] = {
    { "token_embd",  "model.embed_tokens" },
    { "output_norm", "model.norm" },
    { "output",      "lm_head" },
};

// The HF name of a GGUF name: *out = a caldera_malloc string, or NULL when there is no mapping.
// *which: 'q' / 'k' for attn_q / attn_k, else 0. Returns 0 or CALDERA_ERR_NOMEM.
static int hf_name_of(const char * name, char ** out, int * which) {
    const char * suffix = NULL;
    size_t       n      = strlen(name);
    char         buf[160];
    *out   = NULL;
    *which = 0;
    if (n > 7 && strcmp(name + n - 7, ".weight") == 0) {
        suffix = ".weight";
    } else if (n > 5 && strcmp(name + n - 5, ".bias") == 0) {
        suffix = ".bias";
    } else {
        return 0;
    }
    size_t stem = n - strlen(suffix);
    buf[0] = 0;
    for (size_t i = 0; i < sizeof(gguf_top_names) / sizeof(gguf_top_names[0]); i++) {
        if (strlen(gguf_top_names[i].gguf) == stem && strncmp(name, gguf_top_names[i].gguf, stem) == 0) {
            snprintf(buf, sizeof(buf), "%s%s", gguf_top_names[i].hf, suffix);
        }
    }
    if (!buf[0] && strncmp(name, "blk.", 4) == 0) {
        const char * d  = name + 4;
        size_t       nd = 0;
        while (d[nd] >= '0' && d[nd] <= '9') nd++;
        if (nd == 0 || nd > 9 || d[nd] != '.' || (nd > 1 && d[0] == '0')) return 0;
        const char * part = d + nd + 1;
        size_t       np   = (size_t) (name + stem - part);
        for (size_t i = 0; i < sizeof(gguf_blk_names) / sizeof(gguf_blk_names[0]); i++) {
            if (strlen(gguf_blk_names[i].gguf) == np && strncmp(part, gguf_blk_names[i].gguf, np) == 0) {
                snprintf(buf, sizeof(buf), "model.layers.%.*s.%s%s", (int) nd, d, gguf_blk_names[i].hf, suffix);
                if (i == 0) *which = 'q';
                if (i == 1) *which = 'k';
            }
        }
    }
    if (!buf[0]) return 0;
    *out = caldera_strdup(buf);
    return *out ? 0 : CALDERA_ERR_NOMEM;
}

// The GGUF name of a llama-family HF name into buf (the inverse of hf_name_of); 0 when there is
// no mapping. *which: 'q' / 'k' for q_proj / k_proj.
static int gguf_name_of(const char * name, char * buf, size_t size, int * which) {
    const char * suffix = NULL;
    size_t       n      = strlen(name);
    *which = 0;
    if (n > 7 && strcmp(name + n - 7, ".weight") == 0) {
        suffix = ".weight";
    } else if (n > 5 && strcmp(name + n - 5, ".bias") == 0) {
        suffix = ".bias";
    } else {
        return 0;
    }
    size_t stem = n - strlen(suffix);
    for (size_t i = 0; i < sizeof(gguf_top_names) / sizeof(gguf_top_names[0]); i++) {
        if (strlen(gguf_top_names[i].hf) == stem && strncmp(name, gguf_top_names[i].hf, stem) == 0) {
            snprintf(buf, size, "%s%s", gguf_top_names[i].gguf, suffix);
            return 1;
        }
    }
    static const char prefix[] = "model.layers.";
    if (strncmp(name, prefix, sizeof(prefix) - 1) != 0) return 0;
    const char * d  = name + sizeof(prefix) - 1;
    size_t       nd = 0;
    while (d[nd] >= '0' && d[nd] <= '9') nd++;
    if (nd == 0 || nd > 9 || d[nd] != '.' || (nd > 1 && d[0] == '0')) return 0;
    const char * part = d + nd + 1;
    size_t       np   = (size_t) (name + stem - part);
    for (size_t i = 0; i < sizeof(gguf_blk_names) / sizeof(gguf_blk_names[0]); i++) {
        if (strlen(gguf_blk_names[i].hf) == np && strncmp(part, gguf_blk_names[i].hf, np) == 0) {
            snprintf(buf, size, "blk.%.*s.%s%s", (int) nd, d, gguf_blk_names[i].gguf, suffix);
            if (i == 0) *which = 'q';
            if (i == 1) *which = 'k';
            return 1;
        }
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Reader.

static void gguf_close(struct caldera_inst * inst) {
    struct gguf_priv * p = caldera_inst_priv(inst);
    for (int64_t i = 0; p->tensors && i < p->n_tensors; i++) {
        if (p->tensors[i].hf_name != p->tensors[i].name) caldera_free(p->tensors[i].hf_name);
        caldera_free(p->tensors[i].name);
    }
    caldera_freep(&p->tensors);
    p->n_tensors = 0;
    caldera_meta_free(p->meta);
    p->meta = NULL;
    if (p->map) munmap(p->map, p->map_size);
    p->map      = NULL;
    p->map_size = 0;
    caldera_freep(&p->path);
}

struct span { uint64_t off, end; int64_t idx; };

static int span_cmp(const void * a, const void * b) {
    const struct span * x = a, * y = b;
    if (x->off != y->off) return x->off < y->off ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

// The alignment from general.alignment (any integer type, a power of two).
static int read_alignment(struct gguf_priv * p, struct caldera_inst * inst) {
    int i = caldera_meta_find(p->meta, "general.alignment");
    p->align = GGUF_DEFAULT_ALIGNMENT;
    if (i < 0) return 0;
    enum caldera_meta_type t = caldera_meta_type_of(p->meta, i);
    int64_t                v = 0;
    int                    rc = caldera_meta_get_int(p->meta, "general.alignment", &v);
    if (t == CALDERA_META_BOOL || t == CALDERA_META_F32 || t == CALDERA_META_F64 || meta_scalar_size(t) == 0 || rc < 0) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: key 'general.alignment' has type %s; allowed: an unsigned "
                             "integer (u32)", p->path, meta_type_name(t));
    }
    if (v <= 0 || (v & (v - 1)) != 0 || v > (1 << 30)) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: general.alignment = %" PRId64 " is not a power of two in "
                             "[1, 2^30]", p->path, v);
    }
    p->align = (uint64_t) v;
    return 0;
}

// The dtype a tensor reports: the storage dtype, or the one recorded under GGUF_DTYPE_KEY.
static enum caldera_dtype convention_dtype(struct gguf_priv * p, struct caldera_inst * inst,
                                           const struct gguf_tensor * t) {
    char         key[256];
    const char * v;
    snprintf(key, sizeof(key), GGUF_DTYPE_KEY "%s", t->name);
    if (caldera_meta_get_string(p->meta, key, &v) < 0) return t->type->dtype;
    enum caldera_dtype dt;
    if (caldera_dtype_from_name(v, &dt) == 0) {
        const enum caldera_dtype ok[][2] = {
            { CALDERA_DTYPE_U8, CALDERA_DTYPE_I8 }, { CALDERA_DTYPE_BOOL, CALDERA_DTYPE_I8 },
            { CALDERA_DTYPE_U16, CALDERA_DTYPE_I16 }, { CALDERA_DTYPE_U32, CALDERA_DTYPE_I32 },
            { CALDERA_DTYPE_U64, CALDERA_DTYPE_I64 },
        };
        for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
            if (ok[i][0] == dt && ok[i][1] == t->type->dtype) return dt;
        }
    }
    caldera_inst_log(inst, CALDERA_LOG_WARN, "%s: %s = '%s' does not fit storage type %s; ignored", p->path, key, v,
                     t->type->name);
    return t->type->dtype;
}

static int read_tensor_infos(struct gguf_priv * p, struct rd * r, struct caldera_inst * inst) {
    struct strset names = { 0 };
    char          what[128];
    int           rc;

    if ((rc = strset_init(&names, (uint64_t) p->n_tensors)) < 0) goto fail;
    if (p->n_tensors && !(p->tensors = caldera_calloc((size_t) p->n_tensors, sizeof(*p->tensors)))) {
        rc = CALDERA_ERR_NOMEM;
        goto fail;
    }
    for (int64_t i = 0; i < p->n_tensors; i++) {
        struct gguf_tensor * t   = &p->tensors[i];
        uint64_t             off = r->pos, nlen, dims[CALDERA_MAX_DIMS];
        uint32_t             nd, tid;
        const char *         nm;
        snprintf(what, sizeof(what), "the name of tensor %" PRId64, i);
        if ((rc = rd_str(r, &nm, &nlen, what)) < 0) goto fail;
        if (memchr(nm, 0, nlen)) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: offset %" PRIu64 ": the name of tensor %" PRId64
                               " contains a NUL byte; names are text", p->path, off, i);
            goto fail;
        }
        if (!(t->name = caldera_malloc(nlen + 1))) { rc = CALDERA_ERR_NOMEM; goto fail; }
        memcpy(t->name, nm, nlen);
        t->name[nlen] = 0;
        t->hf_name    = t->name;
        if (strset_insert(&names, nm, nlen)) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: offset %" PRIu64 ": duplicate tensor name '%s'; names "
                               "must be unique", p->path, off, t->name);
            goto fail;
        }
        snprintf(what, sizeof(what), "the dimensions of tensor '%.60s'", t->name);
        if ((rc = rd_u32(r, &nd, what)) < 0) goto fail;
        if (nd < 1 || nd > CALDERA_MAX_DIMS) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensor '%s' has %" PRIu32 " dimensions; allowed 1..%d",
                               p->path, t->name, nd, CALDERA_MAX_DIMS);
            goto fail;
        }
        int64_t nel = 1, sne[CALDERA_MAX_DIMS];
        int32_t bad = 0;
        for (uint32_t d = 0; d < nd; d++) {
            if ((rc = rd_u64(r, &dims[d], what)) < 0) goto fail;
            sne[d] = dims[d] > (uint64_t) INT64_MAX ? -1 : (int64_t) dims[d];
        }
        // the product of the non-zero dimensions must fit, even when another one is 0
        if (caldera_shape_nelements((int32_t) nd, sne, &nel, &bad) < 0) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensor '%s': dimension %" PRId32 " = %" PRIu64
                               " makes the element count overflow 64 bits (the product of the non-zero dimensions "
                               "must fit in int64)", p->path, t->name, bad, dims[bad]);
            goto fail;
        }
        snprintf(what, sizeof(what), "the type of tensor '%.60s'", t->name);
        if ((rc = rd_u32(r, &tid, what)) < 0) goto fail;
        const struct gguf_type * ty = gguf_type_by_id(tid);
        if (!ty) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensor '%s' has unknown ggml type %" PRIu32 "; supported: %s",
                               p->path, t->name, tid, gguf_supported_names());
            goto fail;
        }
        if (!ty->supported) {
            rc = caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "%s: tensor '%s' has ggml type %" PRIu32 " (%s), which "
                               "this plugin does not read; supported: %s", p->path, t->name, tid, ty->name,
                               gguf_supported_names());
            goto fail;
        }
        if (dims[0] % (uint64_t) ty->blck != 0) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensor '%s': %s rows of %" PRIu64 " elements are not a "
                               "multiple of the block size %" PRId64, p->path, t->name, ty->name, dims[0], ty->blck);
            goto fail;
        }
        uint64_t nblk = (uint64_t) nel / (uint64_t) ty->blck;
        if (nblk > SIZE_MAX / ty->bytes || nblk > UINT64_MAX / ty->bytes) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensor '%s': %" PRId64 " elements overflow the byte size",
                               p->path, t->name, nel);
            goto fail;
        }
        snprintf(what, sizeof(what), "the offset of tensor '%.60s'", t->name);
        if ((rc = rd_u64(r, &t->offset, what)) < 0) goto fail;
        if (t->offset % p->align != 0) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensor '%s': data offset %" PRIu64 " is not a multiple of "
                               "the alignment %" PRIu64, p->path, t->name, t->offset, p->align);
            goto fail;
        }
        t->type   = ty;
        t->nbytes = (size_t) (nblk * ty->bytes);
        t->ndim   = (int32_t) nd;
        for (uint32_t d = 0; d < nd; d++) {
            t->ne[d] = (int64_t) dims[nd - 1 - d];   // GGUF is fastest-first, caldera slowest-first
        }
        t->dtype = convention_dtype(p, inst, t);
    }
    rc = 0;
fail:
    strset_free(&names);
    return rc;
}

// Data section bounds and overlaps.
static int check_data(struct gguf_priv * p, struct rd * r, struct caldera_inst * inst) {
    struct span * s = NULL;
    int64_t       m = 0;
    int           rc = 0;
    uint64_t      end = r->pos + (p->align - r->pos % p->align) % p->align;
    if (end < r->pos) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: data section offset overflows", p->path);
    }
    p->data_off = end;
    uint64_t avail = p->data_off <= p->map_size ? p->map_size - p->data_off : 0;
    if (p->n_tensors && !(s = caldera_malloc((size_t) p->n_tensors * sizeof(*s)))) return CALDERA_ERR_NOMEM;
    for (int64_t i = 0; i < p->n_tensors; i++) {
        const struct gguf_tensor * t = &p->tensors[i];
        if (t->nbytes == 0) continue;
        if (t->offset > avail || t->nbytes > avail - t->offset) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensor '%s': data [%" PRIu64 ", +%zu) of the data section "
                               "at %" PRIu64 " runs past the end of the file (%zu bytes)", p->path, t->name, t->offset,
                               t->nbytes, p->data_off, p->map_size);
            goto fail;
        }
        s[m++] = (struct span) { t->offset, t->offset + t->nbytes, i };
    }
    if (m > 1) qsort(s, (size_t) m, sizeof(*s), span_cmp);
    for (int64_t i = 1; i < m; i++) {
        if (s[i].off < s[i - 1].end) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensors '%s' [%" PRIu64 ", %" PRIu64 ") and '%s' [%" PRIu64
                               ", %" PRIu64 ") overlap; tensor data must not overlap", p->path,
                               p->tensors[s[i - 1].idx].name, s[i - 1].off, s[i - 1].end, p->tensors[s[i].idx].name,
                               s[i].off, s[i].end);
            goto fail;
        }
    }
fail:
    caldera_free(s);
    return rc;
}

// HF names, and which tensors carry llama.cpp's q/k row permutation.
static int map_names(struct gguf_priv * p) {
    const char * arch = NULL;
    int64_t      n_head = 0, n_kv = 0;
    int          llama = caldera_meta_get_string(p->meta, "general.architecture", &arch) == 0 && strcmp(arch, "llama") == 0;
    if (llama) {
        if (caldera_meta_get_int(p->meta, "llama.attention.head_count", &n_head) < 0) n_head = 0;
        if (caldera_meta_get_int(p->meta, "llama.attention.head_count_kv", &n_kv) < 0) n_kv = n_head;
    }
    for (int64_t i = 0; i < p->n_tensors; i++) {
        struct gguf_tensor * t = &p->tensors[i];
        int                  which;
        char *               hf;
        if (hf_name_of(t->name, &hf, &which) < 0) return CALDERA_ERR_NOMEM;
        if (hf) t->hf_name = hf;
        if (llama && which) {
            t->perm_heads = which == 'q' ? n_head : n_kv;
            if (t->perm_heads <= 0) t->perm_heads = -1;   // needed but unknown: read_tensor reports it
        }
    }
    return 0;
}

static int gguf_open(struct caldera_inst * inst, const char * path) {
    struct gguf_priv * p  = caldera_inst_priv(inst);
    struct strset      keys = { 0 };
    int                fd = -1, rc;
    struct stat        st;

    if (!path || !path[0]) path = p->path_opt;
    if (!path || !path[0]) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "open: no file given; set option 'path'");
    }
    if (p->map || p->w) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "open('%s'): this instance already has a file open; close it first",
                             path);
    }
    if (!(p->path = caldera_strdup(path))) return CALDERA_ERR_NOMEM;
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        rc = caldera_error(inst, errno == ENOENT ? CALDERA_ERR_NOT_FOUND : CALDERA_ERR_IO, "%s: cannot open: %s", path,
                           strerror(errno));
        goto fail;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        rc = caldera_error(inst, CALDERA_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    if (st.st_size < 24) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: truncated: %lld bytes, a GGUF header needs 24", path,
                           (long long) st.st_size);
        goto fail;
    }
    p->map_size = (size_t) st.st_size;
    // MAP_PRIVATE + write permission: a caller that writes into a view changes its private
    // copy of the page, never the file.
    p->map = mmap(NULL, p->map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p->map == MAP_FAILED) {
        p->map = NULL;
        rc     = caldera_error(inst, CALDERA_ERR_IO, "%s: mmap of %zu bytes failed: %s", path, p->map_size, strerror(errno));
        goto fail;
    }
    close(fd);
    fd = -1;

    struct rd r = { inst, path, p->map, p->map_size, 0 };
    if (memcmp(p->map, "GGUF", 4) != 0) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: bad magic %02x %02x %02x %02x at offset 0; a GGUF file starts "
                           "with \"GGUF\"", path, p->map[0], p->map[1], p->map[2], p->map[3]);
        goto fail;
    }
    r.pos = 4;
    uint64_t n_tensors, n_kv;
    if ((rc = rd_u32(&r, &p->version, "the version")) < 0) goto fail;
    if (p->version != 2 && p->version != 3) {
        const char * hint = (p->version & 0xFFFF) == 0 ? " (a big-endian file? only little-endian GGUF is read)" : "";
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: offset 4: GGUF version %" PRIu32 " is not supported%s; "
                           "allowed: 2, 3", path, p->version, hint);
        goto fail;
    }
    if ((rc = rd_u64(&r, &n_tensors, "n_tensors")) < 0 || (rc = rd_u64(&r, &n_kv, "n_kv")) < 0) goto fail;
    // smallest encodings: a key/value 13 bytes (empty key, u8), a tensor info 32 (empty name, 1 dim)
    if (n_kv > rd_left(&r) / 13) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: offset 16: n_kv = %" PRIu64 " key/values cannot fit in the %"
                           PRIu64 " bytes left (13 bytes at least each)", path, n_kv, rd_left(&r));
        goto fail;
    }
    if (n_kv > GGUF_MAX_KV) {
        rc = caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "%s: offset 16: n_kv = %" PRIu64 " keys; at most %d are read",
                           path, n_kv, GGUF_MAX_KV);
        goto fail;
    }
    if (n_tensors > (rd_left(&r) - n_kv * 13) / 32) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: offset 8: n_tensors = %" PRIu64 " tensor infos cannot fit in "
                           "the %" PRIu64 " bytes left (32 bytes at least each)", path, n_tensors, rd_left(&r));
        goto fail;
    }
    if ((rc = caldera_meta_init(&p->meta)) < 0 || (rc = strset_init(&keys, n_kv)) < 0) goto fail;
    for (uint64_t i = 0; i < n_kv; i++) {
        if ((rc = read_kv(p, &r, &keys, i)) < 0) goto fail;
    }
    if ((rc = read_alignment(p, inst)) < 0) goto fail;
    p->n_tensors = (int64_t) n_tensors;
    if ((rc = read_tensor_infos(p, &r, inst)) < 0) goto fail;
    if ((rc = check_data(p, &r, inst)) < 0) goto fail;
    if ((rc = map_names(p)) < 0) goto fail;
    strset_free(&keys);
    caldera_inst_log(inst, CALDERA_LOG_DEBUG, "%s: GGUF v%" PRIu32 ", %" PRId64 " tensors, %" PRIu64 " keys, alignment %"
                     PRIu64, path, p->version, p->n_tensors, n_kv, p->align);
    return 0;
fail:
    strset_free(&keys);
    if (fd >= 0) close(fd);
    gguf_close(inst);
    return rc;
}

static int64_t gguf_n_tensors(struct caldera_inst * inst) {
    struct gguf_priv * p = caldera_inst_priv(inst);
    return p->map ? p->n_tensors : 0;
}

static int tensor_index(struct caldera_inst * inst, int64_t i) {
    struct gguf_priv * p = caldera_inst_priv(inst);
    if (!p->map) return caldera_error(inst, CALDERA_ERR_INVAL, "no file is open; call open first");
    if (i < 0 || i >= p->n_tensors) {
        return caldera_error(inst, CALDERA_ERR_RANGE, "%s: tensor index %" PRId64 " out of range [0, %" PRId64 ")",
                             p->path, i, p->n_tensors);
    }
    return 0;
}

static int gguf_tensor_info(struct caldera_inst * inst, int64_t i, struct caldera_tensor_info * out) {
    struct gguf_priv * p  = caldera_inst_priv(inst);
    int                rc = tensor_index(inst, i);
    if (rc < 0) return rc;
    const struct gguf_tensor * t = &p->tensors[i];
    memset(out, 0, sizeof(*out));
    out->name    = t->name;
    out->hf_name = t->hf_name;
    out->dtype   = t->dtype;
    out->ndim    = t->ndim;
    for (int d = 0; d < t->ndim; d++) out->ne[d] = t->ne[d];
    out->nbytes = t->nbytes;
    return 0;
}

// HF unit i of a tensor whose units (rows, or elements of a 1-d tensor) llama.cpp permuted with
// reshape(n_head, 2, hd/2, ...).swapaxes(1, 2): HF unit h*hd + t*hd/2 + j is GGUF unit h*hd + 2j + t.
static inline int64_t perm_src(int64_t i, int64_t hd) {
    const int64_t h = i / hd, r = i % hd, half = hd / 2;
    return h * hd + 2 * (r % half) + r / half;
}

struct deq_job {
    const struct gguf_type * type;
    enum caldera_dtype       dt;
    const uint8_t *          src;
    float *                  dst;
    int64_t                  row;    // elements per GGUF row
    size_t                   rbytes; // bytes per GGUF row
};

static void deq_rows(void * arg, int64_t i0, int64_t i1) {
    const struct deq_job * j = arg;
    for (int64_t i = i0; i < i1; i++) {
        gguf_to_f32(j->type, j->dt, j->src + (size_t) i * j->rbytes, j->dst + i * j->row, j->row);
    }
}

static int gguf_read_tensor(struct caldera_inst * inst, int64_t i, enum caldera_dtype want, struct caldera_tensor * out,
                            int * owned) {
    struct gguf_priv *    p   = caldera_inst_priv(inst);
    struct caldera_ctx *  ctx = caldera_inst_ctx(inst);
    struct caldera_tensor f   = { 0 };   // f32 copy (when want != F32) or permutation scratch
    int                   rc  = tensor_index(inst, i);
    if (rc < 0) return rc;
    const struct gguf_tensor * t   = &p->tensors[i];
    // an empty tensor may sit at any offset (even past the end): point it at the map
    const uint8_t *            src = t->nbytes ? p->map + p->data_off + t->offset : p->map;
    const int64_t              nel = t->nbytes / t->type->bytes * t->type->blck;
    const int64_t              units = t->ne[0];
    int64_t                    hd  = 0;
    memset(out, 0, sizeof(*out));
    *owned = 0;

    if ((int) want < 0 || want >= CALDERA_DTYPE_COUNT) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "%s: tensor '%s': requested dtype %d is invalid", p->path, t->name,
                             (int) want);
    }
    if (want != t->dtype && caldera_dtype_block_elems(want) != 1) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "%s: tensor '%s' is %s: converting to %s is not supported; "
                             "ask for f32 (or any plain dtype) or the stored %s", p->path, t->name, t->type->name,
                             caldera_dtype_name(want), caldera_dtype_name(t->dtype));
    }
    // an empty tensor has nothing to permute (its other dimension may be huge: no loop over it)
    if (p->hf_layout && t->perm_heads != 0 && nel > 0) {
        if (t->perm_heads < 0) {
            return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensor '%s': llama.attention.head_count is missing, so the "
                                 "llama.cpp q/k permutation cannot be undone; set hf_layout = 0 to read it as stored",
                                 p->path, t->name);
        }
        if (units % t->perm_heads != 0 || (units / t->perm_heads) % 2 != 0) {
            return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensor '%s': %" PRId64 " rows are not %" PRId64 " heads of "
                                 "an even head size, so the llama.cpp q/k permutation cannot be undone", p->path,
                                 t->name, units, t->perm_heads);
        }
        hd = units / t->perm_heads;
    }

    if (want == t->dtype && hd == 0 && ((uintptr_t) src % t->type->bytes == 0 || t->type->blck > 1)) {
        // a view of the mapped file
        out->data   = (void *) src;
        out->dtype  = t->dtype;
        out->device = CALDERA_DEVICE_CPU;
        out->ndim   = t->ndim;
        for (int d = 0; d < t->ndim; d++) out->ne[d] = t->ne[d];
        out->ld = t->ndim == 2 ? t->ne[1] : 0;
        return 0;
    }
    if (want == t->dtype) {
        // a copy in the stored dtype, with units permuted back
        size_t ub = units ? t->nbytes / (size_t) units : 0;
        if (units && (t->nbytes % (size_t) units != 0 || (t->ndim == 1 && t->type->blck > 1))) {
            return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "%s: tensor '%s': rows of %s blocks cannot be permuted; "
                                 "read it as f32", p->path, t->name, t->type->name);
        }
        if ((rc = caldera_tensor_alloc(ctx, t->dtype, t->ndim, t->ne, out)) < 0) return rc;
        for (int64_t u = 0; u < units; u++) {
            int64_t s = hd ? perm_src(u, hd) : u;
            memcpy((uint8_t *) out->data + (size_t) u * ub, src + (size_t) s * ub, ub);
        }
        *owned = 1;
        return 0;
    }

    // dequantize / convert to f32 (in parallel over GGUF rows), then permute and convert
    int64_t row = t->ndim ? t->ne[t->ndim - 1] : 1;
    if ((rc = caldera_tensor_alloc(ctx, CALDERA_DTYPE_F32, t->ndim, t->ne, &f)) < 0) goto fail;
    if (nel > 0 && row > 0) {
        struct deq_job job = { t->type, t->dtype, src, f.data, row, t->nbytes / (size_t) (nel / row) };
        int64_t        rows = nel / row;
        // about 1M elements (1-2 ms) per chunk: smaller tensors are not worth a parallel region
        int64_t        grain = row >= GGUF_PAR_GRAIN ? 1 : GGUF_PAR_GRAIN / row;
        caldera_parallel_for(ctx, rows, grain, deq_rows, &job);
    }
    if (hd) {
        struct caldera_tensor g = { 0 };
        int64_t               ue = units ? nel / units : 0;
        if ((rc = caldera_tensor_alloc(ctx, CALDERA_DTYPE_F32, t->ndim, t->ne, &g)) < 0) goto fail;
        for (int64_t u = 0; u < units; u++) {
            memcpy((float *) g.data + u * ue, (const float *) f.data + perm_src(u, hd) * ue, (size_t) ue * sizeof(float));
        }
        caldera_tensor_free(&f);
        f = g;
    }
    if (want == CALDERA_DTYPE_F32) {
        *out   = f;
        *owned = 1;
        return 0;
    }
    if ((rc = caldera_tensor_alloc(ctx, want, t->ndim, t->ne, out)) < 0) goto fail;
    if ((rc = caldera_convert_from_f32(want, f.data, nel, out->data)) < 0) {
        caldera_tensor_free(out);
        rc = caldera_error(inst, rc, "%s: tensor '%s': conversion from f32 to %s failed", p->path, t->name,
                           caldera_dtype_name(want));
        goto fail;
    }
    *owned = 1;
fail:
    caldera_tensor_free(&f);
    return rc;
}

static const struct caldera_meta * gguf_meta(struct caldera_inst * inst) {
    struct gguf_priv * p = caldera_inst_priv(inst);
    return p->meta;
}

// Hyper-parameters are untrusted: an integer must be in [0, GGUF_MAX_HPARAM] (0 = absent), a float
// finite and >= 0, so that nothing derived from them (head_dim = hidden / n_heads, products of
// sizes) can overflow or trap.
#define GGUF_MAX_HPARAM INT32_MAX

static int desc_int(struct gguf_priv * p, struct caldera_inst * inst, const char * arch, const char * suffix,
                    int64_t * out) {
    char    key[128];
    int64_t v = 0;
    snprintf(key, sizeof(key), "%s.%s", arch, suffix);
    *out = 0;
    int i = caldera_meta_find(p->meta, key);
    if (i < 0) return 0;
    int rc = caldera_meta_get_int(p->meta, key, &v);
    if (rc < 0 || v < 0 || v > GGUF_MAX_HPARAM) {
        uint64_t u = 0;
        double   f = 0;
        char     val[48] = "?";
        if (caldera_meta_get_uint64(p->meta, key, &u) == 0) snprintf(val, sizeof(val), "%" PRIu64, u);
        else if (rc == 0) snprintf(val, sizeof(val), "%" PRId64, v);
        else if (caldera_meta_get_float(p->meta, key, &f) == 0) snprintf(val, sizeof(val), "%.17g", f);
        return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: %s = %s (%s); allowed: an integer in [0, %d]", p->path, key,
                             val, meta_type_name(caldera_meta_type_of(p->meta, i)), GGUF_MAX_HPARAM);
    }
    *out = v;
    return 0;
}

static int desc_float(struct gguf_priv * p, struct caldera_inst * inst, const char * arch, const char * suffix,
                      double * out) {
    char   key[128];
    double v = 0;
    snprintf(key, sizeof(key), "%s.%s", arch, suffix);
    *out = 0;
    int i = caldera_meta_find(p->meta, key);
    if (i < 0) return 0;
    if (caldera_meta_get_float(p->meta, key, &v) < 0 || !(v >= 0 && v <= 1e300)) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: %s = %.17g (%s); allowed: a finite number >= 0", p->path, key,
                             v, meta_type_name(caldera_meta_type_of(p->meta, i)));
    }
    *out = v;
    return 0;
}

static int gguf_model_desc(struct caldera_inst * inst, struct caldera_model_desc * out) {
    struct gguf_priv * p = caldera_inst_priv(inst);
    const char *       arch = NULL, * s = NULL;
    int                rc;
    memset(out, 0, sizeof(*out));
    if (!p->map) return caldera_error(inst, CALDERA_ERR_INVAL, "no file is open; call open first");
    if (caldera_meta_get_string(p->meta, "general.architecture", &arch) < 0) {
        return caldera_error(inst, CALDERA_ERR_NOT_FOUND, "%s: no string key 'general.architecture'; the model "
                             "architecture is unknown", p->path);
    }
    snprintf(out->arch, sizeof(out->arch), "%s", arch);
    if ((rc = desc_int(p, inst, arch, "block_count", &out->n_layers)) < 0 ||
        (rc = desc_int(p, inst, arch, "embedding_length", &out->hidden)) < 0 ||
        (rc = desc_int(p, inst, arch, "feed_forward_length", &out->ffn)) < 0 ||
        (rc = desc_int(p, inst, arch, "attention.head_count", &out->n_heads)) < 0 ||
        (rc = desc_int(p, inst, arch, "attention.head_count_kv", &out->n_kv_heads)) < 0 ||
        (rc = desc_int(p, inst, arch, "attention.key_length", &out->head_dim)) < 0 ||
        (rc = desc_int(p, inst, arch, "context_length", &out->ctx_len)) < 0 ||
        (rc = desc_int(p, inst, arch, "vocab_size", &out->vocab)) < 0 ||
        (rc = desc_float(p, inst, arch, "rope.freq_base", &out->rope_theta)) < 0 ||
        (rc = desc_float(p, inst, arch, "rope.scaling.factor", &out->rope_scaling_factor)) < 0 ||
        (rc = desc_float(p, inst, arch, "attention.layer_norm_rms_epsilon", &out->norm_eps)) < 0) {
        memset(out, 0, sizeof(*out));
        return rc;
    }
    if (out->n_kv_heads == 0) out->n_kv_heads = out->n_heads;
    if (out->head_dim == 0 && out->n_heads > 0) out->head_dim = out->hidden / out->n_heads;
    char key[128];
    snprintf(key, sizeof(key), "%s.rope.scaling.type", arch);
    if (caldera_meta_get_string(p->meta, key, &s) == 0) snprintf(out->rope_scaling, sizeof(out->rope_scaling), "%s", s);
    int64_t n = 0;
    if (caldera_meta_get_array(p->meta, "tokenizer.ggml.tokens", NULL, &n, NULL) == 0) out->vocab = n;
    int has_output = 0;
    for (int64_t i = 0; i < p->n_tensors; i++) {
        if (strcmp(p->tensors[i].name, "output.weight") == 0) has_output = 1;
        if (out->vocab == 0 && strcmp(p->tensors[i].name, "token_embd.weight") == 0 &&
            p->tensors[i].ne[0] <= GGUF_MAX_HPARAM) {
            out->vocab = p->tensors[i].ne[0];
        }
    }
    out->tied_embeddings = !has_output;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Writer.

static int buf_put(struct gguf_buf * b, const void * data, size_t n) {
    if (n > SIZE_MAX - b->len) return CALDERA_ERR_NOMEM;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
        uint8_t * q = caldera_realloc(b->p, cap);
        if (!q) return CALDERA_ERR_NOMEM;
        b->p   = q;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

static int buf_u32(struct gguf_buf * b, uint32_t v) { return buf_put(b, &v, 4); }
static int buf_u64(struct gguf_buf * b, uint64_t v) { return buf_put(b, &v, 8); }
static int buf_str(struct gguf_buf * b, const char * s, size_t n) {
    int rc = buf_u64(b, n);
    return rc < 0 ? rc : buf_put(b, s, n);
}

// One scalar of type t with integer value i / float value f.
static int buf_scalar(struct gguf_buf * b, uint32_t t, int64_t i, double f) {
    switch (t) {
    case CALDERA_META_U8: case CALDERA_META_I8: { uint8_t v = (uint8_t) i; return buf_put(b, &v, 1); }
    case CALDERA_META_BOOL: { uint8_t v = i != 0; return buf_put(b, &v, 1); }
    case CALDERA_META_U16: case CALDERA_META_I16: { uint16_t v = (uint16_t) i; return buf_put(b, &v, 2); }
    case CALDERA_META_U32: case CALDERA_META_I32: { uint32_t v = (uint32_t) i; return buf_put(b, &v, 4); }
    case CALDERA_META_U64: case CALDERA_META_I64: { uint64_t v = (uint64_t) i; return buf_put(b, &v, 8); }
    case CALDERA_META_F32: { float v = (float) f; return buf_put(b, &v, 4); }
    case CALDERA_META_F64: return buf_put(b, &f, 8);
    default: return CALDERA_ERR_BUG;
    }
}

static int write_meta(struct caldera_inst * inst, struct gguf_writer * w, const struct caldera_meta * meta) {
    int rc = 0;
    for (int64_t i = 0; i < caldera_meta_count(meta); i++) {
        const char *           key = caldera_meta_key(meta, i);
        enum caldera_meta_type t   = caldera_meta_type_of(meta, i);
        if (strcmp(key, "general.alignment") == 0) continue;   // the writer's own value is written
        if (strncmp(key, GGUF_DTYPE_KEY, strlen(GGUF_DTYPE_KEY)) == 0) continue;   // regenerated per tensor
        if ((rc = buf_str(&w->kv, key, strlen(key))) < 0 || (rc = buf_u32(&w->kv, t)) < 0) return rc;
        if (t == CALDERA_META_STRING) {
            const char * s = NULL;
            size_t       len = 0;
            if ((rc = caldera_meta_get_string_n(meta, key, &s, &len)) < 0 || (rc = buf_str(&w->kv, s, len)) < 0) return rc;
        } else if (t == CALDERA_META_ARRAY) {
            enum caldera_meta_type et;
            int64_t                n;
            const void *           data;
            if ((rc = caldera_meta_get_array(meta, key, &et, &n, &data)) < 0) return rc;
            if ((rc = buf_u32(&w->kv, et)) < 0 || (rc = buf_u64(&w->kv, (uint64_t) n)) < 0) return rc;
            if (et == CALDERA_META_STRING) {
                const char * const * s;
                const size_t *       lens;   // strings keep their bytes, NULs included
                if ((rc = caldera_meta_get_string_array_n(meta, key, NULL, &s, &lens)) < 0) return rc;
                for (int64_t k = 0; k < n; k++) {
                    if ((rc = buf_str(&w->kv, s[k], lens[k])) < 0) return rc;
                }
            } else if (meta_scalar_size(et)) {
                if ((rc = buf_put(&w->kv, data, (size_t) n * meta_scalar_size(et))) < 0) return rc;
            } else {
                return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "metadata key '%s': arrays of %s cannot be written; "
                                     "allowed: arrays of scalars and strings", key, meta_type_name(et));
            }
        } else if (t == CALDERA_META_F32 || t == CALDERA_META_F64) {
            double f = 0;
            if ((rc = caldera_meta_get_float(meta, key, &f)) < 0 || (rc = buf_scalar(&w->kv, t, 0, f)) < 0) return rc;
        } else if (meta_scalar_size(t)) {
            int64_t v = 0;
            rc = caldera_meta_get_int(meta, key, &v);
            // a u64 above INT64_MAX comes back as its bit pattern with CALDERA_ERR_RANGE
            if (rc < 0 && !(t == CALDERA_META_U64 && rc == CALDERA_ERR_RANGE)) return rc;
            if ((rc = buf_scalar(&w->kv, t, v, 0)) < 0) return rc;
        } else {
            return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "metadata key '%s' has invalid type %d", key, (int) t);
        }
        w->n_kv++;
    }
    return 0;
}

static void writer_free(struct gguf_writer * w, int remove_tmp) {
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    if (w->data_fd >= 0) close(w->data_fd);
    if (remove_tmp && w->tmp_path) unlink(w->tmp_path);
    for (int64_t i = 0; i < w->n; i++) caldera_free(w->t[i].name);
    caldera_free_unaligned(w->t);
    caldera_free_unaligned(w->kv.p);
    caldera_free_unaligned(w->kv_dtype.p);
    caldera_free(w->tmp_path);
    caldera_free(w->path);
    caldera_free(w);
}

// Create "<path><tag><random>" exclusively (mode 0666 minus umask); *out = its name.
static int create_unique(struct caldera_inst * inst, const char * path, const char * tag, char ** out, int * fd) {
    size_t             n = strlen(path) + strlen(tag) + 24;
    struct timespec    ts;
    struct caldera_rng rng;
    char *             name = caldera_malloc(n);
    if (!name) return CALDERA_ERR_NOMEM;
    clock_gettime(CLOCK_REALTIME, &ts);
    caldera_rng_seed(&rng, (uint64_t) ts.tv_nsec ^ ((uint64_t) ts.tv_sec << 20) ^ ((uint64_t) getpid() << 40) ^
                           (uint64_t) (uintptr_t) out);
    for (int tries = 0; tries < 100; tries++) {
        snprintf(name, n, "%s%s%06" PRIx64, path, tag, caldera_rng_u64(&rng) & 0xFFFFFF);
        *fd = open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (*fd >= 0) {
            *out = name;
            return 0;
        }
        if (errno != EEXIST) break;
    }
    int rc = caldera_error(inst, CALDERA_ERR_IO, "%s: cannot create a temporary file beside it: %s", path, strerror(errno));
    caldera_free(name);
    return rc;
}

// The file's key/values from meta, plus general.alignment when it is not the default.
static int kv_from_meta(struct caldera_inst * inst, const struct gguf_priv * p, struct gguf_writer * w,
                        const struct caldera_meta * meta) {
    int rc;
    if ((rc = write_meta(inst, w, meta)) < 0) return rc;
    if (p->alignment != GGUF_DEFAULT_ALIGNMENT) {
        const char * k = "general.alignment";
        if ((rc = buf_str(&w->kv, k, strlen(k))) < 0 || (rc = buf_u32(&w->kv, CALDERA_META_U32)) < 0 ||
            (rc = buf_u32(&w->kv, (uint32_t) p->alignment)) < 0) return rc;
        w->n_kv++;
    }
    return 0;
}

static int gguf_create(struct caldera_inst * inst, const char * path, const struct caldera_meta * meta) {
    struct gguf_priv *   p = caldera_inst_priv(inst);
    struct gguf_writer * w = NULL;
    char *               spill = NULL;
    int                  rc;
    if (!path || !path[0]) path = p->path_opt;
    if (!path || !path[0]) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "create: no file given; set option 'path'");
    }
    if (p->w || p->map) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "create('%s'): this instance already has a file open; finish or "
                             "close it first", path);
    }
    if (p->alignment < 1 || (p->alignment & (p->alignment - 1)) != 0) {
        return caldera_error(inst, CALDERA_ERR_RANGE, "option 'alignment' = %" PRId64 " is not a power of two; allowed: "
                             "1, 2, 4, ..., 65536", p->alignment);
    }
    if (!(w = caldera_calloc(1, sizeof(*w)))) return CALDERA_ERR_NOMEM;
    w->fd = w->data_fd = -1;
    if (!(w->path = caldera_strdup(path))) { rc = CALDERA_ERR_NOMEM; goto fail; }
    const char * arch = NULL;
    w->llama = p->gguf_names && caldera_meta_get_string(meta, "general.architecture", &arch) == 0 &&
               strcmp(arch, "llama") == 0;
    if (w->llama) {
        if (caldera_meta_get_int(meta, "llama.attention.head_count", &w->heads_q) < 0) w->heads_q = 0;
        if (caldera_meta_get_int(meta, "llama.attention.head_count_kv", &w->heads_kv) < 0) w->heads_kv = w->heads_q;
    }
    if ((rc = kv_from_meta(inst, p, w, meta)) < 0) goto fail;
    if ((rc = create_unique(inst, path, ".tmp-", &w->tmp_path, &w->fd)) < 0) goto fail;
    if ((rc = create_unique(inst, path, ".data-", &spill, &w->data_fd)) < 0) goto fail;
    unlink(spill);   // anonymous from now on: nothing is left behind whatever happens
    caldera_free(spill);
    p->w = w;
    return 0;
fail:
    caldera_free(spill);
    writer_free(w, 1);
    return rc;
}

static int write_all(int fd, const void * data, size_t n) {
    const uint8_t * q = data;
    while (n > 0) {
        ssize_t k = write(fd, q, n > (1u << 30) ? (1u << 30) : n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        q += k;
        n -= (size_t) k;
    }
    return 0;
}

static int gguf_write_tensor(struct caldera_inst * inst, const char * name, const struct caldera_tensor * t) {
    struct gguf_priv *   p = caldera_inst_priv(inst);
    struct gguf_writer * w = p->w;
    uint8_t *            perm = NULL;   // rows in llama.cpp's order (q/k of arch llama)
    char                 gname[256];
    int                  which = 0, rc;
    if (!w) return caldera_error(inst, CALDERA_ERR_INVAL, "write_tensor('%s'): no file is being written; call create first",
                                 name);
    const char * hf_name = name;
    if (p->gguf_names && gguf_name_of(name, gname, sizeof(gname), &which)) name = gname;
    if (t->device != CALDERA_DEVICE_CPU) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "tensor '%s' is on a device; copy it to the CPU first", name);
    }
    if (t->ndim < 1 || t->ndim > CALDERA_MAX_DIMS) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "tensor '%s' has %d dimensions; allowed 1..%d", name, t->ndim,
                             CALDERA_MAX_DIMS);
    }
    const struct gguf_type * ty = gguf_type_by_dtype(t->dtype);
    const char *             conv = NULL;   // dtype recorded under GGUF_DTYPE_KEY
    switch (t->dtype) {
    case CALDERA_DTYPE_U8:   ty = gguf_type_by_dtype(CALDERA_DTYPE_I8);  conv = "u8";   break;
    case CALDERA_DTYPE_BOOL: ty = gguf_type_by_dtype(CALDERA_DTYPE_I8);  conv = "bool"; break;
    case CALDERA_DTYPE_U16:  ty = gguf_type_by_dtype(CALDERA_DTYPE_I16); conv = "u16";  break;
    case CALDERA_DTYPE_U32:  ty = gguf_type_by_dtype(CALDERA_DTYPE_I32); conv = "u32";  break;
    case CALDERA_DTYPE_U64:  ty = gguf_type_by_dtype(CALDERA_DTYPE_I64); conv = "u64";  break;
    default: break;
    }
    if (!ty) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "tensor '%s': dtype %s has no GGUF type; allowed: f32, f16, "
                             "bf16, f64, i8..i64, u8..u64, bool and the ggml block types", name,
                             caldera_dtype_name(t->dtype));
    }
    for (int64_t i = 0; i < w->n; i++) {
        if (strcmp(w->t[i].name, name) == 0) {
            return caldera_error(inst, CALDERA_ERR_INVAL, "tensor '%s' was already written; names must be unique", name);
        }
    }
    int64_t nel;
    int32_t bad;
    if (caldera_shape_nelements(t->ndim, t->ne, &nel, &bad) < 0) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "tensor '%s': dimension %d = %" PRId64 " invalid", name, (int) bad,
                             t->ne[bad]);
    }
    const int64_t row = t->ne[t->ndim - 1];
    if (row % ty->blck != 0) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "tensor '%s': rows of %" PRId64 " elements are not a multiple of "
                             "the %s block size %" PRId64, name, row, ty->name, ty->blck);
    }
    const size_t  rbytes = (size_t) (row / ty->blck) * ty->bytes;
    const int64_t rows   = row ? nel / row : 0;
    const int64_t ld     = (t->ndim == 2 && t->ld) ? t->ld : row;
    if (ld < row) return caldera_error(inst, CALDERA_ERR_INVAL, "tensor '%s': ld %" PRId64 " < %" PRId64, name, ld, row);
    const uint8_t * base = t->data;
    int64_t         prow = rows;   // rows as written
    size_t          pbytes = rbytes;
    if (w->llama && which && nel > 0) {
        // HF layout in, llama.cpp's layout out: GGUF unit g = h*hd + 2j + t holds HF unit
        // h*hd + t*hd/2 + j (units: rows, or elements of a 1-d bias), as the converter does
        int64_t heads = which == 'q' ? w->heads_q : w->heads_kv;
        int64_t units = t->ne[0];
        if (heads <= 0) {
            return caldera_error(inst, CALDERA_ERR_INVAL, "tensor '%s' (%s): llama.attention.head_count is not in the "
                                 "metadata, so the llama.cpp q/k permutation cannot be applied; set gguf_names = 0 to "
                                 "write Hugging Face names and layout", hf_name, name);
        }
        if (t->ndim > 2 || units % heads != 0 || (units / heads) % 2 != 0 || (t->ndim == 1 && ty->blck > 1)) {
            return caldera_error(inst, CALDERA_ERR_INVAL, "tensor '%s': %" PRId64 " rows are not %" PRId64 " heads of an "
                                 "even head size; cannot apply the llama.cpp q/k permutation", hf_name, units, heads);
        }
        const int64_t hd = units / heads, half = hd / 2;
        const size_t  ub = (size_t) ((uint64_t) rows * rbytes / (uint64_t) units);   // bytes per unit
        if (!(perm = caldera_malloc((size_t) rows * rbytes))) return CALDERA_ERR_NOMEM;
        for (int64_t g = 0; g < units; g++) {
            const int64_t r = g % hd, src = (g / hd) * hd + (r % 2) * half + r / 2;
            const uint8_t * sp = t->ndim == 1 ? base + (size_t) src * ub
                                              : base + (size_t) src * (size_t) (ld / ty->blck) * ty->bytes;
            memcpy(perm + (size_t) g * ub, sp, ub);
        }
        base   = perm;
        prow   = 1;
        pbytes = (size_t) rows * rbytes;
    }
    if (strlen(name) >= 64) {
        caldera_inst_log(inst, CALDERA_LOG_WARN, "tensor name '%s' has %zu bytes; llama.cpp reads names up to 63", name,
                         strlen(name));
    }
    if (w->n == w->cap) {
        int64_t               cap = w->cap ? 2 * w->cap : 64;
        struct gguf_wtensor * q   = caldera_realloc(w->t, (size_t) cap * sizeof(*q));
        if (!q) {
            caldera_free(perm);
            return CALDERA_ERR_NOMEM;
        }
        w->t   = q;
        w->cap = cap;
    }
    struct gguf_wtensor * wt = &w->t[w->n];
    memset(wt, 0, sizeof(*wt));
    if (!(wt->name = caldera_strdup(name))) { caldera_free(perm); return CALDERA_ERR_NOMEM; }
    wt->type   = ty->id;
    wt->ndim   = (uint32_t) t->ndim;
    wt->offset = w->data_len;
    for (int d = 0; d < t->ndim; d++) wt->dims[d] = (uint64_t) t->ne[t->ndim - 1 - d];
    // rows (ld apart when 2-d strided), then zero padding to the alignment
    if (perm || ld == row || rows <= 1) {
        rc = (prow * (int64_t) pbytes > 0) ? write_all(w->data_fd, base, (size_t) prow * pbytes) : 0;
    } else {
        rc = 0;
        for (int64_t r = 0; r < rows && rc == 0; r++) {
            rc = write_all(w->data_fd, base + (size_t) r * (size_t) (ld / ty->blck) * ty->bytes, rbytes);
        }
    }
    uint64_t len = w->data_len + (uint64_t) rows * rbytes;
    uint64_t pad = (uint64_t) (p->alignment - (int64_t) (len % (uint64_t) p->alignment)) % (uint64_t) p->alignment;
    static const uint8_t zeros[4096];
    for (uint64_t k = pad; rc == 0 && k > 0;) {
        size_t c = k > sizeof(zeros) ? sizeof(zeros) : (size_t) k;
        rc = write_all(w->data_fd, zeros, c);
        k -= c;
    }
    caldera_free(perm);
    if (rc < 0) {
        caldera_free(wt->name);
        return caldera_error(inst, CALDERA_ERR_IO, "%s: writing tensor '%s': %s", w->tmp_path, name, strerror(errno));
    }
    w->data_len = len + pad;
    w->n++;
    if (conv) {
        char key[512];
        snprintf(key, sizeof(key), GGUF_DTYPE_KEY "%s", name);
        if ((rc = buf_str(&w->kv_dtype, key, strlen(key))) < 0 || (rc = buf_u32(&w->kv_dtype, CALDERA_META_STRING)) < 0 ||
            (rc = buf_str(&w->kv_dtype, conv, strlen(conv))) < 0) return rc;
        w->n_kv_dtype++;
    }
    return 0;
}

// Replace the metadata given to create (e.g. with the run's report) before finish. The tensors'
// layout keys (q/k permutation, converted dtypes) stay as they were decided at write time.
static int gguf_update_meta(struct caldera_inst * inst, const struct caldera_meta * meta) {
    struct gguf_priv *   p = caldera_inst_priv(inst);
    struct gguf_writer * w = p->w;
    if (!w) return caldera_error(inst, CALDERA_ERR_INVAL, "update_meta: no file is being written; call create first");
    struct gguf_buf old = w->kv;
    uint64_t        old_n = w->n_kv;
    memset(&w->kv, 0, sizeof(w->kv));
    w->n_kv = 0;
    int rc = kv_from_meta(inst, p, w, meta);
    if (rc < 0) {
        caldera_free_unaligned(w->kv.p);
        w->kv = old;
        w->n_kv = old_n;
        return rc;
    }
    caldera_free_unaligned(old.p);
    return 0;
}

static int gguf_finish(struct caldera_inst * inst, int commit) {
    struct gguf_priv *   p = caldera_inst_priv(inst);
    struct gguf_writer * w = p->w;
    struct gguf_buf      h = { 0 };
    uint8_t *            chunk = NULL;
    int                  rc = 0;
    if (!w) return caldera_error(inst, CALDERA_ERR_INVAL, "finish: no file is being written; call create first");
    p->w = NULL;
    if (!commit) {
        writer_free(w, 1);
        return 0;
    }
    // header: magic, version, counts, key/values, tensor infos, padding
    if ((rc = buf_put(&h, "GGUF", 4)) < 0 || (rc = buf_u32(&h, 3)) < 0 || (rc = buf_u64(&h, (uint64_t) w->n)) < 0 ||
        (rc = buf_u64(&h, w->n_kv + w->n_kv_dtype)) < 0 || (rc = buf_put(&h, w->kv.p, w->kv.len)) < 0 ||
        (rc = buf_put(&h, w->kv_dtype.p, w->kv_dtype.len)) < 0) goto fail;
    for (int64_t i = 0; i < w->n; i++) {
        const struct gguf_wtensor * t = &w->t[i];
        if ((rc = buf_str(&h, t->name, strlen(t->name))) < 0 || (rc = buf_u32(&h, t->ndim)) < 0) goto fail;
        for (uint32_t d = 0; d < t->ndim; d++) {
            if ((rc = buf_u64(&h, t->dims[d])) < 0) goto fail;
        }
        if ((rc = buf_u32(&h, t->type)) < 0 || (rc = buf_u64(&h, t->offset)) < 0) goto fail;
    }
    static const uint8_t zeros[65536];
    size_t pad = (size_t) ((uint64_t) (p->alignment - (int64_t) (h.len % (size_t) p->alignment)) % (uint64_t) p->alignment);
    if ((rc = buf_put(&h, zeros, pad)) < 0) goto fail;
    if (write_all(w->fd, h.p, h.len) < 0) goto io_fail;
    // then the data, copied from the spill file
    const size_t csz = 1 << 22;
    if (!(chunk = caldera_malloc(csz))) { rc = CALDERA_ERR_NOMEM; goto fail; }
    if (lseek(w->data_fd, 0, SEEK_SET) < 0) goto io_fail;
    for (uint64_t left = w->data_len; left > 0;) {
        ssize_t k = read(w->data_fd, chunk, left < csz ? (size_t) left : csz);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) goto io_fail;
        if (write_all(w->fd, chunk, (size_t) k) < 0) goto io_fail;
        left -= (uint64_t) k;
    }
    if (fsync(w->fd) < 0) goto io_fail;
    if (close(w->fd) < 0) { w->fd = -1; goto io_fail; }
    w->fd = -1;
    if (rename(w->tmp_path, w->path) < 0) goto io_fail;
    caldera_inst_log(inst, CALDERA_LOG_DEBUG, "%s: wrote GGUF v3, %" PRId64 " tensors, %" PRIu64 " keys", w->path, w->n,
                     w->n_kv);
    caldera_free(chunk);
    caldera_free_unaligned(h.p);
    writer_free(w, 0);
    return 0;
io_fail:
    rc = caldera_error(inst, CALDERA_ERR_IO, "%s: writing the GGUF file failed: %s", w->path, strerror(errno));
fail:
    caldera_free(chunk);
    caldera_free_unaligned(h.p);
    writer_free(w, 1);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Plugin.

static int gguf_probe_path(const char * path) {
    uint8_t magic[4] = { 0 };
    int     fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        size_t n = strlen(path);
        return (n > 5 && strcmp(path + n - 5, ".gguf") == 0) ? 50 : 0;   // maybe a file to be written
    }
    ssize_t k = read(fd, magic, 4);
    close(fd);
    return (k == 4 && memcmp(magic, "GGUF", 4) == 0) ? 100 : 0;
}

static int gguf_check(struct caldera_inst * inst) {
    struct gguf_priv * p = caldera_inst_priv(inst);
    if (p->alignment < 1 || (p->alignment & (p->alignment - 1)) != 0) {
        return caldera_error(inst, CALDERA_ERR_RANGE, "option 'alignment' = %" PRId64 " is not a power of two; allowed: "
                             "1, 2, 4, ..., 65536", p->alignment);
    }
    return 0;
}

static void gguf_uninit(struct caldera_inst * inst) {
    struct gguf_priv * p = caldera_inst_priv(inst);
    if (p->w) {
        writer_free(p->w, 1);   // an unfinished file is removed
        p->w = NULL;
    }
    gguf_close(inst);
}

#define OFF(x) offsetof(struct gguf_priv, x)
static const struct caldera_option gguf_options[] = {
    { "path", "GGUF file to read, or to write (when the caller passes none)", OFF(path_opt), CALDERA_OPT_PATH,
      { .str = NULL }, 0, 0, NULL, 0, 0 },
    { "alignment", "writer: alignment of tensor data in bytes (a power of two)", OFF(alignment), CALDERA_OPT_INT,
      { .i64 = GGUF_DEFAULT_ALIGNMENT }, 1, 65536, NULL, 0, 0 },
    { "hf_layout", "reader: undo llama.cpp's attn_q/attn_k row permutation (arch llama) so tensors match Hugging Face",
      OFF(hf_layout), CALDERA_OPT_BOOL, { .i64 = 1 }, 0, 1, NULL, 0, 0 },
    { "gguf_names", "writer: store Hugging Face llama names under GGUF names (q/k rows permuted as llama.cpp expects "
      "for arch llama)", OFF(gguf_names), CALDERA_OPT_BOOL, { .i64 = 1 }, 0, 1, NULL, 0, 0 },
    { NULL },
};

static const struct caldera_format_ops gguf_ops = {
    .struct_size  = sizeof(struct caldera_format_ops),
    .probe_path   = gguf_probe_path,
    .open         = gguf_open,
    .n_tensors    = gguf_n_tensors,
    .tensor_info  = gguf_tensor_info,
    .read_tensor  = gguf_read_tensor,
    .meta         = gguf_meta,
    .model_desc   = gguf_model_desc,
    .close        = gguf_close,
    .create       = gguf_create,
    .write_tensor = gguf_write_tensor,
    .finish       = gguf_finish,
    .update_meta  = gguf_update_meta,
};

static const struct caldera_plugin gguf_plugin = {
    .abi_version    = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size    = sizeof(struct caldera_plugin),
    .kind           = CALDERA_PLUGIN_KIND_FORMAT,
    .name           = "gguf",
    .description    = "GGUF v2/v3 reader (ggml quant types dequantized to f32) and GGUF v3 writer",
    .version        = CALDERA_VERSION_INT(0, 1, 0),
    .format_version = 3,
    .priv_size      = sizeof(struct gguf_priv),
    .options        = gguf_options,
    .probe          = NULL,
    .check          = gguf_check,
    .check_shape    = NULL,
    .init           = NULL,
    .uninit         = gguf_uninit,
    .ops            = &gguf_ops,
};

CALDERA_PLUGIN_DEFINE(gguf_plugin)
