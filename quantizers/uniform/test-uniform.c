// SPDX-License-Identifier: MIT
// Tests of the "uniform" quantizer plugin: the Δ²/12 law on uniform data for every bit width,
// hand-computed codes and bit packing, scale groups of every granularity (odd shapes, short last
// groups), zero and constant groups, NaN, the clip search, the codebook level, and errors.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

// Relative deviation allowed between the measured MSE on U(-1,1) data and Δ²/12 (65536
// samples: the estimate's relative standard deviation is about 0.0035).
#define UNI_MSE_REL_TOL    0.02
// In-range rounding error is at most Δ/2 (relative slack for f32 arithmetic).
#define UNI_HALF_STEP_SLACK 1e-5
// Constant rows reconstruct to the constant within this relative error (symmetric: c / Δ · Δ).
#define UNI_CONST_REL_TOL  1e-6
// Sums of squared errors recomputed here may differ from the plugin's by rounding.
#define UNI_SUM_REL_TOL    1e-12

struct uq {
    struct caldera_inst * q;
    struct caldera_pack * pack;
    struct caldera_tensor wh;
};

// Create, configure ("key", "value", ..., NULL) and start a uniform instance.
static struct caldera_inst * mk(struct caldera_ctx * ctx, const char * const * kv) {
    struct caldera_inst * q = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, "uniform", "u", &q), 0);
    for (int k = 0; kv && kv[k]; k += 2) {
        ck_assert_msg(caldera_inst_set(q, kv[k], kv[k + 1]) == 0, "%s=%s: %s", kv[k], kv[k + 1],
                      caldera_ctx_errmsg(caldera_inst_ctx(q)));
    }
    ck_assert_msg(caldera_inst_start(q) == 0, "%s", caldera_ctx_errmsg(caldera_inst_ctx(q)));
    return q;
}

static struct uq quant(struct caldera_ctx * ctx, const char * const * kv, const struct caldera_tensor * w,
                       const struct caldera_tensor * h) {
    struct uq r;
    r.q = mk(ctx, kv);
    ck_assert_int_eq(caldera_pack_init(&r.pack), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, w->ne[0], w->ne[1], &r.wh), 0);
    int rc = caldera_quantizer_quantize(r.q, w, h, &r.wh, r.pack);
    ck_assert_msg(rc == 0, "quantize: %s", caldera_ctx_errmsg(ctx));
    return r;
}

static void uq_free(struct uq * r) {
    caldera_tensor_free(&r->wh);
    caldera_pack_free(r->pack);
    caldera_inst_free(r->q);
}

static float at(const struct caldera_tensor * t, int64_t i, int64_t j) {
    return ((const float *) t->data)[i * t->ld + j];
}

// dequantize(pack) equals quantize's Ŵ bit for bit, and the pack's bits equal bits().
static void check_roundtrip(struct caldera_ctx * ctx, const struct uq * r) {
    const int64_t m = r->wh.ne[0], n = r->wh.ne[1];
    struct caldera_tensor wd;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &wd), 0);
    ck_assert_int_eq(caldera_quantizer_dequantize(r->q, r->pack, &wd), 0);
    ck_assert(memcmp(wd.data, r->wh.data, (size_t) (m * n) * sizeof(float)) == 0);
    const struct caldera_quantizer_ops * ops = caldera_inst_plugin(r->q)->ops;
    ck_assert(ops->bits(r->q, m, n) == (double) caldera_pack_bits(r->pack));
    caldera_tensor_free(&wd);
}

static double sse(const struct caldera_tensor * a, const struct caldera_tensor * b) {
    double s = 0.0;
    for (int64_t i = 0; i < a->ne[0]; i++) {
        for (int64_t j = 0; j < a->ne[1]; j++) {
            double d = (double) at(a, i, j) - at(b, i, j);
            s += d * d;
        }
    }
    return s;
}

static struct caldera_tensor randu(struct caldera_ctx * ctx, int64_t m, int64_t n, uint64_t seed) {
    struct caldera_tensor t;
    struct caldera_rng rng;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &t), 0);
    caldera_rng_seed(&rng, seed);
    for (int64_t k = 0; k < m * n; k++) ((float *) t.data)[k] = (float) (2.0 * caldera_rng_uniform(&rng) - 1.0);
    return t;
}

static struct caldera_tensor from(struct caldera_ctx * ctx, int64_t m, int64_t n, const float * v) {
    struct caldera_tensor t;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &t), 0);
    memcpy(t.data, v, (size_t) (m * n) * sizeof(float));
    return t;
}

