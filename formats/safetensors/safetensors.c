// SPDX-License-Identifier: MIT
// safetensors: reader (single file, Hugging Face folder, sharded folder with an index) and
// streaming writer. The header is untrusted input: every field is validated before use, and
// tensor data stays in a read-only mmap (views) or is converted on request.
//
// File layout (https://github.com/huggingface/safetensors, "Format"):
//   u64 LE  N                       header length in bytes
//   N bytes JSON object             { "__metadata__": {str: str}, "<name>": {"dtype": "F32",
//                                     "shape": [d0, ...], "data_offsets": [begin, end]}, ... }
//                                   padded with spaces (ours: so that 8 + N is a multiple of 8)
//   data                            offsets are relative to byte 8 + N; [begin, end) per tensor
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "caldera/caldera-plugin.h"

#define ST_MAX_HEADER   ((uint64_t) 100 << 20) // the limit of the reference implementation
#define ST_COPY_CHUNK   ((size_t) 4 << 20)     // bytes per read/write when assembling the file
#define ST_TYPES_KEY    "caldera.meta_types"   // __metadata__ key: JSON {key: type} of non-strings
#define ST_INDEX_NAME   "model.safetensors.index.json"
#define ST_SINGLE_NAME  "model.safetensors"
#define ST_CONFIG_NAME  "config.json"
#define ST_TOKENIZER_NAME "tokenizer.json"

struct st_file {
    char *    path;
    uint8_t * map;      // whole file, PROT_READ, MAP_PRIVATE (NULL for an empty file)
    size_t    size;
};

struct st_tensor {
    char *             name;
    enum caldera_dtype dtype;
    int32_t            ndim;
    int64_t            ne[CALDERA_MAX_DIMS];
    size_t             nbytes;
    int32_t            file;     // index into st_priv.files
    size_t             off;      // absolute byte offset of the data in the file
};

struct st_wentry {              // one tensor written to the data file
    char *             name;
    enum caldera_dtype dtype;
    int32_t            ndim;
    int64_t            ne[CALDERA_MAX_DIMS];
    uint64_t           off;      // in the temporary data file
    uint64_t           nbytes;
};

struct st_priv {
    char *                    path_opt;   // option "path"
    // reader
    struct st_file *          files;
    int64_t                   n_files;
    struct st_tensor *        tensors;
    int64_t                   n_tensors, cap_tensors;
    json_t *                  by_name;    // name -> index (duplicate detection, index checks)
    struct caldera_meta *     meta;
    struct caldera_model_desc desc;
    int                       has_desc;
    uint8_t *                 last_lo;    // page range of the previous read (see st_drop_pages)
    uint8_t *                 last_hi;
    // writer
    char *                    w_path;     // final name
    char *                    w_tmp;      // "<path>.tmp.<pid>"
    char *                    w_data;     // "<path>.data.tmp.<pid>"
    int                       w_fd;       // data file, -1 when closed
    int                       w_active;
    uint64_t                  w_size;
    json_t *                  w_meta;     // the __metadata__ object
    json_t *                  w_names;    // set of written names
    struct st_wentry *        w_ent;
    int64_t                   w_n, w_cap;
};

#define OFF(x) offsetof(struct st_priv, x)
static const struct caldera_option st_options[] = {
    { "path", "model file or folder (file, HF folder, or sharded folder with an index)",
      OFF(path_opt), CALDERA_OPT_PATH, { .str = NULL }, 0, 0, NULL, 0, 0 },
    { NULL }
};

// ---------------------------------------------------------------------------------------------
// dtypes

static const struct { const char * name; enum caldera_dtype dtype; } st_dtypes[] = {
    { "F64", CALDERA_DTYPE_F64 }, { "F32", CALDERA_DTYPE_F32 }, { "F16", CALDERA_DTYPE_F16 },
    { "BF16", CALDERA_DTYPE_BF16 }, { "F8_E4M3", CALDERA_DTYPE_F8_E4M3 },
    { "F8_E5M2", CALDERA_DTYPE_F8_E5M2 }, { "I8", CALDERA_DTYPE_I8 }, { "U8", CALDERA_DTYPE_U8 },
    { "I16", CALDERA_DTYPE_I16 }, { "U16", CALDERA_DTYPE_U16 }, { "I32", CALDERA_DTYPE_I32 },
    { "U32", CALDERA_DTYPE_U32 }, { "I64", CALDERA_DTYPE_I64 }, { "U64", CALDERA_DTYPE_U64 },
    { "BOOL", CALDERA_DTYPE_BOOL },
};
#define ST_N_DTYPES ((int) (sizeof(st_dtypes) / sizeof(st_dtypes[0])))
#define ST_DTYPE_LIST "F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I8, U8, I16, U16, I32, U32, I64, U64, BOOL"

static int st_dtype_parse(const char * s, enum caldera_dtype * out) {
    for (int i = 0; i < ST_N_DTYPES; i++) {
        if (strcmp(s, st_dtypes[i].name) == 0) {
            *out = st_dtypes[i].dtype;
            return 0;
        }
    }
    return -1;
}

