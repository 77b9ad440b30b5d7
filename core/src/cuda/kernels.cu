// SPDX-License-Identifier: MIT
// kernels.cu: the CUDA backend's element-wise kernels. The per-item work is not written here: it
// is items.h, over the `static inline` host/device code of hd.h (FWHT butterflies), e8p.h (E8P
// search and decode) and uniform-rule.h (uniform rounding) that the CPU code and its tests run. Built with -fmad=false
// and IEEE division and square root, so a kernel gives the same bits as the CPU loop.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "items.h"
#include "kernels.h"

#define THREADS 256
#define FWHT_SMEM_MAX 4096   // rows up to this length are transformed in shared memory (16 KiB)

static unsigned grid_for(int64_t n) {
    int64_t g = (n + THREADS - 1) / THREADS;
    return (unsigned) (g < 1 ? 1 : g > 65535 * 16 ? 65535 * 16 : g);   // grid-stride loops cover the rest
}

static int launched(void) { return (int) cudaGetLastError(); }

// One block per row: the row in shared memory, every stage by all threads.
__global__ void k_fwht_smem(float * a, int64_t n, int64_t ld) {
    extern __shared__ float sx[];
    float * row = a + (int64_t) blockIdx.x * ld;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) sx[j] = row[j];
    __syncthreads();
    for (int64_t h = 1; h < n; h <<= 1) {
        for (int64_t t = threadIdx.x; t < n / 2; t += blockDim.x) caldera_hd_fwht_pair(sx, h, t);
        __syncthreads();
    }
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) row[j] = sx[j];
}

// One stage of half-width h over all rows (long rows).
__global__ void k_fwht_stage(float * a, int64_t rows, int64_t n, int64_t ld, int64_t h) {
    const int64_t total = rows * (n / 2);
    for (int64_t q = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; q < total; q += (int64_t) gridDim.x * blockDim.x) {
        ccu_item_fwht(q, a, n, ld, h);
    }
}

extern "C" int ccu_k_fwht(void * stream, float * a, int64_t rows, int64_t n, int64_t ld) {
    cudaStream_t s = (cudaStream_t) stream;
    if (rows == 0 || n < 2) return 0;
    if (n <= FWHT_SMEM_MAX && rows <= 0x7fffffff) {
        unsigned th = (unsigned) (n / 2 < THREADS ? n / 2 : THREADS);
        k_fwht_smem<<<(unsigned) rows, th, (size_t) n * sizeof(float), s>>>(a, n, ld);
        return launched();
    }
    for (int64_t h = 1; h < n; h <<= 1) {
        k_fwht_stage<<<grid_for(rows * (n / 2)), THREADS, 0, s>>>(a, rows, n, ld, h);
        int rc = launched();
        if (rc) return rc;
    }
    return 0;
}

__global__ void k_mirror_lower(float * c, int64_t n, int64_t ld) {
    for (int64_t q = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; q < n * n; q += (int64_t) gridDim.x * blockDim.x) {
        ccu_item_mirror_lower(q, c, n, ld);
    }
}

extern "C" int ccu_k_mirror_lower(void * stream, float * c, int64_t n, int64_t ld) {
    if (n == 0) return 0;
    k_mirror_lower<<<grid_for(n * n), THREADS, 0, (cudaStream_t) stream>>>(c, n, ld);
    return launched();
}

__global__ void k_zero_upper(float * a, int64_t n, int64_t ld) {
    for (int64_t q = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; q < n * n; q += (int64_t) gridDim.x * blockDim.x) {
        ccu_item_zero_upper(q, a, n, ld);
    }
}

extern "C" int ccu_k_zero_upper(void * stream, float * a, int64_t n, int64_t ld) {
    if (n == 0) return 0;
    k_zero_upper<<<grid_for(n * n), THREADS, 0, (cudaStream_t) stream>>>(a, n, ld);
    return launched();
}

