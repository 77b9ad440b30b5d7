// SPDX-License-Identifier: MIT
// Unit tests of the CPU linear algebra (linalg_cpu.c): every routine against a closed form or a
// naive double-precision reference at odd sizes (1, 7, 64, 577), on strided views (ld > cols),
// and on its failure modes (not positive definite, NaN/Inf input, bad shapes).
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// Named tolerances (relative Frobenius errors unless said otherwise). f32 products of length k
// carry about sqrt(k)·eps ≈ 1.5e-6 at k = 577; factorisations add a condition-number factor.
#define LINALG_TOL_GEMM        2e-6   // gemm vs naive double product
#define LINALG_TOL_SYRK        2e-6   // syrk vs naive double A Aᵀ
#define LINALG_TOL_CHOL        1e-5   // ‖L Lᵀ − A‖ / ‖A‖
#define LINALG_TOL_TRSM        1e-5   // ‖op(T) X − αB‖ / ‖αB‖, T well conditioned
#define LINALG_TOL_INV         1e-4   // ‖A A⁻¹ − I‖ / ‖I‖, cond(A) ≲ 100
#define LINALG_TOL_SOLVE       1e-4   // ‖A X − B‖ / ‖B‖
#define LINALG_TOL_LDL         1e-5   // ‖L D Lᵀ − H‖ / ‖H‖
#define LINALG_TOL_EIGH        2e-5   // ‖A V − V diag(w)‖ / ‖A‖
#define LINALG_TOL_ORTHO       2e-5   // ‖Qᵀ Q − I‖ / ‖I‖
#define LINALG_TOL_SVD         2e-5   // ‖U diag(s) Vᵀ − A‖ / ‖A‖
#define LINALG_TOL_CLOSED      1e-5   // closed forms (absolute, O(1) entries)
#define LINALG_TOL_RSVD_LOWRANK 1e-4  // randomized SVD of an exactly rank-r matrix
#define LINALG_TOL_LSTSQ       1e-4   // lstsq vs normal equations solved in double
#define LINALG_TOL_FWHT        1e-6   // relative to ‖x‖·sqrt(n)
#define LINALG_TOL_TRACE       1e-5   // trace_quad vs naive double, relative

static const int64_t sizes[] = { 1, 7, 64, 577 };
#define NSIZES ((int) (sizeof(sizes) / sizeof(sizes[0])))

#define AT(t, i, j) (((float *) (t)->data)[(i) * (t)->ld + (j)])

// A (rows, cols) view inside a (rows, cols + pad) buffer whose padding holds `fill`, so reads of
// the padding poison results (NaN) and writes to it are detected (check_pad).
struct padded {
    struct caldera_tensor t;   // the view (ld = cols + pad)
    float *               buf;
    int64_t               pad;
    float                 fill;
};

static struct padded padded_alloc(int64_t rows, int64_t cols, int64_t pad, float fill) {
    struct padded p = { 0 };
    int64_t ld = cols + pad;
    p.buf = caldera_malloc((size_t) ((rows ? rows : 1) * (ld ? ld : 1)) * sizeof(float));
    ck_assert_ptr_nonnull(p.buf);
    for (int64_t i = 0; i < rows * ld; i++) p.buf[i] = fill;
    p.t = caldera_tensor_view_f32(p.buf, rows, cols);
    p.t.ld = ld;
    p.pad = pad;
    p.fill = fill;
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < cols; j++) p.buf[i * ld + j] = 0.0f;
    }
    return p;
}

static void padded_randn(struct padded * p, uint64_t seed) {
    struct caldera_rng rng;
    caldera_rng_seed(&rng, seed);
    for (int64_t i = 0; i < p->t.ne[0]; i++) {
        for (int64_t j = 0; j < p->t.ne[1]; j++) AT(&p->t, i, j) = (float) caldera_rng_normal(&rng);
    }
}

static void check_pad(const struct padded * p) {
    for (int64_t i = 0; i < p->t.ne[0]; i++) {
        for (int64_t j = p->t.ne[1]; j < p->t.ld; j++) {
            float v = p->buf[i * p->t.ld + j];
            ck_assert_msg(memcmp(&v, &p->fill, sizeof(v)) == 0, "padding written at (%lld, %lld)", (long long) i,
                          (long long) j);
        }
    }
}

static void padded_free(struct padded * p) {
    caldera_free(p->buf);
    p->buf = NULL;
}

// Dense row-major double matrices for references.
struct dm {
    int64_t  r, c;
    double * d;
};

static struct dm dm_new(int64_t r, int64_t c) {
    struct dm m = { r, c, calloc((size_t) ((r ? r : 1) * (c ? c : 1)), sizeof(double)) };
    ck_assert_ptr_nonnull(m.d);
    return m;
}

// op(t) as doubles.
static struct dm dm_from(const struct caldera_tensor * t, int trans) {
    int64_t r = t->ne[0], c = t->ne[1];
    struct dm m = dm_new(trans ? c : r, trans ? r : c);
    for (int64_t i = 0; i < r; i++) {
        for (int64_t j = 0; j < c; j++) {
            double v = AT(t, i, j);
            if (trans) m.d[j * m.c + i] = v; else m.d[i * m.c + j] = v;
        }
    }
    return m;
}

static struct dm dm_mul(struct dm a, struct dm b) {
    ck_assert_int_eq(a.c, b.r);
    struct dm m = dm_new(a.r, b.c);
    for (int64_t i = 0; i < a.r; i++) {
        for (int64_t k = 0; k < a.c; k++) {
            double aik = a.d[i * a.c + k];
            if (aik == 0) continue;
            for (int64_t j = 0; j < b.c; j++) m.d[i * m.c + j] += aik * b.d[k * b.c + j];
        }
    }
    return m;
}

// A · diag(v) (scales columns).
static struct dm dm_scale_cols(struct dm a, const float * v) {
    struct dm m = dm_new(a.r, a.c);
    for (int64_t i = 0; i < a.r; i++) {
        for (int64_t j = 0; j < a.c; j++) m.d[i * a.c + j] = a.d[i * a.c + j] * v[j];
    }
    return m;
}

static struct dm dm_eye(int64_t n) {
    struct dm m = dm_new(n, n);
    for (int64_t i = 0; i < n; i++) m.d[i * n + i] = 1;
    return m;
}

static double dm_fro(struct dm a) {
    double s = 0;
    for (int64_t i = 0; i < a.r * a.c; i++) s += a.d[i] * a.d[i];
    return sqrt(s);
}

// ‖a − b‖_F / ‖b‖_F (absolute when ‖b‖ = 0).
static double dm_rel(struct dm a, struct dm b) {
    ck_assert_int_eq(a.r, b.r);
    ck_assert_int_eq(a.c, b.c);
    double s = 0;
    for (int64_t i = 0; i < a.r * a.c; i++) s += (a.d[i] - b.d[i]) * (a.d[i] - b.d[i]);
    double nb = dm_fro(b);
    return nb > 0 ? sqrt(s) / nb : sqrt(s);
}

static void dm_free(struct dm * a) { free(a->d); a->d = NULL; }

// Right-hand side for product checks: I (the full product) up to n = 64, beyond that 4 random
// columns (Freivalds' check), which keeps the 577-sized references O(n²) in a Debug build.
static struct dm dm_probe(int64_t n) {
    if (n <= 64) return dm_eye(n);
    struct dm x = dm_new(n, 4);
    struct caldera_rng rng;
    caldera_rng_seed(&rng, (uint64_t) n);
    for (int64_t i = 0; i < n * 4; i++) x.d[i] = caldera_rng_normal(&rng);
    return x;
}

// a · (b · x), freeing the intermediate.
static struct dm dm_mul2(struct dm a, struct dm b, struct dm x) {
    struct dm t = dm_mul(b, x), r = dm_mul(a, t);
    dm_free(&t);
    return r;
}

// Symmetric positive definite test matrix with eigenvalues in [ridge, ~1 + ridge].
static struct caldera_tensor spd(struct caldera_ctx * ctx, int64_t n, uint64_t seed) {
    return tu_hessian(ctx, n, n / 2 + 1, 0.5, seed);
}

// ---------------------------------------------------------------------------------------------
// gemm

