// SPDX-License-Identifier: MIT
// kern-avx2.c: the AVX2 + FMA + F16C variant. Compiled without -m flags: every function carries
// its own target attribute, and kernels.c calls it only after checking the CPU (so the build
// stays portable). E8P: one 8-wide register per codeword, the stored pattern loaded from the
// 256 × 8 grid (8 KiB, L1-resident), the sign byte turned into a lane mask in registers
// (variable shift of the broadcast byte), the ±1/4 shift folded in through block sums of x.
#include "kernels-impl.h"

#ifdef CALDERA_KW_X86
#include <immintrin.h>

#define T_AVX2 __attribute__((target("avx2,fma,f16c,popcnt")))


T_AVX2 static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Values of code c in nibble order, without the ±1/4 shift; *p = 1 when the shift is −1/4.
T_AVX2 static inline __m256 e8p_vals(const float * grid, uint32_t c, uint32_t * p) {
    const __m256i shl  = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);  // bit j -> bit 31
    const __m256i sbit = _mm256_set1_epi32((int) 0x80000000u);
    uint32_t s  = c & 0xFFu;
    uint32_t pp = (uint32_t) __builtin_parity(s);
    *p = pp;
    __m256  g = _mm256_loadu_ps(grid + (c >> 8) * 8);
    __m256i m = _mm256_and_si256(_mm256_sllv_epi32(_mm256_set1_epi32((int) (s ^ pp)), shl), sbit);
    return _mm256_xor_ps(g, _mm256_castsi256_ps(m));
}

// <codes of one row, xp> for nb blocks of E8P12 codes (shift included).
T_AVX2 static inline float e8p_row_dot(const float * grid, const uint16_t * c, const float * xp, const float * xs,
                                       float xtot, int64_t nb) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    float  sp0 = 0.0f, sp1 = 0.0f;  // sum of xs over blocks with the −1/4 shift
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        uint32_t p0, p1;
        __m256 v0 = e8p_vals(grid, c[b], &p0);
        __m256 v1 = e8p_vals(grid, c[b + 1], &p1);
        a0 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(xp + 8 * b), a0);
        a1 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(xp + 8 * b + 8), a1);
        sp0 += p0 ? xs[b] : 0.0f;
        sp1 += p1 ? xs[b + 1] : 0.0f;
    }
    if (b < nb) {
        uint32_t p0;
        __m256 v0 = e8p_vals(grid, c[b], &p0);
        a0 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(xp + 8 * b), a0);
        sp0 += p0 ? xs[b] : 0.0f;
    }
    // sum_b (±1/4) xs_b = 1/4 (xtot − 2 sum_{p=1} xs_b)
    return hsum8(_mm256_add_ps(a0, a1)) + 0.25f * (xtot - 2.0f * (sp0 + sp1));
}

T_AVX2 static void avx2_e8p_gemv(const struct caldera_kw * w, const float * xp, const float * xs, int64_t r0,
                                 int64_t r1, float * y, int acc) {
    const int64_t nb   = w->cols / 8;
    const float   irho = w->bits > 2 ? 1.0f / w->e8_rho : 0.0f;
    float xtot = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        xtot += xs[b];
    }
    for (int64_t r = r0; r < r1; r++) {
        float d = e8p_row_dot(w->e8_grid, w->codes + r * nb, xp, xs, xtot, nb);
        if (w->bits == 4) {
            d += irho * e8p_row_dot(w->e8_grid, (const uint16_t *) w->codes2 + r * nb, xp, xs, xtot, nb);
        } else if (w->bits == 3) {
            const uint8_t * c2 = (const uint8_t *) w->codes2 + r * nb;
            __m256 a = _mm256_setzero_ps();
            for (int64_t b = 0; b < nb; b++) {
                a = _mm256_fmadd_ps(_mm256_loadu_ps(w->e8_rvq1 + c2[b] * 8), _mm256_loadu_ps(xp + 8 * b), a);
            }
            d += irho * hsum8(a);
        }
        float v = kw_e8p_scale(w, r) * d;
        y[r - r0] = acc ? y[r - r0] + v : v;
    }
}

