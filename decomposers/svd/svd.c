// SPDX-License-Identifier: MIT
// svd.c: truncated-SVD decomposer W ≈ L·R with L = U_k Σ_k^½, R = Σ_k^½ V_kᵀ, each factor quantized
// by a referenced quantizer (L as Lᵀ) or stored as f16/f32. With a matrix quantizer 'q' it is
// "Q + L·R from the SVD of the residual" (LQ-LoRA style initialisation): Q = quant(W, H) first,
// then the rank-k SVD of W − Q. Plain (unweighted) SVD: the H-weighted fit is caldera's job.
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "caldera/caldera-plugin.h"
#include "../common/lowrank-fused.h"
#include "../common/lowrank.h"

struct svd_priv {
    struct caldera_inst * q;             // REF (optional): matrix quantizer of Q
    struct caldera_inst * l_quant;       // REF (optional): quantizer of Lᵀ
    struct caldera_inst * r_quant;       // REF (optional): quantizer of R
    int                   factor_dtype;  // enum lr_dtype
    int64_t               rank;
    double                target_bits;
};

#define OFF(x) offsetof(struct svd_priv, x)

static const struct caldera_option svd_options[] = {
    { .name = "q", .offset = OFF(q), .type = CALDERA_OPT_REF, .ref_kind = CALDERA_PLUGIN_KIND_QUANTIZER,
      .flags = CALDERA_OPT_OPTIONAL_REF,
      .help = "matrix quantizer of a backbone Q fitted first (LQ-LoRA style); unset = L·R only" },
    { .name = "l_quant", .offset = OFF(l_quant), .type = CALDERA_OPT_REF, .ref_kind = CALDERA_PLUGIN_KIND_QUANTIZER,
      .flags = CALDERA_OPT_OPTIONAL_REF, .help = "quantizer of L, applied to Lᵀ (rank × rows); unset = factor_dtype" },
    { .name = "r_quant", .offset = OFF(r_quant), .type = CALDERA_OPT_REF, .ref_kind = CALDERA_PLUGIN_KIND_QUANTIZER,
      .flags = CALDERA_OPT_OPTIONAL_REF, .help = "quantizer of R (rank × cols); unset = factor_dtype" },
    { .name = "factor_dtype", .offset = OFF(factor_dtype), .type = CALDERA_OPT_ENUM, .def.i64 = LR_F16,
      .choices = lr_dtype_choices, .help = "storage of a factor that has no quantizer" },
    { .name = "rank", .offset = OFF(rank), .type = CALDERA_OPT_INT, .def.i64 = 32, .min = 0, .max = 65536,
      .help = "rank k (up to min(rows, cols)); ignored when target_bits > 0" },
    { .name = "target_bits", .offset = OFF(target_bits), .type = CALDERA_OPT_DOUBLE, .def.dbl = 0.0, .min = 0.0,
      .max = 64.0, .help = "if > 0: per matrix, the largest rank whose storage is <= this many bits per parameter" },
    { .name = NULL }
};

static int svd_check(struct caldera_inst * inst) {
    const struct svd_priv * p = caldera_inst_priv(inst);
    if (!p->q && p->rank == 0 && p->target_bits <= 0.0) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "rank = 0 and no 'q' quantizer leaves nothing to store; "
                             "allowed: rank >= 1, target_bits > 0, or a 'q' quantizer");
    }
    struct caldera_inst * need[3] = { p->q, p->l_quant, p->r_quant };
    for (int i = 0; p->target_bits > 0.0 && i < 3; i++) {
        if (need[i] && !lr_has_bits(need[i])) {
            return caldera_error(inst, CALDERA_ERR_INVAL, "target_bits needs the storage size of [%s], which does not "
                                 "report bits; allowed: rank = K instead", caldera_inst_name(need[i]));
        }
    }
    return 0;
}

