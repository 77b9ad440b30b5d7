// SPDX-License-Identifier: MIT
// e8p.h: the E8P ("padded E8") codebooks of QuIP#, as plain C usable outside the plugin:
// E8P12 (65536 points of E8 + 1/4, a 16-bit code per 8 weights), its 4-bit residual variant
// (E8P + E8P/3.45) and its 3-bit variant (E8P + "E8 1-bit"/2.04). The tables are built from
// their definition (algorithms.md section 3) by e8p_tables_build(); encode and decode are
// static inline so that a CUDA port can compile the same math.
#ifndef CALDERA_E8P_H
#define CALDERA_E8P_H

#include <math.h>
#include <stdint.h>

#define E8P_DIM        8      // weights per code
#define E8P_NABS       256    // stored abs patterns: 227 of norm^2 <= 10, then 29 of norm^2 12
#define E8P_NABS_D8    227
#define E8P_NRVQ1      256    // points of the "E8 1-bit" residual set
#define E8P_OPT_SCALE_2BIT   1.03   // RMS of the scaled input for E8P12 and the 4-bit variant
#define E8P_OPT_SCALE_3BIT   0.98   // RMS of the scaled input for the 3-bit variant
#define E8P_RESID_SCALE_4BIT 3.45f  // rho of E8P12RVQ4B: value v1 + v2 / rho
#define E8P_RESID_SCALE_3BIT 2.04f  // rho of E8P12RVQ3B

// A CUDA build defines E8P_FN as `static inline __host__ __device__` and E8P_PARITY as
// `(__popc(x) & 1)` before including this header; the tables then live in device memory.
#ifndef E8P_FN
#define E8P_FN static inline
#endif
#ifndef E8P_PARITY
#define E8P_PARITY(x) __builtin_parity(x)
#endif

/** Tables of the E8P codebooks (about 19 KiB), filled by e8p_tables_build. */
struct e8p_tables {
    uint32_t packed[E8P_NABS];            // packed abs form: nibble j = 2 v + 8 of permuted coord j
    float    absv[E8P_DIM][E8P_NABS];     // |a'_i| in output coordinate order (SoA for the search)
    float    norm2[E8P_NABS];             // ||a'||^2
    float    pen_even[E8P_NABS];          // 4 if a' has one negative coordinate, else 0
    float    pen_odd[E8P_NABS];           // 4 - pen_even
    uint8_t  aneg[E8P_NABS];              // 1 if a' has a negative coordinate (always coord 7)
    float    rvq1[E8P_NRVQ1][E8P_DIM];    // the 256 "E8 1-bit" points, order in e8p.c
};

/** The abs pattern @p idx (0..255) before packing, in original coordinate order. */
void e8p_abs_pattern(int idx, float out[E8P_DIM]);
/** Fill all tables from the codebook definitions. */
void e8p_tables_build(struct e8p_tables * t);

// Output coordinate i is stored in nibble / sign bit E8P_SH[i]; the inverse of the packing
// permutation [0,2,4,6,1,3,5,7].
#define E8P_SH(i) ((((i) & 1) << 2) | ((i) >> 1))

/** Decode an E8P12 code to its 8 values (algorithms.md 3.1, "Decode of a code c"). */
E8P_FN void e8p_decode(const struct e8p_tables * t, uint16_t code, float out[E8P_DIM]) {
    uint32_t signs = code & 0xFFu;
    uint32_t a     = t->packed[code >> 8];
    uint32_t p     = (uint32_t) E8P_PARITY(signs);
    signs ^= p;
    float shift = p ? -0.25f : 0.25f;
    for (int i = 0; i < E8P_DIM; i++) {
        int   sh = E8P_SH(i);
        float v  = (float) ((int) ((a >> (4 * sh)) & 0xFu) - 8) * 0.5f;
        out[i] = ((signs >> sh) & 1u ? -v : v) + shift;
    }
}

/**
 * Nearest E8P12 codeword to x (exact: the search of algorithms.md 3.1 over both shifts and all
 * 256 stored patterns, with the even-sign-flip parity fix). Writes the codeword to out and
 * returns its code. Ties go to the lower pattern index and to the +1/4 shift.
 */
