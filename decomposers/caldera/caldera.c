// SPDX-License-Identifier: MIT
// caldera.c: the CALDERA decomposer W ≈ g·(Q + L·R) (algorithms.md §1): alternating LR and Q
// updates, Q by a referenced matrix quantizer (ldlq over e8 2-bit), L and R by LPLRFactorize
// (exact H-weighted rank-k start, then closed-form alternating updates, each factor quantized by a
// referenced quantizer, L as Lᵀ); the best state by H-weighted relative error is kept. An inner
// iteration costs O(m·n·k) (closed forms on P = Res·H computed once per outer iteration).
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "caldera/caldera-plugin.h"
#include "../common/lowrank-fused.h"
#include "../common/lowrank.h"
#include "thin-gemm.h"

struct cal_priv {
    struct caldera_inst * q;            // REF (optional): matrix quantizer of Q; none = low rank only
    struct caldera_inst * l_quant;      // REF (optional): quantizer of Lᵀ (k×m); none = factor_dtype
    struct caldera_inst * r_quant;      // REF (optional): quantizer of R (k×n); none = factor_dtype
    int                   factor_dtype; // enum lr_dtype, for unquantized factors
    int64_t               rank;         // k
    double                target_bits;  // > 0: rank per matrix from a bits/param budget
    int64_t               outer_iters;
    int64_t               inner_iters;
    int                   downdate;     // fit Q with H minus the LR input subspace
    int                   warm_start;   // LR starts from the previous outer iteration's pair
    int                   global_scale; // W / rms(W) before anything, g stored
};

#define OFF(x) offsetof(struct cal_priv, x)

static const struct caldera_option cal_options[] = {
    { .name = "q", .offset = OFF(q), .type = CALDERA_OPT_REF, .ref_kind = CALDERA_PLUGIN_KIND_QUANTIZER,
      .flags = CALDERA_OPT_OPTIONAL_REF,
      .help = "matrix quantizer of the backbone Q (e.g. an ldlq section over e8 2-bit); unset = no Q (L·R only)" },
    { .name = "l_quant", .offset = OFF(l_quant), .type = CALDERA_OPT_REF, .ref_kind = CALDERA_PLUGIN_KIND_QUANTIZER,
      .flags = CALDERA_OPT_OPTIONAL_REF,
      .help = "quantizer of L, applied to Lᵀ (rank × rows, code vectors along the output dimension); unset = factor_dtype" },
    { .name = "r_quant", .offset = OFF(r_quant), .type = CALDERA_OPT_REF, .ref_kind = CALDERA_PLUGIN_KIND_QUANTIZER,
      .flags = CALDERA_OPT_OPTIONAL_REF, .help = "quantizer of R (rank × cols); unset = factor_dtype" },
    { .name = "factor_dtype", .offset = OFF(factor_dtype), .type = CALDERA_OPT_ENUM, .def.i64 = LR_F16,
      .choices = lr_dtype_choices, .help = "storage of a factor that has no quantizer (f32 = exact factors)" },
    { .name = "rank", .offset = OFF(rank), .type = CALDERA_OPT_INT, .def.i64 = 32, .min = 0, .max = 65536,
      .help = "rank k of L·R (any value up to min(rows, cols); 0 = Q only); ignored when target_bits > 0" },
    { .name = "target_bits", .offset = OFF(target_bits), .type = CALDERA_OPT_DOUBLE, .def.dbl = 0.0, .min = 0.0,
      .max = 64.0, .help = "if > 0: per matrix, the largest rank whose Q + L + R storage is <= this many bits per parameter" },
    { .name = "outer_iters", .offset = OFF(outer_iters), .type = CALDERA_OPT_INT, .def.i64 = 5, .min = 1, .max = 1000,
      .help = "outer iterations (one LR update, then one Q update each; stops at a fixed point; reference: 20)" },
    { .name = "inner_iters", .offset = OFF(inner_iters), .type = CALDERA_OPT_INT, .def.i64 = 20, .min = 0, .max = 10000,
      .help = "LPLR alternating updates of L and R per outer iteration (stops at a repeated state; reference: 50)" },
    { .name = "downdate", .offset = OFF(downdate), .type = CALDERA_OPT_BOOL, .def.i64 = 0,
      .help = "fit Q with the Hessian minus the input subspace L·R already represents (reference: on; measured worse)" },
    { .name = "warm_start", .offset = OFF(warm_start), .type = CALDERA_OPT_BOOL, .def.i64 = 1,
      .help = "start L, R from the previous outer iteration's pair instead of a new SVD (reference: off)" },
    { .name = "global_scale", .offset = OFF(global_scale), .type = CALDERA_OPT_BOOL, .def.i64 = 1,
      .help = "divide W by rms(W) first and store that scale (as the reference)" },
    { .name = NULL }
};

// ---------------------------------------------------------------------------------------------
// Options and shapes

static int cal_check(struct caldera_inst * inst) {
    const struct cal_priv * p = caldera_inst_priv(inst);
    if (!p->q && p->rank == 0 && p->target_bits <= 0.0) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "rank = 0 and no 'q' quantizer leaves nothing to store; "
                             "allowed: rank >= 1, target_bits > 0, or a 'q' quantizer");
    }
    if (p->target_bits > 0.0) {
        struct caldera_inst * need[3] = { p->q, p->l_quant, p->r_quant };
        for (int i = 0; i < 3; i++) {
            if (need[i] && !lr_has_bits(need[i])) {
                return caldera_error(inst, CALDERA_ERR_INVAL, "target_bits needs the storage size of [%s] (plugin %s), "
                                     "which does not report bits; allowed: rank = K instead of target_bits",
                                     caldera_inst_name(need[i]), caldera_inst_plugin(need[i])->name);
            }
        }
    }
    return 0;
}

// Bits of everything but the factors: Q, the global scale and the stored rank.
static double cal_base_bits(const struct cal_priv * p, int64_t m, int64_t n) {
    double b = 32.0 + (p->global_scale ? 32.0 : 0.0);
    if (p->q) {
        const struct caldera_quantizer_ops * qo = caldera_inst_plugin(p->q)->ops;
        b += qo->bits ? qo->bits(p->q, m, n) : 0.0;
    }
    return b;
}