static int svd_rank(struct caldera_inst * inst, int64_t m, int64_t n, int64_t * k_out) {
    const struct svd_priv * p = caldera_inst_priv(inst);
    const int64_t kmax = m < n ? m : n;
    if (p->target_bits > 0.0) {
        double base = 32.0 + lr_factor_bits(p->q, LR_F32, m, n) * (p->q != NULL);
        int64_t k = lr_rank_for_bits(p->target_bits, base, p->l_quant, p->r_quant, p->factor_dtype, 1, m, n, kmax);
        if (k < 0 || (k == 0 && !p->q)) {
            return caldera_error(inst, CALDERA_ERR_RANGE, "target_bits = %g leaves no rank for a %" PRId64 "x%" PRId64
                                 " weight; allowed: a larger target_bits", p->target_bits, m, n);
        }
        *k_out = k;
        return 0;
    }
    return lr_fixed_rank(inst, p->rank, m, n, k_out);
}

static int svd_check_shape(struct caldera_inst * inst, int64_t rows, int64_t cols) {
    const struct svd_priv * p = caldera_inst_priv(inst);
    int64_t k;
    int rc;
    if ((rc = lr_check_nonempty(inst, rows, cols)) < 0) {
        return rc;
    }
    if ((rc = svd_rank(inst, rows, cols, &k)) < 0 || (rc = lr_check_quant_shape(p->q, rows, cols)) < 0) {
        return rc;
    }
    if (k > 0 && ((rc = lr_check_quant_shape(p->l_quant, k, rows)) < 0 ||
                  (rc = lr_check_quant_shape(p->r_quant, k, cols)) < 0)) {
        return rc;
    }
    return 0;
}

static int svd_reconstruct(struct caldera_inst * inst, const struct caldera_pack * pack, struct caldera_tensor * w_hat) {
    const struct svd_priv * p = caldera_inst_priv(inst);
    return lr_reconstruct(inst, p->q, p->l_quant, p->r_quant, 0, pack, w_hat);
}

static int svd_decompose(struct caldera_inst * inst, const struct caldera_tensor * w, const struct caldera_tensor * h,
                         struct caldera_tensor * w_hat, struct caldera_pack * pack) {
    const struct svd_priv * p = caldera_inst_priv(inst);
    struct caldera_ctx * ctx = caldera_inst_ctx(inst);
    float * res = NULL, * qd = NULL, * u = NULL, * s = NULL, * vt = NULL, * lh = NULL, * rh = NULL;
    int64_t k;
    int rc;
    if ((rc = caldera_check_matrix(inst, "decompose", "W", w, -1, -1)) < 0) {
        return rc;
    }
    const int64_t m = w->ne[0], n = w->ne[1];
    if ((rc = caldera_check_matrix(inst, "decompose", "w_hat", w_hat, m, n)) < 0 ||
        (h && (rc = caldera_check_matrix(inst, "decompose", "H", h, n, n)) < 0) ||
        (rc = caldera_check_finite(inst, "decompose", "W", w)) < 0 || (rc = svd_check_shape(inst, m, n)) < 0 ||
        (rc = svd_rank(inst, m, n, &k)) < 0) {
        return rc;
    }
    if (!pack) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "decompose: pack is NULL; allowed: a pack from caldera_pack_init");
    }
    const int64_t kk = k > 0 ? k : 1;
    res = caldera_malloc((size_t) m * (size_t) n * sizeof(float));   // (m, n) W − Q
    qd  = caldera_malloc((size_t) m * (size_t) n * sizeof(float));   // (m, n) Q
    u   = caldera_malloc((size_t) m * (size_t) kk * sizeof(float));  // (m, k) U_k Σ^½, then L
    s   = caldera_malloc((size_t) kk * sizeof(float));
    vt  = caldera_malloc((size_t) kk * (size_t) n * sizeof(float));  // (k, n) Σ^½ V_kᵀ, then R
    lh  = caldera_malloc((size_t) m * (size_t) kk * sizeof(float));
    rh  = caldera_malloc((size_t) kk * (size_t) n * sizeof(float));
    if (!res || !qd || !u || !s || !vt || !lh || !rh) {
        rc = caldera_error(inst, CALDERA_ERR_NOMEM, "decompose: out of memory for %" PRId64 "x%" PRId64 " (rank %" PRId64
                           ")", m, n, k);
        goto fail;
    }
    for (int64_t i = 0; i < m; i++) {
        memcpy(res + i * n, (const float *) w->data + i * w->ld, (size_t) n * sizeof(float));
    }
    if ((rc = lr_put_i32(inst, pack, "rank", (int32_t) k)) < 0) {
        goto fail;
    }
    if (p->q) {
        struct caldera_tensor wt = lr_view(res, m, n), qt = lr_view(qd, m, n);
        if ((rc = caldera_pack_push_prefix(pack, "Q.")) < 0) {
            goto fail;
        }
        rc = caldera_quantizer_quantize(p->q, &wt, h, &qt, pack);
        caldera_pack_pop_prefix(pack);
        if (rc < 0) {
            goto fail;
        }
        for (int64_t i = 0; i < m * n; i++) {
            res[i] -= qd[i];
        }
    }
    if (k > 0) {
        struct caldera_tensor rt = lr_view(res, m, n), ut = lr_view(u, m, k), vtt = lr_view(vt, k, n);
        if ((rc = caldera_linalg_svd_trunc(ctx, &rt, k, -1, 0, 0, &ut, s, &vtt)) < 0) {
            rc = caldera_error(inst, rc, "decompose: rank-%" PRId64 " SVD of the %" PRId64 "x%" PRId64 " %s failed", k, m,
                               n, p->q ? "residual" : "weight");
            goto fail;
        }
        for (int64_t j = 0; j < k; j++) {   // split Σ evenly: L = U Σ^½, R = Σ^½ Vᵀ
            float r = sqrtf(s[j] > 0.0f ? s[j] : 0.0f);
            for (int64_t i = 0; i < m; i++) {
                u[i * k + j] *= r;
            }
            for (int64_t i = 0; i < n; i++) {
                vt[j * n + i] *= r;
            }
        }
        if ((rc = caldera_pack_push_prefix(pack, "L.")) < 0) {
            goto fail;
        }
        rc = lr_factor_quantize(inst, p->l_quant, p->factor_dtype, 1, u, m, k, lh, pack);
        caldera_pack_pop_prefix(pack);
        if (rc < 0 || (rc = caldera_pack_push_prefix(pack, "R.")) < 0) {
            goto fail;
        }
        rc = lr_factor_quantize(inst, p->r_quant, p->factor_dtype, 0, vt, k, n, rh, pack);
        caldera_pack_pop_prefix(pack);
        if (rc < 0) {
            goto fail;
        }
    }
    // Ŵ through the reconstruct path, so verify is exact by construction
    rc = svd_reconstruct(inst, pack, w_hat);