T_AVX2 void caldera_kw_avx2_e8p_decode(const struct caldera_kw * w, int64_t r0, int64_t r1, float * dst, int64_t ld) {
    const int64_t nb   = w->cols / 8;
    const __m256i idx  = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // out[i] = v[SH(i)]
    const __m256  irho = _mm256_set1_ps(w->bits > 2 ? 1.0f / w->e8_rho : 0.0f);
    for (int64_t r = r0; r < r1; r++) {
        const __m256 s = _mm256_set1_ps(kw_e8p_scale(w, r));
        float *      o = dst + (r - r0) * ld;
        for (int64_t b = 0; b < nb; b++) {
            const int64_t k = r * nb + b;
            uint32_t p;
            __m256 v = e8p_vals(w->e8_grid, w->codes[k], &p);
            v = _mm256_add_ps(v, _mm256_set1_ps(p ? -0.25f : 0.25f));
            if (w->bits == 4) {
                __m256 v2 = e8p_vals(w->e8_grid, ((const uint16_t *) w->codes2)[k], &p);
                v2 = _mm256_add_ps(v2, _mm256_set1_ps(p ? -0.25f : 0.25f));
                v  = _mm256_fmadd_ps(v2, irho, v);
            } else if (w->bits == 3) {
                v = _mm256_fmadd_ps(_mm256_loadu_ps(w->e8_rvq1 + ((const uint8_t *) w->codes2)[k] * 8), irho, v);
            }
            _mm256_storeu_ps(o + 8 * b, _mm256_permutevar8x32_ps(_mm256_mul_ps(v, s), idx));
        }
    }
}

// Uniform row decode for 2, 4 and 8 bits when a row starts on a byte, 8 codes at a time with one
// step (and zero) per 8 (not column scales, groups a multiple of 8); else the C decoder.
T_AVX2 void caldera_kw_avx2_uni_decode_row(const struct caldera_kw * w, int64_t r, int64_t c0, int64_t c1,
                                           float * dst) {
    const int64_t n = w->cols;
    const int     bits = w->bits;
    if ((bits != 2 && bits != 4 && bits != 8) || n % 8 != 0 || c0 % 8 != 0 || (c1 - c0) % 8 != 0 || w->gran == CALDERA_KW_GRAN_COLUMN ||
        (w->gran == CALDERA_KW_GRAN_GROUP && w->group_size % 8 != 0)) {
        caldera_kw_uni_decode_row_c(w, r, c0, c1, dst);
        return;
    }
    const float     half = kw_uni_half(w->rule, bits);
    const int64_t   ngr  = w->gran == CALDERA_KW_GRAN_GROUP ? (n + w->group_size - 1) / w->group_size : 0;
    const uint8_t * row  = w->stream + (uint64_t) r * (uint64_t) n * (uint64_t) bits / 8;  // n % 8 == 0
    const __m256i   shv  = bits == 2 ? _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)
                                     : _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    const __m256i   mask = _mm256_set1_epi32((1 << bits) - 1);
    float d = 0.0f, z = 0.0f;
    int64_t gcur = -1;
    for (int64_t c = c0; c < c1; c += 8) {
        int64_t g = w->gran == CALDERA_KW_GRAN_TENSOR ? 0 : w->gran == CALDERA_KW_GRAN_ROW ? r : r * ngr + c / w->group_size;
        if (g != gcur) {
            gcur = g;
            d = kw_uni_param(w, w->scale, g);
            z = w->zero ? kw_uni_param(w, w->zero, g) : 0.0f;
        }
        __m256i k;
        const uint8_t * p = row + c * bits / 8;
        if (bits == 8) {
            k = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) p));
        } else {
            uint32_t u = 0;
            memcpy(&u, p, (size_t) bits);  // 8 codes = `bits` bytes
            k = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int) u), shv), mask);
        }
        // value = z + (k − half) d = k d + (z − half d)
        __m256 v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(k), _mm256_set1_ps(d), _mm256_set1_ps(z - half * d));
        _mm256_storeu_ps(dst + (c - c0), v);
    }
}

