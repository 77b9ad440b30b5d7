// SPDX-License-Identifier: MIT
// CPU linear algebra over OpenBLAS (CBLAS) and LAPACKE, row-major f32 2-d views with a leading
// dimension. Every factorisation failure becomes CALDERA_ERR_NUMERIC with a message, never NaNs.
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <string.h>

#include "cuda/hd.h"
#include "internal.h"
#include "linalg_cuda.h"

void caldera_blas_set_threads(int n) { openblas_set_num_threads(n); }

#define LDA(t) ((t)->ld ? (t)->ld : (t)->ne[1])
// Whether an op of about `flops` floating-point operations on these tensors runs on the GPU
// (linalg_cuda.c): a device tensor among them, or device = cuda and the op is big enough.
#define ON_CUDA(flops, ...) caldera_cuda_route(ctx, (double) (flops), (const struct caldera_tensor * const[]) { __VA_ARGS__, NULL })

static int check_mat(struct caldera_ctx * ctx, const char * fn, const char * what, const struct caldera_tensor * t) {
    if (!t || !t->data) return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: %s is NULL", fn, what);
    if (t->ndim != 2 || t->dtype != CALDERA_DTYPE_F32) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: %s must be a 2-d f32 tensor (got %d-d %s)", fn, what,
                                 t->ndim, caldera_dtype_name(t->dtype));
    }
    if (t->device != CALDERA_DEVICE_CPU && t->device != CALDERA_DEVICE_CUDA) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: %s has device %d; allowed: cpu, cuda", fn, what, (int) t->device);
    }
    if (t->ne[0] < 0 || t->ne[1] < 0 || LDA(t) < t->ne[1]) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: %s has an invalid shape or leading dimension", fn, what);
    }
    return 0;
}

static int check_square(struct caldera_ctx * ctx, const char * fn, const char * what, const struct caldera_tensor * t) {
    int rc = check_mat(ctx, fn, what, t);
    if (rc == 0 && t->ne[0] != t->ne[1]) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: %s must be square (got %lld x %lld)", fn, what,
                               (long long) t->ne[0], (long long) t->ne[1]);
    }
    return rc;
}

static int dims_error(struct caldera_ctx * ctx, const char * fn) {
    return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: incompatible dimensions", fn);
}

// Dense contiguous copy of a view.
static float * dense_copy(const struct caldera_tensor * t) {
    int64_t r = t->ne[0], c = t->ne[1], n = r * c;
    float * d = caldera_malloc((size_t) (n > 0 ? n : 1) * sizeof(float));
    if (!d) return NULL;
    for (int64_t i = 0; i < r; i++) memcpy(d + i * c, (const float *) t->data + i * LDA(t), (size_t) c * sizeof(float));
    return d;
}

static void copy_into(struct caldera_tensor * t, const float * src, int64_t ldsrc, int64_t rows, int64_t cols) {
    for (int64_t i = 0; i < rows; i++) memcpy((float *) t->data + i * LDA(t), src + i * ldsrc, (size_t) cols * sizeof(float));
}

static int has_nonfinite(const struct caldera_tensor * t) {
    return caldera_tensor_check_finite(t, NULL) != 0;
}

int caldera_linalg_gemm(struct caldera_ctx * ctx, enum caldera_trans ta, enum caldera_trans tb, float alpha,
                        const struct caldera_tensor * a, const struct caldera_tensor * b, float beta,
                        struct caldera_tensor * c) {
    int rc;
    if ((rc = check_mat(ctx, "gemm", "A", a)) || (rc = check_mat(ctx, "gemm", "B", b)) || (rc = check_mat(ctx, "gemm", "C", c))) return rc;
    int64_t m = ta ? a->ne[1] : a->ne[0], k = ta ? a->ne[0] : a->ne[1];
    int64_t kb = tb ? b->ne[1] : b->ne[0], n = tb ? b->ne[0] : b->ne[1];
    if (k != kb || c->ne[0] != m || c->ne[1] != n) return dims_error(ctx, "gemm");
    if (ON_CUDA(2.0 * (double) m * (double) n * (double) k, a, b, c)) return caldera_cuda_gemm(ctx, ta, tb, alpha, a, b, beta, c);
    if (m == 0 || n == 0) return 0;
    if (k == 0) {
        for (int64_t i = 0; i < m; i++) {
            float * cr = (float *) c->data + i * LDA(c);
            for (int64_t j = 0; j < n; j++) cr[j] = beta == 0.0f ? 0.0f : beta * cr[j];
        }
        return 0;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (blasint) m, (blasint) n,
                (blasint) k, alpha, a->data, (blasint) LDA(a), b->data, (blasint) LDA(b), beta, c->data, (blasint) LDA(c));
    return 0;
}