// The rank for an m×n weight; a message and a negative status when it is impossible.
static int cal_rank(struct caldera_inst * inst, int64_t m, int64_t n, int64_t * k_out) {
    const struct cal_priv * p = caldera_inst_priv(inst);
    const int64_t kmax = m < n ? m : n;
    if (p->target_bits > 0.0) {
        double base = cal_base_bits(p, m, n);
        int64_t k = lr_rank_for_bits(p->target_bits, base, p->l_quant, p->r_quant, p->factor_dtype, 1, m, n, kmax);
        if (k < 0) {
            return caldera_error(inst, CALDERA_ERR_RANGE, "target_bits = %g is below the %.4f bits/param that Q and "
                                 "the scales alone need for a %" PRId64 "x%" PRId64 " weight; allowed: target_bits >= %.4f",
                                 p->target_bits, base / ((double) m * (double) n), m, n,
                                 base / ((double) m * (double) n));
        }
        if (k == 0 && !p->q) {
            return caldera_error(inst, CALDERA_ERR_RANGE, "target_bits = %g leaves rank 0 for a %" PRId64 "x%" PRId64
                                 " weight and there is no 'q'; allowed: a larger target_bits", p->target_bits, m, n);
        }
        *k_out = k;
        return 0;
    }
    return lr_fixed_rank(inst, p->rank, m, n, k_out);
}

static int cal_check_shape(struct caldera_inst * inst, int64_t rows, int64_t cols) {
    const struct cal_priv * p = caldera_inst_priv(inst);
    int64_t k;
    int rc;
    if ((rc = lr_check_nonempty(inst, rows, cols)) < 0) {
        return rc;
    }
    if ((rc = cal_rank(inst, rows, cols, &k)) < 0) {
        return rc;
    }
    if (p->q && (rc = lr_check_quant_shape(p->q, rows, cols)) < 0) {
        return rc;
    }
    if (k > 0 && ((rc = lr_check_quant_shape(p->l_quant, k, rows)) < 0 ||
                  (rc = lr_check_quant_shape(p->r_quant, k, cols)) < 0)) {
        return rc;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Work state of one decomposition

struct cal_work {
    struct caldera_inst * inst;
    struct caldera_ctx *  ctx;
    struct cal_priv *     p;
    int64_t               m, n, k;
    const float *         h;       // (n, n) dense H, or NULL for H = I
    struct caldera_tensor hdev;    // device = cuda: H on the GPU (uploaded on first use), or data NULL
    float *               f;       // (n, n) F with F Fᵀ = H (lazily, for downdate / m > n init), NULL = I
    double                flops;   // counted GEMM/SYRK FLOPs of this plugin (quantizers not included)
    // scratch for the LR step
    float * res;   // (m, n) Res = Ws − Q
    float * pm;    // (m, n) P = Res·H
    float * rh;    // (k, n) R·H
    float * g;     // (k, k) R H Rᵀ
    float * at;    // (k, m) R Pᵀ = (Res H Rᵀ)ᵀ
    float * c;     // (k, k) LᵀL
    float * lt;    // (k, m) Lᵀ during the L-step
    float * l;     // (m, k) L (unquantized)
    float * r;     // (k, n) R (unquantized)
    float * lq;    // (m, k) quantized L of the current inner iterate
    float * rq;    // (k, n) quantized R
    // thin products (thin-gemm.h) on the CPU: the rank-k operand packed, the large one in place
    int                   thin;      // device = cpu: thin_gemm for products of at least thin_min r·N·K
    double                thin_min;  // THIN_GEMM_MIN_MNK (tests: 0, every product thin)
    enum thin_gemm_kernel kern;
    float * pt;    // (n, m) Pᵀ, kept with P when R·Pᵀ is a thin product
    float * xp;    // (max(m, n), r8) the packed rank-k operand
};

// Whether the r×N product with inner dimension K is a thin product (see thin-gemm.h): on the CPU
// and large enough that OpenBLAS would have run its blocked path, whose bits thin_gemm repeats.
static int thin_ok(const struct cal_work * wk, int64_t r, int64_t n, int64_t k_dim) {
    return wk->thin && (double) r * (double) n * (double) k_dim >= wk->thin_min;
}

// P changed: refresh Pᵀ for the thin R·Pᵀ.
static void refresh_pt(struct cal_work * wk) {
    if (wk->pt) {
        lr_transpose(wk->pt, wk->pm, wk->n, wk->m, wk->n);
    }
}

static int gemm(struct cal_work * wk, enum caldera_trans ta, enum caldera_trans tb, float alpha, float * a, int64_t ar,
                int64_t ac, float * b, int64_t br, int64_t bc, float beta, float * c, int64_t cr, int64_t cc) {
    struct caldera_tensor at = lr_view(a, ar, ac), bt = lr_view(b, br, bc), ct = lr_view(c, cr, cc);
    wk->flops += 2.0 * (double) cr * (double) cc * (double) (ta ? ar : ac);
    return caldera_linalg_gemm(wk->ctx, ta, tb, alpha, &at, &bt, beta, &ct);
}

// out (rows, n) = x·H (a copy for H = I). Under device = cuda H stays on the GPU for the whole
// decomposition (it is the one large operand every LR step multiplies by), and only x and out move.
static int mul_h(struct cal_work * wk, float * x, int64_t rows, float * out) {
    if (!wk->h) {
        memcpy(out, x, (size_t) rows * (size_t) wk->n * sizeof(float));
        return 0;
    }
    if (caldera_ctx_device(wk->ctx) == CALDERA_DEVICE_CUDA) {
        const int64_t n = wk->n, ne[2] = { n, n };
        struct caldera_tensor hv = lr_view((float *) wk->h, n, n), xt = lr_view(x, rows, n), ot = lr_view(out, rows, n);
        int rc;
        if (!wk->hdev.data && ((rc = caldera_tensor_alloc_device(wk->ctx, CALDERA_DEVICE_CUDA, CALDERA_DTYPE_F32, 2, ne,
                                                                 &wk->hdev)) < 0 ||
                               (rc = caldera_tensor_copy(wk->ctx, &wk->hdev, &hv)) < 0)) {
            caldera_tensor_free(&wk->hdev);
            return caldera_error(wk->inst, rc, "decompose: cannot keep H on the GPU: %s", caldera_ctx_errmsg(wk->ctx));
        }
        wk->flops += 2.0 * (double) rows * (double) n * (double) n;
        return caldera_linalg_gemm(wk->ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &xt, &wk->hdev, 0.0f, &ot);
    }
    return gemm(wk, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, x, rows, wk->n, (float *) wk->h, wk->n, wk->n, 0.0f, out,
                rows, wk->n);
}

static double dot(const float * a, const float * b, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        s += (double) a[i] * b[i];
    }
    return s;
}

// F with F Fᵀ = H: the Cholesky factor, or V·diag(√λ₊) from eigh when H is only semi-definite.
static int cal_factor_h(struct cal_work * wk) {
    const int64_t n = wk->n;
    float * w = NULL, * v = NULL;
    int rc;
    if (!wk->h || wk->f) {
        return 0;
    }
    if (!(wk->f = caldera_malloc((size_t) n * (size_t) n * sizeof(float)))) {
        return caldera_error(wk->inst, CALDERA_ERR_NOMEM, "decompose: out of memory for a %" PRId64 "x%" PRId64
                             " Hessian factor", n, n);
    }
    memcpy(wk->f, wk->h, (size_t) n * (size_t) n * sizeof(float));
    struct caldera_tensor ft = lr_view(wk->f, n, n);
    wk->flops += (double) n * n * n / 3.0;
    if ((rc = caldera_linalg_cholesky(wk->ctx, &ft)) == 0) {
        return 0;
    }
    if (rc != CALDERA_ERR_NUMERIC) {
        return rc;
    }
    w = caldera_malloc((size_t) n * sizeof(float));
    v = caldera_malloc((size_t) n * (size_t) n * sizeof(float));
    if (!w || !v) {
        rc = caldera_error(wk->inst, CALDERA_ERR_NOMEM, "decompose: out of memory");
        goto fail;
    }
    struct caldera_tensor ht = lr_view((float *) wk->h, n, n), vt = lr_view(v, n, n);
    if ((rc = caldera_linalg_eigh(wk->ctx, &ht, w, &vt)) < 0) {
        rc = caldera_error(wk->inst, rc, "decompose: eigendecomposition of H failed");
        goto fail;
    }
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < n; j++) {
            wk->f[i * n + j] = v[i * n + j] * sqrtf(w[j] > 0.0f ? w[j] : 0.0f);
        }
    }