E8P_FN uint16_t e8p_encode(const struct e8p_tables * t, const float x[E8P_DIM],
                                  float out[E8P_DIM]) {
    float best_cost = 0.0f;
    int   best_j = 0, best_p = 0;
    float ay[E8P_DIM];
    for (int p = 0; p < 2; p++) {
        float    shift = p ? -0.25f : 0.25f;
        float    yy = 0.0f;
        uint32_t ypar = 0;
        for (int i = 0; i < E8P_DIM; i++) {
            float y = x[i] - shift;
            yy   += y * y;
            ypar ^= y < 0.0f;
            ay[i] = fabsf(y);
        }
        // cost_j = ||y||^2 - (2 <|y|, |a'_j|> - ||a'_j||^2 - [odd disagreement] 4 min_i |y_i||a'_ji|)
        const float * pen = ypar ? t->pen_odd : t->pen_even;
        // Scores of all 256 patterns, their maximum (8 lanes), then the first index reaching
        // it: three simple loops that compilers vectorise.
        float sc[E8P_NABS];
        for (int j = 0; j < E8P_NABS; j++) {
            float m0 = ay[0] * t->absv[0][j], m1 = ay[1] * t->absv[1][j];
            float m2 = ay[2] * t->absv[2][j], m3 = ay[3] * t->absv[3][j];
            float m4 = ay[4] * t->absv[4][j], m5 = ay[5] * t->absv[5][j];
            float m6 = ay[6] * t->absv[6][j], m7 = ay[7] * t->absv[7][j];
            float d  = ((m0 + m1) + (m2 + m3)) + ((m4 + m5) + (m6 + m7));
            float a  = m0 < m1 ? m0 : m1, b = m2 < m3 ? m2 : m3;
            float c  = m4 < m5 ? m4 : m5, e = m6 < m7 ? m6 : m7;
            a = a < b ? a : b;
            c = c < e ? c : e;
            float mn = a < c ? a : c;
            sc[j] = 2.0f * d - t->norm2[j] - pen[j] * mn;
        }
        float lane[8];
        for (int l = 0; l < 8; l++) {
            lane[l] = sc[l];
        }
        for (int j0 = 8; j0 < E8P_NABS; j0 += 8) {
            for (int l = 0; l < 8; l++) {
                lane[l] = sc[j0 + l] > lane[l] ? sc[j0 + l] : lane[l];
            }
        }
        float s_best = lane[0];
        for (int l = 1; l < 8; l++) {
            s_best = lane[l] > s_best ? lane[l] : s_best;
        }
        int j_best = 0;
        while (sc[j_best] != s_best) {
            j_best++;
        }
        float cost = yy - s_best;
        if (p == 0 || cost < best_cost) {
            best_cost = cost;
            best_j    = j_best;
            best_p    = p;
        }
    }

    // Rebuild the codeword's signs: follow the signs of y, and if the number of sign flips
    // relative to a' would be odd, flip back the coordinate where that costs least.
    float    shift = best_p ? -0.25f : 0.25f;
    uint32_t neg = 0, ypar = 0;
    int      imin = 0;
    float    mmin = INFINITY;
    for (int i = 0; i < E8P_DIM; i++) {
        float y  = x[i] - shift;
        uint32_t n = y < 0.0f;
        neg  |= n << i;
        ypar ^= n;
        float m = fabsf(y) * t->absv[i][best_j];
        if (m < mmin) {
            mmin = m;
            imin = i;
        }
    }
    if (ypar ^ t->aneg[best_j]) {
        neg ^= 1u << imin;
    }
    // flips F relative to a' (a' is negative only at coordinate 7), moved to sign-bit order
    uint32_t flips = neg ^ ((uint32_t) t->aneg[best_j] << 7);
    uint32_t bits  = 0;
    for (int i = 0; i < E8P_DIM; i++) {
        bits |= ((flips >> i) & 1u) << E8P_SH(i);
    }
    bits ^= (uint32_t) best_p;  // the stored sign byte's parity carries the shift
    uint16_t code = (uint16_t) (((uint32_t) best_j << 8) | bits);
    e8p_decode(t, code, out);
    return code;
}

/** Decode an "E8 1-bit" residual code. */
E8P_FN void e8p_rvq1_decode(const struct e8p_tables * t, uint8_t code, float out[E8P_DIM]) {
    for (int i = 0; i < E8P_DIM; i++) {
        out[i] = t->rvq1[code][i];
    }
}

// Index of the pair (i, j), i < j, in lexicographic order (0..27).
E8P_FN int e8p_pair_index(int i, int j) {
    return i * (15 - i) / 2 + (j - i - 1);
}

/**
 * Nearest point of the 256-point "E8 1-bit" set to r, by its structure (the best point of each
 * of the four shells in closed form); returns the code and writes the point to out.
 * Order of codes: 0 = zero; 1 + 4 pair(i,j) + 2 [r_i < 0] + [r_j < 0] = +-e_i +-e_j;
 * 113 + (m >> 1) = (+-1/2)^8 with negative mask m (even popcount); 241 + 2 i + [neg] = +-2 e_i
 * (i < 7) and 255 = +2 e_7.
 */