static void gemm_case(struct caldera_ctx * ctx, int64_t m, int64_t k, int64_t n, int ta, int tb, uint64_t seed) {
    const float alpha = 0.75f, beta = -0.5f;
    struct padded a = padded_alloc(ta ? k : m, ta ? m : k, 3, NAN);
    struct padded b = padded_alloc(tb ? n : k, tb ? k : n, 5, NAN);
    struct padded c = padded_alloc(m, n, 2, 12345.0f);
    padded_randn(&a, seed);
    padded_randn(&b, seed + 1);
    padded_randn(&c, seed + 2);
    struct dm c0 = dm_from(&c.t, 0);
    ck_assert_int_eq(caldera_linalg_gemm(ctx, ta, tb, alpha, &a.t, &b.t, beta, &c.t), 0);
    check_pad(&c);
    struct dm ad = dm_from(&a.t, ta), bd = dm_from(&b.t, tb), x = dm_probe(n), cd = dm_from(&c.t, 0);
    struct dm ref = dm_mul2(ad, bd, x), c0x = dm_mul(c0, x), got = dm_mul(cd, x);
    for (int64_t i = 0; i < ref.r * ref.c; i++) ref.d[i] = alpha * ref.d[i] + beta * c0x.d[i];
    double err = dm_rel(got, ref);
    dm_free(&x); dm_free(&cd); dm_free(&c0x);
    ck_assert_msg(err <= LINALG_TOL_GEMM, "gemm m=%lld k=%lld n=%lld ta=%d tb=%d: rel err %g", (long long) m,
                  (long long) k, (long long) n, ta, tb, err);
    dm_free(&c0); dm_free(&ad); dm_free(&bd); dm_free(&ref); dm_free(&got);
    padded_free(&a); padded_free(&b); padded_free(&c);
}

START_TEST(test_gemm_naive) {
    struct caldera_ctx * ctx = tu_ctx();
    // every size once as m, k and n, and mixed shapes; the 577³ product only without transposes
    static const int64_t shapes[][3] = {
        { 1, 1, 1 }, { 7, 7, 7 }, { 64, 64, 64 }, { 1, 7, 64 }, { 7, 64, 1 }, { 64, 1, 7 },
        { 577, 7, 64 }, { 7, 577, 1 }, { 64, 64, 577 }, { 1, 577, 7 },
    };
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        for (int ta = 0; ta < 2; ta++) {
            for (int tb = 0; tb < 2; tb++) gemm_case(ctx, shapes[s][0], shapes[s][1], shapes[s][2], ta, tb, 100 + s);
        }
    }
    gemm_case(ctx, 577, 577, 577, 0, 0, 7);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_gemm_closed_and_errors) {
    struct caldera_ctx * ctx = tu_ctx();
    // A · I = A exactly; beta = 0 ignores NaN in C (BLAS convention)
    struct caldera_tensor a = tu_randn(ctx, 7, 5, 1), id, c;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 5, 5, &id), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 7, 5, &c), 0);
    for (int i = 0; i < 5; i++) AT(&id, i, i) = 1.0f;
    for (int i = 0; i < 35; i++) ((float *) c.data)[i] = NAN;
    ck_assert_int_eq(caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &a, &id, 0.0f, &c), 0);
    ck_assert(tu_max_abs_diff(&a, &c) == 0.0);
    // k = 0: C = beta C
    struct caldera_tensor a0, b0;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 7, 0, &a0), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 0, 5, &b0), 0);
    for (int i = 0; i < 35; i++) ((float *) c.data)[i] = 2.0f;
    ck_assert_int_eq(caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &a0, &b0, 3.0f, &c), 0);
    for (int i = 0; i < 35; i++) ck_assert_float_eq(((float *) c.data)[i], 6.0f);
    // mismatched inner dimension
    ck_assert_int_eq(caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &a, &a, 0.0f, &c),
                     CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "gemm: incompatible dimensions");
    // wrong dtype
    struct caldera_tensor h = a;
    h.dtype = CALDERA_DTYPE_F16;
    ck_assert_int_eq(caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &h, &id, 0.0f, &c),
                     CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "2-d f32"));
    // ld < cols
    struct caldera_tensor bad = a;
    bad.ld = 3;
    ck_assert_int_eq(caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &bad, &id, 0.0f, &c),
                     CALDERA_ERR_INVAL);
    caldera_tensor_free(&a); caldera_tensor_free(&id); caldera_tensor_free(&c);
    caldera_tensor_free(&a0); caldera_tensor_free(&b0);
    caldera_ctx_free(ctx);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// syrk

START_TEST(test_syrk_naive) {
    struct caldera_ctx * ctx = tu_ctx();
    static const int64_t shapes[][2] = { { 1, 1 }, { 7, 64 }, { 64, 7 }, { 577, 7 }, { 7, 577 }, { 64, 577 }, { 1, 577 } };
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        for (int tr = 0; tr < 2; tr++) {
            int64_t n = shapes[s][0], k = shapes[s][1];
            const float alpha = 1.5f, beta = 0.25f;
            struct padded a = padded_alloc(tr ? k : n, tr ? n : k, 1, NAN);
            struct padded c = padded_alloc(n, n, 3, -7.0f);
            padded_randn(&a, 10 + s);
            // symmetric C0
            struct caldera_rng rng;
            caldera_rng_seed(&rng, 20 + s);
            for (int64_t i = 0; i < n; i++) {
                for (int64_t j = 0; j <= i; j++) AT(&c.t, i, j) = AT(&c.t, j, i) = (float) caldera_rng_normal(&rng);
            }
            struct dm c0 = dm_from(&c.t, 0);
            ck_assert_int_eq(caldera_linalg_syrk(ctx, tr, alpha, &a.t, beta, &c.t), 0);
            check_pad(&c);
            // naive Σ_t op(A)_it op(A)_jt, no gemm
            double err = 0, nrm = 0;
            for (int64_t i = 0; i < n; i++) {
                for (int64_t j = 0; j < n; j++) {
                    double sum = 0;
                    for (int64_t t = 0; t < k; t++) {
                        double ai = tr ? AT(&a.t, t, i) : AT(&a.t, i, t);
                        double aj = tr ? AT(&a.t, t, j) : AT(&a.t, j, t);
                        sum += ai * aj;
                    }
                    double ref = alpha * sum + beta * c0.d[i * n + j];
                    double got = AT(&c.t, i, j);
                    err += (got - ref) * (got - ref);
                    nrm += ref * ref;
                }
            }
            err = sqrt(err / nrm);
            ck_assert_msg(err <= LINALG_TOL_SYRK, "syrk n=%lld k=%lld trans=%d: rel err %g", (long long) n,
                          (long long) k, tr, err);
            for (int64_t i = 0; i < n; i++) {   // both triangles written, exactly symmetric
                for (int64_t j = 0; j < i; j++) ck_assert(AT(&c.t, i, j) == AT(&c.t, j, i));
            }
            dm_free(&c0);
            padded_free(&a); padded_free(&c);
        }
    }
    struct caldera_tensor a = tu_randn(ctx, 3, 4, 1), c;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 4, 4, &c), 0);
    ck_assert_int_eq(caldera_linalg_syrk(ctx, CALDERA_NO_TRANS, 1.0f, &a, 0.0f, &c), CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "syrk: incompatible dimensions");
    caldera_tensor_free(&a); caldera_tensor_free(&c);
    caldera_ctx_free(ctx);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// cholesky, trsm, spd_inverse, spd_solve

