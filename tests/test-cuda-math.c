// SPDX-License-Identifier: MIT
// CPU tests of the CUDA backend's shared code, which run on every machine (no GPU needed):
// - the kernel bodies (core/src/cuda/items.h, which kernels.cu runs one item per GPU thread) run
//   here over every item, in reverse or shuffled order as GPU threads may, on the inputs the
//   kernels get, against brute force and against the CPU code: the FWHT (bit-identical to
//   caldera_linalg_fwht and within rounding of a dense Hadamard product), E8P rounding at 2, 3 and
//   4 bits (nearest codeword by exhaustive search), uniform rounding (nearest level, every
//   granularity and level rule), the LDLQ block step (gather, Ŵ and Δ, row loss), and the small
//   linear-algebra helpers;
// - device selection on a machine without a usable GPU: `device = cuda` is refused (by the
//   context, device allocation, linear algebra on a device tensor, and the pipeline's --dry-run
//   check with a clear message), `device = auto` runs on the CPU. With a GPU the same tests
//   check that cuda is accepted instead.
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/items.h"
#include "linalg_cuda.h"

// Named tolerances.
#define FWHT_TOL_DENSE   1e-6   // max |fwht − dense H x| / (‖x‖ sqrt(n)), f32 butterflies vs double
#define E8P_TOL_DIST     1e-5   // squared-distance slack vs exhaustive double search (float near-ties)
#define UNI_TOL_TIE      1e-6   // relative slack at which two uniform levels count as tied

static uint64_t shuffle_state = 0x9e3779b97f4a7c15ull;
static int64_t rnd(int64_t n) {
    shuffle_state ^= shuffle_state << 13;
    shuffle_state ^= shuffle_state >> 7;
    shuffle_state ^= shuffle_state << 17;
    return (int64_t) (shuffle_state % (uint64_t) n);
}