fail:
    caldera_free(w);
    caldera_free(v);
    return rc;
}

// k×k SPD solve G X = B (B k×cols overwritten); a singular G (a quantized factor lost rank) is
// retried with a ridge of 1e-6 · mean(diag G), the reference's pinv fallback in spirit. On the CPU
// (k <= THIN_SOLVE_MAX_K) the Cholesky factor is LAPACK's and the two substitutions are
// thin_chol_solve (LAPACK's spotrs arithmetic without its transposes); else caldera_linalg_spd_solve.
static int solve_spd(struct cal_work * wk, const float * g, float * b, int64_t cols, float * tmp) {
    const int64_t k = wk->k;
    const int thin = wk->thin && k <= THIN_SOLVE_MAX_K;
    struct caldera_tensor gt = lr_view(tmp, k, k), bt = lr_view(b, k, cols);
    int rc;
    for (int attempt = 0; attempt < 2; attempt++) {
        memcpy(tmp, g, (size_t) k * (size_t) k * sizeof(float));
        if (attempt == 1) {
            double mean = 0.0;
            for (int64_t i = 0; i < k; i++) {
                mean += g[i * k + i];
            }
            mean = mean > 0.0 ? mean / (double) k : 1.0;
            for (int64_t i = 0; i < k; i++) {
                tmp[i * k + i] += (float) (1e-6 * mean);
            }
        }
        if (!thin) {
            rc = caldera_linalg_spd_solve(wk->ctx, &gt, &bt);
        } else if (caldera_tensor_check_finite(&bt, NULL) != 0) {
            rc = CALDERA_ERR_NUMERIC;   // as spd_solve: a right-hand side with NaN or Inf
        } else if ((rc = caldera_linalg_cholesky(wk->ctx, &gt)) == 0) {
            thin_chol_solve(wk->kern, k, tmp, b, cols, cols);
        }
        if (rc != CALDERA_ERR_NUMERIC) {
            return rc;
        }
    }
    return caldera_error(wk->inst, CALDERA_ERR_NUMERIC, "decompose: a %" PRId64 "x%" PRId64 " normal matrix of the "
                         "LR update is singular even with a ridge (a factor is zero or not finite)", k, k);
}

// For the pair (l (m,k), r (k,n)) against Res with P = Res·H and c0 = tr(Res H Resᵀ): fill rh, g, at
// and return ‖(Res − L R) H½‖²_F = c0 − 2 tr(L·(R Pᵀ)) + tr(LᵀL · R H Rᵀ).
static int pair_error(struct cal_work * wk, const float * l, float * r, double c0, double * err2) {
    const int64_t m = wk->m, n = wk->n, k = wk->k;
    int rc;
    if (k == 0) {
        *err2 = c0;
        return 0;
    }
    const int thin_rh = wk->h && thin_ok(wk, k, n, n), thin_at = wk->pt && thin_ok(wk, k, m, n);
    if (thin_rh || thin_at) {
        thin_gemm_pack(1, n, k, r, n, wk->xp);   // Rᵀ, shared by R·H and R·Pᵀ
    }
    if (thin_rh) {
        wk->flops += 2.0 * (double) k * (double) n * (double) n;
        thin_gemm(wk->ctx, wk->kern, n, k, n, wk->xp, wk->h, n, wk->rh, n);
    } else if ((rc = mul_h(wk, r, k, wk->rh)) < 0) {
        return rc;
    }
    if (thin_at) {
        wk->flops += 2.0 * (double) k * (double) m * (double) n;
        thin_gemm(wk->ctx, wk->kern, n, k, m, wk->xp, wk->pt, m, wk->at, m);
    } else if ((rc = gemm(wk, CALDERA_NO_TRANS, CALDERA_TRANS, 1.0f, r, k, n, wk->pm, m, n, 0.0f, wk->at, k, m)) < 0) {
        return rc;
    }
    if ((rc = gemm(wk, CALDERA_NO_TRANS, CALDERA_TRANS, 1.0f, wk->rh, k, n, r, k, n, 0.0f, wk->g, k, k)) < 0) {
        return rc;
    }
    struct caldera_tensor lt = lr_view((float *) l, m, k), ct = lr_view(wk->c, k, k);
    wk->flops += (double) m * k * k;
    if ((rc = caldera_linalg_syrk(wk->ctx, CALDERA_TRANS, 1.0f, &lt, 0.0f, &ct)) < 0) {
        return rc;
    }
    double cross = 0.0;
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < k; j++) {
            cross += (double) l[i * k + j] * wk->at[j * m + i];
        }
    }
    *err2 = c0 - 2.0 * cross + dot(wk->c, wk->g, k * k);
    return 0;
}