START_TEST(test_cholesky) {
    struct caldera_ctx * ctx = tu_ctx();
    for (int s = 0; s < NSIZES; s++) {
        int64_t n = sizes[s];
        struct caldera_tensor h = spd(ctx, n, 30 + s);
        struct padded l = padded_alloc(n, n, 4, NAN);
        for (int64_t i = 0; i < n; i++) memcpy(&AT(&l.t, i, 0), &AT(&h, i, 0), (size_t) n * sizeof(float));
        ck_assert_int_eq(caldera_linalg_cholesky(ctx, &l.t), 0);
        check_pad(&l);
        for (int64_t i = 0; i < n; i++) {
            ck_assert_msg(AT(&l.t, i, i) > 0, "diagonal of L must be positive");
            for (int64_t j = i + 1; j < n; j++) ck_assert(AT(&l.t, i, j) == 0.0f);
        }
        struct dm ld = dm_from(&l.t, 0), lt = dm_from(&l.t, 1), hd = dm_from(&h, 0);
        struct dm x = dm_probe(n), llt = dm_mul2(ld, lt, x), hx = dm_mul(hd, x);
        double err = dm_rel(llt, hx);
        dm_free(&x); dm_free(&hx);
        ck_assert_msg(err <= LINALG_TOL_CHOL, "cholesky n=%lld: ‖LLᵀ − A‖/‖A‖ = %g", (long long) n, err);
        dm_free(&ld); dm_free(&lt); dm_free(&hd); dm_free(&llt);
        padded_free(&l);
        caldera_tensor_free(&h);
    }
    // closed form: [[4, 2], [2, 3]] = L Lᵀ with L = [[2, 0], [1, √2]]
    float a2[4] = { 4, 2, 2, 3 };
    struct caldera_tensor t2 = caldera_tensor_view_f32(a2, 2, 2);
    ck_assert_int_eq(caldera_linalg_cholesky(ctx, &t2), 0);
    ck_assert_float_eq_tol(a2[0], 2.0f, LINALG_TOL_CLOSED);
    ck_assert_float_eq(a2[1], 0.0f);
    ck_assert_float_eq_tol(a2[2], 1.0f, LINALG_TOL_CLOSED);
    ck_assert_float_eq_tol(a2[3], sqrtf(2.0f), LINALG_TOL_CLOSED);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_cholesky_not_pd) {
    struct caldera_ctx * ctx = tu_ctx();
    // indefinite 2×2 (eigenvalues 3 and −1)
    float a2[4] = { 1, 2, 2, 1 };
    struct caldera_tensor t2 = caldera_tensor_view_f32(a2, 2, 2);
    ck_assert_int_eq(caldera_linalg_cholesky(ctx, &t2), CALDERA_ERR_NUMERIC);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "cholesky: matrix (2 x 2) is not positive definite (leading minor 2)");
    // 1×1 negative, zero matrix (PSD but singular)
    float m1 = -1.0f;
    struct caldera_tensor t1 = caldera_tensor_view_f32(&m1, 1, 1);
    ck_assert_int_eq(caldera_linalg_cholesky(ctx, &t1), CALDERA_ERR_NUMERIC);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "not positive definite"));
    // large: an SPD matrix shifted so that its smallest eigenvalues are negative
    for (int s = 1; s < NSIZES; s++) {
        int64_t n = sizes[s];
        struct caldera_tensor h = tu_hessian(ctx, n, 3, 0.0, 40 + s);
        for (int64_t i = 0; i < n; i++) AT(&h, i, i) -= 0.01f;
        struct caldera_tensor c;
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, n, n, &c), 0);
        ck_assert_int_eq(caldera_tensor_copy(ctx, &c, &h), 0);
        ck_assert_int_eq(caldera_linalg_cholesky(ctx, &c), CALDERA_ERR_NUMERIC);
        ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "is not positive definite"));
        ck_assert_int_eq(caldera_tensor_copy(ctx, &c, &h), 0);
        ck_assert_int_eq(caldera_linalg_spd_inverse(ctx, &c), CALDERA_ERR_NUMERIC);
        ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "not positive definite"));
        // spd_solve leaves B untouched on failure
        struct caldera_tensor b = tu_randn(ctx, n, 3, 41), b0 = tu_randn(ctx, n, 3, 41);
        ck_assert_int_eq(caldera_linalg_spd_solve(ctx, &h, &b), CALDERA_ERR_NUMERIC);
        ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "not positive definite"));
        ck_assert(tu_max_abs_diff(&b, &b0) == 0.0);
        caldera_tensor_free(&b); caldera_tensor_free(&b0);
        caldera_tensor_free(&c); caldera_tensor_free(&h);
    }
    ck_assert_int_eq(caldera_linalg_cholesky(ctx, &t2), CALDERA_ERR_NUMERIC);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_nan_inputs) {
    struct caldera_ctx * ctx = tu_ctx();
    const float bad[2] = { NAN, INFINITY };
    for (int v = 0; v < 2; v++) {
        int64_t n = 7;
        struct caldera_tensor h = spd(ctx, n, 50), c, l, d, vv, b, x;
        AT(&h, 3, 2) = bad[v];
        AT(&h, 2, 3) = bad[v];
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, n, n, &c), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, n, n, &l), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, n, n, &d), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, n, n, &vv), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, n, 2, &x), 0);
        b = tu_randn(ctx, n, 2, 51);
        float w[7], s[7];
        caldera_tensor_copy(ctx, &c, &h);
        ck_assert_int_eq(caldera_linalg_cholesky(ctx, &c), CALDERA_ERR_NUMERIC);
        ck_assert_str_eq(caldera_ctx_errmsg(ctx), "cholesky: matrix has NaN or Inf entries");
        caldera_tensor_copy(ctx, &c, &h);
        ck_assert_int_eq(caldera_linalg_spd_inverse(ctx, &c), CALDERA_ERR_NUMERIC);
        ck_assert_int_eq(caldera_linalg_spd_solve(ctx, &h, &b), CALDERA_ERR_NUMERIC);
        ck_assert_int_eq(caldera_linalg_block_ldl(ctx, &h, 1, &l, &d), CALDERA_ERR_NUMERIC);
        ck_assert_int_eq(caldera_linalg_eigh(ctx, &h, w, &vv), CALDERA_ERR_NUMERIC);
        ck_assert_str_eq(caldera_ctx_errmsg(ctx), "eigh: matrix has NaN or Inf entries");
        ck_assert_int_eq(caldera_linalg_svd(ctx, &h, &c, s, &vv), CALDERA_ERR_NUMERIC);
        ck_assert_str_eq(caldera_ctx_errmsg(ctx), "svd: matrix has NaN or Inf entries");
        struct caldera_tensor u2, vt2;
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, n, 2, &u2), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 2, n, &vt2), 0);
        ck_assert_int_eq(caldera_linalg_svd_trunc(ctx, &h, 2, -1, 0, 1, &u2, s, &vt2), CALDERA_ERR_NUMERIC);
        ck_assert_int_eq(caldera_linalg_svd_trunc(ctx, &h, 2, 1, 1, 1, &u2, s, &vt2), CALDERA_ERR_NUMERIC);
        ck_assert_str_eq(caldera_ctx_errmsg(ctx), "svd_trunc: matrix has NaN or Inf entries");
        ck_assert_int_eq(caldera_linalg_lstsq(ctx, &h, &b, &x), CALDERA_ERR_NUMERIC);
        ck_assert_str_eq(caldera_ctx_errmsg(ctx), "lstsq: NaN or Inf in input");
        // NaN only in the right-hand side
        struct caldera_tensor h2 = spd(ctx, n, 52);
        AT(&b, 1, 1) = bad[v];
        ck_assert_int_eq(caldera_linalg_lstsq(ctx, &h2, &b, &x), CALDERA_ERR_NUMERIC);
        ck_assert_int_eq(caldera_linalg_spd_solve(ctx, &h2, &b), CALDERA_ERR_NUMERIC);
        ck_assert_str_eq(caldera_ctx_errmsg(ctx), "spd_solve: right-hand side has NaN or Inf entries");
        caldera_tensor_free(&h2);
        caldera_tensor_free(&u2); caldera_tensor_free(&vt2);
        caldera_tensor_free(&h); caldera_tensor_free(&c); caldera_tensor_free(&l); caldera_tensor_free(&d);
        caldera_tensor_free(&vv); caldera_tensor_free(&b); caldera_tensor_free(&x);
    }
    caldera_ctx_free(ctx);
}
END_TEST