static float tensor_f(const struct caldera_pack * pack, const char * suffix, int64_t k) {
    struct caldera_tensor t;
    ck_assert_int_eq(caldera_pack_find(pack, suffix, &t), 0);
    if (t.dtype == CALDERA_DTYPE_F16) return caldera_f16_to_f32(((const uint16_t *) t.data)[k]);
    if (t.dtype == CALDERA_DTYPE_U8) return (float) ((const uint8_t *) t.data)[k];   // integer zero points
    ck_assert_int_eq(t.dtype, CALDERA_DTYPE_F32);
    return ((const float *) t.data)[k];
}

// ---------------------------------------------------------------------------------------------

START_TEST(test_mse_uniform_law) {
    // U(-1,1) data, one scale: every cell of the quantizer is fully used, so MSE = Δ²/12.
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor w = randu(ctx, 256, 256, 1);
    static const char * variants[][6] = {
        { "symmetric", "1", "levels", "full", NULL },
        { "symmetric", "1", "levels", "reference", NULL },
        { "symmetric", "0", NULL },
    };
    for (int b = 1; b <= 8; b++) {
        for (int v = 0; v < 3; v++) {
            if (v == 1 && b == 1) continue;  // reference levels need 2 bits
            char bs[2] = { (char) ('0' + b), 0 };
            const char * kv[16] = { "bits", bs, "granularity", "tensor", "scale_dtype", "f32" };
            int k = 6;
            for (int j = 0; variants[v][j]; j++) kv[k++] = variants[v][j];
            kv[k] = NULL;
            struct uq r = quant(ctx, kv, &w, NULL);
            double d = tensor_f(r.pack, "scale", 0);
            double m = sse(&w, &r.wh) / (256.0 * 256.0);
            double want = d * d / 12.0;
            ck_assert_msg(fabs(m / want - 1.0) < UNI_MSE_REL_TOL, "bits %d variant %d: mse %g, d^2/12 %g",
                          b, v, m, want);
            check_roundtrip(ctx, &r);
            uq_free(&r);
        }
    }
    caldera_tensor_free(&w);
    caldera_ctx_free(ctx);
}
END_TEST

static void check_codes(const struct uq * r, const uint8_t * bytes, int64_t nbytes) {
    struct caldera_tensor c;
    ck_assert_int_eq(caldera_pack_find(r->pack, "codes", &c), 0);
    ck_assert_int_eq(c.dtype, CALDERA_DTYPE_U8);
    ck_assert_int_eq(caldera_tensor_nelements(&c), nbytes);
    for (int64_t k = 0; k < nbytes; k++) {
        ck_assert_msg(((uint8_t *) c.data)[k] == bytes[k], "byte %d: 0x%02x, want 0x%02x", (int) k,
                      ((uint8_t *) c.data)[k], bytes[k]);
    }
}

START_TEST(test_exact_codes) {
    struct caldera_ctx * ctx = tu_ctx();
    static const float row[8] = { -1.0f, -0.6f, -0.2f, 0.0f, 0.1f, 0.3f, 0.7f, 1.0f };
    struct caldera_tensor w = from(ctx, 1, 8, row);
    // 2 bits, symmetric, full levels: d = 1 / 1.5, levels -1, -1/3, 1/3, 1, code floor(x/d + 2)
    {
        const char * kv[] = { "bits", "2", "granularity", "tensor", "scale_dtype", "f32", NULL };
        struct uq r = quant(ctx, kv, &w, NULL);
        static const uint8_t bytes[] = { 0x94, 0xfa };  // codes 0 1 1 2 2 2 3 3, LSB first
        check_codes(&r, bytes, 2);
        const float d = 1.0f / 1.5f;
        ck_assert(tensor_f(r.pack, "scale", 0) == d);
        static const float k[8] = { 0, 1, 1, 2, 2, 2, 3, 3 };
        for (int j = 0; j < 8; j++) ck_assert(at(&r.wh, 0, j) == (k[j] - 1.5f) * d);
        check_roundtrip(ctx, &r);
        uq_free(&r);
    }
    // 3 bits, reference levels: d = 1/3, code round(x/d) + 3
    {
        const char * kv[] = { "bits", "3", "granularity", "row", "levels", "reference", "scale_dtype", "f32", NULL };
        struct uq r = quant(ctx, kv, &w, NULL);
        static const uint8_t bytes[] = { 0x88, 0x36, 0xd6 };  // codes 0 1 2 3 3 4 5 6
        check_codes(&r, bytes, 3);
        check_roundtrip(ctx, &r);
        uq_free(&r);
    }
    // 2 bits asymmetric: range [min(0, lo), max(0, hi)] = [0, 7.5], d = 2.5, integer zero 0, code round(x / 2.5)
    {
        static const float a[8] = { 0, 1, 2, 3, 4, 5, 6, 7.5f };
        struct caldera_tensor wa = from(ctx, 1, 8, a);
        const char * kv[] = { "bits", "2", "granularity", "group", "group_size", "8", "symmetric", "0", NULL };
        struct uq r = quant(ctx, kv, &wa, NULL);
        static const uint8_t bytes[] = { 0x50, 0xea };  // codes 0 0 1 1 2 2 2 3
        check_codes(&r, bytes, 2);
        ck_assert(tensor_f(r.pack, "zero", 0) == 0.0f && tensor_f(r.pack, "scale", 0) == 2.5f);
        check_roundtrip(ctx, &r);
        uq_free(&r);
        caldera_tensor_free(&wa);
    }
    // ties round half to even (torch.round) in the reference levels: d = 1 exactly
    {
        static const float t[6] = { 3.0f, 0.5f, 1.5f, 2.5f, -0.5f, -2.5f };
        struct caldera_tensor wt = from(ctx, 1, 6, t);
        const char * kv[] = { "bits", "3", "granularity", "tensor", "levels", "reference", NULL };
        struct uq r = quant(ctx, kv, &wt, NULL);
        static const uint8_t bytes[] = { 0x5e, 0xbb, 0x00 };  // codes 6 3 5 5 3 1
        check_codes(&r, bytes, 3);
        check_roundtrip(ctx, &r);
        uq_free(&r);
        caldera_tensor_free(&wt);
    }
    caldera_tensor_free(&w);
    caldera_ctx_free(ctx);
}
END_TEST

