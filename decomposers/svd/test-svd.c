// SPDX-License-Identifier: MIT
// svd decomposer: with f32 factors it is the best rank-k approximation (error² = the tail of the
// spectrum, from an independent Jacobi solution); with a Q it is Q + the best rank-k approximation
// of W − Q; quantized factors round-trip bit-exactly; rank, NaN and pack errors.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define TAIL_TOL 2e-4   // relative (to ‖W‖²): f32 SVD against the double Jacobi tail

// Σ_{i>k} σ_i² of A (m×n) in double (eigenvalues of A Aᵀ by Jacobi).
static double tail2(const float * a, int64_t m, int64_t n, int64_t k) {
    double * s = calloc((size_t) (m * m), sizeof(double)), * v = calloc((size_t) (m * m), sizeof(double));
    double * w = calloc((size_t) m, sizeof(double));
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < m; j++)
            for (int64_t l = 0; l < n; l++) s[i * m + j] += (double) a[i * n + l] * a[j * n + l];
    tu_jacobi(s, m, w, v);
    for (int64_t i = 0; i < m; i++)   // sort descending
        for (int64_t j = i + 1; j < m; j++)
            if (w[j] > w[i]) { double t = w[i]; w[i] = w[j]; w[j] = t; }
    double t = 0;
    for (int64_t i = k; i < m; i++) t += w[i];
    free(s); free(v); free(w);
    return t;
}

static double fro2(const float * a, const float * b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += ((double) a[i] - (b ? b[i] : 0.0f)) * ((double) a[i] - (b ? b[i] : 0.0f));
    return s;
}

static struct caldera_inst * mk(struct caldera_ctx * ctx, const char * plugin, const char * name, const char * const * kv) {
    struct caldera_inst * i = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, plugin, name, &i), 0);
    for (int k = 0; kv && kv[k]; k += 2) ck_assert_int_eq(caldera_inst_set(i, kv[k], kv[k + 1]), 0);
    return i;
}

static int run(struct caldera_inst * d, const struct caldera_tensor * w, struct caldera_tensor * wh,
               struct caldera_pack ** pack) {
    ck_assert_int_eq(caldera_pack_init(pack), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(caldera_inst_ctx(d), w->ne[0], w->ne[1], wh), 0);
    return ((const struct caldera_decomposer_ops *) caldera_inst_plugin(d)->ops)->decompose(d, w, NULL, wh, *pack);
}

static void roundtrip(struct caldera_inst * d, struct caldera_pack * pack, const struct caldera_tensor * wh) {
    struct caldera_tensor chk;
    ck_assert_int_eq(caldera_tensor_alloc_f32(caldera_inst_ctx(d), wh->ne[0], wh->ne[1], &chk), 0);
    ck_assert_int_eq(((const struct caldera_decomposer_ops *) caldera_inst_plugin(d)->ops)->reconstruct(d, pack, &chk), 0);
    ck_assert_int_eq(memcmp(chk.data, wh->data, (size_t) (wh->ne[0] * wh->ne[1]) * sizeof(float)), 0);
    caldera_tensor_free(&chk);
}

START_TEST(test_best_rank_k) {
    struct caldera_ctx * ctx = tu_ctx();
    static const int64_t sh[][3] = { { 12, 20, 4 }, { 21, 9, 3 } };
    for (int s = 0; s < 2; s++) {
        const int64_t m = sh[s][0], n = sh[s][1], k = sh[s][2];
        char kb[8];
        snprintf(kb, sizeof(kb), "%d", (int) k);
        const char * kv[] = { "rank", kb, "factor_dtype", "f32", NULL };
        struct caldera_inst * d = mk(ctx, "svd", "svd", kv);
        ck_assert_int_eq(caldera_inst_start(d), 0);
        struct caldera_tensor w = tu_randn(ctx, m, n, 5 + s), wh;
        struct caldera_pack * pack;
        ck_assert_int_eq(run(d, &w, &wh, &pack), 0);
        double got = fro2(w.data, wh.data, m * n), tot = fro2(w.data, NULL, m * n);
        double want = tail2(w.data, m, n, k);
        ck_assert_msg(fabs(got - want) <= TAIL_TOL * tot, "shape %d: %g vs tail %g", s, got, want);
        roundtrip(d, pack, &wh);
        caldera_pack_free(pack);
        caldera_tensor_free(&w);
        caldera_tensor_free(&wh);
        caldera_inst_free(d);
    }
    caldera_ctx_free(ctx);
}
END_TEST

