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

#define T_VBMI \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,avx512bitalg,avx2,fma,f16c,popcnt")))

// One group of 64 codewords of a code row in byte planes (as q8_lanes_vbmi): the sign bytes, the
// abs indices, the bit-7 mask, the parity mask and the base g-independent part of u.
struct q8_grp {
    __m512i   s, a, base;
    __mmask64 hi, par;
};

T_VBMI static inline struct q8_grp q8_group(const uint16_t * c, int64_t left, __m512i even, __m512i odd) {
    __m512i c0, c1;
    if (left >= 64) {
        c0 = _mm512_loadu_si512(c);
        c1 = _mm512_loadu_si512(c + 32);
    } else {
        c0 = _mm512_maskz_loadu_epi16(left >= 32 ? ~0u : (__mmask32) ((1u << left) - 1u), c);
        c1 = _mm512_maskz_loadu_epi16(left <= 32 ? 0u : (__mmask32) ((1ull << (left - 32)) - 1u), c + 32);
    }
    struct q8_grp g;
    g.s    = _mm512_permutex2var_epi8(c0, even, c1);
    g.a    = _mm512_permutex2var_epi8(c0, odd, c1);
    g.hi   = _mm512_movepi8_mask(g.a);
    g.par  = _mm512_test_epi8_mask(_mm512_popcnt_epi8(g.s), _mm512_set1_epi8(1));
    g.base = _mm512_mask_blend_epi8(g.par, _mm512_set1_epi8(KW_Q8_OFFSET + 1), _mm512_set1_epi8(KW_Q8_OFFSET - 1));
    return g;
}

// u of nibble e for the 64 codewords of a group.
T_VBMI static inline __m512i q8_plane(const struct q8_grp * g, const __m512i * tab, int e, __m512i sel) {
    __mmask64 m = _mm512_bitshuffle_epi64_mask(g->s, sel);
    if (e == 0) {
        m ^= g->par;
    }
    const __m512i * t  = tab + 4 * e;
    const __m512i   lo = _mm512_permutex2var_epi8(_mm512_load_si512(t), g->a, _mm512_load_si512(t + 1));
    const __m512i   hv = _mm512_permutex2var_epi8(_mm512_load_si512(t + 2), g->a, _mm512_load_si512(t + 3));
    const __m512i   gv = _mm512_mask_blend_epi8(g->hi, lo, hv);
    return _mm512_mask_sub_epi8(_mm512_add_epi8(g->base, gv), m, g->base, gv);
}

// Int8 E8P lanes (kernels-impl.h, struct kw_q8s) with AVX512-VBMI, -VNNI and -BITALG, one group of
// 64 codewords per step, all in byte planes (lane i = codeword i): two vpermt2b split the 64 codes
// into their sign bytes S and abs indices A; a 256-entry byte table per nibble is two vpermi2b
// (7 index bits) and a blend on bit 7; the sign of nibble e is bit e of S (vpshufbitqmb: one mask
// instruction per plane), nibble 0's flipped by the parity (vpopcntb), which also picks the shift
// (u = g ± 1 + 17 or its negation); vpdpbusd adds u·xq of 4 codewords per int32 lane. 576 x 576 in
// 9.4 us (0.23 ns per codeword) against 28 us for the f32 GEMV.
T_VBMI static void q8_lanes_vbmi(const struct kw_q8s * q, const uint16_t * codes, int64_t ncw, int32_t * lanes) {
    uint8_t ev[64], sl[8][64];
    for (int j = 0; j < 64; j++) {
        ev[j] = (uint8_t) (2 * j);
        for (int e = 0; e < 8; e++) {
            sl[e][j] = (uint8_t) (8 * (j & 7) + e);   // bit e of byte j of its qword
        }
    }
    const __m512i   even = _mm512_loadu_si512(ev), odd = _mm512_add_epi8(even, _mm512_set1_epi8(1));
    const __m512i * tab  = (const __m512i *) q->tabs;
    const int64_t   ng   = (ncw + 63) / 64;
    int64_t         p    = 0;
    for (int64_t g = 0; g < ng; g++) {
        const struct q8_grp gr = q8_group(codes + 64 * g, ncw - 64 * g, even, odd);
        const int8_t *      xp = q->xpl + p * 512;
        __m512i             acc = _mm512_setzero_si512();
        for (int e = 0; e < 8; e++) {
            acc = _mm512_dpbusd_epi32(acc, q8_plane(&gr, tab, e, _mm512_loadu_si512(sl[e])), _mm512_load_si512(xp + 64 * e));
        }
        _mm512_storeu_si512(lanes + 16 * g, acc);
        if (++p == q->period) {
            p = 0;
        }
    }
}