static const char * st_dtype_str(enum caldera_dtype t) {
    for (int i = 0; i < ST_N_DTYPES; i++) {
        if (st_dtypes[i].dtype == t) return st_dtypes[i].name;
    }
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// small helpers

static char * st_join(const char * dir, const char * name) {
    size_t a = strlen(dir), b = strlen(name);
    char * s = caldera_malloc(a + b + 2);
    if (!s) return NULL;
    memcpy(s, dir, a);
    s[a] = '/';
    memcpy(s + a + 1, name, b + 1);
    return s;
}

static char * st_dirname(const char * path) {
    const char * slash = strrchr(path, '/');
    if (!slash) return caldera_strdup(".");
    if (slash == path) return caldera_strdup("/");
    size_t n = (size_t) (slash - path);
    char * s = caldera_malloc(n + 1);
    if (!s) return NULL;
    memcpy(s, path, n);
    s[n] = 0;
    return s;
}

static int st_ends_with(const char * s, const char * suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int st_is_file(const char * path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

// ---------------------------------------------------------------------------------------------
// reader

static void st_close(struct caldera_inst * inst) {
    struct st_priv * p = caldera_inst_priv(inst);
    for (int64_t i = 0; i < p->n_files; i++) {
        if (p->files[i].map) munmap(p->files[i].map, p->files[i].size);
        caldera_free(p->files[i].path);
    }
    caldera_free_unaligned(p->files);
    for (int64_t i = 0; i < p->n_tensors; i++) caldera_free(p->tensors[i].name);
    caldera_free_unaligned(p->tensors);
    json_decref(p->by_name);
    caldera_meta_free(p->meta);
    p->files = NULL;
    p->n_files = 0;
    p->tensors = NULL;
    p->n_tensors = p->cap_tensors = 0;
    p->by_name = NULL;
    p->meta = NULL;
    p->last_lo = p->last_hi = NULL;
    p->has_desc = 0;
    memset(&p->desc, 0, sizeof(p->desc));
}

// mmap one file and append it to p->files (its index in *fi).
static int st_map_file(struct caldera_inst * inst, const char * path, int32_t * fi) {
    struct st_priv * p = caldera_inst_priv(inst);
    int fd = -1, rc = 0;
    struct st_file * nf = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = errno == ENOENT ? CALDERA_ERR_NOT_FOUND : CALDERA_ERR_IO;
        rc = caldera_error(inst, rc, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = caldera_error(inst, CALDERA_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    nf = caldera_realloc(p->files, (size_t) (p->n_files + 1) * sizeof(*nf));
    if (!nf) {
        rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
        goto fail;
    }
    p->files = nf;
    struct st_file * f = &p->files[p->n_files];
    memset(f, 0, sizeof(*f));
    f->size = (size_t) st.st_size;
    if (!(f->path = caldera_strdup(path))) {
        rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (f->size > 0) {
        void * m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            caldera_free(f->path);
            rc = caldera_error(inst, CALDERA_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
            goto fail;
        }
        f->map = m;
    }
    *fi = (int32_t) p->n_files++;
fail:
    if (fd >= 0) close(fd);
    return rc;
}

static int st_push_tensor(struct caldera_inst * inst, const struct st_tensor * t) {
    struct st_priv * p = caldera_inst_priv(inst);
    if (p->n_tensors == p->cap_tensors) {
        int64_t cap = p->cap_tensors ? 2 * p->cap_tensors : 64;
        struct st_tensor * nt = caldera_realloc(p->tensors, (size_t) cap * sizeof(*nt));
        if (!nt) return caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
        p->tensors = nt;
        p->cap_tensors = cap;
    }
    p->tensors[p->n_tensors++] = *t;
    return 0;
}

static int st_json_u64(const json_t * v, uint64_t * out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
    *out = (uint64_t) json_integer_value(v);
    return 0;
}

// Validate one header entry and append it (absolute offset = data_start + begin).
static int st_parse_tensor(struct caldera_inst * inst, int32_t fi, const char * name, json_t * v,
                           uint64_t data_start, uint64_t data_size) {
    struct st_priv * p = caldera_inst_priv(inst);
    const char * fp = p->files[fi].path;
    struct st_tensor t = { 0 };
    if (!json_is_object(v)) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensor '%s': entry is not a JSON object", fp, name);
    }
    json_t * jd = json_object_get(v, "dtype");
    json_t * js = json_object_get(v, "shape");
    json_t * jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd)) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensor '%s': \"dtype\" missing or not a string",
                             fp, name);
    }
    if (st_dtype_parse(json_string_value(jd), &t.dtype) != 0) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED,
                             "%s: tensor '%s': dtype \"%s\" is not supported; supported: " ST_DTYPE_LIST,
                             fp, name, json_string_value(jd));
    }
    if (!json_is_array(js)) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensor '%s': \"shape\" missing or not an array",
                             fp, name);
    }
    size_t nd = json_array_size(js);
    if (nd > CALDERA_MAX_DIMS) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "%s: tensor '%s': shape has %zu dimensions; at most %d supported",
                             fp, name, nd, CALDERA_MAX_DIMS);
    }
    int64_t n = 1;
    for (size_t d = 0; d < nd; d++) {
        uint64_t e;
        if (st_json_u64(json_array_get(js, d), &e) != 0) {
            return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensor '%s': shape[%zu] is not a non-negative integer",
                                 fp, name, d);
        }
        t.ne[d] = e > (uint64_t) INT64_MAX ? -1 : (int64_t) e;
    }
    // the product of the non-zero dimensions must fit, even when another one is 0
    if (caldera_shape_nelements((int32_t) nd, t.ne, &n, NULL) < 0) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensor '%s': the product of the shape overflows 64 bits",
                             fp, name);
    }
    if (nd == 0) {  // a scalar is presented as a 1-element vector (our tensors have 1..4 dims)
        t.ne[0] = 1;
        nd = 1;
    }
    t.ndim = (int32_t) nd;
    size_t esz = caldera_dtype_block_bytes(t.dtype);
    if (__builtin_mul_overflow((uint64_t) n, (uint64_t) esz, &t.nbytes)) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensor '%s': the byte size of the shape overflows",
                             fp, name);
    }
    uint64_t b, e;
    if (!json_is_array(jo) || json_array_size(jo) != 2 || st_json_u64(json_array_get(jo, 0), &b) != 0 ||
        st_json_u64(json_array_get(jo, 1), &e) != 0 || b > e) {
        return caldera_error(inst, CALDERA_ERR_FORMAT,
                             "%s: tensor '%s': \"data_offsets\" missing or invalid; allowed: [begin, end] with 0 <= begin <= end",
                             fp, name);
    }
    if (e > data_size) {
        return caldera_error(inst, CALDERA_ERR_FORMAT,
                             "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] run past the end of the data (%" PRIu64 " bytes)",
                             fp, name, b, e, data_size);
    }
    if (e - b != (uint64_t) t.nbytes) {
        return caldera_error(inst, CALDERA_ERR_FORMAT,
                             "%s: tensor '%s': data_offsets span %" PRIu64 " bytes but %s x %" PRId64 " elements need %zu",
                             fp, name, e - b, json_string_value(jd), n, t.nbytes);
    }
    if (json_object_get(p->by_name, name)) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensor '%s' is defined twice (also in %s)", fp, name,
                             p->files[p->tensors[json_integer_value(json_object_get(p->by_name, name))].file].path);
    }
    t.file = fi;
    t.off  = (size_t) (data_start + b);
    if (!(t.name = caldera_strdup(name))) return caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
    int rc = st_push_tensor(inst, &t);
    if (rc < 0) {
        caldera_free(t.name);
        return rc;
    }
    if (json_object_set_new(p->by_name, name, json_integer(p->n_tensors - 1)) != 0) {
        return caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
    }
    return 0;
}

static int st_cmp_off(const void * a, const void * b) {
    const struct st_tensor * x = a, * y = b;
    if (x->off != y->off) return x->off < y->off ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

// One value of a typed __metadata__ entry (see ST_TYPES_KEY) back into the meta.
static int st_meta_restore(struct caldera_meta * meta, const char * key, const char * type, const char * text);

// Parse the header of file fi: its tensors are appended in data order.
static int st_parse_header(struct caldera_inst * inst, int32_t fi) {
    struct st_priv * p = caldera_inst_priv(inst);
    const struct st_file * f = &p->files[fi];
    json_t * root = NULL, * types = NULL;
    int rc = 0;
    if (f->size < 8) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: file of %zu bytes is too small for a safetensors header (need 8)",
                           f->path, f->size);
        goto fail;
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | f->map[i];
    if (n > f->size - 8) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: header length %" PRIu64 " runs past the end of the file (%zu bytes)",
                           f->path, n, f->size);
        goto fail;
    }
    if (n > ST_MAX_HEADER) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: header length %" PRIu64 " exceeds the limit of %" PRIu64 " bytes",
                           f->path, n, ST_MAX_HEADER);
        goto fail;
    }
    json_error_t jerr;
    root = json_loadb((const char *) f->map + 8, (size_t) n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: header is not valid JSON: %s (line %d, column %d)", f->path,
                           jerr.text, jerr.line, jerr.column);
        goto fail;
    }
    if (!json_is_object(root)) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: header is not a JSON object", f->path);
        goto fail;
    }
    uint64_t data_start = 8 + n, data_size = f->size - data_start;
    int64_t first = p->n_tensors;
    const char * key;
    json_t * v;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(v)) {
                rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: \"__metadata__\" is not a JSON object", f->path);
                goto fail;
            }
            const char * mk;
            json_t * mv;
            json_object_foreach(v, mk, mv) {
                if (!json_is_string(mv)) {
                    rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: \"__metadata__\" value of '%s' is not a string",
                                       f->path, mk);
                    goto fail;
                }
                if (strcmp(mk, ST_TYPES_KEY) == 0) {
                    json_error_t e2;
                    types = json_loads(json_string_value(mv), JSON_REJECT_DUPLICATES, &e2);
                    if (!json_is_object(types)) {
                        caldera_inst_log(inst, CALDERA_LOG_WARN, "%s: ignoring malformed \"%s\"", f->path, ST_TYPES_KEY);
                        json_decref(types);
                        types = NULL;
                    }
                    continue;
                }
                if (caldera_meta_set_string_n(p->meta, mk, json_string_value(mv), json_string_length(mv)) < 0) {
                    rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
                    goto fail;
                }
            }
            continue;
        }
        if ((rc = st_parse_tensor(inst, fi, key, v, data_start, data_size)) < 0) goto fail;
    }
    if (types) {  // values we wrote as JSON text get their types back
        const char * tk;
        json_t * tv;
        json_object_foreach(types, tk, tv) {
            const char * text;
            if (!json_is_string(tv) || caldera_meta_get_string(p->meta, tk, &text) != 0) continue;
            char * copy = caldera_strdup(text);
            if (!copy) {
                rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
                goto fail;
            }
            int r2 = st_meta_restore(p->meta, tk, json_string_value(tv), copy);
            caldera_free(copy);
            if (r2 == CALDERA_ERR_NOMEM) {
                rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
                goto fail;
            }
            if (r2 < 0) {
                caldera_inst_log(inst, CALDERA_LOG_WARN, "%s: metadata '%s' kept as a string (type \"%s\" unreadable)",
                                 f->path, tk, json_string_value(tv));
            }
        }
    }
    // Data order; overlapping ranges are corrupt (zero-size tensors overlap nothing).
    if (p->n_tensors - first > 1) {  // (qsort's base must not be NULL, even for 0 elements)
        qsort(p->tensors + first, (size_t) (p->n_tensors - first), sizeof(*p->tensors), st_cmp_off);
    }
    for (int64_t i = first; i < p->n_tensors; i++) {
        json_object_set_new(p->by_name, p->tensors[i].name, json_integer(i));
    }
    size_t end = 0;
    const char * end_name = NULL;
    for (int64_t i = first; i < p->n_tensors; i++) {
        const struct st_tensor * t = &p->tensors[i];
        if (t->nbytes == 0) continue;
        if (end_name && t->off < end) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap in the data section",
                               f->path, end_name, t->name);
            goto fail;
        }
        end = t->off + t->nbytes;
        end_name = t->name;
    }
fail:
    json_decref(types);
    json_decref(root);
    return rc;
}