fail:
    caldera_free(res);
    caldera_free(qd);
    caldera_free(u);
    caldera_free(s);
    caldera_free(vt);
    caldera_free(lh);
    caldera_free(rh);
    return rc;
}

// Fused layer (caldera-kernels.h): y = g (Q x + L (R x)) from the pack, Ŵ never formed.
static int svd_linear_init(struct caldera_inst * inst, const struct caldera_pack * pack, int64_t rows, int64_t cols,
                     void ** state) {
    const struct svd_priv * p = caldera_inst_priv(inst);
    return lr_linear_init(inst, p->q, p->l_quant, p->r_quant, 0, pack, rows, cols, state);
}

static const struct caldera_decomposer_ops svd_ops = {
    .struct_size = sizeof(struct caldera_decomposer_ops),
    .decompose   = svd_decompose,
    .reconstruct = svd_reconstruct,
    .linear_init  = svd_linear_init,
    .linear_apply = lr_linear_apply,
    .linear_free  = lr_linear_free,
};

static const struct caldera_plugin svd_plugin = {
    .abi_version    = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size    = sizeof(struct caldera_plugin),
    .kind           = CALDERA_PLUGIN_KIND_DECOMPOSER,
    .name           = "svd",
    .description    = "truncated SVD W ≈ L·R (quantized or f16 factors); with 'q': Q + L·R from the residual's SVD",
    .version        = CALDERA_VERSION_INT(0, 1, 0),
    .format_version = 1,
    .priv_size      = sizeof(struct svd_priv),
    .options        = svd_options,
    .probe          = NULL,
    .check          = svd_check,
    .check_shape    = svd_check_shape,
    .init           = NULL,
    .uninit         = NULL,
    .ops            = &svd_ops,
};

CALDERA_PLUGIN_DEFINE(svd_plugin)