static void mirror_lower(struct caldera_tensor * c) {
    int64_t n = c->ne[0], ld = LDA(c);
    float * d = c->data;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = i + 1; j < n; j++) d[i * ld + j] = d[j * ld + i];
    }
}

static int syrk(struct caldera_ctx * ctx, enum caldera_trans trans, float alpha, const struct caldera_tensor * a, float beta,
                struct caldera_tensor * c, int mirror) {
    int rc;
    if ((rc = check_mat(ctx, "syrk", "A", a)) || (rc = check_square(ctx, "syrk", "C", c))) return rc;
    int64_t n = trans ? a->ne[1] : a->ne[0], k = trans ? a->ne[0] : a->ne[1];
    if (c->ne[0] != n) return dims_error(ctx, "syrk");
    if (ON_CUDA((double) n * (double) n * (double) k, a, c)) return caldera_cuda_syrk(ctx, trans, alpha, a, beta, c);
    if (n == 0) return 0;
    if (k == 0) {
        for (int64_t i = 0; i < n; i++) {
            for (int64_t j = 0; j < n; j++) {
                float * p = (float *) c->data + i * LDA(c) + j;
                *p = beta == 0.0f ? 0.0f : beta * *p;
            }
        }
        return 0;
    }
    cblas_ssyrk(CblasRowMajor, CblasLower, trans ? CblasTrans : CblasNoTrans, (blasint) n, (blasint) k, alpha, a->data,
                (blasint) LDA(a), beta, c->data, (blasint) LDA(c));
    if (mirror) mirror_lower(c);
    return 0;
}

int caldera_linalg_syrk(struct caldera_ctx * ctx, enum caldera_trans trans, float alpha, const struct caldera_tensor * a,
                        float beta, struct caldera_tensor * c) {
    return syrk(ctx, trans, alpha, a, beta, c, 1);
}

int caldera_linalg_syrk_lower(struct caldera_ctx * ctx, enum caldera_trans trans, float alpha, const struct caldera_tensor * a,
                              float beta, struct caldera_tensor * c) {
    return syrk(ctx, trans, alpha, a, beta, c, 0);
}

int caldera_linalg_cholesky(struct caldera_ctx * ctx, struct caldera_tensor * a) {
    int rc = check_square(ctx, "cholesky", "A", a);
    if (rc) return rc;
    int64_t n = a->ne[0];
    if (ON_CUDA((double) n * (double) n * (double) n / 3.0, a)) return caldera_cuda_cholesky(ctx, a);
    if (n == 0) return 0;
    if (has_nonfinite(a)) return caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "cholesky: matrix has NaN or Inf entries");
    // The row-major lower triangle is the column-major upper one: factor in place, no transposes.
    lapack_int info = LAPACKE_spotrf(LAPACK_COL_MAJOR, 'U', (lapack_int) n, a->data, (lapack_int) LDA(a));
    if (info > 0) {
        return caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC,
                                 "cholesky: matrix (%lld x %lld) is not positive definite (leading minor %d)", (long long) n,
                                 (long long) n, (int) info);
    }
    if (info < 0) return caldera_ctx_error(ctx, CALDERA_ERR_BUG, "cholesky: LAPACKE_spotrf argument %d invalid", (int) -info);
    float * d = a->data;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = i + 1; j < n; j++) d[i * LDA(a) + j] = 0.0f;
    }
    return 0;
}