// A JSON file beside the model (index, config.json, tokenizer.json): at most ST_MAX_HEADER bytes,
// like a header, since the whole document is parsed into memory (jansson's tree takes several
// times the text).
static int st_load_json(struct caldera_inst * inst, const char * path, json_t ** out) {
    struct stat st;
    json_error_t jerr;
    *out = NULL;
    if (stat(path, &st) != 0) {
        return caldera_error(inst, errno == ENOENT ? CALDERA_ERR_NOT_FOUND : CALDERA_ERR_IO, "%s: %s", path, strerror(errno));
    }
    if ((uint64_t) st.st_size > ST_MAX_HEADER) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: %lld bytes of JSON exceed the limit of %" PRIu64 " bytes", path,
                             (long long) st.st_size, ST_MAX_HEADER);
    }
    if (!(*out = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr))) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: not valid JSON: %s (line %d, column %d)", path, jerr.text,
                             jerr.line, jerr.column);
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// config.json -> model description and GGUF-style metadata

static int64_t st_cfg_int(const json_t * cfg, const char * key, int64_t def) {
    const json_t * v = json_object_get(cfg, key);
    return json_is_integer(v) ? (int64_t) json_integer_value(v) : def;
}

static double st_cfg_num(const json_t * cfg, const char * key, double def) {
    const json_t * v = json_object_get(cfg, key);
    return json_is_number(v) ? json_number_value(v) : def;
}

// HF model_type -> GGUF architecture name, for the llama-like families we read.
static const char * st_gguf_arch(const char * model_type) {
    static const char * const llama_like[][2] = {
        { "llama", "llama" }, { "mistral", "llama" }, { "qwen2", "qwen2" },
    };
    for (size_t i = 0; i < sizeof(llama_like) / sizeof(llama_like[0]); i++) {
        if (strcmp(model_type, llama_like[i][0]) == 0) return llama_like[i][1];
    }
    return NULL;
}

static int st_meta_u32(struct caldera_meta * m, const char * arch, const char * key, int64_t v) {
    char k[128];
    snprintf(k, sizeof(k), "%s.%s", arch, key);
    return v > 0 ? caldera_meta_set_int(m, k, CALDERA_META_U32, v) : 0;
}

static int st_meta_f32(struct caldera_meta * m, const char * arch, const char * key, double v) {
    char k[128];
    snprintf(k, sizeof(k), "%s.%s", arch, key);
    return v > 0 ? caldera_meta_set_float(m, k, CALDERA_META_F32, v) : 0;
}

// Hyper-parameters are untrusted: integers in [0, ST_MAX_HPARAM] (0 = unknown), floats finite and
// >= 0, so nothing derived from them (head_dim = hidden / n_heads) can overflow or trap.
#define ST_MAX_HPARAM INT32_MAX

static int st_check_hparams(struct caldera_inst * inst, const char * where, const struct caldera_model_desc * d,
                            const char * const keys[10]) {
    const int64_t iv[8] = { d->n_layers, d->hidden, d->ffn, d->n_heads, d->n_kv_heads, d->head_dim, d->vocab, d->ctx_len };
    const double  fv[2] = { d->rope_theta, d->norm_eps };
    for (int i = 0; i < 8; i++) {
        if (iv[i] < 0 || iv[i] > ST_MAX_HPARAM) {
            return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: %s = %" PRId64 "; allowed: an integer in [0, %d]", where,
                                 keys[i], iv[i], ST_MAX_HPARAM);
        }
    }
    for (int i = 0; i < 2; i++) {
        if (!(fv[i] >= 0 && fv[i] <= 1e300)) {
            return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: %s = %.17g; allowed: a finite number >= 0", where,
                                 keys[8 + i], fv[i]);
        }
    }
    return 0;
}

static int st_read_config(struct caldera_inst * inst, const char * path) {
    struct st_priv * p = caldera_inst_priv(inst);
    struct caldera_model_desc * d = &p->desc;
    json_t * cfg = NULL;
    int rc = st_load_json(inst, path, &cfg);
    if (rc < 0) return rc;
    if (!json_is_object(cfg)) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: not a JSON object", path);
        goto fail;
    }
    memset(d, 0, sizeof(*d));
    const json_t * mt = json_object_get(cfg, "model_type");
    const json_t * ar = json_array_get(json_object_get(cfg, "architectures"), 0);
    if (json_is_string(mt)) {
        snprintf(d->arch, sizeof(d->arch), "%s", json_string_value(mt));
    } else if (json_is_string(ar)) {  // "LlamaForCausalLM" -> "llama"
        const char * s = json_string_value(ar);
        size_t k = 0;
        for (; s[k] && k + 1 < sizeof(d->arch) && strncmp(s + k, "For", 3) != 0; k++) {
            d->arch[k] = (char) (s[k] >= 'A' && s[k] <= 'Z' ? s[k] - 'A' + 'a' : s[k]);
        }
        d->arch[k] = 0;
    }
    static const char * const keys[10] = { "num_hidden_layers", "hidden_size", "intermediate_size",
                                           "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
                                           "max_position_embeddings", "rope_theta", "rms_norm_eps" };
    d->n_layers   = st_cfg_int(cfg, keys[0], 0);
    d->hidden     = st_cfg_int(cfg, keys[1], 0);
    d->ffn        = st_cfg_int(cfg, keys[2], 0);
    d->n_heads    = st_cfg_int(cfg, keys[3], 0);
    d->n_kv_heads = st_cfg_int(cfg, keys[4], 0);
    d->head_dim   = st_cfg_int(cfg, keys[5], 0);
    d->vocab      = st_cfg_int(cfg, keys[6], 0);
    d->ctx_len    = st_cfg_int(cfg, keys[7], 0);
    d->rope_theta = st_cfg_num(cfg, keys[8], 10000.0);
    d->norm_eps   = st_cfg_num(cfg, keys[9], st_cfg_num(cfg, "layer_norm_eps", 0.0));
    if ((rc = st_check_hparams(inst, path, d, keys)) < 0) goto fail;
    if (!json_object_get(cfg, keys[4])) d->n_kv_heads = d->n_heads;
    if (!json_object_get(cfg, keys[5]) && d->n_heads > 0) d->head_dim = d->hidden / d->n_heads;
    const json_t * rs = json_object_get(cfg, "rope_scaling");
    if (json_is_object(rs)) {
        const json_t * ty = json_object_get(rs, "rope_type");
        if (!json_is_string(ty)) ty = json_object_get(rs, "type");
        if (json_is_string(ty)) snprintf(d->rope_scaling, sizeof(d->rope_scaling), "%s", json_string_value(ty));
        d->rope_scaling_factor = st_cfg_num(rs, "factor", 0.0);
    }
    const json_t * tie = json_object_get(cfg, "tie_word_embeddings");
    if (json_is_boolean(tie)) {
        d->tied_embeddings = json_is_true(tie);
    } else {  // not said: tied when there is no separate output projection
        d->tied_embeddings = json_object_get(p->by_name, "lm_head.weight") == NULL;
    }
    p->has_desc = 1;

    const char * ga = d->arch[0] ? st_gguf_arch(d->arch) : NULL;
    struct caldera_meta * m = p->meta;
    if (ga) {
        int r = 0;
        r |= caldera_meta_set_string(m, "general.architecture", ga);
        r |= st_meta_u32(m, ga, "block_count", d->n_layers);
        r |= st_meta_u32(m, ga, "context_length", d->ctx_len);
        r |= st_meta_u32(m, ga, "embedding_length", d->hidden);
        r |= st_meta_u32(m, ga, "feed_forward_length", d->ffn);
        r |= st_meta_u32(m, ga, "attention.head_count", d->n_heads);
        r |= st_meta_u32(m, ga, "attention.head_count_kv", d->n_kv_heads);
        r |= st_meta_u32(m, ga, "rope.dimension_count", d->head_dim);
        r |= st_meta_u32(m, ga, "vocab_size", d->vocab);
        r |= st_meta_f32(m, ga, "rope.freq_base", d->rope_theta);
        r |= st_meta_f32(m, ga, "attention.layer_norm_rms_epsilon", d->norm_eps);
        if (d->rope_scaling[0]) {
            char k[128];
            snprintf(k, sizeof(k), "%s.rope.scaling.type", ga);
            r |= caldera_meta_set_string(m, k, d->rope_scaling);
            r |= st_meta_f32(m, ga, "rope.scaling.factor", d->rope_scaling_factor);
        }
        int64_t bos = st_cfg_int(cfg, "bos_token_id", -1), eos = st_cfg_int(cfg, "eos_token_id", -1);
        if (bos >= 0) r |= caldera_meta_set_int(m, "tokenizer.ggml.bos_token_id", CALDERA_META_U32, bos);
        if (eos >= 0) r |= caldera_meta_set_int(m, "tokenizer.ggml.eos_token_id", CALDERA_META_U32, eos);
        if (r) {
            rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
            goto fail;
        }
    }