// A permutation of 0..n-1 (the order GPU threads might take).
static int64_t * shuffled(int64_t n) {
    int64_t * p = caldera_malloc((size_t) (n > 0 ? n : 1) * sizeof(int64_t));
    ck_assert_ptr_nonnull(p);
    for (int64_t i = 0; i < n; i++) p[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = rnd(i + 1), t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
    return p;
}

// ---------------------------------------------------------------------------------------------
// FWHT

START_TEST(test_fwht_items) {
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t ns[] = { 1, 2, 8, 64, 1024 }, rows = 3, pad = 5;
    for (int t = 0; t < 5; t++) {
        const int64_t n = ns[t], ld = n + pad;
        float * a = caldera_malloc((size_t) (rows * ld) * sizeof(float));
        float * b = caldera_malloc((size_t) (rows * ld) * sizeof(float));
        ck_assert(a && b);
        tu_fill_normal(a, rows * ld, 1.0f, 100 + (uint64_t) t);
        memcpy(b, a, (size_t) (rows * ld) * sizeof(float));
        // the kernel's items, stage by stage, each stage's items in shuffled order
        int64_t * perm = shuffled(rows * (n / 2));
        for (int64_t h = 1; h < n; h <<= 1) {
            for (int64_t q = 0; q < rows * (n / 2); q++) ccu_item_fwht(perm[q], a, n, ld, h);
        }
        caldera_free(perm);
        struct caldera_tensor bt = caldera_tensor_view_f32(b, rows, n);
        bt.ld = ld;
        float * x0 = caldera_malloc((size_t) (rows * ld) * sizeof(float));
        ck_assert_ptr_nonnull(x0);
        memcpy(x0, b, (size_t) (rows * ld) * sizeof(float));
        ck_assert_int_eq(caldera_linalg_fwht(ctx, &bt), 0);
        for (int64_t r = 0; r < rows; r++) {
            double xx = 0;
            for (int64_t j = 0; j < n; j++) xx += (double) x0[r * ld + j] * x0[r * ld + j];
            for (int64_t i = 0; i < n; i++) {
                // the same bits as the CPU routine
                ck_assert_msg(memcmp(&a[r * ld + i], &b[r * ld + i], sizeof(float)) == 0, "n %lld row %lld col %lld: %.9g vs %.9g",
                              (long long) n, (long long) r, (long long) i, a[r * ld + i], b[r * ld + i]);
                // and the dense Sylvester Hadamard product H[i][j] = (-1)^popcount(i & j)
                double s = 0;
                for (int64_t j = 0; j < n; j++) s += (__builtin_popcountll((unsigned long long) (i & j)) & 1 ? -1.0 : 1.0) * x0[r * ld + j];
                ck_assert_double_le(fabs(s - a[r * ld + i]), FWHT_TOL_DENSE * sqrt(xx * (double) n) + 1e-30);
            }
            for (int64_t j = n; j < ld; j++) ck_assert(memcmp(&a[r * ld + j], &x0[r * ld + j], sizeof(float)) == 0);   // padding untouched
        }
        caldera_free(a);
        caldera_free(b);
        caldera_free(x0);
    }
    caldera_ctx_free(ctx);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// E8P

// Smallest ‖x − c‖² over all 65536 E8P12 codewords, in double.
static double e8p_brute(const struct e8p_tables * t, const float x[8]) {
    double best = INFINITY;
    for (uint32_t c = 0; c < 65536; c++) {
        float v[8];
        e8p_decode(t, (uint16_t) c, v);
        double d = 0;
        for (int i = 0; i < 8; i++) d += ((double) x[i] - v[i]) * ((double) x[i] - v[i]);
        if (d < best) best = d;
    }
    return best;
}

static double rvq1_brute(const struct e8p_tables * t, const float x[8]) {
    double best = INFINITY;
    for (int c = 0; c < E8P_NRVQ1; c++) {
        double d = 0;
        for (int i = 0; i < 8; i++) d += ((double) x[i] - t->rvq1[c][i]) * ((double) x[i] - t->rvq1[c][i]);
        if (d < best) best = d;
    }
    return best;
}

static double dist2(const float * a, const float * b) {
    double d = 0;
    for (int i = 0; i < 8; i++) d += ((double) a[i] - b[i]) * ((double) a[i] - b[i]);
    return d;
}

START_TEST(test_e8p_items) {
    static struct e8p_tables tab;
    e8p_tables_build(&tab);
    const struct e8p_tables * t = &tab;
    const int64_t rows = 3, nb = 4, cols = nb * 8, ldx = cols + 3, ldy = cols + 1, ldc = nb + 2;   // codes: a view into a wider store
    for (int bits = 2; bits <= 4; bits++) {
        for (int nscale = 1; nscale <= rows; nscale += rows - 1) {
            float * x = caldera_malloc((size_t) (rows * ldx) * sizeof(float));
            float * y = caldera_malloc((size_t) (rows * ldy) * sizeof(float));
            uint16_t c1[3 * 6], c2[3 * 6];
            float scale[5];
            ck_assert(x && y);
            tu_fill_normal(x, rows * ldx, 1.0f, 7 + (uint64_t) bits * 10 + (uint64_t) nscale);
            for (int64_t i = 0; i < rows; i++) scale[i] = 0.5f + 0.25f * (float) i;
            if (nscale == rows) {   // one zero row: every value 0
                scale[2] = 0.0f;
            }
            for (int64_t i = 0; i < rows * ldy; i++) y[i] = NAN;
            int64_t * perm = shuffled(rows * nb);
            for (int64_t q = 0; q < rows * nb; q++) {
                ccu_item_e8p_round(perm[q], t, bits, x, ldx, nb, scale, nscale, c1, bits > 2 ? c2 : NULL, ldc, y, ldy);
            }
            caldera_free(perm);
            for (int64_t i = 0; i < rows; i++) {
                const float s = scale[nscale == 1 ? 0 : i];
                for (int64_t b = 0; b < nb; b++) {
                    const int64_t q = i * ldc + b;
                    float xs[8], v1[8], v[8], r[8];
                    for (int k = 0; k < 8; k++) xs[k] = s > 0.0f ? x[i * ldx + b * 8 + k] * (1.0f / s) : 0.0f;
                    // the value is s times the decode of the codes (the one decode rule)
                    e8p_decode_bits(t, bits, c1[q], bits > 2 ? c2[q] : 0, v);
                    for (int k = 0; k < 8; k++) ck_assert_float_eq(y[i * ldy + b * 8 + k], s * v[k]);
                    // the first code is the nearest E8P12 codeword to x / s
                    e8p_decode(t, c1[q], v1);
                    double got = dist2(xs, v1), best = e8p_brute(t, xs);
                    ck_assert_msg(got <= best + E8P_TOL_DIST * (1.0 + best), "bits %d block %lld: %.9g vs brute %.9g", bits,
                                  (long long) q, got, best);
                    if (bits == 2) continue;
                    // the second is the nearest point of the residual codebook to the scaled residual
                    const float rho = bits == 4 ? E8P_RESID_SCALE_4BIT : E8P_RESID_SCALE_3BIT;
                    for (int k = 0; k < 8; k++) r[k] = (xs[k] - v1[k]) * rho;
                    float v2[8];
                    if (bits == 4) {
                        e8p_decode(t, c2[q], v2);
                    } else {
                        e8p_rvq1_decode(t, (uint8_t) c2[q], v2);
                    }
                    double got2 = dist2(r, v2), best2 = bits == 4 ? e8p_brute(t, r) : rvq1_brute(t, r);
                    ck_assert_msg(got2 <= best2 + E8P_TOL_DIST * (1.0 + best2), "bits %d block %lld residual: %.9g vs %.9g", bits,
                                  (long long) q, got2, best2);
                }
                if (s == 0.0f) {
                    for (int64_t j = 0; j < cols; j++) ck_assert_float_eq(y[i * ldy + j], 0.0f);
                }
                for (int64_t j = cols; j < ldy; j++) ck_assert(isnan(y[i * ldy + j]));   // padding untouched
            }
            caldera_free(x);
            caldera_free(y);
        }
    }
}
END_TEST

// ---------------------------------------------------------------------------------------------
// Uniform

// Nearest level index to x in double (levels ascending), and whether the runner-up ties with it.
static int nearest_level(const double * lev, int nlev, double x, int * tie) {
    int best = 0;
    for (int k = 1; k < nlev; k++) {
        if (fabs(x - lev[k]) < fabs(x - lev[best])) best = k;
    }
    *tie = 0;
    for (int k = 0; k < nlev; k++) {
        if (k != best && fabs(fabs(x - lev[k]) - fabs(x - lev[best])) <= UNI_TOL_TIE * (1.0 + fabs(x))) *tie = 1;
    }
    return best;
}

START_TEST(test_uniform_items) {
    // x is columns [col0, col0 + cols) of a weight of wcols columns; codes a view (ld ldc) into a wider store
    const int64_t rows = 4, cols = 13, ldx = 16, ldy = 15, col0 = 3, wcols = col0 + cols, ldc = 14;
    // kinds: 0 symmetric midrise, 1 symmetric reference, 2 asymmetric with GPTQ's integer zero, 3 float zero
    for (int kind = 0; kind < 4; kind++) {
        for (int bits = 2; bits <= 8; bits += 2) {
            struct uniform_rule r;
            const int L = 1 << (bits - 1);
            r.kind = kind;
            r.kmax = kind == 1 ? 2 * L - 2 : 2 * L - 1;
            r.half = kind == 0 ? (float) L - 0.5f : kind == 1 ? (float) (L - 1) : 0.0f;
            for (int gran = UNI_TENSOR; gran <= UNI_GROUP; gran++) {
                const int64_t gs = 5, ngr = (wcols + gs - 1) / gs;
                const int64_t nscale = gran == UNI_TENSOR ? 1 : gran == UNI_ROW ? rows : gran == UNI_COLUMN ? wcols : rows * ngr;
                float x[4 * 16], y[4 * 15], scale[4 * 16], zero[4 * 16];
                uint8_t codes[4 * 14];
                tu_fill_normal(x, rows * ldx, 1.0f, 1000 + (uint64_t) (kind * 100 + bits * 10 + gran));
                for (int64_t g = 0; g < nscale; g++) {
                    scale[g] = g == 1 ? 0.0f : 2.5f / (float) L * (1.0f + 0.1f * (float) g);   // group 1: all-zero group (d = 0)
                    zero[g] = kind == 2 ? (float) ((L - 1 + g) % (2 * L)) : -1.25f - 0.05f * (float) g;   // GPTQ: an integer code
                }
                for (int64_t i = 0; i < rows * ldy; i++) y[i] = NAN;
                int64_t * perm = shuffled(rows * cols);
                for (int64_t q = 0; q < rows * cols; q++) {
                    ccu_item_uniform_round(perm[q], &r, gran, ngr, gs, col0, x, ldx, cols, scale, kind >= 2 ? zero : NULL, codes,
                                           ldc, y, ldy);
                }
                caldera_free(perm);
                for (int64_t i = 0; i < rows; i++) {
                    for (int64_t j = 0; j < cols; j++) {
                        const int64_t wj = col0 + j;   // the weight's column
                        int64_t g = gran == UNI_TENSOR ? 0 : gran == UNI_ROW ? i : gran == UNI_COLUMN ? wj : i * ngr + wj / gs;
                        double d = scale[g], z = kind >= 2 ? zero[g] : 0.0;
                        int k = codes[i * ldc + j];
                        ck_assert_int_le(k, r.kmax);
                        // the value of the code, in f32 as stored
                        float want_v = kind == 2   ? ((float) k - zero[g]) * scale[g]
                                       : kind == 3 ? zero[g] + (float) k * scale[g]
                                                   : ((float) k - r.half) * scale[g];
                        ck_assert_float_eq(y[i * ldy + j], want_v);
                        if (d == 0.0) continue;   // every code decodes to the same value
                        double lev[256];
                        for (int l = 0; l <= r.kmax; l++) lev[l] = kind == 2 ? (l - z) * d : kind == 3 ? z + l * d : (l - (double) r.half) * d;
                        int tie, best = nearest_level(lev, r.kmax + 1, x[i * ldx + j], &tie);
                        ck_assert_msg(k == best || tie, "kind %d bits %d gran %d (%lld, %lld): x %.9g code %d, nearest %d",
                                      kind, bits, gran, (long long) i, (long long) j, x[i * ldx + j], k, best);
                    }
                    for (int64_t j = cols; j < ldy; j++) ck_assert(isnan(y[i * ldy + j]));
                }
            }
        }
    }
}
END_TEST

// ---------------------------------------------------------------------------------------------
// Small helpers of the linear algebra kernels

START_TEST(test_helper_items) {
    const int64_t n = 12, ld = 14, b = 4;
    float a[12 * 14], c[12 * 14];
    tu_fill_normal(a, n * ld, 1.0f, 3);
    memcpy(c, a, sizeof(a));
    for (int64_t q = n * n - 1; q >= 0; q--) ccu_item_mirror_lower(q, c, n, ld);
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < n; j++) ck_assert_float_eq(c[i * ld + j], j > i ? a[j * ld + i] : a[i * ld + j]);
    }
    memcpy(c, a, sizeof(a));
    for (int64_t q = n * n - 1; q >= 0; q--) ccu_item_zero_upper(q, c, n, ld);
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < n; j++) ck_assert_float_eq(c[i * ld + j], j > i ? 0.0f : a[i * ld + j]);
    }
    memcpy(c, a, sizeof(a));
    for (int64_t q = n * b - 1; q >= 0; q--) ccu_item_identity_block(q, c, ld, b);
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < n; j++) {
            float want = i / b == j / b ? (i == j ? 1.0f : 0.0f) : a[i * ld + j];
            ck_assert_float_eq(c[i * ld + j], want);
        }
    }
    const float s[5] = { 4.0f, 2.0f, 1e-3f, 1e-9f, 0.0f };
    float out[5];
    for (int64_t i = 4; i >= 0; i--) ccu_item_pinv_diag(i, s, out, 1e-6f);
    ck_assert_float_eq(out[0], 0.25f);
    ck_assert_float_eq(out[1], 0.5f);
    ck_assert_float_eq(out[2], 1.0f / 1e-3f);
    ck_assert_float_eq(out[3], 0.0f);   // below rcond · s_0
    ck_assert_float_eq(out[4], 0.0f);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// LDLQ block step

