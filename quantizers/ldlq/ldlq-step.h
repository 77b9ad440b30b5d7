// SPDX-License-Identifier: MIT
// ldlq-step.h: the element-wise part of one LDLQ block step (ldlq.c's pass over column blocks):
// gather block j of Xᵀ for the codebook, write Ŵ_j and Δ_j = W_j − Ŵ_j into the buffer, and the
// per-row loss (X_j − Ŵ_j) D_j (X_j − Ŵ_j)ᵀ; the feedback between blocks is a GEMM. Every function
// is LDLQ_FN, `static inline` by default; the CUDA backend defines it as `static inline __host__
// __device__`, so its kernels run this code (one (k, r) pair or one row per thread).
// Layouts: xt, wt (n, m) = Xᵀ, Wᵀ; xj, qj (m, b) block j as the codebook sees it; hbt, dbt
// (bc, m) the buffer's Ŵᵀ and Δᵀ; dj (b, b) the diagonal block of D.
#ifndef CALDERA_LDLQ_STEP_H
#define CALDERA_LDLQ_STEP_H

#include <stdint.h>

#ifndef LDLQ_FN
#define LDLQ_FN static inline
#endif

/** xj[r][k] = Xᵀ[j0 + k][r]: column k of block j, row r (k < b, r < m). */
LDLQ_FN void ldlq_gather(int64_t k, int64_t r, const float * xt, int64_t m, int64_t j0, int64_t b, float * xj) {
    xj[r * b + k] = xt[(j0 + k) * m + r];
}

/** Ŵ and Δ = W − Ŵ of column k, row r of block j into buffer row jl + k (jl = j0 − buffer start). */
LDLQ_FN void ldlq_scatter(int64_t k, int64_t r, const float * qj, const float * wt, int64_t m, int64_t j0, int64_t jl,
                          int64_t b, float * hbt, float * dbt) {
    const float v = qj[r * b + k];
    hbt[(jl + k) * m + r] = v;
    dbt[(jl + k) * m + r] = wt[(j0 + k) * m + r] - v;
}

/** Row r's loss of block j, (x − q) D_j (x − q)ᵀ, in double. */
LDLQ_FN double ldlq_row_loss(int64_t r, const float * xj, const float * qj, const float * dj, int64_t b) {
    const float * xr = xj + r * b, * qr = qj + r * b;
    double s = 0.0;
    for (int64_t k = 0; k < b; k++) {
        double t = 0.0;
        for (int64_t l = 0; l < b; l++) {
            t += (double) dj[k * b + l] * ((double) xr[l] - qr[l]);
        }
        s += t * ((double) xr[k] - qr[k]);
    }
    return s;
}

#endif // CALDERA_LDLQ_STEP_H