// GPTQ's asymmetric quantizer has an integer zero point: 0 is always a level, so exact zeros stay
// zero and a row whose range excludes 0 still contains it. With the earlier float zero (z = min)
// the levels of [-0.3, 1] were -0.3, 0.133, 0.567, 1 and a 0 came back as 0.133.
START_TEST(test_asym_zero_is_a_level) {
    struct caldera_ctx * ctx = tu_ctx();
    static const float v[8] = { -0.3f, 0.0f, 0.9f, 1.0f, 0.0f, 0.2f, 0.0f, 0.45f };
    struct caldera_tensor w = from(ctx, 1, 8, v);
    for (int b = 2; b <= 4; b++) {
        char bs[2] = { (char) ('0' + b), 0 };
        const char * kv[] = { "bits", bs, "granularity", "row", "symmetric", "0", "scale_dtype", "f32", NULL };
        struct uq r = quant(ctx, kv, &w, NULL);
        for (int j = 0; j < 8; j++) {
            if (v[j] == 0.0f) ck_assert_msg(at(&r.wh, 0, j) == 0.0f, "b%d: 0 -> %g", b, (double) at(&r.wh, 0, j));
        }
        // GPTQ's parameters: d = (max(hi, 0) - min(lo, 0)) / (2^b - 1), z = rint(-min(lo, 0) / d)
        float d = (float) (1.3 / ((1 << b) - 1));
        ck_assert(tensor_f(r.pack, "scale", 0) == d);
        ck_assert(tensor_f(r.pack, "zero", 0) == (float) rint(0.3 / (double) d));
        check_roundtrip(ctx, &r);
        uq_free(&r);
    }
    // a positive-only row: the range is widened to [0, hi] and z = 0
    static const float pos[4] = { 0.5f, 1.0f, 2.0f, 3.0f };
    struct caldera_tensor wp = from(ctx, 1, 4, pos);
    const char * kv[] = { "bits", "2", "granularity", "row", "symmetric", "0", "scale_dtype", "f32", NULL };
    struct uq r = quant(ctx, kv, &wp, NULL);
    ck_assert(tensor_f(r.pack, "zero", 0) == 0.0f && tensor_f(r.pack, "scale", 0) == 1.0f);
    ck_assert(at(&r.wh, 0, 3) == 3.0f && at(&r.wh, 0, 1) == 1.0f);
    uq_free(&r);
    // zero_point = float keeps the earlier variant: levels span [min, max] exactly, 0 is not a level
    const char * kvf[] = { "bits", "2", "granularity", "row", "symmetric", "0", "scale_dtype", "f32", "zero_point", "float", NULL };
    struct uq rf = quant(ctx, kvf, &w, NULL);
    ck_assert(at(&rf.wh, 0, 0) == -0.3f && fabsf(at(&rf.wh, 0, 3) - 1.0f) < 1e-6f);
    ck_assert(fabsf(at(&rf.wh, 0, 1) - (-0.3f + 1.3f / 3.0f)) < 1e-6f);   // 0 -> 0.1333
    struct caldera_tensor zt;
    ck_assert_int_eq(caldera_pack_find(rf.pack, "zero", &zt), 0);
    ck_assert_int_eq(zt.dtype, CALDERA_DTYPE_F32);
    check_roundtrip(ctx, &rf);
    uq_free(&rf);
    caldera_tensor_free(&wp);
    caldera_tensor_free(&w);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_group_scales) {
    // 2x5 with group_size 2: groups per row 3, the last one short; scale shape (2, 3).
    struct caldera_ctx * ctx = tu_ctx();
    static const float v[10] = { 1, -2, 3, 0.5f, -4, 0, 0, 0.25f, -0.5f, 7 };
    struct caldera_tensor w = from(ctx, 2, 5, v);
    const char * kv[] = { "bits", "2", "group_size", "2", "scale_dtype", "f32", NULL };
    struct uq r = quant(ctx, kv, &w, NULL);
    struct caldera_tensor s;
    ck_assert_int_eq(caldera_pack_find(r.pack, "scale", &s), 0);
    ck_assert_int_eq(s.ndim, 2);
    ck_assert_int_eq(s.ne[0], 2);
    ck_assert_int_eq(s.ne[1], 3);
    static const float amax[6] = { 2, 3, 4, 0, 0.5f, 7 };
    for (int k = 0; k < 6; k++) ck_assert(tensor_f(r.pack, "scale", k) == (float) (amax[k] / 1.5));
    ck_assert(at(&r.wh, 1, 0) == 0.0f && at(&r.wh, 1, 1) == 0.0f);  // zero group: no NaN, exact
    ck_assert(at(&r.wh, 0, 4) == -4.0f && at(&r.wh, 1, 4) == 7.0f);  // one-element groups: exact
    // storage: ceil(10 codes * 2 bits / 8) = 3 bytes, plus 6 f32 scales
    ck_assert_uint_eq(caldera_pack_bits(r.pack), 3 * 8 + 6 * 32);
    check_roundtrip(ctx, &r);
    uq_free(&r);
    caldera_tensor_free(&w);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_all_configs_roundtrip) {
    // Every bits x granularity x symmetric x dtype on odd shapes: exact dequantize, exact bits,
    // error within half a step for f32 scales (no clipping: every value is in range).
    struct caldera_ctx * ctx = tu_ctx();
    static const int64_t shapes[][2] = { { 7, 13 }, { 1, 1 }, { 3, 40 } };
    static const char * gran[] = { "tensor", "row", "column", "group" };
    for (int sh = 0; sh < 3; sh++) {
        const int64_t m = shapes[sh][0], n = shapes[sh][1];
        struct caldera_tensor w = tu_randn(ctx, m, n, 100 + (uint64_t) sh);
        for (int b = 1; b <= 8; b++) {
            for (int g = 0; g < 4; g++) {
                for (int sym = 0; sym < 4; sym++) {  // 0 asym, 1 sym full, 2 sym reference, 3 asym float zero
                    for (int dt = 0; dt < 2; dt++) {
                        if (sym == 2 && b == 1) continue;
                        char bs[2] = { (char) ('0' + b), 0 };
                        const char * kv[] = { "bits", bs, "granularity", gran[g], "group_size", "5",
                                              "symmetric", sym % 3 ? "1" : "0", "levels", sym == 2 ? "reference" : "full",
                                              "scale_dtype", dt ? "f32" : "f16", "zero_point", sym == 3 ? "float" : "integer",
                                              NULL };
                        struct uq r = quant(ctx, kv, &w, NULL);
                        check_roundtrip(ctx, &r);
                        int64_t ngr = (n + 4) / 5;
                        for (int64_t i = 0; dt && i < m; i++) {
                            for (int64_t j = 0; j < n; j++) {
                                int64_t gid = g == 0 ? 0 : g == 1 ? i : g == 2 ? j : i * ngr + j / 5;
                                double d = tensor_f(r.pack, "scale", gid);
                                double e = fabs((double) at(&w, i, j) - at(&r.wh, i, j));
                                // midrise 1-bit levels are +-d/2: error up to max(|x| - d/2, d/2)
                                ck_assert_msg(e <= 0.5 * d * (1.0 + UNI_HALF_STEP_SLACK) + 1e-30,
                                              "%s b%d sym%d (%d,%d): err %g step %g", gran[g], b, sym,
                                              (int) i, (int) j, e, d);
                            }
                        }
                        uq_free(&r);
                    }
                }
            }
        }
        caldera_tensor_free(&w);
    }
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_zero_and_constant) {
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t m = 4, n = 16;
    struct caldera_tensor w = tu_randn(ctx, m, n, 9);
    for (int64_t j = 0; j < n; j++) {
        ((float *) w.data)[1 * n + j] = 0.0f;     // zero row
        ((float *) w.data)[2 * n + j] = 0.37f;    // constant row
        ((float *) w.data)[3 * n + j] = -1e-3f;   // constant negative row
    }
    static const char * syms[][4] = { { "symmetric", "0" }, { "levels", "full" }, { "levels", "reference" } };
    for (int s = 0; s < 3; s++) {
        for (int g = 0; g < 2; g++) {
            const char * kv[] = { "bits", "3", "granularity", g ? "group" : "row", "group_size", "4",
                                  "scale_dtype", "f32", syms[s][0], syms[s][1], NULL };
            struct uq r = quant(ctx, kv, &w, NULL);
            for (int64_t j = 0; j < n; j++) {
                ck_assert(at(&r.wh, 1, j) == 0.0f);
                ck_assert_msg(fabs(at(&r.wh, 2, j) - 0.37) <= UNI_CONST_REL_TOL * 0.37, "sym %d: %.9g", s, at(&r.wh, 2, j));
                ck_assert(fabs(at(&r.wh, 3, j) + 1e-3) <= UNI_CONST_REL_TOL * 1e-3);
                if (s == 0) ck_assert(at(&r.wh, 1, j) == 0.0f);  // asymmetric: 0 is a level (integer zero point)
            }
            check_roundtrip(ctx, &r);
            uq_free(&r);
        }
    }
    // all-zero matrix, every granularity
    memset(w.data, 0, (size_t) (m * n) * sizeof(float));
    static const char * gran[] = { "tensor", "row", "column", "group" };
    for (int g = 0; g < 4; g++) {
        for (int s = 0; s < 3; s++) {
            const char * kv[] = { "granularity", gran[g], syms[s][0], syms[s][1], NULL };
            struct uq r = quant(ctx, kv, &w, NULL);
            for (int64_t k = 0; k < m * n; k++) ck_assert(((float *) r.wh.data)[k] == 0.0f);
            check_roundtrip(ctx, &r);
            uq_free(&r);
        }
    }
    caldera_tensor_free(&w);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_nan_inf) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor w = tu_randn(ctx, 7, 13, 3), wh;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 7, 13, &wh), 0);
    struct caldera_inst * q = mk(ctx, NULL);
    struct caldera_pack * pack = NULL;
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    ((float *) w.data)[5 * 13 + 12] = NAN;
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &wh, pack), CALDERA_ERR_NUMERIC);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "[u] uniform: cb_begin: W has a NaN or Inf at (5, 12)"));
    ((float *) w.data)[5 * 13 + 12] = INFINITY;
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &wh, pack), CALDERA_ERR_NUMERIC);
    ck_assert_int_eq(caldera_pack_count(pack), 0);
    caldera_pack_free(pack);
    caldera_inst_free(q);
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    caldera_ctx_free(ctx);
}
END_TEST

