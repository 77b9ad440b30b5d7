// SPDX-License-Identifier: MIT
// kern-avx512.c: the AVX-512 (F, BW, VL, DQ) variant. E8P GEMV takes two codewords per 16-wide
// register, and the parity-fixed sign bytes of both are used directly as the lane mask of one
// masked negation (no mask arithmetic); f16 rows are widened 16 at a time. Row decoders (the
// batched path's cost is in sgemm) and the FWHT reuse the AVX2 functions.
#include "kernels-impl.h"

#ifdef CALDERA_KW_X86
#include <immintrin.h>

#define T_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,popcnt")))

T_512 static inline float e8p_row_dot512(const float * grid, const uint16_t * c, const float * xp, const float * xs,
                                         float xtot, int64_t nb) {
    const __m512 zero = _mm512_setzero_ps();
    __m512 a0 = zero, a1 = zero;
    float  sp0 = 0.0f, sp1 = 0.0f;   // sum of xs over blocks with the −1/4 shift
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        uint32_t c0 = c[b], c1 = c[b + 1], c2 = c[b + 2], c3 = c[b + 3];
        uint32_t s0 = c0 & 0xFFu, s1 = c1 & 0xFFu, s2 = c2 & 0xFFu, s3 = c3 & 0xFFu;
        uint32_t p0 = (uint32_t) __builtin_parity(s0), p1 = (uint32_t) __builtin_parity(s1);
        uint32_t p2 = (uint32_t) __builtin_parity(s2), p3 = (uint32_t) __builtin_parity(s3);
        __m512 g01 = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(grid + (c0 >> 8) * 8)),
                                        _mm256_loadu_ps(grid + (c1 >> 8) * 8), 1);
        __m512 g23 = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(grid + (c2 >> 8) * 8)),
                                        _mm256_loadu_ps(grid + (c3 >> 8) * 8), 1);
        __mmask16 k01 = (__mmask16) ((s0 ^ p0) | ((s1 ^ p1) << 8));
        __mmask16 k23 = (__mmask16) ((s2 ^ p2) | ((s3 ^ p3) << 8));
        a0 = _mm512_fmadd_ps(_mm512_mask_sub_ps(g01, k01, zero, g01), _mm512_loadu_ps(xp + 8 * b), a0);
        a1 = _mm512_fmadd_ps(_mm512_mask_sub_ps(g23, k23, zero, g23), _mm512_loadu_ps(xp + 8 * b + 16), a1);
        sp0 += (p0 ? xs[b] : 0.0f) + (p1 ? xs[b + 1] : 0.0f);
        sp1 += (p2 ? xs[b + 2] : 0.0f) + (p3 ? xs[b + 3] : 0.0f);
    }
    __m256 t = _mm256_setzero_ps();
    for (; b < nb; b++) {
        uint32_t c0 = c[b], s0 = c0 & 0xFFu, p0 = (uint32_t) __builtin_parity(s0);
        __m256 g = _mm256_loadu_ps(grid + (c0 >> 8) * 8);
        g = _mm256_mask_sub_ps(g, (__mmask8) (s0 ^ p0), _mm256_setzero_ps(), g);
        t = _mm256_fmadd_ps(g, _mm256_loadu_ps(xp + 8 * b), t);
        sp0 += p0 ? xs[b] : 0.0f;
    }
    float d = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + _mm512_reduce_add_ps(_mm512_castps256_ps512(t));
    return d + 0.25f * (xtot - 2.0f * (sp0 + sp1));
}

T_512 static void avx512_e8p_gemv(const struct caldera_kw * w, const float * xp, const float * xs, int64_t r0,
                                  int64_t r1, float * y, int acc) {
    const int64_t nb   = w->cols / 8;
    const float   irho = w->bits > 2 ? 1.0f / w->e8_rho : 0.0f;
    float xtot = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        xtot += xs[b];
    }
    for (int64_t r = r0; r < r1; r++) {
        float d = e8p_row_dot512(w->e8_grid, w->codes + r * nb, xp, xs, xtot, nb);
        if (w->bits == 4) {
            d += irho * e8p_row_dot512(w->e8_grid, (const uint16_t *) w->codes2 + r * nb, xp, xs, xtot, nb);
        } else if (w->bits == 3) {
            const uint8_t * c2 = (const uint8_t *) w->codes2 + r * nb;
            __m512 a = _mm512_setzero_ps();
            int64_t b = 0;
            for (; b + 2 <= nb; b += 2) {
                __m512 g = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(w->e8_rvq1 + c2[b] * 8)),
                                              _mm256_loadu_ps(w->e8_rvq1 + c2[b + 1] * 8), 1);
                a = _mm512_fmadd_ps(g, _mm512_loadu_ps(xp + 8 * b), a);
            }
            float d2 = _mm512_reduce_add_ps(a);
            for (; b < nb; b++) {
                for (int j = 0; j < 8; j++) {
                    d2 += w->e8_rvq1[c2[b] * 8 + j] * xp[8 * b + j];
                }
            }
            d += irho * d2;
        }
        float v = kw_e8p_scale(w, r) * d;
        y[r - r0] = acc ? y[r - r0] + v : v;
    }
}

T_512 static void avx512_f16_gemv(const struct caldera_kw * w, const float * x, int64_t r0, int64_t r1, float * y,
                                  int acc) {
    const int64_t n = w->cols;
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t * row = (const uint16_t *) w->data + r * w->ld;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        int64_t c = 0;
        for (; c + 32 <= n; c += 32) {
            a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (row + c))),
                                 _mm512_loadu_ps(x + c), a0);
            a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (row + c + 16))),
                                 _mm512_loadu_ps(x + c + 16), a1);
        }
        if (c < n) {  // up to 31 left: masked 16-wide steps
            for (; c < n; c += 16) {
                int64_t   left = n - c < 16 ? n - c : 16;
                __mmask16 k    = (__mmask16) ((1u << left) - 1u);
                __m512    h    = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, row + c));
                a0 = _mm512_fmadd_ps(h, _mm512_maskz_loadu_ps(k, x + c), a0);
            }
        }
        float d = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        y[r - r0] = acc ? y[r - r0] + d : d;
    }
}

T_512 static void avx512_f16_decode(const struct caldera_kw * w, int64_t r0, int64_t r1, float * dst, int64_t ld) {
    const int64_t n = w->cols;
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t * row = (const uint16_t *) w->data + r * w->ld;
        float *          o   = dst + (r - r0) * ld;
        for (int64_t c = 0; c < n; c += 16) {
            int64_t   left = n - c < 16 ? n - c : 16;
            __mmask16 k    = (__mmask16) ((1u << left) - 1u);
            _mm512_mask_storeu_ps(o + c, k, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, row + c)));
        }
    }
}

T_512 static float avx512_dot(const float * a, const float * b, int64_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), a1);
    }
    for (; i < n; i += 16) {
        int64_t   left = n - i < 16 ? n - i : 16;
        __mmask16 k    = (__mmask16) ((1u << left) - 1u);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

const struct kw_variant caldera_kw_variant_avx512 = {
    .e8p_gemv       = avx512_e8p_gemv,
    .e8p_decode     = caldera_kw_avx2_e8p_decode,
    .uni_decode_row = caldera_kw_avx2_uni_decode_row,
    .f16_gemv       = avx512_f16_gemv,
    .f16_decode     = avx512_f16_decode,
    .dot            = avx512_dot,
    .fwht           = caldera_kw_avx2_fwht,
};

#endif // CALDERA_KW_X86