// Exact H-weighted rank-k regression of Res: L R = U_k U_kᵀ Res with U_k the top-k left singular
// vectors of Res·F (F Fᵀ = H), i.e. [Res H½]_k H^-½ (algorithms.md §1.4 LR_init, without H^-½).
// m ≤ n: U_k from eigh(P Resᵀ) (m×m); m > n: right vectors V_k from eigh(Zᵀ Z), Z = Res F, and
// U_k = Z V_k / σ. Output: wk->l = U_k (orthonormal), wk->r = U_kᵀ Res.
static int lr_init(struct cal_work * wk) {
    const int64_t m = wk->m, n = wk->n, k = wk->k, s = m <= n ? m : n;
    float * sm = NULL, * vv = NULL, * w = NULL, * z = NULL;
    int rc;
    sm = caldera_malloc((size_t) s * (size_t) s * sizeof(float));
    vv = caldera_malloc((size_t) s * (size_t) s * sizeof(float));
    w  = caldera_malloc((size_t) s * sizeof(float));
    if (!sm || !vv || !w) {
        rc = caldera_error(wk->inst, CALDERA_ERR_NOMEM, "decompose: out of memory for the rank-%" PRId64 " start", k);
        goto fail;
    }
    if (m <= n) {
        if ((rc = gemm(wk, CALDERA_NO_TRANS, CALDERA_TRANS, 1.0f, wk->pm, m, n, wk->res, m, n, 0.0f, sm, m, m)) < 0) {
            goto fail;
        }
        for (int64_t i = 0; i < m; i++) {   // symmetric in exact arithmetic; average the rounding
            for (int64_t j = 0; j < i; j++) {
                float a = 0.5f * (sm[i * m + j] + sm[j * m + i]);
                sm[i * m + j] = sm[j * m + i] = a;
            }
        }
    } else {
        if ((rc = cal_factor_h(wk)) < 0) {
            goto fail;
        }
        if (!(z = caldera_malloc((size_t) m * (size_t) n * sizeof(float)))) {
            rc = caldera_error(wk->inst, CALDERA_ERR_NOMEM, "decompose: out of memory");
            goto fail;
        }
        if (wk->f) {
            if ((rc = gemm(wk, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, wk->res, m, n, wk->f, n, n, 0.0f, z, m, n)) < 0) {
                goto fail;
            }
        } else {
            memcpy(z, wk->res, (size_t) m * (size_t) n * sizeof(float));
        }
        struct caldera_tensor zt = lr_view(z, m, n), st = lr_view(sm, n, n);
        wk->flops += (double) n * n * m;
        if ((rc = caldera_linalg_syrk(wk->ctx, CALDERA_TRANS, 1.0f, &zt, 0.0f, &st)) < 0) {
            goto fail;
        }
    }
    struct caldera_tensor st = lr_view(sm, s, s), vt = lr_view(vv, s, s);
    if ((rc = caldera_linalg_eigh(wk->ctx, &st, w, &vt)) < 0) {
        rc = caldera_error(wk->inst, rc, "decompose: eigendecomposition for the rank-%" PRId64 " start failed", k);
        goto fail;
    }
    // eigenvalues ascending: component j of the result is column s-1-j
    const float wmax = w[s - 1] > 0.0f ? w[s - 1] : 0.0f;
    if (m <= n) {
        for (int64_t i = 0; i < m; i++) {
            for (int64_t j = 0; j < k; j++) {
                wk->l[i * k + j] = vv[i * s + (s - 1 - j)];
            }
        }
    } else {
        float * vk = sm;   // (n, k) top-k right vectors scaled by 1/σ, reusing sm
        for (int64_t i = 0; i < n; i++) {
            for (int64_t j = 0; j < k; j++) {
                float lam = w[s - 1 - j];
                vk[i * k + j] = lam > 1e-12f * wmax && lam > 0.0f ? vv[i * s + (s - 1 - j)] / sqrtf(lam) : 0.0f;
            }
        }
        if ((rc = gemm(wk, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, z, m, n, vk, n, k, 0.0f, wk->l, m, k)) < 0) {
            goto fail;
        }
    }
    rc = gemm(wk, CALDERA_TRANS, CALDERA_NO_TRANS, 1.0f, wk->l, m, k, wk->res, m, n, 0.0f, wk->r, k, n);
fail:
    caldera_free(sm);
    caldera_free(vv);
    caldera_free(w);
    caldera_free(z);
    return rc;
}

// FNV-1a style over the bits of a float array, one 32-bit word per step: identifies a repeated
// quantized R (a cycle of the deterministic inner map R_t -> R_t+1).
static uint64_t hash_floats(const float * x, int64_t n) {
    uint64_t h = 1469598103934665603ull;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, sizeof(u));
        h = (h ^ u) * 1099511628211ull;
    }
    return h;
}

// Quantize the pair (wk->l, wk->r)-style factors into a fresh scratch pack ("L." / "R." prefixes):
// which = 0: L from src into dst; 1: R.
static int quant_factor(struct cal_work * wk, struct caldera_pack * pack, int which, const float * src, float * dst) {
    const struct cal_priv * p = wk->p;
    int rc;
    if ((rc = caldera_pack_push_prefix(pack, which ? "R." : "L.")) < 0) {
        return caldera_error(wk->inst, rc, "decompose: cannot push a pack prefix");
    }
    rc = which ? lr_factor_quantize(wk->inst, p->r_quant, p->factor_dtype, 0, src, wk->k, wk->n, dst, pack)
               : lr_factor_quantize(wk->inst, p->l_quant, p->factor_dtype, 1, src, wk->m, wk->k, dst, pack);
    caldera_pack_pop_prefix(pack);
    return rc;
}

// L-step: wk->l = argmin_L ‖(Res − L R) H½‖ = (Res H Rᵀ)(R H Rᵀ)⁻¹, from wk->g = R H Rᵀ and
// wk->at = R Pᵀ of the current R (tmp: k×k scratch). O(m·k²) beyond what pair_error computed.
static int step_l(struct cal_work * wk, float * tmp) {
    const int64_t m = wk->m, k = wk->k;
    int rc;
    memcpy(wk->lt, wk->at, (size_t) k * (size_t) m * sizeof(float));
    if ((rc = solve_spd(wk, wk->g, wk->lt, m, tmp)) < 0) {
        return rc;
    }
    wk->flops += 2.0 * (double) k * k * m;
    lr_transpose(wk->l, wk->lt, m, k, m);
    return 0;
}

