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

// ---- tune passes (ldlq.c's ldlq_tune): block j's step is X_j = Ŵ_j + G_j H_jj⁻¹, rounded; the
// current Ŵ_j (old) and G_j are gathered from Ŵᵀ (n, m) and the buffer's Gᵀ (bc, m) by ldlq_gather.
// Layouts: old, gj, xs, q (m, b); hi (b, b) = H_jj⁻¹; hjj (b, b) with row stride ldh (a view
// into the damped H); ht, dt, wt (n, m) = Ŵᵀ, Δᵀ, Wᵀ; dqt (b, m).

/** xs[r][k] = Ŵ_j[r][k] + Σ_l G_j[r][l] H_jj⁻¹[l][k], summed in double. */
LDLQ_FN float ldlq_tune_target(int64_t r, int64_t k, const float * old, const float * gj, const float * hi, int64_t b) {
    double s = old[r * b + k];
    for (int64_t l = 0; l < b; l++) {
        s += (double) gj[r * b + l] * hi[l * b + k];
    }
    return (float) s;
}

/**
 * Tune guard of row r: its loss as a function of block j's value v is (v − xs) H_jj (v − xs)ᵀ +
 * const. If the rounded q is worse than the current old, the row's target becomes old (xs row
 * overwritten), so rounding it again keeps the old codeword; returns 1 then, else 0.
 */
LDLQ_FN int ldlq_tune_guard(int64_t r, const float * q, const float * old, float * xs, const float * hjj, int64_t ldh,
                            int64_t b) {
    double lnew = 0.0, lold = 0.0;
    for (int64_t k = 0; k < b; k++) {
        double tn = 0.0, to = 0.0;
        for (int64_t l = 0; l < b; l++) {
            tn += (double) hjj[k * ldh + l] * ((double) q[r * b + l] - xs[r * b + l]);
            to += (double) hjj[k * ldh + l] * ((double) old[r * b + l] - xs[r * b + l]);
        }
        lnew += tn * ((double) q[r * b + k] - xs[r * b + k]);
        lold += to * ((double) old[r * b + k] - xs[r * b + k]);
    }
    if (lnew > lold) {
        for (int64_t k = 0; k < b; k++) {
            xs[r * b + k] = old[r * b + k];
        }
        return 1;
    }
    return 0;
}

/** Column k, row r of block j's new value v = q: dqt = Ŵ_old − v, then Ŵ = v and Δ = W − v. */
LDLQ_FN void ldlq_tune_update(int64_t k, int64_t r, const float * q, int64_t m, int64_t j0, int64_t b, float * ht,
                              float * dt, const float * wt, float * dqt) {
    const float v = q[r * b + k];
    const int64_t i = (j0 + k) * m + r;
    dqt[k * m + r] = ht[i] - v;
    ht[i] = v;
    dt[i] = wt[i] - v;
}

#endif // CALDERA_LDLQ_STEP_H
