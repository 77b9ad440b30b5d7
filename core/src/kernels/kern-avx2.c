// SPDX-License-Identifier: MIT
// kern-avx2.c: the AVX2 + FMA + F16C variant. Compiled without -m flags: every function carries
// its own target attribute, and kernels.c calls it only after checking the CPU (so the build
// stays portable). E8P: one 8-wide register per codeword, the stored pattern loaded from the
// 256 × 8 grid (8 KiB, L1-resident), the sign byte turned into a lane mask in registers
// (variable shift of the broadcast byte), the ±1/4 shift folded in through block sums of x.
#include "kernels-impl.h"

#ifdef CALDERA_KW_X86
#include <immintrin.h>
#include <pthread.h>

#define T_AVX2 __attribute__((target("avx2,fma,f16c,popcnt")))


T_AVX2 static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Per raw sign byte s (before the parity fix): the 8 lane masks of s ^ parity(s) (sign bit set
// where a value is negated) and the shift ±1/4 of the parity: two loads per codeword instead of a
// branch (parity is random: mispredictions cost more than all the rest) or shuffles.
static uint32_t        kw_sm[256][8] __attribute__((aligned(32)));
static float           kw_sh[256];
static pthread_once_t  kw_tab_once = PTHREAD_ONCE_INIT;

static void kw_tab_build(void) {
    for (uint32_t s = 0; s < 256; s++) {
        uint32_t neg;
        uint32_t f = kw_e8p_signs((uint16_t) s, &neg);
        for (int j = 0; j < 8; j++) {
            kw_sm[s][j] = ((f >> j) & 1u) << 31;
        }
        kw_sh[s] = neg ? -0.25f : 0.25f;
    }
}

// The 8 values of code c in nibble order, shift included: ±grid[a] ± 1/4.
T_AVX2 static inline __m256 e8p_vals(const float * grid, uint32_t c) {
    const uint32_t s = c & 0xFFu;
    __m256 g = _mm256_loadu_ps(grid + (c >> 8) * 8);
    __m256 v = _mm256_xor_ps(g, _mm256_load_ps((const float *) kw_sm[s]));
    return _mm256_add_ps(v, _mm256_broadcast_ss(&kw_sh[s]));
}

// <codes of one row, xp> for nb blocks of E8P12 codes; four independent accumulators.
T_AVX2 static inline float e8p_row_dot(const float * grid, const uint16_t * c, const float * xp, int64_t nb) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        a0 = _mm256_fmadd_ps(e8p_vals(grid, c[b]), _mm256_loadu_ps(xp + 8 * b), a0);
        a1 = _mm256_fmadd_ps(e8p_vals(grid, c[b + 1]), _mm256_loadu_ps(xp + 8 * b + 8), a1);
        a2 = _mm256_fmadd_ps(e8p_vals(grid, c[b + 2]), _mm256_loadu_ps(xp + 8 * b + 16), a2);
        a3 = _mm256_fmadd_ps(e8p_vals(grid, c[b + 3]), _mm256_loadu_ps(xp + 8 * b + 24), a3);
    }
    for (; b < nb; b++) {
        a0 = _mm256_fmadd_ps(e8p_vals(grid, c[b]), _mm256_loadu_ps(xp + 8 * b), a0);
    }
    return hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

