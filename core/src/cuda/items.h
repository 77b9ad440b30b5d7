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

#endif // CALDERA_CUDA_ITEMS_H
