// SPDX-License-Identifier: MIT
// items.h: the body of each element-wise CUDA kernel, one work item at a time, as host/device
// `static inline` functions. kernels.cu runs item q on a GPU thread (grid-stride loops); the CPU
// tests (tests/test-cuda-math.c) run the same functions over every q and compare with brute force
// and with the CPU code, so everything but the launch itself is tested without a GPU.
// The per-weight math comes from hd.h, e8p.h and uniform-rule.h (the plugins' own code).
#ifndef CALDERA_CUDA_ITEMS_H
#define CALDERA_CUDA_ITEMS_H

#include <stdint.h>

#include "hd.h"

#ifdef __CUDACC__
#define E8P_FN     static inline __host__ __device__
#define UNIFORM_FN static inline __host__ __device__
#define LDLQ_FN    static inline __host__ __device__
#ifdef __CUDA_ARCH__
#define E8P_PARITY(x) (__popc(x) & 1)
#endif
#endif
#include "e8p.h"
#include "ldlq-step.h"
#include "uniform-rule.h"

#ifdef __CUDACC__
#define KW_FN static inline __host__ __device__
#ifdef __CUDA_ARCH__
#define KW_PARITY(x) (__popc(x) & 1)
#endif
#endif
#include "caldera/caldera-kernels.h"
#include "../kernels/kernel-math.h"

/**
 * FWHT item q of the stage of half-width h over a (rows × n, leading dimension ld): butterfly
 * q % (n/2) of row q / (n/2).
 */
CALDERA_HD void ccu_item_fwht(int64_t q, float * a, int64_t n, int64_t ld, int64_t h) {
    const int64_t half = n / 2;
    caldera_hd_fwht_pair(a + (q / half) * ld, h, q % half);
}

/** Item q of an n × n matrix: the upper entry (i, j), j > i, takes the lower (j, i). */
CALDERA_HD void ccu_item_mirror_lower(int64_t q, float * c, int64_t n, int64_t ld) {
    const int64_t i = q / n, j = q % n;
    if (j > i) c[i * ld + j] = c[j * ld + i];
}

/** Item q of an n × n matrix: the upper entry (i, j), j > i, becomes 0. */
CALDERA_HD void ccu_item_zero_upper(int64_t q, float * a, int64_t n, int64_t ld) {
    const int64_t i = q / n, j = q % n;
    if (j > i) a[i * ld + j] = 0.0f;
}

/** Item q (0 .. n·b − 1): row q / b, column q % b of its diagonal b × b block, set to the identity. */
CALDERA_HD void ccu_item_identity_block(int64_t q, float * l, int64_t ld, int64_t b) {
    const int64_t i = q / b, j = (i / b) * b + q % b;
    l[i * ld + j] = j == i ? 1.0f : 0.0f;
}

/** Item i of the pseudo-inverse of a descending diagonal s: 1 / s_i if s_i > rcond · s_0, else 0. */
CALDERA_HD void ccu_item_pinv_diag(int64_t i, const float * s, float * out, float rcond) {
    out[i] = s[i] > rcond * s[0] ? 1.0f / s[i] : 0.0f;
}

/**
 * E8P item q: the 8 weights of block q % nb of row q / nb, rounded with that row's scale
 * (scale[0] when nscale == 1); codes at c1[row · ldc + block] (and c2 if c2), values into y.
 */
CALDERA_HD void ccu_item_e8p_round(int64_t q, const struct e8p_tables * tab, int bits, const float * x, int64_t ldx,
                                   int64_t nb, const float * scale, int64_t nscale, uint16_t * c1, uint16_t * c2,
                                   int64_t ldc, float * y, int64_t ldy) {
    const int64_t i = q / nb, b = q % nb;
    uint16_t      k1, k2;
    e8p_round_scaled(tab, bits, scale[nscale == 1 ? 0 : i], x + i * ldx + b * E8P_DIM, y + i * ldy + b * E8P_DIM, &k1,
                     &k2);
    c1[i * ldc + b] = k1;
    if (c2) c2[i * ldc + b] = k2;
}

/**
 * Uniform item q: weight (q / cols, q % cols) of x, column col0 + q % cols of the weight, with its
 * group's step and zero; its code at codes[row · ldc + q % cols].
 */
CALDERA_HD void ccu_item_uniform_round(int64_t q, const struct uniform_rule * r, int granularity, int64_t ngr,
                                       int64_t group_size, int64_t col0, const float * x, int64_t ldx, int64_t cols,
                                       const float * scale, const float * zero, uint8_t * codes, int64_t ldc, float * y,
                                       int64_t ldy) {
    const int64_t i = q / cols, j = q % cols;
    const int64_t g = uniform_gid_of(granularity, ngr, group_size, i, col0 + j);
    y[i * ldy + j] = uniform_round(r, x[i * ldx + j], scale[g], zero ? zero[g] : 0.0f, &codes[i * ldc + j]);
}