// Triangular T (n×n) with a dominant diagonal (well conditioned); the unused triangle holds NaN
// and, for unit_diag, the diagonal holds garbage, so reading either poisons the result.
static struct padded tri(int64_t n, int lower, int unit, uint64_t seed) {
    struct padded t = padded_alloc(n, n, 2, NAN);
    struct caldera_rng rng;
    caldera_rng_seed(&rng, seed);
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < n; j++) {
            int in = lower ? j < i : j > i;
            AT(&t.t, i, j) = in ? (float) (caldera_rng_normal(&rng) / (double) n) : NAN;
        }
        AT(&t.t, i, i) = unit ? 1000.0f : (float) (2.0 + caldera_rng_uniform(&rng));
    }
    return t;
}

START_TEST(test_trsm) {
    struct caldera_ctx * ctx = tu_ctx();
    for (int s = 0; s < NSIZES; s++) {
        int64_t n = sizes[s], p = s == 3 ? 5 : 9;
        for (int combo = 0; combo < 16; combo++) {
            int right = combo & 1, lower = (combo >> 1) & 1, trans = (combo >> 2) & 1, unit = (combo >> 3) & 1;
            const float alpha = 0.5f;
            struct padded t = tri(n, lower, unit, 60 + combo);
            struct padded b = padded_alloc(right ? p : n, right ? n : p, 3, NAN);
            padded_randn(&b, 70 + combo);
            struct dm b0 = dm_from(&b.t, 0);
            ck_assert_int_eq(caldera_linalg_trsm(ctx, right, lower, trans, unit, alpha, &t.t, &b.t), 0);
            check_pad(&b);
            // multiply back with op(T) built from the used triangle only
            struct dm td = dm_new(n, n);
            for (int64_t i = 0; i < n; i++) {
                for (int64_t j = 0; j < n; j++) {
                    int in = lower ? j < i : j > i;
                    double v = i == j ? (unit ? 1.0 : AT(&t.t, i, i)) : in ? AT(&t.t, i, j) : 0.0;
                    if (trans) td.d[j * n + i] = v; else td.d[i * n + j] = v;
                }
            }
            struct dm xd = dm_from(&b.t, 0);
            struct dm back = right ? dm_mul(xd, td) : dm_mul(td, xd);
            for (int64_t i = 0; i < b0.r * b0.c; i++) b0.d[i] *= alpha;
            double err = dm_rel(back, b0);
            ck_assert_msg(err <= LINALG_TOL_TRSM, "trsm n=%lld right=%d lower=%d trans=%d unit=%d: rel err %g",
                          (long long) n, right, lower, trans, unit, err);
            dm_free(&b0); dm_free(&td); dm_free(&xd); dm_free(&back);
            padded_free(&t); padded_free(&b);
        }
    }
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_spd_inverse_solve) {
    struct caldera_ctx * ctx = tu_ctx();
    for (int s = 0; s < NSIZES; s++) {
        int64_t n = sizes[s];
        struct caldera_tensor h = spd(ctx, n, 80 + s);
        struct padded inv = padded_alloc(n, n, 1, NAN);
        for (int64_t i = 0; i < n; i++) memcpy(&AT(&inv.t, i, 0), &AT(&h, i, 0), (size_t) n * sizeof(float));
        ck_assert_int_eq(caldera_linalg_spd_inverse(ctx, &inv.t), 0);
        check_pad(&inv);
        for (int64_t i = 0; i < n; i++) {
            for (int64_t j = 0; j < i; j++) ck_assert(AT(&inv.t, i, j) == AT(&inv.t, j, i));
        }
        struct dm hd = dm_from(&h, 0), id = dm_from(&inv.t, 0), eye = dm_eye(n);
        struct dm x = dm_probe(n), prod = dm_mul2(hd, id, x);
        double err = dm_rel(prod, x);
        dm_free(&x);
        ck_assert_msg(err <= LINALG_TOL_INV, "spd_inverse n=%lld: ‖A A⁻¹ − I‖/‖I‖ = %g", (long long) n, err);
        // spd_solve: A X = B with A untouched
        struct caldera_tensor h0 = spd(ctx, n, 80 + s);
        struct padded b = padded_alloc(n, 3, 2, NAN);
        padded_randn(&b, 90 + s);
        struct dm bd = dm_from(&b.t, 0);
        ck_assert_int_eq(caldera_linalg_spd_solve(ctx, &h, &b.t), 0);
        check_pad(&b);
        ck_assert(tu_max_abs_diff(&h, &h0) == 0.0);
        struct dm xd = dm_from(&b.t, 0);
        struct dm ax = dm_mul(hd, xd);
        err = dm_rel(ax, bd);
        ck_assert_msg(err <= LINALG_TOL_SOLVE, "spd_solve n=%lld: ‖A X − B‖/‖B‖ = %g", (long long) n, err);
        dm_free(&hd); dm_free(&id); dm_free(&eye); dm_free(&prod); dm_free(&bd); dm_free(&xd); dm_free(&ax);
        padded_free(&inv); padded_free(&b);
        caldera_tensor_free(&h); caldera_tensor_free(&h0);
    }
    // closed form: diag(2, 4)⁻¹ = diag(0.5, 0.25)
    float a2[4] = { 2, 0, 0, 4 };
    struct caldera_tensor t2 = caldera_tensor_view_f32(a2, 2, 2);
    ck_assert_int_eq(caldera_linalg_spd_inverse(ctx, &t2), 0);
    ck_assert_float_eq_tol(a2[0], 0.5f, LINALG_TOL_CLOSED);
    ck_assert_float_eq_tol(a2[3], 0.25f, LINALG_TOL_CLOSED);
    ck_assert_float_eq(a2[1], 0.0f);
    ck_assert_float_eq(a2[2], 0.0f);
    caldera_ctx_free(ctx);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// block LDL

static void ldl_case(struct caldera_ctx * ctx, int64_t n, int64_t b, uint64_t seed) {
    struct caldera_tensor h = spd(ctx, n, seed);
    struct padded l = padded_alloc(n, n, 2, -3.0f), d = padded_alloc(n, n, 1, -5.0f);
    ck_assert_int_eq(caldera_linalg_block_ldl(ctx, &h, b, &l.t, &d.t), 0);
    check_pad(&l);
    check_pad(&d);
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < n; j++) {
            int64_t bi = i / b, bj = j / b;
            if (bj > bi) ck_assert_msg(AT(&l.t, i, j) == 0.0f, "L not block-lower at (%lld, %lld)", (long long) i, (long long) j);
            if (bi == bj) ck_assert_msg(AT(&l.t, i, j) == (i == j ? 1.0f : 0.0f), "L diagonal block not I");
            if (bi != bj) ck_assert_msg(AT(&d.t, i, j) == 0.0f, "D not block diagonal");
            if (bi == bj) ck_assert_float_eq_tol(AT(&d.t, i, j), AT(&d.t, j, i), 1e-6f * fabsf(AT(&d.t, i, i)));
        }
    }
    struct dm ld = dm_from(&l.t, 0), lt = dm_from(&l.t, 1), dd = dm_from(&d.t, 0), hd = dm_from(&h, 0);
    struct dm x = dm_probe(n), t1 = dm_mul2(dd, lt, x), t2 = dm_mul(ld, t1), hx = dm_mul(hd, x);
    double err = dm_rel(t2, hx);
    dm_free(&x); dm_free(&hx);
    ck_assert_msg(err <= LINALG_TOL_LDL, "block_ldl n=%lld b=%lld: ‖L D Lᵀ − H‖/‖H‖ = %g", (long long) n, (long long) b, err);
    dm_free(&ld); dm_free(&lt); dm_free(&dd); dm_free(&hd); dm_free(&t1); dm_free(&t2);
    padded_free(&l); padded_free(&d);
    caldera_tensor_free(&h);
}

