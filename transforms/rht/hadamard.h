// SPDX-License-Identifier: MIT
// hadamard.h: Hadamard matrices built in code (Sylvester, Paley I and II) and the fast
// orthogonal U_n = (H_K ⊗ S_{2^p}) / √n of the rht transform (algorithms.md §4), shared by the
// plugin and its test. Internal to the rht plugin (hidden symbols), not part of the ABI.
#ifndef CALDERA_RHT_HADAMARD_H
#define CALDERA_RHT_HADAMARD_H

#include <stdint.h>

#include "caldera/caldera-plugin.h"

/** How a Hadamard matrix of order K is built here. */
enum rht_had_kind {
    RHT_HAD_NONE     = 0,  ///< not constructible by this code
    RHT_HAD_ONE      = 1,  ///< K = 1 (the whole size is a power of two: Sylvester only)
    RHT_HAD_PALEY1   = 2,  ///< K = q + 1, q prime, q ≡ 3 (mod 4)
    RHT_HAD_PALEY2   = 3,  ///< K = 2 (q + 1), q prime, q ≡ 1 (mod 4)
};

/** Which construction gives order K (and its q); RHT_HAD_NONE if none of ours does. */
enum rht_had_kind rht_had_kind(int64_t k, int64_t * q);

/** Write the K×K ±1 Hadamard matrix (row-major) into h; CALDERA_ERR_UNSUPPORTED if not constructible. */
int rht_had_build(int64_t k, float * h);

/**
 * Factor n = K · 2^p with the smallest constructible K ≤ max_k; 0 on success, or
 * CALDERA_ERR_UNSUPPORTED when n has no such factorisation (then pad, see rht_padded_size).
 */
int rht_factor(int64_t n, int64_t max_k, int64_t * k, int64_t * p2);

/** Smallest n' ≥ n that rht_factor accepts (a power of two always does, so n' < 2n). */
int64_t rht_padded_size(int64_t n, int64_t max_k);

/** One side of the transform: size n = k · p2 and the K×K core. */
struct rht_dim {
    int64_t n, k, p2;
    float * hk;   // (k, k) ±1, or NULL when k == 1
};

/** Build d for size n (which must factor); free with rht_dim_free. */
int  rht_dim_init(struct rht_dim * d, int64_t n, int64_t max_k);
void rht_dim_free(struct rht_dim * d);

/**
 * Apply U (trans = 0) or Uᵀ (trans = 1) to every row of the contiguous (rows, d->n) matrix x in
 * place: row x ↦ U x. O(rows · n · (log2 p2 + K)). Uses caldera_linalg_fwht and one GEMM per chunk.
 */
int rht_apply_rows(struct caldera_ctx * ctx, const struct rht_dim * d, float * x, int64_t rows, int trans);

#endif
