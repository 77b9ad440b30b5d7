// SPDX-License-Identifier: MIT
// Typed key/value metadata with GGUF's value model (scalars, strings, arrays of one type).
#include <string.h>

#include "internal.h"

struct meta_entry {
    char *                 key;
    enum caldera_meta_type type;
    enum caldera_meta_type elem;   // ARRAY only
    int64_t                n;      // ARRAY length
    size_t                 len;    // STRING byte length (may hold NUL bytes)
    size_t *               lens;   // STRING ARRAY byte lengths
    union {
        int64_t  i;
        uint64_t u;
        double   f;
        char *   s;
        void *   arr;   // packed elements, or char ** for STRING arrays
    } v;
};

struct caldera_meta {
    struct meta_entry * e;
    int64_t             n, cap;
    int64_t *           hidx;   // open-addressing hash of keys: entry index + 1, 0 = empty
    int64_t             hcap;   // power of two, > 2 n
};

static uint64_t key_hash(const char * k) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *k; k++) h = (h ^ (unsigned char) *k) * 0x100000001b3ull;
    return h;
}

// (Re)build the index when it would be more than half full; false on allocation failure.
static int meta_index(struct caldera_meta * m, int64_t need) {
    if (m->hidx && 2 * need < m->hcap) return 1;
    int64_t cap = 64;
    while (cap <= 2 * need) cap *= 2;
    int64_t * h = caldera_calloc((size_t) cap, sizeof(int64_t));
    if (!h) return 0;
    for (int64_t i = 0; i < m->n; i++) {
        uint64_t j = key_hash(m->e[i].key) & (uint64_t) (cap - 1);
        while (h[j]) j = (j + 1) & (uint64_t) (cap - 1);
        h[j] = i + 1;
    }
    caldera_free(m->hidx);
    m->hidx = h;
    m->hcap = cap;
    return 1;
}

static size_t meta_elem_size(enum caldera_meta_type t) {
    switch (t) {
    case CALDERA_META_U8: case CALDERA_META_I8: case CALDERA_META_BOOL: return 1;
    case CALDERA_META_U16: case CALDERA_META_I16: return 2;
    case CALDERA_META_U32: case CALDERA_META_I32: case CALDERA_META_F32: return 4;
    case CALDERA_META_U64: case CALDERA_META_I64: case CALDERA_META_F64: return 8;
    default: return 0;
    }
}

static int is_int_type(enum caldera_meta_type t) {
    return t == CALDERA_META_U8 || t == CALDERA_META_I8 || t == CALDERA_META_U16 || t == CALDERA_META_I16 ||
           t == CALDERA_META_U32 || t == CALDERA_META_I32 || t == CALDERA_META_U64 || t == CALDERA_META_I64 ||
           t == CALDERA_META_BOOL;
}

int caldera_meta_init(struct caldera_meta ** out) {
    *out = caldera_calloc(1, sizeof(**out));
    return *out ? 0 : CALDERA_ERR_NOMEM;
}

static void entry_clear(struct meta_entry * e) {
    if (e->type == CALDERA_META_STRING) {
        caldera_free(e->v.s);
    } else if (e->type == CALDERA_META_ARRAY) {
        if (e->elem == CALDERA_META_STRING && e->v.arr && e->n > 0) {
            caldera_free(((char **) e->v.arr)[0]);   // the block of all the strings
        }
        caldera_free(e->v.arr);
    }
    caldera_free(e->lens);
    e->lens = NULL;
    e->len = 0;
    e->v.arr = NULL;
}

void caldera_meta_free(struct caldera_meta * meta) {
    if (!meta) return;
    for (int64_t i = 0; i < meta->n; i++) {
        entry_clear(&meta->e[i]);
        caldera_free(meta->e[i].key);
    }
    caldera_free_unaligned(meta->e);
    caldera_free(meta->hidx);
    caldera_free(meta);
}

