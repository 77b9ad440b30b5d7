// SPDX-License-Identifier: MIT
// GPU tests (CTest label `cuda`): every caldera_linalg_* op and the element-wise kernels on a CUDA
// device against the CPU implementation on the same inputs, with named tolerances (normalised
// mean squared error NMSE = ‖gpu − cpu‖² / ‖cpu‖², or exact equality where the kernel runs the
// CPU's own per-element code). Device tensors are used directly; one test also sends host
// tensors through `device = cuda` (staged copies). Without a usable CUDA device (no GPU, no
// driver, or a build without CUDA) the program prints why and exits 77, which CTest counts as
// skipped. Run on a GPU machine: ctest --test-dir build -L cuda --output-on-failure
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/items.h"
#include "linalg_cuda.h"

// Tolerances (NMSE against the CPU result). FP32 on both sides; the GPU sums in another order.
#define TOL_BLAS3   1e-10   // gemm, syrk, trsm: relative error ~1e-6 per entry at these sizes
#define TOL_FACTOR  1e-9    // Cholesky, block LDL (well-conditioned Hessians, cond ≲ 1e2)
#define TOL_INVERSE 1e-8    // SPD inverse and solve
#define TOL_EIG     1e-9    // eigenvalues; eigen- and singular vectors via reconstructions
#define TOL_SVD     1e-9    // singular values, reconstructions U diag(s) Vᵀ
#define TOL_RSVD    1e-6    // randomized truncated SVD (same Ω; QR and small SVD differ)
#define TOL_LSTSQ   1e-8    // least squares, full column rank
#define TOL_TRACE   1e-6    // trace_quad, relative

static double nmse(const struct caldera_tensor * got, const struct caldera_tensor * want) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < want->ne[0]; i++) {
        for (int64_t j = 0; j < want->ne[1]; j++) {
            double g = ((const float *) got->data)[i * got->ld + j], w = ((const float *) want->data)[i * want->ld + j];
            num += (g - w) * (g - w);
            den += w * w;
        }
    }
    return den > 0 ? num / den : num;
}

static double nmse_vec(const float * got, const float * want, int64_t n) {
    struct caldera_tensor g = caldera_tensor_view_f32((float *) got, 1, n), w = caldera_tensor_view_f32((float *) want, 1, n);
    return nmse(&g, &w);
}

// A device copy of a host tensor, and back.
static struct caldera_tensor up(struct caldera_ctx * ctx, const struct caldera_tensor * h) {
    struct caldera_tensor d;
    ck_assert_msg(caldera_tensor_alloc_device(ctx, CALDERA_DEVICE_CUDA, CALDERA_DTYPE_F32, 2, h->ne, &d) == 0, "%s",
                  caldera_ctx_errmsg(ctx));
    ck_assert_msg(caldera_tensor_copy(ctx, &d, h) == 0, "%s", caldera_ctx_errmsg(ctx));
    return d;
}

static struct caldera_tensor down(struct caldera_ctx * ctx, const struct caldera_tensor * d) {
    struct caldera_tensor h;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, d->ne[0], d->ne[1], &h), 0);
    ck_assert_msg(caldera_tensor_copy(ctx, &h, d) == 0, "%s", caldera_ctx_errmsg(ctx));
    return h;
}

static struct caldera_tensor zeros(struct caldera_ctx * ctx, int64_t r, int64_t c, int device) {
    struct caldera_tensor t;
    int64_t ne[2] = { r, c };
    ck_assert_msg(caldera_tensor_alloc_device(ctx, device ? CALDERA_DEVICE_CUDA : CALDERA_DEVICE_CPU, CALDERA_DTYPE_F32, 2, ne, &t) == 0,
                  "%s", caldera_ctx_errmsg(ctx));
    return t;
}

#define OK(call) ck_assert_msg((call) == 0, "%s", caldera_ctx_errmsg(ctx))

// The GPU result of a device tensor against the host one.
static double cmp(struct caldera_ctx * ctx, const struct caldera_tensor * dev, const struct caldera_tensor * host) {
    struct caldera_tensor g = down(ctx, dev);
    double e = nmse(&g, host);
    caldera_tensor_free(&g);
    return e;
}

