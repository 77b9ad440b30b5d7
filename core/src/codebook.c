// SPDX-License-Identifier: MIT
// Codebook rounding and the LDLQ block step on the context's device (caldera-plugin.h): the
// entry points that the e8, uniform and ldlq plugins call, so that their element-wise work runs on
// the GPU under device = cuda without a line of CUDA in a plugin. Each entry point checks its
// arguments, then runs either the CUDA backend's kernel (linalg_cuda.c) or, on the CPU, the same
// work items (cuda/items.h over e8p.h, uniform-rule.h, ldlq-step.h) in the order the plugins used
// before, so CPU results are unchanged and the CPU tests cover what the kernels run.
#include <inttypes.h>
#include <string.h>

#include "cuda/items.h"
#include "internal.h"
#include "linalg_cuda.h"

// An E8P search costs about 13k flops per 8 weights (e8p.h), the residual stage as much again;
// uniform rounding about 10 per weight. Host tensors go to the GPU only when that pays for the
// copies (caldera_cuda_route's threshold), device tensors always.
#define E8P_FLOPS_PER_BLOCK 13000.0
#define UNIFORM_FLOPS_PER_WEIGHT 10.0

static int64_t ld_of(const struct caldera_tensor * t) {
    return t->ld ? t->ld : t->ne[1];
}

// A 2-d tensor of dtype dt and shape (rows, cols) (-1: any) with ld >= cols, on the CPU or a GPU.
static int check_arg(struct caldera_ctx * ctx, const char * fn, const char * what, const struct caldera_tensor * t,
                     enum caldera_dtype dt, int64_t rows, int64_t cols) {
    if (!t || !t->data) return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: %s is NULL", fn, what);
    if (t->ndim != 2 || t->dtype != dt || ld_of(t) < t->ne[1] || t->ne[0] < 0 || t->ne[1] < 0 ||
        (t->device != CALDERA_DEVICE_CPU && t->device != CALDERA_DEVICE_CUDA)) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: %s must be a 2-d %s tensor with ld >= cols on the cpu or "
                                 "cuda (got %d-d %s, device %d)", fn, what, caldera_dtype_name(dt), (int) t->ndim,
                                 caldera_dtype_name(t->dtype), (int) t->device);
    }
    if ((rows >= 0 && t->ne[0] != rows) || (cols >= 0 && t->ne[1] != cols)) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: %s is %" PRId64 "x%" PRId64 "; allowed: %" PRId64 "x%" PRId64,
                                 fn, what, t->ne[0], t->ne[1], rows >= 0 ? rows : t->ne[0], cols >= 0 ? cols : t->ne[1]);
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// E8P

struct e8p_job {
    const struct e8p_tables * tab;
    int                       bits;
    const float *             scale;
    int64_t                   nscale, nb;
    const struct caldera_tensor * x, * x_hat, * c1, * c2;
};

static void e8p_rows(void * arg, int64_t i0, int64_t i1) {
    const struct e8p_job * j = arg;
    // item q = (row, block) with row stride nb: exactly what kernel thread q computes
    for (int64_t q = i0 * j->nb; q < i1 * j->nb; q++) {
        ccu_item_e8p_round(q, j->tab, j->bits, j->x->data, ld_of(j->x), j->nb, j->scale, j->nscale, j->c1->data,
                           j->c2 ? j->c2->data : NULL, ld_of(j->c1), j->x_hat->data, ld_of(j->x_hat));
    }
}