/** LDLQ gather item q (0 .. m·b − 1): column k = q / m, row r = q % m of block j (see ldlq-step.h). */
CALDERA_HD void ccu_item_ldlq_gather(int64_t q, const float * xt, int64_t m, int64_t j0, int64_t b, float * xj) {
    ldlq_gather(q / m, q % m, xt, m, j0, b, xj);
}

/** LDLQ scatter item q (0 .. m·b − 1): Ŵ and Δ of column q / m, row q % m of block j. */
CALDERA_HD void ccu_item_ldlq_scatter(int64_t q, const float * qj, const float * wt, int64_t m, int64_t j0, int64_t jl,
                                      int64_t b, float * hbt, float * dbt) {
    ldlq_scatter(q / m, q % m, qj, wt, m, j0, jl, b, hbt, dbt);
}

/** LDLQ tune target item q (0 .. m·b − 1): row q / b, column q % b of xs = old + gj hi. */
CALDERA_HD void ccu_item_ldlq_tune_target(int64_t q, const float * old, const float * gj, const float * hi, int64_t b,
                                          float * xs) {
    xs[q] = ldlq_tune_target(q / b, q % b, old, gj, hi, b);
}

/** LDLQ tune update item q (0 .. m·b − 1): column q / m, row q % m of block j0. */
CALDERA_HD void ccu_item_ldlq_tune_update(int64_t q, const float * qv, int64_t m, int64_t j0, int64_t b, float * ht,
                                          float * dt, const float * wt, float * dqt) {
    ldlq_tune_update(q / m, q % m, qv, m, j0, b, ht, dt, wt, dqt);
}

/**
 * Fused-layer decode item q (0 .. rows·cols − 1): Ŵ[r][c] of the compressed matrix w (its
 * pointers where this runs: device memory in the kernel) into dst (row stride ld), with the
 * per-element math of kernel-math.h and the formulas of the portable C kernels (kern-c.c:
 * c_e8p_decode, caldera_kw_uni_decode_row_c, c_f16_decode), so the values are the same bits.
 */
CALDERA_HD void ccu_item_kw_decode(int64_t q, const struct caldera_kw * w, float * dst, int64_t ld) {
    const int64_t r = q / w->cols, c = q % w->cols;
    const int     f16 = w->scale_dtype == CALDERA_DTYPE_F16;
    float         v;
    switch (w->type) {
    case CALDERA_KW_F32:
        v = ((const float *) w->data)[r * w->ld + c];
        break;
    case CALDERA_KW_F16:
        v = kw_f16_to_f32(((const uint16_t *) w->data)[r * w->ld + c]);
        break;
    case CALDERA_KW_E8P: {
        const int64_t k = r * (w->cols / 8) + c / 8;
        const int     j = KW_E8P_SH(c % 8);   // nibble of output coordinate c % 8
        const float   irho = w->bits > 2 ? 1.0f / w->e8_rho : 0.0f;
        v = kw_e8p_value(w->e8_grid, w->codes[k], j);
        if (w->bits == 4) {
            v += kw_e8p_value(w->e8_grid, ((const uint16_t *) w->codes2)[k], j) * irho;
        } else if (w->bits == 3) {
            v += w->e8_rvq1[((const uint8_t *) w->codes2)[k] * 8 + j] * irho;
        }
        v = kw_param(f16, w->scale, w->scale_per_row ? r : 0) * v;
        break;
    }
    default: {   // UNIFORM
        const int64_t  n = w->cols;
        const uint64_t nbytes = ((uint64_t) w->rows * (uint64_t) n * (uint64_t) w->bits + 7) / 8;
        const int64_t  ngr = w->gran == CALDERA_KW_GRAN_GROUP ? (n + w->group_size - 1) / w->group_size : 0;
        const int64_t  g = w->gran == CALDERA_KW_GRAN_TENSOR ? 0
                         : w->gran == CALDERA_KW_GRAN_ROW    ? r
                         : w->gran == CALDERA_KW_GRAN_COLUMN ? c
                                                             : r * ngr + c / w->group_size;
        const uint32_t kc = kw_uni_code(w->stream, nbytes, (uint64_t) (r * n + c), w->bits);
        const float    h = w->zero ? (float) w->zero[g] : kw_uni_half(w->rule, w->bits);
        v = kw_uni_value(kc, h, kw_param(f16, w->scale, g));
        break;
    }
    }
    dst[r * ld + c] = v;
}

#endif // CALDERA_CUDA_ITEMS_H