int caldera_linalg_trsm(struct caldera_ctx * ctx, int right, int lower, enum caldera_trans trans, int unit_diag,
                        float alpha, const struct caldera_tensor * t, struct caldera_tensor * b) {
    int rc;
    if ((rc = check_square(ctx, "trsm", "T", t)) || (rc = check_mat(ctx, "trsm", "B", b))) return rc;
    int64_t need = right ? b->ne[1] : b->ne[0];
    if (t->ne[0] != need) return dims_error(ctx, "trsm");
    if (ON_CUDA((double) b->ne[0] * (double) b->ne[1] * (double) need, t, b)) {
        return caldera_cuda_trsm(ctx, right, lower, trans, unit_diag, alpha, t, b);
    }
    if (b->ne[0] == 0 || b->ne[1] == 0) return 0;
    cblas_strsm(CblasRowMajor, right ? CblasRight : CblasLeft, lower ? CblasLower : CblasUpper,
                trans ? CblasTrans : CblasNoTrans, unit_diag ? CblasUnit : CblasNonUnit, (blasint) b->ne[0],
                (blasint) b->ne[1], alpha, t->data, (blasint) LDA(t), b->data, (blasint) LDA(b));
    return 0;
}

int caldera_linalg_spd_inverse(struct caldera_ctx * ctx, struct caldera_tensor * a) {
    int rc = check_square(ctx, "spd_inverse", "A", a);
    if (rc) return rc;
    if (ON_CUDA((double) a->ne[0] * (double) a->ne[0] * (double) a->ne[0], a)) return caldera_cuda_spd_inverse(ctx, a);
    rc = caldera_linalg_cholesky(ctx, a);
    if (rc) return rc;
    int64_t n = a->ne[0];
    if (n == 0) return 0;
    lapack_int info = LAPACKE_spotri(LAPACK_COL_MAJOR, 'U', (lapack_int) n, a->data, (lapack_int) LDA(a));
    if (info != 0) return caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "spd_inverse: inversion failed (info %d)", (int) info);
    mirror_lower(a);
    return 0;
}

int caldera_linalg_spd_solve(struct caldera_ctx * ctx, const struct caldera_tensor * a, struct caldera_tensor * b) {
    int rc;
    if ((rc = check_square(ctx, "spd_solve", "A", a)) || (rc = check_mat(ctx, "spd_solve", "B", b))) return rc;
    if (b->ne[0] != a->ne[0]) return dims_error(ctx, "spd_solve");
    int64_t n = a->ne[0];
    if (ON_CUDA((double) n * (double) n * ((double) n / 3.0 + 2.0 * (double) b->ne[1]), a, b)) return caldera_cuda_spd_solve(ctx, a, b);
    if (n == 0 || b->ne[1] == 0) return 0;
    if (has_nonfinite(b)) return caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "spd_solve: right-hand side has NaN or Inf entries");
    float * f = dense_copy(a);
    if (!f) return CALDERA_ERR_NOMEM;
    struct caldera_tensor ft = caldera_tensor_view_f32(f, n, n);
    rc = caldera_linalg_cholesky(ctx, &ft);
    if (rc == 0) {
        lapack_int info = LAPACKE_spotrs(LAPACK_ROW_MAJOR, 'L', (lapack_int) n, (lapack_int) b->ne[1], f, (lapack_int) n,
                                         b->data, (lapack_int) LDA(b));
        if (info != 0) rc = caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "spd_solve: solve failed (info %d)", (int) info);
    }
    caldera_free(f);
    return rc;
}

struct ldl_rows {
    float *        l;      // (n, n) in: M = chol(H); out: L
    int64_t        ld, n, b;
    const double * minv;   // n/b blocks of b×b: M_jj⁻¹ (lower triangular), row-major
};