START_TEST(test_ldlq_items) {
    const int64_t m = 9, n = 24, b = 8, j0 = 8, jl = 8, bc = 16;   // block 1 of 3, second of its buffer
    float xt[24 * 9], wt[24 * 9], xj[9 * 8], qj[9 * 8], hbt[16 * 9], dbt[16 * 9], dj[8 * 8];
    tu_fill_normal(xt, n * m, 1.0f, 500);
    tu_fill_normal(wt, n * m, 1.0f, 501);
    tu_fill_normal(qj, m * b, 1.0f, 502);
    tu_fill_normal(dj, b * b, 1.0f, 503);
    for (int64_t i = 0; i < bc * m; i++) hbt[i] = dbt[i] = NAN;
    int64_t * perm = shuffled(m * b);
    for (int64_t q = 0; q < m * b; q++) ccu_item_ldlq_gather(perm[q], xt, m, j0, b, xj);
    for (int64_t q = 0; q < m * b; q++) ccu_item_ldlq_scatter(perm[q], qj, wt, m, j0, jl, b, hbt, dbt);
    caldera_free(perm);
    for (int64_t r = 0; r < m; r++) {
        for (int64_t k = 0; k < b; k++) {
            ck_assert_float_eq(xj[r * b + k], xt[(j0 + k) * m + r]);   // Xᵀ's rows j0.. as columns
            ck_assert_float_eq(hbt[(jl + k) * m + r], qj[r * b + k]);
            ck_assert_float_eq(dbt[(jl + k) * m + r], wt[(j0 + k) * m + r] - qj[r * b + k]);
        }
    }
    for (int64_t i = 0; i < jl * m; i++) ck_assert(isnan(hbt[i]) && isnan(dbt[i]));   // other buffer rows untouched
    // the row loss against e D eᵀ summed in the other order, in long double
    for (int64_t r = 0; r < m; r++) {
        long double want = 0;
        for (int64_t l = 0; l < b; l++) {
            for (int64_t k = 0; k < b; k++) {
                want += (long double) ((double) xj[r * b + k] - qj[r * b + k]) * dj[k * b + l] *
                        ((double) xj[r * b + l] - qj[r * b + l]);
            }
        }
        double got = ldlq_row_loss(r, xj, qj, dj, b);
        ck_assert_double_le(fabs(got - (double) want), 1e-12 * (1.0 + fabs((double) want)));
    }
}
END_TEST