static void assert_packs_equal(const struct caldera_pack * a, const struct caldera_pack * b) {
    ck_assert_int_eq(caldera_pack_count(a), caldera_pack_count(b));
    for (int64_t i = 0; i < caldera_pack_count(a); i++) {
        struct caldera_tensor ta, tb;
        size_t na = 0;
        ck_assert_str_eq(caldera_pack_name(a, i), caldera_pack_name(b, i));
        ck_assert_int_eq(caldera_pack_get(a, i, &ta), 0);
        ck_assert_int_eq(caldera_pack_get(b, i, &tb), 0);
        ck_assert_int_eq(ta.dtype, tb.dtype);
        ck_assert_int_eq(caldera_tensor_nelements(&ta), caldera_tensor_nelements(&tb));
        ck_assert_int_eq(caldera_dtype_nbytes(ta.dtype, caldera_tensor_nelements(&ta), &na), 0);
        ck_assert(memcmp(ta.data, tb.data, na) == 0);
    }
}

START_TEST(test_determinism) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor w = tu_randn(ctx, 37, 129, 4);
    static const char * gran[] = { "group", "tensor", "column" };  // groups, or ratios, in parallel
    for (int g = 0; g < 3; g++) {
        const char * kv[] = { "bits", "3", "granularity", gran[g], "group_size", "16", "symmetric", "0",
                              "clip_search", "1", NULL };
        caldera_ctx_set_threads(ctx, 1);
        struct uq r1 = quant(ctx, kv, &w, NULL);
        caldera_ctx_set_threads(ctx, 2);
        struct uq r2 = quant(ctx, kv, &w, NULL);
        assert_packs_equal(r1.pack, r2.pack);
        ck_assert(memcmp(r1.wh.data, r2.wh.data, 37 * 129 * sizeof(float)) == 0);
        uq_free(&r1);
        uq_free(&r2);
    }
    caldera_tensor_free(&w);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_clip_search_never_worse) {
    // Heavy-tailed data (Gaussian cubed): clipping helps; it must never be worse, per
    // configuration, in plain or diag(H)-weighted squared error.
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t m = 24, n = 96;
    struct caldera_tensor w = tu_randn(ctx, m, n, 12);
    for (int64_t k = 0; k < m * n; k++) {
        float x = ((float *) w.data)[k];
        ((float *) w.data)[k] = x * x * x;
    }
    struct caldera_tensor h = tu_hessian(ctx, n, 8, 0.01, 5);
    static const char * gran[] = { "tensor", "row", "column", "group" };
    double gain_tensor = 0.0;
    for (int b = 2; b <= 4; b++) {
        for (int g = 0; g < 4; g++) {
            for (int sym = 0; sym < 2; sym++) {
                for (int useh = 0; useh < 2; useh++) {
                    char bs[2] = { (char) ('0' + b), 0 };
                    const char * k0[] = { "bits", bs, "granularity", gran[g], "group_size", "32",
                                          "symmetric", sym ? "1" : "0", NULL };
                    const char * k1[] = { "bits", bs, "granularity", gran[g], "group_size", "32",
                                          "symmetric", sym ? "1" : "0", "clip_search", "1", NULL };
                    struct uq r0 = quant(ctx, k0, &w, useh ? &h : NULL);
                    struct uq r1 = quant(ctx, k1, &w, useh ? &h : NULL);
                    double e0 = 0.0, e1 = 0.0;
                    for (int64_t i = 0; i < m; i++) {
                        for (int64_t j = 0; j < n; j++) {
                            double wt = useh ? at(&h, j, j) : 1.0;
                            double d0 = (double) at(&w, i, j) - at(&r0.wh, i, j);
                            double d1 = (double) at(&w, i, j) - at(&r1.wh, i, j);
                            e0 += wt * d0 * d0;
                            e1 += wt * d1 * d1;
                        }
                    }
                    ck_assert_msg(e1 <= e0 * (1.0 + UNI_SUM_REL_TOL), "b%d %s sym%d H%d: clip %g > no clip %g",
                                  b, gran[g], sym, useh, e1, e0);
                    if (g == 0 && !useh) gain_tensor += e0 / e1;
                    check_roundtrip(ctx, &r1);
                    uq_free(&r0);
                    uq_free(&r1);
                }
            }
        }
    }
    ck_assert_msg(gain_tensor / 6.0 > 2.0, "per-tensor clipping should help a lot on cubed Gaussians: %g",
                  gain_tensor / 6.0);
    caldera_tensor_free(&h);
    caldera_tensor_free(&w);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_codebook_level) {
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t m = 6, n = 21;
    struct caldera_tensor w = tu_randn(ctx, m, n, 31), xh;
    const char * kv[] = { "bits", "3", "group_size", "4", "symmetric", "0", "clip_search", "1", NULL };
    struct uq r = quant(ctx, kv, &w, NULL);
    const struct caldera_quantizer_ops * ops = NULL;
    ck_assert_int_eq(caldera_quantizer_codebook(r.q, &ops), 0);
    ck_assert_int_eq(ops->cb_dim(r.q), 1);
    struct caldera_cb_state * st = NULL;
    ck_assert_int_eq(ops->cb_begin(r.q, &w, &st), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &xh), 0);
    // one column at a time from the last, each first rounded from junk then overwritten
    struct caldera_tensor junk = tu_randn(ctx, m, 1, 77);
    for (int64_t j = n - 1; j >= 0; j--) {
        struct caldera_tensor x = w, y = xh;
        x.data = (float *) w.data + j;
        y.data = (float *) xh.data + j;
        x.ne[1] = y.ne[1] = 1;
        ck_assert_int_eq(ops->cb_round(r.q, st, j, &junk, &y), 0);
        ck_assert_int_eq(ops->cb_round(r.q, st, j, &x, &y), 0);
    }
    struct caldera_pack * p2 = NULL;
    ck_assert_int_eq(caldera_pack_init(&p2), 0);
    ck_assert_int_eq(ops->cb_end(r.q, st, p2), 0);
    assert_packs_equal(r.pack, p2);
    ck_assert(memcmp(xh.data, r.wh.data, (size_t) (m * n) * sizeof(float)) == 0);
    // rounding uses W's scales: 10 W is clamped to the extreme levels of each group
    struct caldera_tensor w10 = tu_randn(ctx, m, n, 31);
    for (int64_t k = 0; k < m * n; k++) ((float *) w10.data)[k] *= 10.0f;
    ck_assert_int_eq(ops->cb_round(r.q, st, 0, &w10, &xh), 0);
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
            int64_t g = i * 6 + j / 4;
            float z = tensor_f(r.pack, "zero", g), d = tensor_f(r.pack, "scale", g);
            ck_assert(at(&xh, i, j) >= -z * d && at(&xh, i, j) <= (7.0f - z) * d);
        }
    }
    // columns outside W
    struct caldera_tensor x2 = w;
    x2.ne[1] = 2;
    ck_assert_int_eq(ops->cb_round(r.q, st, 20, &x2, &x2), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "cb_round: columns [20, 22) are outside [0, 21)"));
    ops->cb_free(r.q, st);
    ops->cb_free(r.q, NULL);
    caldera_pack_free(p2);
    caldera_tensor_free(&junk);
    caldera_tensor_free(&w10);
    caldera_tensor_free(&xh);
    caldera_tensor_free(&w);
    uq_free(&r);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_ld_views) {
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t m = 5, n = 11, ldw = 16, ldh = 13;
    struct caldera_tensor w = tu_randn(ctx, m, n, 8), big, bigh;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, ldw, &big), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, ldh, &bigh), 0);
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < ldw; j++) ((float *) big.data)[i * ldw + j] = j < n ? at(&w, i, j) : NAN;
        for (int64_t j = 0; j < ldh; j++) ((float *) bigh.data)[i * ldh + j] = -7.0f;
    }
    const char * kv[] = { "bits", "4", "granularity", "column", NULL };
    struct uq r = quant(ctx, kv, &w, NULL);
    struct caldera_tensor vw = big, vh = bigh;
    vw.ne[1] = vh.ne[1] = n;
    struct caldera_pack * p2 = NULL;
    ck_assert_int_eq(caldera_pack_init(&p2), 0);
    ck_assert_int_eq(caldera_quantizer_quantize(r.q, &vw, NULL, &vh, p2), 0);
    assert_packs_equal(r.pack, p2);
    for (int pass = 0; pass < 2; pass++) {
        for (int64_t i = 0; i < m; i++) {
            for (int64_t j = 0; j < ldh; j++) {
                float got = ((float *) bigh.data)[i * ldh + j];
                ck_assert(j < n ? got == at(&r.wh, i, j) : got == -7.0f);
            }
        }
        for (int64_t k = 0; k < m * ldh; k++) ((float *) bigh.data)[k] = -7.0f;
        ck_assert_int_eq(caldera_quantizer_dequantize(r.q, p2, &vh), 0);
    }
    caldera_pack_free(p2);
    uq_free(&r);
    caldera_tensor_free(&w);
    caldera_tensor_free(&big);
    caldera_tensor_free(&bigh);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_option_errors) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * q = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, "uniform", "u", &q), 0);
    ck_assert_int_eq(caldera_inst_set(q, "bits", "9"), CALDERA_ERR_RANGE);
    ck_assert_int_eq(caldera_inst_set(q, "bits", "0"), CALDERA_ERR_RANGE);
    ck_assert_int_eq(caldera_inst_set(q, "group_size", "0"), CALDERA_ERR_RANGE);
    ck_assert_int_eq(caldera_inst_set(q, "granularity", "block"), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_inst_set(q, "levels", "reference"), 0);
    ck_assert_int_eq(caldera_inst_set(q, "symmetric", "0"), 0);
    ck_assert_int_eq(caldera_inst_start(q), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "levels=reference needs symmetric=1"));
    caldera_inst_free(q);
    ck_assert_int_eq(caldera_inst_create(ctx, "uniform", "u", &q), 0);
    ck_assert_int_eq(caldera_inst_set(q, "levels", "reference"), 0);
    ck_assert_int_eq(caldera_inst_set(q, "bits", "1"), 0);
    ck_assert_int_eq(caldera_inst_start(q), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "levels=reference with bits=1 has no level but 0"));
    caldera_inst_free(q);
    q = mk(ctx, NULL);
    ck_assert_int_eq(caldera_inst_plugin(q)->check_shape(q, 0, 5), CALDERA_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "shape 0x5 is empty"));
    ck_assert_int_eq(caldera_inst_plugin(q)->check_shape(q, 7, 13), 0);
    caldera_inst_free(q);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_runtime_errors) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor w = tu_randn(ctx, 4, 10, 1), wh, w9, h;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 4, 10, &wh), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 4, 9, &w9), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 9, 9, &h), 0);
    struct caldera_pack * pack = NULL, * empty = NULL;
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    ck_assert_int_eq(caldera_pack_init(&empty), 0);
    const char * kv[] = { "clip_search", "1", NULL };
    struct caldera_inst * q = mk(ctx, kv);
    // w_hat and H of the wrong shape; H with a negative diagonal
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &w9, pack), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "quantize: w_hat is 4x9; allowed: 4x10"));
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, &h, &wh, pack), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "quantize: H is 9x9; allowed: 10x10"));
    struct caldera_tensor h10;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 10, 10, &h10), 0);
    ((float *) h10.data)[3 * 10 + 3] = -1.0f;
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, &h10, &wh, pack), CALDERA_ERR_NUMERIC);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "H[3][3] = -1; the diagonal of H must be finite and >= 0"));
    // f16 overflow of a scale (even the smallest clip ratio, 0.2, cannot bring it in range)
    for (int64_t k = 0; k < 40; k++) ((float *) w.data)[k] *= 1e8f;
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &wh, pack), CALDERA_ERR_RANGE);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "beyond the range of scale_dtype=f16; use scale_dtype=f32"));
    for (int64_t k = 0; k < 40; k++) ((float *) w.data)[k] *= 1e-8f;
    ck_assert_int_eq(caldera_pack_count(pack), 0);
    // dequantize: missing and mis-sized tensors
    ck_assert_int_eq(caldera_quantizer_dequantize(q, empty, &wh), CALDERA_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "the pack has no tensor 'codes'"));
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &wh, pack), 0);
    ck_assert_int_eq(caldera_quantizer_dequantize(q, pack, &w9), CALDERA_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "tensor 'codes' is u8 with 20 elements; expected u8 with 18"));
    caldera_inst_free(q);
    const char * ka[] = { "symmetric", "0", NULL };
    q = mk(ctx, ka);  // an asymmetric reader needs 'zero'
    ck_assert_int_eq(caldera_quantizer_dequantize(q, pack, &wh), CALDERA_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "no tensor 'zero'"));
    const struct caldera_quantizer_ops * ops = caldera_inst_plugin(q)->ops;
    ck_assert_int_eq(ops->cb_round(q, NULL, 0, &w, &wh), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "cb_round: no state; call cb_begin first"));
    ck_assert_int_eq(ops->cb_end(q, NULL, pack), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "cb_end: no state"));
    caldera_inst_free(q);
    caldera_pack_free(pack);
    caldera_pack_free(empty);
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    caldera_tensor_free(&w9);
    caldera_tensor_free(&h);
    caldera_tensor_free(&h10);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_oom_sweep) {
    // Make allocation 1, 2, ... of quantize / dequantize fail: every failure is NOMEM with a
    // message, nothing leaks (ASan), and the sweep ends with a success.
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor w = tu_randn(ctx, 9, 21, 6), wh;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 9, 21, &wh), 0);
    const char * kv[] = { "symmetric", "0", "group_size", "4", "clip_search", "1", NULL };
    struct caldera_inst * q = mk(ctx, kv);
    int fails = tu_quantizer_oom_sweep(ctx, q, &w, &wh, "[u] uniform: ", NULL);
    ck_assert_int_ge(fails, 4);  // state, scales, zeros, codes, pack tensors
    caldera_inst_free(q);
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_tensor_errors) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor w = tu_randn(ctx, 4, 8, 1), wh, x3;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 4, 8, &wh), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 3, 8, &x3), 0);
    struct caldera_pack * pack = NULL;
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    struct caldera_inst * q = mk(ctx, NULL);
    struct caldera_tensor bad = w;
    bad.dtype = CALDERA_DTYPE_F16;
    ck_assert_int_eq(caldera_quantizer_quantize(q, &bad, NULL, &wh, pack), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "quantize: W must be a 2-d f32 CPU tensor with ld >= cols"));
    bad = w;
    bad.ld = 3;
    ck_assert_int_eq(caldera_quantizer_quantize(q, &bad, NULL, &wh, pack), CALDERA_ERR_INVAL);
    const struct caldera_quantizer_ops * ops = caldera_inst_plugin(q)->ops;
    struct caldera_cb_state * st = NULL;
    ck_assert_int_eq(ops->cb_begin(q, &w, &st), 0);
    ck_assert_int_eq(ops->cb_round(q, st, 0, &x3, &wh), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "cb_round: x is 3x8; allowed: 4x8"));
    ck_assert_int_eq(ops->cb_round(q, st, 0, &w, &x3), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "cb_round: x_hat is 3x8; allowed: 4x8"));
    ck_assert_int_eq(ops->cb_round(q, st, 0, &w, &wh), 0);
    ck_assert_int_eq(ops->cb_end(q, st, pack), 0);
    ck_assert_int_eq(ops->cb_end(q, st, pack), CALDERA_ERR_INVAL);  // names already taken
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "cb_end: cannot add tensor 'codes' to the pack"));
    ops->cb_free(q, st);
    caldera_inst_free(q);
    caldera_pack_free(pack);
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    caldera_tensor_free(&x3);
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * uniform_suite(void) {
    Suite * s = suite_create("uniform");
    TCase * tc = tcase_create("numerics");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_mse_uniform_law);
    tcase_add_test(tc, test_exact_codes);
    tcase_add_test(tc, test_group_scales);
    tcase_add_test(tc, test_all_configs_roundtrip);
    tcase_add_test(tc, test_zero_and_constant);
    tcase_add_test(tc, test_asym_zero_is_a_level);
    tcase_add_test(tc, test_determinism);
    tcase_add_test(tc, test_clip_search_never_worse);
    suite_add_tcase(s, tc);
    tc = tcase_create("interface");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_nan_inf);
    tcase_add_test(tc, test_codebook_level);
    tcase_add_test(tc, test_ld_views);
    tcase_add_test(tc, test_option_errors);
    tcase_add_test(tc, test_runtime_errors);
    tcase_add_test(tc, test_oom_sweep);
    tcase_add_test(tc, test_tensor_errors);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(uniform_suite)