fail:
    json_decref(cfg);
    return rc;
}

// Without config.json: the description from GGUF-style metadata (as our writer stores it).
static int st_desc_from_meta(struct caldera_inst * inst, const char * path) {
    struct st_priv * p = caldera_inst_priv(inst);
    const char * arch;
    if (caldera_meta_get_string(p->meta, "general.architecture", &arch) != 0) return 0;
    static const char * const sfx[10] = { "block_count", "embedding_length", "feed_forward_length",
                                          "attention.head_count", "attention.head_count_kv", "rope.dimension_count",
                                          "vocab_size", "context_length", "rope.freq_base",
                                          "attention.layer_norm_rms_epsilon" };
    struct caldera_model_desc * d = &p->desc;
    int64_t * const iv[8] = { &d->n_layers, &d->hidden, &d->ffn, &d->n_heads, &d->n_kv_heads, &d->head_dim,
                              &d->vocab, &d->ctx_len };
    double * const fv[2] = { &d->rope_theta, &d->norm_eps };
    char keys[10][160];
    const char * kp[10];
    memset(d, 0, sizeof(*d));
    snprintf(d->arch, sizeof(d->arch), "%s", arch);
    for (int i = 0; i < 10; i++) {
        snprintf(keys[i], sizeof(keys[i]), "%.100s.%s", arch, sfx[i]);
        kp[i] = keys[i];
        if (caldera_meta_find(p->meta, keys[i]) < 0) continue;
        int rc = i < 8 ? caldera_meta_get_int(p->meta, keys[i], iv[i]) : caldera_meta_get_float(p->meta, keys[i], fv[i - 8]);
        if (rc < 0) {
            memset(d, 0, sizeof(*d));
            return caldera_error(inst, CALDERA_ERR_FORMAT, "%s: metadata %s is not %s", path, keys[i],
                                 i < 8 ? "an integer in [0, 2^31)" : "a number");
        }
    }
    int rc = st_check_hparams(inst, path, d, kp);
    if (rc < 0) {
        memset(d, 0, sizeof(*d));
        return rc;
    }
    if (!d->n_kv_heads) d->n_kv_heads = d->n_heads;
    if (!d->head_dim && d->n_heads) d->head_dim = d->hidden / d->n_heads;
    d->tied_embeddings = json_object_get(p->by_name, "lm_head.weight") == NULL;
    p->has_desc = 1;
    return 0;
}

// tokenizer.json (Hugging Face `tokenizers`) of a byte-level BPE model (GPT-2 style: no
// byte_fallback) -> tokenizer.ggml.* keys as llama.cpp names them for "gpt2" vocabularies:
// tokens by id, merges as "a b", token_type 3 (control) for special added tokens, 4 (user
// defined) for other added tokens, 1 otherwise. Other tokenizer models are left out (logged).
static int st_read_tokenizer_json(struct caldera_inst * inst, const char * path) {
    struct st_priv * p = caldera_inst_priv(inst);
    json_t * tj = NULL;
    const char ** toks = NULL, ** merges = NULL;
    char ** owned = NULL;
    int32_t * types = NULL;
    int64_t n_tok = 0, n_merges = 0, n_owned = 0;
    int rc = 0;
    if ((rc = st_load_json(inst, path, &tj)) < 0) return rc;
    json_t * model = json_object_get(tj, "model");
    json_t * vocab = json_object_get(model, "vocab"), * jm = json_object_get(model, "merges");
    json_t * added = json_object_get(tj, "added_tokens");
    const char * type = json_string_value(json_object_get(model, "type"));
    if (!type || strcmp(type, "BPE") != 0 || json_is_true(json_object_get(model, "byte_fallback"))) {
        caldera_inst_log(inst, CALDERA_LOG_INFO, "%s: tokenizer model \"%s\"%s is not read (only byte-level BPE)", path,
                         type ? type : "?", json_is_true(json_object_get(model, "byte_fallback")) ? " with byte_fallback" : "");
        goto fail;
    }
    if (!json_is_object(vocab) || !json_is_array(jm) || (added && !json_is_array(added))) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: model.vocab (object), model.merges (array) or added_tokens (array) missing",
                           path);
        goto fail;
    }
    // ids: vocab values and added token ids, dense from 0
    const char * key;
    json_t * v;
    json_object_foreach(vocab, key, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= (1 << 24)) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: vocab id of '%s' is not an integer in [0, 2^24)", path, key);
            goto fail;
        }
        if (json_integer_value(v) >= n_tok) n_tok = json_integer_value(v) + 1;
    }
    size_t ai;
    json_array_foreach(added, ai, v) {
        json_int_t id = json_integer_value(json_object_get(v, "id"));
        if (!json_is_integer(json_object_get(v, "id")) || id < 0 || id >= (1 << 24) || !json_is_string(json_object_get(v, "content"))) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: added_tokens[%zu] needs an integer id in [0, 2^24) and a content string",
                               path, ai);
            goto fail;
        }
        if (id >= n_tok) n_tok = id + 1;
    }
    // Ids are dense 0..n_tok-1 (checked below), so there cannot be more ids than entries: a larger
    // id would make us allocate for tokens the file does not have.
    size_t n_entries = json_object_size(vocab) + json_array_size(added);
    if ((uint64_t) n_tok > n_entries) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: token id %" PRId64 " but only %zu vocab and added entries; ids "
                           "must be 0..%zu without gaps", path, n_tok - 1, n_entries, n_entries ? n_entries - 1 : 0);
        goto fail;
    }
    if (!(toks = caldera_calloc((size_t) n_tok + 1, sizeof(*toks))) || !(types = caldera_calloc((size_t) n_tok + 1, sizeof(*types))) ||
        !(merges = caldera_calloc(json_array_size(jm) + 1, sizeof(*merges))) ||
        !(owned = caldera_calloc(json_array_size(jm) + 1, sizeof(*owned)))) {
        goto nomem;
    }
    json_object_foreach(vocab, key, v) {
        int64_t id = json_integer_value(v);
        if (toks[id]) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: vocab id %" PRId64 " is given to '%s' and '%s'", path, id, toks[id], key);
            goto fail;
        }
        toks[id] = key;
        types[id] = 1;
    }
    json_array_foreach(added, ai, v) {
        int64_t id = json_integer_value(json_object_get(v, "id"));
        toks[id] = json_string_value(json_object_get(v, "content"));
        types[id] = json_is_true(json_object_get(v, "special")) ? 3 : 4;
    }
    for (int64_t i = 0; i < n_tok; i++) {
        if (!toks[i]) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: token id %" PRId64 " is missing (ids must be 0..%" PRId64 ")", path, i,
                               n_tok - 1);
            goto fail;
        }
    }
    json_array_foreach(jm, ai, v) {  // "a b" (older files) or ["a", "b"]
        if (json_is_string(v)) {
            merges[n_merges++] = json_string_value(v);
        } else if (json_is_array(v) && json_array_size(v) == 2 && json_is_string(json_array_get(v, 0)) &&
                   json_is_string(json_array_get(v, 1))) {
            const char * a = json_string_value(json_array_get(v, 0)), * b = json_string_value(json_array_get(v, 1));
            size_t la = strlen(a), lb = strlen(b);
            char * m = caldera_malloc(la + lb + 2);
            if (!m) goto nomem;
            memcpy(m, a, la);
            m[la] = ' ';
            memcpy(m + la + 1, b, lb + 1);
            owned[n_owned++] = m;
            merges[n_merges++] = m;
        } else {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: model.merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", path, ai);
            goto fail;
        }
    }
    if (caldera_meta_set_string(p->meta, "tokenizer.ggml.model", "gpt2") < 0 ||
        caldera_meta_set_array(p->meta, "tokenizer.ggml.tokens", CALDERA_META_STRING, n_tok, toks) < 0 ||
        caldera_meta_set_array(p->meta, "tokenizer.ggml.token_type", CALDERA_META_I32, n_tok, types) < 0 ||
        caldera_meta_set_array(p->meta, "tokenizer.ggml.merges", CALDERA_META_STRING, n_merges, merges) < 0) {
        goto nomem;
    }
    goto fail;
nomem:
    rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
fail:
    for (int64_t i = 0; i < n_owned; i++) caldera_free(owned[i]);
    caldera_free(owned);
    caldera_free(merges);
    caldera_free(types);
    caldera_free(toks);
    json_decref(tj);
    return rc;
}

static int st_cmp_str(const void * a, const void * b) {
    return strcmp(*(const char * const *) a, *(const char * const *) b);
}