// LDLQ tune step: target, guard, update (ldlq-step.h; the kernels run the items, ldlq.c the same functions).
#define TUNE_TOL 1e-6   // relative: f32 result of a double sum against long double

START_TEST(test_ldlq_tune_items) {
    const int64_t m = 11, n = 24, b = 8, j0 = 8, ldh = 13;
    float old[11 * 8], gj[11 * 8], hi[8 * 8], xs[11 * 8], q[11 * 8], hjj[8 * 13];
    float ht[24 * 11], dt[24 * 11], wt[24 * 11], ht0[24 * 11], dqt[8 * 11];
    tu_fill_normal(old, m * b, 1.0f, 600);
    tu_fill_normal(gj, m * b, 1.0f, 601);
    tu_fill_normal(hi, b * b, 0.3f, 602);
    tu_fill_normal(q, m * b, 1.0f, 603);
    tu_fill_normal(ht, n * m, 1.0f, 604);
    tu_fill_normal(wt, n * m, 1.0f, 605);
    // hjj: a symmetric positive definite b × b block (A Aᵀ + I) inside rows of ldh floats
    float a8[8 * 8];
    tu_fill_normal(a8, b * b, 1.0f, 606);
    for (int64_t k = 0; k < b; k++) {
        for (int64_t l = 0; l < ldh; l++) {
            double v = l < b ? (k == l ? 1.0 : 0.0) : NAN;
            for (int64_t t = 0; l < b && t < b; t++) v += (double) a8[k * b + t] * a8[l * b + t];
            hjj[k * ldh + l] = (float) v;
        }
    }
    // target: xs = old + gj hi, in any item order
    int64_t * perm = shuffled(m * b);
    for (int64_t t = 0; t < m * b; t++) ccu_item_ldlq_tune_target(perm[t], old, gj, hi, b, xs);
    caldera_free(perm);
    for (int64_t r = 0; r < m; r++) {
        for (int64_t k = 0; k < b; k++) {
            long double want = old[r * b + k];
            for (int64_t l = 0; l < b; l++) want += (long double) gj[r * b + l] * hi[l * b + k];
            ck_assert_double_le(fabs(xs[r * b + k] - (double) want), TUNE_TOL * (1.0 + fabs((double) want)));
        }
    }
    // guard: a row is kept (xs row = old) exactly when q's loss around xs exceeds old's
    float xs0[11 * 8];
    memcpy(xs0, xs, sizeof(xs));
    for (int64_t r = 0; r < m; r++) {
        if (r % 3 == 0) memcpy(q + r * b, old + r * b, (size_t) b * sizeof(float));   // equal losses: not kept
        if (r % 3 == 1) memcpy(q + r * b, xs + r * b, (size_t) b * sizeof(float));    // q = xs: loss 0, not kept
    }
    for (int64_t r = 0; r < m; r++) {
        long double lq = 0, lo = 0;
        for (int64_t k = 0; k < b; k++) {
            for (int64_t l = 0; l < b; l++) {
                lq += ((long double) q[r * b + k] - xs0[r * b + k]) * hjj[k * ldh + l] * ((long double) q[r * b + l] - xs0[r * b + l]);
                lo += ((long double) old[r * b + k] - xs0[r * b + k]) * hjj[k * ldh + l] * ((long double) old[r * b + l] - xs0[r * b + l]);
            }
        }
        int kept = ldlq_tune_guard(r, q, old, xs, hjj, ldh, b);
        if (r % 3 != 2) ck_assert_int_eq(kept, 0);
        if (fabsl(lq - lo) > 1e-9L * (1 + fabsl(lo))) ck_assert_int_eq(kept, lq > lo);
        for (int64_t k = 0; k < b; k++) ck_assert_float_eq(xs[r * b + k], kept ? old[r * b + k] : xs0[r * b + k]);
    }
    // update: dqt = Ŵ_old − q, Ŵ = q, Δ = W − q for block j0; other rows untouched
    memcpy(ht0, ht, sizeof(ht));
    for (int64_t i = 0; i < n * m; i++) dt[i] = NAN;
    perm = shuffled(m * b);
    for (int64_t t = 0; t < m * b; t++) ccu_item_ldlq_tune_update(perm[t], q, m, j0, b, ht, dt, wt, dqt);
    caldera_free(perm);
    for (int64_t i = 0; i < n; i++) {
        for (int64_t r = 0; r < m; r++) {
            const int64_t e = i * m + r;
            if (i < j0 || i >= j0 + b) {
                ck_assert_float_eq(ht[e], ht0[e]);
                ck_assert(isnan(dt[e]));
                continue;
            }
            const float v = q[r * b + (i - j0)];
            ck_assert_float_eq(dqt[(i - j0) * m + r], ht0[e] - v);
            ck_assert_float_eq(ht[e], v);
            ck_assert_float_eq(dt[e], wt[e] - v);
        }
    }
}
END_TEST

