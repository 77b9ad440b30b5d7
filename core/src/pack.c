// SPDX-License-Identifier: MIT
// Packs: the named tensors (codes, scales, factors, seeds) of one compressed weight.
#include <string.h>

#include "internal.h"

#define PACK_MAX_PREFIX 8

struct pack_item {
    char *                name;
    struct caldera_tensor t;      // owning, unless view
    int                   view;   // 1: t's data belongs to someone else (caldera_pack_add_view)
};

struct caldera_pack {
    struct pack_item *    items;
    int64_t               n, cap;
    char *                prefix[PACK_MAX_PREFIX];
    int                   depth;
    struct caldera_meta * meta;
};

int caldera_pack_init(struct caldera_pack ** out) {
    struct caldera_pack * p = caldera_calloc(1, sizeof(*p));
    if (!p) return CALDERA_ERR_NOMEM;
    if (caldera_meta_init(&p->meta) < 0) {
        caldera_free(p);
        return CALDERA_ERR_NOMEM;
    }
    *out = p;
    return 0;
}

void caldera_pack_free(struct caldera_pack * pack) {
    if (!pack) return;
    for (int64_t i = 0; i < pack->n; i++) {
        caldera_free(pack->items[i].name);
        if (!pack->items[i].view) caldera_tensor_free(&pack->items[i].t);
    }
    for (int i = 0; i < pack->depth; i++) caldera_free(pack->prefix[i]);
    caldera_free_unaligned(pack->items);
    caldera_meta_free(pack->meta);
    caldera_free(pack);
}

// "<all prefixes><suffix>"
static char * full_name(const struct caldera_pack * pack, const char * suffix) {
    size_t len = strlen(suffix) + 1;
    for (int i = 0; i < pack->depth; i++) len += strlen(pack->prefix[i]);
    char * s = caldera_malloc(len);
    if (!s) return NULL;
    s[0] = 0;
    for (int i = 0; i < pack->depth; i++) strcat(s, pack->prefix[i]);
    strcat(s, suffix);
    return s;
}

static int64_t find_full(const struct caldera_pack * pack, const char * name) {
    for (int64_t i = 0; i < pack->n; i++) {
        if (strcmp(pack->items[i].name, name) == 0) return i;
    }
    return -1;
}

// A new slot named "<prefix><suffix>" at pack->items[pack->n] (not yet counted).
static int pack_slot(struct caldera_pack * pack, const char * suffix, struct pack_item ** out) {
    char * name = full_name(pack, suffix);
    if (!name) return CALDERA_ERR_NOMEM;
    if (find_full(pack, name) >= 0) {
        caldera_free(name);
        return CALDERA_ERR_INVAL;
    }
    if (pack->n == pack->cap) {
        int64_t cap = pack->cap ? pack->cap * 2 : 8;
        struct pack_item * it = caldera_realloc(pack->items, (size_t) cap * sizeof(*it));
        if (!it) {
            caldera_free(name);
            return CALDERA_ERR_NOMEM;
        }
        pack->items = it;
        pack->cap = cap;
    }
    struct pack_item * it = &pack->items[pack->n];
    memset(it, 0, sizeof(*it));
    it->name = name;
    *out = it;
    return 0;
}

int caldera_pack_add(struct caldera_pack * pack, const char * suffix, enum caldera_dtype dtype, int32_t ndim,
                     const int64_t * ne, void ** data) {
    struct pack_item * it;
    int rc = pack_slot(pack, suffix, &it);
    if (rc < 0) return rc;
    if ((rc = caldera_tensor_alloc(NULL, dtype, ndim, ne, &it->t)) < 0) {
        caldera_free(it->name);
        return rc;
    }
    pack->n++;
    if (data) *data = it->t.data;
    return 0;
}

int caldera_pack_add_view(struct caldera_pack * pack, const char * suffix, const struct caldera_tensor * t) {
    if (!t || !t->data || t->ndim < 1 || t->ndim > CALDERA_MAX_DIMS) return CALDERA_ERR_INVAL;
    struct pack_item * it;
    int rc = pack_slot(pack, suffix, &it);
    if (rc < 0) return rc;
    it->t    = *t;
    it->view = 1;
    pack->n++;
    return 0;
}

int caldera_pack_add_tensor(struct caldera_pack * pack, const char * suffix, enum caldera_dtype dtype,
                            const struct caldera_tensor * t) {
    void * data;
    int rc = caldera_pack_add(pack, suffix, dtype, t->ndim, t->ne, &data);
    if (rc < 0) return rc;
    struct caldera_tensor * dst = &pack->items[pack->n - 1].t;
    rc = caldera_tensor_copy(NULL, dst, t);
    if (rc < 0) {
        pack->n--;
        caldera_free(pack->items[pack->n].name);
        caldera_tensor_free(&pack->items[pack->n].t);
    }
    return rc;
}

int caldera_pack_push_prefix(struct caldera_pack * pack, const char * prefix) {
    if (pack->depth == PACK_MAX_PREFIX) return CALDERA_ERR_RANGE;
    char * p = caldera_strdup(prefix);
    if (!p) return CALDERA_ERR_NOMEM;
    pack->prefix[pack->depth++] = p;
    return 0;
}

void caldera_pack_pop_prefix(struct caldera_pack * pack) {
    if (pack->depth > 0) caldera_free(pack->prefix[--pack->depth]);
}

int caldera_pack_find(const struct caldera_pack * pack, const char * suffix, struct caldera_tensor * out) {
    char * name = full_name(pack, suffix);
    if (!name) return CALDERA_ERR_NOMEM;
    int64_t i = find_full(pack, name);
    caldera_free(name);
    if (i < 0) return CALDERA_ERR_NOT_FOUND;
    *out = pack->items[i].t;
    return 0;
}

int64_t caldera_pack_count(const struct caldera_pack * pack) { return pack ? pack->n : 0; }

const char * caldera_pack_name(const struct caldera_pack * pack, int64_t i) {
    return (pack && i >= 0 && i < pack->n) ? pack->items[i].name : NULL;
}

int caldera_pack_get(const struct caldera_pack * pack, int64_t i, struct caldera_tensor * out) {
    if (!pack || i < 0 || i >= pack->n) return CALDERA_ERR_NOT_FOUND;
    *out = pack->items[i].t;
    return 0;
}

struct caldera_meta * caldera_pack_meta(struct caldera_pack * pack) { return pack->meta; }

uint64_t caldera_pack_bits(const struct caldera_pack * pack) {
    uint64_t bits = 0;
    for (int64_t i = 0; pack && i < pack->n; i++) {
        size_t bytes = 0;
        caldera_dtype_nbytes(pack->items[i].t.dtype, caldera_tensor_nelements(&pack->items[i].t), &bytes);
        bits += (uint64_t) bytes * 8;
    }
    return bits;
}
