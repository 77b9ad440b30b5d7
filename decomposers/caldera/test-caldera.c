// SPDX-License-Identifier: MIT
// caldera decomposer: the exact rank-constrained regression (full-precision factors, no Q) against
// an independent Jacobi eigen-solution in double; the closed-form L and R updates against SVD-based
// least squares; the trace-identity error against a direct one; the outer loop never ends above its
// first LR or first Q state and beats Q alone; bit-exact reconstruct; odd shapes; NaN; rank checks;
// target_bits; determinism.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "testutil.h"
#include "caldera/caldera-plugin.h"
// The plugin's internals (step_l, step_r, pair_error) are tested directly: include its source with
// the entry-point macro disabled (the plugin object itself is linked as a built-in too).
#undef CALDERA_PLUGIN_DEFINE
#define CALDERA_PLUGIN_DEFINE(d) __attribute__((unused)) static const void * test_unused_##d = &d;
#include "caldera.c"

#define EXACT_TOL    2e-4   // relative: f32 regression against the double-precision reference
#define LS_TOL       2e-4   // relative: closed-form updates against SVD least squares (f32)
#define TRACE_TOL    1e-3   // relative: trace-identity error² against the direct tr(E H Eᵀ)

// ---------------------------------------------------------------------------------------------
// Independent references in double precision

// The exact H-weighted rank-k regression of W (m×n): X = U_k U_kᵀ W, U_k the top-k eigenvectors
// of W H Wᵀ; returns the optimal error² = tr(W H Wᵀ) − Σ_top-k λ and fills x (m×n, double).
static double exact_regression(const float * w, const float * h, int64_t m, int64_t n, int64_t k, double * x) {
    double * s = calloc((size_t) (m * m), sizeof(double)), * v = calloc((size_t) (m * m), sizeof(double));
    double * ev = calloc((size_t) m, sizeof(double)), * wh = calloc((size_t) (m * n), sizeof(double));
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double acc = 0;
            for (int64_t l = 0; l < n; l++) acc += (double) w[i * n + l] * (h ? h[l * n + j] : (l == j));
            wh[i * n + j] = acc;
        }
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < m; j++) {
            double acc = 0;
            for (int64_t l = 0; l < n; l++) acc += wh[i * n + l] * w[j * n + l];
            s[i * m + j] = acc;
        }
    double tr = 0;
    for (int64_t i = 0; i < m; i++) tr += s[i * m + i];
    tu_jacobi(s, m, ev, v);
    int64_t * idx = calloc((size_t) m, sizeof(int64_t));
    for (int64_t i = 0; i < m; i++) idx[i] = i;
    for (int64_t i = 0; i < m; i++)   // sort descending
        for (int64_t j = i + 1; j < m; j++)
            if (ev[idx[j]] > ev[idx[i]]) { int64_t t = idx[i]; idx[i] = idx[j]; idx[j] = t; }
    double top = 0;
    for (int64_t c = 0; c < k; c++) top += ev[idx[c]];
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double acc = 0;
            for (int64_t c = 0; c < k; c++) {
                double ut = 0;   // (U_kᵀ W)[c, j]
                for (int64_t l = 0; l < m; l++) ut += v[l * m + idx[c]] * w[l * n + j];
                acc += v[i * m + idx[c]] * ut;
            }
            x[i * n + j] = acc;
        }
    free(s); free(v); free(ev); free(wh); free(idx);
    return tr - top;
}

// tr(E H Eᵀ) in double for E = A − B (m×n), H = NULL for I.
static double hnorm2(const float * a, const float * b, const float * h, int64_t m, int64_t n) {
    double s = 0;
    double * e = calloc((size_t) n, sizeof(double));
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) e[j] = (double) a[i * n + j] - (b ? b[i * n + j] : 0.0f);
        for (int64_t j = 0; j < n; j++) {
            double acc = 0;
            for (int64_t l = 0; l < n; l++) acc += e[l] * (h ? h[l * n + j] : (l == j));
            s += acc * e[j];
        }
    }
    free(e);
    return s;
}

// W = rank-r spike + noise (m×n).
static struct caldera_tensor lowrank_plus_noise(struct caldera_ctx * ctx, int64_t m, int64_t n, int64_t r, double noise,
                                                uint64_t seed) {
    struct caldera_tensor a = tu_randn(ctx, m, r, seed), b = tu_randn(ctx, r, n, seed + 1), w = tu_randn(ctx, m, n, seed + 2);
    float * wd = w.data;
    for (int64_t i = 0; i < m * n; i++) wd[i] *= (float) noise;
    ck_assert_int_eq(caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f / (float) r, &a, &b, 1.0f, &w), 0);
    caldera_tensor_free(&a);
    caldera_tensor_free(&b);
    return w;
}

// ---------------------------------------------------------------------------------------------
// Instances

struct setup {
    struct caldera_ctx *  ctx;
    struct caldera_inst * cal, * q, * qcb, * lq, * rq;
};

