// SPDX-License-Identifier: MIT
// lowrank.h: helpers shared by the low-rank decomposers (caldera, lplr, svd): quantizing a factor
// through a referenced quantizer (L as Lᵀ) or storing it as f16/f32, copying a scratch pack into
// the output pack under a prefix, the rank that meets a bits-per-parameter budget, and the one
// assembly Ŵ = g·(Q + L·R) that decompose and reconstruct share (so verify is bit-exact).
// Header-only (static inline) so that each plugin stays one self-contained object.
#ifndef CALDERA_DECOMPOSERS_LOWRANK_H
#define CALDERA_DECOMPOSERS_LOWRANK_H

#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "caldera/caldera-plugin.h"

enum lr_dtype { LR_F16 = 0, LR_F32 = 1 };

static const struct caldera_opt_choice lr_dtype_choices[] = {
    { .name = "f16", .value = LR_F16, .help = "unquantized factors stored as IEEE half" },
    { .name = "f32", .value = LR_F32, .help = "unquantized factors stored as IEEE single" },
    { .name = NULL }
};

/** A contiguous (rows, cols) f32 view. */
static inline struct caldera_tensor lr_view(float * data, int64_t rows, int64_t cols) {
    return caldera_tensor_view_f32(data, rows, cols);
}

/** dst (cols, rows) = srcᵀ, src (rows, cols) with leading dimension lds. */
static inline void lr_transpose(float * dst, const float * src, int64_t lds, int64_t rows, int64_t cols) {
    const int64_t tb = 32;
    for (int64_t r0 = 0; r0 < rows; r0 += tb) {
        const int64_t r1 = r0 + tb < rows ? r0 + tb : rows;
        for (int64_t c0 = 0; c0 < cols; c0 += tb) {
            const int64_t c1 = c0 + tb < cols ? c0 + tb : cols;
            for (int64_t r = r0; r < r1; r++) {
                for (int64_t c = c0; c < c1; c++) {
                    dst[c * rows + r] = src[r * lds + c];
                }
            }
        }
    }
}

/** Storage bits of a (rows, cols) factor: its quantizer's bits() (0 if it has none), or 16/32 each. */
static inline double lr_factor_bits(struct caldera_inst * q, int dtype, int64_t rows, int64_t cols) {
    if (!q) {
        return (dtype == LR_F16 ? 16.0 : 32.0) * (double) rows * (double) cols;
    }
    const struct caldera_quantizer_ops * ops = caldera_inst_plugin(q)->ops;
    return ops->bits ? ops->bits(q, rows, cols) : 0.0;
}

/** True when the quantizer (or NULL) can report its bits (needed by target_bits). */
static inline int lr_has_bits(struct caldera_inst * q) {
    return !q || ((const struct caldera_quantizer_ops *) caldera_inst_plugin(q)->ops)->bits != NULL;
}

/**
 * Quantize factor F (rows, cols) into pack (under the caller's prefix) and write its dequantized
 * value to fhat (rows, cols). With a quantizer and transpose = 1 the quantizer sees Fᵀ (cols, rows):
 * for L (m×k) its code vectors then run along m, the output dimension, as in the reference, and
 * any rank k is allowed. Without a quantizer F is stored as "values" in dtype (f16 rounds).
 */