__global__ void k_identity_blocks(float * l, int64_t n, int64_t ld, int64_t b) {
    for (int64_t q = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; q < n * b; q += (int64_t) gridDim.x * blockDim.x) {
        ccu_item_identity_block(q, l, ld, b);
    }
}

extern "C" int ccu_k_identity_blocks(void * stream, float * l, int64_t n, int64_t ld, int64_t b) {
    if (n == 0) return 0;
    k_identity_blocks<<<grid_for(n * b), THREADS, 0, (cudaStream_t) stream>>>(l, n, ld, b);
    return launched();
}

__global__ void k_count_nonfinite(const float * a, int64_t rows, int64_t cols, int64_t ld, unsigned long long * count) {
    unsigned long long c = 0;
    for (int64_t q = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; q < rows * cols; q += (int64_t) gridDim.x * blockDim.x) {
        c += !isfinite(a[(q / cols) * ld + q % cols]);
    }
    if (c) atomicAdd(count, c);
}

extern "C" int ccu_k_count_nonfinite(void * stream, const float * a, int64_t rows, int64_t cols, int64_t ld,
                                     unsigned long long * count) {
    if (rows == 0 || cols == 0) return 0;
    k_count_nonfinite<<<grid_for(rows * cols), THREADS, 0, (cudaStream_t) stream>>>(a, rows, cols, ld, count);
    return launched();
}