E8P_FN uint8_t e8p_rvq1_encode(const struct e8p_tables * t, const float r[E8P_DIM],
                                      float out[E8P_DIM]) {
    // score = 2 <r, g> - ||g||^2; the best point maximises it. Zero scores 0.
    float    best = 0.0f;
    int      code = 0;
    float    a[E8P_DIM];
    uint32_t neg = 0, par = 0;
    float    sum = 0.0f, amin = INFINITY;
    int      i1 = 0, i2 = 1, imin = 0;
    for (int i = 0; i < E8P_DIM; i++) {
        a[i] = fabsf(r[i]);
        uint32_t n = r[i] < 0.0f;
        neg |= n << i;
        par ^= n;
        sum += a[i];
        if (a[i] < amin) {
            amin = a[i];
            imin = i;
        }
    }
    if (a[i2] > a[i1]) {
        i1 = 1;
        i2 = 0;
    }
    for (int i = 2; i < E8P_DIM; i++) {
        if (a[i] > a[i1]) {
            i2 = i1;
            i1 = i;
        } else if (a[i] > a[i2]) {
            i2 = i;
        }
    }
    // +-e_i +-e_j: the two largest |r|
    float s = 2.0f * (a[i1] + a[i2]) - 2.0f;
    if (s > best) {
        int lo = i1 < i2 ? i1 : i2, hi = i1 < i2 ? i2 : i1;
        best = s;
        code = 1 + 4 * e8p_pair_index(lo, hi) + 2 * (int) ((neg >> lo) & 1u) + (int) ((neg >> hi) & 1u);
    }
    // (+-1/2)^8 with an even number of minus signs
    s = sum - 2.0f - (par ? 2.0f * amin : 0.0f);
    if (s > best) {
        uint32_t m = par ? neg ^ (1u << imin) : neg;
        best = s;
        code = 113 + (int) (m >> 1);
    }
    // +-2 e_i, except -2 e_7
    for (int i = 0; i < E8P_DIM; i++) {
        int n = (int) ((neg >> i) & 1u);
        if (i == 7 && n) {
            continue;
        }
        s = 4.0f * a[i] - 4.0f;
        if (s > best) {
            best = s;
            code = 241 + 2 * i + n;
        }
    }
    e8p_rvq1_decode(t, (uint8_t) code, out);
    return (uint8_t) code;
}

/**
 * Quantize one 8-vector x (already divided by the scale) with the @p bits variant:
 * 2 = E8P12; 4 = E8P12 + E8P12 residual scaled by 3.45; 3 = E8P12 + "E8 1-bit" residual
 * scaled by 2.04. *c2 is 0 for 2 bits, a 16-bit code for 4 bits, an 8-bit code for 3 bits.
 */
E8P_FN void e8p_encode_bits(const struct e8p_tables * t, int bits, const float x[E8P_DIM],
                                   uint16_t * c1, uint16_t * c2) {
    float v[E8P_DIM], r[E8P_DIM], v2[E8P_DIM];
    *c1 = e8p_encode(t, x, v);
    *c2 = 0;
    if (bits == 4) {
        for (int i = 0; i < E8P_DIM; i++) {
            r[i] = (x[i] - v[i]) * E8P_RESID_SCALE_4BIT;
        }
        *c2 = e8p_encode(t, r, v2);
    } else if (bits == 3) {
        for (int i = 0; i < E8P_DIM; i++) {
            r[i] = (x[i] - v[i]) * E8P_RESID_SCALE_3BIT;
        }
        *c2 = e8p_rvq1_encode(t, r, v2);
    }
}

/** The value of codes (c1, c2) of the @p bits variant: v1 + v2 / rho (the one decode rule). */
E8P_FN void e8p_decode_bits(const struct e8p_tables * t, int bits, uint16_t c1, uint16_t c2,
                                   float out[E8P_DIM]) {
    float v2[E8P_DIM];
    e8p_decode(t, c1, out);
    if (bits == 4) {
        e8p_decode(t, c2, v2);
        for (int i = 0; i < E8P_DIM; i++) {
            out[i] += v2[i] / E8P_RESID_SCALE_4BIT;
        }
    } else if (bits == 3) {
        e8p_rvq1_decode(t, (uint8_t) c2, v2);
        for (int i = 0; i < E8P_DIM; i++) {
            out[i] += v2[i] / E8P_RESID_SCALE_3BIT;
        }
    }
}

#endif // CALDERA_E8P_H