START_TEST(test_block_ldl) {
    struct caldera_ctx * ctx = tu_ctx();
    for (int s = 0; s < NSIZES; s++) ldl_case(ctx, sizes[s], 1, 100 + s);
    ldl_case(ctx, 8, 8, 110);     // one block: L = I, D = H
    ldl_case(ctx, 64, 8, 111);
    ldl_case(ctx, 576, 8, 112);
    ldl_case(ctx, 63, 7, 113);
    // b = 1, closed form: H = [[4, 2], [2, 3]] → L = [[1, 0], [0.5, 1]], D = diag(4, 2)
    float h2[4] = { 4, 2, 2, 3 }, l2[4], d2[4];
    struct caldera_tensor ht = caldera_tensor_view_f32(h2, 2, 2), lt = caldera_tensor_view_f32(l2, 2, 2),
                          dt = caldera_tensor_view_f32(d2, 2, 2);
    ck_assert_int_eq(caldera_linalg_block_ldl(ctx, &ht, 1, &lt, &dt), 0);
    ck_assert_float_eq_tol(l2[2], 0.5f, LINALG_TOL_CLOSED);
    ck_assert_float_eq_tol(d2[0], 4.0f, LINALG_TOL_CLOSED);
    ck_assert_float_eq_tol(d2[3], 2.0f, LINALG_TOL_CLOSED);
    ck_assert_float_eq(d2[1], 0.0f);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_block_ldl_errors) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor h = spd(ctx, 64, 120), l, d;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 64, 64, &l), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 64, 64, &d), 0);
    ck_assert_int_eq(caldera_linalg_block_ldl(ctx, &h, 7, &l, &d), CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "block_ldl: size 64 is not a multiple of the block size 7");
    ck_assert_int_eq(caldera_linalg_block_ldl(ctx, &h, 0, &l, &d), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_linalg_block_ldl(ctx, &h, 128, &l, &d), CALDERA_ERR_INVAL);
    // not positive definite
    for (int64_t i = 0; i < 64; i++) AT(&h, i, i) -= 10.0f;
    ck_assert_int_eq(caldera_linalg_block_ldl(ctx, &h, 8, &l, &d), CALDERA_ERR_NUMERIC);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "not positive definite"));
    caldera_tensor_free(&h); caldera_tensor_free(&l); caldera_tensor_free(&d);
    caldera_ctx_free(ctx);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// eigh

START_TEST(test_eigh) {
    struct caldera_ctx * ctx = tu_ctx();
    for (int s = 0; s < NSIZES; s++) {
        int64_t n = sizes[s];
        struct padded a = padded_alloc(n, n, 3, NAN);
        struct caldera_rng rng;
        caldera_rng_seed(&rng, 130 + s);
        for (int64_t i = 0; i < n; i++) {   // symmetric indefinite
            for (int64_t j = 0; j <= i; j++) AT(&a.t, i, j) = AT(&a.t, j, i) = (float) caldera_rng_normal(&rng);
        }
        struct padded v = padded_alloc(n, n, 2, 9.0f);
        float * w = caldera_malloc((size_t) n * sizeof(float));
        ck_assert_int_eq(caldera_linalg_eigh(ctx, &a.t, w, &v.t), 0);
        check_pad(&v);
        for (int64_t i = 1; i < n; i++) ck_assert_msg(w[i - 1] <= w[i], "eigenvalues not ascending");
        struct dm ad = dm_from(&a.t, 0), vd = dm_from(&v.t, 0), vtd = dm_from(&v.t, 1);
        struct dm x = dm_probe(n), vw0 = dm_scale_cols(vd, w);
        struct dm av = dm_mul2(ad, vd, x), vw = dm_mul(vw0, x), vtv = dm_mul2(vtd, vd, x), eye = dm_probe(n);
        struct dm ax = dm_mul(ad, x);
        double err = dm_rel(av, vw) * dm_fro(vw) / dm_fro(ax);
        dm_free(&x); dm_free(&vw0); dm_free(&ax);
        ck_assert_msg(err <= LINALG_TOL_EIGH, "eigh n=%lld: ‖A V − V diag(w)‖/‖A‖ = %g", (long long) n, err);
        err = dm_rel(vtv, eye);
        ck_assert_msg(err <= LINALG_TOL_ORTHO, "eigh n=%lld: ‖VᵀV − I‖/‖I‖ = %g", (long long) n, err);
        dm_free(&ad); dm_free(&vd); dm_free(&vtd); dm_free(&av); dm_free(&vw); dm_free(&vtv); dm_free(&eye);
        caldera_free(w);
        padded_free(&a); padded_free(&v);
    }
    // diagonal: w = sorted diagonal, V a signed permutation
    float dg[9] = { 3, 0, 0, 0, -1, 0, 0, 0, 2 }, vv[9], w3[3];
    struct caldera_tensor dt = caldera_tensor_view_f32(dg, 3, 3), vt = caldera_tensor_view_f32(vv, 3, 3);
    ck_assert_int_eq(caldera_linalg_eigh(ctx, &dt, w3, &vt), 0);
    ck_assert_float_eq_tol(w3[0], -1.0f, LINALG_TOL_CLOSED);
    ck_assert_float_eq_tol(w3[1], 2.0f, LINALG_TOL_CLOSED);
    ck_assert_float_eq_tol(w3[2], 3.0f, LINALG_TOL_CLOSED);
    ck_assert_float_eq_tol(fabsf(vv[1 * 3 + 0]), 1.0f, LINALG_TOL_CLOSED);   // column 0 = ±e1
    ck_assert_float_eq_tol(fabsf(vv[2 * 3 + 1]), 1.0f, LINALG_TOL_CLOSED);   // column 1 = ±e2
    ck_assert_float_eq_tol(fabsf(vv[0 * 3 + 2]), 1.0f, LINALG_TOL_CLOSED);   // column 2 = ±e0
    // 2×2 [[a, b], [b, c]]: λ = (a + c)/2 ∓ sqrt(((a − c)/2)² + b²)
    const double a = 2.0, b = 1.5, c = -0.5;
    float m2[4] = { (float) a, (float) b, (float) b, (float) c }, v2[4], w2[2];
    struct caldera_tensor mt = caldera_tensor_view_f32(m2, 2, 2), v2t = caldera_tensor_view_f32(v2, 2, 2);
    ck_assert_int_eq(caldera_linalg_eigh(ctx, &mt, w2, &v2t), 0);
    double r = sqrt((a - c) * (a - c) / 4 + b * b);
    ck_assert_double_eq_tol(w2[0], (a + c) / 2 - r, LINALG_TOL_CLOSED);
    ck_assert_double_eq_tol(w2[1], (a + c) / 2 + r, LINALG_TOL_CLOSED);
    // eigenvector of λ₁ is ∝ (b, λ₁ − a)
    double l1 = (a + c) / 2 - r, nx = b, ny = l1 - a, nn = sqrt(nx * nx + ny * ny);
    ck_assert_double_eq_tol(fabs(v2[0] * nx / nn + v2[2] * ny / nn), 1.0, LINALG_TOL_CLOSED);
    caldera_ctx_free(ctx);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// svd, svd_trunc

static void svd_check(struct caldera_ctx * ctx, const struct caldera_tensor * a, const char * what) {
    int64_t m = a->ne[0], n = a->ne[1], k = m < n ? m : n;
    struct padded u = padded_alloc(m, k, 2, 4.0f), vt = padded_alloc(k, n, 1, 8.0f);
    float * s = caldera_malloc((size_t) k * sizeof(float));
    ck_assert_int_eq(caldera_linalg_svd(ctx, a, &u.t, s, &vt.t), 0);
    check_pad(&u);
    check_pad(&vt);
    for (int64_t i = 0; i < k; i++) {
        ck_assert_msg(s[i] >= 0, "%s: negative singular value", what);
        if (i) ck_assert_msg(s[i - 1] >= s[i], "%s: singular values not descending", what);
    }
    struct dm ud = dm_from(&u.t, 0), utd = dm_from(&u.t, 1), vtd = dm_from(&vt.t, 0), vd = dm_from(&vt.t, 1);
    struct dm us = dm_scale_cols(ud, s), usv = dm_mul(us, vtd), ad = dm_from(a, 0);
    struct dm utu = dm_mul(utd, ud), vtv = dm_mul(vtd, vd), eye = dm_eye(k);
    double err = dm_rel(usv, ad);
    ck_assert_msg(err <= LINALG_TOL_SVD, "%s %lldx%lld: ‖U S Vᵀ − A‖/‖A‖ = %g", what, (long long) m, (long long) n, err);
    err = dm_rel(utu, eye);
    ck_assert_msg(err <= LINALG_TOL_ORTHO, "%s: ‖UᵀU − I‖ = %g", what, err);
    err = dm_rel(vtv, eye);
    ck_assert_msg(err <= LINALG_TOL_ORTHO, "%s: ‖VᵀV − I‖ = %g", what, err);
    // s alone (u and vt NULL) gives the same values
    float * s2 = caldera_malloc((size_t) k * sizeof(float));
    ck_assert_int_eq(caldera_linalg_svd(ctx, a, NULL, s2, NULL), 0);
    for (int64_t i = 0; i < k; i++) ck_assert_float_eq_tol(s2[i], s[i], 1e-5f * s[0]);
    caldera_free(s2);
    dm_free(&ud); dm_free(&utd); dm_free(&vtd); dm_free(&vd); dm_free(&us); dm_free(&usv); dm_free(&ad);
    dm_free(&utu); dm_free(&vtv); dm_free(&eye);
    caldera_free(s);
    padded_free(&u); padded_free(&vt);
}

START_TEST(test_svd) {
    struct caldera_ctx * ctx = tu_ctx();
    static const int64_t shapes[][2] = {
        { 1, 1 }, { 7, 1 }, { 1, 7 }, { 7, 7 }, { 7, 64 }, { 64, 7 }, { 64, 64 }, { 577, 64 }, { 64, 577 }, { 577, 7 },
    };
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        struct padded a = padded_alloc(shapes[i][0], shapes[i][1], 3, NAN);
        padded_randn(&a, 140 + i);
        svd_check(ctx, &a.t, "svd");
        padded_free(&a);
    }
    // rank 1: A = σ u vᵀ → s = (σ, 0, ...), U[:,0] = ±u, V[:,0] = ±v
    const int64_t m = 64, n = 7;
    const float sigma = 3.5f;
    float uu[64], vv[7];
    double nu = 0, nv = 0;
    for (int64_t i = 0; i < m; i++) { uu[i] = (float) sin(1.0 + i); nu += uu[i] * uu[i]; }
    for (int64_t j = 0; j < n; j++) { vv[j] = (float) cos(0.3 * j + 0.1); nv += vv[j] * vv[j]; }
    for (int64_t i = 0; i < m; i++) uu[i] = (float) (uu[i] / sqrt(nu));
    for (int64_t j = 0; j < n; j++) vv[j] = (float) (vv[j] / sqrt(nv));
    struct caldera_tensor a, u, vt;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &a), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &u), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, n, n, &vt), 0);
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) AT(&a, i, j) = sigma * uu[i] * vv[j];
    }
    float s[7];
    ck_assert_int_eq(caldera_linalg_svd(ctx, &a, &u, s, &vt), 0);
    ck_assert_float_eq_tol(s[0], sigma, LINALG_TOL_CLOSED * sigma);
    for (int i = 1; i < 7; i++) ck_assert_float_eq_tol(s[i], 0.0f, LINALG_TOL_CLOSED * sigma);
    double du = 0, dv = 0;
    for (int64_t i = 0; i < m; i++) du += (double) AT(&u, i, 0) * uu[i];
    for (int64_t j = 0; j < n; j++) dv += (double) AT(&vt, 0, j) * vv[j];
    ck_assert_double_eq_tol(fabs(du), 1.0, LINALG_TOL_CLOSED);
    ck_assert_double_eq_tol(fabs(dv), 1.0, LINALG_TOL_CLOSED);
    ck_assert_double_eq_tol(du * dv, 1.0, LINALG_TOL_CLOSED);   // signs agree (σ > 0)
    // 1×1: s = |a|
    float one = -2.5f, s1, u1, v1;
    struct caldera_tensor ot = caldera_tensor_view_f32(&one, 1, 1), u1t = caldera_tensor_view_f32(&u1, 1, 1),
                          v1t = caldera_tensor_view_f32(&v1, 1, 1);
    ck_assert_int_eq(caldera_linalg_svd(ctx, &ot, &u1t, &s1, &v1t), 0);
    ck_assert_float_eq_tol(s1, 2.5f, LINALG_TOL_CLOSED);
    ck_assert_float_eq_tol(u1 * s1 * v1, -2.5f, LINALG_TOL_CLOSED);
    // wrong U shape
    ck_assert_int_eq(caldera_linalg_svd(ctx, &a, &vt, s, &vt), CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "svd: incompatible dimensions");
    caldera_tensor_free(&a); caldera_tensor_free(&u); caldera_tensor_free(&vt);
    caldera_ctx_free(ctx);
}
END_TEST