// R-step: wk->r = argmin_R ‖(Res − L R) H½‖ = (LᵀL)⁻¹ Lᵀ Res for the given (quantized) L; the
// H-weighting drops out because H½ multiplies from the right. O(m·n·k).
static int step_r(struct cal_work * wk, const float * l, float * tmp) {
    const int64_t m = wk->m, n = wk->n, k = wk->k;
    int rc;
    struct caldera_tensor lt = lr_view((float *) l, m, k), ct = lr_view(wk->c, k, k);
    wk->flops += (double) m * k * k;
    if ((rc = caldera_linalg_syrk(wk->ctx, CALDERA_TRANS, 1.0f, &lt, 0.0f, &ct)) < 0) {
        return rc;
    }
    if (thin_ok(wk, k, n, m)) {
        wk->flops += 2.0 * (double) k * (double) n * (double) m;
        thin_gemm_pack(0, m, k, l, k, wk->xp);
        thin_gemm(wk->ctx, wk->kern, m, k, n, wk->xp, wk->res, n, wk->r, n);
    } else if ((rc = gemm(wk, CALDERA_TRANS, CALDERA_NO_TRANS, 1.0f, (float *) l, m, k, wk->res, m, n, 0.0f, wk->r, k,
                          n)) < 0) {
        return rc;
    }
    if ((rc = solve_spd(wk, wk->c, wk->r, n, tmp)) < 0) {
        return rc;
    }
    wk->flops += 2.0 * (double) k * k * n;
    return 0;
}

struct lr_result {
    struct caldera_pack * pack;   // best pair's scratch pack (owned by the caller afterwards)
    double                err2;   // its ‖(Res − L R) H½‖²
    int64_t               iters;  // inner iterations run
};

// One LR update ("LPLRFactorize") of Res = wk->res with P = wk->pm, c0 = tr(Res H Resᵀ).
// Start: warm (cur_l, cur_r, cur_pack, cur_err2 given: the previous pair, a candidate itself) or the
// exact rank-k regression. Then inner iterations: L = (P Rᵀ)(R H Rᵀ)⁻¹, quantize L (as Lᵀ),
// R = (LᵀL)⁻¹ Lᵀ Res, quantize R, error by the trace identity; the best pair is kept.
// best_l / best_r (dense) receive the best pair's values.
static int lr_step(struct cal_work * wk, double c0, const float * cur_l, const float * cur_r,
                   struct caldera_pack * cur_pack, double cur_err2, float * best_l, float * best_r,
                   struct lr_result * out) {
    const struct cal_priv * p = wk->p;
    const int64_t m = wk->m, n = wk->n, k = wk->k;
    const int exact = !p->l_quant && !p->r_quant && p->factor_dtype == LR_F32;
    struct caldera_pack * pk = NULL;
    uint64_t * seen = NULL;
    float * tmp = NULL;
    int64_t nseen = 0;
    int rc = 0;

    out->pack = NULL;
    out->err2 = INFINITY;
    out->iters = 0;
    tmp = caldera_malloc((size_t) k * (size_t) k * sizeof(float));
    seen = caldera_malloc((size_t) (p->inner_iters + 1) * sizeof(uint64_t));
    if (!tmp || !seen) {
        rc = caldera_error(wk->inst, CALDERA_ERR_NOMEM, "decompose: out of memory");
        goto fail;
    }
    if (cur_pack) {
        // warm start: the previous pair is the first candidate; pair_error filled rh, g, at for it
        out->pack = cur_pack;
        out->err2 = cur_err2;
        if (best_l != cur_l) {
            memcpy(best_l, cur_l, (size_t) m * (size_t) k * sizeof(float));
            memcpy(best_r, cur_r, (size_t) k * (size_t) n * sizeof(float));
        }
        memcpy(wk->r, cur_r, (size_t) k * (size_t) n * sizeof(float));
        seen[nseen++] = hash_floats(cur_r, k * n);
    } else {
        if ((rc = lr_init(wk)) < 0) {
            goto fail;
        }
        if (exact || p->inner_iters == 0) {
            // the exact regression is the answer (full-precision factors), or no iterations asked
            if ((rc = caldera_pack_init(&pk)) < 0 || (rc = quant_factor(wk, pk, 0, wk->l, best_l)) < 0 ||
                (rc = quant_factor(wk, pk, 1, wk->r, best_r)) < 0 ||
                (rc = pair_error(wk, best_l, best_r, c0, &out->err2)) < 0) {
                goto fail;
            }
            out->pack = pk;
            pk = NULL;
            goto fail;   // done
        }
        double dummy;
        if ((rc = pair_error(wk, wk->l, wk->r, c0, &dummy)) < 0) {   // rh, g, at of the unquantized R
            goto fail;
        }
    }
    for (int64_t it = 0; it < p->inner_iters; it++) {
        if ((rc = step_l(wk, tmp)) < 0 || (rc = caldera_pack_init(&pk)) < 0 ||
            (rc = quant_factor(wk, pk, 0, wk->l, wk->lq)) < 0 || (rc = step_r(wk, wk->lq, tmp)) < 0) {
            goto fail;
        }
        if ((rc = quant_factor(wk, pk, 1, wk->r, wk->rq)) < 0) {
            goto fail;
        }
        double e2;
        if ((rc = pair_error(wk, wk->lq, wk->rq, c0, &e2)) < 0) {   // also rh, g, at for the next L-step
            goto fail;
        }
        out->iters = it + 1;
        caldera_inst_log(wk->inst, CALDERA_LOG_DEBUG, "  inner %" PRId64 ": err² %.6g%s", it + 1, e2,
                         e2 < out->err2 ? " (best)" : "");
        if (e2 < out->err2) {
            if (out->pack != cur_pack) {
                caldera_pack_free(out->pack);
            }
            out->pack = pk;
            out->err2 = e2;
            pk = NULL;
            memcpy(best_l, wk->lq, (size_t) m * (size_t) k * sizeof(float));
            memcpy(best_r, wk->rq, (size_t) k * (size_t) n * sizeof(float));
        } else {
            caldera_pack_free(pk);
            pk = NULL;
        }
        // The next iterate is a function of Rq alone: a repeated Rq means every later state was seen.
        uint64_t hv = hash_floats(wk->rq, k * n);
        int cyc = 0;
        for (int64_t j = 0; j < nseen && !cyc; j++) {
            cyc = seen[j] == hv;
        }
        if (cyc) {
            break;
        }
        seen[nseen++] = hv;
    }
fail:
    caldera_pack_free(pk);
    caldera_free(tmp);
    caldera_free(seen);
    if (rc < 0 && out->pack && out->pack != cur_pack) {
        caldera_pack_free(out->pack);
        out->pack = NULL;
    }
    return rc;
}