// L[i, block j] = M[i, block j] · M_jj⁻¹ for the blocks left of row i's own, identity on it.
static void ldl_rows_fn(void * arg, int64_t i0, int64_t i1) {
    const struct ldl_rows * r = arg;
    double tmp[64];
    for (int64_t i = i0; i < i1; i++) {
        float * row = r->l + i * r->ld;
        int64_t bi = i / r->b;
        for (int64_t j = 0; j < bi; j++) {
            const double * mi = r->minv + j * r->b * r->b;
            const float *  x  = row + j * r->b;
            for (int64_t k = 0; k < r->b; k++) {
                double acc = 0;
                for (int64_t t = k; t < r->b; t++) acc += (double) x[t] * mi[t * r->b + k];   // M_jj⁻¹ is lower
                tmp[k] = acc;
            }
            for (int64_t k = 0; k < r->b; k++) row[j * r->b + k] = (float) tmp[k];
        }
        for (int64_t k = 0; k < r->b; k++) row[bi * r->b + k] = (bi * r->b + k == i) ? 1.0f : 0.0f;
    }
}

int caldera_linalg_block_ldl(struct caldera_ctx * ctx, const struct caldera_tensor * h, int64_t b,
                             struct caldera_tensor * l, struct caldera_tensor * d) {
    int rc;
    if ((rc = check_square(ctx, "block_ldl", "H", h)) || (rc = check_square(ctx, "block_ldl", "L", l)) ||
        (rc = check_square(ctx, "block_ldl", "D", d))) {
        return rc;
    }
    int64_t n = h->ne[0];
    if (b < 1 || n % b != 0) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "block_ldl: size %lld is not a multiple of the block size %lld",
                                 (long long) n, (long long) b);
    }
    if (b > 64) return caldera_ctx_error(ctx, CALDERA_ERR_RANGE, "block_ldl: block size %lld; allowed: 1..64", (long long) b);
    if (l->ne[0] != n || d->ne[0] != n) return dims_error(ctx, "block_ldl");
    if (ON_CUDA((double) n * (double) n * (double) n / 3.0, h, l, d)) return caldera_cuda_block_ldl(ctx, h, b, l, d);
    // L ← chol(H) (M); then D_j = M_jj M_jjᵀ and L = M · blockdiag(M_jj)⁻¹ (algorithms.md §2).
    copy_into(l, h->data, LDA(h), n, n);
    if ((rc = caldera_linalg_cholesky(ctx, l))) return rc;
    float * ld_ = l->data;
    float * dd = d->data;
    int64_t ldl = LDA(l), ldd = LDA(d), nb = n / b;
    for (int64_t i = 0; i < n; i++) memset(dd + i * ldd, 0, (size_t) n * sizeof(float));
    double * minv = caldera_malloc((size_t) (nb * b * b) * sizeof(double));
    if (!minv) return CALDERA_ERR_NOMEM;
    for (int64_t j = 0; j < nb; j++) {
        int64_t j0 = j * b;
        double * mi = minv + j * b * b;
        // D_j = M_jj M_jjᵀ (lower triangular M_jj)
        for (int64_t i = 0; i < b; i++) {
            for (int64_t k = 0; k < b; k++) {
                double acc = 0;
                for (int64_t t = 0; t <= (i < k ? i : k); t++) acc += (double) ld_[(j0 + i) * ldl + j0 + t] * ld_[(j0 + k) * ldl + j0 + t];
                dd[(j0 + i) * ldd + j0 + k] = (float) acc;
            }
        }
        // M_jj⁻¹ by forward substitution, in double (b is small)
        for (int64_t c = 0; c < b; c++) {
            for (int64_t i = 0; i < b; i++) {
                double acc = (i == c) ? 1.0 : 0.0;
                for (int64_t t = c; t < i; t++) acc -= (double) ld_[(j0 + i) * ldl + j0 + t] * mi[t * b + c];
                mi[i * b + c] = i < c ? 0.0 : acc / (double) ld_[(j0 + i) * ldl + j0 + i];
            }
        }
    }
    struct ldl_rows r = { ld_, ldl, n, b, minv };
    caldera_parallel_for(ctx, n, 64, ldl_rows_fn, &r);
    caldera_free(minv);
    if (has_nonfinite(l)) rc = caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "block_ldl: factor has NaN or Inf");
    return rc;
}