// Q = ldlq over qcb_plugin (bits qbits, "" = no Q); L, R by fac_plugin at fbits ("" = factor_dtype).
static void setup(struct setup * s, const char * qcb_plugin, int qbits, const char * fac_plugin, int fbits,
                  const char * const * kv) {
    char buf[16];
    memset(s, 0, sizeof(*s));
    s->ctx = tu_ctx();
    ck_assert_int_eq(caldera_inst_create(s->ctx, "caldera", "cal", &s->cal), 0);
    if (qcb_plugin[0]) {
        ck_assert_int_eq(caldera_inst_create(s->ctx, qcb_plugin, "qcb", &s->qcb), 0);
        snprintf(buf, sizeof(buf), "%d", qbits);
        ck_assert_int_eq(caldera_inst_set(s->qcb, "bits", buf), 0);
        ck_assert_int_eq(caldera_inst_start(s->qcb), 0);
        ck_assert_int_eq(caldera_inst_create(s->ctx, "ldlq", "q", &s->q), 0);
        ck_assert_int_eq(caldera_inst_set_ref(s->q, "codebook", s->qcb), 0);
        ck_assert_int_eq(caldera_inst_set(s->q, "tune_iters", "2"), 0);
        ck_assert_int_eq(caldera_inst_start(s->q), 0);
        ck_assert_int_eq(caldera_inst_set_ref(s->cal, "q", s->q), 0);
    }
    if (fac_plugin[0]) {
        snprintf(buf, sizeof(buf), "%d", fbits);
        ck_assert_int_eq(caldera_inst_create(s->ctx, fac_plugin, "lq", &s->lq), 0);
        ck_assert_int_eq(caldera_inst_set(s->lq, "bits", buf), 0);
        ck_assert_int_eq(caldera_inst_start(s->lq), 0);
        ck_assert_int_eq(caldera_inst_create(s->ctx, fac_plugin, "rq", &s->rq), 0);
        ck_assert_int_eq(caldera_inst_set(s->rq, "bits", buf), 0);
        ck_assert_int_eq(caldera_inst_start(s->rq), 0);
        ck_assert_int_eq(caldera_inst_set_ref(s->cal, "l_quant", s->lq), 0);
        ck_assert_int_eq(caldera_inst_set_ref(s->cal, "r_quant", s->rq), 0);
    }
    for (int i = 0; kv && kv[i]; i += 2) ck_assert_int_eq(caldera_inst_set(s->cal, kv[i], kv[i + 1]), 0);
}

static void teardown(struct setup * s) {
    caldera_inst_free(s->cal);
    caldera_inst_free(s->q);
    caldera_inst_free(s->qcb);
    caldera_inst_free(s->lq);
    caldera_inst_free(s->rq);
    caldera_ctx_free(s->ctx);
}

static int decompose(struct caldera_inst * cal, const struct caldera_tensor * w, const struct caldera_tensor * h,
                     struct caldera_tensor * w_hat, struct caldera_pack ** pack_out) {
    const struct caldera_decomposer_ops * ops = caldera_inst_plugin(cal)->ops;
    struct caldera_pack * pack = NULL;
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(caldera_inst_ctx(cal), w->ne[0], w->ne[1], w_hat), 0);
    int rc = ops->decompose(cal, w, h, w_hat, pack);
    if (pack_out) *pack_out = pack;
    else caldera_pack_free(pack);
    return rc;
}

// reconstruct(pack) must equal w_hat bit for bit.
static void check_roundtrip(struct caldera_inst * cal, struct caldera_pack * pack, const struct caldera_tensor * w_hat) {
    const struct caldera_decomposer_ops * ops = caldera_inst_plugin(cal)->ops;
    struct caldera_tensor chk;
    ck_assert_int_eq(caldera_tensor_alloc_f32(caldera_inst_ctx(cal), w_hat->ne[0], w_hat->ne[1], &chk), 0);
    ck_assert_int_eq(ops->reconstruct(cal, pack, &chk), 0);
    ck_assert_int_eq(memcmp(chk.data, w_hat->data, (size_t) (w_hat->ne[0] * w_hat->ne[1]) * sizeof(float)), 0);
    caldera_tensor_free(&chk);
}

static double meta_f(struct caldera_pack * pack, const char * key) {
    double v = NAN;
    ck_assert_int_eq(caldera_meta_get_float(caldera_pack_meta(pack), key, &v), 0);
    return v;
}

// ---------------------------------------------------------------------------------------------

// Full-precision (f32) factors and no Q: the result is the exact H-weighted rank-k regression,
// for m < n and m > n (the two start paths), with and without H.
START_TEST(test_exact_regression) {
    static const int64_t shapes[][3] = { { 12, 20, 3 }, { 20, 12, 4 }, { 16, 16, 16 } };
    for (int si = 0; si < 3; si++) {
        for (int with_h = 0; with_h < 2; with_h++) {
            const int64_t m = shapes[si][0], n = shapes[si][1], k = shapes[si][2];
            char rank[8];
            snprintf(rank, sizeof(rank), "%d", (int) k);
            const char * kv[] = { "rank", rank, "factor_dtype", "f32", NULL };
            struct setup s;
            setup(&s, "", 0, "", 0, kv);
            ck_assert_int_eq(caldera_inst_start(s.cal), 0);
            struct caldera_tensor w = lowrank_plus_noise(s.ctx, m, n, 5, 0.3, 10 + si);
            struct caldera_tensor h = tu_hessian(s.ctx, n, n / 2, 0.05, 20 + si), wh;
            struct caldera_pack * pack;
            ck_assert_int_eq(decompose(s.cal, &w, with_h ? &h : NULL, &wh, &pack), 0);
            double * x = calloc((size_t) (m * n), sizeof(double));
            double opt = exact_regression(w.data, with_h ? h.data : NULL, m, n, k, x);
            double d = 0, nx = 0;
            for (int64_t i = 0; i < m * n; i++) {
                d += (x[i] - ((float *) wh.data)[i]) * (x[i] - ((float *) wh.data)[i]);
                nx += x[i] * x[i];
            }
            double got = hnorm2(w.data, wh.data, with_h ? h.data : NULL, m, n);
            double tot = hnorm2(w.data, NULL, with_h ? h.data : NULL, m, n);
            ck_assert_msg(sqrt(d / nx) < EXACT_TOL, "shape %d h %d: |X - X*|/|X*| = %g", si, with_h, sqrt(d / nx));
            ck_assert_msg(fabs(got - opt) <= EXACT_TOL * tot, "shape %d h %d: error² %g vs optimum %g", si, with_h, got, opt);
            if (k == 16) ck_assert(got <= 1e-8 * tot);   // full rank: exact
            check_roundtrip(s.cal, pack, &wh);
            free(x);
            caldera_pack_free(pack);
            caldera_tensor_free(&w);
            caldera_tensor_free(&h);
            caldera_tensor_free(&wh);
            teardown(&s);
        }
    }
}
END_TEST

