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

// Int8 activations for the E8P GEMV. Every E8P value is a multiple of 1/4 with |4v| <= 17, so
// tab[code] (65536 codes × 8 bytes, 512 KiB) holds 4·value_j + 17 (0..34, unsigned) in nibble
// order. x in nibble order is quantized per block of KW_Q8_BLOCK columns, xq = round(x/d_k) with
// d_k = max|x_k|/127, and <v, x> ≈ (1/4) Σ_k d_k (<tab, xq_k> − 17 Σ xq_k): the integer sums are
// exact (u8 × s8 products, vpdpbusd / vpmaddubsw + vpmaddwd), the scales are applied after.
#define KW_Q8_BLOCK  32
#define KW_Q8_OFFSET 17

struct kw_q8x {
    const uint64_t * tab;    // 65536 entries, 8 bytes each
    const int8_t *   xq;     // (cols) quantized x, nibble order
    const float *    dl;     // (cols/4) d_k of the block of each group of 4 columns
    float            corr;   // 17 Σ_k d_k Σ xq_k
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
     * E8P with int8 activations (struct kw_q8x): Σ_k d_k <tab[codes] bytes of block k, xq_k> − corr
     * over one row of nb codes (nb % 4 == 0); the driver scales by s_r/4 (and 1/ρ for codes2).
     */
    float (*e8p_q8_row)(const struct kw_q8x * q, const uint16_t * codes, int64_t nb);
    /**
     * RHT core: dst (k, p2) = scale · H src (trans = 0) or scale · Hᵀ src (trans = 1), H (k × k)
     * row-major, src and dst (k, p2) contiguous and distinct.
     */
    void (*rht_core)(const float * h, int64_t k, int64_t p2, const float * src, float * dst, int trans, float scale);
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
void caldera_kw_uni_decode_row_c(const struct caldera_kw * w, int64_t r, int64_t c0, int64_t c1, float * dst);
#ifdef CALDERA_KW_X86
void caldera_kw_avx2_e8p_gemv(const struct caldera_kw * w, const float * xp, const float * xs, int64_t r0, int64_t r1,
                              float * y, int acc);
void caldera_kw_avx2_e8p_decode(const struct caldera_kw * w, int64_t r0, int64_t r1, float * dst, int64_t ld);
void caldera_kw_avx2_uni_decode_row(const struct caldera_kw * w, int64_t r, int64_t c0, int64_t c1, float * dst);
void caldera_kw_avx2_fwht(float * x, int64_t n);
void caldera_kw_avx2_axpy(float a, const float * x, float * y, int64_t n);
void caldera_kw_avx2_rht_core(const float * h, int64_t k, int64_t p2, const float * src, float * dst, int trans,
                              float scale);
float caldera_kw_avx2_e8p_q8_row(const struct kw_q8x * q, const uint16_t * c, int64_t nb);
#endif

/** The table of the variant in use (caldera_kernel_isa()). */
const struct kw_variant * caldera_kw_variant(void);

/** The portable RHT core (kern-c.c), also the SIMD variants' fallback for p2 % 8 != 0. */
void caldera_kw_rht_core_c(const float * h, int64_t k, int64_t p2, const float * src, float * dst, int trans, float scale);

#endif // CALDERA_KERNELS_IMPL_H
