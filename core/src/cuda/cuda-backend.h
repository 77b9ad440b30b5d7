// SPDX-License-Identifier: MIT
// cuda-backend.h: the table between libcaldera and its CUDA backend module (caldera-cuda.so, built
// when nvcc is found). The module links the CUDA runtime, cuBLAS and cuSOLVER; libcaldera loads it
// with dlopen the first time a device is asked for, so a CUDA build costs nothing to processes that
// never use the GPU and still runs on machines without the CUDA libraries or a driver.
// Internal: both sides come from the same build; the version and size are checked on load.
//
// Every op works on device tensors (2-d f32, row-major with a leading dimension, as the CPU
// linalg), runs on the device's one stream and returns 0 or a negative caldera status; on failure
// the message (naming the call, the status name and the device) is in err() until the next op.
// CALDERA_ERR_NUMERIC means the same as on the CPU (not positive definite, no convergence).
#ifndef CALDERA_CUDA_BACKEND_H
#define CALDERA_CUDA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "caldera/caldera-plugin.h"

#define CALDERA_CUDA_BACKEND_VERSION 2
#define CALDERA_CUDA_BACKEND_SYMBOL  "caldera_cuda_backend"

struct e8p_tables;
struct uniform_rule;
struct caldera_kw;
struct ccu_dev;   // one device: its stream, cuBLAS and cuSOLVER handles, workspace, last error

struct caldera_cuda_backend {
    uint32_t version;   // CALDERA_CUDA_BACKEND_VERSION
    uint32_t size;      // sizeof(struct caldera_cuda_backend)

    /** Number of usable devices (0 without a driver or a GPU: not an error); why none in msg. */
    int  (*device_count)(int * count, char * msg, size_t msglen);
    /** Open device @p index: stream and handles (created here, once per context). */
    int  (*open)(int index, struct ccu_dev ** out, char * msg, size_t msglen);
    void (*close)(struct ccu_dev * dev);
    const char * (*err)(const struct ccu_dev * dev);
    const char * (*name)(const struct ccu_dev * dev);   // "cuda:0 (NVIDIA H100 ...)"

    // Memory (device pointers), and copies of rows: kind 0 host→device, 1 device→host, 2 device→device.
    int  (*dmalloc)(struct ccu_dev * dev, size_t bytes, void ** out);   // zero-filled
    void (*dfree)(void * p);   // any device's memory; waits for the work that may use it
    int  (*copy2d)(struct ccu_dev * dev, void * dst, size_t dpitch, const void * src, size_t spitch,
                   size_t width, size_t rows, int kind);
    int  (*sync)(struct ccu_dev * dev);

    // Linear algebra with the semantics of caldera_linalg_* (caldera-plugin.h).
    int (*gemm)(struct ccu_dev * dev, int ta, int tb, float alpha, const struct caldera_tensor * a,
                const struct caldera_tensor * b, float beta, struct caldera_tensor * c);
    int (*syrk)(struct ccu_dev * dev, int trans, float alpha, const struct caldera_tensor * a, float beta,
                struct caldera_tensor * c);
    int (*cholesky)(struct ccu_dev * dev, struct caldera_tensor * a);
    int (*trsm)(struct ccu_dev * dev, int right, int lower, int trans, int unit_diag, float alpha,
                const struct caldera_tensor * t, struct caldera_tensor * b);
    int (*spd_inverse)(struct ccu_dev * dev, struct caldera_tensor * a);
    int (*spd_solve)(struct ccu_dev * dev, const struct caldera_tensor * a, struct caldera_tensor * b);
    int (*block_ldl)(struct ccu_dev * dev, const struct caldera_tensor * h, int64_t b, struct caldera_tensor * l,
                     struct caldera_tensor * d);
    /** w is host memory (n floats). */
    int (*eigh)(struct ccu_dev * dev, const struct caldera_tensor * a, float * w, struct caldera_tensor * v);
    /** s is host memory (min(m, n) floats); u / vt may be NULL. */
    int (*svd)(struct ccu_dev * dev, const struct caldera_tensor * a, struct caldera_tensor * u, float * s,
               struct caldera_tensor * vt);
    /** Randomized range finder with the host Gaussian test matrix omega (n × l, row-major). */
    int (*svd_rand)(struct ccu_dev * dev, const struct caldera_tensor * a, int64_t k, int64_t l, int power_iters,
                    const float * omega, struct caldera_tensor * u, float * s, struct caldera_tensor * vt);
    int (*lstsq)(struct ccu_dev * dev, const struct caldera_tensor * a, const struct caldera_tensor * b,
                 struct caldera_tensor * x);
    int (*fwht)(struct ccu_dev * dev, struct caldera_tensor * a);
    int (*trace_quad)(struct ccu_dev * dev, const struct caldera_tensor * a, const struct caldera_tensor * h,
                      double * out);
    /** Number of NaN / Inf entries of a device tensor. */
    int (*count_nonfinite)(struct ccu_dev * dev, const struct caldera_tensor * a, int64_t * out);