// The closed-form updates equal SVD-based least squares: L = argmin ‖(Res − L R) H½‖ and
// R = argmin ‖Res − L R‖ (= argmin ‖(Res − L R) H½‖); pair_error equals the direct tr(E H Eᵀ).
// Twice: with BLAS products, and with every rank-k product by thin_gemm (thin_min = 0, so that
// these small shapes take it: 4 rows padded to 8, 14 and 18 columns in masked panels).
START_TEST(test_closed_form_updates) {
    const int64_t m = 14, n = 18, k = 4;
    const int thin = _i;
    const char * kv[] = { "rank", "4", NULL };
    struct setup s;
    setup(&s, "", 0, "", 0, kv);
    ck_assert_int_eq(caldera_inst_start(s.cal), 0);
    struct caldera_tensor res = tu_randn(s.ctx, m, n, 3), r = tu_randn(s.ctx, k, n, 4), l0 = tu_randn(s.ctx, m, k, 5);
    struct caldera_tensor h = tu_hessian(s.ctx, n, 9, 0.05, 6);
    struct cal_work wk = { .inst = s.cal, .ctx = s.ctx, .p = caldera_inst_priv(s.cal), .m = m, .n = n, .k = k, .h = h.data };
    float * buf[13];
    for (int i = 0; i < 13; i++) buf[i] = calloc((size_t) (m * n), sizeof(float));
    wk.res = buf[0]; wk.pm = buf[1]; wk.rh = buf[2]; wk.g = buf[3]; wk.at = buf[4]; wk.c = buf[5];
    wk.lt = buf[6]; wk.l = buf[7]; wk.r = buf[8];
    if (thin) {
        wk.thin = 1;
        wk.thin_min = 0.0;
        wk.kern = thin_gemm_best();
        wk.pt = buf[11];
        wk.xp = buf[12];   // (max(m, n), 8) fits in m·n
    }
    float * tmp = buf[9];
    memcpy(wk.res, res.data, (size_t) (m * n) * sizeof(float));
    ck_assert_int_eq(mul_h(&wk, wk.res, m, wk.pm), 0);
    refresh_pt(&wk);
    double c0 = dot(wk.res, wk.pm, m * n), e2;
    // pair_error of (l0, r) against the direct trace
    ck_assert_int_eq(pair_error(&wk, l0.data, r.data, c0, &e2), 0);
    float * lr = buf[10];
    struct caldera_tensor lrt = caldera_tensor_view_f32(lr, m, n);
    ck_assert_int_eq(caldera_linalg_gemm(s.ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &l0, &r, 0.0f, &lrt), 0);
    double direct = hnorm2(wk.res, lr, h.data, m, n);
    ck_assert_msg(fabs(e2 - direct) <= TRACE_TOL * direct, "trace identity %g vs direct %g", e2, direct);
    // L-step vs lstsq((R F)ᵀ, (Res F)ᵀ) with F = chol(H)
    ck_assert_int_eq(step_l(&wk, tmp), 0);
    struct caldera_tensor f, rf, resf, rft, resft, lref, rref;
    ck_assert_int_eq(caldera_tensor_alloc_f32(s.ctx, n, n, &f), 0);
    ck_assert_int_eq(caldera_tensor_copy(s.ctx, &f, &h), 0);
    ck_assert_int_eq(caldera_linalg_cholesky(s.ctx, &f), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(s.ctx, k, n, &rf), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(s.ctx, m, n, &resf), 0);
    ck_assert_int_eq(caldera_linalg_gemm(s.ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &r, &f, 0.0f, &rf), 0);
    ck_assert_int_eq(caldera_linalg_gemm(s.ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &res, &f, 0.0f, &resf), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(s.ctx, n, k, &rft), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(s.ctx, n, m, &resft), 0);
    for (int64_t i = 0; i < k; i++) for (int64_t j = 0; j < n; j++) ((float *) rft.data)[j * k + i] = ((float *) rf.data)[i * n + j];
    for (int64_t i = 0; i < m; i++) for (int64_t j = 0; j < n; j++) ((float *) resft.data)[j * m + i] = ((float *) resf.data)[i * n + j];
    ck_assert_int_eq(caldera_tensor_alloc_f32(s.ctx, k, m, &lref), 0);
    ck_assert_int_eq(caldera_linalg_lstsq(s.ctx, &rft, &resft, &lref), 0);   // Lᵀ
    double d = 0, nr = 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < k; j++) {
            double a = wk.l[i * k + j], b = ((float *) lref.data)[j * m + i];
            d += (a - b) * (a - b);
            nr += b * b;
        }
    ck_assert_msg(sqrt(d / nr) < LS_TOL, "L-step vs lstsq: %g", sqrt(d / nr));
    // R-step vs lstsq(L, Res), and vs the H-weighted lstsq(L, Res F) F⁻¹ (same minimiser)
    ck_assert_int_eq(step_r(&wk, l0.data, tmp), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(s.ctx, k, n, &rref), 0);
    ck_assert_int_eq(caldera_linalg_lstsq(s.ctx, &l0, &res, &rref), 0);
    d = 0, nr = 0;
    for (int64_t i = 0; i < k * n; i++) {
        double a = wk.r[i], b = ((float *) rref.data)[i];
        d += (a - b) * (a - b);
        nr += b * b;
    }
    ck_assert_msg(sqrt(d / nr) < LS_TOL, "R-step vs lstsq: %g", sqrt(d / nr));
    for (int i = 0; i < 13; i++) free(buf[i]);
    struct caldera_tensor * ts[] = { &res, &r, &l0, &h, &f, &rf, &resf, &rft, &resft, &lref, &rref };
    for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]); i++) caldera_tensor_free(ts[i]);
    teardown(&s);
}
END_TEST