// Column j of u (and row j of vt) flipped so that its largest-magnitude entry of u is positive.
static void sign_fix(struct caldera_tensor * u, struct caldera_tensor * vt, int64_t k) {
    for (int64_t j = 0; j < k; j++) {
        int64_t best = 0;
        for (int64_t i = 1; i < u->ne[0]; i++) if (fabsf(AT(u, i, j)) > fabsf(AT(u, best, j))) best = i;
        if (AT(u, best, j) < 0) {
            for (int64_t i = 0; i < u->ne[0]; i++) AT(u, i, j) = -AT(u, i, j);
            for (int64_t i = 0; i < vt->ne[1]; i++) AT(vt, j, i) = -AT(vt, j, i);
        }
    }
}

START_TEST(test_svd_trunc_exact) {
    struct caldera_ctx * ctx = tu_ctx();
    static const int64_t shapes[][3] = { { 1, 1, 1 }, { 7, 64, 3 }, { 64, 7, 7 }, { 577, 64, 10 }, { 64, 577, 1 } };
    for (size_t t = 0; t < sizeof(shapes) / sizeof(shapes[0]); t++) {
        int64_t m = shapes[t][0], n = shapes[t][1], k = shapes[t][2], kk = m < n ? m : n;
        struct caldera_tensor a = tu_randn(ctx, m, n, 150 + t), uf, vf, uk, vk;
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, kk, &uf), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, kk, n, &vf), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, k, &uk), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, k, n, &vk), 0);
        float * sf = caldera_malloc((size_t) kk * sizeof(float)), * sk = caldera_malloc((size_t) k * sizeof(float));
        ck_assert_int_eq(caldera_linalg_svd(ctx, &a, &uf, sf, &vf), 0);
        ck_assert_int_eq(caldera_linalg_svd_trunc(ctx, &a, k, -1, 0, 0, &uk, sk, &vk), 0);
        sign_fix(&uf, &vf, kk);
        sign_fix(&uk, &vk, k);
        for (int64_t j = 0; j < k; j++) {
            ck_assert_float_eq_tol(sk[j], sf[j], 1e-6f * sf[0]);
            for (int64_t i = 0; i < m; i++) ck_assert_float_eq_tol(AT(&uk, i, j), AT(&uf, i, j), LINALG_TOL_CLOSED);
            for (int64_t i = 0; i < n; i++) ck_assert_float_eq_tol(AT(&vk, j, i), AT(&vf, j, i), LINALG_TOL_CLOSED);
        }
        caldera_free(sf); caldera_free(sk);
        caldera_tensor_free(&a); caldera_tensor_free(&uf); caldera_tensor_free(&vf);
        caldera_tensor_free(&uk); caldera_tensor_free(&vk);
    }
    caldera_ctx_free(ctx);
}
END_TEST

// A = X Y, exactly rank r (in double, then rounded), (m×n).
static struct caldera_tensor low_rank(struct caldera_ctx * ctx, int64_t m, int64_t n, int64_t r, uint64_t seed) {
    struct caldera_tensor x = tu_randn(ctx, m, r, seed), y = tu_randn(ctx, r, n, seed + 1), a;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &a), 0);
    struct dm xd = dm_from(&x, 0), yd = dm_from(&y, 0);
    struct dm p = dm_mul(xd, yd);
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) AT(&a, i, j) = (float) p.d[i * n + j];
    }
    dm_free(&xd); dm_free(&yd); dm_free(&p);
    caldera_tensor_free(&x); caldera_tensor_free(&y);
    return a;
}

