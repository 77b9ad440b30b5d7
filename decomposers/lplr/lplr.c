// SPDX-License-Identifier: MIT
// lplr.c: low-precision low-rank factorisation (Saha, Srivastava, Pilanci, NeurIPS 2023;
// algorithms.md §6): W ≈ Z·R with Z = Q_L(W·S) for a seeded Gaussian sketch S (n×k, N(0, 1/k)),
// optionally after power iterations, or Z = Q_L(U_k Σ_k) (variant svd), then the least-squares
// R = pinv(Z)·W quantized by Q_R. Data-unaware (H is not used): the baseline that caldera's
// H-weighted LPLRFactorize improves on. Same pack layout as svd and caldera (L is Z).
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "caldera/caldera-plugin.h"
#include "../common/lowrank-fused.h"
#include "../common/lowrank.h"

enum lplr_variant { LPLR_SKETCH = 0, LPLR_SVD = 1 };

struct lplr_priv {
    struct caldera_inst * l_quant;
    struct caldera_inst * r_quant;
    int                   factor_dtype;
    int64_t               rank;
    double                target_bits;
    int                   variant;
    int64_t               seed;
    int64_t               power_iters;
};

#define OFF(x) offsetof(struct lplr_priv, x)

static const struct caldera_opt_choice lplr_variants[] = {
    { .name = "sketch", .value = LPLR_SKETCH, .help = "Z = Q_L(W S) with a Gaussian sketch S (the paper's LPLR)" },
    { .name = "svd", .value = LPLR_SVD, .help = "Z = Q_L(U_k Σ_k) from the rank-k SVD (LPLR-SVD)" },
    { .name = NULL }
};

static const struct caldera_option lplr_options[] = {
    { .name = "l_quant", .offset = OFF(l_quant), .type = CALDERA_OPT_REF, .ref_kind = CALDERA_PLUGIN_KIND_QUANTIZER,
      .flags = CALDERA_OPT_OPTIONAL_REF,
      .help = "quantizer of the left factor Z, applied to Zᵀ (rank × rows); unset = factor_dtype" },
    { .name = "r_quant", .offset = OFF(r_quant), .type = CALDERA_OPT_REF, .ref_kind = CALDERA_PLUGIN_KIND_QUANTIZER,
      .flags = CALDERA_OPT_OPTIONAL_REF, .help = "quantizer of the right factor R (rank × cols); unset = factor_dtype" },
    { .name = "factor_dtype", .offset = OFF(factor_dtype), .type = CALDERA_OPT_ENUM, .def.i64 = LR_F16,
      .choices = lr_dtype_choices, .help = "storage of a factor that has no quantizer" },
    { .name = "rank", .offset = OFF(rank), .type = CALDERA_OPT_INT, .def.i64 = 32, .min = 1, .max = 65536,
      .help = "rank k (up to min(rows, cols)); ignored when target_bits > 0" },
    { .name = "target_bits", .offset = OFF(target_bits), .type = CALDERA_OPT_DOUBLE, .def.dbl = 0.0, .min = 0.0,
      .max = 64.0, .help = "if > 0: per matrix, the largest rank whose storage is <= this many bits per parameter" },
    { .name = "variant", .offset = OFF(variant), .type = CALDERA_OPT_ENUM, .def.i64 = LPLR_SKETCH,
      .choices = lplr_variants, .help = "how the left factor is formed" },
    { .name = "seed", .offset = OFF(seed), .type = CALDERA_OPT_INT, .def.i64 = 0, .min = 0, .max = 9007199254740992.0,
      .help = "seed of the Gaussian sketch (variant sketch)" },
    { .name = "power_iters", .offset = OFF(power_iters), .type = CALDERA_OPT_INT, .def.i64 = 0, .min = 0, .max = 20,
      .help = "power iterations Y = (W Wᵀ)^p W S before quantizing (variant sketch)" },
    { .name = NULL }
};

static int lplr_rank(struct caldera_inst * inst, int64_t m, int64_t n, int64_t * k_out) {
    const struct lplr_priv * p = caldera_inst_priv(inst);
    const int64_t kmax = m < n ? m : n;
    if (p->target_bits > 0.0) {
        if (!lr_has_bits(p->l_quant) || !lr_has_bits(p->r_quant)) {
            return caldera_error(inst, CALDERA_ERR_INVAL, "target_bits needs factor quantizers that report their bits; "
                                 "allowed: rank = K instead");
        }
        int64_t k = lr_rank_for_bits(p->target_bits, 32.0, p->l_quant, p->r_quant, p->factor_dtype, 1, m, n, kmax);
        if (k < 1) {
            return caldera_error(inst, CALDERA_ERR_RANGE, "target_bits = %g leaves no rank for a %" PRId64 "x%" PRId64
                                 " weight; allowed: a larger target_bits", p->target_bits, m, n);
        }
        *k_out = k;
        return 0;
    }
    return lr_fixed_rank(inst, p->rank, m, n, k_out);
}

