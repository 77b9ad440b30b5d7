// SPDX-License-Identifier: MIT
// ldlq over the real codebook plugins: uniform (cb_dim 1, GPTQ-style) and e8 (E8P, cb_dim 8).
// H = NULL must reproduce each codebook's own round-to-nearest (values and pack bytes); with
// real-like Hessians ldlq must beat RTN; tune passes with blocks of 8 must never raise the loss;
// and the QuIP#-style chain rht -> ldlq(e8) -> inverse keeps the proxy loss of both domains equal.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define LOSS_TOL   1e-4   // relative: LDL loss identity / domain invariance (f32 factors)
#define TUNE_TOL   1e-6   // relative: slack for a tune pass against the previous loss
#define RATIO_MAX  0.9    // mean ldlq/RTN proxy-loss ratio must be below this (a real gain)

static int run_q(struct caldera_inst * q, const struct caldera_tensor * w, const struct caldera_tensor * h,
                 struct caldera_tensor * w_hat, struct caldera_pack ** pack_out) {
    struct caldera_pack * pack = NULL;
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(caldera_inst_ctx(q), w->ne[0], w->ne[1], w_hat), 0);
    int rc = caldera_quantizer_quantize(q, w, h, w_hat, pack);
    if (pack_out) *pack_out = pack;
    else caldera_pack_free(pack);
    return rc;
}

static double loss(struct caldera_ctx * ctx, const struct caldera_tensor * w, const struct caldera_tensor * wh,
                   const struct caldera_tensor * h) {
    struct caldera_tensor e;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, w->ne[0], w->ne[1], &e), 0);
    for (int64_t i = 0; i < w->ne[0] * w->ne[1]; i++) ((float *) e.data)[i] = ((float *) w->data)[i] - ((float *) wh->data)[i];
    double s = 0;
    ck_assert_int_eq(caldera_linalg_trace_quad(ctx, &e, h, &s), 0);
    caldera_tensor_free(&e);
    return s;
}

static struct caldera_tensor damped(struct caldera_ctx * ctx, const struct caldera_tensor * h, double damp) {
    int64_t n = h->ne[0];
    struct caldera_tensor d;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, n, n, &d), 0);
    ck_assert_int_eq(caldera_tensor_copy(ctx, &d, h), 0);
    double mean = 0;
    for (int64_t i = 0; i < n; i++) mean += ((float *) h->data)[i * n + i];
    for (int64_t i = 0; i < n; i++) ((float *) d.data)[i * n + i] += (float) (damp * mean / (double) n);
    return d;
}

static int packs_equal(const struct caldera_pack * a, const struct caldera_pack * b) {
    if (caldera_pack_count(a) != caldera_pack_count(b)) return 0;
    for (int64_t i = 0; i < caldera_pack_count(a); i++) {
        struct caldera_tensor ta, tb;
        if (strcmp(caldera_pack_name(a, i), caldera_pack_name(b, i)) != 0) return 0;
        caldera_pack_get(a, i, &ta);
        caldera_pack_get(b, i, &tb);
        size_t na = 0, nb = 0;
        caldera_dtype_nbytes(ta.dtype, caldera_tensor_nelements(&ta), &na);
        caldera_dtype_nbytes(tb.dtype, caldera_tensor_nelements(&tb), &nb);
        if (ta.dtype != tb.dtype || na != nb || memcmp(ta.data, tb.data, na) != 0) return 0;
    }
    return 1;
}

// codebook instance cb (started) and an ldlq q wrapping it (not started)
static void make(struct caldera_ctx * ctx, const char * plugin, const char * k1, const char * v1,
                 struct caldera_inst ** cb, struct caldera_inst ** q) {
    ck_assert_int_eq(caldera_inst_create(ctx, plugin, "cb", cb), 0);
    if (k1) ck_assert_int_eq(caldera_inst_set(*cb, k1, v1), 0);
    ck_assert_int_eq(caldera_inst_start(*cb), 0);
    ck_assert_int_eq(caldera_inst_create(ctx, "ldlq", "q", q), 0);
    ck_assert_int_eq(caldera_inst_set_ref(*q, "codebook", *cb), 0);
}