int caldera_round_e8p(struct caldera_ctx * ctx, const struct e8p_tables * tab, int bits, const float * scale,
                      int64_t nscale, const struct caldera_tensor * x, struct caldera_tensor * codes,
                      struct caldera_tensor * codes2, struct caldera_tensor * x_hat) {
    const char * fn = "caldera_round_e8p";
    int rc;
    if (!tab || !scale) return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: %s is NULL", fn, tab ? "scale" : "tab");
    if (bits < 2 || bits > 4) return caldera_ctx_error(ctx, CALDERA_ERR_RANGE, "%s: bits = %d; allowed: 2, 3, 4", fn, bits);
    if ((rc = check_arg(ctx, fn, "x", x, CALDERA_DTYPE_F32, -1, -1)) < 0) return rc;
    const int64_t m = x->ne[0], n = x->ne[1];
    if (n % E8P_DIM != 0) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: x has %" PRId64 " columns; allowed: a multiple of 8", fn, n);
    }
    if (nscale != 1 && nscale != m) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: nscale = %" PRId64 "; allowed: 1 or rows = %" PRId64, fn,
                                 nscale, m);
    }
    if (bits > 2 && !codes2) return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: codes2 is NULL at %d bits", fn, bits);
    if ((rc = check_arg(ctx, fn, "x_hat", x_hat, CALDERA_DTYPE_F32, m, n)) < 0 ||
        (rc = check_arg(ctx, fn, "codes", codes, CALDERA_DTYPE_U16, m, n / E8P_DIM)) < 0 ||
        (bits > 2 && (rc = check_arg(ctx, fn, "codes2", codes2, CALDERA_DTYPE_U16, m, n / E8P_DIM)) < 0)) {
        return rc;
    }
    if (bits == 2) codes2 = NULL;
    const double flops = (double) m * (double) (n / E8P_DIM) * E8P_FLOPS_PER_BLOCK * (bits > 2 ? 2.0 : 1.0);
    if (caldera_cuda_route(ctx, flops, (const struct caldera_tensor * const[]) { x, x_hat, codes, codes2 ? codes2 : x, NULL })) {
        return caldera_cuda_e8p_round(ctx, tab, bits, scale, nscale, x, codes, codes2, x_hat);
    }
    struct e8p_job job = { .tab = tab, .bits = bits, .scale = scale, .nscale = nscale, .nb = n / E8P_DIM, .x = x,
                           .x_hat = x_hat, .c1 = codes, .c2 = codes2 };
    caldera_parallel_for(ctx, m, job.nb > 0 ? 1 + 512 / job.nb : m, e8p_rows, &job);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Uniform

struct uniform_job {
    const struct uniform_rule * r;
    int                         gran;
    int64_t                     ngr, gs, col0;
    const float *               scale, * zero;
    const struct caldera_tensor * x, * x_hat, * codes;
};

static void uniform_rows(void * arg, int64_t i0, int64_t i1) {
    const struct uniform_job * j = arg;
    const int64_t c = j->x->ne[1];
    for (int64_t q = i0 * c; q < i1 * c; q++) {
        ccu_item_uniform_round(q, j->r, j->gran, j->ngr, j->gs, j->col0, j->x->data, ld_of(j->x), c, j->scale, j->zero,
                               j->codes->data, ld_of(j->codes), j->x_hat->data, ld_of(j->x_hat));
    }
}

int caldera_round_uniform(struct caldera_ctx * ctx, const struct uniform_rule * r, int granularity, int64_t ngr,
                          int64_t group_size, int64_t col0, const float * scale, const float * zero, int64_t nscale,
                          const struct caldera_tensor * x, struct caldera_tensor * codes,
                          struct caldera_tensor * x_hat) {
    const char * fn = "caldera_round_uniform";
    int rc;
    if (!r || !scale) return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: %s is NULL", fn, r ? "scale" : "rule");
    if ((rc = check_arg(ctx, fn, "x", x, CALDERA_DTYPE_F32, -1, -1)) < 0) return rc;
    const int64_t m = x->ne[0], n = x->ne[1];
    if ((rc = check_arg(ctx, fn, "x_hat", x_hat, CALDERA_DTYPE_F32, m, n)) < 0 ||
        (rc = check_arg(ctx, fn, "codes", codes, CALDERA_DTYPE_U8, m, n)) < 0) {
        return rc;
    }
    if (granularity < UNI_TENSOR || granularity > UNI_GROUP || col0 < 0 || r->kmax < 1 || r->kmax > 255 ||
        (granularity == UNI_GROUP && (group_size < 1 || ngr < 1))) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: granularity %d, col0 %" PRId64 ", group_size %" PRId64
                                 ", %" PRId64 " groups per row, kmax %d; allowed: granularity 0..3, col0 >= 0, kmax "
                                 "1..255, group_size and groups >= 1 for groups", fn, granularity, col0, group_size, ngr,
                                 r->kmax);
    }
    // the largest group index any weight reaches must be inside the scales
    int64_t last = m > 0 && n > 0 ? uniform_gid_of(granularity, ngr, group_size, m - 1, col0 + n - 1) : -1;
    if (last >= nscale) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: weight (%" PRId64 ", %" PRId64 ") falls in scale group %"
                                 PRId64 "; allowed: groups below nscale = %" PRId64, fn, m - 1, col0 + n - 1, last,
                                 nscale);
    }
    const double flops = (double) m * (double) n * UNIFORM_FLOPS_PER_WEIGHT;
    if (caldera_cuda_route(ctx, flops, (const struct caldera_tensor * const[]) { x, x_hat, codes, NULL })) {
        return caldera_cuda_uniform_round(ctx, r, granularity, ngr, group_size, col0, scale, zero, nscale, x, codes, x_hat);
    }
    struct uniform_job job = { .r = r, .gran = granularity, .ngr = ngr, .gs = group_size, .col0 = col0, .scale = scale,
                               .zero = zero, .x = x, .x_hat = x_hat, .codes = codes };
    caldera_parallel_for(ctx, m, 1 + 16384 / (n > 0 ? n : 1), uniform_rows, &job);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// LDLQ block step: dense tensors, all on one device.