START_TEST(test_copy_alloc) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor a = tu_randn(ctx, 37, 53, 1), z = zeros(ctx, 37, 53, 1);
    struct caldera_tensor zh = down(ctx, &z);
    for (int64_t i = 0; i < 37 * 53; i++) ck_assert_float_eq(((float *) zh.data)[i], 0.0f);   // zero-filled
    struct caldera_tensor d = up(ctx, &a), b = down(ctx, &d);
    ck_assert(memcmp(a.data, b.data, 37 * 53 * sizeof(float)) == 0);
    // strided views both ways: rows 3..13, columns 5..25
    struct caldera_tensor hv = a, dv = d;
    hv.data = (float *) a.data + 3 * 53 + 5; hv.ne[0] = 10; hv.ne[1] = 20; hv.ld = 53;
    dv.data = (float *) z.data + 3 * 53 + 5; dv.ne[0] = 10; dv.ne[1] = 20; dv.ld = 53;
    OK(caldera_tensor_copy(ctx, &dv, &hv));
    struct caldera_tensor zb = down(ctx, &z);
    for (int64_t i = 0; i < 37; i++) {
        for (int64_t j = 0; j < 53; j++) {
            float want = (i >= 3 && i < 13 && j >= 5 && j < 25) ? ((float *) a.data)[i * 53 + j] : 0.0f;
            ck_assert_float_eq(((float *) zb.data)[i * 53 + j], want);
        }
    }
    caldera_tensor_free(&a); caldera_tensor_free(&z); caldera_tensor_free(&zh);
    caldera_tensor_free(&d); caldera_tensor_free(&b); caldera_tensor_free(&zb);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_gemm_syrk) {
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t m = 300, n = 257, k = 129;
    for (int ta = 0; ta < 2; ta++) {
        for (int tb = 0; tb < 2; tb++) {
            struct caldera_tensor a = tu_randn(ctx, ta ? k : m, ta ? m : k, 10 + ta), b = tu_randn(ctx, tb ? n : k, tb ? k : n, 20 + tb);
            struct caldera_tensor c = tu_randn(ctx, m, n, 30);
            struct caldera_tensor da = up(ctx, &a), db = up(ctx, &b), dc = up(ctx, &c);
            OK(caldera_linalg_gemm(ctx, ta, tb, 0.75f, &a, &b, 0.5f, &c));
            OK(caldera_linalg_gemm(ctx, ta, tb, 0.75f, &da, &db, 0.5f, &dc));
            double e = cmp(ctx, &dc, &c);
            ck_assert_msg(e <= TOL_BLAS3, "gemm ta %d tb %d: NMSE %.3g", ta, tb, e);
            caldera_tensor_free(&a); caldera_tensor_free(&b); caldera_tensor_free(&c);
            caldera_tensor_free(&da); caldera_tensor_free(&db); caldera_tensor_free(&dc);
        }
    }
    for (int tr = 0; tr < 2; tr++) {
        struct caldera_tensor a = tu_randn(ctx, tr ? k : n, tr ? n : k, 40), c = tu_randn(ctx, n, n, 41);
        struct caldera_tensor da = up(ctx, &a), dc = up(ctx, &c);
        OK(caldera_linalg_syrk(ctx, tr, 1.5f, &a, 0.25f, &c));
        OK(caldera_linalg_syrk(ctx, tr, 1.5f, &da, 0.25f, &dc));
        double e = cmp(ctx, &dc, &c);
        ck_assert_msg(e <= TOL_BLAS3, "syrk trans %d: NMSE %.3g", tr, e);
        caldera_tensor_free(&a); caldera_tensor_free(&c); caldera_tensor_free(&da); caldera_tensor_free(&dc);
    }
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_factorisations) {
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t n = 256;
    struct caldera_tensor h = tu_hessian(ctx, n, 64, 0.1, 5);
    // Cholesky
    struct caldera_tensor l = tu_randn(ctx, n, n, 0), dl = up(ctx, &h);
    OK(caldera_tensor_copy(ctx, &l, &h));
    OK(caldera_linalg_cholesky(ctx, &l));
    OK(caldera_linalg_cholesky(ctx, &dl));
    double e = cmp(ctx, &dl, &l);
    ck_assert_msg(e <= TOL_FACTOR, "cholesky: NMSE %.3g", e);
    // triangular solves, every side / triangle / transpose
    for (int v = 0; v < 8; v++) {
        int right = v & 1, lower = (v >> 1) & 1, trans = (v >> 2) & 1;
        struct caldera_tensor t = tu_randn(ctx, n, n, 0);
        OK(caldera_tensor_copy(ctx, &t, &l));
        if (!lower) {   // the upper triangle of Lᵀ
            for (int64_t i = 0; i < n; i++) {
                for (int64_t j = 0; j < n; j++) ((float *) t.data)[i * n + j] = ((float *) l.data)[j * n + i];
            }
        }
        struct caldera_tensor b = tu_randn(ctx, right ? 70 : n, right ? n : 70, 50 + v), dt = up(ctx, &t), db = up(ctx, &b);
        OK(caldera_linalg_trsm(ctx, right, lower, trans, 0, 2.0f, &t, &b));
        OK(caldera_linalg_trsm(ctx, right, lower, trans, 0, 2.0f, &dt, &db));
        e = cmp(ctx, &db, &b);
        ck_assert_msg(e <= TOL_BLAS3 * 100, "trsm right %d lower %d trans %d: NMSE %.3g", right, lower, trans, e);
        caldera_tensor_free(&t); caldera_tensor_free(&b); caldera_tensor_free(&dt); caldera_tensor_free(&db);
    }
    // SPD inverse and solve
    struct caldera_tensor inv = tu_randn(ctx, n, n, 0), dinv = up(ctx, &h);
    OK(caldera_tensor_copy(ctx, &inv, &h));
    OK(caldera_linalg_spd_inverse(ctx, &inv));
    OK(caldera_linalg_spd_inverse(ctx, &dinv));
    e = cmp(ctx, &dinv, &inv);
    ck_assert_msg(e <= TOL_INVERSE, "spd_inverse: NMSE %.3g", e);
    struct caldera_tensor b = tu_randn(ctx, n, 33, 60), dh = up(ctx, &h), db = up(ctx, &b);
    OK(caldera_linalg_spd_solve(ctx, &h, &b));
    OK(caldera_linalg_spd_solve(ctx, &dh, &db));
    e = cmp(ctx, &db, &b);
    ck_assert_msg(e <= TOL_INVERSE, "spd_solve: NMSE %.3g", e);
    // block LDL (b = 8, as LDLQ with E8P)
    struct caldera_tensor L = zeros(ctx, n, n, 0), D = zeros(ctx, n, n, 0), dL = zeros(ctx, n, n, 1), dD = zeros(ctx, n, n, 1);
    OK(caldera_linalg_block_ldl(ctx, &h, 8, &L, &D));
    OK(caldera_linalg_block_ldl(ctx, &dh, 8, &dL, &dD));
    e = cmp(ctx, &dL, &L);
    ck_assert_msg(e <= TOL_FACTOR, "block_ldl L: NMSE %.3g", e);
    e = cmp(ctx, &dD, &D);
    ck_assert_msg(e <= TOL_FACTOR, "block_ldl D: NMSE %.3g", e);
    // not positive definite: the same status and wording as on the CPU
    struct caldera_tensor bad = tu_randn(ctx, 16, 16, 70), dbad;
    ((float *) bad.data)[0] = -100.0f;
    dbad = up(ctx, &bad);
    ck_assert_int_eq(caldera_linalg_cholesky(ctx, &dbad), CALDERA_ERR_NUMERIC);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "not positive definite"));
    caldera_tensor_free(&h); caldera_tensor_free(&l); caldera_tensor_free(&dl); caldera_tensor_free(&inv);
    caldera_tensor_free(&dinv); caldera_tensor_free(&b); caldera_tensor_free(&dh); caldera_tensor_free(&db);
    caldera_tensor_free(&L); caldera_tensor_free(&D); caldera_tensor_free(&dL); caldera_tensor_free(&dD);
    caldera_tensor_free(&bad); caldera_tensor_free(&dbad);
    caldera_ctx_free(ctx);
}
END_TEST