// One block per row, a fixed-shape tree reduction in double (deterministic).
__global__ void k_row_dot(const float * a, int64_t lda, const float * b, int64_t ldb, int64_t cols, double * out) {
    __shared__ double part[THREADS];
    const float * ar = a + (int64_t) blockIdx.x * lda, * br = b + (int64_t) blockIdx.x * ldb;
    double s = 0.0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += (double) ar[j] * (double) br[j];
    part[threadIdx.x] = s;
    __syncthreads();
    for (int w = THREADS / 2; w > 0; w >>= 1) {
        if ((int) threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = part[0];
}

extern "C" int ccu_k_row_dot(void * stream, const float * a, int64_t lda, const float * b, int64_t ldb, int64_t rows,
                             int64_t cols, double * out) {
    if (rows == 0) return 0;
    k_row_dot<<<(unsigned) rows, THREADS, 0, (cudaStream_t) stream>>>(a, lda, b, ldb, cols, out);
    return launched();
}

__global__ void k_sum(const double * v, int64_t n, double * out) {
    __shared__ double part[THREADS];
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
    part[threadIdx.x] = s;
    __syncthreads();
    for (int w = THREADS / 2; w > 0; w >>= 1) {
        if ((int) threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) *out = part[0];
}

extern "C" int ccu_k_sum(void * stream, const double * v, int64_t n, double * out) {
    k_sum<<<1, THREADS, 0, (cudaStream_t) stream>>>(v, n, out);
    return launched();
}

__global__ void k_pinv_diag(const float * s, float * out, int64_t k, float rcond) {
    for (int64_t i = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; i < k; i += (int64_t) gridDim.x * blockDim.x) {
        ccu_item_pinv_diag(i, s, out, rcond);
    }
}

extern "C" int ccu_k_pinv_diag(void * stream, const float * s, float * out, int64_t k, float rcond) {
    if (k == 0) return 0;
    k_pinv_diag<<<grid_for(k), THREADS, 0, (cudaStream_t) stream>>>(s, out, k, rcond);
    return launched();
}

__global__ void k_scale_rows(float * x, int64_t rows, int64_t cols, int64_t ld, const float * s) {
    for (int64_t q = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; q < rows * cols; q += (int64_t) gridDim.x * blockDim.x) {
        x[(q / cols) * ld + q % cols] *= s[q / cols];
    }
}

extern "C" int ccu_k_scale_rows(void * stream, float * x, int64_t rows, int64_t cols, int64_t ld, const float * s) {
    if (rows == 0 || cols == 0) return 0;
    k_scale_rows<<<grid_for(rows * cols), THREADS, 0, (cudaStream_t) stream>>>(x, rows, cols, ld, s);
    return launched();
}

// One thread per 8 weights.
__global__ void k_e8p_round(const struct e8p_tables * tab, int bits, const float * x, int64_t ldx, int64_t rows,
                            int64_t nb, const float * scale, int64_t nscale, uint16_t * c1, uint16_t * c2, int64_t ldc,
                            float * y, int64_t ldy) {
    for (int64_t q = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; q < rows * nb; q += (int64_t) gridDim.x * blockDim.x) {
        ccu_item_e8p_round(q, tab, bits, x, ldx, nb, scale, nscale, c1, c2, ldc, y, ldy);
    }
}

extern "C" int ccu_k_e8p_round(void * stream, const struct e8p_tables * tab, int bits, const float * x, int64_t ldx,
                               int64_t rows, int64_t cols, const float * scale, int64_t nscale, uint16_t * c1,
                               uint16_t * c2, int64_t ldc, float * y, int64_t ldy) {
    int64_t nb = cols / E8P_DIM;
    if (rows == 0 || nb == 0) return 0;
    k_e8p_round<<<grid_for(rows * nb), THREADS, 0, (cudaStream_t) stream>>>(tab, bits, x, ldx, rows, nb, scale, nscale,
                                                                            c1, c2, ldc, y, ldy);
    return launched();
}

__global__ void k_uniform_round(struct uniform_rule r, int granularity, int64_t ngr, int64_t group_size, int64_t col0,
                                const float * x, int64_t ldx, int64_t rows, int64_t cols, const float * scale,
                                const float * zero, uint8_t * codes, int64_t ldc, float * y, int64_t ldy) {
    for (int64_t q = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; q < rows * cols; q += (int64_t) gridDim.x * blockDim.x) {
        ccu_item_uniform_round(q, &r, granularity, ngr, group_size, col0, x, ldx, cols, scale, zero, codes, ldc, y, ldy);
    }
}

extern "C" int ccu_k_uniform_round(void * stream, const struct uniform_rule * r, int granularity, int64_t ngr,
                                   int64_t group_size, int64_t col0, const float * x, int64_t ldx, int64_t rows,
                                   int64_t cols, const float * scale, const float * zero, uint8_t * codes, int64_t ldc,
                                   float * y, int64_t ldy) {
    if (rows == 0 || cols == 0) return 0;
    k_uniform_round<<<grid_for(rows * cols), THREADS, 0, (cudaStream_t) stream>>>(*r, granularity, ngr, group_size, col0, x,
                                                                                ldx, rows, cols, scale, zero, codes, ldc,
                                                                                y, ldy);
    return launched();
}

__global__ void k_ldlq_gather(const float * xt, int64_t m, int64_t j0, int64_t b, float * xj) {
    for (int64_t q = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; q < m * b; q += (int64_t) gridDim.x * blockDim.x) {
        ccu_item_ldlq_gather(q, xt, m, j0, b, xj);
    }
}

extern "C" int ccu_k_ldlq_gather(void * stream, const float * xt, int64_t m, int64_t j0, int64_t b, float * xj) {
    if (m == 0 || b == 0) return 0;
    k_ldlq_gather<<<grid_for(m * b), THREADS, 0, (cudaStream_t) stream>>>(xt, m, j0, b, xj);
    return launched();
}

__global__ void k_ldlq_scatter(const float * qj, const float * wt, int64_t m, int64_t j0, int64_t jl, int64_t b, float * hbt,
                               float * dbt) {
    for (int64_t q = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; q < m * b; q += (int64_t) gridDim.x * blockDim.x) {
        ccu_item_ldlq_scatter(q, qj, wt, m, j0, jl, b, hbt, dbt);
    }
}

extern "C" int ccu_k_ldlq_scatter(void * stream, const float * qj, const float * wt, int64_t m, int64_t j0, int64_t jl,
                                  int64_t b, float * hbt, float * dbt) {
    if (m == 0 || b == 0) return 0;
    k_ldlq_scatter<<<grid_for(m * b), THREADS, 0, (cudaStream_t) stream>>>(qj, wt, m, j0, jl, b, hbt, dbt);
    return launched();
}

__global__ void k_ldlq_row_loss(const float * xj, const float * qj, const float * dj, int64_t m, int64_t b, double * loss) {
    for (int64_t r = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; r < m; r += (int64_t) gridDim.x * blockDim.x) {
        loss[r] = ldlq_row_loss(r, xj, qj, dj, b);
    }
}

extern "C" int ccu_k_ldlq_row_loss(void * stream, const float * xj, const float * qj, const float * dj, int64_t m, int64_t b,
                                   double * loss) {
    if (m == 0) return 0;
    k_ldlq_row_loss<<<grid_for(m), THREADS, 0, (cudaStream_t) stream>>>(xj, qj, dj, m, b, loss);
    return launched();
}

__global__ void k_ldlq_tune_target(const float * old, const float * gj, const float * hi, int64_t m, int64_t b, float * xs) {
    for (int64_t q = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; q < m * b; q += (int64_t) gridDim.x * blockDim.x) {
        ccu_item_ldlq_tune_target(q, old, gj, hi, b, xs);
    }
}

extern "C" int ccu_k_ldlq_tune_target(void * stream, const float * old, const float * gj, const float * hi, int64_t m,
                                      int64_t b, float * xs) {
    if (m == 0 || b == 0) return 0;
    k_ldlq_tune_target<<<grid_for(m * b), THREADS, 0, (cudaStream_t) stream>>>(old, gj, hi, m, b, xs);
    return launched();
}

// One thread per row.
__global__ void k_ldlq_tune_guard(const float * q, const float * old, const float * hjj, int64_t ldh, int64_t m, int64_t b,
                                  float * xs, unsigned long long * kept) {
    for (int64_t r = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; r < m; r += (int64_t) gridDim.x * blockDim.x) {
        if (ldlq_tune_guard(r, q, old, xs, hjj, ldh, b)) atomicAdd(kept, 1ull);
    }
}

extern "C" int ccu_k_ldlq_tune_guard(void * stream, const float * q, const float * old, const float * hjj, int64_t ldh,
                                     int64_t m, int64_t b, float * xs, unsigned long long * kept) {
    if (m == 0 || b == 0) return 0;
    k_ldlq_tune_guard<<<grid_for(m), THREADS, 0, (cudaStream_t) stream>>>(q, old, hjj, ldh, m, b, xs, kept);
    return launched();
}

__global__ void k_ldlq_tune_update(const float * qv, int64_t m, int64_t j0, int64_t b, float * ht, float * dt,
                                   const float * wt, float * dqt) {
    for (int64_t q = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; q < m * b; q += (int64_t) gridDim.x * blockDim.x) {
        ccu_item_ldlq_tune_update(q, qv, m, j0, b, ht, dt, wt, dqt);
    }
}

extern "C" int ccu_k_ldlq_tune_update(void * stream, const float * q, int64_t m, int64_t j0, int64_t b, float * ht,
                                      float * dt, const float * wt, float * dqt) {
    if (m == 0 || b == 0) return 0;
    k_ldlq_tune_update<<<grid_for(m * b), THREADS, 0, (cudaStream_t) stream>>>(q, m, j0, b, ht, dt, wt, dqt);
    return launched();
}

// One thread per weight: w is a copy of the descriptor with device pointers.
__global__ void k_kw_decode(struct caldera_kw w, float * dst, int64_t ld) {
    for (int64_t q = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; q < w.rows * w.cols; q += (int64_t) gridDim.x * blockDim.x) {
        ccu_item_kw_decode(q, &w, dst, ld);
    }
}

extern "C" int ccu_k_kw_decode(void * stream, const struct caldera_kw * w, float * dst, int64_t ld) {
    if (w->rows == 0 || w->cols == 0) return 0;
    k_kw_decode<<<grid_for(w->rows * w->cols), THREADS, 0, (cudaStream_t) stream>>>(*w, dst, ld);
    return launched();
}