int caldera_linalg_eigh(struct caldera_ctx * ctx, const struct caldera_tensor * a, float * w, struct caldera_tensor * v) {
    int rc;
    if ((rc = check_square(ctx, "eigh", "A", a)) || (rc = check_square(ctx, "eigh", "V", v))) return rc;
    int64_t n = a->ne[0];
    if (v->ne[0] != n) return dims_error(ctx, "eigh");
    if (ON_CUDA(9.0 * (double) n * (double) n * (double) n, a, v)) return caldera_cuda_eigh(ctx, a, w, v);
    if (n == 0) return 0;
    if (has_nonfinite(a)) return caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "eigh: matrix has NaN or Inf entries");
    copy_into(v, a->data, LDA(a), n, n);
    lapack_int info = LAPACKE_ssyevd(LAPACK_ROW_MAJOR, 'V', 'L', (lapack_int) n, v->data, (lapack_int) LDA(v), w);
    if (info != 0) return caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "eigh: eigensolver did not converge (info %d)", (int) info);
    return 0;
}

int caldera_linalg_svd(struct caldera_ctx * ctx, const struct caldera_tensor * a, struct caldera_tensor * u, float * s,
                       struct caldera_tensor * vt) {
    int rc = check_mat(ctx, "svd", "A", a);
    if (rc) return rc;
    int64_t m = a->ne[0], n = a->ne[1], k = m < n ? m : n;
    if (u && ((rc = check_mat(ctx, "svd", "U", u)) || u->ne[0] != m || u->ne[1] != k)) return rc ? rc : dims_error(ctx, "svd");
    if (vt && ((rc = check_mat(ctx, "svd", "Vt", vt)) || vt->ne[0] != k || vt->ne[1] != n)) return rc ? rc : dims_error(ctx, "svd");
    if (k == 0) return 0;
    if (ON_CUDA(8.0 * (double) m * (double) n * (double) k, a, u ? u : a, vt ? vt : a)) return caldera_cuda_svd(ctx, a, u, s, vt);
    if (has_nonfinite(a)) return caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "svd: matrix has NaN or Inf entries");
    float * ac = dense_copy(a);
    float * uu = caldera_malloc((size_t) (m * k) * sizeof(float));
    float * vv = caldera_malloc((size_t) (k * n) * sizeof(float));
    float * superb = caldera_malloc((size_t) k * sizeof(float));
    if (!ac || !uu || !vv || !superb) {
        rc = CALDERA_ERR_NOMEM;
        goto done;
    }
    float * ac2 = NULL;
    lapack_int info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', (lapack_int) m, (lapack_int) n, ac, (lapack_int) n, s, uu,
                                     (lapack_int) k, vv, (lapack_int) n);
    if (info > 0) {
        // divide and conquer failed to converge: retry with the QR-iteration driver
        ac2 = dense_copy(a);
        if (!ac2) {
            rc = CALDERA_ERR_NOMEM;
            goto done;
        }
        info = LAPACKE_sgesvd(LAPACK_ROW_MAJOR, 'S', 'S', (lapack_int) m, (lapack_int) n, ac2, (lapack_int) n, s, uu,
                              (lapack_int) k, vv, (lapack_int) n, superb);
        caldera_free(ac2);
    }
    if (info != 0) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "svd: %lld x %lld SVD did not converge (info %d)", (long long) m,
                               (long long) n, (int) info);
        goto done;
    }
    if (u) copy_into(u, uu, k, m, k);
    if (vt) copy_into(vt, vv, n, k, n);