T_AVX2 static void avx2_f16_gemv(const struct caldera_kw * w, const float * x, int64_t r0, int64_t r1, float * y,
                                 int acc) {
    const int64_t n = w->cols;
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t * row = (const uint16_t *) w->data + r * w->ld;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        int64_t c = 0;
        for (; c + 16 <= n; c += 16) {
            a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (row + c))), _mm256_loadu_ps(x + c), a0);
            a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (row + c + 8))),
                                 _mm256_loadu_ps(x + c + 8), a1);
        }
        float d = hsum8(_mm256_add_ps(a0, a1));
        for (; c < n; c++) {
            d += kw_f16_to_f32(row[c]) * x[c];
        }
        y[r - r0] = acc ? y[r - r0] + d : d;
    }
}

T_AVX2 static void avx2_f16_decode(const struct caldera_kw * w, int64_t r0, int64_t r1, float * dst, int64_t ld) {
    const int64_t n = w->cols;
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t * row = (const uint16_t *) w->data + r * w->ld;
        float *          o   = dst + (r - r0) * ld;
        int64_t c = 0;
        for (; c + 8 <= n; c += 8) {
            _mm256_storeu_ps(o + c, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (row + c))));
        }
        for (; c < n; c++) {
            o[c] = kw_f16_to_f32(row[c]);
        }
    }
}

T_AVX2 static float avx2_dot(const float * a, const float * b, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
    }
    float d = hsum8(_mm256_add_ps(a0, a1));
    for (; i < n; i++) {
        d += a[i] * b[i];
    }
    return d;
}

// The first three butterfly stages (h = 1, 2, 4) inside one register, then h >= 8 across registers.
T_AVX2 void caldera_kw_avx2_fwht(float * x, int64_t n) {
    if (n < 8) {
        caldera_kw_variant_c.fwht(x, n);
        return;
    }
    for (int64_t i = 0; i < n; i += 8) {
        __m256 a = _mm256_loadu_ps(x + i), b;
        b = _mm256_permute_ps(a, 0xB1);                                   // [1,0,3,2]
        a = _mm256_blend_ps(_mm256_add_ps(a, b), _mm256_sub_ps(b, a), 0xAA);
        b = _mm256_permute_ps(a, 0x4E);                                   // [2,3,0,1]
        a = _mm256_blend_ps(_mm256_add_ps(a, b), _mm256_sub_ps(b, a), 0xCC);
        b = _mm256_permute2f128_ps(a, a, 1);                              // halves swapped
        a = _mm256_blend_ps(_mm256_add_ps(a, b), _mm256_sub_ps(b, a), 0xF0);
        _mm256_storeu_ps(x + i, a);
    }
    for (int64_t h = 8; h < n; h <<= 1) {
        for (int64_t i = 0; i < n; i += h << 1) {
            for (int64_t j = i; j < i + h; j += 8) {
                __m256 u = _mm256_loadu_ps(x + j), v = _mm256_loadu_ps(x + j + h);
                _mm256_storeu_ps(x + j, _mm256_add_ps(u, v));
                _mm256_storeu_ps(x + j + h, _mm256_sub_ps(u, v));
            }
        }
    }
}

const struct kw_variant caldera_kw_variant_avx2 = {
    .e8p_gemv       = avx2_e8p_gemv,
    .e8p_decode     = caldera_kw_avx2_e8p_decode,
    .uni_decode_row = caldera_kw_avx2_uni_decode_row,
    .f16_gemv       = avx2_f16_gemv,
    .f16_decode     = avx2_f16_decode,
    .dot            = avx2_dot,
    .fwht           = caldera_kw_avx2_fwht,
};

#endif // CALDERA_KW_X86