// The outer loop on low rank + noise with a real-like H: the final error is never above the first
// LR-only state nor the first Q + LR state, the stored error is the true one, Q + LR beats Q alone
// (ldlq over the same codebook) by a margin, and reconstruct is bit-exact. Factor quantizers: e8
// 4-bit and uniform 4-bit; downdate and warm start on and off.
START_TEST(test_outer_loop_never_worse) {
    const int64_t m = 32, n = 48;
    for (int cfg = 0; cfg < 4; cfg++) {
        const char * fac = cfg % 2 ? "uniform" : "e8";
        const char * kv[] = { "rank", "6", "outer_iters", "4", "inner_iters", "10", "downdate", cfg < 2 ? "1" : "0",
                              "warm_start", cfg < 2 ? "0" : "1", NULL };
        struct setup s;
        setup(&s, "e8", 2, fac, 4, kv);
        ck_assert_int_eq(caldera_inst_start(s.cal), 0);
        struct caldera_tensor w = lowrank_plus_noise(s.ctx, m, n, 6, 0.05, 30 + cfg);
        struct caldera_tensor h = tu_hessian(s.ctx, n, 20, 0.02, 40 + cfg), wh, qh;
        struct caldera_pack * pack;
        ck_assert_int_eq(decompose(s.cal, &w, &h, &wh, &pack), 0);
        double best = meta_f(pack, "caldera.rel_err_h"), flr = meta_f(pack, "caldera.rel_err_h_first_lr");
        double fq = meta_f(pack, "caldera.rel_err_h_first_q");
        ck_assert_msg(best <= flr && best <= fq, "cfg %d: best %g, first LR %g, first Q %g", cfg, best, flr, fq);
        double tot = hnorm2(w.data, NULL, h.data, m, n), got = sqrt(hnorm2(w.data, wh.data, h.data, m, n) / tot);
        ck_assert_msg(fabs(got - best) <= TRACE_TOL * best + 1e-6, "cfg %d: stored %g, true %g", cfg, best, got);
        ck_assert_int_eq(caldera_tensor_alloc_f32(s.ctx, m, n, &qh), 0);
        struct caldera_pack * qp;
        ck_assert_int_eq(caldera_pack_init(&qp), 0);
        ck_assert_int_eq(caldera_quantizer_quantize(s.q, &w, &h, &qh, qp), 0);
        double qonly = sqrt(hnorm2(w.data, qh.data, h.data, m, n) / tot);
        ck_assert_msg(got < 0.5 * qonly, "cfg %d: caldera %g vs Q alone %g", cfg, got, qonly);
        check_roundtrip(s.cal, pack, &wh);
        caldera_pack_free(qp);
        caldera_pack_free(pack);
        caldera_tensor_free(&qh);
        caldera_tensor_free(&w);
        caldera_tensor_free(&h);
        caldera_tensor_free(&wh);
        teardown(&s);
    }
}
END_TEST

// Bit-exact round trip and names of the pack for every storage variant, odd shapes included
// (uniform codebooks take any shape; e8 needs multiples of 8).
START_TEST(test_roundtrip_variants) {
    struct { const char * q; const char * fac; int64_t m, n; const char * rank, * dtype, * gs; } v[] = {
        { "e8", "e8", 24, 40, "5", "f16", "1" },
        { "uniform", "uniform", 37, 29, "5", "f16", "1" },
        { "uniform", "", 37, 29, "7", "f16", "0" },
        { "uniform", "", 29, 37, "3", "f32", "1" },
        { "", "uniform", 23, 31, "4", "f16", "1" },
        { "uniform", "uniform", 19, 21, "0", "f16", "1" },
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        const char * kv[] = { "rank", v[i].rank, "factor_dtype", v[i].dtype, "global_scale", v[i].gs, "outer_iters", "3",
                              "inner_iters", "5", NULL };
        struct setup s;
        setup(&s, v[i].q, 2, v[i].fac, 4, kv);
        ck_assert_int_eq(caldera_inst_start(s.cal), 0);
        struct caldera_tensor w = lowrank_plus_noise(s.ctx, v[i].m, v[i].n, 3, 0.3, 50 + i);
        struct caldera_tensor h = tu_hessian(s.ctx, v[i].n, 12, 0.05, 60 + i), wh;
        struct caldera_pack * pack;
        ck_assert_int_eq(decompose(s.cal, &w, &h, &wh, &pack), 0);
        check_roundtrip(s.cal, pack, &wh);
        struct caldera_tensor t;
        ck_assert_int_eq(caldera_pack_find(pack, "rank", &t), 0);
        ck_assert_int_eq(*(int32_t *) t.data, atoi(v[i].rank));
        ck_assert_int_eq(caldera_pack_find(pack, "global_scale", &t) == 0, v[i].gs[0] == '1');
        if (atoi(v[i].rank) > 0 && !v[i].fac[0]) {
            ck_assert_int_eq(caldera_pack_find(pack, "L.values", &t), 0);
            ck_assert_int_eq(t.dtype, v[i].dtype[1] == '1' ? CALDERA_DTYPE_F16 : CALDERA_DTYPE_F32);
            ck_assert(t.ne[0] == v[i].m && t.ne[1] == atoi(v[i].rank));
        }
        if (v[i].q[0]) ck_assert_int_eq(caldera_pack_find(pack, "Q.codes", &t), 0);
        // a corrupted pack is refused
        ck_assert_int_eq(caldera_pack_find(pack, "rank", &t), 0);
        *(int32_t *) t.data = 1000;
        ck_assert_int_eq(((const struct caldera_decomposer_ops *) caldera_inst_plugin(s.cal)->ops)->reconstruct(s.cal, pack, &wh),
                         CALDERA_ERR_FORMAT);
        caldera_pack_free(pack);
        caldera_tensor_free(&w);
        caldera_tensor_free(&h);
        caldera_tensor_free(&wh);
        teardown(&s);
    }
}
END_TEST