done:
    caldera_free(ac);
    caldera_free(uu);
    caldera_free(vv);
    caldera_free(superb);
    return rc;
}

// Orthonormalise the columns of a (m × l) dense matrix in place (Householder QR).
static int orthonormalize(struct caldera_ctx * ctx, float * y, int64_t m, int64_t l) {
    float * tau = caldera_malloc((size_t) l * sizeof(float));
    if (!tau) return CALDERA_ERR_NOMEM;
    lapack_int info = LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, (lapack_int) m, (lapack_int) l, y, (lapack_int) l, tau);
    if (info == 0) info = LAPACKE_sorgqr(LAPACK_ROW_MAJOR, (lapack_int) m, (lapack_int) l, (lapack_int) l, y, (lapack_int) l, tau);
    caldera_free(tau);
    return info == 0 ? 0 : caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "svd_trunc: QR failed (info %d)", (int) info);
}

int caldera_linalg_svd_trunc(struct caldera_ctx * ctx, const struct caldera_tensor * a, int64_t k, int64_t oversample,
                             int power_iters, uint64_t seed, struct caldera_tensor * u, float * s,
                             struct caldera_tensor * vt) {
    int rc = check_mat(ctx, "svd_trunc", "A", a);
    if (rc) return rc;
    int64_t m = a->ne[0], n = a->ne[1], kmax = m < n ? m : n;
    if (k < 0 || k > kmax) {
        return caldera_ctx_error(ctx, CALDERA_ERR_RANGE, "svd_trunc: rank %lld out of range [0, %lld]", (long long) k, (long long) kmax);
    }
    if (u && ((rc = check_mat(ctx, "svd_trunc", "U", u)) || u->ne[0] != m || u->ne[1] != k)) return rc ? rc : dims_error(ctx, "svd_trunc");
    if (vt && ((rc = check_mat(ctx, "svd_trunc", "Vt", vt)) || vt->ne[0] != k || vt->ne[1] != n)) return rc ? rc : dims_error(ctx, "svd_trunc");
    if (k == 0) return 0;
    float * uu = NULL, * ss = NULL, * vv = NULL, * om = NULL, * y = NULL, * z = NULL, * bm = NULL;
    int64_t l = oversample < 0 ? kmax : (k + oversample < kmax ? k + oversample : kmax);
    if (ON_CUDA(4.0 * (double) m * (double) n * (double) l * (power_iters + 1), a, u ? u : a, vt ? vt : a)) {
        if (oversample < 0 || l == kmax) return caldera_cuda_svd_trunc(ctx, a, k, l, power_iters, NULL, u, s, vt);
        // the CPU's Gaussian test matrix, so both devices sketch the same range
        om = caldera_malloc((size_t) (n * l) * sizeof(float));
        if (!om) return caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "svd_trunc: out of memory");
        struct caldera_rng rng;
        caldera_rng_seed(&rng, seed);
        for (int64_t i = 0; i < n * l; i++) om[i] = (float) caldera_rng_normal(&rng);
        rc = caldera_cuda_svd_trunc(ctx, a, k, l, power_iters, om, u, s, vt);
        caldera_free(om);
        return rc;
    }
    if (oversample < 0 || l == kmax) {
        // exact: thin SVD of A
        uu = caldera_malloc((size_t) (m * kmax) * sizeof(float));
        ss = caldera_malloc((size_t) kmax * sizeof(float));
        vv = caldera_malloc((size_t) (kmax * n) * sizeof(float));
        if (!uu || !ss || !vv) { rc = CALDERA_ERR_NOMEM; goto done; }
        struct caldera_tensor ut = caldera_tensor_view_f32(uu, m, kmax), vtt = caldera_tensor_view_f32(vv, kmax, n);
        if ((rc = caldera_linalg_svd(ctx, a, &ut, ss, &vtt))) goto done;
        if (u) copy_into(u, uu, kmax, m, k);
        memcpy(s, ss, (size_t) k * sizeof(float));
        if (vt) copy_into(vt, vv, n, k, n);
        goto done;
    }
    if (has_nonfinite(a)) { rc = caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "svd_trunc: matrix has NaN or Inf entries"); goto done; }
    // Randomized range finder (Halko, Martinsson, Tropp 2011, Alg. 4.4 with QR between passes).
    om = caldera_malloc((size_t) (n * l) * sizeof(float));
    y  = caldera_malloc((size_t) (m * l) * sizeof(float));
    z  = caldera_malloc((size_t) (n * l) * sizeof(float));
    bm = caldera_malloc((size_t) (l * n) * sizeof(float));
    uu = caldera_malloc((size_t) (l * l) * sizeof(float));
    ss = caldera_malloc((size_t) l * sizeof(float));
    vv = caldera_malloc((size_t) (l * n) * sizeof(float));
    if (!om || !y || !z || !bm || !uu || !ss || !vv) { rc = CALDERA_ERR_NOMEM; goto done; }
    struct caldera_rng rng;
    caldera_rng_seed(&rng, seed);
    for (int64_t i = 0; i < n * l; i++) om[i] = (float) caldera_rng_normal(&rng);
    struct caldera_tensor omt = caldera_tensor_view_f32(om, n, l), yt = caldera_tensor_view_f32(y, m, l);
    struct caldera_tensor zt = caldera_tensor_view_f32(z, n, l);
    if ((rc = caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, a, &omt, 0.0f, &yt))) goto done;
    if ((rc = orthonormalize(ctx, y, m, l))) goto done;
    for (int it = 0; it < power_iters; it++) {
        if ((rc = caldera_linalg_gemm(ctx, CALDERA_TRANS, CALDERA_NO_TRANS, 1.0f, a, &yt, 0.0f, &zt))) goto done;
        if ((rc = orthonormalize(ctx, z, n, l))) goto done;
        if ((rc = caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, a, &zt, 0.0f, &yt))) goto done;
        if ((rc = orthonormalize(ctx, y, m, l))) goto done;
    }
    struct caldera_tensor bt = caldera_tensor_view_f32(bm, l, n);
    if ((rc = caldera_linalg_gemm(ctx, CALDERA_TRANS, CALDERA_NO_TRANS, 1.0f, &yt, a, 0.0f, &bt))) goto done;
    struct caldera_tensor ubt = caldera_tensor_view_f32(uu, l, l), vbt = caldera_tensor_view_f32(vv, l, n);
    if ((rc = caldera_linalg_svd(ctx, &bt, &ubt, ss, &vbt))) goto done;
    memcpy(s, ss, (size_t) k * sizeof(float));
    if (u) {   // U = Y · Ub[:, :k]
        struct caldera_tensor ubk = { .data = uu, .dtype = CALDERA_DTYPE_F32, .ndim = 2, .ne = { l, k }, .ld = l };
        if ((rc = caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &yt, &ubk, 0.0f, u))) goto done;
    }
    if (vt) copy_into(vt, vv, n, k, n);
