// SPDX-License-Identifier: MIT
// hadamard.c: Hadamard matrices of order K built from their definitions (Paley 1933, constructions
// I and II over the prime field GF(q)), the size factorisation n = K · 2^p, and the fast
// application of U_n = (H_K ⊗ S_{2^p}) / √n along rows: a Walsh-Hadamard transform on the fast
// index, then one K×K GEMM on the slow index (algorithms.md §4: j = k · 2^p + l).
#include <math.h>
#include <string.h>

#include "hadamard.h"

static int is_prime(int64_t q) {
    if (q < 2) {
        return 0;
    }
    for (int64_t d = 2; d * d <= q; d++) {
        if (q % d == 0) {
            return 0;
        }
    }
    return 1;
}

enum rht_had_kind rht_had_kind(int64_t k, int64_t * q) {
    if (k == 1) {
        return RHT_HAD_ONE;
    }
    if (k < 4 || k % 4 != 0) {
        return RHT_HAD_NONE;
    }
    int64_t q1 = k - 1, q2 = k / 2 - 1;
    if (q1 % 4 == 3 && is_prime(q1)) {
        if (q) *q = q1;
        return RHT_HAD_PALEY1;
    }
    if (q2 % 4 == 1 && is_prime(q2)) {
        if (q) *q = q2;
        return RHT_HAD_PALEY2;
    }
    return RHT_HAD_NONE;
}

// Quadratic character of GF(q) for prime q: chi[a] for a in [0, q).
static void legendre(int64_t q, signed char * chi) {
    memset(chi, -1, (size_t) q);
    chi[0] = 0;
    for (int64_t x = 1; x < q; x++) {
        chi[(x * x) % q] = 1;
    }
}

int rht_had_build(int64_t k, float * h) {
    int64_t q = 0;
    enum rht_had_kind kind = rht_had_kind(k, &q);
    if (kind == RHT_HAD_NONE) {
        return CALDERA_ERR_UNSUPPORTED;
    }
    if (kind == RHT_HAD_ONE) {
        h[0] = 1.0f;
        return 0;
    }
    signed char * chi = caldera_malloc((size_t) q);
    if (!chi) {
        return CALDERA_ERR_NOMEM;
    }
    legendre(q, chi);
    if (kind == RHT_HAD_PALEY1) {
        // H = I + S, S = [[0, 1ᵀ], [-1, Q]], Q[i][j] = chi(j - i): S skew, S Sᵀ = q I, H Hᵀ = (q+1) I.
        for (int64_t i = 0; i < k; i++) {
            for (int64_t j = 0; j < k; j++) {
                float s;
                if (i == 0) {
                    s = j == 0 ? 0.0f : 1.0f;
                } else if (j == 0) {
                    s = -1.0f;
                } else {
                    s = (float) chi[((j - i) % q + q) % q];
                }
                h[i * k + j] = s + (i == j ? 1.0f : 0.0f);
            }
        }
    } else {
        // Symmetric conference matrix C = [[0, 1ᵀ], [1, Q]] of order q+1 (C² = q I), then
        // H = C ⊗ [[1, 1], [1, -1]] + I ⊗ [[1, -1], [-1, -1]].
        int64_t c = q + 1;
        for (int64_t i = 0; i < c; i++) {
            for (int64_t j = 0; j < c; j++) {
                int cij;
                if (i == j) {
                    cij = 0;
                } else if (i == 0 || j == 0) {
                    cij = 1;
                } else {
                    cij = chi[((j - i) % q + q) % q];
                }
                for (int a = 0; a < 2; a++) {
                    for (int b = 0; b < 2; b++) {
                        float v = cij == 0 ? ((a == 0 && b == 0) ? 1.0f : -1.0f)
                                           : (float) cij * ((a == 1 && b == 1) ? -1.0f : 1.0f);
                        h[(2 * i + a) * k + 2 * j + b] = v;
                    }
                }
            }
        }
    }
    caldera_free(chi);
    return 0;
}

