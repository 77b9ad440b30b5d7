// SPDX-License-Identifier: MIT
// linalg_cuda.h: the core's CUDA path (linalg_cuda.c), internal. The caldera_linalg_* entry points
// (linalg_cpu.c) validate their arguments, then hand over to caldera_cuda_<op> when
// caldera_cuda_route says so; operands may be host or device tensors (host ones are staged).
#ifndef CALDERA_LINALG_CUDA_H
#define CALDERA_LINALG_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "caldera/caldera-plugin.h"

struct e8p_tables;
struct uniform_rule;

/** Number of usable CUDA devices (0: none, with the reason in why). Loads the module once. */
int  caldera_cuda_probe(char * why, size_t n);
/** "cuda:0 (name, sm_XY)" of the context's device, opening it if needed. */
int  caldera_cuda_device_name(struct caldera_ctx * ctx, const char ** name);
void caldera_cuda_ctx_free(struct caldera_ctx * ctx);
/** 1 if an op of @p flops on the NULL-terminated tensors @p ts runs on the GPU. */
int  caldera_cuda_route(struct caldera_ctx * ctx, double flops, const struct caldera_tensor * const * ts);

int  caldera_cuda_alloc(struct caldera_ctx * ctx, size_t bytes, void ** out);
void caldera_cuda_free(void * p);
/** Same-dtype copy where one side (or both) is on the device; shapes were checked by the caller. */
int  caldera_cuda_copy(struct caldera_ctx * ctx, struct caldera_tensor * dst, const struct caldera_tensor * src);

int caldera_cuda_gemm(struct caldera_ctx * ctx, int ta, int tb, float alpha, const struct caldera_tensor * a,
                      const struct caldera_tensor * b, float beta, struct caldera_tensor * c);
int caldera_cuda_syrk(struct caldera_ctx * ctx, int trans, float alpha, const struct caldera_tensor * a, float beta,
                      struct caldera_tensor * c);
int caldera_cuda_cholesky(struct caldera_ctx * ctx, struct caldera_tensor * a);
int caldera_cuda_trsm(struct caldera_ctx * ctx, int right, int lower, int trans, int unit_diag, float alpha,
                      const struct caldera_tensor * t, struct caldera_tensor * b);
int caldera_cuda_spd_inverse(struct caldera_ctx * ctx, struct caldera_tensor * a);
int caldera_cuda_spd_solve(struct caldera_ctx * ctx, const struct caldera_tensor * a, struct caldera_tensor * b);
int caldera_cuda_block_ldl(struct caldera_ctx * ctx, const struct caldera_tensor * h, int64_t b, struct caldera_tensor * l,
                           struct caldera_tensor * d);
int caldera_cuda_eigh(struct caldera_ctx * ctx, const struct caldera_tensor * a, float * w, struct caldera_tensor * v);
int caldera_cuda_svd(struct caldera_ctx * ctx, const struct caldera_tensor * a, struct caldera_tensor * u, float * s,
                     struct caldera_tensor * vt);
/** omega (n × l, host) for the randomized range finder; NULL: exact (thin SVD, first k). */
int caldera_cuda_svd_trunc(struct caldera_ctx * ctx, const struct caldera_tensor * a, int64_t k, int64_t l,
                           int power_iters, const float * omega, struct caldera_tensor * u, float * s,
                           struct caldera_tensor * vt);
int caldera_cuda_lstsq(struct caldera_ctx * ctx, const struct caldera_tensor * a, const struct caldera_tensor * b,
                       struct caldera_tensor * x);
int caldera_cuda_fwht(struct caldera_ctx * ctx, struct caldera_tensor * a);
int caldera_cuda_trace_quad(struct caldera_ctx * ctx, const struct caldera_tensor * a, const struct caldera_tensor * h,
                            double * out);

/**
 * The quantizer kernels behind caldera_round_e8p / caldera_round_uniform (codebook.c), same
 * arguments: x, codes and x_hat host or device tensors (host ones are staged), scale and zero
 * host memory (uploaded per call), tab host memory (uploaded once per contents).
 */
int caldera_cuda_e8p_round(struct caldera_ctx * ctx, const struct e8p_tables * tab, int bits, const float * scale,
                           int64_t nscale, const struct caldera_tensor * x, struct caldera_tensor * codes,
                           struct caldera_tensor * codes2, struct caldera_tensor * x_hat);
int caldera_cuda_uniform_round(struct caldera_ctx * ctx, const struct uniform_rule * r, int granularity, int64_t ngr,
                               int64_t group_size, int64_t col0, const float * scale, const float * zero, int64_t nscale,
                               const struct caldera_tensor * x, struct caldera_tensor * codes,
                               struct caldera_tensor * x_hat);

/** The LDLQ block step's element-wise kernels (ldlq-step.h); every pointer is device memory. */
int caldera_cuda_ldlq_gather(struct caldera_ctx * ctx, const float * xt, int64_t m, int64_t j0, int64_t b, float * xj);
int caldera_cuda_ldlq_scatter(struct caldera_ctx * ctx, const float * qj, const float * wt, int64_t m, int64_t j0,
                              int64_t jl, int64_t b, float * hbt, float * dbt);
/** *loss (host) = Σ_rows (x − q) D_j (x − q)ᵀ. */
int caldera_cuda_ldlq_loss(struct caldera_ctx * ctx, const float * xj, const float * qj, const float * dj, int64_t m,
                           int64_t b, double * loss);

/** The LDLQ tune step's kernels (ldlq-step.h); device memory but *kept (host). */
int caldera_cuda_ldlq_tune_target(struct caldera_ctx * ctx, const float * old, const float * gj, const float * hi,
                                  int64_t m, int64_t b, float * xs);
int caldera_cuda_ldlq_tune_guard(struct caldera_ctx * ctx, const float * q, const float * old, const float * hjj,
                                 int64_t ldh, int64_t m, int64_t b, float * xs, int64_t * kept);
int caldera_cuda_ldlq_tune_update(struct caldera_ctx * ctx, const float * q, int64_t m, int64_t j0, int64_t b, float * ht,
                                  float * dt, const float * wt, float * dqt);

struct caldera_kw;
/**
 * caldera_kw_matmul on the GPU (x, y host memory, as there): the compressed storage is uploaded,
 * Ŵ decoded on the device (ccu_item_kw_decode) and multiplied by cuBLAS; y = x Ŵᵀ (x Ŵ when trans),
 * y += when acc.
 */
int caldera_cuda_kw_matmul(struct caldera_ctx * ctx, const struct caldera_kw * w, const float * x, int64_t batch,
                           int64_t ldx, float * y, int64_t ldy, int trans, int acc);

#endif // CALDERA_LINALG_CUDA_H