START_TEST(test_errors) {
    const char * kv[] = { "rank", "10", NULL };
    struct setup s;
    setup(&s, "e8", 2, "e8", 4, kv);
    ck_assert_int_eq(caldera_inst_start(s.cal), 0);
    const struct caldera_plugin * pl = caldera_inst_plugin(s.cal);
    // rank > min(rows, cols) refused at check time
    ck_assert_int_eq(pl->check_shape(s.cal, 16, 8), CALDERA_ERR_RANGE);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(s.ctx), "rank = 10 exceeds min(rows, cols) = 8 of a 16x8 weight; allowed: rank <= 8"));
    // e8 factors need rows % 8 (L is quantized as Lᵀ, rank x rows)
    ck_assert_int_lt(pl->check_shape(s.cal, 20, 16), 0);
    ck_assert_int_eq(pl->check_shape(s.cal, 24, 16), 0);
    // NaN in W
    struct caldera_tensor w = tu_randn(s.ctx, 24, 16, 1), wh;
    ((float *) w.data)[5 * 16 + 3] = NAN;
    ck_assert_int_eq(decompose(s.cal, &w, NULL, &wh, NULL), CALDERA_ERR_NUMERIC);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(s.ctx), "(5, 3)"));
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    teardown(&s);
    // nothing to store
    const char * kv0[] = { "rank", "0", NULL };
    setup(&s, "", 0, "", 0, kv0);
    ck_assert_int_eq(caldera_inst_start(s.cal), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(s.ctx), "leaves nothing to store"));
    teardown(&s);
    // target_bits below Q's own bits
    const char * kvt[] = { "target_bits", "1.5", NULL };
    setup(&s, "e8", 2, "e8", 4, kvt);
    ck_assert_int_eq(caldera_inst_start(s.cal), 0);
    ck_assert_int_eq(caldera_inst_plugin(s.cal)->check_shape(s.cal, 64, 64), CALDERA_ERR_RANGE);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(s.ctx), "target_bits = 1.5 is below"));
    teardown(&s);
}
END_TEST

// target_bits: the rank is the largest that keeps the pack at or below the budget.
START_TEST(test_target_bits) {
    const char * kv[] = { "target_bits", "2.4", "outer_iters", "2", "inner_iters", "3", NULL };
    struct setup s;
    setup(&s, "e8", 2, "e8", 4, kv);
    ck_assert_int_eq(caldera_inst_start(s.cal), 0);
    const int64_t m = 64, n = 96;
    struct caldera_tensor w = lowrank_plus_noise(s.ctx, m, n, 4, 0.3, 70), wh;
    struct caldera_pack * pack;
    ck_assert_int_eq(decompose(s.cal, &w, NULL, &wh, &pack), 0);
    struct caldera_tensor t;
    ck_assert_int_eq(caldera_pack_find(pack, "rank", &t), 0);
    int64_t k = *(int32_t *) t.data;
    // bits: Q 2·m·n + 16, L 4·k·m + 16, R 4·k·n + 16, rank 32, global scale 32
    double bits = (double) caldera_pack_bits(pack);
    ck_assert_double_eq(bits, 2.0 * m * n + 4.0 * k * (m + n) + 3 * 16 + 64);
    ck_assert(bits <= 2.4 * m * n);
    ck_assert(bits + 4.0 * (m + n) > 2.4 * m * n);   // one more rank would not fit
    ck_assert_int_eq(k, 3);   // (0.4·64·96 − 112) / (4·160) = 3.66
    check_roundtrip(s.cal, pack, &wh);
    caldera_pack_free(pack);
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    teardown(&s);
}
END_TEST

