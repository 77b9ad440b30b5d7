// SPDX-License-Identifier: MIT
// Calibration Hessian accumulation: H = Σ x xᵀ over the tokens seen, one f32 syrk per block of
// CALIB_BLOCK_TOKENS tokens (BLAS-3) added into an f64 sum (error bound in calibrate.h); and the
// content hash that keys the Hessian cache.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "calibrate.h"

int calib_acc_init(struct caldera_ctx * ctx, int64_t n, struct calib_acc * acc) {
    memset(acc, 0, sizeof(*acc));
    if (n <= 0) return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "calibration: an input group of %lld columns", (long long) n);
    acc->n = n;
    if (!(acc->h = caldera_calloc((size_t) (n * (n + 1) / 2), sizeof(double)))) return CALDERA_ERR_NOMEM;
    return 0;
}

void calib_acc_free(struct calib_acc * acc) {
    if (!acc) return;
    caldera_free(acc->h);
    memset(acc, 0, sizeof(*acc));
}

// hr += sr over the lower triangle, rows [i0, i1) (packed f64 rows hr, row-major f32 sr)
struct acc_rows_args { double * h; const float * s; int64_t n; };
static void acc_rows(void * arg, int64_t i0, int64_t i1) {
    const struct acc_rows_args * a = arg;
    for (int64_t i = i0; i < i1; i++) {
        double *      hr = a->h + i * (i + 1) / 2;
        const float * sr = a->s + i * a->n;
        for (int64_t j = 0; j <= i; j++) hr[j] += sr[j];
    }
}

// The rows of a triangle of n rows split into the pieces [cut[k], cut[k+1]) of equal area.
#define ACC_PIECES 8
struct acc_tri_args { struct acc_rows_args r; int64_t cut[ACC_PIECES + 1]; };
static void acc_pieces(void * arg, int64_t k0, int64_t k1) {
    const struct acc_tri_args * a = arg;
    for (int64_t k = k0; k < k1; k++) acc_rows((void *) &a->r, a->cut[k], a->cut[k + 1]);
}

int calib_acc_add(struct caldera_ctx * ctx, struct calib_acc * acc, const struct caldera_tensor * x, float * scratch) {
    int64_t n = acc->n;
    if (x->ndim != 2 || x->dtype != CALDERA_DTYPE_F32 || x->ne[1] != n) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "calibration: input block is %lld x %lld; allowed: tokens x %lld f32",
                                 (long long) x->ne[0], (long long) x->ne[1], (long long) n);
    }
    struct caldera_tensor s = caldera_tensor_view_f32(scratch, n, n);   // (n, n) f32: one block's xᵀx
    for (int64_t t0 = 0; t0 < x->ne[0]; t0 += CALIB_BLOCK_TOKENS) {
        int64_t b = x->ne[0] - t0 < CALIB_BLOCK_TOKENS ? x->ne[0] - t0 : CALIB_BLOCK_TOKENS;
        struct caldera_tensor xb = *x;   // rows [t0, t0 + b): (b × n), ld kept
        xb.data = (float *) x->data + t0 * x->ld;
        xb.ne[0] = b;
        // s = xbᵀ xb, its lower triangle: 2·b·n(n+1)/2 flops
        int rc = caldera_linalg_syrk_lower(ctx, CALDERA_TRANS, 1.0f, &xb, 0.0f, &s);
        if (rc < 0) return rc;
        // h += s on the threads, in pieces of equal area (each element's sum keeps its order)
        struct acc_tri_args ta = { .r = { acc->h, scratch, n } };
        for (int k = 0; k <= ACC_PIECES; k++) ta.cut[k] = (int64_t) ((double) n * sqrt((double) k / ACC_PIECES) + 0.5);
        caldera_parallel_for(ctx, ACC_PIECES, 1, acc_pieces, &ta);
        acc->tokens += b;
    }
    return 0;
}

int calib_acc_mean(const struct calib_acc * acc, float * out) {
    if (acc->tokens <= 0) return CALDERA_ERR_NUMERIC;
    int64_t n = acc->n;
    double inv = 1.0 / (double) acc->tokens;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j <= i; j++) {
            float v = (float) (acc->h[i * (i + 1) / 2 + j] * inv);
            out[i * n + j] = v;
            out[j * n + i] = v;
        }
    }
    return 0;
}

// ---- content hash ---------------------------------------------------------------------------

#define HK1 0x9E3779B97F4A7C15ull
#define HK2 0xC2B2AE3D27D4EB4Full

static uint64_t rotl64(uint64_t v, int r) { return (v << r) | (v >> (64 - r)); }
static uint64_t mix_word(uint64_t h, uint64_t w) { return rotl64(h ^ (w * HK2), 31) * HK1; }

void calib_hash_init(struct calib_hash * s) {
    s->h = 0x243F6A8885A308D3ull;
    s->len = 0;
}

void calib_hash_bytes(struct calib_hash * s, const void * data, size_t n) {
    const unsigned char * p = data;
    uint64_t h = s->h;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);   // little-endian machines; the key only has to be stable on one machine
        h = mix_word(h, w);
    }
    uint64_t tail = 0;
    for (size_t k = 0; i + k < n; k++) tail |= (uint64_t) p[i + k] << (8 * k);
    if (i < n) h = mix_word(h, tail ^ ((uint64_t) (n - i) << 56));
    s->h = h;
    s->len += n;
}

void calib_hash_str(struct calib_hash * s, const char * str) {
    size_t n = str ? strlen(str) : 0;
    calib_hash_i64(s, (int64_t) n);
    if (n) calib_hash_bytes(s, str, n);
}

void calib_hash_i64(struct calib_hash * s, int64_t v) {
    s->h = mix_word(s->h, (uint64_t) v);
    s->len += 8;
}

uint64_t calib_hash_final(const struct calib_hash * s) {
    uint64_t h = s->h ^ s->len;   // murmur3's fmix64
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

int calib_hash_file(struct caldera_ctx * ctx, struct calib_hash * s, const char * path) {
    FILE * f = fopen(path, "rb");
    if (!f) return caldera_ctx_error(ctx, CALDERA_ERR_IO, "calibration: cannot read %s: %s", path, strerror(errno));
    enum { CHUNK = 1 << 20 };
    unsigned char * buf = caldera_malloc(CHUNK);
    if (!buf) {
        fclose(f);
        return CALDERA_ERR_NOMEM;
    }
    size_t got;
    int64_t total = 0;
    while ((got = fread(buf, 1, CHUNK, f)) > 0) {
        calib_hash_bytes(s, buf, got);   // chunks are multiples of 8 bytes but the last
        total += (int64_t) got;
    }
    int bad = ferror(f);
    fclose(f);
    caldera_free(buf);
    if (bad) return caldera_ctx_error(ctx, CALDERA_ERR_IO, "calibration: error reading %s", path);
    calib_hash_i64(s, total);
    return 0;
}