static int check_step(struct caldera_ctx * ctx, const char * fn, const struct caldera_tensor * const * ts,
                      const char * const * names, int n) {
    for (int i = 0; i < n; i++) {
        int rc = check_arg(ctx, fn, names[i], ts[i], CALDERA_DTYPE_F32, -1, -1);
        if (rc < 0) return rc;
        if (ld_of(ts[i]) != ts[i]->ne[1]) {
            return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: %s has ld %" PRId64 " > cols %" PRId64 "; allowed: a "
                                     "dense tensor", fn, names[i], ld_of(ts[i]), ts[i]->ne[1]);
        }
        if (ts[i]->device != ts[0]->device) {
            return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: %s is on another device than %s; allowed: all on one",
                                     fn, names[i], names[0]);
        }
    }
    return 0;
}

int caldera_ldlq_gather(struct caldera_ctx * ctx, const struct caldera_tensor * xt, int64_t j0,
                        struct caldera_tensor * xj) {
    int rc = check_step(ctx, "caldera_ldlq_gather", (const struct caldera_tensor * const[]) { xt, xj },
                        (const char * const[]) { "xt", "xj" }, 2);
    if (rc < 0) return rc;
    const int64_t m = xj->ne[0], b = xj->ne[1];
    if (xt->ne[1] != m || j0 < 0 || j0 + b > xt->ne[0]) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "caldera_ldlq_gather: block [%" PRId64 ", %" PRId64 ") of xt (%"
                                 PRId64 "x%" PRId64 ") into xj (%" PRId64 "x%" PRId64 "); allowed: xt's rows, xt's cols = "
                                 "xj's rows", j0, j0 + b, xt->ne[0], xt->ne[1], m, b);
    }
    if (xt->device == CALDERA_DEVICE_CUDA) return caldera_cuda_ldlq_gather(ctx, xt->data, m, j0, b, xj->data);
    for (int64_t k = 0; k < b; k++) {
        for (int64_t r = 0; r < m; r++) ldlq_gather(k, r, xt->data, m, j0, b, xj->data);
    }
    return 0;
}

int caldera_ldlq_scatter(struct caldera_ctx * ctx, const struct caldera_tensor * qj, const struct caldera_tensor * wt,
                         int64_t j0, int64_t jl, struct caldera_tensor * hbt, struct caldera_tensor * dbt) {
    int rc = check_step(ctx, "caldera_ldlq_scatter", (const struct caldera_tensor * const[]) { qj, wt, hbt, dbt },
                        (const char * const[]) { "qj", "wt", "hbt", "dbt" }, 4);
    if (rc < 0) return rc;
    const int64_t m = qj->ne[0], b = qj->ne[1];
    if (wt->ne[1] != m || hbt->ne[1] != m || dbt->ne[1] != m || hbt->ne[0] != dbt->ne[0] || j0 < 0 || jl < 0 ||
        j0 + b > wt->ne[0] || jl + b > hbt->ne[0]) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "caldera_ldlq_scatter: block of %" PRId64 " at column %" PRId64
                                 ", buffer row %" PRId64 " does not fit wt (%" PRId64 "x%" PRId64 ") and the buffers (%"
                                 PRId64 "x%" PRId64 ") for %" PRId64 " rows", b, j0, jl, wt->ne[0], wt->ne[1], hbt->ne[0],
                                 hbt->ne[1], m);
    }
    if (qj->device == CALDERA_DEVICE_CUDA) {
        return caldera_cuda_ldlq_scatter(ctx, qj->data, wt->data, m, j0, jl, b, hbt->data, dbt->data);
    }
    for (int64_t k = 0; k < b; k++) {
        for (int64_t r = 0; r < m; r++) ldlq_scatter(k, r, qj->data, wt->data, m, j0, jl, b, hbt->data, dbt->data);
    }
    return 0;
}