// ldlq hands H to the codebook's cb_begin_h: uniform's clip search is then diag(H)-weighted
// under ldlq exactly as in uniform's own quantize(W, H). With a diagonal H the LDL feedback is
// zero, so ldlq must reproduce quantize(W, H) bit for bit (and differ from the unweighted one).
START_TEST(test_uniform_clip_search_sees_h) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * cb, * q;
    make(ctx, "uniform", "bits", "2", &cb, &q);
    ck_assert_int_eq(caldera_inst_set(cb, "clip_search", "true"), 0);
    ck_assert_int_eq(caldera_inst_set(cb, "granularity", "row"), 0);
    ck_assert_int_eq(caldera_inst_start(cb), 0);
    ck_assert_int_eq(caldera_inst_start(q), 0);
    struct caldera_tensor w = tu_randn(ctx, 16, 64, 11), h, wq, wh, w0;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 64, 64, &h), 0);
    for (int j = 0; j < 64; j++) ((float *) h.data)[j * 64 + j] = (j % 9 == 0) ? 100.0f : 0.01f;
    ck_assert_int_eq(run_q(q, &w, &h, &wq, NULL), 0);
    ck_assert_int_eq(run_q(cb, &w, &h, &wh, NULL), 0);
    ck_assert_int_eq(run_q(cb, &w, NULL, &w0, NULL), 0);
    ck_assert_double_eq(tu_max_abs_diff(&wq, &wh), 0.0);
    ck_assert(tu_max_abs_diff(&wh, &w0) > 0.0);   // the weighting changes the scales: the test can fail
    caldera_tensor_free(&w); caldera_tensor_free(&h);
    caldera_tensor_free(&wq); caldera_tensor_free(&wh); caldera_tensor_free(&w0);
    caldera_inst_free(q); caldera_inst_free(cb);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_null_h_is_codebook_rtn) {
    static const char * plugins[] = { "uniform", "e8" };
    for (int k = 0; k < 2; k++) {
        struct caldera_ctx * ctx = tu_ctx();
        struct caldera_inst * cb, * q;
        make(ctx, plugins[k], "bits", k == 0 ? "3" : "2", &cb, &q);
        ck_assert_int_eq(caldera_inst_start(q), 0);
        struct caldera_tensor w = tu_randn(ctx, 24, 128, 3), wq, wr, wd;
        struct caldera_pack * pq, * pr;
        ck_assert_int_eq(run_q(q, &w, NULL, &wq, &pq), 0);
        ck_assert_int_eq(run_q(cb, &w, NULL, &wr, &pr), 0);
        ck_assert_double_eq(tu_max_abs_diff(&wq, &wr), 0.0);
        ck_assert_msg(packs_equal(pq, pr), "%s: packs differ", plugins[k]);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 24, 128, &wd), 0);
        ck_assert_int_eq(caldera_quantizer_dequantize(q, pq, &wd), 0);
        ck_assert_double_eq(tu_max_abs_diff(&wd, &wq), 0.0);
        const struct caldera_quantizer_ops * qo = caldera_inst_plugin(q)->ops, * co = caldera_inst_plugin(cb)->ops;
        ck_assert_double_eq(qo->bits(q, 24, 128), co->bits(cb, 24, 128));
        caldera_pack_free(pq); caldera_pack_free(pr);
        caldera_tensor_free(&w); caldera_tensor_free(&wq); caldera_tensor_free(&wr); caldera_tensor_free(&wd);
        caldera_inst_free(q); caldera_inst_free(cb);
        caldera_ctx_free(ctx);
    }
}
END_TEST

START_TEST(test_beats_rtn) {
    static const char * plugins[] = { "uniform", "e8" };
    for (int k = 0; k < 2; k++) {
        struct caldera_ctx * ctx = tu_ctx();
        struct caldera_inst * cb, * q;
        make(ctx, plugins[k], "bits", k == 0 ? "3" : "2", &cb, &q);
        ck_assert_int_eq(caldera_inst_start(q), 0);
        double ratio = 0;
        for (uint64_t seed = 1; seed <= 3; seed++) {
            struct caldera_tensor w = tu_randn(ctx, 64, 256, 10 + seed), wq, wr;
            struct caldera_tensor h = tu_hessian(ctx, 256, 32, 0.01, 20 + seed);
            ck_assert_int_eq(run_q(q, &w, &h, &wq, NULL), 0);
            ck_assert_int_eq(run_q(cb, &w, NULL, &wr, NULL), 0);
            double lq = loss(ctx, &w, &wq, &h), lr = loss(ctx, &w, &wr, &h);
            ck_assert_msg(lq <= lr, "%s seed %d: ldlq %g > rtn %g", plugins[k], (int) seed, lq, lr);
            ratio += lq / lr / 3;
            caldera_tensor_free(&w); caldera_tensor_free(&wq); caldera_tensor_free(&wr); caldera_tensor_free(&h);
        }
        ck_assert_msg(ratio < RATIO_MAX, "%s: mean loss ratio %g", plugins[k], ratio);
        caldera_inst_free(q); caldera_inst_free(cb);
        caldera_ctx_free(ctx);
    }
}
END_TEST