// ‖U diag(s) Vt − A‖² / ‖A‖² on the host (U m×k, Vt k×n).
static double recon(struct caldera_ctx * ctx, const struct caldera_tensor * u, const float * s, const struct caldera_tensor * vt,
                    const struct caldera_tensor * a) {
    struct caldera_tensor us = tu_randn(ctx, u->ne[0], u->ne[1], 0), r = zeros(ctx, a->ne[0], a->ne[1], 0);
    for (int64_t i = 0; i < u->ne[0]; i++) {
        for (int64_t j = 0; j < u->ne[1]; j++) ((float *) us.data)[i * us.ld + j] = ((const float *) u->data)[i * u->ld + j] * s[j];
    }
    ck_assert_int_eq(caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &us, vt, 0.0f, &r), 0);
    double e = nmse(&r, a);
    caldera_tensor_free(&us);
    caldera_tensor_free(&r);
    return e;
}

START_TEST(test_eigh_svd) {
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t n = 200;
    struct caldera_tensor h = tu_hessian(ctx, n, 50, 0.05, 8), dh = up(ctx, &h);
    float w[200], dw[200];
    struct caldera_tensor v = zeros(ctx, n, n, 0), dv = zeros(ctx, n, n, 1);
    OK(caldera_linalg_eigh(ctx, &h, w, &v));
    OK(caldera_linalg_eigh(ctx, &dh, dw, &dv));
    double e = nmse_vec(dw, w, n);
    ck_assert_msg(e <= TOL_EIG, "eigh values: NMSE %.3g", e);
    struct caldera_tensor gv = down(ctx, &dv), gvt = zeros(ctx, n, n, 0);
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < n; j++) ((float *) gvt.data)[j * n + i] = ((float *) gv.data)[i * n + j];
    }
    e = recon(ctx, &gv, dw, &gvt, &h);
    ck_assert_msg(e <= TOL_EIG, "eigh: V diag(w) Vᵀ vs A, NMSE %.3g", e);
    caldera_tensor_free(&gv); caldera_tensor_free(&gvt);
    // thin SVD, tall and wide
    const int64_t shapes[2][2] = { { 150, 90 }, { 90, 150 } };
    for (int sh = 0; sh < 2; sh++) {
        int64_t m = shapes[sh][0], nn = shapes[sh][1], k = m < nn ? m : nn;
        struct caldera_tensor a = tu_randn(ctx, m, nn, 80 + sh), da = up(ctx, &a);
        struct caldera_tensor u = zeros(ctx, m, k, 0), vt = zeros(ctx, k, nn, 0), du = zeros(ctx, m, k, 1), dvt = zeros(ctx, k, nn, 1);
        float s[150], ds[150], ds2[150];
        OK(caldera_linalg_svd(ctx, &a, &u, s, &vt));
        OK(caldera_linalg_svd(ctx, &da, &du, ds, &dvt));
        e = nmse_vec(ds, s, k);
        ck_assert_msg(e <= TOL_SVD, "svd %lldx%lld values: NMSE %.3g", (long long) m, (long long) nn, e);
        struct caldera_tensor gu = down(ctx, &du), gvt2 = down(ctx, &dvt);
        e = recon(ctx, &gu, ds, &gvt2, &a);
        ck_assert_msg(e <= TOL_SVD, "svd %lldx%lld: U diag(s) Vt vs A, NMSE %.3g", (long long) m, (long long) nn, e);
        OK(caldera_linalg_svd(ctx, &da, NULL, ds2, NULL));   // values only
        ck_assert(nmse_vec(ds2, s, k) <= TOL_SVD);
        // truncated: exact and randomized (the same Gaussian Ω as the CPU)
        const int64_t r = 12;
        struct caldera_tensor tu_ = zeros(ctx, m, r, 0), tv = zeros(ctx, r, nn, 0), dtu = zeros(ctx, m, r, 1), dtv = zeros(ctx, r, nn, 1);
        float ts[12], dts[12];
        for (int ov = -1; ov <= 8; ov += 9) {
            OK(caldera_linalg_svd_trunc(ctx, &a, r, ov, 2, 99, &tu_, ts, &tv));
            OK(caldera_linalg_svd_trunc(ctx, &da, r, ov, 2, 99, &dtu, dts, &dtv));
            e = nmse_vec(dts, ts, r);
            ck_assert_msg(e <= (ov < 0 ? TOL_SVD : TOL_RSVD), "svd_trunc oversample %d: NMSE %.3g", ov, e);
        }
        caldera_tensor_free(&a); caldera_tensor_free(&da); caldera_tensor_free(&u); caldera_tensor_free(&vt);
        caldera_tensor_free(&du); caldera_tensor_free(&dvt); caldera_tensor_free(&gu); caldera_tensor_free(&gvt2);
        caldera_tensor_free(&tu_); caldera_tensor_free(&tv); caldera_tensor_free(&dtu); caldera_tensor_free(&dtv);
    }
    // least squares, tall full rank
    struct caldera_tensor a = tu_randn(ctx, 300, 40, 90), b = tu_randn(ctx, 300, 7, 91), x = zeros(ctx, 40, 7, 0);
    struct caldera_tensor da = up(ctx, &a), db = up(ctx, &b), dx = zeros(ctx, 40, 7, 1);
    OK(caldera_linalg_lstsq(ctx, &a, &b, &x));
    OK(caldera_linalg_lstsq(ctx, &da, &db, &dx));
    e = cmp(ctx, &dx, &x);
    ck_assert_msg(e <= TOL_LSTSQ, "lstsq: NMSE %.3g", e);
    caldera_tensor_free(&h); caldera_tensor_free(&dh); caldera_tensor_free(&v); caldera_tensor_free(&dv);
    caldera_tensor_free(&a); caldera_tensor_free(&b); caldera_tensor_free(&x);
    caldera_tensor_free(&da); caldera_tensor_free(&db); caldera_tensor_free(&dx);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_fwht_trace) {
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t ns[2] = { 1024, 16384 };   // shared-memory kernel, then one launch per stage
    for (int t = 0; t < 2; t++) {
        struct caldera_tensor a = tu_randn(ctx, 5, ns[t], 100 + t), da = up(ctx, &a);
        OK(caldera_linalg_fwht(ctx, &a));
        OK(caldera_linalg_fwht(ctx, &da));
        struct caldera_tensor g = down(ctx, &da);
        ck_assert_msg(memcmp(g.data, a.data, (size_t) (5 * ns[t]) * sizeof(float)) == 0, "fwht n %lld: not the CPU's bits",
                      (long long) ns[t]);
        caldera_tensor_free(&a); caldera_tensor_free(&da); caldera_tensor_free(&g);
    }
    struct caldera_tensor a = tu_randn(ctx, 70, 128, 110), h = tu_hessian(ctx, 128, 32, 0.1, 111);
    struct caldera_tensor da = up(ctx, &a), dh = up(ctx, &h);
    double tc = 0, tg = 0;
    OK(caldera_linalg_trace_quad(ctx, &a, &h, &tc));
    OK(caldera_linalg_trace_quad(ctx, &da, &dh, &tg));
    ck_assert_msg(fabs(tg - tc) <= TOL_TRACE * fabs(tc), "trace_quad: %.9g vs %.9g", tg, tc);
    caldera_tensor_free(&a); caldera_tensor_free(&h); caldera_tensor_free(&da); caldera_tensor_free(&dh);
    caldera_ctx_free(ctx);
}
END_TEST