START_TEST(test_svd_trunc_randomized) {
    struct caldera_ctx * ctx = tu_ctx();
    static const int64_t shapes[][3] = { { 64, 64, 3 }, { 577, 64, 5 }, { 64, 577, 5 }, { 577, 577, 7 }, { 7, 64, 1 } };
    for (size_t t = 0; t < sizeof(shapes) / sizeof(shapes[0]); t++) {
        int64_t m = shapes[t][0], n = shapes[t][1], r = shapes[t][2];
        struct caldera_tensor a = low_rank(ctx, m, n, r, 160 + t), u, vt, u2, vt2;
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, r, &u), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, r, n, &vt), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, r, &u2), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, r, n, &vt2), 0);
        float s[8], s2[8];
        ck_assert_int_eq(caldera_linalg_svd_trunc(ctx, &a, r, 4, 1, 42, &u, s, &vt), 0);
        struct dm ud = dm_from(&u, 0), vtd = dm_from(&vt, 0), ad = dm_from(&a, 0);
        struct dm us = dm_scale_cols(ud, s), usv = dm_mul(us, vtd);
        double err = dm_rel(usv, ad);
        ck_assert_msg(err <= LINALG_TOL_RSVD_LOWRANK, "rsvd %lldx%lld rank %lld: rel err %g", (long long) m,
                      (long long) n, (long long) r, err);
        for (int64_t i = 1; i < r; i++) ck_assert(s[i - 1] >= s[i]);
        // same seed → identical bytes; another seed → still accurate
        ck_assert_int_eq(caldera_linalg_svd_trunc(ctx, &a, r, 4, 1, 42, &u2, s2, &vt2), 0);
        ck_assert_int_eq(memcmp(s, s2, (size_t) r * sizeof(float)), 0);
        ck_assert_int_eq(memcmp(u.data, u2.data, (size_t) (m * r) * sizeof(float)), 0);
        ck_assert_int_eq(memcmp(vt.data, vt2.data, (size_t) (r * n) * sizeof(float)), 0);
        ck_assert_int_eq(caldera_linalg_svd_trunc(ctx, &a, r, 4, 0, 43, NULL, s2, NULL), 0);
        for (int64_t i = 0; i < r; i++) ck_assert_float_eq_tol(s2[i], s[i], LINALG_TOL_RSVD_LOWRANK * s[0]);
        dm_free(&ud); dm_free(&vtd); dm_free(&ad); dm_free(&us); dm_free(&usv);
        caldera_tensor_free(&a); caldera_tensor_free(&u); caldera_tensor_free(&vt);
        caldera_tensor_free(&u2); caldera_tensor_free(&vt2);
    }
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_svd_trunc_errors) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor a = tu_randn(ctx, 7, 5, 1), u, vt, uh;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 7, 2, &u), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 2, 5, &vt), 0);
    float s[8];
    ck_assert_int_eq(caldera_linalg_svd_trunc(ctx, &a, 6, -1, 0, 0, NULL, s, NULL), CALDERA_ERR_RANGE);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "svd_trunc: rank 6 out of range [0, 5]");
    ck_assert_int_eq(caldera_linalg_svd_trunc(ctx, &a, -1, -1, 0, 0, NULL, s, NULL), CALDERA_ERR_RANGE);
    ck_assert_int_eq(caldera_linalg_svd_trunc(ctx, &a, 3, -1, 0, 0, &u, s, &vt), CALDERA_ERR_INVAL);
    // a U of the right shape but the wrong dtype is rejected, not overwritten with f32
    int64_t ne[2] = { 7, 2 };
    ck_assert_int_eq(caldera_tensor_alloc(ctx, CALDERA_DTYPE_F16, 2, ne, &uh), 0);
    ck_assert_int_eq(caldera_linalg_svd_trunc(ctx, &a, 2, -1, 0, 0, &uh, s, &vt), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_linalg_svd_trunc(ctx, &a, 2, 1, 0, 0, &uh, s, &vt), CALDERA_ERR_INVAL);
    caldera_tensor_free(&uh);
    caldera_tensor_free(&a); caldera_tensor_free(&u); caldera_tensor_free(&vt);
    caldera_ctx_free(ctx);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// lstsq

// Solve the n×n SPD system G x = r in double (Cholesky), r overwritten.
static void chol_solve_d(double * g, double * r, int64_t n, int64_t p) {
    for (int64_t j = 0; j < n; j++) {
        double s = g[j * n + j];
        for (int64_t t = 0; t < j; t++) s -= g[j * n + t] * g[j * n + t];
        ck_assert(s > 0);
        g[j * n + j] = sqrt(s);
        for (int64_t i = j + 1; i < n; i++) {
            double v = g[i * n + j];
            for (int64_t t = 0; t < j; t++) v -= g[i * n + t] * g[j * n + t];
            g[i * n + j] = v / g[j * n + j];
        }
    }
    for (int64_t c = 0; c < p; c++) {
        for (int64_t i = 0; i < n; i++) {      // L y = r
            double v = r[i * p + c];
            for (int64_t t = 0; t < i; t++) v -= g[i * n + t] * r[t * p + c];
            r[i * p + c] = v / g[i * n + i];
        }
        for (int64_t i = n - 1; i >= 0; i--) { // Lᵀ x = y
            double v = r[i * p + c];
            for (int64_t t = i + 1; t < n; t++) v -= g[t * n + i] * r[t * p + c];
            r[i * p + c] = v / g[i * n + i];
        }
    }
}

START_TEST(test_lstsq) {
    struct caldera_ctx * ctx = tu_ctx();
    // tall full-rank systems vs the normal equations AᵀA x = Aᵀb in double
    static const int64_t shapes[][3] = { { 1, 1, 1 }, { 7, 1, 2 }, { 64, 7, 3 }, { 577, 7, 2 }, { 577, 64, 1 } };
    for (size_t t = 0; t < sizeof(shapes) / sizeof(shapes[0]); t++) {
        int64_t m = shapes[t][0], n = shapes[t][1], p = shapes[t][2];
        struct padded a = padded_alloc(m, n, 2, NAN), b = padded_alloc(m, p, 1, NAN), x = padded_alloc(n, p, 3, 77.0f);
        padded_randn(&a, 170 + t);
        padded_randn(&b, 180 + t);
        if (m == 1) AT(&a.t, 0, 0) = 1.5f;
        ck_assert_int_eq(caldera_linalg_lstsq(ctx, &a.t, &b.t, &x.t), 0);
        check_pad(&x);
        struct dm at = dm_from(&a.t, 1), ad = dm_from(&a.t, 0), bd = dm_from(&b.t, 0);
        struct dm g = dm_mul(at, ad), r = dm_mul(at, bd);
        chol_solve_d(g.d, r.d, n, p);
        struct dm xd = dm_from(&x.t, 0);
        double err = dm_rel(xd, r);
        ck_assert_msg(err <= LINALG_TOL_LSTSQ, "lstsq %lldx%lld: rel err vs normal equations %g", (long long) m,
                      (long long) n, err);
        dm_free(&at); dm_free(&ad); dm_free(&bd); dm_free(&g); dm_free(&r); dm_free(&xd);
        padded_free(&a); padded_free(&b); padded_free(&x);
    }
    // square: exact solution of a well-conditioned system
    for (int s = 0; s < NSIZES; s++) {
        int64_t n = sizes[s];
        struct caldera_tensor a = tu_randn(ctx, n, n, 190 + s), xt = tu_randn(ctx, n, 2, 195 + s), b, x;
        for (int64_t i = 0; i < n; i++) {
            for (int64_t j = 0; j < n; j++) AT(&a, i, j) /= (float) sqrt((double) n);
            AT(&a, i, i) += 3.0f;
        }
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, n, 2, &b), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, n, 2, &x), 0);
        struct dm ad = dm_from(&a, 0), xd = dm_from(&xt, 0);
        struct dm bd = dm_mul(ad, xd);
        for (int64_t i = 0; i < n * 2; i++) ((float *) b.data)[i] = (float) bd.d[i];
        ck_assert_int_eq(caldera_linalg_lstsq(ctx, &a, &b, &x), 0);
        struct dm got = dm_from(&x, 0);
        double err = dm_rel(got, xd);
        ck_assert_msg(err <= LINALG_TOL_LSTSQ, "lstsq square n=%lld: rel err %g", (long long) n, err);
        dm_free(&ad); dm_free(&xd); dm_free(&bd); dm_free(&got);
        caldera_tensor_free(&a); caldera_tensor_free(&xt); caldera_tensor_free(&b); caldera_tensor_free(&x);
    }
    // rank deficient: A = [[1, 1], [1, 1], [0, 0]], b = (2, 2, 5) → minimum-norm x = (1, 1)
    float ar[6] = { 1, 1, 1, 1, 0, 0 }, br[3] = { 2, 2, 5 }, xr[2] = { -9, -9 };
    struct caldera_tensor art = caldera_tensor_view_f32(ar, 3, 2), brt = caldera_tensor_view_f32(br, 3, 1),
                          xrt = caldera_tensor_view_f32(xr, 2, 1);
    ck_assert_int_eq(caldera_linalg_lstsq(ctx, &art, &brt, &xrt), 0);
    ck_assert_float_eq_tol(xr[0], 1.0f, LINALG_TOL_CLOSED);
    ck_assert_float_eq_tol(xr[1], 1.0f, LINALG_TOL_CLOSED);
    struct caldera_tensor a = tu_randn(ctx, 5, 3, 1), b = tu_randn(ctx, 4, 2, 2), x;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 3, 2, &x), 0);
    ck_assert_int_eq(caldera_linalg_lstsq(ctx, &a, &b, &x), CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "lstsq: incompatible dimensions");
    caldera_tensor_free(&a); caldera_tensor_free(&b); caldera_tensor_free(&x);
    caldera_ctx_free(ctx);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// fwht, trace_quad