int caldera_ldlq_loss(struct caldera_ctx * ctx, const struct caldera_tensor * xj, const struct caldera_tensor * qj,
                      const struct caldera_tensor * dj, double * loss) {
    int rc = check_step(ctx, "caldera_ldlq_loss", (const struct caldera_tensor * const[]) { xj, qj, dj },
                        (const char * const[]) { "xj", "qj", "dj" }, 3);
    if (rc < 0) return rc;
    if (!loss) return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "caldera_ldlq_loss: loss is NULL");
    const int64_t m = xj->ne[0], b = xj->ne[1];
    if (qj->ne[0] != m || qj->ne[1] != b || dj->ne[0] != b || dj->ne[1] != b) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "caldera_ldlq_loss: xj %" PRId64 "x%" PRId64 ", qj %" PRId64 "x%"
                                 PRId64 ", dj %" PRId64 "x%" PRId64 "; allowed: xj and qj m x b, dj b x b", m, b,
                                 qj->ne[0], qj->ne[1], dj->ne[0], dj->ne[1]);
    }
    if (xj->device == CALDERA_DEVICE_CUDA) {
        double s = 0.0;
        if ((rc = caldera_cuda_ldlq_loss(ctx, xj->data, qj->data, dj->data, m, b, &s)) < 0) return rc;
        *loss += s;
        return 0;
    }
    for (int64_t r = 0; r < m; r++) *loss += ldlq_row_loss(r, xj->data, qj->data, dj->data, b);
    return 0;
}

// The tune step's per-row double-precision work for blocks of 8 (E8P) with AVX2: the k-th output of
// a row is a vector lane, and each lane sums its terms in the order of ldlq-step.h's scalar loops
// (mul, then add, no FMA), so the results are bit-identical to ldlq_tune_target / ldlq_tune_guard.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LDLQ_AVX2 1

static int ldlq_have_avx2(void) {
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return have;
}

// x (m, 8) = old + g · hi, per element in double: s = old[r][k]; s += g[r][l] · hi[l][k] for l = 0..7.
__attribute__((target("avx2"))) static void tune_target8_avx2(const float * old, const float * g, const float * hi,
                                                                int64_t m, float * x) {
    __m256d h[8][2];
    for (int l = 0; l < 8; l++) {
        h[l][0] = _mm256_cvtps_pd(_mm_loadu_ps(hi + l * 8));
        h[l][1] = _mm256_cvtps_pd(_mm_loadu_ps(hi + l * 8 + 4));
    }
    for (int64_t r = 0; r < m; r++) {
        __m256d s0 = _mm256_cvtps_pd(_mm_loadu_ps(old + r * 8)), s1 = _mm256_cvtps_pd(_mm_loadu_ps(old + r * 8 + 4));
        for (int l = 0; l < 8; l++) {
            const __m256d gl = _mm256_set1_pd((double) g[r * 8 + l]);
            s0 = _mm256_add_pd(s0, _mm256_mul_pd(gl, h[l][0]));
            s1 = _mm256_add_pd(s1, _mm256_mul_pd(gl, h[l][1]));
        }
        _mm_storeu_ps(x + r * 8, _mm256_cvtpd_ps(s0));
        _mm_storeu_ps(x + r * 8 + 4, _mm256_cvtpd_ps(s1));
    }
}