// Host tensors with device = cuda: ops above the size threshold are staged through the GPU.
START_TEST(test_staged_host_tensors) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor a = tu_randn(ctx, 600, 600, 120), b = tu_randn(ctx, 600, 600, 121);
    struct caldera_tensor c = zeros(ctx, 600, 600, 0), g = zeros(ctx, 600, 600, 0);
    OK(caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_TRANS, 1.0f, &a, &b, 0.0f, &c));
    OK(caldera_ctx_set_device(ctx, CALDERA_DEVICE_CUDA));
    OK(caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_TRANS, 1.0f, &a, &b, 0.0f, &g));
    double e = nmse(&g, &c);
    ck_assert_msg(e <= TOL_BLAS3, "staged gemm: NMSE %.3g", e);
    caldera_tensor_free(&a); caldera_tensor_free(&b); caldera_tensor_free(&c); caldera_tensor_free(&g);
    caldera_ctx_free(ctx);
}
END_TEST

// A (rows, cols) tensor of dtype dt on the CPU or the GPU, zero-filled.
static struct caldera_tensor zeros_dt(struct caldera_ctx * ctx, enum caldera_dtype dt, int64_t r, int64_t c, int device) {
    struct caldera_tensor t;
    int64_t ne[2] = { r, c };
    ck_assert_msg(caldera_tensor_alloc_device(ctx, device ? CALDERA_DEVICE_CUDA : CALDERA_DEVICE_CPU, dt, 2, ne, &t) == 0,
                  "%s", caldera_ctx_errmsg(ctx));
    return t;
}

