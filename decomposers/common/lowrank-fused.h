// SPDX-License-Identifier: MIT
// lowrank-fused.h: the fused layer of the low-rank decomposers (caldera, svd, lplr): y = g·(Q x +
// L (R x)) straight from the pack that lr_reconstruct reads (lowrank.h), without forming Ŵ: Q
// through its quantizer's fused form, R x and L t as two small products with the factors in their
// stored precision (codes through their quantizers' fused forms; "values" f16/f32 through the
// dense kernels). L is stored as Lᵀ (rank × rows) when quantized, so L t is a transposed product.
#ifndef CALDERA_LOWRANK_FUSED_H
#define CALDERA_LOWRANK_FUSED_H

#include <inttypes.h>
#include <string.h>

#include "caldera/caldera-kernels.h"
#include "caldera/caldera-plugin.h"
#include "lowrank.h"

struct lr_linear {
    int64_t               m, n, k;
    float                 g;          // global scale (1 when none is stored)
    struct caldera_inst * q, * lq, * rq;
    void *                qs, * ls, * rs;   // the quantizers' fused states (NULL when absent)
    struct caldera_kw     lv, rv;     // unquantized factors: L "values" (m × k), R "values" (k × n)
};

static inline void lr_linear_free(struct caldera_inst * inst, void * state) {
    (void) inst;
    struct lr_linear * f = state;
    if (!f) {
        return;
    }
    caldera_quantizer_linear_free(f->q, f->qs);
    caldera_quantizer_linear_free(f->lq, f->ls);
    caldera_quantizer_linear_free(f->rq, f->rs);
    caldera_free(f);
}

// One factor under the current prefix: through quantizer fq (stored as its transpose when
// transpose, i.e. Lᵀ) into *fs, or the "values" tensor (rows × cols) into kw.
static inline int lr_linear_factor(struct caldera_inst * inst, struct caldera_inst * fq, int transpose,
                                   const struct caldera_pack * pack, int64_t rows, int64_t cols, void ** fs,
                                   struct caldera_kw * kw) {
    if (fq) {
        return caldera_quantizer_linear_init(fq, pack, transpose ? cols : rows, transpose ? rows : cols, fs);
    }
    struct caldera_tensor t;
    int rc = caldera_pack_find(pack, "values", &t);
    if (rc < 0) {
        return caldera_error(inst, rc == CALDERA_ERR_NOT_FOUND ? CALDERA_ERR_FORMAT : rc,
                             "linear_init: the pack has no factor tensor 'values'");
    }
    if (t.ndim != 2 || t.ne[0] != rows || t.ne[1] != cols || (t.dtype != CALDERA_DTYPE_F16 && t.dtype != CALDERA_DTYPE_F32)) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "linear_init: factor 'values' is %s %" PRId64 "x%" PRId64
                             "; expected f16 or f32 %" PRId64 "x%" PRId64, caldera_dtype_name(t.dtype), t.ne[0],
                             t.ndim > 1 ? t.ne[1] : 1, rows, cols);
    }
    *kw = (struct caldera_kw) { .type = t.dtype == CALDERA_DTYPE_F16 ? CALDERA_KW_F16 : CALDERA_KW_F32, .rows = rows,
                                .cols = cols, .data = t.data, .ld = cols };
    return 0;
}

/** Fused state for Ŵ = g·(Q + L R) (rows × cols) from the pack lr_reconstruct reads. */
static inline int lr_linear_init(struct caldera_inst * inst, struct caldera_inst * q, struct caldera_inst * lq,
                                 struct caldera_inst * rq, int global_scale, const struct caldera_pack * pack_c,
                                 int64_t rows, int64_t cols, void ** state) {
    struct caldera_pack * pack = (struct caldera_pack *) pack_c;   // prefixes are pushed and popped again
    struct lr_linear *    f = NULL;
    int32_t               k32 = 0;
    int                   rc;
    *state = NULL;
    if (!(f = caldera_calloc(1, sizeof(*f)))) {
        return caldera_error(inst, CALDERA_ERR_NOMEM, "linear_init: out of memory");
    }
    f->m = rows;
    f->n = cols;
    f->g = 1.0f;
    f->q = q;
    f->lq = lq;
    f->rq = rq;
    if ((rc = lr_get_scalar(inst, pack, "rank", CALDERA_DTYPE_I32, &k32)) < 0 ||
        (global_scale && (rc = lr_get_scalar(inst, pack, "global_scale", CALDERA_DTYPE_F32, &f->g)) < 0)) {
        goto fail;
    }
    f->k = k32;
    if (f->k < 0 || f->k > (rows < cols ? rows : cols)) {
        rc = caldera_error(inst, CALDERA_ERR_FORMAT, "linear_init: stored rank %" PRId64 " is impossible for a %" PRId64
                           "x%" PRId64 " weight", f->k, rows, cols);
        goto fail;
    }
    if (q) {
        if ((rc = caldera_pack_push_prefix(pack, "Q.")) < 0) {
            goto fail;
        }
        rc = caldera_quantizer_linear_init(q, pack, rows, cols, &f->qs);
        caldera_pack_pop_prefix(pack);
        if (rc < 0) {
            goto fail;
        }
    }
    if (f->k > 0) {
        if ((rc = caldera_pack_push_prefix(pack, "L.")) < 0) {
            goto fail;
        }
        rc = lr_linear_factor(inst, lq, 1, pack, rows, f->k, &f->ls, &f->lv);
        caldera_pack_pop_prefix(pack);
        if (rc < 0 || (rc = caldera_pack_push_prefix(pack, "R.")) < 0) {
            goto fail;
        }
        rc = lr_linear_factor(inst, rq, 0, pack, f->k, cols, &f->rs, &f->rv);
        caldera_pack_pop_prefix(pack);
        if (rc < 0) {
            goto fail;
        }
    }
    *state = f;
    return 0;
fail:
    lr_linear_free(inst, f);
    return rc;
}