// The guard of ldlq_tune_guard for every row: t_k = Σ_l h[k][l] (v_l − xs_l) for v = q and v = old
// (lanes k), then the two quadratic forms summed over k in order in scalar double.
__attribute__((target("avx2"))) static int64_t tune_guard8_avx2(const float * q, const float * old, float * xs,
                                                                 const float * hjj, int64_t ldh, int64_t m) {
    __m256d hc[8][2];   // column l of H_jj: hc[l] = (h[0][l], ..., h[7][l])
    for (int l = 0; l < 8; l++) {
        double c[8];
        for (int k = 0; k < 8; k++) {
            c[k] = (double) hjj[k * ldh + l];
        }
        hc[l][0] = _mm256_loadu_pd(c);
        hc[l][1] = _mm256_loadu_pd(c + 4);
    }
    int64_t kept = 0;
    for (int64_t r = 0; r < m; r++) {
        const float * qr = q + r * 8, * orow = old + r * 8;
        float *       xr = xs + r * 8;
        const __m256d x0 = _mm256_cvtps_pd(_mm_loadu_ps(xr)), x1 = _mm256_cvtps_pd(_mm_loadu_ps(xr + 4));
        double dn[8], dold[8], tn[8], to[8];
        _mm256_storeu_pd(dn, _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(qr)), x0));
        _mm256_storeu_pd(dn + 4, _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(qr + 4)), x1));
        _mm256_storeu_pd(dold, _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(orow)), x0));
        _mm256_storeu_pd(dold + 4, _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(orow + 4)), x1));
        __m256d n0 = _mm256_setzero_pd(), n1 = n0, o0 = n0, o1 = n0;
        for (int l = 0; l < 8; l++) {
            const __m256d a = _mm256_set1_pd(dn[l]), b = _mm256_set1_pd(dold[l]);
            n0 = _mm256_add_pd(n0, _mm256_mul_pd(hc[l][0], a));
            n1 = _mm256_add_pd(n1, _mm256_mul_pd(hc[l][1], a));
            o0 = _mm256_add_pd(o0, _mm256_mul_pd(hc[l][0], b));
            o1 = _mm256_add_pd(o1, _mm256_mul_pd(hc[l][1], b));
        }
        _mm256_storeu_pd(tn, _mm256_mul_pd(n0, _mm256_loadu_pd(dn)));
        _mm256_storeu_pd(tn + 4, _mm256_mul_pd(n1, _mm256_loadu_pd(dn + 4)));
        _mm256_storeu_pd(to, _mm256_mul_pd(o0, _mm256_loadu_pd(dold)));
        _mm256_storeu_pd(to + 4, _mm256_mul_pd(o1, _mm256_loadu_pd(dold + 4)));
        double lnew = 0.0, lold = 0.0;
        for (int k = 0; k < 8; k++) {
            lnew += tn[k];
            lold += to[k];
        }
        if (lnew > lold) {
            memcpy(xr, orow, 8 * sizeof(float));
            kept++;
        }
    }
    return kept;
}
#else
#define LDLQ_AVX2 0
#endif

int caldera_ldlq_tune_target(struct caldera_ctx * ctx, const struct caldera_tensor * old, const struct caldera_tensor * gj,
                             const struct caldera_tensor * hi, struct caldera_tensor * xs) {
    int rc = check_step(ctx, "caldera_ldlq_tune_target", (const struct caldera_tensor * const[]) { old, gj, hi, xs },
                        (const char * const[]) { "old", "gj", "hi", "xs" }, 4);
    if (rc < 0) return rc;
    const int64_t m = old->ne[0], b = old->ne[1];
    if (gj->ne[0] != m || gj->ne[1] != b || xs->ne[0] != m || xs->ne[1] != b || hi->ne[0] != b || hi->ne[1] != b) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "caldera_ldlq_tune_target: old %" PRId64 "x%" PRId64 ", gj %"
                                 PRId64 "x%" PRId64 ", hi %" PRId64 "x%" PRId64 ", xs %" PRId64 "x%" PRId64 "; allowed: "
                                 "old, gj, xs m x b, hi b x b", m, b, gj->ne[0], gj->ne[1], hi->ne[0], hi->ne[1],
                                 xs->ne[0], xs->ne[1]);
    }
    if (old->device == CALDERA_DEVICE_CUDA) return caldera_cuda_ldlq_tune_target(ctx, old->data, gj->data, hi->data, m, b, xs->data);
    float * x = xs->data;