// E8P (b = 8): the LDL loss identity, and tune passes monotone after every pass.
START_TEST(test_e8_tune_monotone) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * cb, * q;
    make(ctx, "e8", "bits", "2", &cb, &q);
    ck_assert_int_eq(caldera_inst_start(q), 0);
    struct caldera_tensor w = tu_randn(ctx, 32, 256, 5), h = tu_hessian(ctx, 256, 32, 0.01, 6);
    struct caldera_tensor hd = damped(ctx, &h, 0.01);
    double prev = INFINITY, first = 0, last = 0;
    for (int t = 0; t <= 4; t++) {
        char buf[8];
        snprintf(buf, sizeof(buf), "%d", t);
        ck_assert_int_eq(caldera_inst_set(q, "tune_iters", buf), 0);
        struct caldera_tensor wq;
        struct caldera_pack * pack;
        ck_assert_int_eq(run_q(q, &w, &h, &wq, &pack), 0);
        double l = loss(ctx, &w, &wq, &hd);
        if (t == 0) {
            double lm = 0;
            ck_assert_int_eq(caldera_meta_get_float(caldera_pack_meta(pack), "ldlq.loss_ldlq", &lm), 0);
            ck_assert_msg(fabs(lm - l) <= LOSS_TOL * l, "LDL loss %g vs direct %g", lm, l);
            first = l;
        }
        ck_assert_msg(l <= prev * (1 + TUNE_TOL), "pass %d: loss %g > previous %g", t, l, prev);
        // the codes written are those of the values returned (last pass)
        struct caldera_tensor wd;
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 32, 256, &wd), 0);
        ck_assert_int_eq(caldera_quantizer_dequantize(q, pack, &wd), 0);
        ck_assert_double_eq(tu_max_abs_diff(&wd, &wq), 0.0);
        last = prev = l;
        caldera_tensor_free(&wq); caldera_tensor_free(&wd);
        caldera_pack_free(pack);
    }
    ck_assert_msg(last < first, "tune passes changed nothing (%g)", first);
    caldera_tensor_free(&w); caldera_tensor_free(&h); caldera_tensor_free(&hd);
    caldera_inst_free(q); caldera_inst_free(cb);
    caldera_ctx_free(ctx);
}
END_TEST

// rht -> ldlq(e8) -> inverse: the proxy loss is the same in both domains, and the chain beats
// e8 RTN without the transform on a Hessian with strong correlations.
START_TEST(test_rht_chain) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * cb, * q, * t;
    make(ctx, "e8", "bits", "2", &cb, &q);
    ck_assert_int_eq(caldera_inst_start(q), 0);
    ck_assert_int_eq(caldera_inst_create(ctx, "rht", "rht", &t), 0);
    ck_assert_int_eq(caldera_inst_start(t), 0);
    const struct caldera_transform_ops * to = caldera_inst_plugin(t)->ops;
    struct caldera_tensor w = tu_randn(ctx, 48, 192, 8), h = tu_hessian(ctx, 192, 24, 0.01, 9), wt, ht, wqt, wq, wr;
    void * st = NULL;
    ck_assert_int_eq(to->forward(t, "layer.w", &w, &h, &wt, &ht, NULL, &st), 0);
    ck_assert_int_eq(run_q(q, &wt, &ht, &wqt, NULL), 0);
    ck_assert_int_eq(to->inverse(t, st, &wqt, &wq), 0);
    double lt = loss(ctx, &wt, &wqt, &ht), lo = loss(ctx, &w, &wq, &h);
    ck_assert_msg(fabs(lt - lo) <= LOSS_TOL * lo, "loss %g (transformed) vs %g (original)", lt, lo);
    ck_assert_int_eq(run_q(cb, &w, NULL, &wr, NULL), 0);
    ck_assert_msg(lo < loss(ctx, &w, &wr, &h), "rht+ldlq %g not better than e8 RTN", lo);
    to->free_state(t, st);
    caldera_tensor_free(&w); caldera_tensor_free(&h); caldera_tensor_free(&wt); caldera_tensor_free(&ht);
    caldera_tensor_free(&wqt); caldera_tensor_free(&wq); caldera_tensor_free(&wr);
    caldera_inst_free(t); caldera_inst_free(q); caldera_inst_free(cb);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_e8_shape_errors) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * cb, * q;
    make(ctx, "e8", NULL, NULL, &cb, &q);
    ck_assert_int_eq(caldera_inst_set(q, "buffer_cols", "100"), 0);
    ck_assert_int_eq(caldera_inst_start(q), CALDERA_ERR_RANGE);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "option 'buffer_cols' = 100 is not a multiple of the block size 8"));
    ck_assert_int_eq(caldera_inst_set(q, "buffer_cols", "96"), 0);
    ck_assert_int_eq(caldera_inst_start(q), 0);
    ck_assert_int_eq(caldera_inst_plugin(q)->check_shape(q, 4, 20), CALDERA_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "cols=20 is not a multiple of the block size 8"));
    caldera_inst_free(q); caldera_inst_free(cb);
    caldera_ctx_free(ctx);
}
END_TEST

