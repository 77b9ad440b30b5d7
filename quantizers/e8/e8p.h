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
    uint16_t key[E8P_NABS_D8];            // base-4 key of patterns 0..226 (ascending)
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
 * The code of the codeword with shift index best_p (0: +1/4, 1: -1/4) and stored pattern best_j
 * nearest to x: the signs follow those of y = x - shift, and if the number of sign flips
 * relative to a' would be odd, the coordinate where flipping back costs least is flipped back.
 * Writes the codeword to out.
 */
E8P_FN uint16_t e8p_code_of(const struct e8p_tables * t, const float x[E8P_DIM], int best_p, int best_j,
                            float out[E8P_DIM]) {
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

/**
 * Nearest E8P12 codeword to x by the simple exact search of algorithms.md 3.1: both shifts and
 * all 256 stored patterns, with the even-sign-flip parity fix (about 13k flops). Writes the
 * codeword to out and returns its code. Ties go to the +1/4 shift, then the lower pattern index.
 * Kept as the reference for e8p_encode (same results up to float near-ties).
 */
E8P_FN uint16_t e8p_encode_simple(const struct e8p_tables * t, const float x[E8P_DIM],
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
    return e8p_code_of(t, x, best_p, best_j, out);
}

/**
 * Nearest E8P12 codeword to x, exact, fast. The 227 patterns of norm^2 <= 10 are all
 * permutations of 7 types (counts of 3/2 and 5/2 among the coordinates, the rest 1/2), and
 * the set is closed under permutations. Within a type both the sign-parity penalty flag (the
 * pattern sum's parity) and the best permutation are fixed: matching the sorted |y| with the
 * sorted type maximises <|y|, a> (rearrangement inequality) and also gives the smallest possible
 * min_i |y_i| a_i = |y|_min / 2. So per shift: a sorting network, 7 sorted matches, and the 29
 * norm-12 patterns scored as in e8p_encode_simple unless a bound rules them all out. Same
 * codewords as e8p_encode_simple (tested against it and against brute force) up to float
 * near-ties, which are broken deterministically; 3 to 6 times faster (see README).
 */
E8P_FN uint16_t e8p_encode(const struct e8p_tables * t, const float x[E8P_DIM],
                           float out[E8P_DIM]) {
    // (count of 3/2, count of 5/2) of the 7 types, in any order
    const int n3s[7] = { 0, 1, 2, 3, 4, 0, 1 };
    const int n5s[7] = { 0, 0, 0, 0, 0, 1, 1 };
    float best_cost = INFINITY;
    int   best_p = 0, best_j = 0, best_type = -1;
    for (int p = 0; p < 2; p++) {
        float    shift = p ? -0.25f : 0.25f;
        float    ay[E8P_DIM], yy = 0.0f;
        uint32_t ypar = 0;
        for (int i = 0; i < E8P_DIM; i++) {
            float y = x[i] - shift;
            yy   += y * y;
            ypar ^= y < 0.0f;
            ay[i] = fabsf(y);
        }
        // |y| in decreasing order: a branch-free 19-comparator sorting network, written out
        // with constant indices so that the values stay in registers
        float sv[E8P_DIM];
        for (int i = 0; i < E8P_DIM; i++) {
            sv[i] = ay[i];
        }
#define E8P_CX(a, b)                                   \
        do {                                           \
            float va_ = sv[a], vb_ = sv[b];            \
            sv[a] = va_ > vb_ ? va_ : vb_;  /* maxss */ \
            sv[b] = va_ < vb_ ? va_ : vb_;  /* minss */ \
        } while (0)
        E8P_CX(0, 2); E8P_CX(1, 3); E8P_CX(4, 6); E8P_CX(5, 7);
        E8P_CX(0, 4); E8P_CX(1, 5); E8P_CX(2, 6); E8P_CX(3, 7);
        E8P_CX(0, 1); E8P_CX(2, 3); E8P_CX(4, 5); E8P_CX(6, 7);
        E8P_CX(2, 4); E8P_CX(3, 5); E8P_CX(1, 4); E8P_CX(3, 6);
        E8P_CX(1, 2); E8P_CX(3, 4); E8P_CX(5, 6);
#undef E8P_CX
        float pre[E8P_DIM + 1];  // pre[k] = sum of the k largest |y|
        pre[0] = 0.0f;
        for (int k = 0; k < E8P_DIM; k++) {
            pre[k + 1] = pre[k] + sv[k];
        }
        const float ymin = sv[E8P_DIM - 1];
        for (int ty = 0; ty < 7; ty++) {
            int   n5 = n5s[ty], n35 = n5s[ty] + n3s[ty];
            float dot = 2.5f * pre[n5] + 1.5f * (pre[n35] - pre[n5]) + 0.5f * (pre[E8P_DIM] - pre[n35]);
            float nn  = (float) (2 + 2 * n3s[ty] + 6 * n5);
            float pen = ((uint32_t) (n3s[ty] & 1) ^ ypar) ? 4.0f : 0.0f;  // sum = 4 + n3 + 2 n5
            float cost = yy - (2.0f * dot - nn - pen * 0.5f * ymin);
            if (cost < best_cost) {
                best_cost = cost;
                best_p = p;
                best_type = ty;
            }
        }
        // The norm-12 patterns (five 3/2, three 1/2) cannot beat the sorted-match bound
        // ||y||^2 - (2 (3/2 pre[5] + 1/2 (pre[8] - pre[5])) - 12): skip them when that bound
        // is above the best cost (with a margin for float rounding), which is most of the time.
        float lb12 = yy - (2.0f * (1.5f * pre[5] + 0.5f * (pre[E8P_DIM] - pre[5])) - 12.0f);
        if (lb12 > best_cost + 1e-5f * (1.0f + yy)) {
            continue;
        }
        const float * pen = ypar ? t->pen_odd : t->pen_even;
        float sc[E8P_NABS - E8P_NABS_D8];  // costs of the 29 norm-12 patterns (vectorised)
        for (int j = E8P_NABS_D8; j < E8P_NABS; j++) {
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
            sc[j - E8P_NABS_D8] = yy - (2.0f * d - t->norm2[j] - pen[j] * mn);
        }
        for (int j = 0; j < E8P_NABS - E8P_NABS_D8; j++) {
            if (sc[j] < best_cost) {
                best_cost = sc[j];
                best_p = p;
                best_type = -1;
                best_j = E8P_NABS_D8 + j;
            }
        }
    }
    if (best_type >= 0) {
        // the sorted match as a pattern: coordinate i gets the value of rank i of |y| (ties: lower
        // coordinate first), then its base-4 key (coordinate 0 most significant digit, digit =
        // value - 1/2) is found by binary search among the 227 ascending keys
        const float shift = best_p ? -0.25f : 0.25f;
        float ay[E8P_DIM];
        int   digit[E8P_DIM];
        int   n5 = n5s[best_type], n35 = n5s[best_type] + n3s[best_type];
        for (int i = 0; i < E8P_DIM; i++) {
            ay[i] = fabsf(x[i] - shift);
        }
        for (int i = 0; i < E8P_DIM; i++) {
            int rank = 0;
            for (int k = 0; k < E8P_DIM; k++) {
                rank += (ay[k] > ay[i]) | ((ay[k] == ay[i]) & (k < i));
            }
            digit[i] = rank < n5 ? 2 : rank < n35 ? 1 : 0;
        }
        uint32_t key = 0;
        for (int i = 0; i < E8P_DIM; i++) {
            key = key << 2 | (uint32_t) digit[i];
        }
        int lo = 0, hi = E8P_NABS_D8 - 1;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (t->key[mid] < key) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        best_j = lo;
    }
    return e8p_code_of(t, x, best_p, best_j, out);
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

/**
 * Round 8 weights x of a row with scale s (0: a zero row) with the @p bits variant: the codes
 * (*c1, *c2 as e8p_encode_bits) and the value s * decode (the one decode rule) in y. The e8
 * plugin's rounding and the CUDA kernel both call this.
 */
E8P_FN void e8p_round_scaled(const struct e8p_tables * t, int bits, float s, const float x[E8P_DIM],
                             float y[E8P_DIM], uint16_t * c1, uint16_t * c2) {
    const float inv = s > 0.0f ? 1.0f / s : 0.0f;  // a zero row: every x is 0
    float xs[E8P_DIM], v[E8P_DIM];
    for (int k = 0; k < E8P_DIM; k++) {
        xs[k] = x[k] * inv;
    }
    e8p_encode_bits(t, bits, xs, c1, c2);
    e8p_decode_bits(t, bits, *c1, *c2, v);
    for (int k = 0; k < E8P_DIM; k++) {
        y[k] = s * v[k];
    }
}

#endif // CALDERA_E8P_H