int caldera_meta_find(const struct caldera_meta * meta, const char * key) {
    if (!meta || !key || !meta->hidx) return -1;
    uint64_t j = key_hash(key) & (uint64_t) (meta->hcap - 1);
    for (; meta->hidx[j]; j = (j + 1) & (uint64_t) (meta->hcap - 1)) {
        int64_t i = meta->hidx[j] - 1;
        if (strcmp(meta->e[i].key, key) == 0) return (int) i;
    }
    return -1;
}

// The slot for key: an existing entry (cleared) or a new one.
static struct meta_entry * meta_slot(struct caldera_meta * meta, const char * key) {
    int i = caldera_meta_find(meta, key);
    if (i >= 0) {
        entry_clear(&meta->e[i]);
        return &meta->e[i];
    }
    if (!meta_index(meta, meta->n + 1)) return NULL;
    if (meta->n == meta->cap) {
        int64_t cap = meta->cap ? meta->cap * 2 : 16;
        struct meta_entry * e = caldera_realloc(meta->e, (size_t) cap * sizeof(*e));
        if (!e) return NULL;
        meta->e = e;
        meta->cap = cap;
    }
    char * k = caldera_strdup(key);
    if (!k) return NULL;
    struct meta_entry * e = &meta->e[meta->n];
    memset(e, 0, sizeof(*e));
    e->key = k;
    uint64_t j = key_hash(key) & (uint64_t) (meta->hcap - 1);
    while (meta->hidx[j]) j = (j + 1) & (uint64_t) (meta->hcap - 1);
    meta->hidx[j] = ++meta->n;
    return e;
}

int caldera_meta_set_int(struct caldera_meta * meta, const char * key, enum caldera_meta_type type, int64_t v) {
    if (!is_int_type(type)) return CALDERA_ERR_INVAL;
    struct meta_entry * e = meta_slot(meta, key);
    if (!e) return CALDERA_ERR_NOMEM;
    e->type = type;
    e->v.i = v;
    return 0;
}

int caldera_meta_set_uint64(struct caldera_meta * meta, const char * key, uint64_t v) {
    struct meta_entry * e = meta_slot(meta, key);
    if (!e) return CALDERA_ERR_NOMEM;
    e->type = CALDERA_META_U64;
    e->v.u = v;
    return 0;
}

int caldera_meta_set_float(struct caldera_meta * meta, const char * key, enum caldera_meta_type type, double v) {
    if (type != CALDERA_META_F32 && type != CALDERA_META_F64) return CALDERA_ERR_INVAL;
    struct meta_entry * e = meta_slot(meta, key);
    if (!e) return CALDERA_ERR_NOMEM;
    e->type = type;
    e->v.f = v;
    return 0;
}

int caldera_meta_set_string_n(struct caldera_meta * meta, const char * key, const char * v, size_t len) {
    char * s = caldera_malloc(len + 1);
    if (!s) return CALDERA_ERR_NOMEM;
    memcpy(s, v, len);
    s[len] = 0;
    struct meta_entry * e = meta_slot(meta, key);
    if (!e) {
        caldera_free(s);
        return CALDERA_ERR_NOMEM;
    }
    e->type = CALDERA_META_STRING;
    e->v.s = s;
    e->len = len;
    return 0;
}

int caldera_meta_set_string(struct caldera_meta * meta, const char * key, const char * v) {
    return caldera_meta_set_string_n(meta, key, v, strlen(v));
}