// Bitwise equality of a device tensor and a host tensor of the same dtype and shape (dense).
static void same_bits(struct caldera_ctx * ctx, const struct caldera_tensor * dev, const struct caldera_tensor * host,
                      const char * what) {
    struct caldera_tensor g = zeros_dt(ctx, host->dtype, host->ne[0], host->ne[1], 0);
    OK(caldera_tensor_copy(ctx, &g, dev));
    size_t bytes = (size_t) (host->ne[0] * host->ne[1]) * caldera_dtype_block_bytes(host->dtype);
    ck_assert_msg(memcmp(g.data, host->data, bytes) == 0, "%s: the GPU's bits differ from the CPU's", what);
    caldera_tensor_free(&g);
}

// caldera_round_e8p / _uniform: the kernels run the CPU's own per-element code, so device tensors
// give the same codes and values as host tensors on the CPU, bit for bit (code views with ld and
// a column offset included); host tensors under device = cuda are staged and give them too.
START_TEST(test_quantizer_kernels) {
    struct caldera_ctx * ctx = tu_ctx();
    static struct e8p_tables tab;
    e8p_tables_build(&tab);
    const int64_t rows = 64, cols = 256, nb = cols / 8;
    struct caldera_tensor x = tu_randn(ctx, rows, cols, 130), dx = up(ctx, &x);
    float scale[64];
    for (int64_t i = 0; i < rows; i++) scale[i] = i == 3 ? 0.0f : 0.8f + 0.01f * (float) i;
    for (int bits = 2; bits <= 4; bits++) {
        // codes of the last nb - 2 blocks: views at block 2 of (rows, nb) stores
        struct caldera_tensor y = zeros(ctx, rows, cols - 16, 0), dy = zeros(ctx, rows, cols - 16, 1);
        struct caldera_tensor c1 = zeros_dt(ctx, CALDERA_DTYPE_U16, rows, nb, 0), c2 = zeros_dt(ctx, CALDERA_DTYPE_U16, rows, nb, 0);
        struct caldera_tensor d1 = zeros_dt(ctx, CALDERA_DTYPE_U16, rows, nb, 1), d2 = zeros_dt(ctx, CALDERA_DTYPE_U16, rows, nb, 1);
        struct caldera_tensor xv = x, dxv = dx, v1 = c1, v2 = c2, w1 = d1, w2 = d2;
        xv.data = (float *) x.data + 16;
        dxv.data = (float *) dx.data + 16;
        xv.ne[1] = dxv.ne[1] = cols - 16;
        xv.ld = dxv.ld = cols;
        struct caldera_tensor * views[] = { &v1, &v2, &w1, &w2 };
        for (int k = 0; k < 4; k++) {
            views[k]->data = (uint16_t *) views[k]->data + 2;
            views[k]->ne[1] = nb - 2;
            views[k]->ld = nb;
        }
        OK(caldera_round_e8p(ctx, &tab, bits, scale, rows, &xv, &v1, bits > 2 ? &v2 : NULL, &y));
        OK(caldera_round_e8p(ctx, &tab, bits, scale, rows, &dxv, &w1, bits > 2 ? &w2 : NULL, &dy));
        same_bits(ctx, &dy, &y, "e8p values");
        same_bits(ctx, &d1, &c1, "e8p codes");
        same_bits(ctx, &d2, &c2, "e8p second codes");
        // host tensors under device = cuda, every op on the GPU (the threshold is 0 in this test)
        struct caldera_tensor y2 = zeros(ctx, rows, cols - 16, 0), c3 = zeros_dt(ctx, CALDERA_DTYPE_U16, rows, nb, 0);
        struct caldera_tensor c4 = zeros_dt(ctx, CALDERA_DTYPE_U16, rows, nb, 0), v3 = c3, v4 = c4;
        v3.data = (uint16_t *) c3.data + 2;
        v4.data = (uint16_t *) c4.data + 2;
        v3.ne[1] = v4.ne[1] = nb - 2;
        v3.ld = v4.ld = nb;
        OK(caldera_ctx_set_device(ctx, CALDERA_DEVICE_CUDA));
        OK(caldera_round_e8p(ctx, &tab, bits, scale, rows, &xv, &v3, bits > 2 ? &v4 : NULL, &y2));
        OK(caldera_ctx_set_device(ctx, CALDERA_DEVICE_CPU));
        ck_assert(memcmp(y2.data, y.data, (size_t) (rows * (cols - 16)) * sizeof(float)) == 0);
        ck_assert(memcmp(c3.data, c1.data, (size_t) (rows * nb) * sizeof(uint16_t)) == 0);
        ck_assert(memcmp(c4.data, c2.data, (size_t) (rows * nb) * sizeof(uint16_t)) == 0);
        struct caldera_tensor * all[] = { &y, &dy, &c1, &c2, &d1, &d2, &y2, &c3, &c4 };
        for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) caldera_tensor_free(all[i]);
    }
    // uniform, 4 bits, asymmetric, groups of 32 along a row; columns [40, 256) of the weight
    struct uniform_rule r = { .kind = 2, .kmax = 15, .half = 0.0f };
    const int64_t gs = 32, ngr = cols / gs, col0 = 40, c = cols - col0;
    float us[64 * 8], uz[64 * 8];
    for (int64_t g = 0; g < rows * ngr; g++) {
        us[g] = 0.3f + 0.001f * (float) g;
        uz[g] = (float) (g % 16);
    }
    struct caldera_tensor xv = x, dxv = dx;
    xv.data = (float *) x.data + col0;
    dxv.data = (float *) dx.data + col0;
    xv.ne[1] = dxv.ne[1] = c;
    xv.ld = dxv.ld = cols;
    struct caldera_tensor y = zeros(ctx, rows, c, 0), dy = zeros(ctx, rows, c, 1);
    struct caldera_tensor codes = zeros_dt(ctx, CALDERA_DTYPE_U8, rows, cols, 0), dcodes = zeros_dt(ctx, CALDERA_DTYPE_U8, rows, cols, 1);
    struct caldera_tensor cv = codes, dcv = dcodes;
    cv.data = (uint8_t *) codes.data + col0;
    dcv.data = (uint8_t *) dcodes.data + col0;
    cv.ne[1] = dcv.ne[1] = c;
    cv.ld = dcv.ld = cols;
    OK(caldera_round_uniform(ctx, &r, UNI_GROUP, ngr, gs, col0, us, uz, rows * ngr, &xv, &cv, &y));
    OK(caldera_round_uniform(ctx, &r, UNI_GROUP, ngr, gs, col0, us, uz, rows * ngr, &dxv, &dcv, &dy));
    same_bits(ctx, &dy, &y, "uniform values");
    same_bits(ctx, &dcodes, &codes, "uniform codes");
    struct caldera_tensor * all[] = { &y, &dy, &codes, &dcodes, &x, &dx };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) caldera_tensor_free(all[i]);
    caldera_ctx_free(ctx);
}
END_TEST

