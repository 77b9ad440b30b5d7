// SPDX-License-Identifier: MIT
// kernel-math.h: the per-element math of the compressed-layer kernels (E8P code decode in the
// stored nibble order, uniform code extraction and levels, f16 to f32) as static inline
// functions with no dependency but <stdint.h>, so that host variants and a CUDA build
// (issue 10: define KW_FN as `static inline __host__ __device__` first) compile the same math.
#ifndef CALDERA_KERNEL_MATH_H
#define CALDERA_KERNEL_MATH_H

#include <stdint.h>
#include <string.h>

#ifndef KW_FN
#define KW_FN static inline
#endif
#ifndef KW_PARITY
#define KW_PARITY(x) __builtin_parity(x)
#endif

// E8P (quantizers/e8/README.md, algorithms.md 3.1). Output coordinate i of a block is stored in
// nibble / sign bit j = KW_E8P_SH(i); conversely nibble j holds output coordinate KW_E8P_PERM(j)
// (the packing permutation [0,2,4,6,1,3,5,7]). The kernels work in nibble order: a block of x is
// permuted once (xp[j] = x[PERM(j)]) and <decode(c), x> = <value in nibble order, xp>.
#define KW_E8P_SH(i)   ((((i) & 1) << 2) | ((i) >> 1))
#define KW_E8P_PERM(j) ((j) < 4 ? 2 * (j) : 2 * ((j) - 4) + 1)

/**
 * Sign byte of an E8P code after the parity fix (bit j set: nibble j negated), and the shift:
 * *neg_shift = 1 for −1/4, 0 for +1/4.
 */
KW_FN uint32_t kw_e8p_signs(uint16_t code, uint32_t * neg_shift) {
    uint32_t s = code & 0xFFu;
    uint32_t p = (uint32_t) KW_PARITY(s);
    *neg_shift = p;
    return s ^ p;
}

/**
 * Value of nibble j of code c, given the stored-pattern table grid (256 × 8, nibble order,
 * (nibble − 8)/2): ±grid[a][j] ± 1/4.
 */
KW_FN float kw_e8p_value(const float * grid, uint16_t code, int j) {
    uint32_t neg;
    uint32_t s = kw_e8p_signs(code, &neg);
    float    v = grid[(code >> 8) * 8 + j];
    v = (s >> j) & 1u ? -v : v;
    return v + (neg ? -0.25f : 0.25f);
}

// Uniform codes (quantizers/uniform/README.md): code of element e at stream bits
// [e·bits, e·bits + bits), LSB first; bits <= 8 so a code spans at most two bytes.
KW_FN uint32_t kw_uni_code(const uint8_t * stream, uint64_t nbytes, uint64_t e, int bits) {
    uint64_t bit = e * (uint64_t) bits;
    uint64_t o   = bit >> 3;
    uint32_t v   = stream[o];
    if (o + 1 < nbytes) {
        v |= (uint32_t) stream[o + 1] << 8;
    }
    return (v >> (bit & 7)) & ((1u << bits) - 1u);
}

/**
 * The code whose level is 0, in units of the step, of the symmetric rules: 2^(b-1) − 1/2
 * (midrise), 2^(b-1) − 1 (reference); 0 for the asymmetric rule (its zero point is per group).
 */
KW_FN float kw_uni_half(int rule, int bits) {
    float l = (float) (1 << (bits - 1));
    return rule == 0 ? l - 0.5f : rule == 1 ? l - 1.0f : 0.0f;
}

/** Value of code k with step d and offset h (the half above, or the integer zero point): (k − h) d. */
KW_FN float kw_uni_value(uint32_t k, float h, float d) {
    return ((float) k - h) * d;
}

/** IEEE half to single, exact (subnormals, Inf and NaN included). */
KW_FN float kw_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t) (h & 0x8000u) << 16;
    uint32_t exp  = (h >> 10) & 0x1Fu;
    uint32_t man  = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0) {
        float v = (float) man * 0x1.0p-24f;
        return sign ? -v : v;
    }
    bits = exp == 31 ? (sign | 0x7F800000u | (man << 13)) : (sign | ((exp + 112) << 23) | (man << 13));
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

/** Parameter i (a scale or zero) stored as f16 (is_f16) or f32. */
KW_FN float kw_param(int is_f16, const void * p, int64_t i) {
    return is_f16 ? kw_f16_to_f32(((const uint16_t *) p)[i]) : ((const float *) p)[i];
}

#endif // CALDERA_KERNEL_MATH_H
