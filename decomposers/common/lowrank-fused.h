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

// g x and t of up to this many floats on the stack (a decoded token: no allocation per call)
#define LR_STACK_X 4096
#define LR_STACK_T 256

// Task 0: y (+)= Q x (or y = 0 without Q); task 1: t = x Rᵀ (none at rank 0), then, with z set,
// z = t Lᵀ (B × rows) for the caller to add to y.
struct lr_qr_job {
    struct caldera_inst *         inst;
    const struct lr_linear *      f;
    const struct caldera_tensor * x;
    struct caldera_tensor *       y, * t, * z;
    unsigned                      acc;
    int                           rc[2];
};

// y (+)= t Lᵀ (flags CALDERA_LINEAR_ACCUMULATE or 0): through Lᵀ's codes (a transposed product) or
// the L values (rows × k)
static inline int lr_apply_l(struct caldera_inst * inst, const struct lr_linear * f, struct caldera_tensor * t,
                             struct caldera_tensor * y, unsigned acc) {
    return f->lq ? caldera_quantizer_linear_apply(f->lq, f->ls, t, y, CALDERA_LINEAR_TRANSPOSE | acc)
                 : caldera_kw_matmul(caldera_inst_ctx(inst), &f->lv, t->data, t->ne[0], f->k, y->data,
                                     y->ld ? y->ld : f->m, acc);
}

static inline void lr_qr_run(void * arg, int64_t i0, int64_t i1) {
    struct lr_qr_job *       j = arg;
    const struct lr_linear * f = j->f;
    for (int64_t i = i0; i < i1; i++) {
        if (i == 0 && f->q) {
            j->rc[0] = caldera_quantizer_linear_apply(f->q, f->qs, j->x, j->y, j->acc);
        } else if (i == 0 && !j->acc) {
            const int64_t ldy = j->y->ld ? j->y->ld : f->m;
            for (int64_t r = 0; r < j->x->ne[0]; r++) {
                memset((float *) j->y->data + r * ldy, 0, (size_t) f->m * sizeof(float));
            }
        } else if (i == 1 && f->k > 0) {
            j->rc[1] = f->rq ? caldera_quantizer_linear_apply(f->rq, f->rs, j->x, j->t, 0)
                             : caldera_kw_matmul(caldera_inst_ctx(j->inst), &f->rv, j->x->data, j->x->ne[0],
                                                 j->x->ld ? j->x->ld : f->n, j->t->data, f->k, 0);
            if (j->rc[1] == 0 && j->z) {
                j->rc[1] = lr_apply_l(j->inst, f, j->t, j->z, 0);
            }
        }
    }
}

/** y (B × rows) (+)= x (B × cols) Ŵᵀ = Q (g x) + L (R (g x)); TRANSPOSE is not offered. */
static inline int lr_linear_apply(struct caldera_inst * inst, void * state, const struct caldera_tensor * x,
                                  struct caldera_tensor * y, unsigned flags) {
    const struct lr_linear * f   = state;
    struct caldera_ctx *     ctx = caldera_inst_ctx(inst);
    float *                  xg  = NULL, * t = NULL, t_stack[LR_STACK_T], x_stack[LR_STACK_X];
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
    const int64_t b = x->ne[0], ldx = x->ld ? x->ld : f->n;
    const unsigned acc = flags & CALDERA_LINEAR_ACCUMULATE;
    struct caldera_tensor xv = *x;
    if (f->g != 1.0f) {   // g folded into the input: y (+)= Q (g x) + L R (g x)
        if (b * f->n > LR_STACK_X && !(xg = caldera_malloc((size_t) (b * f->n) * sizeof(float)))) {
            rc = caldera_error(inst, CALDERA_ERR_NOMEM, "linear_apply: out of memory");
            goto fail;
        }
        float * xd = xg ? xg : x_stack;
        for (int64_t i = 0; i < b; i++) {
            const float * xr = (const float *) x->data + i * ldx;
            for (int64_t j = 0; j < f->n; j++) {
                xd[i * f->n + j] = f->g * xr[j];
            }
        }
        xv = caldera_tensor_view_f32(xd, b, f->n);
    }
    if (f->k > 0 && b * f->k > LR_STACK_T && !(t = caldera_malloc((size_t) (b * f->k) * sizeof(float)))) {
        rc = caldera_error(inst, CALDERA_ERR_NOMEM, "linear_apply: out of memory");
        goto fail;
    }
    struct caldera_tensor tv = caldera_tensor_view_f32(t ? t : t_stack, b, f->k);
    struct caldera_tensor zv  = caldera_tensor_view_f32(x_stack + (xv.data == x_stack ? f->n : 0), 1, f->m);
    struct lr_qr_job      job = { .inst = inst, .f = f, .x = &xv, .y = y, .t = &tv, .acc = acc };
    if (b == 1 && f->q && f->k > 0 && f->n + f->m <= LR_STACK_X && caldera_ctx_threads(ctx) > 1) {
        // a decoded token: Q x beside R x and z = L (R x) (the thread done with those helps with Q's
        // rows), then y += z: the L part is added as one sum instead of term by term (rounding only)
        job.z = &zv;
        caldera_parallel_tasks(ctx, 2, lr_qr_run, &job);
    } else {
        lr_qr_run(&job, 0, 2);
    }
    if ((rc = job.rc[0]) < 0 || (rc = job.rc[1]) < 0) {
        goto fail;
    }
    if (job.z) {
        float *       yd = y->data;
        const float * zd = zv.data;
        for (int64_t r = 0; r < f->m; r++) {
            yd[r] += zd[r];
        }
    } else if (f->k > 0 && (rc = lr_apply_l(inst, f, &tv, y, CALDERA_LINEAR_ACCUMULATE)) < 0) {   // y += t Lᵀ
        goto fail;
    }
fail:
    caldera_free(xg);
    caldera_free(t);
    return rc;
}

#endif // CALDERA_LOWRANK_FUSED_H