int rht_factor(int64_t n, int64_t max_k, int64_t * k, int64_t * p2) {
    if (n < 1) {
        return CALDERA_ERR_UNSUPPORTED;
    }
    int64_t odd = n;
    while (odd % 2 == 0) {
        odd /= 2;
    }
    for (int64_t kk = odd; kk <= n && kk <= max_k; kk *= 2) {
        if (rht_had_kind(kk, NULL) != RHT_HAD_NONE) {
            *k = kk;
            *p2 = n / kk;
            return 0;
        }
    }
    return CALDERA_ERR_UNSUPPORTED;
}

int64_t rht_padded_size(int64_t n, int64_t max_k) {
    int64_t k, p2;
    for (int64_t m = n < 1 ? 1 : n;; m++) {
        if (rht_factor(m, max_k, &k, &p2) == 0) {
            return m;
        }
    }
}

int rht_dim_init(struct rht_dim * d, int64_t n, int64_t max_k) {
    memset(d, 0, sizeof(*d));
    int rc = rht_factor(n, max_k, &d->k, &d->p2);
    if (rc < 0) {
        return rc;
    }
    d->n = n;
    if (d->k > 1) {
        d->hk = caldera_malloc((size_t) (d->k * d->k) * sizeof(float));
        if (!d->hk) {
            return CALDERA_ERR_NOMEM;
        }
        if ((rc = rht_had_build(d->k, d->hk)) < 0) {
            rht_dim_free(d);
            return rc;
        }
    }
    return 0;
}

void rht_dim_free(struct rht_dim * d) {
    caldera_freep(&d->hk);
}

int rht_apply_rows(struct caldera_ctx * ctx, const struct rht_dim * d, float * x, int64_t rows, int trans) {
    const int64_t n = d->n, k = d->k, p2 = d->p2;
    const float scale = (float) (1.0 / sqrt((double) n));
    float * tmp = NULL, * out = NULL;
    int rc = 0;
    if (rows < 1) {
        return 0;
    }
    // S on the fast index: every length-p2 segment of every row (the rows are contiguous).
    if (p2 > 1) {
        struct caldera_tensor t = caldera_tensor_view_f32(x, rows * k, p2);
        if ((rc = caldera_linalg_fwht(ctx, &t)) < 0) {
            return rc;
        }
    }
    if (k == 1) {
        for (int64_t i = 0; i < rows * n; i++) {
            x[i] *= scale;
        }
        return 0;
    }
    // H_K on the slow index. Per chunk of R rows: tmp (k, R·p2) = x viewed (R, k, p2) permuted,
    // out = H_K tmp (or H_Kᵀ tmp), then permute back. Chunks keep the buffers about 1 Mi floats.
    int64_t chunk = (1 << 20) / n;
    chunk = chunk < 1 ? 1 : (chunk > rows ? rows : chunk);
    tmp = caldera_malloc((size_t) (chunk * n) * sizeof(float));
    out = caldera_malloc((size_t) (chunk * n) * sizeof(float));
    if (!tmp || !out) {
        rc = CALDERA_ERR_NOMEM;
        goto fail;
    }
    struct caldera_tensor hk = caldera_tensor_view_f32(d->hk, k, k);
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        int64_t rr = rows - r0 < chunk ? rows - r0 : chunk;
        int64_t w = rr * p2;
        for (int64_t r = 0; r < rr; r++) {
            for (int64_t kk = 0; kk < k; kk++) {
                memcpy(tmp + kk * w + r * p2, x + (r0 + r) * n + kk * p2, (size_t) p2 * sizeof(float));
            }
        }
        struct caldera_tensor tt = caldera_tensor_view_f32(tmp, k, w), ot = caldera_tensor_view_f32(out, k, w);
        if ((rc = caldera_linalg_gemm(ctx, trans ? CALDERA_TRANS : CALDERA_NO_TRANS, CALDERA_NO_TRANS, scale, &hk, &tt,
                                      0.0f, &ot)) < 0) {
            goto fail;
        }
        for (int64_t r = 0; r < rr; r++) {
            for (int64_t kk = 0; kk < k; kk++) {
                memcpy(x + (r0 + r) * n + kk * p2, out + kk * w + r * p2, (size_t) p2 * sizeof(float));
            }
        }
    }
fail:
    caldera_free(tmp);
    caldera_free(out);
    return rc;
}