    // Element-wise quantizer kernels (the shared math of e8p.h and uniform-rule.h).
    /**
     * E8P rounding of x (rows × cols, cols % 8 == 0) with per-row scales (nscale 1 or rows, device):
     * codes c1 (and c2 for 3 and 4 bits; may be NULL for 2) as (rows, cols / 8) u16 with row stride
     * ldc, x_hat = s · decode. @p tab is host memory; it is uploaded once per device and per contents.
     */
    int (*e8p_round)(struct ccu_dev * dev, const struct e8p_tables * tab, int bits, const struct caldera_tensor * x,
                     const float * scale, int64_t nscale, uint16_t * c1, uint16_t * c2, int64_t ldc,
                     struct caldera_tensor * x_hat);
    /**
     * Uniform rounding of x (rows × cols), the weight's columns [col0, col0 + cols), with the rule r:
     * scale groups by (granularity, ngr, group_size) as uniform_gid_of; scale / zero (zero may be
     * NULL) and the u8 codes (rows × cols, row stride ldc) are device memory.
     */
    int (*uniform_round)(struct ccu_dev * dev, const struct uniform_rule * r, int granularity, int64_t ngr,
                         int64_t group_size, int64_t col0, const struct caldera_tensor * x, const float * scale,
                         const float * zero, uint8_t * codes, int64_t ldc, struct caldera_tensor * x_hat);
    /**
     * LDLQ block step (ldlq-step.h; all pointers device memory, layouts as there): gather block j0 of
     * xt into xj; or Ŵ_j, Δ_j into buffer rows jl.. of hbt, dbt; or Σ_rows of the block's loss (to
     * the host double *loss).
     */
    int (*ldlq_gather)(struct ccu_dev * dev, const float * xt, int64_t m, int64_t j0, int64_t b, float * xj);
    int (*ldlq_scatter)(struct ccu_dev * dev, const float * qj, const float * wt, int64_t m, int64_t j0, int64_t jl,
                        int64_t b, float * hbt, float * dbt);
    int (*ldlq_loss)(struct ccu_dev * dev, const float * xj, const float * qj, const float * dj, int64_t m, int64_t b,
                     double * loss);
    /** LDLQ tune step (ldlq-step.h): the target xs, the guard (rows kept to the host *kept), the update. */
    int (*ldlq_tune_target)(struct ccu_dev * dev, const float * old, const float * gj, const float * hi, int64_t m,
                            int64_t b, float * xs);
    int (*ldlq_tune_guard)(struct ccu_dev * dev, const float * q, const float * old, const float * hjj, int64_t ldh,
                           int64_t m, int64_t b, float * xs, int64_t * kept);
    int (*ldlq_tune_update)(struct ccu_dev * dev, const float * q, int64_t m, int64_t j0, int64_t b, float * ht,
                            float * dt, const float * wt, float * dqt);
    /** Fused layer: dst (device, rows × cols, row stride ld) = Ŵ of w, a descriptor whose pointers are device memory. */
    int (*kw_decode)(struct ccu_dev * dev, const struct caldera_kw * w, float * dst, int64_t ld);
};

/** The module's one exported symbol. */
typedef const struct caldera_cuda_backend * (*caldera_cuda_backend_fn)(void);

#endif // CALDERA_CUDA_BACKEND_H