// kernels-impl.h, e8p_q8t_cols: per group of 64 codeword columns, four code rows at a time; their
// planes are interleaved bytewise (row-major inside each int32 lane: rows r .. r+3 of one column)
// so that one vpdpbusd with tq[r .. r+3] in every lane adds four rows' products per column; lane
// 4k + l of the q-th interleaved vector is column 16k + 4q + l of the group.
T_VBMI static void q8t_cols_vbmi(const int8_t * tabs, const uint16_t * codes, int64_t m, int64_t nb, const int8_t * tq,
                                 int32_t * out) {
    uint8_t ev[64], sl[8][64];
    for (int j = 0; j < 64; j++) {
        ev[j] = (uint8_t) (2 * j);
        for (int e = 0; e < 8; e++) {
            sl[e][j] = (uint8_t) (8 * (j & 7) + e);
        }
    }
    const __m512i   even = _mm512_loadu_si512(ev), odd = _mm512_add_epi8(even, _mm512_set1_epi8(1));
    const __m512i * tab  = (const __m512i *) tabs;
    __m512i         acc[8][4];
    for (int64_t b0 = 0; b0 < nb; b0 += 64) {
        const int64_t left = nb - b0;
        for (int e = 0; e < 8; e++) {
            for (int q = 0; q < 4; q++) {
                acc[e][q] = _mm512_setzero_si512();
            }
        }
        for (int64_t r0 = 0; r0 < m; r0 += 4) {
            struct q8_grp g[4];
            int32_t       t4 = 0;
            for (int j = 0; j < 4; j++) {
                if (r0 + j < m) {
                    g[j] = q8_group(codes + (r0 + j) * nb + b0, left, even, odd);
                    t4 |= (int32_t) (uint8_t) tq[r0 + j] << (8 * j);
                } else {   // past the last row: u = 0 (its tq byte is 0 too)
                    g[j].s = g[j].a = g[j].base = _mm512_setzero_si512();
                    g[j].hi = g[j].par = 0;
                }
            }
            const __m512i tv = _mm512_set1_epi32(t4);
            for (int e = 0; e < 8; e++) {
                const __m512i sel = _mm512_loadu_si512(sl[e]);
                const __m512i u0 = q8_plane(&g[0], tab, e, sel), u1 = q8_plane(&g[1], tab, e, sel);
                const __m512i u2 = q8_plane(&g[2], tab, e, sel), u3 = q8_plane(&g[3], tab, e, sel);
                const __m512i l01 = _mm512_unpacklo_epi8(u0, u1), h01 = _mm512_unpackhi_epi8(u0, u1);
                const __m512i l23 = _mm512_unpacklo_epi8(u2, u3), h23 = _mm512_unpackhi_epi8(u2, u3);
                acc[e][0] = _mm512_dpbusd_epi32(acc[e][0], _mm512_unpacklo_epi16(l01, l23), tv);
                acc[e][1] = _mm512_dpbusd_epi32(acc[e][1], _mm512_unpackhi_epi16(l01, l23), tv);
                acc[e][2] = _mm512_dpbusd_epi32(acc[e][2], _mm512_unpacklo_epi16(h01, h23), tv);
                acc[e][3] = _mm512_dpbusd_epi32(acc[e][3], _mm512_unpackhi_epi16(h01, h23), tv);
            }
        }
        int32_t lane[8][4][16];
        for (int e = 0; e < 8; e++) {
            for (int q = 0; q < 4; q++) {
                _mm512_storeu_si512(lane[e][q], acc[e][q]);
            }
        }
        const int64_t nc = left < 64 ? left : 64;
        for (int64_t i = 0; i < nc; i++) {   // column i = 16k + 4q + l
            const int k = (int) (i >> 4), q = (int) ((i >> 2) & 3), l = (int) (i & 3);
            for (int e = 0; e < 8; e++) {
                out[8 * (b0 + i) + e] = lane[e][q][4 * k + l];
            }
        }
    }
}