// caldera_ldlq_gather / _scatter / _loss on device tensors against host tensors (the CPU loops of
// ldlq-step.h): the same bits for the gather and the Ŵ/Δ writes; the loss in double, summed in
// another order, within TOL_LDLQ_LOSS relative.
#define TOL_LDLQ_LOSS 1e-12
START_TEST(test_ldlq_kernels) {
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t m = 300, n = 64, b = 8, j0 = 24, jl = 8, bc = 32;
    struct caldera_tensor xt = tu_randn(ctx, n, m, 140), wt = tu_randn(ctx, n, m, 141), qj = tu_randn(ctx, m, b, 142);
    struct caldera_tensor dj = tu_hessian(ctx, b, 8, 0.1, 143);
    struct caldera_tensor xj = zeros(ctx, m, b, 0), hbt = zeros(ctx, bc, m, 0), dbt = zeros(ctx, bc, m, 0);
    struct caldera_tensor dxt = up(ctx, &xt), dwt = up(ctx, &wt), dqj = up(ctx, &qj), ddj = up(ctx, &dj);
    struct caldera_tensor dxj = zeros(ctx, m, b, 1), dhbt = zeros(ctx, bc, m, 1), ddbt = zeros(ctx, bc, m, 1);
    double loss = 0, dloss = 0;
    OK(caldera_ldlq_gather(ctx, &xt, j0, &xj));
    OK(caldera_ldlq_scatter(ctx, &qj, &wt, j0, jl, &hbt, &dbt));
    OK(caldera_ldlq_loss(ctx, &xj, &qj, &dj, &loss));
    OK(caldera_ldlq_gather(ctx, &dxt, j0, &dxj));
    OK(caldera_ldlq_scatter(ctx, &dqj, &dwt, j0, jl, &dhbt, &ddbt));
    OK(caldera_ldlq_loss(ctx, &dxj, &dqj, &ddj, &dloss));
    same_bits(ctx, &dxj, &xj, "ldlq gather");
    same_bits(ctx, &dhbt, &hbt, "ldlq W-hat");
    same_bits(ctx, &ddbt, &dbt, "ldlq delta");
    ck_assert_msg(fabs(dloss - loss) <= TOL_LDLQ_LOSS * fabs(loss), "ldlq loss: %.17g vs %.17g", dloss, loss);
    // mixing devices is refused
    ck_assert_int_eq(caldera_ldlq_gather(ctx, &xt, j0, &dxj), CALDERA_ERR_INVAL);
    // tune step: target, guard (hjj a view with ld n into an SPD matrix), update; the same bits
    struct caldera_tensor hd = tu_hessian(ctx, n, n, 0.1, 144), hi = tu_randn(ctx, b, b, 145), gj = tu_randn(ctx, m, b, 146);
    struct caldera_tensor ddh = up(ctx, &hd), dhi = up(ctx, &hi), dgj = up(ctx, &gj);
    struct caldera_tensor xs = zeros(ctx, m, b, 0), dxs = zeros(ctx, m, b, 1), dqt = zeros(ctx, b, m, 0), ddqt = zeros(ctx, b, m, 1);
    struct caldera_tensor hjj = hd, dhjj = ddh;
    hjj.data = (float *) hd.data + j0 * n + j0;
    dhjj.data = (float *) ddh.data + j0 * n + j0;
    hjj.ne[0] = hjj.ne[1] = dhjj.ne[0] = dhjj.ne[1] = b;
    hjj.ld = dhjj.ld = n;
    int64_t kept = -1, dkept = -2;
    OK(caldera_ldlq_tune_target(ctx, &xj, &gj, &hi, &xs));   // xj stands in for the current Ŵ_j
    OK(caldera_ldlq_tune_target(ctx, &dxj, &dgj, &dhi, &dxs));
    same_bits(ctx, &dxs, &xs, "ldlq tune target");
    OK(caldera_ldlq_tune_guard(ctx, &qj, &xj, &hjj, &xs, &kept));
    OK(caldera_ldlq_tune_guard(ctx, &dqj, &dxj, &dhjj, &dxs, &dkept));
    ck_assert_int_eq(dkept, kept);
    same_bits(ctx, &dxs, &xs, "ldlq tune guard");
    struct caldera_tensor dtt = zeros(ctx, n, m, 0), ddtt = zeros(ctx, n, m, 1);
    OK(caldera_ldlq_tune_update(ctx, &qj, &wt, j0, &xt, &dtt, &dqt));   // xt stands in for Ŵᵀ
    OK(caldera_ldlq_tune_update(ctx, &dqj, &dwt, j0, &dxt, &ddtt, &ddqt));
    same_bits(ctx, &dxt, &xt, "ldlq tune update: W-hat");
    same_bits(ctx, &ddtt, &dtt, "ldlq tune update: delta");
    same_bits(ctx, &ddqt, &dqt, "ldlq tune update: change");
    struct caldera_tensor * tune[] = { &hd, &hi, &gj, &ddh, &dhi, &dgj, &xs, &dxs, &dqt, &ddqt, &dtt, &ddtt };
    for (size_t i = 0; i < sizeof(tune) / sizeof(tune[0]); i++) caldera_tensor_free(tune[i]);
    struct caldera_tensor * all[] = { &xt, &wt, &qj, &dj, &xj, &hbt, &dbt, &dxt, &dwt, &dqj, &ddj, &dxj, &dhbt, &ddbt };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) caldera_tensor_free(all[i]);
    caldera_ctx_free(ctx);
}
END_TEST