// A sharded model: the index names the shard of every tensor.
static int st_open_index(struct caldera_inst * inst, const char * index_path, const char * dir) {
    struct st_priv * p = caldera_inst_priv(inst);
    json_t * idx = NULL;
    const char ** shards = NULL;
    char * sp = NULL;
    int rc = 0;
    size_t n_shards = 0;
    if ((rc = st_load_json(inst, index_path, &idx)) < 0) goto fail;
    json_t * wm = json_object_get(idx, "weight_map");
    if (!json_is_object(wm)) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: \"weight_map\" missing or not an object", index_path);
        goto fail;
    }
    if (!(shards = caldera_malloc((json_object_size(wm) + 1) * sizeof(*shards)))) {
        rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
        goto fail;
    }
    const char * key;
    json_t * v;
    json_object_foreach(wm, key, v) {
        const char * s = json_is_string(v) ? json_string_value(v) : NULL;
        if (!s || !s[0] || strchr(s, '/') || strcmp(s, "..") == 0 || strcmp(s, ".") == 0) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT,
                               "%s: weight_map entry of '%s' is not a file name in the same folder", index_path, key);
            goto fail;
        }
        size_t k = 0;
        while (k < n_shards && strcmp(shards[k], s) != 0) k++;
        if (k == n_shards) shards[n_shards++] = s;
    }
    qsort(shards, n_shards, sizeof(*shards), st_cmp_str);
    for (size_t k = 0; k < n_shards; k++) {
        int32_t fi;
        if (!(sp = st_join(dir, shards[k]))) {
            rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
            goto fail;
        }
        if (!st_is_file(sp)) {
            rc = caldera_error(inst, CALDERA_ERR_NOT_FOUND, "%s: shard '%s' named in the index is missing (%s)",
                               index_path, shards[k], sp);
            goto fail;
        }
        if ((rc = st_map_file(inst, sp, &fi)) < 0) goto fail;
        if ((rc = st_parse_header(inst, fi)) < 0) goto fail;
        caldera_freep(&sp);
    }
    json_object_foreach(wm, key, v) {
        json_t * ti = json_object_get(p->by_name, key);
        const char * in_file = ti ? p->files[p->tensors[json_integer_value(ti)].file].path : NULL;
        const char * base = in_file ? strrchr(in_file, '/') : NULL;
        base = base ? base + 1 : in_file;
        if (!ti || strcmp(base, json_string_value(v)) != 0) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "%s: tensor '%s' is mapped to '%s' but not found there",
                               index_path, key, json_string_value(v));
            goto fail;
        }
    }
fail:
    caldera_free(sp);
    caldera_free(shards);
    json_decref(idx);
    return rc;
}