/** y (B × rows) (+)= x (B × cols) Ŵᵀ = Q (g x) + L (R (g x)); TRANSPOSE is not offered. */
static inline int lr_linear_apply(struct caldera_inst * inst, void * state, const struct caldera_tensor * x,
                                  struct caldera_tensor * y, unsigned flags) {
    const struct lr_linear * f   = state;
    struct caldera_ctx *     ctx = caldera_inst_ctx(inst);
    float *                  xg  = NULL, * t = NULL;
    int                      rc;
    if (!f) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "linear_apply: no state; call linear_init first");
    }
    if (flags & CALDERA_LINEAR_TRANSPOSE) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "linear_apply: the transposed product is not offered; "
                             "allowed flags: CALDERA_LINEAR_ACCUMULATE");
    }
    if ((rc = caldera_check_matrix(inst, "linear_apply", "x", x, -1, f->n)) < 0 ||
        (rc = caldera_check_matrix(inst, "linear_apply", "y", y, x->ne[0], f->m)) < 0) {
        return rc;
    }
    const int64_t b = x->ne[0], ldx = x->ld ? x->ld : f->n, ldy = y->ld ? y->ld : f->m;
    const unsigned acc = flags & CALDERA_LINEAR_ACCUMULATE;
    struct caldera_tensor xv = *x;
    if (f->g != 1.0f) {   // g folded into the input: y (+)= Q (g x) + L R (g x)
        if (!(xg = caldera_malloc((size_t) (b * f->n) * sizeof(float)))) {
            rc = caldera_error(inst, CALDERA_ERR_NOMEM, "linear_apply: out of memory");
            goto fail;
        }
        for (int64_t i = 0; i < b; i++) {
            const float * xr = (const float *) x->data + i * ldx;
            for (int64_t j = 0; j < f->n; j++) {
                xg[i * f->n + j] = f->g * xr[j];
            }
        }
        xv = caldera_tensor_view_f32(xg, b, f->n);
    }
    if (f->q) {
        if ((rc = caldera_quantizer_linear_apply(f->q, f->qs, &xv, y, acc)) < 0) {
            goto fail;
        }
    } else if (!acc) {
        for (int64_t i = 0; i < b; i++) {
            memset((float *) y->data + i * ldy, 0, (size_t) f->m * sizeof(float));
        }
    }
    if (f->k > 0) {
        if (!(t = caldera_malloc((size_t) (b * f->k) * sizeof(float)))) {
            rc = caldera_error(inst, CALDERA_ERR_NOMEM, "linear_apply: out of memory");
            goto fail;
        }
        struct caldera_tensor tv = caldera_tensor_view_f32(t, b, f->k);
        // t (B × k) = x Rᵀ
        rc = f->rq ? caldera_quantizer_linear_apply(f->rq, f->rs, &xv, &tv, 0)
                   : caldera_kw_matmul(ctx, &f->rv, xv.data, b, xv.ld ? xv.ld : f->n, t, f->k, 0);
        if (rc < 0) {
            goto fail;
        }
        // y += t Lᵀ: through Lᵀ's codes (a transposed product) or the L values (m × k)
        rc = f->lq ? caldera_quantizer_linear_apply(f->lq, f->ls, &tv, y, CALDERA_LINEAR_TRANSPOSE | CALDERA_LINEAR_ACCUMULATE)
                   : caldera_kw_matmul(ctx, &f->lv, t, b, f->k, y->data, ldy, CALDERA_LINEAR_ACCUMULATE);
        if (rc < 0) {
            goto fail;
        }
    }
fail:
    caldera_free(xg);
    caldera_free(t);
    return rc;
}

#endif // CALDERA_LOWRANK_FUSED_H