// Hessian for the Q step with the downdate (algorithms.md §1.3): H' = H − F V Vᵀ Fᵀ with V an
// orthonormal basis of the row space of R·F (= the top right singular vectors of L R F when L has
// full column rank), computed from the k×n SVD of R F instead of an m×n one.
static int downdate_h(struct cal_work * wk, const float * r, float * hq) {
    const int64_t n = wk->n, k = wk->k;
    float * rf = NULL, * vt = NULL, * s = NULL, * gm = NULL;
    int rc;
    if ((rc = cal_factor_h(wk)) < 0) {
        return rc;
    }
    rf = caldera_malloc((size_t) k * (size_t) n * sizeof(float));
    vt = caldera_malloc((size_t) k * (size_t) n * sizeof(float));
    s  = caldera_malloc((size_t) k * sizeof(float));
    gm = caldera_malloc((size_t) n * (size_t) k * sizeof(float));
    if (!rf || !vt || !s || !gm) {
        rc = caldera_error(wk->inst, CALDERA_ERR_NOMEM, "decompose: out of memory for the downdate");
        goto fail;
    }
    if (wk->f) {
        if ((rc = gemm(wk, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, (float *) r, k, n, wk->f, n, n, 0.0f, rf, k, n)) < 0) {
            goto fail;
        }
    } else {
        memcpy(rf, r, (size_t) k * (size_t) n * sizeof(float));
    }
    struct caldera_tensor rft = lr_view(rf, k, n), vtt = lr_view(vt, k, n);
    if ((rc = caldera_linalg_svd(wk->ctx, &rft, NULL, s, &vtt)) < 0) {
        rc = caldera_error(wk->inst, rc, "decompose: SVD of R·H½ for the downdate failed");
        goto fail;
    }
    int64_t kr = 0;   // numerical rank
    while (kr < k && s[kr] > 1e-6f * s[0]) {
        kr++;
    }
    if (wk->h) {
        memcpy(hq, wk->h, (size_t) n * (size_t) n * sizeof(float));
    } else {
        memset(hq, 0, (size_t) n * (size_t) n * sizeof(float));
        for (int64_t i = 0; i < n; i++) {
            hq[i * n + i] = 1.0f;
        }
    }
    if (kr == 0) {
        goto fail;   // nothing to remove
    }
    if (wk->f) {   // G = F Vᵀ_kr (n × kr)
        if ((rc = gemm(wk, CALDERA_NO_TRANS, CALDERA_TRANS, 1.0f, wk->f, n, n, vt, kr, n, 0.0f, gm, n, kr)) < 0) {
            goto fail;
        }
    } else {
        lr_transpose(gm, vt, n, kr, n);
    }
    struct caldera_tensor gt = lr_view(gm, n, kr), ht = lr_view(hq, n, n);
    wk->flops += (double) n * n * kr;
    rc = caldera_linalg_syrk(wk->ctx, CALDERA_NO_TRANS, -1.0f, &gt, 1.0f, &ht);
fail:
    caldera_free(rf);
    caldera_free(vt);
    caldera_free(s);
    caldera_free(gm);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// reconstruct: Ŵ = g·(Q + L R) from the pack (also the last step of decompose, so verify is exact)

static int cal_reconstruct(struct caldera_inst * inst, const struct caldera_pack * pack, struct caldera_tensor * w_hat) {
    const struct cal_priv * p = caldera_inst_priv(inst);
    return lr_reconstruct(inst, p->q, p->l_quant, p->r_quant, p->global_scale, pack, w_hat);
}

// ---------------------------------------------------------------------------------------------
// decompose

#define CAL_MAX_PACKS 4096

static int cal_decompose(struct caldera_inst * inst, const struct caldera_tensor * w, const struct caldera_tensor * h,
                         struct caldera_tensor * w_hat, struct caldera_pack * pack) {
    struct cal_priv * p = caldera_inst_priv(inst);
    struct caldera_ctx * ctx = caldera_inst_ctx(inst);
    struct cal_work wk = { .inst = inst, .ctx = ctx, .p = p };
    float * ws = NULL, * hd = NULL, * qd = NULL, * hq = NULL, * cl = NULL, * cr = NULL;
    struct caldera_pack * packs[CAL_MAX_PACKS];   // every outer-level scratch pack, freed at the end
    int64_t npacks = 0;
    struct caldera_pack * cur_q = NULL, * cur_lr = NULL, * best_q = NULL, * best_lr = NULL;
    double best = INFINITY, first_lr = NAN, first_q = NAN;
    int have_best = 0;
    int rc;

    if ((rc = caldera_check_matrix(inst, "decompose", "W", w, -1, -1)) < 0) {
        return rc;
    }
    const int64_t m = w->ne[0], n = w->ne[1];
    if ((rc = caldera_check_matrix(inst, "decompose", "w_hat", w_hat, m, n)) < 0 ||
        (h && (rc = caldera_check_matrix(inst, "decompose", "H", h, n, n)) < 0)) {
        return rc;
    }
    if (!pack) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "decompose: pack is NULL; allowed: a pack from caldera_pack_init");
    }
    if ((rc = caldera_check_finite(inst, "decompose", "W", w)) < 0 ||
        (h && (rc = caldera_check_finite(inst, "decompose", "H", h)) < 0) ||
        (rc = cal_check_shape(inst, m, n)) < 0 || (rc = cal_rank(inst, m, n, &wk.k)) < 0) {
        return rc;
    }
    const int64_t k = wk.k;
    wk.m = m;
    wk.n = n;
    const size_t mn = (size_t) m * (size_t) n * sizeof(float);
    const size_t mk = (size_t) m * (size_t) (k > 0 ? k : 1) * sizeof(float);
    const size_t kn = (size_t) (k > 0 ? k : 1) * (size_t) n * sizeof(float);
    const size_t kk = (size_t) (k > 0 ? k : 1) * (size_t) (k > 0 ? k : 1) * sizeof(float);
    ws = caldera_malloc(mn);
    qd = caldera_calloc(1, mn);
    wk.res = caldera_malloc(mn);
    wk.pm = caldera_malloc(mn);
    wk.rh = caldera_malloc(kn);
    wk.g = caldera_malloc(kk);
    wk.at = caldera_malloc(mk);
    wk.c = caldera_malloc(kk);
    wk.lt = caldera_malloc(mk);
    wk.l = caldera_calloc(1, mk);
    wk.r = caldera_calloc(1, kn);
    wk.lq = caldera_malloc(mk);
    wk.rq = caldera_malloc(kn);
    cl = caldera_calloc(1, mk);
    cr = caldera_calloc(1, kn);
    wk.thin = caldera_ctx_device(ctx) == CALDERA_DEVICE_CPU;
    wk.thin_min = THIN_GEMM_MIN_MNK;
    wk.kern = thin_gemm_best();
    if (k > 0 && wk.thin) {
        const int64_t big = m > n ? m : n;
        const int need_pt = thin_ok(&wk, k, m, n);
        wk.xp = caldera_malloc((size_t) big * (size_t) thin_gemm_r8(k) * sizeof(float));
        wk.pt = need_pt ? caldera_malloc(mn) : NULL;
        if (!wk.xp || (need_pt && !wk.pt)) {
            rc = caldera_error(inst, CALDERA_ERR_NOMEM, "decompose: out of memory for %" PRId64 "x%" PRId64 " (rank %"
                               PRId64 ") work matrices", m, n, k);
            goto fail;
        }
    }
    if (!ws || !qd || !wk.res || !wk.pm || !wk.rh || !wk.g || !wk.at || !wk.c || !wk.lt || !wk.l || !wk.r || !wk.lq ||
        !wk.rq || !cl || !cr) {
        rc = caldera_error(inst, CALDERA_ERR_NOMEM, "decompose: out of memory for %" PRId64 "x%" PRId64 " (rank %" PRId64
                           ") work matrices", m, n, k);
        goto fail;
    }
    if (h) {
        if (!(hd = caldera_malloc((size_t) n * (size_t) n * sizeof(float)))) {
            rc = caldera_error(inst, CALDERA_ERR_NOMEM, "decompose: out of memory for H");
            goto fail;
        }
        for (int64_t i = 0; i < n; i++) {
            memcpy(hd + i * n, (const float *) h->data + i * h->ld, (size_t) n * sizeof(float));
        }
        wk.h = hd;
    }
    // 1. Global scale g = rms(W); Ws = W / g.
    double gs = p->global_scale ? lr_rms(w) : 1.0;
    const float g = gs > 0.0 ? (float) gs : 1.0f;
    for (int64_t i = 0; i < m; i++) {
        const float * wr = (const float *) w->data + i * w->ld;
        for (int64_t j = 0; j < n; j++) {
            ws[i * n + j] = wr[j] / g;
        }
    }
    // 2. Res = Ws, P = Ws H, den = tr(Ws H Wsᵀ).
    memcpy(wk.res, ws, mn);
    if ((rc = mul_h(&wk, wk.res, m, wk.pm)) < 0) {
        goto fail;
    }
    refresh_pt(&wk);
    const double den = dot(wk.res, wk.pm, m * n);
    const double dnz = den > 0.0 ? den : 1.0;
    double c0 = den;
    double cur_err2 = INFINITY;   // error of (current Q, current LR) once known
    int64_t inner_total = 0, outer_run = 0;
    int64_t q_tune_run = 0;   // tune passes the Q steps ran (ldlq's "ldlq.tune_iters_run"), for FLOP counts
    if (p->q && k > 0 && p->downdate && !(hq = caldera_malloc((size_t) n * (size_t) n * sizeof(float)))) {
        rc = caldera_error(inst, CALDERA_ERR_NOMEM, "decompose: out of memory for the downdated H");
        goto fail;
    }
    for (int64_t t = 0; t < p->outer_iters; t++) {
        // --- LR step on Res = Ws − Q (wk.res, wk.pm, c0 hold it) ---
        if (k > 0) {
            struct lr_result lr;
            const uint64_t before = hash_floats(cl, m * k) ^ (hash_floats(cr, k * n) * 31u);
            // warm: start from the current pair, whose error (cur_err2) and rh, g, at against this
            // Res were computed right after the last Q step
            const int warm = p->warm_start && cur_lr != NULL;
            if ((rc = lr_step(&wk, c0, cl, cr, warm ? cur_lr : NULL, cur_err2, cl, cr, &lr)) < 0) {
                goto fail;
            }
            inner_total += lr.iters;
            if (lr.pack != cur_lr) {
                if (npacks == CAL_MAX_PACKS) {
                    caldera_pack_free(lr.pack);
                    rc = caldera_error(inst, CALDERA_ERR_BUG, "decompose: too many states");
                    goto fail;
                }
                packs[npacks++] = lr.pack;
                cur_lr = lr.pack;
            }
            cur_err2 = lr.err2;
            if (isnan(first_lr)) {
                first_lr = sqrt(fmax(lr.err2, 0.0) / dnz);
            }
            if (lr.err2 < best) {
                best = lr.err2;
                best_q = cur_q;
                best_lr = cur_lr;
                have_best = 1;
            }
            // Fixed point: the LR step returned the pair it started from, so the Q step (a function of
            // L, R, W and H only) would return the same Q, and every later iteration would repeat
            // this one. Stopping here gives the same result as running them all.
            if (t > 0 && p->q && (hash_floats(cl, m * k) ^ (hash_floats(cr, k * n) * 31u)) == before) {
                break;
            }
        }
        outer_run = t + 1;
        if (!p->q) {
            break;   // L·R only: Res never changes, more outer iterations repeat the same step
        }
        // --- Q step on Res = Ws − L R ---
        memcpy(wk.res, ws, mn);
        if (k > 0 && (rc = gemm(&wk, CALDERA_NO_TRANS, CALDERA_NO_TRANS, -1.0f, cl, m, k, cr, k, n, 1.0f, wk.res, m, n)) < 0) {
            goto fail;
        }
        const float * hqs = wk.h;
        if (hq) {
            if ((rc = downdate_h(&wk, cr, hq)) < 0) {
                goto fail;
            }
            hqs = hq;
        }
        struct caldera_pack * qp = NULL;
        if ((rc = caldera_pack_init(&qp)) < 0) {
            rc = caldera_error(inst, rc, "decompose: out of memory");
            goto fail;
        }
        if (npacks == CAL_MAX_PACKS) {
            caldera_pack_free(qp);
            rc = caldera_error(inst, CALDERA_ERR_BUG, "decompose: too many states");
            goto fail;
        }
        packs[npacks++] = qp;
        struct caldera_tensor rt = lr_view(wk.res, m, n), ht = lr_view((float *) hqs, n, n), qt = lr_view(qd, m, n);
        if ((rc = caldera_quantizer_quantize(p->q, &rt, hqs ? &ht : NULL, &qt, qp)) < 0) {
            goto fail;
        }
        cur_q = qp;
        int64_t tr = 0;
        if (caldera_meta_get_int(caldera_pack_meta(qp), "ldlq.tune_iters_run", &tr) == 0) {
            q_tune_run += tr;
        }
        // --- the new state's error, by P = (Ws − Q) H, which is also the next LR step's input ---
        for (int64_t i = 0; i < m * n; i++) {
            wk.res[i] = ws[i] - qd[i];
        }
        if ((rc = mul_h(&wk, wk.res, m, wk.pm)) < 0) {
            goto fail;
        }
        refresh_pt(&wk);
        c0 = dot(wk.res, wk.pm, m * n);
        double e2 = c0;
        if (k > 0 && (rc = pair_error(&wk, cl, cr, c0, &e2)) < 0) {
            goto fail;
        }
        cur_err2 = e2;
        caldera_inst_log(inst, CALDERA_LOG_DEBUG, "outer %" PRId64 ": after LR %.5f, after Q %.5f (rel. error, H)", t + 1,
                         k > 0 ? sqrt(fmax(best_lr == cur_lr ? best : cur_err2, 0.0) / dnz) : NAN, sqrt(fmax(e2, 0.0) / dnz));
        if (isnan(first_q)) {
            first_q = sqrt(fmax(e2, 0.0) / dnz);
        }
        if (e2 < best) {
            best = e2;
            best_q = cur_q;
            best_lr = cur_lr;
            have_best = 1;
        }
    }
    if (!have_best) {
        rc = caldera_error(inst, CALDERA_ERR_BUG, "decompose: no state was evaluated");
        goto fail;
    }
    // 3. The best state into the pack, then Ŵ from the pack (the reconstruct path).
    if ((rc = lr_put_i32(inst, pack, "rank", (int32_t) k)) < 0) {
        goto fail;
    }
    if (p->global_scale) {
        const int64_t ne[1] = { 1 };
        void * data = NULL;
        if ((rc = caldera_pack_add(pack, "global_scale", CALDERA_DTYPE_F32, 1, ne, &data)) < 0) {
            rc = caldera_error(inst, rc, "decompose: cannot add 'global_scale' to the pack");
            goto fail;
        }
        memcpy(data, &g, sizeof(g));
    }
    if ((best_q && (rc = lr_pack_copy(inst, pack, "Q.", best_q)) < 0) ||
        (best_lr && (rc = lr_pack_copy(inst, pack, "", best_lr)) < 0)) {
        goto fail;
    }
    if (p->q && !best_q) {
        rc = caldera_error(inst, CALDERA_ERR_BUG, "decompose: the best state has no Q");
        goto fail;
    }
    if ((rc = cal_reconstruct(inst, pack, w_hat)) < 0) {
        goto fail;
    }
    struct caldera_meta * meta = caldera_pack_meta(pack);
    caldera_meta_set_int(meta, "caldera.rank", CALDERA_META_I64, k);
    caldera_meta_set_float(meta, "caldera.rel_err_h", CALDERA_META_F64, sqrt(fmax(best, 0.0) / dnz));
    if (!isnan(first_lr)) {
        caldera_meta_set_float(meta, "caldera.rel_err_h_first_lr", CALDERA_META_F64, first_lr);
    }
    if (!isnan(first_q)) {
        caldera_meta_set_float(meta, "caldera.rel_err_h_first_q", CALDERA_META_F64, first_q);
    }
    caldera_meta_set_int(meta, "caldera.inner_iters_run", CALDERA_META_I64, inner_total);
    caldera_meta_set_int(meta, "caldera.outer_iters_run", CALDERA_META_I64, outer_run);
    caldera_meta_set_float(meta, "caldera.flops", CALDERA_META_F64, wk.flops);
    caldera_meta_set_int(meta, "caldera.q_tune_iters_run", CALDERA_META_I64, q_tune_run);
    caldera_inst_log(inst, CALDERA_LOG_DEBUG, "%" PRId64 "x%" PRId64 " rank %" PRId64 ": rel. error (H) first LR %.5f, "
                     "first Q %.5f, best %.5f; %" PRId64 " inner iterations", m, n, k, first_lr, first_q,
                     sqrt(fmax(best, 0.0) / dnz), inner_total);