static int st_open(struct caldera_inst * inst, const char * path) {
    struct st_priv * p = caldera_inst_priv(inst);
    char * dir = NULL, * f = NULL, * cfg = NULL;
    int rc = 0;
    struct stat st;
    st_close(inst);
    if (!path || !path[0]) path = p->path_opt;
    if (!path || !path[0]) return caldera_error(inst, CALDERA_ERR_INVAL, "no path given; set option 'path'");
    if ((rc = caldera_meta_init(&p->meta)) < 0 || !(p->by_name = json_object())) {
        rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (stat(path, &st) != 0) {
        rc = caldera_error(inst, errno == ENOENT ? CALDERA_ERR_NOT_FOUND : CALDERA_ERR_IO, "%s: %s", path,
                           strerror(errno));
        goto fail;
    }
    if (S_ISDIR(st.st_mode)) {
        dir = caldera_strdup(path);
    } else {
        dir = st_dirname(path);
    }
    if (!dir) {
        rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (S_ISDIR(st.st_mode)) {
        if (!(f = st_join(dir, ST_INDEX_NAME))) goto nomem;
        if (st_is_file(f)) {
            if ((rc = st_open_index(inst, f, dir)) < 0) goto fail;
        } else {
            caldera_freep(&f);
            if (!(f = st_join(dir, ST_SINGLE_NAME))) goto nomem;
            if (!st_is_file(f)) {
                rc = caldera_error(inst, CALDERA_ERR_NOT_FOUND, "%s: folder has neither " ST_SINGLE_NAME " nor " ST_INDEX_NAME,
                                   path);
                goto fail;
            }
            int32_t fi;
            if ((rc = st_map_file(inst, f, &fi)) < 0 || (rc = st_parse_header(inst, fi)) < 0) goto fail;
        }
    } else if (st_ends_with(path, ".index.json")) {
        if ((rc = st_open_index(inst, path, dir)) < 0) goto fail;
    } else {
        int32_t fi;
        if ((rc = st_map_file(inst, path, &fi)) < 0 || (rc = st_parse_header(inst, fi)) < 0) goto fail;
    }
    if (!(cfg = st_join(dir, ST_CONFIG_NAME))) goto nomem;
    if (st_is_file(cfg)) {
        if ((rc = st_read_config(inst, cfg)) < 0) goto fail;
    } else {
        if ((rc = st_desc_from_meta(inst, path)) < 0) goto fail;
    }
    caldera_freep(&cfg);
    // An HF tokenizer, unless the file's metadata already carries one (our own exports).
    if (!(cfg = st_join(dir, ST_TOKENIZER_NAME))) goto nomem;
    if (caldera_meta_find(p->meta, "tokenizer.ggml.tokens") < 0 && st_is_file(cfg)) {
        if ((rc = st_read_tokenizer_json(inst, cfg)) < 0) goto fail;
    }
    caldera_inst_log(inst, CALDERA_LOG_DEBUG, "%s: %" PRId64 " tensors in %" PRId64 " file(s)%s", path, p->n_tensors,
                     p->n_files, p->has_desc ? "" : ", no model description");
    goto done;
nomem:
    rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
fail:
    st_close(inst);
done:
    caldera_free(cfg);
    caldera_free(f);
    caldera_free(dir);
    return rc;
}

static int64_t st_n_tensors(struct caldera_inst * inst) {
    const struct st_priv * p = caldera_inst_priv(inst);
    return p->n_tensors;
}

static int st_check_index(struct caldera_inst * inst, int64_t i) {
    const struct st_priv * p = caldera_inst_priv(inst);
    if (i < 0 || i >= p->n_tensors) {
        return caldera_error(inst, CALDERA_ERR_RANGE, "tensor index %" PRId64 " out of range [0, %" PRId64 ")", i,
                             p->n_tensors);
    }
    return 0;
}

static int st_tensor_info(struct caldera_inst * inst, int64_t i, struct caldera_tensor_info * out) {
    const struct st_priv * p = caldera_inst_priv(inst);
    int rc = st_check_index(inst, i);
    if (rc < 0) return rc;
    const struct st_tensor * t = &p->tensors[i];
    memset(out, 0, sizeof(*out));
    out->name    = t->name;
    out->hf_name = t->name;
    out->dtype   = t->dtype;
    out->ndim    = t->ndim;
    memcpy(out->ne, t->ne, sizeof(out->ne));
    out->nbytes  = t->nbytes;
    return 0;
}

// Streaming all tensors must not keep the whole file resident: before each read, the pages of
// the previous one are dropped (MADV_DONTNEED). The map is private and read-only, so its pages
// are never copied on write; a dropped page that is touched again is read back from the file,
// which keeps earlier views valid (only slower if they are used again).
static void st_drop_pages(struct st_priv * p, const uint8_t * lo, const uint8_t * hi) {
    uintptr_t pg = (uintptr_t) sysconf(_SC_PAGESIZE);
    if (p->last_lo && (p->last_hi <= lo || p->last_lo >= hi)) {
        uintptr_t a = ((uintptr_t) p->last_lo + pg - 1) & ~(pg - 1);
        uintptr_t b = (uintptr_t) p->last_hi & ~(pg - 1);
        if (b > a) madvise((void *) a, b - a, MADV_DONTNEED);
    }
    p->last_lo = (uint8_t *) lo;
    p->last_hi = (uint8_t *) hi;
}

static int st_read_tensor(struct caldera_inst * inst, int64_t i, enum caldera_dtype want,
                          struct caldera_tensor * out, int * owned) {
    struct st_priv * p = caldera_inst_priv(inst);
    void * aligned = NULL;
    int rc = st_check_index(inst, i);
    if (rc < 0) return rc;
    const struct st_tensor * t = &p->tensors[i];
    const struct st_file * f = &p->files[t->file];
    size_t esz = caldera_dtype_block_bytes(t->dtype);
    uint8_t * src = f->map ? f->map + t->off : NULL;
    if (src) st_drop_pages(p, src, src + t->nbytes);
    struct caldera_tensor view = { 0 };
    view.data   = src;
    view.dtype  = t->dtype;
    view.device = CALDERA_DEVICE_CPU;
    view.ndim   = t->ndim;
    memcpy(view.ne, t->ne, sizeof(view.ne));
    view.ld     = t->ndim == 2 ? t->ne[1] : 0;
    *owned = 0;
    // A view: same dtype, and aligned for its element type (files of other writers may not be).
    if (want == t->dtype && ((uintptr_t) src % esz) == 0) {
        *out = view;
        return 0;
    }
    if ((uintptr_t) src % esz != 0) {
        if (!(aligned = caldera_malloc(t->nbytes ? t->nbytes : 1))) {
            rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory copying tensor '%s'", t->name);
            goto fail;
        }
        memcpy(aligned, src, t->nbytes);
        view.data = aligned;
    }
    if ((rc = caldera_tensor_alloc(caldera_inst_ctx(inst), want, t->ndim, t->ne, out)) < 0) {
        rc = caldera_error(inst, rc, "tensor '%s': cannot allocate %s copy", t->name, caldera_dtype_name(want));
        goto fail;
    }
    if ((rc = caldera_tensor_copy(caldera_inst_ctx(inst), out, &view)) < 0) {
        caldera_tensor_free(out);
        rc = caldera_error(inst, rc, rc == CALDERA_ERR_NOMEM ? "tensor '%s': out of memory converting %s to %s"
                                                             : "tensor '%s': no conversion from %s to %s",
                           t->name, caldera_dtype_name(t->dtype), caldera_dtype_name(want));
        goto fail;
    }
    *owned = 1;
fail:
    caldera_free(aligned);
    return rc;
}

static const struct caldera_meta * st_meta(struct caldera_inst * inst) {
    const struct st_priv * p = caldera_inst_priv(inst);
    return p->meta;
}

static int st_model_desc(struct caldera_inst * inst, struct caldera_model_desc * out) {
    const struct st_priv * p = caldera_inst_priv(inst);
    if (!p->has_desc) {
        return caldera_error(inst, CALDERA_ERR_NOT_FOUND,
                             "no model description: no " ST_CONFIG_NAME " beside the model and no general.architecture metadata");
    }
    *out = p->desc;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// metadata <-> JSON text

static const struct { const char * name; enum caldera_meta_type type; size_t size; } st_mtypes[] = {
    { "u8", CALDERA_META_U8, 1 },   { "i8", CALDERA_META_I8, 1 },   { "u16", CALDERA_META_U16, 2 },
    { "i16", CALDERA_META_I16, 2 }, { "u32", CALDERA_META_U32, 4 }, { "i32", CALDERA_META_I32, 4 },
    { "f32", CALDERA_META_F32, 4 }, { "bool", CALDERA_META_BOOL, 1 }, { "string", CALDERA_META_STRING, sizeof(char *) },
    { "u64", CALDERA_META_U64, 8 }, { "i64", CALDERA_META_I64, 8 }, { "f64", CALDERA_META_F64, 8 },
};
#define ST_N_MTYPES ((int) (sizeof(st_mtypes) / sizeof(st_mtypes[0])))

static int st_mtype_index(enum caldera_meta_type t) {
    for (int i = 0; i < ST_N_MTYPES; i++) {
        if (st_mtypes[i].type == t) return i;
    }
    return -1;
}

static int st_mtype_parse(const char * s) {
    for (int i = 0; i < ST_N_MTYPES; i++) {
        if (strcmp(s, st_mtypes[i].name) == 0) return i;
    }
    return -1;
}

// One packed element of type t as JSON (NULL for a non-finite float or bad UTF-8).
static json_t * st_elem_json(enum caldera_meta_type t, const void * e) {
    switch (t) {
    case CALDERA_META_U8:   return json_integer(*(const uint8_t *) e);
    case CALDERA_META_I8:   return json_integer(*(const int8_t *) e);
    case CALDERA_META_U16:  return json_integer(*(const uint16_t *) e);
    case CALDERA_META_I16:  return json_integer(*(const int16_t *) e);
    case CALDERA_META_U32:  return json_integer(*(const uint32_t *) e);
    case CALDERA_META_I32:  return json_integer(*(const int32_t *) e);
    case CALDERA_META_U64:  return json_integer((json_int_t) *(const uint64_t *) e);
    case CALDERA_META_I64:  return json_integer(*(const int64_t *) e);
    case CALDERA_META_F32:  return json_real(*(const float *) e);
    case CALDERA_META_F64:  return json_real(*(const double *) e);
    case CALDERA_META_BOOL: return json_boolean(*(const uint8_t *) e);
    case CALDERA_META_STRING: return json_string(*(const char * const *) e);
    default: return NULL;
    }
}

// Parse text (JSON written by st_value_text) as type tname into meta[key].
static int st_meta_restore(struct caldera_meta * meta, const char * key, const char * tname, const char * text) {
    int array = strncmp(tname, "array:", 6) == 0;
    int ti = st_mtype_parse(array ? tname + 6 : tname);
    json_error_t jerr;
    json_t * v = NULL;
    void * buf = NULL;
    int rc = 0;
    if (ti < 0 || (!array && st_mtypes[ti].type == CALDERA_META_STRING)) return CALDERA_ERR_FORMAT;
    enum caldera_meta_type t = st_mtypes[ti].type;
    if (!(v = json_loads(text, JSON_DECODE_ANY, &jerr))) return CALDERA_ERR_FORMAT;
    if (!array) {
        if (t == CALDERA_META_F32 || t == CALDERA_META_F64) {
            rc = json_is_number(v) ? caldera_meta_set_float(meta, key, t, json_number_value(v)) : CALDERA_ERR_FORMAT;
        } else if (t == CALDERA_META_BOOL) {
            rc = json_is_boolean(v) ? caldera_meta_set_int(meta, key, t, json_is_true(v)) : CALDERA_ERR_FORMAT;
        } else if (t == CALDERA_META_U64) {
            rc = json_is_integer(v) ? caldera_meta_set_uint64(meta, key, (uint64_t) json_integer_value(v)) : CALDERA_ERR_FORMAT;
        } else {
            rc = json_is_integer(v) ? caldera_meta_set_int(meta, key, t, json_integer_value(v)) : CALDERA_ERR_FORMAT;
        }
        goto fail;
    }
    if (!json_is_array(v)) {
        rc = CALDERA_ERR_FORMAT;
        goto fail;
    }
    size_t n = json_array_size(v), es = st_mtypes[ti].size;
    if (!(buf = caldera_malloc(n * es + 1))) {
        rc = CALDERA_ERR_NOMEM;
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        json_t * e = json_array_get(v, i);
        void * d = (char *) buf + i * es;
        if (t == CALDERA_META_STRING) {
            if (!json_is_string(e)) { rc = CALDERA_ERR_FORMAT; goto fail; }
            *(const char **) d = json_string_value(e);
        } else if (t == CALDERA_META_F32 || t == CALDERA_META_F64) {
            if (!json_is_number(e)) { rc = CALDERA_ERR_FORMAT; goto fail; }
            if (t == CALDERA_META_F32) *(float *) d = (float) json_number_value(e);
            else                       *(double *) d = json_number_value(e);
        } else if (t == CALDERA_META_BOOL) {
            if (!json_is_boolean(e)) { rc = CALDERA_ERR_FORMAT; goto fail; }
            *(uint8_t *) d = (uint8_t) json_is_true(e);
        } else {
            if (!json_is_integer(e)) { rc = CALDERA_ERR_FORMAT; goto fail; }
            json_int_t x = json_integer_value(e);
            switch (t) {
            case CALDERA_META_U8:  *(uint8_t *) d = (uint8_t) x; break;
            case CALDERA_META_I8:  *(int8_t *) d = (int8_t) x; break;
            case CALDERA_META_U16: *(uint16_t *) d = (uint16_t) x; break;
            case CALDERA_META_I16: *(int16_t *) d = (int16_t) x; break;
            case CALDERA_META_U32: *(uint32_t *) d = (uint32_t) x; break;
            case CALDERA_META_I32: *(int32_t *) d = (int32_t) x; break;
            case CALDERA_META_U64: *(uint64_t *) d = (uint64_t) x; break;
            default:               *(int64_t *) d = (int64_t) x; break;
            }
        }
    }
    rc = caldera_meta_set_array(meta, key, t, (int64_t) n, buf);
fail:
    caldera_free(buf);
    json_decref(v);
    return rc;
}

// meta[i] as JSON text (non-strings) and its type name for ST_TYPES_KEY. *text is malloc'ed
// by jansson (free with free()).
static int st_value_text(struct caldera_inst * inst, const struct caldera_meta * meta, int64_t i, char ** text,
                         char * tname, size_t tlen) {
    const char * key = caldera_meta_key(meta, i);
    enum caldera_meta_type t = caldera_meta_type_of(meta, i);
    json_t * v = NULL;
    int prec = 17, rc = 0;
    *text = NULL;
    if (t == CALDERA_META_ARRAY) {
        enum caldera_meta_type et;
        int64_t n;
        const void * data;
        if ((rc = caldera_meta_get_array(meta, key, &et, &n, &data)) < 0) {
            return caldera_error(inst, rc, "metadata '%s': cannot read the array", key);
        }
        int ei = st_mtype_index(et);
        if (ei < 0) return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "metadata '%s': arrays of arrays are not supported", key);
        if (!(v = json_array())) goto nomem;
        for (int64_t k = 0; k < n; k++) {
            json_t * e = st_elem_json(et, (const char *) data + (size_t) k * st_mtypes[ei].size);
            if (!e) {
                rc = caldera_error(inst, CALDERA_ERR_INVAL,
                                   "metadata '%s'[%" PRId64 "]: not representable in JSON (non-finite number or invalid UTF-8)",
                                   key, k);
                goto fail;
            }
            if (json_array_append_new(v, e) != 0) goto nomem;
        }
        if (et == CALDERA_META_F32) prec = 9;
        snprintf(tname, tlen, "array:%s", st_mtypes[ei].name);
    } else {
        int ti = st_mtype_index(t);
        if (ti < 0) return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "metadata '%s': unknown type %d", key, (int) t);
        if (t == CALDERA_META_F32 || t == CALDERA_META_F64) {
            double x = 0;
            caldera_meta_get_float(meta, key, &x);
            v = json_real(x);
            if (t == CALDERA_META_F32) prec = 9;
        } else {
            int64_t x = 0;
            caldera_meta_get_int(meta, key, &x);
            v = t == CALDERA_META_BOOL ? json_boolean(x) : json_integer(x);
        }
        if (!v) {
            return caldera_error(inst, CALDERA_ERR_INVAL, "metadata '%s': not representable in JSON (non-finite number)", key);
        }
        snprintf(tname, tlen, "%s", st_mtypes[ti].name);
    }
    if (!(*text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(prec)))) goto nomem;
    goto fail;
nomem:
    rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
fail:
    json_decref(v);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// writer

static int st_write_all(int fd, const void * buf, size_t n) {
    const uint8_t * b = buf;
    while (n > 0) {
        ssize_t k = write(fd, b, n > ((size_t) 1 << 30) ? ((size_t) 1 << 30) : n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        b += k;
        n -= (size_t) k;
    }
    return 0;
}

static int st_pwrite_all(int fd, const void * buf, size_t n, uint64_t off) {
    const uint8_t * b = buf;
    while (n > 0) {
        ssize_t k = pwrite(fd, b, n > ((size_t) 1 << 30) ? ((size_t) 1 << 30) : n, (off_t) off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        b += k;
        n -= (size_t) k;
        off += (uint64_t) k;
    }
    return 0;
}

static void st_writer_reset(struct st_priv * p) {
    if (p->w_fd >= 0 && p->w_active) close(p->w_fd);
    if (p->w_data) unlink(p->w_data);
    if (p->w_tmp) unlink(p->w_tmp);
    caldera_freep(&p->w_path);
    caldera_freep(&p->w_tmp);
    caldera_freep(&p->w_data);
    for (int64_t i = 0; i < p->w_n; i++) caldera_free(p->w_ent[i].name);
    caldera_free_unaligned(p->w_ent);
    p->w_ent = NULL;
    p->w_n = p->w_cap = 0;
    json_decref(p->w_meta);
    json_decref(p->w_names);
    p->w_meta = p->w_names = NULL;
    p->w_fd = -1;
    p->w_active = 0;
    p->w_size = 0;
}

static char * st_suffixed(const char * path, const char * what) {
    char tail[64];
    snprintf(tail, sizeof(tail), ".%s.%ld", what, (long) getpid());
    size_t a = strlen(path), b = strlen(tail);
    char * s = caldera_malloc(a + b + 1);
    if (!s) return NULL;
    memcpy(s, path, a);
    memcpy(s + a, tail, b + 1);
    return s;
}

// __metadata__ object from a caldera_meta: strings as they are, other values as JSON text with
// their types recorded under ST_TYPES_KEY so that our reader restores them.
static int st_meta_json(struct caldera_inst * inst, const struct caldera_meta * meta, json_t ** out) {
    json_t * obj = json_object(), * types = json_object();
    char * text = NULL;
    int rc = 0;
    if (!obj || !types) goto nomem;
    for (int64_t i = 0; meta && i < caldera_meta_count(meta); i++) {
        const char * key = caldera_meta_key(meta, i);
        json_t * sv;
        if (strcmp(key, ST_TYPES_KEY) == 0) continue;
        if (caldera_meta_type_of(meta, i) == CALDERA_META_STRING) {
            const char * s = NULL;
            caldera_meta_get_string(meta, key, &s);
            if (!(sv = json_string(s))) {
                rc = caldera_error(inst, CALDERA_ERR_INVAL, "metadata '%s' is not valid UTF-8 text", key);
                goto fail;
            }
        } else {
            char tname[32];
            if ((rc = st_value_text(inst, meta, i, &text, tname, sizeof(tname))) < 0) goto fail;
            sv = json_string(text);
            free(text);
            text = NULL;
            if (!sv || json_object_set_new(types, key, json_string(tname)) != 0) goto nomem;
        }
        if (json_object_set_new(obj, key, sv) != 0) goto nomem;
    }
    if (json_object_size(types) > 0) {
        if (!(text = json_dumps(types, JSON_COMPACT))) goto nomem;
        if (json_object_set_new(obj, ST_TYPES_KEY, json_string(text)) != 0) goto nomem;
    }
    *out = obj;
    obj = NULL;
    goto done;
nomem:
    rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
fail:
done:
    free(text);
    json_decref(types);
    json_decref(obj);
    return rc;
}

static int st_create(struct caldera_inst * inst, const char * path, const struct caldera_meta * meta) {
    struct st_priv * p = caldera_inst_priv(inst);
    int rc = 0;
    if (p->w_active) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "create: %s is still being written; call finish first", p->w_path);
    }
    p->w_fd = -1;
    if (!path || !path[0]) path = p->path_opt;
    if (!path || !path[0]) return caldera_error(inst, CALDERA_ERR_INVAL, "create: no path given; set option 'path'");
    if (!(p->w_path = caldera_strdup(path)) || !(p->w_tmp = st_suffixed(path, "tmp")) ||
        !(p->w_data = st_suffixed(path, "data.tmp")) || !(p->w_names = json_object())) {
        rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((rc = st_meta_json(inst, meta, &p->w_meta)) < 0) goto fail;
    p->w_fd = open(p->w_data, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (p->w_fd < 0) {
        rc = caldera_error(inst, CALDERA_ERR_IO, "create: %s: %s", p->w_data, strerror(errno));
        goto fail;
    }
    p->w_active = 1;
    return 0;
fail:
    st_writer_reset(p);
    return rc;
}

// Replace the metadata given to create (e.g. with the run's report) before finish.
static int st_update_meta(struct caldera_inst * inst, const struct caldera_meta * meta) {
    struct st_priv * p = caldera_inst_priv(inst);
    if (!p->w_active) return caldera_error(inst, CALDERA_ERR_INVAL, "update_meta: no file is being written; call create first");
    json_t * obj = NULL;
    int rc = st_meta_json(inst, meta, &obj);
    if (rc < 0) return rc;
    json_decref(p->w_meta);
    p->w_meta = obj;
    return 0;
}

static int st_write_tensor(struct caldera_inst * inst, const char * name, const struct caldera_tensor * t) {
    struct st_priv * p = caldera_inst_priv(inst);
    if (!p->w_active) return caldera_error(inst, CALDERA_ERR_INVAL, "write_tensor: no file is being written; call create first");
    if (!name || !name[0] || strcmp(name, "__metadata__") == 0) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "write_tensor: invalid tensor name '%s'", name ? name : "(null)");
    }
    if (json_object_get(p->w_names, name)) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "write_tensor: tensor '%s' was already written to %s", name, p->w_path);
    }
    if (!st_dtype_str(t->dtype)) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED,
                             "write_tensor: tensor '%s': dtype %s cannot be stored in safetensors; allowed: " ST_DTYPE_LIST,
                             name, caldera_dtype_name(t->dtype));
    }
    if (t->device != CALDERA_DEVICE_CPU) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "write_tensor: tensor '%s' is not in CPU memory", name);
    }
    if (t->ndim < 1 || t->ndim > CALDERA_MAX_DIMS) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "write_tensor: tensor '%s': rank %d; allowed 1..%d", name,
                             (int) t->ndim, CALDERA_MAX_DIMS);
    }
    int64_t n;
    if (caldera_shape_nelements(t->ndim, t->ne, &n, NULL) < 0) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "write_tensor: tensor '%s': invalid shape", name);
    }
    size_t esz = caldera_dtype_block_bytes(t->dtype);
    struct st_wentry e = { 0 };
    e.dtype  = t->dtype;
    e.ndim   = t->ndim;
    memcpy(e.ne, t->ne, sizeof(e.ne));
    e.off    = p->w_size;
    e.nbytes = (uint64_t) n * esz;
    // Everything that can fail without I/O first; the data goes at w_size with pwrite, so a
    // failed call leaves no stray bytes in front of the next tensor.
    if (p->w_n == p->w_cap) {
        int64_t cap = p->w_cap ? 2 * p->w_cap : 64;
        struct st_wentry * ne = caldera_realloc(p->w_ent, (size_t) cap * sizeof(*ne));
        if (!ne) return caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
        p->w_ent = ne;
        p->w_cap = cap;
    }
    if (!(e.name = caldera_strdup(name))) return caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
    json_t * probe = json_string(name);
    if (!probe) {
        caldera_free(e.name);
        return caldera_error(inst, CALDERA_ERR_INVAL, "write_tensor: tensor name '%s' is not valid UTF-8", name);
    }
    json_decref(probe);
    int64_t cols = t->ne[t->ndim - 1];
    if (t->ndim == 2 && t->ld > cols && cols > 0) {  // strided rows
        for (int64_t r = 0; r < t->ne[0]; r++) {
            if (st_pwrite_all(p->w_fd, (const char *) t->data + (size_t) (r * t->ld) * esz, (size_t) cols * esz,
                              e.off + (uint64_t) r * (uint64_t) cols * esz) != 0) {
                goto io;
            }
        }
    } else if (e.nbytes > 0 && st_pwrite_all(p->w_fd, t->data, (size_t) e.nbytes, e.off) != 0) {
        goto io;
    }
    if (json_object_set_new(p->w_names, name, json_true()) != 0) {
        caldera_free(e.name);
        return caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
    }
    p->w_ent[p->w_n++] = e;
    p->w_size += e.nbytes;
    return 0;