static int popcount64(uint64_t v) {
    int c = 0;
    for (; v; v &= v - 1) c++;
    return c;
}

START_TEST(test_fwht) {
    struct caldera_ctx * ctx = tu_ctx();
    static const int64_t ns[] = { 1, 2, 8, 512, 2048 };
    for (size_t t = 0; t < 5; t++) {
        int64_t n = ns[t], rows = t >= 3 ? 5 : 300;   // 2048: rows split over both threads
        struct padded a = padded_alloc(rows, n, 3, NAN);
        padded_randn(&a, 200 + t);
        struct dm x = dm_from(&a.t, 0);
        ck_assert_int_eq(caldera_linalg_fwht(ctx, &a.t), 0);
        check_pad(&a);
        for (int64_t r = 0; r < rows; r++) {
            double nx = 0;
            for (int64_t j = 0; j < n; j++) nx += x.d[r * n + j] * x.d[r * n + j];
            for (int64_t i = 0; i < n; i++) {
                double ref = 0;   // Sylvester Hadamard: H_ij = (−1)^popcount(i & j)
                for (int64_t j = 0; j < n; j++) ref += (popcount64((uint64_t) (i & j)) & 1 ? -1.0 : 1.0) * x.d[r * n + j];
                ck_assert_msg(fabs(AT(&a.t, r, i) - ref) <= LINALG_TOL_FWHT * sqrt(nx * (double) n) + 1e-30,
                              "fwht n=%lld row %lld entry %lld: %g vs %g", (long long) n, (long long) r, (long long) i,
                              (double) AT(&a.t, r, i), ref);
            }
        }
        dm_free(&x);
        padded_free(&a);
    }
    struct caldera_tensor a12 = tu_randn(ctx, 2, 12, 1);
    ck_assert_int_eq(caldera_linalg_fwht(ctx, &a12), CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "fwht: row length 12 is not a power of two");
    caldera_tensor_free(&a12);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_trace_quad) {
    struct caldera_ctx * ctx = tu_ctx();
    static const int64_t shapes[][2] = { { 1, 1 }, { 7, 64 }, { 64, 7 }, { 577, 64 }, { 7, 577 } };
    for (size_t t = 0; t < sizeof(shapes) / sizeof(shapes[0]); t++) {
        int64_t m = shapes[t][0], n = shapes[t][1];
        struct padded a = padded_alloc(m, n, 2, NAN);
        padded_randn(&a, 210 + t);
        struct caldera_tensor h = spd(ctx, n, 220 + t);
        double got = -1, ref = 0;
        ck_assert_int_eq(caldera_linalg_trace_quad(ctx, &a.t, &h, &got), 0);
        for (int64_t i = 0; i < m; i++) {
            for (int64_t j = 0; j < n; j++) {
                double s = 0;
                for (int64_t k = 0; k < n; k++) s += (double) AT(&h, j, k) * AT(&a.t, i, k);
                ref += AT(&a.t, i, j) * s;
            }
        }
        ck_assert_msg(fabs(got - ref) <= LINALG_TOL_TRACE * fabs(ref), "trace_quad %lldx%lld: %.9g vs %.9g",
                      (long long) m, (long long) n, got, ref);
        padded_free(&a);
        caldera_tensor_free(&h);
    }
    // closed form: A = [1 2], H = I → 5
    float a2[2] = { 1, 2 }, i2[4] = { 1, 0, 0, 1 };
    struct caldera_tensor at = caldera_tensor_view_f32(a2, 1, 2), it = caldera_tensor_view_f32(i2, 2, 2);
    double v = 0;
    ck_assert_int_eq(caldera_linalg_trace_quad(ctx, &at, &it, &v), 0);
    ck_assert_double_eq(v, 5.0);
    ck_assert_int_eq(caldera_linalg_trace_quad(ctx, &it, &at, &v), CALDERA_ERR_INVAL);
    caldera_ctx_free(ctx);
}
END_TEST

// Empty shapes are valid no-ops (and never reach BLAS with a zero leading dimension).
START_TEST(test_empty_shapes) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor e00, e30, e03, c33, h;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 0, 0, &e00), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 3, 0, &e30), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 0, 3, &e03), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 3, 3, &c33), 0);
    h = spd(ctx, 3, 1);
    float w[1], s[1];
    double tq = -1;
    ck_assert_int_eq(caldera_linalg_cholesky(ctx, &e00), 0);
    ck_assert_int_eq(caldera_linalg_spd_inverse(ctx, &e00), 0);
    ck_assert_int_eq(caldera_linalg_eigh(ctx, &e00, w, &e00), 0);
    ck_assert_int_eq(caldera_linalg_svd(ctx, &e30, NULL, s, NULL), 0);
    ck_assert_int_eq(caldera_linalg_svd_trunc(ctx, &e30, 0, -1, 0, 0, NULL, s, NULL), 0);
    ck_assert_int_eq(caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &e30, &e03, 0.0f, &c33), 0);
    for (int i = 0; i < 9; i++) ck_assert_float_eq(((float *) c33.data)[i], 0.0f);
    ck_assert_int_eq(caldera_linalg_syrk(ctx, CALDERA_NO_TRANS, 1.0f, &e30, 0.0f, &c33), 0);
    ck_assert_int_eq(caldera_linalg_spd_solve(ctx, &h, &e30), 0);
    ck_assert_int_eq(caldera_linalg_trace_quad(ctx, &e03, &h, &tq), 0);
    ck_assert_double_eq(tq, 0.0);
    caldera_tensor_free(&e00); caldera_tensor_free(&e30); caldera_tensor_free(&e03);
    caldera_tensor_free(&c33); caldera_tensor_free(&h);
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * linalg_suite(void) {
    Suite * s = suite_create("linalg");
    TCase * tc = tcase_create("products");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_gemm_naive);
    tcase_add_test(tc, test_gemm_closed_and_errors);
    tcase_add_test(tc, test_syrk_naive);
    tcase_add_test(tc, test_trsm);
    tcase_add_test(tc, test_fwht);
    tcase_add_test(tc, test_trace_quad);
    tcase_add_test(tc, test_empty_shapes);
    suite_add_tcase(s, tc);
    tc = tcase_create("factorisations");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_cholesky);
    tcase_add_test(tc, test_cholesky_not_pd);
    tcase_add_test(tc, test_nan_inputs);
    tcase_add_test(tc, test_spd_inverse_solve);
    tcase_add_test(tc, test_block_ldl);
    tcase_add_test(tc, test_block_ldl_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("spectral");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_eigh);
    tcase_add_test(tc, test_svd);
    tcase_add_test(tc, test_svd_trunc_exact);
    tcase_add_test(tc, test_svd_trunc_randomized);
    tcase_add_test(tc, test_svd_trunc_errors);
    tcase_add_test(tc, test_lstsq);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(linalg_suite)
