// SPDX-License-Identifier: MIT
// Allocation wrappers: every core and plugin allocation passes here, so that tests can make the
// N-th allocation fail (SQLite's malloc test) and so that buffers are 64-byte aligned.
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static atomic_llong alloc_count;
static atomic_llong alloc_fail_at;   // absolute count at which to fail; 0 = never

void caldera_alloc_fail_at(int64_t n) {
    atomic_store(&alloc_fail_at, n > 0 ? (long long) (atomic_load(&alloc_count) + n) : 0);
}

int64_t caldera_alloc_count(void) { return atomic_load(&alloc_count); }

static int alloc_should_fail(void) {
    long long c = atomic_fetch_add(&alloc_count, 1) + 1;
    long long f = atomic_load(&alloc_fail_at);
    return f != 0 && c == f;
}

void * caldera_malloc(size_t size) {
    if (alloc_should_fail()) return NULL;
    if (size == 0) size = 1;
    size_t rounded = (size + 63) & ~(size_t) 63;
    if (rounded < size) return NULL;
    return aligned_alloc(64, rounded);
}

void * caldera_calloc(size_t n, size_t size) {
    if (size != 0 && n > SIZE_MAX / size) return NULL;
    void * p = caldera_malloc(n * size);
    if (p) memset(p, 0, n * size);
    return p;
}

void * caldera_realloc(void * ptr, size_t size) {
    if (alloc_should_fail()) return NULL;
    return realloc(ptr, size ? size : 1);
}

void caldera_free(void * ptr) { free(ptr); }
void caldera_free_unaligned(void * ptr) { free(ptr); }

void caldera_freep(void * pptr) {
    void ** p = pptr;
    if (p) {
        free(*p);
        *p = NULL;
    }
}

char * caldera_strdup(const char * s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char * d = caldera_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}