static int lplr_check_shape(struct caldera_inst * inst, int64_t rows, int64_t cols) {
    const struct lplr_priv * p = caldera_inst_priv(inst);
    int64_t k;
    int rc;
    if ((rc = lr_check_nonempty(inst, rows, cols)) < 0) {
        return rc;
    }
    if ((rc = lplr_rank(inst, rows, cols, &k)) < 0 || (rc = lr_check_quant_shape(p->l_quant, k, rows)) < 0 ||
        (rc = lr_check_quant_shape(p->r_quant, k, cols)) < 0) {
        return rc;
    }
    return 0;
}

static int lplr_reconstruct(struct caldera_inst * inst, const struct caldera_pack * pack, struct caldera_tensor * w_hat) {
    const struct lplr_priv * p = caldera_inst_priv(inst);
    return lr_reconstruct(inst, NULL, p->l_quant, p->r_quant, 0, pack, w_hat);
}

static int lplr_decompose(struct caldera_inst * inst, const struct caldera_tensor * w, const struct caldera_tensor * h,
                          struct caldera_tensor * w_hat, struct caldera_pack * pack) {
    const struct lplr_priv * p = caldera_inst_priv(inst);
    struct caldera_ctx * ctx = caldera_inst_ctx(inst);
    float * wd = NULL, * y = NULL, * zh = NULL, * r = NULL, * rh = NULL, * sk = NULL, * t = NULL, * s = NULL;
    int64_t k;
    int rc;
    (void) h;   // data-unaware by definition
    if ((rc = caldera_check_matrix(inst, "decompose", "W", w, -1, -1)) < 0) {
        return rc;
    }
    const int64_t m = w->ne[0], n = w->ne[1];
    if ((rc = caldera_check_matrix(inst, "decompose", "w_hat", w_hat, m, n)) < 0 ||
        (rc = caldera_check_finite(inst, "decompose", "W", w)) < 0 || (rc = lplr_check_shape(inst, m, n)) < 0 ||
        (rc = lplr_rank(inst, m, n, &k)) < 0) {
        return rc;
    }
    if (!pack) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "decompose: pack is NULL; allowed: a pack from caldera_pack_init");
    }
    wd = caldera_malloc((size_t) m * (size_t) n * sizeof(float));   // (m, n) W, contiguous
    y  = caldera_malloc((size_t) m * (size_t) k * sizeof(float));   // (m, k) W S or U_k Σ_k
    zh = caldera_malloc((size_t) m * (size_t) k * sizeof(float));   // (m, k) quantized Z
    r  = caldera_malloc((size_t) k * (size_t) n * sizeof(float));   // (k, n) pinv(Z) W
    rh = caldera_malloc((size_t) k * (size_t) n * sizeof(float));   // (k, n) quantized R
    if (!wd || !y || !zh || !r || !rh) {
        rc = caldera_error(inst, CALDERA_ERR_NOMEM, "decompose: out of memory for %" PRId64 "x%" PRId64 " (rank %" PRId64
                           ")", m, n, k);
        goto fail;
    }
    for (int64_t i = 0; i < m; i++) {
        memcpy(wd + i * n, (const float *) w->data + i * w->ld, (size_t) n * sizeof(float));
    }
    struct caldera_tensor wt = lr_view(wd, m, n), yt = lr_view(y, m, k);
    if (p->variant == LPLR_SVD) {
        if (!(s = caldera_malloc((size_t) k * sizeof(float)))) {
            rc = caldera_error(inst, CALDERA_ERR_NOMEM, "decompose: out of memory");
            goto fail;
        }
        if ((rc = caldera_linalg_svd_trunc(ctx, &wt, k, -1, 0, 0, &yt, s, NULL)) < 0) {
            rc = caldera_error(inst, rc, "decompose: rank-%" PRId64 " SVD failed", k);
            goto fail;
        }
        for (int64_t i = 0; i < m; i++) {
            for (int64_t j = 0; j < k; j++) {
                y[i * k + j] *= s[j];
            }
        }
    } else {
        // S (n, k) with N(0, 1/k) entries from the seed; Y = W S, then Y ← W (Wᵀ Y) power_iters times
        sk = caldera_malloc((size_t) n * (size_t) k * sizeof(float));
        t  = caldera_malloc((size_t) n * (size_t) k * sizeof(float));
        if (!sk || !t) {
            rc = caldera_error(inst, CALDERA_ERR_NOMEM, "decompose: out of memory for the sketch");
            goto fail;
        }
        struct caldera_rng rng;
        caldera_rng_seed(&rng, (uint64_t) p->seed);
        const double sd = 1.0 / sqrt((double) k);
        for (int64_t i = 0; i < n * k; i++) {
            sk[i] = (float) (sd * caldera_rng_normal(&rng));
        }
        struct caldera_tensor st = lr_view(sk, n, k), tt = lr_view(t, n, k);
        if ((rc = caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &wt, &st, 0.0f, &yt)) < 0) {
            goto fail;
        }
        for (int64_t it = 0; it < p->power_iters; it++) {
            // rescale to the sketch's size each time (the direction is what matters, not the norm)
            if ((rc = caldera_linalg_gemm(ctx, CALDERA_TRANS, CALDERA_NO_TRANS, 1.0f, &wt, &yt, 0.0f, &tt)) < 0 ||
                (rc = caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &wt, &tt, 0.0f, &yt)) < 0) {
                goto fail;
            }
            double ny = 0.0;
            for (int64_t i = 0; i < m * k; i++) {
                ny += (double) y[i] * y[i];
            }
            float sc = ny > 0.0 ? (float) sqrt((double) m / ny) : 1.0f;
            for (int64_t i = 0; i < m * k; i++) {
                y[i] *= sc;
            }
        }
    }
    if ((rc = lr_put_i32(inst, pack, "rank", (int32_t) k)) < 0 || (rc = caldera_pack_push_prefix(pack, "L.")) < 0) {
        goto fail;
    }
    rc = lr_factor_quantize(inst, p->l_quant, p->factor_dtype, 1, y, m, k, zh, pack);
    caldera_pack_pop_prefix(pack);
    if (rc < 0) {
        goto fail;
    }
    // R = pinv(Ẑ) W: SVD-based least squares (a quantized Ẑ may lose rank)
    struct caldera_tensor zt = lr_view(zh, m, k), rt = lr_view(r, k, n);
    if ((rc = caldera_linalg_lstsq(ctx, &zt, &wt, &rt)) < 0) {
        rc = caldera_error(inst, rc, "decompose: least squares for the right factor failed");
        goto fail;
    }
    if ((rc = caldera_pack_push_prefix(pack, "R.")) < 0) {
        goto fail;
    }
    rc = lr_factor_quantize(inst, p->r_quant, p->factor_dtype, 0, r, k, n, rh, pack);
    caldera_pack_pop_prefix(pack);
    if (rc < 0) {
        goto fail;
    }
    rc = lplr_reconstruct(inst, pack, w_hat);
