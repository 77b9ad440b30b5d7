// SPDX-License-Identifier: MIT
// kernels-impl.h: the per-ISA entry points behind caldera-kernels.h (internal). Each variant
// (kern-c.c, kern-avx2.c, kern-avx512.c) fills one table; kernels.c chooses a table at run
// time, prepares the activations and splits rows over threads.
#ifndef CALDERA_KERNELS_IMPL_H
#define CALDERA_KERNELS_IMPL_H

#include "caldera/caldera-kernels.h"
#include "kernel-math.h"

/** Scale of E8P row r (f16 or f32, one or per row). */
static inline float kw_e8p_scale(const struct caldera_kw * w, int64_t r) {
    int64_t i = w->scale_per_row ? r : 0;
    return w->scale_dtype == CALDERA_DTYPE_F16 ? kw_f16_to_f32(((const uint16_t *) w->scale)[i])
                                               : ((const float *) w->scale)[i];
}

/** Scale (or zero) number i of a uniform matrix. */
static inline float kw_uni_param(const struct caldera_kw * w, const void * p, int64_t i) {
    return w->scale_dtype == CALDERA_DTYPE_F16 ? kw_f16_to_f32(((const uint16_t *) p)[i]) : ((const float *) p)[i];
}

// Int8 activations for the E8P GEMV (README.md, "Int8 activations"). x is quantized once per call
// per block k of 32 columns, xq = round(x/d_k), d_k = max|x_k|/127. Every E8P value v is a
// multiple of 1/4 with |4v| <= 17: 4v = ±g + sh, g = 4·grid[a][e] (|g| <= 16, the table tabs),
// sh = ±1; the unsigned byte u = 4v + 17 (0..34) times xq summed over a block is an exact integer
// (one int32 lane: 4 codewords), and y_r = s_r/4 (Σ_k d_k Σ_block u·xq − 17 Σ_k d_k Σ xq_k). The
// rounding residual of x is quantized the same way with the step d_k/254 (xq2) and summed beside
// (a second vpdpbusd on the same u): the activations carry about 15 bits, and the decoded
// perplexity moves less than 0.1% (one int8 level alone moved it 0.3% on SmolLM2). The
// codes are read as a flat stream (the matrix row after row) in groups of 64 codewords; a group's
// codeword i meets the x bytes of its columns
// through the x planes of one period (the groups after which the column pattern repeats,
// nb / gcd(nb, 64) of them): xpl[((p·8 + e)·64 + i] = xq[8·((64p + i) mod nb) + PERM(e)].
#define KW_Q8_OFFSET 17
#define KW_Q8_MAXP   64   // periods up to 64 groups (32 KiB of planes); longer ones use f32
#define KW_Q8T_ROWS  64   // the int8 transposed product takes up to 64 rows (CALDERA's rank); more use f32

struct kw_q8s {
    const int8_t * tabs;     // (8, 256) g of plane e (nibble e) for abs pattern a; 64-byte aligned
    const int8_t * xpl;      // (period, 8, 64) x planes, 64-byte aligned
    const int8_t * xpl2;     // (period, 8, 64) planes of the residual xq2, 64-byte aligned
    int64_t        period;   // groups of 64 codewords per period
    // (2, 256) or NULL: the E8P grid's magnitudes as 2-bit fields, |g| = 2 + 4 m (the only
    // values of the E8P grid: |v| = 1/2, 3/2, 5/2), m of nibble e at bits 2 (e % 4) of byte
    // [e / 4][a]; nibble 7 is negative exactly where Σ_e m is odd (checked when built)
    const int8_t * mags;
};