// Textbook GPTQ (column by column, upper Cholesky of Hd⁻¹, double precision) rounding each column
// through the uniform plugin's own codebook ops, against ldlq over the same uniform instance.
// ldlq goes from the last column to the first, so the reference walks the columns backwards.
START_TEST(test_uniform_matches_gptq_reference) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * cb, * q;
    make(ctx, "uniform", "bits", "4", &cb, &q);
    ck_assert_int_eq(caldera_inst_start(q), 0);
    const struct caldera_quantizer_ops * cbo = caldera_inst_plugin(cb)->ops;
    const int64_t m = 10, n = 48;
    int64_t diff = 0;
    for (uint64_t seed = 1; seed <= 3; seed++) {
        struct caldera_tensor w = tu_randn(ctx, m, n, 40 + seed), h = tu_hessian(ctx, n, 12, 0.01, 50 + seed), wq;
        struct caldera_tensor hd = damped(ctx, &h, 0.01);
        ck_assert_int_eq(run_q(q, &w, &h, &wq, NULL), 0);
        // reversed-order Hd, its inverse (Gauss-Jordan) and the upper Cholesky factor U (inv = Uᵀ U)
        double * a = calloc((size_t) (n * n), sizeof(double)), * inv = calloc((size_t) (n * n), sizeof(double));
        double * u = calloc((size_t) (n * n), sizeof(double)), * x = calloc((size_t) (m * n), sizeof(double));
        for (int64_t i = 0; i < n; i++) {
            inv[i * n + i] = 1;
            for (int64_t j = 0; j < n; j++) a[i * n + j] = ((float *) hd.data)[(n - 1 - i) * n + (n - 1 - j)];
        }
        for (int64_t k = 0; k < n; k++) {
            double pv = a[k * n + k];
            for (int64_t j = 0; j < n; j++) { a[k * n + j] /= pv; inv[k * n + j] /= pv; }
            for (int64_t i = 0; i < n; i++) {
                if (i == k) continue;
                double f = a[i * n + k];
                for (int64_t j = 0; j < n; j++) { a[i * n + j] -= f * a[k * n + j]; inv[i * n + j] -= f * inv[k * n + j]; }
            }
        }
        for (int64_t i = 0; i < n; i++) {
            for (int64_t j = i; j < n; j++) {
                double sm = inv[i * n + j];
                for (int64_t k = 0; k < i; k++) sm -= u[k * n + i] * u[k * n + j];
                u[i * n + j] = i == j ? sqrt(sm) : sm / u[i * n + i];
            }
        }
        for (int64_t r = 0; r < m; r++)
            for (int64_t c = 0; c < n; c++) x[r * n + c] = ((float *) w.data)[r * n + (n - 1 - c)];
        struct caldera_cb_state * st = NULL;
        ck_assert_int_eq(cbo->cb_begin(cb, &w, &st), 0);
        float col[64], colq[64];
        for (int64_t i = 0; i < n; i++) {
            for (int64_t r = 0; r < m; r++) col[r] = (float) x[r * n + i];
            struct caldera_tensor ct = caldera_tensor_view_f32(col, m, 1), qt = caldera_tensor_view_f32(colq, m, 1);
            ck_assert_int_eq(cbo->cb_round(cb, st, n - 1 - i, &ct, &qt), 0);
            for (int64_t r = 0; r < m; r++) {
                double err = (x[r * n + i] - colq[r]) / u[i * n + i];
                x[r * n + i] = colq[r];
                for (int64_t j = i + 1; j < n; j++) x[r * n + j] -= err * u[i * n + j];
            }
        }
        cbo->cb_free(cb, st);
        for (int64_t r = 0; r < m; r++)
            for (int64_t c = 0; c < n; c++) diff += ((float *) wq.data)[r * n + c] != (float) x[r * n + (n - 1 - c)];
        free(a); free(inv); free(u); free(x);
        caldera_tensor_free(&w); caldera_tensor_free(&h); caldera_tensor_free(&hd); caldera_tensor_free(&wq);
    }
    ck_assert_msg(diff == 0, "%lld of %lld weights differ from the GPTQ reference", (long long) diff, (long long) (3 * m * n));
    caldera_inst_free(q); caldera_inst_free(cb);
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * ldlq_cb_suite(void) {
    Suite * s = suite_create("ldlq-codebooks");
    TCase * tc = tcase_create("codebooks");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_null_h_is_codebook_rtn);
    tcase_add_test(tc, test_uniform_clip_search_sees_h);
    tcase_add_test(tc, test_beats_rtn);
    tcase_add_test(tc, test_uniform_matches_gptq_reference);
    tcase_add_test(tc, test_e8_tune_monotone);
    tcase_add_test(tc, test_rht_chain);
    tcase_add_test(tc, test_e8_shape_errors);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(ldlq_cb_suite)