done:
    caldera_free(uu); caldera_free(ss); caldera_free(vv); caldera_free(om);
    caldera_free(y); caldera_free(z); caldera_free(bm);
    return rc;
}

int caldera_linalg_lstsq(struct caldera_ctx * ctx, const struct caldera_tensor * a, const struct caldera_tensor * b,
                         struct caldera_tensor * x) {
    int rc;
    if ((rc = check_mat(ctx, "lstsq", "A", a)) || (rc = check_mat(ctx, "lstsq", "B", b)) || (rc = check_mat(ctx, "lstsq", "X", x))) return rc;
    int64_t m = a->ne[0], n = a->ne[1], p = b->ne[1];
    if (b->ne[0] != m || x->ne[0] != n || x->ne[1] != p) return dims_error(ctx, "lstsq");
    if (ON_CUDA(8.0 * (double) m * (double) n * (double) (m < n ? m : n), a, b, x)) return caldera_cuda_lstsq(ctx, a, b, x);
    if (n == 0 || p == 0) return 0;
    if (has_nonfinite(a) || has_nonfinite(b)) return caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "lstsq: NaN or Inf in input");
    int64_t mx = m > n ? m : n;
    float * ac = dense_copy(a);
    float * bc = caldera_calloc((size_t) (mx * p), sizeof(float));
    float * sv = caldera_malloc((size_t) (m < n ? m : n) * sizeof(float) + 4);
    if (!ac || !bc || !sv) { rc = CALDERA_ERR_NOMEM; goto done; }
    for (int64_t i = 0; i < m; i++) memcpy(bc + i * p, (const float *) b->data + i * LDA(b), (size_t) p * sizeof(float));
    lapack_int rank = 0;
    lapack_int info = m ? LAPACKE_sgelsd(LAPACK_ROW_MAJOR, (lapack_int) m, (lapack_int) n, (lapack_int) p, ac, (lapack_int) n,
                                         bc, (lapack_int) p, sv, -1.0f, &rank)
                        : 0;
    if (info != 0) { rc = caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "lstsq: SVD did not converge (info %d)", (int) info); goto done; }
    copy_into(x, bc, p, n, p);