// Same input, same bytes (and for 1 and 2 threads the same error within rounding).
START_TEST(test_determinism) {
    const char * kv[] = { "rank", "4", "outer_iters", "20", "inner_iters", "6", NULL };
    struct caldera_pack * packs[2];
    struct caldera_tensor whs[2];
    for (int rep = 0; rep < 2; rep++) {
        struct setup s;
        setup(&s, "e8", 2, "uniform", 4, kv);
        ck_assert_int_eq(caldera_inst_start(s.cal), 0);
        struct caldera_tensor w = lowrank_plus_noise(s.ctx, 32, 40, 4, 0.3, 80);
        struct caldera_tensor h = tu_hessian(s.ctx, 40, 16, 0.05, 81);
        ck_assert_int_eq(decompose(s.cal, &w, &h, &whs[rep], &packs[rep]), 0);
        caldera_tensor_free(&w);
        caldera_tensor_free(&h);
        teardown(&s);
    }
    ck_assert_int_eq(caldera_pack_count(packs[0]), caldera_pack_count(packs[1]));
    for (int64_t i = 0; i < caldera_pack_count(packs[0]); i++) {
        struct caldera_tensor a, b;
        ck_assert_str_eq(caldera_pack_name(packs[0], i), caldera_pack_name(packs[1], i));
        caldera_pack_get(packs[0], i, &a);
        caldera_pack_get(packs[1], i, &b);
        size_t na = 0;
        caldera_dtype_nbytes(a.dtype, caldera_tensor_nelements(&a), &na);
        ck_assert_int_eq(memcmp(a.data, b.data, na), 0);
    }
    ck_assert_int_eq(memcmp(whs[0].data, whs[1].data, 32 * 40 * sizeof(float)), 0);
    // the outer loop's fixed-point stop: when it stopped after N outer iterations, asking for N
    // gives the same bytes as asking for 20
    int64_t nrun = 0;
    ck_assert_int_eq(caldera_meta_get_int(caldera_pack_meta(packs[0]), "caldera.outer_iters_run", &nrun), 0);
    ck_assert(nrun >= 1 && nrun < 3);
    char nb[8];
    snprintf(nb, sizeof(nb), "%d", (int) nrun);
    const char * kvn[] = { "rank", "4", "outer_iters", nb, "inner_iters", "6", NULL };
    struct setup s;
    setup(&s, "e8", 2, "uniform", 4, kvn);
    ck_assert_int_eq(caldera_inst_start(s.cal), 0);
    struct caldera_tensor w = lowrank_plus_noise(s.ctx, 32, 40, 4, 0.3, 80), wn;
    struct caldera_tensor h = tu_hessian(s.ctx, 40, 16, 0.05, 81);
    struct caldera_pack * pn;
    ck_assert_int_eq(decompose(s.cal, &w, &h, &wn, &pn), 0);
    ck_assert_int_eq(memcmp(whs[0].data, wn.data, 32 * 40 * sizeof(float)), 0);
    caldera_pack_free(pn);
    caldera_tensor_free(&wn);
    caldera_tensor_free(&w);
    caldera_tensor_free(&h);
    teardown(&s);
    for (int rep = 0; rep < 2; rep++) {
        caldera_pack_free(packs[rep]);
        caldera_tensor_free(&whs[rep]);
    }
}
END_TEST