int caldera_meta_set_string_array_n(struct caldera_meta * meta, const char * key, int64_t n,
                                    const char * const * strs, const size_t * lens) {
    if (n < 0) return CALDERA_ERR_INVAL;
    // One block for all the strings (arr[0] owns it): a file's array of many tiny strings costs its
    // bytes plus 17 per string, not an allocation each (64-byte aligned, ~10x an empty string's 8
    // bytes in a GGUF file).
    char ** arr = caldera_calloc((size_t) (n ? n : 1), sizeof(char *));
    size_t * ls = caldera_calloc((size_t) (n ? n : 1), sizeof(size_t));
    char * blob = NULL;
    size_t total = 0;
    if (!arr || !ls) goto nomem;
    for (int64_t i = 0; i < n; i++) {
        ls[i] = lens ? lens[i] : strlen(strs[i]);
        if (ls[i] > SIZE_MAX - total - 1) goto nomem;
        total += ls[i] + 1;
    }
    if (n > 0 && !(blob = caldera_malloc(total))) goto nomem;
    for (int64_t i = 0, off = 0; i < n; i++) {
        arr[i] = blob + off;
        memcpy(arr[i], strs[i], ls[i]);
        arr[i][ls[i]] = 0;
        off += (int64_t) ls[i] + 1;
    }
    struct meta_entry * e = meta_slot(meta, key);
    if (!e) goto nomem;
    e->type = CALDERA_META_ARRAY;
    e->elem = CALDERA_META_STRING;
    e->n = n;
    e->v.arr = arr;
    e->lens = ls;
    return 0;
nomem:
    caldera_free(blob);
    caldera_free(arr);
    caldera_free(ls);
    return CALDERA_ERR_NOMEM;
}

int caldera_meta_set_array(struct caldera_meta * meta, const char * key, enum caldera_meta_type elem_type,
                           int64_t n, const void * data) {
    if (n < 0) return CALDERA_ERR_INVAL;
    if (elem_type == CALDERA_META_STRING) {
        return caldera_meta_set_string_array_n(meta, key, n, data, NULL);
    }
    size_t es = meta_elem_size(elem_type);
    if (!es) return CALDERA_ERR_INVAL;   // nested arrays are not supported
    if ((uint64_t) n > SIZE_MAX / es) return CALDERA_ERR_RANGE;
    void * arr = caldera_malloc((size_t) n * es + 1);
    if (!arr) return CALDERA_ERR_NOMEM;
    if (n) memcpy(arr, data, (size_t) n * es);
    struct meta_entry * e = meta_slot(meta, key);
    if (!e) {
        caldera_free(arr);
        return CALDERA_ERR_NOMEM;
    }
    e->type = CALDERA_META_ARRAY;
    e->elem = elem_type;
    e->n = n;
    e->v.arr = arr;
    return 0;
}

int caldera_meta_copy(struct caldera_meta * dst, const struct caldera_meta * src) {
    for (int64_t i = 0; src && i < src->n; i++) {
        const struct meta_entry * e = &src->e[i];
        int rc;
        switch (e->type) {
        case CALDERA_META_STRING: rc = caldera_meta_set_string_n(dst, e->key, e->v.s, e->len); break;
        case CALDERA_META_ARRAY:
            rc = e->elem == CALDERA_META_STRING
                     ? caldera_meta_set_string_array_n(dst, e->key, e->n, (const char * const *) e->v.arr, e->lens)
                     : caldera_meta_set_array(dst, e->key, e->elem, e->n, e->v.arr);
            break;
        case CALDERA_META_F32: case CALDERA_META_F64: rc = caldera_meta_set_float(dst, e->key, e->type, e->v.f); break;
        case CALDERA_META_U64:    rc = caldera_meta_set_uint64(dst, e->key, e->v.u); break;
        default:                  rc = caldera_meta_set_int(dst, e->key, e->type, e->v.i); break;
        }
        if (rc < 0) return rc;
    }
    return 0;
}

int64_t caldera_meta_count(const struct caldera_meta * meta) { return meta ? meta->n : 0; }

const char * caldera_meta_key(const struct caldera_meta * meta, int64_t i) {
    return (meta && i >= 0 && i < meta->n) ? meta->e[i].key : NULL;
}

enum caldera_meta_type caldera_meta_type_of(const struct caldera_meta * meta, int64_t i) {
    return (meta && i >= 0 && i < meta->n) ? meta->e[i].type : CALDERA_META_COUNT;
}