fail:
    caldera_free(wd);
    caldera_free(y);
    caldera_free(zh);
    caldera_free(r);
    caldera_free(rh);
    caldera_free(sk);
    caldera_free(t);
    caldera_free(s);
    return rc;
}

// Fused layer (caldera-kernels.h): y = g (Q x + L (R x)) from the pack, Ŵ never formed.
static int lplr_linear_init(struct caldera_inst * inst, const struct caldera_pack * pack, int64_t rows, int64_t cols,
                      void ** state) {
    const struct lplr_priv * p = caldera_inst_priv(inst);
    return lr_linear_init(inst, NULL, p->l_quant, p->r_quant, 0, pack, rows, cols, state);
}

static const struct caldera_decomposer_ops lplr_ops = {
    .struct_size = sizeof(struct caldera_decomposer_ops),
    .decompose   = lplr_decompose,
    .reconstruct = lplr_reconstruct,
    .linear_init  = lplr_linear_init,
    .linear_apply = lr_linear_apply,
    .linear_free  = lr_linear_free,
};

static const struct caldera_plugin lplr_plugin = {
    .abi_version    = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size    = sizeof(struct caldera_plugin),
    .kind           = CALDERA_PLUGIN_KIND_DECOMPOSER,
    .name           = "lplr",
    .description    = "low-precision low-rank W ≈ Z·R: Z from a Gaussian sketch (or the SVD), R by least squares",
    .version        = CALDERA_VERSION_INT(0, 1, 0),
    .format_version = 1,
    .priv_size      = sizeof(struct lplr_priv),
    .options        = lplr_options,
    .probe          = NULL,
    .check          = NULL,
    .check_shape    = lplr_check_shape,
    .init           = NULL,
    .uninit         = NULL,
    .ops            = &lplr_ops,
};

CALDERA_PLUGIN_DEFINE(lplr_plugin)