static inline int lr_factor_quantize(struct caldera_inst * inst, struct caldera_inst * q, int dtype, int transpose,
                                     const float * f, int64_t rows, int64_t cols, float * fhat,
                                     struct caldera_pack * pack) {
    const int64_t n  = rows * cols;
    float *       ft = NULL, * ht = NULL;
    int           rc = 0;
    if (!q) {
        const int64_t ne[2] = { rows, cols };
        void * data = NULL;
        if ((rc = caldera_pack_add(pack, "values", dtype == LR_F16 ? CALDERA_DTYPE_F16 : CALDERA_DTYPE_F32, 2, ne,
                                   &data)) < 0) {
            return caldera_error(inst, rc, "cannot add a factor to the pack (%s)", caldera_status_str(rc));
        }
        if (dtype == LR_F16) {
            uint16_t * h = data;
            for (int64_t i = 0; i < n; i++) {
                if (!isfinite(f[i]) || fabsf(f[i]) > 65504.0f) {
                    return caldera_error(inst, CALDERA_ERR_RANGE, "factor element %" PRId64 " = %g is beyond the f16 "
                                         "range; allowed: factor_dtype = f32, or a factor quantizer", i, (double) f[i]);
                }
                h[i] = caldera_f32_to_f16(f[i]);
                fhat[i] = caldera_f16_to_f32(h[i]);
            }
        } else {
            memcpy(data, f, (size_t) n * sizeof(float));
            memcpy(fhat, f, (size_t) n * sizeof(float));
        }
        return 0;
    }
    struct caldera_tensor src, dst;
    if (transpose) {
        ft = caldera_malloc((size_t) n * sizeof(float));
        ht = caldera_malloc((size_t) n * sizeof(float));
        if (!ft || !ht) {
            rc = caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory for a %" PRId64 "x%" PRId64 " factor", rows, cols);
            goto fail;
        }
        lr_transpose(ft, f, cols, rows, cols);
        src = lr_view(ft, cols, rows);
        dst = lr_view(ht, cols, rows);
    } else {
        src = lr_view((float *) f, rows, cols);
        dst = lr_view(fhat, rows, cols);
    }
    if ((rc = caldera_quantizer_quantize(q, &src, NULL, &dst, pack)) < 0) {
        goto fail;
    }
    if (transpose) {
        lr_transpose(fhat, ht, rows, cols, rows);
    }
fail:
    caldera_free(ft);
    caldera_free(ht);
    return rc;
}

/** Decode a factor written by lr_factor_quantize (same prefix) into fhat (rows, cols). */
static inline int lr_factor_dequantize(struct caldera_inst * inst, struct caldera_inst * q, int transpose,
                                       const struct caldera_pack * pack, int64_t rows, int64_t cols, float * fhat) {
    const int64_t n = rows * cols;
    int rc;
    if (!q) {
        struct caldera_tensor t;
        if ((rc = caldera_pack_find(pack, "values", &t)) < 0) {
            return caldera_error(inst, rc == CALDERA_ERR_NOT_FOUND ? CALDERA_ERR_FORMAT : rc,
                                 "reconstruct: the pack has no factor tensor 'values'");
        }
        if (t.ndim != 2 || t.ne[0] != rows || t.ne[1] != cols ||
            (t.dtype != CALDERA_DTYPE_F16 && t.dtype != CALDERA_DTYPE_F32)) {
            return caldera_error(inst, CALDERA_ERR_FORMAT, "reconstruct: factor 'values' is %s %" PRId64 "x%" PRId64
                                 "; expected f16 or f32 %" PRId64 "x%" PRId64, caldera_dtype_name(t.dtype),
                                 t.ne[0], t.ndim > 1 ? t.ne[1] : 1, rows, cols);
        }
        return caldera_convert_to_f32(t.dtype, t.data, n, fhat);
    }
    float * ht = NULL;
    struct caldera_tensor dst;
    if (transpose) {
        if (!(ht = caldera_malloc((size_t) n * sizeof(float)))) {
            return caldera_error(inst, CALDERA_ERR_NOMEM, "reconstruct: out of memory");
        }
        dst = lr_view(ht, cols, rows);
    } else {
        dst = lr_view(fhat, rows, cols);
    }
    rc = caldera_quantizer_dequantize(q, pack, &dst);
    if (rc == 0 && transpose) {
        lr_transpose(fhat, ht, rows, cols, rows);
    }
    caldera_free(ht);
    return rc;
}

/** Copy every tensor of a scratch pack (made without prefixes) into dst under prefix. */
static inline int lr_pack_copy(struct caldera_inst * inst, struct caldera_pack * dst, const char * prefix,
                               const struct caldera_pack * src) {
    int rc;
    if ((rc = caldera_pack_push_prefix(dst, prefix)) < 0) {
        return caldera_error(inst, rc, "cannot push pack prefix '%s'", prefix);
    }
    for (int64_t i = 0; i < caldera_pack_count(src); i++) {
        struct caldera_tensor t;
        if ((rc = caldera_pack_get(src, i, &t)) < 0 ||
            (rc = caldera_pack_add_tensor(dst, caldera_pack_name(src, i), t.dtype, &t)) < 0) {
            rc = caldera_error(inst, rc, "cannot copy tensor '%s%s' into the pack (%s)", prefix,
                               caldera_pack_name(src, i), caldera_status_str(rc));
            break;
        }
    }
    caldera_pack_pop_prefix(dst);
    return rc;
}

