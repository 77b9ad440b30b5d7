// SPDX-License-Identifier: MIT
// kernels.h: launchers of the CUDA backend's kernels (kernels.cu), callable from C. Each enqueues
// on @p stream (a cudaStream_t) and returns the launch's cudaError_t as an int (0 = cudaSuccess).
// Matrices are row-major device memory with a leading dimension, as caldera_tensor.
#ifndef CALDERA_CUDA_KERNELS_H
#define CALDERA_CUDA_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct e8p_tables;
struct uniform_rule;

/** In-place unnormalised FWHT of every row of a (rows × n), n a power of two. */
int ccu_k_fwht(void * stream, float * a, int64_t rows, int64_t n, int64_t ld);
/** c[i][j] = c[j][i] for j > i (copy the lower triangle of an n × n matrix to the upper). */
int ccu_k_mirror_lower(void * stream, float * c, int64_t n, int64_t ld);
/** a[i][j] = 0 for j > i. */
int ccu_k_zero_upper(void * stream, float * a, int64_t n, int64_t ld);
/** Diagonal b × b blocks of l (n × n) set to the identity. */
int ccu_k_identity_blocks(void * stream, float * l, int64_t n, int64_t ld, int64_t b);
/** *count (device) += number of NaN / Inf entries of a (rows × cols). */
int ccu_k_count_nonfinite(void * stream, const float * a, int64_t rows, int64_t cols, int64_t ld,
                          unsigned long long * count);
/** out[i] = Σ_j a[i][j] b[i][j] in double (device out, rows entries). */
int ccu_k_row_dot(void * stream, const float * a, int64_t lda, const float * b, int64_t ldb, int64_t rows,
                  int64_t cols, double * out);
/** *out (device) = Σ_i v[i] in double, one fixed-order reduction (deterministic). */
int ccu_k_sum(void * stream, const double * v, int64_t n, double * out);
/** out[i] = 1 / s[i] if s[i] > rcond · s[0] else 0 (s descending; device, k entries). */
int ccu_k_pinv_diag(void * stream, const float * s, float * out, int64_t k, float rcond);
/** x[i][j] *= s[i] (s device, rows entries). */
int ccu_k_scale_rows(void * stream, float * x, int64_t rows, int64_t cols, int64_t ld, const float * s);
/** E8P rounding (see e8p_round_scaled): x, y (rows × cols), codes (rows × cols/8, ld ldc), tab device tables, c2 may be NULL. */
int ccu_k_e8p_round(void * stream, const struct e8p_tables * tab, int bits, const float * x, int64_t ldx,
                    int64_t rows, int64_t cols, const float * scale, int64_t nscale, uint16_t * c1,
                    uint16_t * c2, int64_t ldc, float * y, int64_t ldy);
/** Uniform rounding (see uniform_round) of the columns [col0, col0 + cols): codes (rows × cols, ld ldc) u8, zero may be NULL. */
int ccu_k_uniform_round(void * stream, const struct uniform_rule * r, int granularity, int64_t ngr,
                        int64_t group_size, int64_t col0, const float * x, int64_t ldx, int64_t rows, int64_t cols,
                        const float * scale, const float * zero, uint8_t * codes, int64_t ldc, float * y, int64_t ldy);

/** LDLQ block step (ldlq-step.h), device pointers: gather block j0 of xt (n × m) into xj (m × b). */
int ccu_k_ldlq_gather(void * stream, const float * xt, int64_t m, int64_t j0, int64_t b, float * xj);
/** Ŵ_j and Δ_j into buffer rows jl.. of hbt, dbt (· × m). */
int ccu_k_ldlq_scatter(void * stream, const float * qj, const float * wt, int64_t m, int64_t j0, int64_t jl, int64_t b,
                       float * hbt, float * dbt);
/** loss[r] = (x_r − q_r) D_j (x_r − q_r)ᵀ for the m rows of block j (double). */
int ccu_k_ldlq_row_loss(void * stream, const float * xj, const float * qj, const float * dj, int64_t m, int64_t b,
                        double * loss);

/** LDLQ tune step (ldlq-step.h), device pointers: xs (m × b) = old + gj hi. */
int ccu_k_ldlq_tune_target(void * stream, const float * old, const float * gj, const float * hi, int64_t m, int64_t b,
                           float * xs);
/** The guard of every row; *kept (device) += the rows whose xs became old. */
int ccu_k_ldlq_tune_guard(void * stream, const float * q, const float * old, const float * hjj, int64_t ldh, int64_t m,
                          int64_t b, float * xs, unsigned long long * kept);
/** dqt, ht, dt of block j0 from q. */
int ccu_k_ldlq_tune_update(void * stream, const float * q, int64_t m, int64_t j0, int64_t b, float * ht, float * dt,
                           const float * wt, float * dqt);

struct caldera_kw;
/** dst (rows × cols, row stride ld) = Ŵ of the compressed matrix w, whose pointers are device memory. */
int ccu_k_kw_decode(void * stream, const struct caldera_kw * w, float * dst, int64_t ld);

#ifdef __cplusplus
}
#endif

#endif // CALDERA_CUDA_KERNELS_H