// The core's entry points on host tensors (the CPU path plugins take): the items in order, and a
// clear error for each kind of bad argument; a device tensor without a usable GPU fails cleanly.
START_TEST(test_core_entry_points) {
    struct caldera_ctx * ctx = tu_ctx();
    static struct e8p_tables tab;
    e8p_tables_build(&tab);
    const int64_t rows = 5, cols = 24, nb = 3;
    float x[5 * 24], y[5 * 24], y2[5 * 24], scale[5] = { 0.7f, 0.8f, 0.9f, 1.0f, 1.1f };
    uint16_t c1[5 * 3], c2[5 * 3], k1[5 * 3], k2[5 * 3];
    tu_fill_normal(x, rows * cols, 1.0f, 700);
    struct caldera_tensor tx = caldera_tensor_view_f32(x, rows, cols), ty = caldera_tensor_view_f32(y, rows, cols);
    struct caldera_tensor tc1 = { .data = c1, .dtype = CALDERA_DTYPE_U16, .ndim = 2, .ne = { rows, nb }, .ld = nb };
    struct caldera_tensor tc2 = tc1;
    tc2.data = c2;
    ck_assert_int_eq(caldera_round_e8p(ctx, &tab, 4, scale, rows, &tx, &tc1, &tc2, &ty), 0);
    for (int64_t q = 0; q < rows * nb; q++) ccu_item_e8p_round(q, &tab, 4, x, cols, nb, scale, rows, k1, k2, nb, y2, cols);
    ck_assert(memcmp(y, y2, sizeof(y)) == 0 && memcmp(c1, k1, sizeof(c1)) == 0 && memcmp(c2, k2, sizeof(c2)) == 0);
    // bad arguments
    ck_assert_int_eq(caldera_round_e8p(ctx, &tab, 4, scale, 2, &tx, &tc1, &tc2, &ty), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "nscale = 2; allowed: 1 or rows = 5"));
    ck_assert_int_eq(caldera_round_e8p(ctx, &tab, 5, scale, 1, &tx, &tc1, &tc2, &ty), CALDERA_ERR_RANGE);
    ck_assert_int_eq(caldera_round_e8p(ctx, &tab, 3, scale, 1, &tx, &tc1, NULL, &ty), CALDERA_ERR_INVAL);
    struct caldera_tensor bad = tc1;
    bad.dtype = CALDERA_DTYPE_U8;
    ck_assert_int_eq(caldera_round_e8p(ctx, &tab, 2, scale, 1, &tx, &bad, NULL, &ty), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "codes must be a 2-d u16 tensor"));
    struct caldera_tensor narrow = tx;
    narrow.ne[1] = 20;
    ck_assert_int_eq(caldera_round_e8p(ctx, &tab, 2, scale, 1, &narrow, &tc1, NULL, &ty), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "allowed: a multiple of 8"));
    // uniform: a column block whose last group lies beyond the scales is refused
    struct uniform_rule r = { .kind = 0, .kmax = 15, .half = 7.5f };
    uint8_t codes[5 * 24];
    struct caldera_tensor tcu = { .data = codes, .dtype = CALDERA_DTYPE_U8, .ndim = 2, .ne = { rows, cols }, .ld = cols };
    float us[5 * 3];
    for (int g = 0; g < 15; g++) us[g] = 0.25f;
    ck_assert_int_eq(caldera_round_uniform(ctx, &r, UNI_GROUP, 3, 8, 0, us, NULL, 15, &tx, &tcu, &ty), 0);
    for (int64_t q = 0; q < rows * cols; q++) {
        uint8_t k;
        ck_assert_float_eq(y[q], uniform_round(&r, x[q], 0.25f, 0.0f, &k));
        ck_assert_int_eq(codes[q], k);
    }
    ck_assert_int_eq(caldera_round_uniform(ctx, &r, UNI_GROUP, 3, 8, 8, us, NULL, 15, &tx, &tcu, &ty), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "falls in scale group 15; allowed: groups below nscale = 15"));
    // the LDLQ step: shapes, and tensors on different devices
    float xt[24 * 5], xj[5 * 8];
    struct caldera_tensor txt = caldera_tensor_view_f32(xt, cols, rows), txj = caldera_tensor_view_f32(xj, rows, 8);
    ck_assert_int_eq(caldera_ldlq_gather(ctx, &txt, 16, &txj), 0);
    ck_assert_int_eq(caldera_ldlq_gather(ctx, &txt, 20, &txj), CALDERA_ERR_INVAL);
    struct caldera_tensor dxj = txj;
    dxj.device = CALDERA_DEVICE_CUDA;
    ck_assert_int_eq(caldera_ldlq_gather(ctx, &txt, 0, &dxj), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "xj is on another device than xt"));
    // device tensors without a usable GPU: a clean error, nothing dereferenced
    char why[512];
    if (caldera_cuda_probe(why, sizeof(why)) == 0) {
        struct caldera_tensor dx = tx, dy = ty;
        dx.device = dy.device = CALDERA_DEVICE_CUDA;
        int rc = caldera_round_e8p(ctx, &tab, 2, scale, 1, &dx, &tc1, NULL, &dy);
        ck_assert(rc == CALDERA_ERR_DEVICE || rc == CALDERA_ERR_UNSUPPORTED);
        ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "device 'cuda'"));
        struct caldera_tensor dxt = txt;
        dxt.device = CALDERA_DEVICE_CUDA;
        rc = caldera_ldlq_gather(ctx, &dxt, 0, &dxj);
        ck_assert(rc == CALDERA_ERR_DEVICE || rc == CALDERA_ERR_UNSUPPORTED);
    }
    caldera_ctx_free(ctx);
}
END_TEST