// Every allocation failure inside decompose is CALDERA_ERR_NOMEM (no leak under ASan).
START_TEST(test_oom_sweep) {
    const char * kv[] = { "rank", "3", "outer_iters", "2", "inner_iters", "2", NULL };
    struct setup s;
    setup(&s, "uniform", 2, "uniform", 4, kv);
    ck_assert_int_eq(caldera_inst_start(s.cal), 0);
    struct caldera_tensor w = lowrank_plus_noise(s.ctx, 12, 16, 3, 0.3, 90), wh;
    struct caldera_tensor h = tu_hessian(s.ctx, 16, 8, 0.05, 91);
    ck_assert_int_eq(caldera_tensor_alloc_f32(s.ctx, 12, 16, &wh), 0);
    const struct caldera_decomposer_ops * ops = caldera_inst_plugin(s.cal)->ops;
    int fails = 0;
    for (int64_t k = 1; k < 5000; k++) {
        struct caldera_pack * pack = NULL;
        ck_assert_int_eq(caldera_pack_init(&pack), 0);
        caldera_alloc_fail_at(k);
        int rc = ops->decompose(s.cal, &w, &h, &wh, pack);
        caldera_alloc_fail_at(0);
        caldera_pack_free(pack);
        if (rc == 0) break;
        ck_assert_int_eq(rc, CALDERA_ERR_NOMEM);
        fails++;
    }
    ck_assert_int_ge(fails, 20);
    caldera_tensor_free(&w);
    caldera_tensor_free(&h);
    caldera_tensor_free(&wh);
    teardown(&s);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// thin-gemm.c: the kernels against double-precision references, against each other (the same
// bits by construction), and against OpenBLAS where its sgemm/strsm have the blocks they repeat.

#define THIN_TOL  2e-5   // |C − C_ref| / Σ_p |x_p b_p|: f32 sums in blocks of <= 320 (about 320 u)
#define SOLVE_TOL 1e-4   // relative error of X against the double solve (G well conditioned)

char * openblas_get_corename(void);   // OpenBLAS (the core's BLAS)

// OpenBLAS's blocked sgemm and its strsm kernels are the ones thin-gemm.c repeats on these cores.
static int blas_blocks_known(void) {
    const char * c = openblas_get_corename();
    return c && (strcasecmp(c, "Cooperlake") == 0 || strcasecmp(c, "SkylakeX") == 0);
}

static float urand(uint64_t * st) {
    *st = *st * 6364136223846793005ull + 1442695040888963407ull;
    return (float) ((double) (*st >> 40) / (double) (1ull << 24)) - 0.5f;
}

START_TEST(test_thin_gemm) {
    // BLAS on one thread (as in a pipeline's compress phase): threaded OpenBLAS halves a K
    // remainder of 321..639 without rounding to 16 (the same blocks for SmolLM2's 192, 576, 1536)
    struct caldera_ctx * ctx = tu_ctx(), * ctx2 = tu_ctx();
    caldera_ctx_set_threads(ctx2, 2);
    caldera_ctx_set_threads(ctx, 1);   // last: BLAS's thread count is the process's
    const int known = blas_blocks_known();
    const enum thin_gemm_kernel best = thin_gemm_best();
    // (r, N, K): padded and whole row tiles, masked and whole panels, one and several K blocks
    // (320; 321..639 halved; 700 = 320 + 2 × 190; 1536 = 3 × 320 + 2 × 288); the last four are
    // at least THIN_GEMM_MIN_MNK, CALDERA's 576 × 576 rank-32 products among them
    static const int64_t shapes[][3] = { { 1, 1, 1 }, { 4, 17, 7 }, { 13, 100, 320 }, { 9, 48, 321 }, { 3, 5, 700 },
                                         { 32, 576, 576 }, { 13, 1536, 576 }, { 32, 192, 1536 }, { 8, 1000, 1000 } };
    uint64_t st = 7;
    for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
        const int64_t r = shapes[si][0], n = shapes[si][1], kd = shapes[si][2], r8 = thin_gemm_r8(r);
        for (int trans = 0; trans < 2; trans++) {
            const int64_t ldx = trans ? kd + 3 : r + 2, ldb = n + 5;   // padded leading dimensions
            float * x = calloc((size_t) ((trans ? r : kd) * ldx), sizeof(float));
            float * b = calloc((size_t) (kd * ldb), sizeof(float));
            float * xp = calloc((size_t) (kd * r8), sizeof(float));
            float * c[3], * cb = calloc((size_t) (r * n), sizeof(float));
            for (int64_t i = 0; i < (trans ? r : kd) * ldx; i++) x[i] = urand(&st);
            for (int64_t i = 0; i < kd * ldb; i++) b[i] = urand(&st);
            thin_gemm_pack(trans, kd, r, x, ldx, xp);
            for (int kern = 0; kern <= (int) best; kern++) {
                c[kern] = calloc((size_t) (r * (n + 1)), sizeof(float));
                thin_gemm(kern == (int) best ? ctx2 : NULL, kern, kd, r, n, xp, b, ldb, c[kern], n + 1);   // panels on 2 threads
            }
            double worst = 0;
            for (int64_t i = 0; i < r; i++) {
                for (int64_t j = 0; j < n; j++) {
                    double ref = 0, mag = 0;
                    for (int64_t p = 0; p < kd; p++) {
                        double xv = trans ? x[i * ldx + p] : x[p * ldx + i];
                        ref += xv * b[p * ldb + j];
                        mag += fabs(xv * b[p * ldb + j]);
                    }
                    double e = fabs(c[0][i * (n + 1) + j] - ref) / (mag > 0 ? mag : 1);
                    worst = e > worst ? e : worst;
                }
            }
            ck_assert_msg(worst < THIN_TOL, "r %d N %d K %d trans %d: error %g", (int) r, (int) n, (int) kd, trans, worst);
            for (int kern = 1; kern <= (int) best; kern++) {
                for (int64_t i = 0; i < r; i++) {
                    ck_assert_msg(memcmp(c[kern] + i * (n + 1), c[0] + i * (n + 1), (size_t) n * sizeof(float)) == 0,
                                  "kernel %d differs from the scalar one (r %d N %d K %d)", kern, (int) r, (int) n, (int) kd);
                }
            }
            if (known && (double) r * (double) n * (double) kd >= THIN_GEMM_MIN_MNK) {
                // the same product through cblas: C = op(X)ᵀ-as-stored · B
                struct caldera_tensor xt = { .data = x, .dtype = CALDERA_DTYPE_F32, .ndim = 2,
                                             .ne = { trans ? r : kd, trans ? kd : r }, .ld = ldx };
                struct caldera_tensor bt = { .data = b, .dtype = CALDERA_DTYPE_F32, .ndim = 2, .ne = { kd, n }, .ld = ldb };
                struct caldera_tensor ct = caldera_tensor_view_f32(cb, r, n);
                ck_assert_int_eq(caldera_linalg_gemm(ctx, trans ? CALDERA_NO_TRANS : CALDERA_TRANS, CALDERA_NO_TRANS, 1.0f,
                                                     &xt, &bt, 0.0f, &ct), 0);
                for (int64_t i = 0; i < r; i++) {
                    ck_assert_msg(memcmp(c[0] + i * (n + 1), cb + i * n, (size_t) n * sizeof(float)) == 0,
                                  "r %d N %d K %d trans %d: not OpenBLAS's bits", (int) r, (int) n, (int) kd, trans);
                }
            }
            for (int kern = 0; kern <= (int) best; kern++) free(c[kern]);
            free(x); free(b); free(xp); free(cb);
        }
    }
    if (!known) {
        fprintf(stderr, "test_thin_gemm: BLAS core '%s': identity with its sgemm not checked\n", openblas_get_corename());
    }
    caldera_ctx_free(ctx);
    caldera_ctx_free(ctx2);
}
END_TEST

