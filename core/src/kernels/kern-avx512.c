// SPDX-License-Identifier: MIT
// kern-avx512.c: the AVX-512 (F, BW, VL, DQ) variant: f16 rows widened 16 at a time, f32 dots with
// masked tails. E8P reuses the AVX2 GEMV: a version with two codewords per 16-wide register and
// the parity-fixed sign bytes as the lane mask of one masked negation measured 39.5 us against
// 28.4 us for the table-driven AVX2 code on 576 x 576 (this Zen 4 splits 512-bit operations in
// two), so it was dropped. Row decoders (the batched path's cost is in sgemm), the FWHT and the RHT
// core reuse the AVX2 functions too. The int8-activation E8P row uses AVX512-VNNI when the CPU
// has it (caldera_kw_variant picks the table).
#include "kernels-impl.h"

#ifdef CALDERA_KW_X86
#include <immintrin.h>

#define T_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,popcnt")))

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

#define T_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,popcnt")))

// Σ_k d_k <tab[codes], xq_k> − corr over one row, VNNI: 8 codewords (two blocks of 32 columns)
// per step, their table rows loaded as scalars into one register (vpgatherqq measured 77 us
// against 60 us for this on 1536 x 576 here), one vpdpbusd to 16 int32 lanes of 4 columns,
// converted and scaled by the lanes' block d.
T_VNNI static inline __m512i q8_tab8(const long long * tab, const uint16_t * c) {
    __m256i lo = _mm256_set_epi64x(tab[c[3]], tab[c[2]], tab[c[1]], tab[c[0]]);
    __m256i hi = _mm256_set_epi64x(tab[c[7]], tab[c[6]], tab[c[5]], tab[c[4]]);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

T_VNNI static float q8_row_vnni(const struct kw_q8x * q, const uint16_t * c, int64_t nb) {
    const long long * tab = (const long long *) q->tab;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 16 <= nb; b += 16) {
        __m512i p0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q8_tab8(tab, c + b), _mm512_loadu_si512(q->xq + 8 * b));
        __m512i p1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q8_tab8(tab, c + b + 8),
                                         _mm512_loadu_si512(q->xq + 8 * b + 64));
        a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), _mm512_loadu_ps(q->dl + 2 * b), a0);
        a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), _mm512_loadu_ps(q->dl + 2 * b + 16), a1);
    }
    for (; b + 8 <= nb; b += 8) {
        __m512i p0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q8_tab8(tab, c + b), _mm512_loadu_si512(q->xq + 8 * b));
        a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), _mm512_loadu_ps(q->dl + 2 * b), a0);
    }
    float d = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    if (b < nb) {   // nb % 4 == 0: one last block of 4 codewords
        __m256i w0 = _mm256_set_epi64x(tab[c[b + 3]], tab[c[b + 2]], tab[c[b + 1]], tab[c[b]]);
        __m256i p0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w0, _mm256_loadu_si256((const __m256i *) (q->xq + 8 * b)));
        __m256  f  = _mm256_mul_ps(_mm256_cvtepi32_ps(p0), _mm256_loadu_ps(q->dl + 2 * b));
        __m128  h  = _mm_add_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        d += _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
    }
    return d - q->corr;
}

// Without AVX512-VNNI, the int8 E8P GEMV is the AVX2 one (vpmaddubsw).
const struct kw_variant caldera_kw_variant_avx512_novnni = {
    .e8p_gemv       = caldera_kw_avx2_e8p_gemv,
    .e8p_decode     = caldera_kw_avx2_e8p_decode,
    .uni_decode_row = caldera_kw_avx2_uni_decode_row,
    .f16_gemv       = avx512_f16_gemv,
    .f16_decode     = avx512_f16_decode,
    .dot            = avx512_dot,
    .fwht           = caldera_kw_avx2_fwht,
    .axpy           = caldera_kw_avx2_axpy,
    .e8p_q8_row     = caldera_kw_avx2_e8p_q8_row,
    .rht_core       = caldera_kw_avx2_rht_core,
};

const struct kw_variant caldera_kw_variant_avx512 = {
    .e8p_gemv       = caldera_kw_avx2_e8p_gemv,
    .e8p_decode     = caldera_kw_avx2_e8p_decode,
    .uni_decode_row = caldera_kw_avx2_uni_decode_row,
    .f16_gemv       = avx512_f16_gemv,
    .f16_decode     = avx512_f16_decode,
    .dot            = avx512_dot,
    .fwht           = caldera_kw_avx2_fwht,
    .axpy           = caldera_kw_avx2_axpy,
    .e8p_q8_row     = q8_row_vnni,
    .rht_core       = caldera_kw_avx2_rht_core,
};

#endif // CALDERA_KW_X86