fail:
    for (int64_t i = 0; i < npacks; i++) {
        caldera_pack_free(packs[i]);
    }
    caldera_free(ws);
    caldera_free(hd);
    caldera_free(qd);
    caldera_free(hq);
    caldera_free(cl);
    caldera_free(cr);
    caldera_free(wk.f);
    caldera_tensor_free(&wk.hdev);
    caldera_free(wk.res);
    caldera_free(wk.pm);
    caldera_free(wk.rh);
    caldera_free(wk.g);
    caldera_free(wk.at);
    caldera_free(wk.c);
    caldera_free(wk.lt);
    caldera_free(wk.l);
    caldera_free(wk.r);
    caldera_free(wk.lq);
    caldera_free(wk.rq);
    caldera_free(wk.pt);
    caldera_free(wk.xp);
    return rc;
}

// Fused layer (caldera-kernels.h): y = g (Q x + L (R x)) from the pack, Ŵ never formed.
static int cal_linear_init(struct caldera_inst * inst, const struct caldera_pack * pack, int64_t rows, int64_t cols,
                     void ** state) {
    const struct cal_priv * p = caldera_inst_priv(inst);
    return lr_linear_init(inst, p->q, p->l_quant, p->r_quant, p->global_scale, pack, rows, cols, state);
}

static const struct caldera_decomposer_ops cal_ops = {
    .struct_size = sizeof(struct caldera_decomposer_ops),
    .decompose   = cal_decompose,
    .reconstruct = cal_reconstruct,
    .linear_init  = cal_linear_init,
    .linear_apply = lr_linear_apply,
    .linear_free  = lr_linear_free,
};

static const struct caldera_plugin caldera_plugin = {
    .abi_version    = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size    = sizeof(struct caldera_plugin),
    .kind           = CALDERA_PLUGIN_KIND_DECOMPOSER,
    .name           = "caldera",
    .description    = "CALDERA: W ≈ Q + L·R, Q by a matrix quantizer, L and R quantized low-rank factors, H-weighted",
    .version        = CALDERA_VERSION_INT(0, 1, 0),
    .format_version = 1,
    .priv_size      = sizeof(struct cal_priv),
    .options        = cal_options,
    .probe          = NULL,
    .check          = cal_check,
    .check_shape    = cal_check_shape,
    .init           = NULL,
    .uninit         = NULL,
    .ops            = &cal_ops,
};

CALDERA_PLUGIN_DEFINE(caldera_plugin)