START_TEST(test_thin_chol_solve) {
    struct caldera_ctx * ctx = tu_ctx();
    caldera_ctx_set_threads(ctx, 1);
    const int known = blas_blocks_known();
    const enum thin_gemm_kernel best = thin_gemm_best();
    static const int64_t ks[] = { 1, 3, 16, 17, 32, 45, 100, 320 };
    static const int64_t colss[] = { 1, 15, 16, 33, 576 };
    uint64_t st = 11;
    for (size_t ki = 0; ki < sizeof(ks) / sizeof(ks[0]); ki++) {
        for (size_t ci = 0; ci < sizeof(colss) / sizeof(colss[0]); ci++) {
            const int64_t k = ks[ki], cols = colss[ci], ldb = cols + 3;
            if (k == 320 && cols != 33) continue;   // the largest block once is enough
            float * a = calloc((size_t) (k * k), sizeof(float)), * g = calloc((size_t) (k * k), sizeof(float));
            float * lf = calloc((size_t) (k * k), sizeof(float)), * b = calloc((size_t) (k * ldb), sizeof(float));
            float * x[3], * xb = calloc((size_t) (k * ldb), sizeof(float));
            for (int64_t i = 0; i < k * k; i++) a[i] = urand(&st);
            for (int64_t i = 0; i < k; i++)   // G = A Aᵀ + k/4 I: SPD, condition number a few dozen
                for (int64_t j = 0; j < k; j++) {
                    double acc = i == j ? 0.25 * (double) k : 0.0;
                    for (int64_t p = 0; p < k; p++) acc += (double) a[i * k + p] * a[j * k + p];
                    g[i * k + j] = (float) acc;
                }
            for (int64_t i = 0; i < k * ldb; i++) b[i] = urand(&st);
            memcpy(lf, g, (size_t) (k * k) * sizeof(float));
            struct caldera_tensor lt = caldera_tensor_view_f32(lf, k, k);
            ck_assert_int_eq(caldera_linalg_cholesky(ctx, &lt), 0);
            for (int kern = 0; kern <= (int) best; kern++) {
                x[kern] = malloc((size_t) (k * ldb) * sizeof(float));
                memcpy(x[kern], b, (size_t) (k * ldb) * sizeof(float));
                thin_chol_solve(kern, k, lf, x[kern], ldb, cols);
            }
            // against the double-precision solution of G X = B (Gaussian elimination, G SPD)
            double * gd = calloc((size_t) (k * k), sizeof(double)), * y = calloc((size_t) k, sizeof(double));
            double worst = 0;
            for (int64_t i = 0; i < k * k; i++) gd[i] = g[i];
            for (int64_t p = 0; p < k; p++)   // LU without pivoting, multipliers below the diagonal
                for (int64_t i = p + 1; i < k; i++) {
                    double f = gd[i * k + p] / gd[p * k + p];
                    for (int64_t q = p + 1; q < k; q++) gd[i * k + q] -= f * gd[p * k + q];
                    gd[i * k + p] = f;
                }
            for (int64_t j = 0; j < cols; j++) {
                for (int64_t i = 0; i < k; i++) y[i] = b[i * ldb + j];
                for (int64_t i = 1; i < k; i++)
                    for (int64_t p = 0; p < i; p++) y[i] -= gd[i * k + p] * y[p];
                for (int64_t i = k - 1; i >= 0; i--) {
                    for (int64_t q = i + 1; q < k; q++) y[i] -= gd[i * k + q] * y[q];
                    y[i] /= gd[i * k + i];
                }
                double d = 0, nx = 0;
                for (int64_t i = 0; i < k; i++) {
                    d += (x[0][i * ldb + j] - y[i]) * (x[0][i * ldb + j] - y[i]);
                    nx += y[i] * y[i];
                }
                worst = fmax(worst, sqrt(d / nx));
            }
            ck_assert_msg(worst < SOLVE_TOL, "k %d cols %d: relative error %g", (int) k, (int) cols, worst);
            for (int kern = 1; kern <= (int) best; kern++) {
                for (int64_t i = 0; i < k; i++) {
                    ck_assert_msg(memcmp(x[kern] + i * ldb, x[0] + i * ldb, (size_t) cols * sizeof(float)) == 0,
                                  "kernel %d differs from the scalar one (k %d cols %d)", kern, (int) k, (int) cols);
                }
            }
            if (known) {   // LAPACKE_spotrs through the core, from the same G
                memcpy(xb, b, (size_t) (k * ldb) * sizeof(float));
                struct caldera_tensor gt = caldera_tensor_view_f32(g, k, k);
                struct caldera_tensor bt = { .data = xb, .dtype = CALDERA_DTYPE_F32, .ndim = 2, .ne = { k, cols }, .ld = ldb };
                ck_assert_int_eq(caldera_linalg_spd_solve(ctx, &gt, &bt), 0);
                for (int64_t i = 0; i < k; i++) {
                    ck_assert_msg(memcmp(x[0] + i * ldb, xb + i * ldb, (size_t) cols * sizeof(float)) == 0,
                                  "k %d cols %d: not LAPACKE_spotrs's bits", (int) k, (int) cols);
                }
            }
            for (int kern = 0; kern <= (int) best; kern++) free(x[kern]);
            free(a); free(g); free(lf); free(b); free(xb); free(gd); free(y);
        }
    }
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * caldera_suite(void) {
    Suite * s = suite_create("caldera");
    TCase * tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_exact_regression);
    tcase_add_loop_test(tc, test_closed_form_updates, 0, 2);
    tcase_add_test(tc, test_thin_gemm);
    tcase_add_test(tc, test_thin_chol_solve);
    tcase_add_test(tc, test_outer_loop_never_worse);
    tcase_add_test(tc, test_roundtrip_variants);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_target_bits);
    tcase_add_test(tc, test_determinism);
    tcase_add_test(tc, test_oom_sweep);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(caldera_suite)