#if LDLQ_AVX2
    if (b == 8 && ldlq_have_avx2()) {
        tune_target8_avx2(old->data, gj->data, hi->data, m, x);
        return 0;
    }
#endif
    for (int64_t r = 0; r < m; r++) {
        for (int64_t k = 0; k < b; k++) x[r * b + k] = ldlq_tune_target(r, k, old->data, gj->data, hi->data, b);
    }
    return 0;
}

int caldera_ldlq_tune_guard(struct caldera_ctx * ctx, const struct caldera_tensor * q, const struct caldera_tensor * old,
                            const struct caldera_tensor * hjj, struct caldera_tensor * xs, int64_t * kept) {
    int rc = check_step(ctx, "caldera_ldlq_tune_guard", (const struct caldera_tensor * const[]) { q, old, xs },
                        (const char * const[]) { "q", "old", "xs" }, 3);
    if (rc < 0 || (rc = check_arg(ctx, "caldera_ldlq_tune_guard", "hjj", hjj, CALDERA_DTYPE_F32, -1, -1)) < 0) return rc;
    if (!kept) return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "caldera_ldlq_tune_guard: kept is NULL");
    const int64_t m = q->ne[0], b = q->ne[1];
    if (old->ne[0] != m || old->ne[1] != b || xs->ne[0] != m || xs->ne[1] != b || hjj->ne[0] != b || hjj->ne[1] != b ||
        hjj->device != q->device) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "caldera_ldlq_tune_guard: q %" PRId64 "x%" PRId64 ", old %" PRId64
                                 "x%" PRId64 ", xs %" PRId64 "x%" PRId64 ", hjj %" PRId64 "x%" PRId64 "; allowed: q, old, "
                                 "xs m x b, hjj b x b, all on one device", m, b, old->ne[0], old->ne[1], xs->ne[0],
                                 xs->ne[1], hjj->ne[0], hjj->ne[1]);
    }
    if (q->device == CALDERA_DEVICE_CUDA) {
        return caldera_cuda_ldlq_tune_guard(ctx, q->data, old->data, hjj->data, ld_of(hjj), m, b, xs->data, kept);
    }
#if LDLQ_AVX2
    if (b == 8 && ldlq_have_avx2()) {
        *kept = tune_guard8_avx2(q->data, old->data, xs->data, hjj->data, ld_of(hjj), m);
        return 0;
    }
#endif
    int64_t n = 0;
    for (int64_t r = 0; r < m; r++) n += ldlq_tune_guard(r, q->data, old->data, xs->data, hjj->data, ld_of(hjj), b);
    *kept = n;
    return 0;
}

int caldera_ldlq_tune_update(struct caldera_ctx * ctx, const struct caldera_tensor * q, const struct caldera_tensor * wt,
                             int64_t j0, struct caldera_tensor * ht, struct caldera_tensor * dt,
                             struct caldera_tensor * dqt) {
    int rc = check_step(ctx, "caldera_ldlq_tune_update", (const struct caldera_tensor * const[]) { q, wt, ht, dt, dqt },
                        (const char * const[]) { "q", "wt", "ht", "dt", "dqt" }, 5);
    if (rc < 0) return rc;
    const int64_t m = q->ne[0], b = q->ne[1], n = wt->ne[0];
    if (wt->ne[1] != m || ht->ne[0] != n || ht->ne[1] != m || dt->ne[0] != n || dt->ne[1] != m || dqt->ne[0] != b ||
        dqt->ne[1] != m || j0 < 0 || j0 + b > n) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "caldera_ldlq_tune_update: block of %" PRId64 " at column %" PRId64
                                 " does not fit wt, ht, dt (%" PRId64 "x%" PRId64 ") and dqt (%" PRId64 "x%" PRId64 ") for %"
                                 PRId64 " rows", b, j0, n, wt->ne[1], dqt->ne[0], dqt->ne[1], m);
    }
    if (q->device == CALDERA_DEVICE_CUDA) {
        return caldera_cuda_ldlq_tune_update(ctx, q->data, m, j0, b, ht->data, dt->data, wt->data, dqt->data);
    }
    for (int64_t k = 0; k < b; k++) {
        for (int64_t r = 0; r < m; r++) ldlq_tune_update(k, r, q->data, m, j0, b, ht->data, dt->data, wt->data, dqt->data);
    }
    return 0;
}