io:
    caldera_free(e.name);
    return caldera_error(inst, CALDERA_ERR_IO, "write_tensor: %s: %s", p->w_data, strerror(errno));
}

static int st_finish(struct caldera_inst * inst, int commit) {
    struct st_priv * p = caldera_inst_priv(inst);
    json_t * hdr = NULL;
    char * text = NULL;
    int64_t * order = NULL;
    uint8_t * buf = NULL;
    int fd = -1, rc = 0;
    if (!p->w_active) return caldera_error(inst, CALDERA_ERR_INVAL, "finish: no file is being written");
    if (!commit) goto fail;  // removes both temporaries
    // Largest elements first (stable): every tensor then starts at a multiple of its element
    // size, so readers can map it in place; offsets stay contiguous as the format asks.
    if (!(order = caldera_malloc((size_t) (p->w_n + 1) * sizeof(*order))) || !(hdr = json_object())) goto nomem;
    int64_t k = 0;
    for (size_t esz = 8; esz >= 1; esz /= 2) {
        for (int64_t i = 0; i < p->w_n; i++) {
            if (caldera_dtype_block_bytes(p->w_ent[i].dtype) == esz) order[k++] = i;
        }
    }
    if (json_object_size(p->w_meta) > 0 && json_object_set(hdr, "__metadata__", p->w_meta) != 0) goto nomem;
    uint64_t off = 0;
    for (int64_t j = 0; j < k; j++) {
        const struct st_wentry * e = &p->w_ent[order[j]];
        json_t * shape = json_array(), * offs = json_array(), * o = json_object();
        int bad = !shape || !offs || !o;
        for (int d = 0; !bad && d < e->ndim; d++) bad |= json_array_append_new(shape, json_integer(e->ne[d]));
        bad = bad || json_array_append_new(offs, json_integer((json_int_t) off)) ||
              json_array_append_new(offs, json_integer((json_int_t) (off + e->nbytes)));
        bad = bad || json_object_set_new(o, "dtype", json_string(st_dtype_str(e->dtype)));
        bad = bad || json_object_set_new(o, "shape", shape) || json_object_set_new(o, "data_offsets", offs);
        if (bad) {
            json_decref(o);
            goto nomem;
        }
        if (json_object_set_new(hdr, e->name, o) != 0) goto nomem;
        off += e->nbytes;
    }
    if (!(text = json_dumps(hdr, JSON_COMPACT))) goto nomem;
    size_t hl = strlen(text), padded = (hl + 7) & ~(size_t) 7;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t) ((uint64_t) padded >> (8 * i));
    if (!(buf = caldera_malloc(ST_COPY_CHUNK))) goto nomem;
    fd = open(p->w_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) goto io;
    if (st_write_all(fd, len8, 8) != 0 || st_write_all(fd, text, hl) != 0 ||
        st_write_all(fd, "        ", padded - hl) != 0) {
        goto io;
    }
    for (int64_t j = 0; j < k; j++) {
        const struct st_wentry * e = &p->w_ent[order[j]];
        for (uint64_t done = 0; done < e->nbytes;) {
            size_t want = e->nbytes - done < ST_COPY_CHUNK ? (size_t) (e->nbytes - done) : ST_COPY_CHUNK;
            ssize_t got = pread(p->w_fd, buf, want, (off_t) (e->off + done));
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0 || st_write_all(fd, buf, (size_t) got) != 0) goto io;
            done += (uint64_t) got;
        }
    }
    if (fsync(fd) != 0) goto io;
    if (close(fd) != 0) {
        fd = -1;
        goto io;
    }
    fd = -1;
    if (rename(p->w_tmp, p->w_path) != 0) goto io;
    caldera_inst_log(inst, CALDERA_LOG_DEBUG, "wrote %s: %" PRId64 " tensors, %" PRIu64 " data bytes", p->w_path,
                     p->w_n, p->w_size);
    goto fail;  // the common cleanup removes the data file (the tmp name is gone)