// The ldlq plugin over e8 and over uniform, with 3 tune passes, under device = cuda (its block
// loop and tune passes on the GPU: the step kernels, the codebook's rounding kernel, cuBLAS
// feedback) against device = cpu on the same W and H. The feedback GEMMs sum in another order, so a weight near a rounding boundary may
// round the other way: at most TOL_LDLQ_FLIPS of the weights may differ, and the proxy loss
// tr((W − Ŵ) H (W − Ŵ)ᵀ) must be within TOL_LDLQ_PROXY relative.
#define TOL_LDLQ_FLIPS 0.02
#define TOL_LDLQ_PROXY 0.01
START_TEST(test_ldlq_plugin_on_gpu) {
    const char * cbs[][4] = { { "e8", "bits", "2", "scale_mode" }, { "uniform", "bits", "4", "granularity" } };
    const char * vals[] = { "row", "group" };
    for (int k = 0; k < 2; k++) {
        struct caldera_ctx * ctx = tu_ctx();
        struct caldera_inst * cb = NULL, * q = NULL;
        OK(caldera_inst_create(ctx, cbs[k][0], "cb", &cb));
        OK(caldera_inst_set(cb, cbs[k][1], cbs[k][2]));
        OK(caldera_inst_set(cb, cbs[k][3], vals[k]));
        OK(caldera_inst_start(cb));
        OK(caldera_inst_create(ctx, "ldlq", "q", &q));
        OK(caldera_inst_set_ref(q, "codebook", cb));
        OK(caldera_inst_set(q, "buffer_cols", "64"));
        OK(caldera_inst_set(q, "tune_iters", "3"));   // the tune loop on the GPU too
        OK(caldera_inst_start(q));
        const int64_t m = 96, n = 256;
        struct caldera_tensor w = tu_randn(ctx, m, n, 150 + (uint64_t) k), h = tu_hessian(ctx, n, 2 * n, 0.05, 151);
        struct caldera_tensor wh[2];
        double proxy[2];
        const struct caldera_quantizer_ops * ops = caldera_inst_plugin(q)->ops;
        for (int dev = 0; dev < 2; dev++) {
            struct caldera_pack * pack = NULL;
            OK(caldera_pack_init(&pack));
            OK(caldera_ctx_set_device(ctx, dev ? CALDERA_DEVICE_CUDA : CALDERA_DEVICE_CPU));
            wh[dev] = zeros(ctx, m, n, 0);
            OK(ops->quantize(q, &w, &h, &wh[dev], pack));
            OK(caldera_ctx_set_device(ctx, CALDERA_DEVICE_CPU));
            struct caldera_tensor e = zeros(ctx, m, n, 0);
            for (int64_t i = 0; i < m * n; i++) ((float *) e.data)[i] = ((float *) w.data)[i] - ((float *) wh[dev].data)[i];
            OK(caldera_linalg_trace_quad(ctx, &e, &h, &proxy[dev]));
            caldera_tensor_free(&e);
            caldera_pack_free(pack);
        }
        int64_t diff = 0;
        for (int64_t i = 0; i < m * n; i++) diff += ((float *) wh[0].data)[i] != ((float *) wh[1].data)[i];
        ck_assert_msg((double) diff <= TOL_LDLQ_FLIPS * (double) (m * n), "ldlq over %s: %lld of %lld weights differ",
                      cbs[k][0], (long long) diff, (long long) (m * n));
        ck_assert_msg(fabs(proxy[1] - proxy[0]) <= TOL_LDLQ_PROXY * proxy[0], "ldlq over %s: proxy loss gpu %.9g cpu %.9g",
                      cbs[k][0], proxy[1], proxy[0]);
        caldera_tensor_free(&w); caldera_tensor_free(&h); caldera_tensor_free(&wh[0]); caldera_tensor_free(&wh[1]);
        caldera_inst_free(q);
        caldera_inst_free(cb);
        caldera_ctx_free(ctx);
    }
}
END_TEST