// The fused layer's decode item (the CUDA variant's kernel body) against caldera_kw_decode with
// the portable C kernels: the same bits, for E8P at 2, 3, 4 bits (per-row and single scales, f16
// and f32) and uniform codes (every granularity, both rules, zero points, odd widths), in any order.
static void check_kw_decode(struct caldera_ctx * ctx, const char * plugin, const char * opts, int64_t m, int64_t n,
                            uint64_t seed) {
    struct caldera_inst * q = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, plugin, "q", &q), 0);
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", opts);
    for (char * kv = strtok(buf, ","); kv; kv = strtok(NULL, ",")) {
        char * eq = strchr(kv, '=');
        *eq = 0;
        ck_assert_msg(caldera_inst_set(q, kv, eq + 1) == 0, "option %s=%s", kv, eq + 1);
    }
    ck_assert_int_eq(caldera_inst_start(q), 0);
    const struct caldera_quantizer_ops * ops = caldera_inst_plugin(q)->ops;
    struct caldera_tensor w = tu_randn(ctx, m, n, seed), wh;
    struct caldera_pack * pack = NULL;
    void * st = NULL;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &wh), 0);
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    ck_assert_int_eq(ops->quantize(q, &w, NULL, &wh, pack), 0);
    ck_assert_int_eq(ops->linear_init(q, pack, m, n, &st), 0);
    const struct caldera_kw * kw = st;
    const int64_t ld = n + 3;
    float * want = caldera_malloc((size_t) (m * ld) * sizeof(float)), * got = caldera_malloc((size_t) (m * ld) * sizeof(float));
    ck_assert(want && got);
    for (int64_t i = 0; i < m * ld; i++) want[i] = got[i] = NAN;
    ck_assert_int_eq(caldera_kernel_set_isa(CALDERA_ISA_C), 0);
    ck_assert_int_eq(caldera_kw_decode(ctx, kw, want, ld), 0);
    caldera_kernel_set_isa(-1);
    int64_t * perm = shuffled(m * n);
    for (int64_t t = 0; t < m * n; t++) ccu_item_kw_decode(perm[t], kw, got, ld);
    caldera_free(perm);
    for (int64_t r = 0; r < m; r++) {
        ck_assert_msg(memcmp(got + r * ld, want + r * ld, (size_t) n * sizeof(float)) == 0, "%s %s: row %lld differs",
                      plugin, opts, (long long) r);
        for (int64_t c = n; c < ld; c++) ck_assert(isnan(got[r * ld + c]));
    }
    caldera_free(want);
    caldera_free(got);
    ops->linear_free(q, st);
    caldera_pack_free(pack);
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    caldera_inst_free(q);
}