// Q (uniform 2-bit RTN) first, then the best rank-k approximation of W − Q in f16 factors.
START_TEST(test_q_plus_lowrank) {
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t m = 16, n = 24, k = 3;
    const char * ukv[] = { "bits", "2", "granularity", "row", NULL };
    struct caldera_inst * u = mk(ctx, "uniform", "u2", ukv);
    ck_assert_int_eq(caldera_inst_start(u), 0);
    const char * kv[] = { "rank", "3", "factor_dtype", "f32", NULL };
    struct caldera_inst * d = mk(ctx, "svd", "svd", kv);
    ck_assert_int_eq(caldera_inst_set_ref(d, "q", u), 0);
    ck_assert_int_eq(caldera_inst_start(d), 0);
    struct caldera_tensor w = tu_randn(ctx, m, n, 11), wh, qh;
    struct caldera_pack * pack, * qp;
    ck_assert_int_eq(run(d, &w, &wh, &pack), 0);
    ck_assert_int_eq(caldera_pack_init(&qp), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &qh), 0);
    ck_assert_int_eq(caldera_quantizer_quantize(u, &w, NULL, &qh, qp), 0);
    float * res = calloc((size_t) (m * n), sizeof(float));
    for (int64_t i = 0; i < m * n; i++) res[i] = ((float *) w.data)[i] - ((float *) qh.data)[i];
    double got = fro2(w.data, wh.data, m * n), want = tail2(res, m, n, k);
    ck_assert_msg(fabs(got - want) <= TAIL_TOL * fro2(w.data, NULL, m * n), "%g vs %g", got, want);
    ck_assert(got < fro2(w.data, qh.data, m * n));
    roundtrip(d, pack, &wh);
    struct caldera_tensor t;
    ck_assert_int_eq(caldera_pack_find(pack, "Q.codes", &t), 0);
    ck_assert_int_eq(caldera_pack_find(pack, "L.values", &t), 0);
    ck_assert(t.ne[0] == m && t.ne[1] == k && t.dtype == CALDERA_DTYPE_F32);
    free(res);
    caldera_pack_free(pack);
    caldera_pack_free(qp);
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    caldera_tensor_free(&qh);
    caldera_inst_free(d);
    caldera_inst_free(u);
    caldera_ctx_free(ctx);
}
END_TEST

// Quantized factors (e8 4-bit, odd rank) and f16 factors round-trip exactly; errors are refused clearly.
START_TEST(test_quantized_and_errors) {
    struct caldera_ctx * ctx = tu_ctx();
    const char * ekv[] = { "bits", "4", NULL };
    struct caldera_inst * lq = mk(ctx, "e8", "lq", ekv), * rq = mk(ctx, "e8", "rq", ekv);
    ck_assert_int_eq(caldera_inst_start(lq), 0);
    ck_assert_int_eq(caldera_inst_start(rq), 0);
    const char * kv[] = { "rank", "5", NULL };
    struct caldera_inst * d = mk(ctx, "svd", "svd", kv);
    ck_assert_int_eq(caldera_inst_set_ref(d, "l_quant", lq), 0);
    ck_assert_int_eq(caldera_inst_set_ref(d, "r_quant", rq), 0);
    ck_assert_int_eq(caldera_inst_start(d), 0);
    struct caldera_tensor w = tu_randn(ctx, 24, 32, 12), wh;
    struct caldera_pack * pack;
    ck_assert_int_eq(run(d, &w, &wh, &pack), 0);
    roundtrip(d, pack, &wh);
    ck_assert(fro2(w.data, wh.data, 24 * 32) < fro2(w.data, NULL, 24 * 32));
    caldera_pack_free(pack);
    caldera_tensor_free(&wh);
    // rank above min(rows, cols), at check time
    ck_assert_int_eq(caldera_inst_plugin(d)->check_shape(d, 4, 40), CALDERA_ERR_RANGE);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "rank = 5 exceeds min(rows, cols) = 4"));
    // e8 needs rows % 8 for Lᵀ
    ck_assert_int_lt(caldera_inst_plugin(d)->check_shape(d, 20, 40), 0);
    ((float *) w.data)[7] = INFINITY;
    ck_assert_int_eq(run(d, &w, &wh, &pack), CALDERA_ERR_NUMERIC);
    caldera_pack_free(pack);
    caldera_tensor_free(&wh);
    caldera_tensor_free(&w);
    caldera_inst_free(d);
    caldera_inst_free(lq);
    caldera_inst_free(rq);
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * svd_suite(void) {
    Suite * s = suite_create("svd");
    TCase * tc = tcase_create("core");
    tcase_add_test(tc, test_best_rank_k);
    tcase_add_test(tc, test_q_plus_lowrank);
    tcase_add_test(tc, test_quantized_and_errors);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(svd_suite)
