// SPDX-License-Identifier: MIT
// lplr decomposer: variant svd with f32 factors is the best rank-k approximation (the projection
// U_k U_kᵀ W, checked against the spectrum's tail); a full-rank sketch reproduces W; power
// iterations help on low rank + noise; the sketch is deterministic per seed; quantized factors
// round-trip exactly; rank and NaN errors.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define TAIL_TOL 2e-4   // relative to ‖W‖²

static double fro2(const float * a, const float * b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += ((double) a[i] - (b ? b[i] : 0.0f)) * ((double) a[i] - (b ? b[i] : 0.0f));
    return s;
}

static struct caldera_inst * mk(struct caldera_ctx * ctx, const char * plugin, const char * const * kv) {
    struct caldera_inst * i = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, plugin, plugin, &i), 0);
    for (int k = 0; kv && kv[k]; k += 2) ck_assert_int_eq(caldera_inst_set(i, kv[k], kv[k + 1]), 0);
    return i;
}

static int run(struct caldera_inst * d, const struct caldera_tensor * w, struct caldera_tensor * wh,
               struct caldera_pack ** pack) {
    ck_assert_int_eq(caldera_pack_init(pack), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(caldera_inst_ctx(d), w->ne[0], w->ne[1], wh), 0);
    return ((const struct caldera_decomposer_ops *) caldera_inst_plugin(d)->ops)->decompose(d, w, NULL, wh, *pack);
}

// one decomposition: error² of W − Ŵ (and optionally the pack and Ŵ kept)
static double err2(struct caldera_ctx * ctx, const char * const * kv, const struct caldera_tensor * w,
                   struct caldera_pack ** keep, struct caldera_tensor * keep_wh) {
    struct caldera_inst * d = mk(ctx, "lplr", kv);
    ck_assert_int_eq(caldera_inst_start(d), 0);
    struct caldera_tensor wh;
    struct caldera_pack * pack;
    ck_assert_int_eq(run(d, w, &wh, &pack), 0);
    double e = fro2(w->data, wh.data, w->ne[0] * w->ne[1]);
    // reconstruct is bit-exact
    struct caldera_tensor chk;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, w->ne[0], w->ne[1], &chk), 0);
    ck_assert_int_eq(((const struct caldera_decomposer_ops *) caldera_inst_plugin(d)->ops)->reconstruct(d, pack, &chk), 0);
    ck_assert_int_eq(memcmp(chk.data, wh.data, (size_t) (w->ne[0] * w->ne[1]) * sizeof(float)), 0);
    caldera_tensor_free(&chk);
    if (keep) *keep = pack;
    else caldera_pack_free(pack);
    if (keep_wh) *keep_wh = wh;
    else caldera_tensor_free(&wh);
    caldera_inst_free(d);
    return e;
}

static struct caldera_tensor lowrank_plus_noise(struct caldera_ctx * ctx, int64_t m, int64_t n, int64_t r, float noise,
                                                uint64_t seed) {
    struct caldera_tensor a = tu_randn(ctx, m, r, seed), b = tu_randn(ctx, r, n, seed + 1), w = tu_randn(ctx, m, n, seed + 2);
    for (int64_t i = 0; i < m * n; i++) ((float *) w.data)[i] *= noise;
    ck_assert_int_eq(caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &a, &b, 1.0f, &w), 0);
    caldera_tensor_free(&a);
    caldera_tensor_free(&b);
    return w;
}