/** Store an i32 scalar and read it back (the rank of a factorisation). */
static inline int lr_put_i32(struct caldera_inst * inst, struct caldera_pack * pack, const char * name, int32_t v) {
    const int64_t ne[1] = { 1 };
    void * data = NULL;
    int rc = caldera_pack_add(pack, name, CALDERA_DTYPE_I32, 1, ne, &data);
    if (rc < 0) {
        return caldera_error(inst, rc, "cannot add '%s' to the pack (%s)", name, caldera_status_str(rc));
    }
    memcpy(data, &v, sizeof(v));
    return 0;
}

static inline int lr_get_scalar(struct caldera_inst * inst, const struct caldera_pack * pack, const char * name,
                                enum caldera_dtype dtype, void * out) {
    struct caldera_tensor t;
    int rc = caldera_pack_find(pack, name, &t);
    if (rc < 0) {
        return caldera_error(inst, rc == CALDERA_ERR_NOT_FOUND ? CALDERA_ERR_FORMAT : rc,
                             "reconstruct: the pack has no tensor '%s'", name);
    }
    if (t.dtype != dtype || caldera_tensor_nelements(&t) != 1) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "reconstruct: '%s' is %s with %" PRId64 " elements; expected one %s",
                             name, caldera_dtype_name(t.dtype), caldera_tensor_nelements(&t), caldera_dtype_name(dtype));
    }
    memcpy(out, t.data, 4);
    return 0;
}

/**
 * Ŵ = g · (Q + L·R): w_hat (m, n) with ld; q (m, n) dense or NULL; l (m, k), r (k, n) or k = 0.
 * One GEMM (deterministic for a given thread count: OpenBLAS does not split the inner dimension)
 * and one elementwise pass, the same in decompose and reconstruct.
 */
static inline int lr_assemble(struct caldera_ctx * ctx, const float * q, const float * l, const float * r, int64_t m,
                              int64_t n, int64_t k, float g, struct caldera_tensor * w_hat) {
    float * wd = w_hat->data;
    const int64_t ld = w_hat->ld ? w_hat->ld : n;
    if (k > 0) {
        struct caldera_tensor lt = lr_view((float *) l, m, k), rt = lr_view((float *) r, k, n);
        int rc = caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &lt, &rt, 0.0f, w_hat);
        if (rc < 0) {
            return rc;
        }
    } else {
        for (int64_t i = 0; i < m; i++) {
            memset(wd + i * ld, 0, (size_t) n * sizeof(float));
        }
    }
    for (int64_t i = 0; i < m; i++) {
        float * row = wd + i * ld;
        const float * qr = q ? q + i * n : NULL;
        for (int64_t j = 0; j < n; j++) {
            float v = qr ? qr[j] + row[j] : row[j];
            row[j] = g * v;
        }
    }
    return 0;
}

/** rms(W) of a (m, n) view in double; 0 for an all-zero W. */
static inline double lr_rms(const struct caldera_tensor * w) {
    const int64_t m = w->ne[0], n = w->ne[1], ld = w->ld ? w->ld : n;
    double s = 0.0;
    for (int64_t i = 0; i < m; i++) {
        const float * row = (const float *) w->data + i * ld;
        for (int64_t j = 0; j < n; j++) {
            s += (double) row[j] * row[j];
        }
    }
    return m * n > 0 ? sqrt(s / ((double) m * (double) n)) : 0.0;
}

/**
 * The largest rank k <= kmax whose storage bits/(m·n) stay <= target (bits of the fixed part
 * base_bits plus the factors' bits at rank k); -1 if even k = 0 is over the budget.
 */
static inline int64_t lr_rank_for_bits(double target, double base_bits, struct caldera_inst * lq, struct caldera_inst * rq,
                                       int dtype, int l_transpose, int64_t m, int64_t n, int64_t kmax) {
    const double budget = target * (double) m * (double) n;
    if (base_bits > budget) {
        return -1;
    }
    int64_t best = 0;
    for (int64_t k = 1; k <= kmax; k++) {
        double b = base_bits + (l_transpose ? lr_factor_bits(lq, dtype, k, m) : lr_factor_bits(lq, dtype, m, k)) +
                   lr_factor_bits(rq, dtype, k, n);
        if (b > budget) {
            break;
        }
        best = k;
    }
    return best;
}