T_AVX2 void caldera_kw_avx2_e8p_gemv(const struct caldera_kw * w, const float * xp, const float * xs, int64_t r0,
                                 int64_t r1, float * y, int acc) {
    const int64_t nb   = w->cols / 8;
    const float   irho = w->bits > 2 ? 1.0f / w->e8_rho : 0.0f;
    (void) xs;   // the shift is added per codeword here
    pthread_once(&kw_tab_once, kw_tab_build);
    for (int64_t r = r0; r < r1; r++) {
        float d = e8p_row_dot(w->e8_grid, w->codes + r * nb, xp, nb);
        if (w->bits == 4) {
            d += irho * e8p_row_dot(w->e8_grid, (const uint16_t *) w->codes2 + r * nb, xp, nb);
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
    pthread_once(&kw_tab_once, kw_tab_build);
    for (int64_t r = r0; r < r1; r++) {
        const __m256 s = _mm256_set1_ps(kw_e8p_scale(w, r));
        float *      o = dst + (r - r0) * ld;
        for (int64_t b = 0; b < nb; b++) {
            const int64_t k = r * nb + b;
            __m256 v = e8p_vals(w->e8_grid, w->codes[k]);
            if (w->bits == 4) {
                v = _mm256_fmadd_ps(e8p_vals(w->e8_grid, ((const uint16_t *) w->codes2)[k]), irho, v);
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
    if ((bits != 2 && bits != 4 && bits != 8) || n % 8 != 0 || c0 % 8 != 0 || (c1 - c0) % 8 != 0 ||
        w->gran == CALDERA_KW_GRAN_COLUMN || (w->gran == CALDERA_KW_GRAN_GROUP && w->group_size % 8 != 0)) {
        caldera_kw_uni_decode_row_c(w, r, c0, c1, dst);
        return;
    }
    const float     half = kw_uni_half(w->rule, bits);
    const int64_t   ngr  = w->gran == CALDERA_KW_GRAN_GROUP ? (n + w->group_size - 1) / w->group_size : 0;
    const uint8_t * row  = w->stream + (uint64_t) r * (uint64_t) n * (uint64_t) bits / 8;  // n % 8 == 0
    const __m256i   shv  = bits == 2 ? _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)
                                     : _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    const __m256i   mask = _mm256_set1_epi32((1 << bits) - 1);
    for (int64_t c = c0; c < c1;) {
        // one scale group (or the whole row) at a time: its step and zero, then 8 codes per step
        int64_t g, cend;
        switch (w->gran) {
        case CALDERA_KW_GRAN_TENSOR: g = 0; cend = c1; break;
        case CALDERA_KW_GRAN_ROW:    g = r; cend = c1; break;
        default:
            g    = r * ngr + c / w->group_size;
            cend = (c / w->group_size + 1) * w->group_size;
            cend = cend < c1 ? cend : c1;
            break;
        }
        const __m256 vd = _mm256_set1_ps(kw_uni_param(w, w->scale, g));
        const __m256 vh = _mm256_set1_ps(w->zero ? (float) w->zero[g] : half);   // value = (k − h) d
        for (; c < cend; c += 8) {
            const uint8_t * p = row + c * bits / 8;
            __m256i k;
            if (bits == 8) {
                k = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) p));
            } else {
                uint32_t u = 0;
                if (bits == 4) {   // 8 codes = `bits` bytes (constant sizes: no memcpy call)
                    memcpy(&u, p, 4);
                } else {
                    memcpy(&u, p, 2);
                }
                k = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int) u), shv), mask);
            }
            _mm256_storeu_ps(dst + (c - c0), _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(k), vh), vd));
        }
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