done:
    caldera_free(ac); caldera_free(bc); caldera_free(sv);
    return rc;
}

struct fwht_arg {
    float * d;
    int64_t n, ld;
};

static void fwht_rows(void * arg, int64_t r0, int64_t r1) {
    struct fwht_arg * fa = arg;
    for (int64_t r = r0; r < r1; r++) {
        float * x = fa->d + r * fa->ld;
        for (int64_t h = 1; h < fa->n; h <<= 1) {
            for (int64_t t = 0; t < fa->n / 2; t++) caldera_hd_fwht_pair(x, h, t);   // as the CUDA kernel
        }
    }
}

int caldera_linalg_fwht(struct caldera_ctx * ctx, struct caldera_tensor * a) {
    int rc = check_mat(ctx, "fwht", "A", a);
    if (rc) return rc;
    int64_t n = a->ne[1];
    if (n <= 0 || (n & (n - 1)) != 0) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "fwht: row length %lld is not a power of two", (long long) n);
    }
    if (ON_CUDA(0, a)) return caldera_cuda_fwht(ctx, a);   // memory-bound: host rows stay on the CPU
    struct fwht_arg fa = { a->data, n, LDA(a) };
    caldera_parallel_for(ctx, a->ne[0], n >= 65536 ? 1 : 65536 / n, fwht_rows, &fa);   // >= 64 Ki elements a chunk
    return 0;
}

int caldera_linalg_trace_quad(struct caldera_ctx * ctx, const struct caldera_tensor * a, const struct caldera_tensor * h,
                              double * out) {
    int rc;
    if ((rc = check_mat(ctx, "trace_quad", "A", a)) || (rc = check_square(ctx, "trace_quad", "H", h))) return rc;
    int64_t m = a->ne[0], n = a->ne[1];
    if (h->ne[0] != n) return dims_error(ctx, "trace_quad");
    if (ON_CUDA(2.0 * (double) m * (double) n * (double) n, a, h)) return caldera_cuda_trace_quad(ctx, a, h, out);
    *out = 0;
    if (m == 0 || n == 0) return 0;
    float * ah = caldera_malloc((size_t) (m * n) * sizeof(float));
    if (!ah) return CALDERA_ERR_NOMEM;
    struct caldera_tensor aht = caldera_tensor_view_f32(ah, m, n);
    rc = caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, a, h, 0.0f, &aht);
    double s = 0;
    for (int64_t i = 0; rc == 0 && i < m; i++) {
        const float * ar = (const float *) a->data + i * LDA(a);
        const float * hr = ah + i * n;
        for (int64_t j = 0; j < n; j++) s += (double) ar[j] * hr[j];
    }
    caldera_free(ah);
    *out = s;
    return rc;
}