/** Check that factor quantizer q (or none) takes a (rows, cols) matrix; its message is kept. */
/** A fixed rank for an m×n weight: CALDERA_ERR_RANGE unless rank <= min(m, n); *k_out = rank. */
static inline int lr_fixed_rank(struct caldera_inst * inst, int64_t rank, int64_t m, int64_t n, int64_t * k_out) {
    const int64_t kmax = m < n ? m : n;
    if (rank > kmax) {
        return caldera_error(inst, CALDERA_ERR_RANGE, "rank = %" PRId64 " exceeds min(rows, cols) = %" PRId64
                             " of a %" PRId64 "x%" PRId64 " weight; allowed: rank <= %" PRId64, rank, kmax, m, n, kmax);
    }
    *k_out = rank;
    return 0;
}

/** CALDERA_ERR_UNSUPPORTED for an empty weight shape (the first check of every decomposer's check_shape). */
static inline int lr_check_nonempty(struct caldera_inst * inst, int64_t rows, int64_t cols) {
    if (rows < 1 || cols < 1) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "shape %" PRId64 "x%" PRId64 " is empty; allowed: rows, "
                             "cols >= 1", rows, cols);
    }
    return 0;
}

static inline int lr_check_quant_shape(struct caldera_inst * q, int64_t rows, int64_t cols) {
    if (!q) {
        return 0;
    }
    const struct caldera_plugin * p = caldera_inst_plugin(q);
    return p->check_shape ? p->check_shape(q, rows, cols) : 0;
}

/**
 * Ŵ = g·(Q + L R) from a pack with "rank" (i32), optional "global_scale" (f32), "Q.*" (when q is
 * set), "L.*" (Lᵀ through lq, or "L.values") and "R.*" (through rq, or "R.values").
 */
static inline int lr_reconstruct(struct caldera_inst * inst, struct caldera_inst * q, struct caldera_inst * lq,
                                 struct caldera_inst * rq, int global_scale, const struct caldera_pack * pack_c,
                                 struct caldera_tensor * w_hat) {
    struct caldera_pack * pack = (struct caldera_pack *) pack_c;   // prefixes are pushed and popped again
    float * qd = NULL, * l = NULL, * r = NULL;
    float g = 1.0f;
    int32_t k32 = 0;
    int rc;
    if ((rc = caldera_check_matrix(inst, "reconstruct", "w_hat", w_hat, -1, -1)) < 0) {
        return rc;
    }
    const int64_t m = w_hat->ne[0], n = w_hat->ne[1];
    if ((rc = lr_get_scalar(inst, pack, "rank", CALDERA_DTYPE_I32, &k32)) < 0 ||
        (global_scale && (rc = lr_get_scalar(inst, pack, "global_scale", CALDERA_DTYPE_F32, &g)) < 0)) {
        return rc;
    }
    const int64_t k = k32;
    if (k < 0 || k > (m < n ? m : n)) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "reconstruct: stored rank %" PRId64 " is impossible for a %" PRId64
                             "x%" PRId64 " weight", k, m, n);
    }
    if (q) {
        if (!(qd = caldera_malloc((size_t) m * (size_t) n * sizeof(float)))) {
            rc = caldera_error(inst, CALDERA_ERR_NOMEM, "reconstruct: out of memory");
            goto fail;
        }
        struct caldera_tensor qt = lr_view(qd, m, n);
        if ((rc = caldera_pack_push_prefix(pack, "Q.")) < 0) {
            goto fail;
        }
        rc = caldera_quantizer_dequantize(q, pack, &qt);
        caldera_pack_pop_prefix(pack);
        if (rc < 0) {
            goto fail;
        }
    }
    if (k > 0) {
        l = caldera_malloc((size_t) m * (size_t) k * sizeof(float));
        r = caldera_malloc((size_t) k * (size_t) n * sizeof(float));
        if (!l || !r) {
            rc = caldera_error(inst, CALDERA_ERR_NOMEM, "reconstruct: out of memory");
            goto fail;
        }
        if ((rc = caldera_pack_push_prefix(pack, "L.")) < 0) {
            goto fail;
        }
        rc = lr_factor_dequantize(inst, lq, 1, pack, m, k, l);
        caldera_pack_pop_prefix(pack);
        if (rc < 0 || (rc = caldera_pack_push_prefix(pack, "R.")) < 0) {
            goto fail;
        }
        rc = lr_factor_dequantize(inst, rq, 0, pack, k, n, r);
        caldera_pack_pop_prefix(pack);
        if (rc < 0) {
            goto fail;
        }
    }
    rc = lr_assemble(caldera_inst_ctx(inst), qd, l, r, m, n, k, g, w_hat);
fail:
    caldera_free(qd);
    caldera_free(l);
    caldera_free(r);
    return rc;
}

#endif