START_TEST(test_svd_variant_is_best_rank_k) {
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t m = 14, n = 22, k = 4;
    struct caldera_tensor w = tu_randn(ctx, m, n, 3);
    const char * kv[] = { "rank", "4", "variant", "svd", "factor_dtype", "f32", NULL };
    double got = err2(ctx, kv, &w, NULL, NULL);
    // tail of the spectrum, independently (Jacobi on W Wᵀ in double)
    double * s = calloc((size_t) (m * m), sizeof(double)), * v = calloc((size_t) (m * m), sizeof(double));
    double * ev = calloc((size_t) m, sizeof(double));
    const float * wd = w.data;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < m; j++)
            for (int64_t l = 0; l < n; l++) s[i * m + j] += (double) wd[i * n + l] * wd[j * n + l];
    tu_jacobi(s, m, ev, v);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = i + 1; j < m; j++)
            if (ev[j] > ev[i]) { double t = ev[i]; ev[i] = ev[j]; ev[j] = t; }
    double tail = 0;
    for (int64_t i = k; i < m; i++) tail += ev[i];
    ck_assert_msg(fabs(got - tail) <= TAIL_TOL * fro2(wd, NULL, m * n), "%g vs %g", got, tail);
    free(s); free(v); free(ev);
    caldera_tensor_free(&w);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_sketch) {
    struct caldera_ctx * ctx = tu_ctx();
    // full-rank sketch (k = n <= m): Z = W S has W's column space, so Z pinv(Z) W = W
    struct caldera_tensor w = tu_randn(ctx, 20, 8, 4);
    const char * kvf[] = { "rank", "8", "factor_dtype", "f32", "seed", "3", NULL };
    ck_assert(err2(ctx, kvf, &w, NULL, NULL) <= 1e-8 * fro2(w.data, NULL, 160));
    caldera_tensor_free(&w);
    // low rank + noise: power iterations bring the sketch to the top subspace
    struct caldera_tensor w2 = lowrank_plus_noise(ctx, 30, 40, 5, 0.05f, 5);
    const char * kv0[] = { "rank", "5", "factor_dtype", "f32", "seed", "1", NULL };
    const char * kv2[] = { "rank", "5", "factor_dtype", "f32", "seed", "1", "power_iters", "2", NULL };
    const char * kvs[] = { "rank", "5", "factor_dtype", "f32", "variant", "svd", NULL };
    double e0 = err2(ctx, kv0, &w2, NULL, NULL), e2 = err2(ctx, kv2, &w2, NULL, NULL), es = err2(ctx, kvs, &w2, NULL, NULL);
    ck_assert_msg(es <= e2 * (1 + 1e-4) && e2 <= e0, "svd %g, power 2 %g, power 0 %g", es, e2, e0);
    // deterministic per seed; another seed gives another sketch
    struct caldera_pack * pa, * pb, * pc;
    struct caldera_tensor wa, wb, wc;
    const char * kva[] = { "rank", "5", "seed", "7", NULL };
    const char * kvc[] = { "rank", "5", "seed", "8", NULL };
    err2(ctx, kva, &w2, &pa, &wa);
    err2(ctx, kva, &w2, &pb, &wb);
    err2(ctx, kvc, &w2, &pc, &wc);
    ck_assert_int_eq(memcmp(wa.data, wb.data, 30 * 40 * sizeof(float)), 0);
    ck_assert_int_ne(memcmp(wa.data, wc.data, 30 * 40 * sizeof(float)), 0);
    struct caldera_tensor t;
    ck_assert_int_eq(caldera_pack_find(pa, "L.values", &t), 0);
    ck_assert(t.dtype == CALDERA_DTYPE_F16 && t.ne[0] == 30 && t.ne[1] == 5);
    caldera_pack_free(pa); caldera_pack_free(pb); caldera_pack_free(pc);
    caldera_tensor_free(&wa); caldera_tensor_free(&wb); caldera_tensor_free(&wc);
    caldera_tensor_free(&w2);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_quantized_and_errors) {
    struct caldera_ctx * ctx = tu_ctx();
    const char * ukv[] = { "bits", "4", "granularity", "row", NULL };
    struct caldera_inst * lq = mk(ctx, "uniform", ukv), * rq = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, "uniform", "rq", &rq), 0);
    ck_assert_int_eq(caldera_inst_set(rq, "bits", "4"), 0);
    ck_assert_int_eq(caldera_inst_start(lq), 0);
    ck_assert_int_eq(caldera_inst_start(rq), 0);
    const char * kv[] = { "rank", "3", NULL };
    struct caldera_inst * d = mk(ctx, "lplr", kv);
    ck_assert_int_eq(caldera_inst_set_ref(d, "l_quant", lq), 0);
    ck_assert_int_eq(caldera_inst_set_ref(d, "r_quant", rq), 0);
    ck_assert_int_eq(caldera_inst_start(d), 0);
    struct caldera_tensor w = lowrank_plus_noise(ctx, 17, 23, 3, 0.1f, 9), wh;   // odd shape
    struct caldera_pack * pack;
    ck_assert_int_eq(run(d, &w, &wh, &pack), 0);
    // a plain Gaussian sketch is ill-conditioned, so R's quantization costs much (the baseline's known weakness)
    ck_assert(fro2(w.data, wh.data, 17 * 23) < 0.5 * fro2(w.data, NULL, 17 * 23));
    struct caldera_tensor chk;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 17, 23, &chk), 0);
    ck_assert_int_eq(((const struct caldera_decomposer_ops *) caldera_inst_plugin(d)->ops)->reconstruct(d, pack, &chk), 0);
    ck_assert_int_eq(memcmp(chk.data, wh.data, 17 * 23 * sizeof(float)), 0);
    caldera_pack_free(pack);
    caldera_tensor_free(&wh);
    ck_assert_int_eq(caldera_inst_plugin(d)->check_shape(d, 2, 40), CALDERA_ERR_RANGE);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "rank = 3 exceeds min(rows, cols) = 2"));
    ((float *) w.data)[3] = NAN;
    ck_assert_int_eq(run(d, &w, &wh, &pack), CALDERA_ERR_NUMERIC);
    caldera_pack_free(pack);
    caldera_tensor_free(&wh);
    caldera_tensor_free(&chk);
    caldera_tensor_free(&w);
    caldera_inst_free(d);
    caldera_inst_free(lq);
    caldera_inst_free(rq);
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * lplr_suite(void) {
    Suite * s = suite_create("lplr");
    TCase * tc = tcase_create("core");
    tcase_add_test(tc, test_svd_variant_is_best_rank_k);
    tcase_add_test(tc, test_sketch);
    tcase_add_test(tc, test_quantized_and_errors);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(lplr_suite)