io:
    rc = caldera_error(inst, CALDERA_ERR_IO, "finish: %s: %s", p->w_tmp, strerror(errno));
    goto fail;
nomem:
    rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory");
fail:
    if (fd >= 0) close(fd);
    caldera_free(buf);
    free(text);
    caldera_free(order);
    json_decref(hdr);
    st_writer_reset(p);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// plugin

static int st_probe_path(const char * path) {
    struct stat st;
    if (!path || stat(path, &st) != 0) return 0;
    if (S_ISDIR(st.st_mode)) {
        char * a = st_join(path, ST_INDEX_NAME), * b = st_join(path, ST_SINGLE_NAME);
        int score = (a && st_is_file(a)) || (b && st_is_file(b)) ? 90 : 0;
        caldera_free(a);
        caldera_free(b);
        return score;
    }
    if (st_ends_with(path, ".safetensors") || st_ends_with(path, ".safetensors.index.json")) return 90;
    // No extension: a plausible header length followed by '{'.
    FILE * f = fopen(path, "rb");
    uint8_t h[9];
    int score = 0;
    if (f && fread(h, 1, 9, f) == 9) {
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--) n = n << 8 | h[i];
        if (h[8] == '{' && n >= 2 && n <= (uint64_t) st.st_size - 8 && n <= ST_MAX_HEADER) score = 60;
    }
    if (f) fclose(f);
    return score;
}

static int st_init(struct caldera_inst * inst) {
    struct st_priv * p = caldera_inst_priv(inst);
    p->w_fd = -1;
    return 0;
}

static void st_uninit(struct caldera_inst * inst) {
    struct st_priv * p = caldera_inst_priv(inst);
    if (p->w_active || p->w_path) st_writer_reset(p);
    st_close(inst);
}

static const struct caldera_format_ops safetensors_ops = {
    .struct_size  = sizeof(struct caldera_format_ops),
    .probe_path   = st_probe_path,
    .open         = st_open,
    .n_tensors    = st_n_tensors,
    .tensor_info  = st_tensor_info,
    .read_tensor  = st_read_tensor,
    .meta         = st_meta,
    .model_desc   = st_model_desc,
    .close        = st_close,
    .create       = st_create,
    .write_tensor = st_write_tensor,
    .finish       = st_finish,
    .update_meta  = st_update_meta,
};

static const struct caldera_plugin safetensors_plugin = {
    .abi_version    = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size    = sizeof(struct caldera_plugin),
    .kind           = CALDERA_PLUGIN_KIND_FORMAT,
    .name           = "safetensors",
    .description    = "safetensors files and Hugging Face folders (sharded too): read and write",
    .version        = CALDERA_VERSION_INT(0, 1, 0),
    .format_version = 1,
    .priv_size      = sizeof(struct st_priv),
    .options        = st_options,
    .probe          = NULL,
    .check          = NULL,
    .check_shape    = NULL,
    .init           = st_init,
    .uninit         = st_uninit,
    .ops            = &safetensors_ops,
};

CALDERA_PLUGIN_DEFINE(safetensors_plugin)