// Σ_k d_k <tab[codes], xq_k> − corr over one row: 4 codewords (one block of 32 columns) per
// step, u8 × s8 pairs by vpmaddubsw (|pair| <= 2·34·127, no saturation), then vpmaddwd to 8
// int32 lanes of 4 columns each, converted and scaled by the block's d.
T_AVX2 float caldera_kw_avx2_e8p_q8_row(const struct kw_q8x * q, const uint16_t * c, int64_t nb) {
    const __m256i ones = _mm256_set1_epi16(1);
    const uint64_t * tab = q->tab;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        __m256i w0 = _mm256_set_epi64x((long long) tab[c[b + 3]], (long long) tab[c[b + 2]], (long long) tab[c[b + 1]],
                                       (long long) tab[c[b]]);
        __m256i w1 = _mm256_set_epi64x((long long) tab[c[b + 7]], (long long) tab[c[b + 6]], (long long) tab[c[b + 5]],
                                       (long long) tab[c[b + 4]]);
        __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(w0, _mm256_loadu_si256((const __m256i *) (q->xq + 8 * b))), ones);
        __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(w1, _mm256_loadu_si256((const __m256i *) (q->xq + 8 * b + 32))),
                                       ones);
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_loadu_ps(q->dl + 2 * b), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_loadu_ps(q->dl + 2 * b + 8), a1);
    }
    for (; b < nb; b += 4) {   // nb % 4 == 0 (cols % 32 == 0)
        __m256i w0 = _mm256_set_epi64x((long long) tab[c[b + 3]], (long long) tab[c[b + 2]], (long long) tab[c[b + 1]],
                                       (long long) tab[c[b]]);
        __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(w0, _mm256_loadu_si256((const __m256i *) (q->xq + 8 * b))), ones);
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_loadu_ps(q->dl + 2 * b), a0);
    }
    return hsum8(_mm256_add_ps(a0, a1)) - q->corr;
}

// The RHT core 8-wide with FMA: for each output row a, 32 columns at a time in four registers
// accumulated over the k source rows (H entries are ±1 scaled, but a multiply keeps it general).
T_AVX2 void caldera_kw_avx2_rht_core(const float * h, int64_t k, int64_t p2, const float * src, float * dst, int trans,
                                     float scale) {
    if (p2 % 8 != 0) {
        caldera_kw_rht_core_c(h, k, p2, src, dst, trans, scale);
        return;
    }
    for (int64_t a = 0; a < k; a++) {
        float * d = dst + a * p2;
        int64_t l = 0;
        for (; l + 32 <= p2; l += 32) {
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
            for (int64_t b = 0; b < k; b++) {
                const __m256  hv = _mm256_set1_ps((trans ? h[b * k + a] : h[a * k + b]) * scale);
                const float * s  = src + b * p2 + l;
                a0 = _mm256_fmadd_ps(hv, _mm256_loadu_ps(s), a0);
                a1 = _mm256_fmadd_ps(hv, _mm256_loadu_ps(s + 8), a1);
                a2 = _mm256_fmadd_ps(hv, _mm256_loadu_ps(s + 16), a2);
                a3 = _mm256_fmadd_ps(hv, _mm256_loadu_ps(s + 24), a3);
            }
            _mm256_storeu_ps(d + l, a0);
            _mm256_storeu_ps(d + l + 8, a1);
            _mm256_storeu_ps(d + l + 16, a2);
            _mm256_storeu_ps(d + l + 24, a3);
        }
        for (; l < p2; l += 8) {
            __m256 a0 = _mm256_setzero_ps();
            for (int64_t b = 0; b < k; b++) {
                a0 = _mm256_fmadd_ps(_mm256_set1_ps((trans ? h[b * k + a] : h[a * k + b]) * scale),
                                     _mm256_loadu_ps(src + b * p2 + l), a0);
            }
            _mm256_storeu_ps(d + l, a0);
        }
    }
}

T_AVX2 void caldera_kw_avx2_axpy(float a, const float * x, float * y, int64_t n) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) {
        y[i] += a * x[i];
    }
}

const struct kw_variant caldera_kw_variant_avx2 = {
    .e8p_gemv       = caldera_kw_avx2_e8p_gemv,
    .e8p_decode     = caldera_kw_avx2_e8p_decode,
    .uni_decode_row = caldera_kw_avx2_uni_decode_row,
    .f16_gemv       = avx2_f16_gemv,
    .f16_decode     = avx2_f16_decode,
    .dot            = avx2_dot,
    .fwht           = caldera_kw_avx2_fwht,
    .axpy           = caldera_kw_avx2_axpy,
    .e8p_q8_row     = caldera_kw_avx2_e8p_q8_row,
    .rht_core       = caldera_kw_avx2_rht_core,
};

#endif // CALDERA_KW_X86
