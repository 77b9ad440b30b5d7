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

// y (cols) += Σ_r x_r Ŵ[r, :]: per column of codewords b, the rows' values times x_r s_r (and
// x_r s_r / ρ for the residual codes) summed in one register, then back to natural order and
// added to y[8b .. 8b+7]. For CALDERA's Lᵀ (rank × m): no f32 row is stored and read again.
T_AVX2 void caldera_kw_avx2_e8p_gemv_t(const struct caldera_kw * w, const float * x, float * y, float * xs) {
    const int64_t nb = w->cols / 8, m = w->rows;
    const __m256i idx = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // out[i] = v[SH(i)]
    const float   irho = w->bits > 2 ? 1.0f / w->e8_rho : 0.0f;
    pthread_once(&kw_tab_once, kw_tab_build);
    for (int64_t r = 0; r < m; r++) {
        xs[r]     = x[r] * kw_e8p_scale(w, r);
        xs[m + r] = xs[r] * irho;
    }
    for (int64_t b = 0; b < nb; b++) {
        // four independent sums (an FMA's latency is 4 cycles: one chain would wait on each)
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        const uint16_t * c = w->codes + b;
        int64_t r = 0;
        for (; r + 2 <= m; r += 2) {
            a0 = _mm256_fmadd_ps(e8p_vals(w->e8_grid, c[r * nb]), _mm256_broadcast_ss(xs + r), a0);
            a1 = _mm256_fmadd_ps(e8p_vals(w->e8_grid, c[(r + 1) * nb]), _mm256_broadcast_ss(xs + r + 1), a1);
        }
        for (; r < m; r++) {
            a0 = _mm256_fmadd_ps(e8p_vals(w->e8_grid, c[r * nb]), _mm256_broadcast_ss(xs + r), a0);
        }
        if (w->bits == 4) {
            const uint16_t * c2 = (const uint16_t *) w->codes2 + b;
            for (r = 0; r + 2 <= m; r += 2) {
                a2 = _mm256_fmadd_ps(e8p_vals(w->e8_grid, c2[r * nb]), _mm256_broadcast_ss(xs + m + r), a2);
                a3 = _mm256_fmadd_ps(e8p_vals(w->e8_grid, c2[(r + 1) * nb]), _mm256_broadcast_ss(xs + m + r + 1), a3);
            }
            for (; r < m; r++) {
                a2 = _mm256_fmadd_ps(e8p_vals(w->e8_grid, c2[r * nb]), _mm256_broadcast_ss(xs + m + r), a2);
            }
        } else if (w->bits == 3) {
            const uint8_t * c2 = (const uint8_t *) w->codes2 + b;
            for (r = 0; r < m; r++) {
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w->e8_rvq1 + c2[r * nb] * 8), _mm256_broadcast_ss(xs + m + r), a2);
            }
        }
        a0 = _mm256_add_ps(a0, a1);
        a1 = _mm256_add_ps(a2, a3);
        const __m256 v = _mm256_permutevar8x32_ps(_mm256_add_ps(a0, a1), idx);
        _mm256_storeu_ps(y + 8 * b, _mm256_add_ps(_mm256_loadu_ps(y + 8 * b), v));
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

// The RHT core 8-wide with FMA: for each output row a, 32 columns at a time in four registers
// accumulated over the k source rows (H entries are ±1 scaled, but a multiply keeps it general).
T_AVX2 void caldera_kw_avx2_rht_core(const float * h, int64_t k, int64_t p2, const float * src, float * dst, int trans,
                                     float scale) {
    if (p2 % 8 != 0) {
        caldera_kw_rht_core_c(h, k, p2, src, dst, trans, scale);
        return;
    }
    int64_t ap = 0;
    if (p2 % 16 == 0) {
        // two output rows and 16 columns at a time: four independent FMA chains sharing the loads
        // (p2 = 16 for SmolLM2's 576 = 36 · 16: one chain per 8 columns waited on the FMA latency)
        for (; ap + 2 <= k; ap += 2) {
            for (int64_t l = 0; l < p2; l += 16) {
                __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(),
                       c11 = _mm256_setzero_ps();
                for (int64_t b = 0; b < k; b++) {
                    const __m256  h0 = _mm256_set1_ps((trans ? h[b * k + ap] : h[ap * k + b]) * scale);
                    const __m256  h1 = _mm256_set1_ps((trans ? h[b * k + ap + 1] : h[(ap + 1) * k + b]) * scale);
                    const float * sp = src + b * p2 + l;
                    const __m256  s0 = _mm256_loadu_ps(sp), s1 = _mm256_loadu_ps(sp + 8);
                    c00 = _mm256_fmadd_ps(h0, s0, c00);
                    c01 = _mm256_fmadd_ps(h0, s1, c01);
                    c10 = _mm256_fmadd_ps(h1, s0, c10);
                    c11 = _mm256_fmadd_ps(h1, s1, c11);
                }
                _mm256_storeu_ps(dst + ap * p2 + l, c00);
                _mm256_storeu_ps(dst + ap * p2 + l + 8, c01);
                _mm256_storeu_ps(dst + (ap + 1) * p2 + l, c10);
                _mm256_storeu_ps(dst + (ap + 1) * p2 + l + 8, c11);
            }
        }
    }
    for (int64_t a = ap; a < k; a++) {
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

// 8 signs per byte: the byte broadcast, AND with the lane's bit, compared to make the lane mask,
// then its sign bit XORed into scale · x.
T_AVX2 void caldera_kw_avx2_sign_scale(const uint8_t * sign, const float * x, int64_t n, float scale, float * o, int acc) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256  vs  = _mm256_set1_ps(scale), sb = _mm256_set1_ps(-0.0f);
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) {
        const __m256i b = _mm256_and_si256(_mm256_set1_epi32(sign[c >> 3]), bit);
        const __m256  m = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(b, bit)), sb);
        __m256 v = _mm256_xor_ps(_mm256_mul_ps(_mm256_loadu_ps(x + c), vs), m);
        if (acc) {
            v = _mm256_add_ps(v, _mm256_loadu_ps(o + c));
        }
        _mm256_storeu_ps(o + c, v);
    }
    if (c < n) {
        caldera_kw_sign_scale_c(sign + (c >> 3), x + c, n - c, scale, o + c, acc);
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
    .e8p_gemv_t     = caldera_kw_avx2_e8p_gemv_t,
    .uni_decode_row = caldera_kw_avx2_uni_decode_row,
    .f16_gemv       = avx2_f16_gemv,
    .f16_decode     = avx2_f16_decode,
    .dot            = avx2_dot,
    .fwht           = caldera_kw_avx2_fwht,
    .axpy           = caldera_kw_avx2_axpy,
    .e8p_q8_lanes   = caldera_kw_e8p_q8_lanes_c,   // int8 activations: off by default here
    .q8_prepare     = caldera_kw_q8_prepare_c,
    .e8p_q8t_cols   = caldera_kw_e8p_q8t_cols_c,
    .q8_rowdots     = caldera_kw_q8_rowdots_c,
    .rht_core       = caldera_kw_avx2_rht_core,
    .sign_scale     = caldera_kw_avx2_sign_scale,
};

#endif // CALDERA_KW_X86