struct kw_variant {
    /**
     * E8P GEMV: y[r − r0] (+)= <row r of Ŵ, x> for r in [r0, r1). xp (cols) is x with every block
     * of 8 permuted to nibble order; xs (cols/8) the block sums of x.
     */
    void (*e8p_gemv)(const struct caldera_kw * w, const float * xp, const float * xs, int64_t r0, int64_t r1,
                     float * y, int acc);
    /** E8P: rows [r0, r1) of Ŵ to dst (row stride ld), natural column order, scales applied. */
    void (*e8p_decode)(const struct caldera_kw * w, int64_t r0, int64_t r1, float * dst, int64_t ld);
    /** UNIFORM: columns [c0, c1) of row r of Ŵ to dst (c1 − c0 floats); c0 % 8 == 0. */
    void (*uni_decode_row)(const struct caldera_kw * w, int64_t r, int64_t c0, int64_t c1, float * dst);
    /** F16 GEMV: y[r − r0] (+)= <row r, x>. */
    void (*f16_gemv)(const struct caldera_kw * w, const float * x, int64_t r0, int64_t r1, float * y, int acc);
    /** F16: rows [r0, r1) to f32. */
    void (*f16_decode)(const struct caldera_kw * w, int64_t r0, int64_t r1, float * dst, int64_t ld);
    /** <a, b> over n floats. */
    float (*dot)(const float * a, const float * b, int64_t n);
    /** In-place unnormalised Walsh–Hadamard transform of x (n a power of two), natural order. */
    void (*fwht)(float * x, int64_t n);
    /** y += a x over n floats. */
    void (*axpy)(float a, const float * x, float * y, int64_t n);
    /**
     * E8P with int8 activations (struct kw_q8s): for the ncw codewords of the stream codes (its
     * first codeword starts a period), lanes[k] = 254 Σ u·xq + Σ u·xq2 over codewords 4k .. 4k+3
     * (exact: |lane| < 2^26); writes 16 lanes per started group of 64 (lanes past ncw/4 are garbage).
     */
    void (*e8p_q8_lanes)(const struct kw_q8s * q, const uint16_t * codes, int64_t ncw, int32_t * lanes);
    /**
     * Int8 E8P: xq (cols + 512) = round(x / d_k), d_k = max|x| of block k of 32 columns / 127 in
     * dl (cols/32), the residual's xq2 = round((x − d_k xq) / (d_k/254)) at xq + cols + 512 with its
     * steps at dl + cols/32, and the planes of both, xpl (period, 8, 64) and xpl + period·512;
     * returns 17 Σ_k (d_k Σ xq_k + d_k/254 Σ xq2_k).
     */
    float (*q8_prepare)(const float * x, int64_t cols, int64_t period, int8_t * xq, int8_t * xpl, float * dl);
    /**
     * Int8 E8P transposed: out[8b + e] = Σ_{r < m} tq[r] u(r, b, e) and out2 likewise with tq2 (the
     * residual) for the nb codeword columns of the m × nb codes (m <= KW_Q8T_ROWS; u = ±g + sh + 17
     * of nibble e of code (r, b), tabs and mags (may be NULL) as struct kw_q8s).
     */
    void (*e8p_q8t_cols)(const int8_t * tabs, const int8_t * mags, const uint16_t * codes, int64_t m, int64_t nb,
                         const int8_t * tq, const int8_t * tq2, int32_t * out, int32_t * out2);
    /** out[r] = Σ_k dl[k] lanes[r·nl + k] for r < nrows, k < nl. */
    void (*q8_rowdots)(const int32_t * lanes, int64_t nrows, int64_t nl, const float * dl, float * out);
    /**
     * RHT core: dst (k, p2) = scale · H src (trans = 0) or scale · Hᵀ src (trans = 1), H (k × k)
     * row-major, src and dst (k, p2) contiguous and distinct.
     */
    void (*rht_core)(const float * h, int64_t k, int64_t p2, const float * src, float * dst, int trans, float scale);
    /**
     * E8P transposed GEMV: y (cols) += Σ_r x[r] Ŵ[r, :] over all rows, one codeword column of
     * 8 outputs at a time accumulated in registers (NULL: rows decoded, then axpy); xs: scratch of
     * 2 rows floats.
     */
    void (*e8p_gemv_t)(const struct caldera_kw * w, const float * x, float * y, float * xs);
    /**
     * o[c] (+ o[c] when acc) = scale · x[c] · (−1 if bit c of sign (LSB first) is set, else 1),
     * c < n; the RHT's sign vectors on activations.
     */
    void (*sign_scale)(const uint8_t * sign, const float * x, int64_t n, float scale, float * o, int acc);
    /** 1: the int8 E8P GEMV is this variant's default (measured faster than f32 activations). */
    int q8_default;
};

extern const struct kw_variant caldera_kw_variant_c;
#if defined(__x86_64__) || defined(__i386__)
#define CALDERA_KW_X86 1
extern const struct kw_variant caldera_kw_variant_avx2;
extern const struct kw_variant caldera_kw_variant_avx512;         // with AVX512-VNNI
extern const struct kw_variant caldera_kw_variant_avx512_novnni;
#endif

// Shared between variants: the generic uniform row decoder (C) and the AVX2 functions that the
// AVX-512 table reuses.
void caldera_kw_e8p_q8_lanes_c(const struct kw_q8s * q, const uint16_t * codes, int64_t ncw, int32_t * lanes);
void caldera_kw_e8p_q8t_cols_c(const int8_t * tabs, const int8_t * mags, const uint16_t * codes, int64_t m, int64_t nb,
                               const int8_t * tq, const int8_t * tq2, int32_t * out, int32_t * out2);
float caldera_kw_q8_prepare_c(const float * x, int64_t cols, int64_t period, int8_t * xq, int8_t * xpl, float * dl);
void caldera_kw_sign_scale_c(const uint8_t * sign, const float * x, int64_t n, float scale, float * o, int acc);
void caldera_kw_avx2_sign_scale(const uint8_t * sign, const float * x, int64_t n, float scale, float * o, int acc);
void caldera_kw_q8_rowdots_c(const int32_t * lanes, int64_t nrows, int64_t nl, const float * dl, float * out);
void caldera_kw_uni_decode_row_c(const struct caldera_kw * w, int64_t r, int64_t c0, int64_t c1, float * dst);
#ifdef CALDERA_KW_X86
void caldera_kw_avx2_e8p_gemv(const struct caldera_kw * w, const float * xp, const float * xs, int64_t r0, int64_t r1,
                              float * y, int acc);
void caldera_kw_avx2_e8p_gemv_t(const struct caldera_kw * w, const float * x, float * y, float * xs);
void caldera_kw_avx2_e8p_decode(const struct caldera_kw * w, int64_t r0, int64_t r1, float * dst, int64_t ld);
void caldera_kw_avx2_uni_decode_row(const struct caldera_kw * w, int64_t r, int64_t c0, int64_t c1, float * dst);
void caldera_kw_avx2_fwht(float * x, int64_t n);
void caldera_kw_avx2_axpy(float a, const float * x, float * y, int64_t n);
void caldera_kw_avx2_rht_core(const float * h, int64_t k, int64_t p2, const float * src, float * dst, int trans,
                              float scale);
#endif

/** The table of the variant in use (caldera_kernel_isa()). */
const struct kw_variant * caldera_kw_variant(void);

/** The portable RHT core (kern-c.c), also the SIMD variants' fallback for p2 % 8 != 0. */
void caldera_kw_rht_core_c(const float * h, int64_t k, int64_t p2, const float * src, float * dst, int trans, float scale);

#endif // CALDERA_KERNELS_IMPL_H