// The fused layer (caldera_kw_matmul behind a quantizer's linear_apply) under device = cuda: the
// compressed codes go to the GPU, Ŵ is decoded there by the kernels' per-element math (the same
// bits as the CPU's decode, test-cuda-math) and cuBLAS multiplies; against device = cpu, plain
// and transposed + accumulating, NMSE within TOL_BLAS3 (only the GEMM's summation order differs).
START_TEST(test_fused_layer_on_gpu) {
    const char * cfg[][3] = { { "e8", "bits", "2" }, { "e8", "bits", "4" }, { "uniform", "bits", "4" } };
    for (int k = 0; k < 3; k++) {
        struct caldera_ctx * ctx = tu_ctx();
        struct caldera_inst * q = NULL;
        OK(caldera_inst_create(ctx, cfg[k][0], "q", &q));
        OK(caldera_inst_set(q, cfg[k][1], cfg[k][2]));
        OK(caldera_inst_start(q));
        const struct caldera_quantizer_ops * ops = caldera_inst_plugin(q)->ops;
        const int64_t m = 192, n = 576, bt = 33;
        struct caldera_tensor w = tu_randn(ctx, m, n, 160 + (uint64_t) k), wh = zeros(ctx, m, n, 0);
        struct caldera_pack * pack = NULL;
        void * st = NULL;
        OK(caldera_pack_init(&pack));
        OK(ops->quantize(q, &w, NULL, &wh, pack));
        OK(ops->linear_init(q, pack, m, n, &st));
        for (int tr = 0; tr < 2; tr++) {
            const int64_t nin = tr ? m : n, nout = tr ? n : m;
            const unsigned flags = tr ? CALDERA_LINEAR_TRANSPOSE | CALDERA_LINEAR_ACCUMULATE : 0;
            struct caldera_tensor x = tu_randn(ctx, bt, nin, 170), y0 = tu_randn(ctx, bt, nout, 171);
            struct caldera_tensor yc = zeros(ctx, bt, nout, 0), yg = zeros(ctx, bt, nout, 0);
            OK(caldera_tensor_copy(ctx, &yc, &y0));
            OK(caldera_tensor_copy(ctx, &yg, &y0));
            OK(ops->linear_apply(q, st, &x, &yc, flags));
            OK(caldera_ctx_set_device(ctx, CALDERA_DEVICE_CUDA));
            OK(ops->linear_apply(q, st, &x, &yg, flags));
            OK(caldera_ctx_set_device(ctx, CALDERA_DEVICE_CPU));
            double e = nmse(&yg, &yc);
            ck_assert_msg(e <= TOL_BLAS3, "fused layer %s %s=%s%s: NMSE %.3g", cfg[k][0], cfg[k][1], cfg[k][2],
                          tr ? " transposed" : "", e);
            caldera_tensor_free(&x); caldera_tensor_free(&y0); caldera_tensor_free(&yc); caldera_tensor_free(&yg);
        }
        ops->linear_free(q, st);
        caldera_pack_free(pack);
        caldera_tensor_free(&w); caldera_tensor_free(&wh);
        caldera_inst_free(q);
        caldera_ctx_free(ctx);
    }
}
END_TEST

static Suite * cuda_suite(void) {
    Suite * s = suite_create("cuda");
    TCase * tc = tcase_create("gpu");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_copy_alloc);
    tcase_add_test(tc, test_gemm_syrk);
    tcase_add_test(tc, test_factorisations);
    tcase_add_test(tc, test_eigh_svd);
    tcase_add_test(tc, test_fwht_trace);
    tcase_add_test(tc, test_staged_host_tensors);
    tcase_add_test(tc, test_quantizer_kernels);
    tcase_add_test(tc, test_ldlq_kernels);
    tcase_add_test(tc, test_ldlq_plugin_on_gpu);
    tcase_add_test(tc, test_fused_layer_on_gpu);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    char why[1024];
    // under device = cuda every op goes to the GPU, however small (read once, when the module loads)
    setenv("CALDERA_CUDA_MIN_FLOPS", "0", 1);
    if (caldera_cuda_probe(why, sizeof(why)) <= 0) {
        printf("skip: no usable CUDA device: %s\n", why);
        return 77;
    }
    setenv("CK_FORK", "no", 1);   // the CUDA driver is initialised: no fork() after this point
    return tu_run(cuda_suite());
}