START_TEST(test_kw_decode_items) {
    struct caldera_ctx * ctx = tu_ctx();
    static const char * const e8[] = { "bits=2", "bits=2,scale_mode=row,scale_dtype=f32", "bits=3,scale_mode=row",
                                       "bits=4,scale_dtype=f32" };
    for (size_t i = 0; i < sizeof(e8) / sizeof(e8[0]); i++) check_kw_decode(ctx, "e8", e8[i], 13, 48, 800 + i);
    static const char * const uni[] = { "bits=4,granularity=group,group_size=16,symmetric=0", "bits=3,granularity=row",
                                        "bits=5,granularity=column,symmetric=0", "bits=2,granularity=tensor,levels=reference",
                                        "bits=6,granularity=group,group_size=7,scale_dtype=f32" };
    for (size_t i = 0; i < sizeof(uni) / sizeof(uni[0]); i++) check_kw_decode(ctx, "uniform", uni[i], 11, 37, 900 + i);
    caldera_ctx_free(ctx);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// Device selection where no GPU can be used (this machine); with a GPU, cuda is accepted.

static const char * DEVICE_INI =
    "[caldera]\n"
    "reader = src\n"
    "stages = q\n"
    "device = %s\n"
    "\n"
    "[src]\n"
    "plugin = synthetic\n"
    "layers = 1\n"
    "hidden = 32\n"
    "ffn = 48\n"
    "seed = 5\n"
    "\n"
    "[q]\n"
    "plugin = uniform\n"
    "bits = 4\n";

static int pipeline_with_device(struct caldera_ctx * ctx, const char * device, int run, char * diag, size_t n) {
    char ini[1024];
    struct caldera_config * cfg = NULL;
    struct caldera_pipeline * pl = NULL;
    snprintf(ini, sizeof(ini), DEVICE_INI, device);
    ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
    ck_assert_int_eq(caldera_config_parse_string(cfg, "device.ini", ini), 0);
    int rc = caldera_pipeline_init(ctx, cfg, &pl);
    diag[0] = '\0';
    if (caldera_config_ndiag(cfg) > 0) snprintf(diag, n, "%s", caldera_config_diag(cfg, 0));
    if (rc == 0 && run) rc = caldera_pipeline_run(pl);
    caldera_pipeline_free(pl);
    caldera_config_free(cfg);
    return rc;
}

START_TEST(test_device_selection) {
    struct caldera_ctx * ctx = tu_ctx();
    char why[1024], diag[2048];
    const int ndev = caldera_cuda_probe(why, sizeof(why));
    ck_assert(ndev > 0 || why[0] != '\0');   // no device: a reason
    int rc = caldera_ctx_set_device(ctx, CALDERA_DEVICE_CUDA);
    int64_t ne[2] = { 4, 4 };
    struct caldera_tensor t = { 0 };
    if (ndev == 0) {
        if (strstr(why, "this build has no CUDA")) {   // configured without nvcc
            ck_assert_int_eq(rc, CALDERA_ERR_UNSUPPORTED);
            ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "this build has no CUDA"));
        } else {
            ck_assert_int_eq(rc, CALDERA_ERR_DEVICE);
        }
        ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "device 'cuda'"));
        ck_assert_int_eq(caldera_ctx_device(ctx), CALDERA_DEVICE_CPU);
        // device memory and linear algebra on a device tensor fail cleanly too
        rc = caldera_tensor_alloc_device(ctx, CALDERA_DEVICE_CUDA, CALDERA_DTYPE_F32, 2, ne, &t);
        ck_assert(rc == CALDERA_ERR_DEVICE || rc == CALDERA_ERR_UNSUPPORTED);
        ck_assert_ptr_null(t.data);
        float buf[16] = { 0 };
        struct caldera_tensor dv = caldera_tensor_view_f32(buf, 4, 4), hv = caldera_tensor_view_f32(buf, 4, 4);
        dv.device = CALDERA_DEVICE_CUDA;   // never dereferenced: there is no device
        rc = caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &dv, &hv, 0.0f, &hv);
        ck_assert(rc == CALDERA_ERR_DEVICE || rc == CALDERA_ERR_UNSUPPORTED);
        // the pipeline: cuda is a configuration error found by --dry-run's checks, with the reason
        rc = pipeline_with_device(ctx, "cuda", 0, diag, sizeof(diag));
        ck_assert_int_eq(rc, CALDERA_ERR_CONFIG);
        ck_assert_msg(strstr(diag, "device.ini:4: [caldera] device = cuda, but no CUDA device can be used: ") != NULL, "%s", diag);
        ck_assert_msg(strstr(diag, "allowed: cpu, or auto") != NULL, "%s", diag);
    } else {
        ck_assert_int_eq(rc, 0);
        ck_assert_int_eq(caldera_ctx_device(ctx), CALDERA_DEVICE_CUDA);
        ck_assert_int_eq(caldera_tensor_alloc_device(ctx, CALDERA_DEVICE_CUDA, CALDERA_DTYPE_F32, 2, ne, &t), 0);
        caldera_tensor_free(&t);
        ck_assert_int_eq(pipeline_with_device(ctx, "cuda", 0, diag, sizeof(diag)), 0);
    }
    // auto runs anywhere (the CPU here), and cpu as before
    ck_assert_int_eq(caldera_ctx_set_device(ctx, CALDERA_DEVICE_CPU), 0);
    rc = pipeline_with_device(ctx, "auto", 1, diag, sizeof(diag));
    ck_assert_msg(rc == 0, "%s %s", diag, caldera_ctx_errmsg(ctx));
    ck_assert_int_eq(pipeline_with_device(ctx, "cpu", 0, diag, sizeof(diag)), 0);
    // an unknown device value is refused by the option table
    rc = pipeline_with_device(ctx, "gpu", 0, diag, sizeof(diag));
    ck_assert_int_eq(rc, CALDERA_ERR_CONFIG);
    ck_assert_msg(strstr(diag, "cpu") && strstr(diag, "cuda") && strstr(diag, "auto"), "%s", diag);
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * cuda_math_suite(void) {
    Suite * s = suite_create("cuda-math");
    TCase * tc = tcase_create("items");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_fwht_items);
    tcase_add_test(tc, test_e8p_items);
    tcase_add_test(tc, test_uniform_items);
    tcase_add_test(tc, test_helper_items);
    tcase_add_test(tc, test_ldlq_items);
    tcase_add_test(tc, test_ldlq_tune_items);
    tcase_add_test(tc, test_core_entry_points);
    tcase_add_test(tc, test_kw_decode_items);
    suite_add_tcase(s, tc);
    TCase * td = tcase_create("device");
    tcase_add_test(td, test_device_selection);
    suite_add_tcase(s, td);
    return s;
}

TU_MAIN(cuda_math_suite)