// kernels-impl.h, q8_prepare (the C version's layout): 16 columns per step for the step and the
// rounding (vcvtps2dq rounds to nearest even, as lrintf), the nibble order by one vpermb per 64
// bytes, and each plane of a group of 64 codewords from the 512 contiguous bytes of their x by four
// two-register byte permutes (16 codewords each).
T_VBMI static float q8_prepare_vbmi(const float * x, int64_t cols, int64_t period, int8_t * xq, int8_t * xpl,
                                    int32_t * sx) {
    const int64_t nb = cols / 8;   // cols % 32 == 0 on this path
    __m512 am = _mm512_setzero_ps();
    for (int64_t c = 0; c < cols; c += 16) {
        const __mmask16 k = cols - c >= 16 ? (__mmask16) 0xFFFF : (__mmask16) ((1u << (cols - c)) - 1u);
        am = _mm512_max_ps(am, _mm512_abs_ps(_mm512_maskz_loadu_ps(k, x + c)));
    }
    const float   amax = _mm512_reduce_max_ps(am);
    const __m512  id   = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    __m512i       sum = _mm512_setzero_si512();
    for (int64_t c = 0; c < cols; c += 16) {
        const __mmask16 k = cols - c >= 16 ? (__mmask16) 0xFFFF : (__mmask16) ((1u << (cols - c)) - 1u);
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + c), id));
        q   = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
        sum = _mm512_add_epi32(sum, q);
        _mm_mask_storeu_epi8(xq + c, k, _mm512_cvtepi32_epi8(q));
    }
    *sx = _mm512_reduce_add_epi32(sum);
    uint8_t pm[64], ix[8][64];
    for (int j = 0; j < 64; j++) {
        pm[j] = (uint8_t) ((j & ~7) + KW_E8P_PERM(j & 7));   // nibble order inside each codeword
        for (int e = 0; e < 8; e++) {
            ix[e][j] = (uint8_t) (8 * (j & 15) + e);          // byte e of codeword j % 16 of a pair
        }
    }
    const __m512i perm = _mm512_loadu_si512(pm);
    for (int64_t c = 0; c < cols; c += 64) {
        const __mmask64 k = cols - c >= 64 ? ~(__mmask64) 0 : ((__mmask64) 1 << (cols - c)) - 1;
        _mm512_mask_storeu_epi8(xq + c, k, _mm512_permutexvar_epi8(perm, _mm512_maskz_loadu_epi8(k, xq + c)));
    }
    for (int64_t b = nb; b < nb + 64; b++) {
        memcpy(xq + 8 * b, xq + 8 * (b % nb), 8);
    }
    for (int64_t p = 0; p < period; p++) {
        const int8_t * src = xq + 8 * ((64 * p) % nb);
        __m512i z[8];
        for (int k = 0; k < 8; k++) {
            z[k] = _mm512_loadu_si512(src + 64 * k);
        }
        for (int e = 0; e < 8; e++) {
            const __m512i ie = _mm512_loadu_si512(ix[e]);
            __m512i       v  = _mm512_maskz_permutex2var_epi8((__mmask64) 0xFFFF, z[0], ie, z[1]);
            v = _mm512_or_si512(v, _mm512_maskz_permutex2var_epi8((__mmask64) 0xFFFF << 16, z[2], ie, z[3]));
            v = _mm512_or_si512(v, _mm512_maskz_permutex2var_epi8((__mmask64) 0xFFFF << 32, z[4], ie, z[5]));
            v = _mm512_or_si512(v, _mm512_maskz_permutex2var_epi8((__mmask64) 0xFFFF << 48, z[6], ie, z[7]));
            _mm512_store_si512(xpl + (p * 8 + e) * 64, v);
        }
    }
    return amax / 127.0f;
}

T_512 static void q8_rowsums_avx512(const int32_t * lanes, int64_t nrows, int64_t nl, int32_t * isum) {
    for (int64_t r = 0; r < nrows; r++) {
        const int32_t * l = lanes + r * nl;
        __m512i         v = _mm512_setzero_si512();
        for (int64_t k = 0; k < nl; k += 16) {
            const __mmask16 m = nl - k >= 16 ? (__mmask16) 0xFFFF : (__mmask16) ((1u << (nl - k)) - 1u);
            v = _mm512_add_epi32(v, _mm512_maskz_loadu_epi32(m, l + k));
        }
        isum[r] = _mm512_reduce_add_epi32(v);
    }
}

// Without AVX512-VBMI/VNNI/BITALG the int8 E8P lanes are the C ones (off by default).
const struct kw_variant caldera_kw_variant_avx512_novnni = {
    .e8p_gemv       = caldera_kw_avx2_e8p_gemv,
    .e8p_decode     = caldera_kw_avx2_e8p_decode,
    .e8p_gemv_t     = caldera_kw_avx2_e8p_gemv_t,
    .uni_decode_row = caldera_kw_avx2_uni_decode_row,
    .f16_gemv       = avx512_f16_gemv,
    .f16_decode     = avx512_f16_decode,
    .dot            = avx512_dot,
    .fwht           = caldera_kw_avx2_fwht,
    .axpy           = caldera_kw_avx2_axpy,
    .e8p_q8_lanes   = caldera_kw_e8p_q8_lanes_c,
    .q8_prepare     = caldera_kw_q8_prepare_c,
    .e8p_q8t_cols   = caldera_kw_e8p_q8t_cols_c,
    .q8_rowsums     = q8_rowsums_avx512,
    .rht_core       = caldera_kw_avx2_rht_core,
    .sign_scale     = caldera_kw_avx2_sign_scale,
};

const struct kw_variant caldera_kw_variant_avx512 = {
    .e8p_gemv       = caldera_kw_avx2_e8p_gemv,
    .e8p_decode     = caldera_kw_avx2_e8p_decode,
    .e8p_gemv_t     = caldera_kw_avx2_e8p_gemv_t,
    .uni_decode_row = caldera_kw_avx2_uni_decode_row,
    .f16_gemv       = avx512_f16_gemv,
    .f16_decode     = avx512_f16_decode,
    .dot            = avx512_dot,
    .fwht           = caldera_kw_avx2_fwht,
    .axpy           = caldera_kw_avx2_axpy,
    .e8p_q8_lanes   = q8_lanes_vbmi,
    .q8_prepare     = q8_prepare_vbmi,
    .e8p_q8t_cols   = q8t_cols_vbmi,
    .q8_rowsums     = q8_rowsums_avx512,
    .rht_core       = caldera_kw_avx2_rht_core,
    .sign_scale     = caldera_kw_avx2_sign_scale,
    .q8_default     = 1,
};

#endif // CALDERA_KW_X86