int caldera_meta_get_int(const struct caldera_meta * meta, const char * key, int64_t * out) {
    int i = caldera_meta_find(meta, key);
    if (i < 0) return CALDERA_ERR_NOT_FOUND;
    const struct meta_entry * e = &meta->e[i];
    if (e->type == CALDERA_META_U64) { *out = (int64_t) e->v.u; return e->v.u > INT64_MAX ? CALDERA_ERR_RANGE : 0; }
    if (is_int_type(e->type)) { *out = e->v.i; return 0; }
    if (e->type == CALDERA_META_F32 || e->type == CALDERA_META_F64) {
        // range first: converting a NaN or out-of-range double to int64_t is undefined (C17 6.3.1.4)
        if (!(e->v.f >= -0x1p63 && e->v.f < 0x1p63)) return CALDERA_ERR_RANGE;
        if (e->v.f != (double) (int64_t) e->v.f) return CALDERA_ERR_INVAL;
        *out = (int64_t) e->v.f;
        return 0;
    }
    return CALDERA_ERR_INVAL;
}

int caldera_meta_get_float(const struct caldera_meta * meta, const char * key, double * out) {
    int i = caldera_meta_find(meta, key);
    if (i < 0) return CALDERA_ERR_NOT_FOUND;
    const struct meta_entry * e = &meta->e[i];
    if (e->type == CALDERA_META_F32 || e->type == CALDERA_META_F64) { *out = e->v.f; return 0; }
    if (e->type == CALDERA_META_U64) { *out = (double) e->v.u; return 0; }
    if (is_int_type(e->type)) { *out = (double) e->v.i; return 0; }
    return CALDERA_ERR_INVAL;
}

int caldera_meta_get_string(const struct caldera_meta * meta, const char * key, const char ** out) {
    int i = caldera_meta_find(meta, key);
    if (i < 0) return CALDERA_ERR_NOT_FOUND;
    if (meta->e[i].type != CALDERA_META_STRING) return CALDERA_ERR_INVAL;
    *out = meta->e[i].v.s;
    return 0;
}

int caldera_meta_get_array(const struct caldera_meta * meta, const char * key, enum caldera_meta_type * elem_type,
                           int64_t * n, const void ** data) {
    int i = caldera_meta_find(meta, key);
    if (i < 0) return CALDERA_ERR_NOT_FOUND;
    if (meta->e[i].type != CALDERA_META_ARRAY) return CALDERA_ERR_INVAL;
    if (elem_type) *elem_type = meta->e[i].elem;
    if (n) *n = meta->e[i].n;
    if (data) *data = meta->e[i].v.arr;
    return 0;
}

int caldera_meta_get_string_n(const struct caldera_meta * meta, const char * key, const char ** out, size_t * len) {
    int i = caldera_meta_find(meta, key);
    if (i < 0) return CALDERA_ERR_NOT_FOUND;
    if (meta->e[i].type != CALDERA_META_STRING) return CALDERA_ERR_INVAL;
    *out = meta->e[i].v.s;
    if (len) *len = meta->e[i].len;
    return 0;
}

int caldera_meta_get_string_array_n(const struct caldera_meta * meta, const char * key, int64_t * n,
                                    const char * const ** strs, const size_t ** lens) {
    int i = caldera_meta_find(meta, key);
    if (i < 0) return CALDERA_ERR_NOT_FOUND;
    const struct meta_entry * e = &meta->e[i];
    if (e->type != CALDERA_META_ARRAY || e->elem != CALDERA_META_STRING) return CALDERA_ERR_INVAL;
    if (n) *n = e->n;
    if (strs) *strs = (const char * const *) e->v.arr;
    if (lens) *lens = e->lens;
    return 0;
}

int caldera_meta_get_uint64(const struct caldera_meta * meta, const char * key, uint64_t * out) {
    int i = caldera_meta_find(meta, key);
    if (i < 0) return CALDERA_ERR_NOT_FOUND;
    const struct meta_entry * e = &meta->e[i];
    if (e->type == CALDERA_META_U64) { *out = e->v.u; return 0; }
    if (is_int_type(e->type)) {
        if (e->v.i < 0) return CALDERA_ERR_RANGE;
        *out = (uint64_t) e->v.i;
        return 0;
    }
    return CALDERA_ERR_INVAL;
}
