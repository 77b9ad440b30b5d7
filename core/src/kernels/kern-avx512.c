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

// Bytes of codes prefetched ahead of the int8 E8P GEMV's group (16 groups): the codes stream from
// memory, and a quarter of the kernel's samples sat on their loads without it.
#define KW_Q8_PREFETCH 2048
#define T_VBMI \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,avx512bitalg,avx2,fma,f16c,popcnt")))

// The constants of the int8 E8P kernels: the code split (even / odd bytes), the planes' sign-bit
// selectors, the grid's magnitude tables (struct kw_q8s, mags: two 256-entry byte tables, four
// registers each) and the byte constants of |g| = (f & 12) | 2.
struct q8_k {
    __m512i even, odd, sel[8], ta[4], tb[4], c12, c2, c55, one;
};

T_VBMI static inline void q8_consts(const int8_t * mags, struct q8_k * k) {
    uint8_t ev[64], sl[8][64];
    for (int j = 0; j < 64; j++) {
        ev[j] = (uint8_t) (2 * j);
        for (int e = 0; e < 8; e++) {
            sl[e][j] = (uint8_t) (8 * (j & 7) + e);   // bit e of byte j of its qword
        }
    }
    k->even = _mm512_loadu_si512(ev);
    k->odd  = _mm512_add_epi8(k->even, _mm512_set1_epi8(1));
    for (int e = 0; e < 8; e++) {
        k->sel[e] = _mm512_loadu_si512(sl[e]);
    }
    for (int i = 0; i < 4; i++) {
        k->ta[i] = _mm512_load_si512(mags + 64 * i);
        k->tb[i] = _mm512_load_si512(mags + 256 + 64 * i);
    }
    k->c12 = _mm512_set1_epi8(12);
    k->c2  = _mm512_set1_epi8(2);
    k->c55 = _mm512_set1_epi8(0x55);
    k->one = _mm512_set1_epi8(1);
}

// One group of 64 codewords of a code row in byte planes (lane i = codeword i): the sign bytes S,
// the magnitude fields of nibbles 0-3 (fa) and 4-7 (fb), the parity mask, nibble 7's negation mask
// and the g-independent part of u. Two vpermt2b split the codes into S and the abs indices A; each
// field table is two vpermi2b (7 index bits) and a blend on bit 7 of A; nibble 7 is negative where
// the fields' sum is odd: the parity of their low bits, (fa ^ fb) & 0x55.
struct q8_grp {
    __m512i   s, fa, fb, base;
    __mmask64 par, neg7;
};

T_VBMI static inline struct q8_grp q8_group(const uint16_t * c, int64_t left, const struct q8_k * k) {
    __m512i c0, c1;
    if (left >= 64) {
        c0 = _mm512_loadu_si512(c);
        c1 = _mm512_loadu_si512(c + 32);
    } else {
        c0 = _mm512_maskz_loadu_epi16(left >= 32 ? ~0u : (__mmask32) ((1u << left) - 1u), c);
        c1 = _mm512_maskz_loadu_epi16(left <= 32 ? 0u : (__mmask32) ((1ull << (left - 32)) - 1u), c + 32);
    }
    struct q8_grp   g;
    const __m512i   a  = _mm512_permutex2var_epi8(c0, k->odd, c1);
    const __mmask64 hi = _mm512_movepi8_mask(a);
    g.s    = _mm512_permutex2var_epi8(c0, k->even, c1);
    g.fa   = _mm512_mask_blend_epi8(hi, _mm512_permutex2var_epi8(k->ta[0], a, k->ta[1]), _mm512_permutex2var_epi8(k->ta[2], a, k->ta[3]));
    g.fb   = _mm512_mask_blend_epi8(hi, _mm512_permutex2var_epi8(k->tb[0], a, k->tb[1]), _mm512_permutex2var_epi8(k->tb[2], a, k->tb[3]));
    g.par  = _mm512_test_epi8_mask(_mm512_popcnt_epi8(g.s), k->one);
    g.neg7 = _mm512_test_epi8_mask(_mm512_popcnt_epi8(_mm512_ternarylogic_epi32(g.fa, g.fb, k->c55, 0x28)), k->one);
    g.base = _mm512_mask_blend_epi8(g.par, _mm512_set1_epi8(KW_Q8_OFFSET + 1), _mm512_set1_epi8(KW_Q8_OFFSET - 1));
    return g;
}

// u of nibble e for the 64 codewords of a group: |g| = 2 + 4 m from field e % 4 moved to bits 2..3
// of its byte (16-bit shifts; the mask drops what crosses from the neighbouring byte) by one
// vpternlogd ((f & 12) | 2), the sign bit e of S (nibble 0's flipped by the parity, nibble 7's by
// its negation), u = base ± |g|.
T_VBMI static inline __m512i q8_plane(const struct q8_grp * g, const struct q8_k * k, int e) {
    const __m512i f  = e < 4 ? g->fa : g->fb;
    const int     j  = e % 4;
    const __m512i fj = j == 0 ? _mm512_slli_epi16(f, 2) : j == 1 ? f : _mm512_srli_epi16(f, 2 * j - 2);
    const __m512i gv = _mm512_ternarylogic_epi32(fj, k->c12, k->c2, 0xEA);
    __mmask64     m  = _mm512_bitshuffle_epi64_mask(g->s, k->sel[e]);
    if (e == 0) {
        m ^= g->par;
    }
    if (e == 7) {
        m ^= g->neg7;
    }
    return _mm512_mask_sub_epi8(_mm512_add_epi8(g->base, gv), m, g->base, gv);
}

// Int8 E8P lanes (kernels-impl.h, struct kw_q8s) with AVX512-VBMI, -VNNI and -BITALG, one group of
// 64 codewords per step, all in byte planes (q8_group, q8_plane); vpdpbusd adds u·xq of 4
// codewords per int32 lane, and u·xq2 of the residual. A grid without the magnitude fields (none
// of the E8P plugin's) takes the C lanes. The first version looked each plane up in a 256-entry
// byte table (2 vpermt2b, a blend and 4 table loads per plane; Zen 4 issues one vpermt2b or
// vpdpbusd per cycle, not one of each): 576 x 576 lanes in 12.1-12.9 us against 8.8-9.5 now
// (a stand-alone copy of both, codes in cache).
T_VBMI static void q8_lanes_vbmi(const struct kw_q8s * q, const uint16_t * codes, int64_t ncw, int32_t * lanes) {
    if (!q->mags) {
        caldera_kw_e8p_q8_lanes_c(q, codes, ncw, lanes);
        return;
    }
    struct q8_k k;
    q8_consts(q->mags, &k);
    const int64_t ng = (ncw + 63) / 64;
    int64_t       p  = 0;
    for (int64_t g = 0; g < ng; g++) {
        _mm_prefetch((const char *) (codes + 64 * g) + KW_Q8_PREFETCH, _MM_HINT_T0);
        _mm_prefetch((const char *) (codes + 64 * g) + KW_Q8_PREFETCH + 64, _MM_HINT_T0);
        const struct q8_grp gr = q8_group(codes + 64 * g, ncw - 64 * g, &k);
        const int8_t *      xp = q->xpl + p * 512, * xp2 = q->xpl2 + p * 512;
        __m512i             acc = _mm512_setzero_si512(), acc2 = _mm512_setzero_si512();
        for (int e = 0; e < 8; e++) {
            const __m512i u = q8_plane(&gr, &k, e);
            acc  = _mm512_dpbusd_epi32(acc, u, _mm512_load_si512(xp + 64 * e));
            acc2 = _mm512_dpbusd_epi32(acc2, u, _mm512_load_si512(xp2 + 64 * e));
        }
        // 254 acc + acc2 = (acc << 8) − 2 acc + acc2
        acc = _mm512_add_epi32(_mm512_sub_epi32(_mm512_slli_epi32(acc, 8), _mm512_add_epi32(acc, acc)), acc2);
        _mm512_storeu_si512(lanes + 16 * g, acc);
        if (++p == q->period) {
            p = 0;
        }
    }
}

// out[8i + e] = pl[e][i] for columns i < nc of a group (planes 8 × 64 to the codeword-major layout):
// per 16 columns an 8 × 16 transpose in three stages of two-source permutes (planes paired by
// dwords, then by qwords, then by 128-bit chunks: 24 vpermt2d/q), two columns per stored vector.
T_VBMI static inline void q8t_transpose(const int32_t (*pl)[64], int64_t nc, int32_t * out) {
    const __m512i i1l = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i i1h = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    const __m512i i2l = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0), i2h = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
    const __m512i i3l = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0), i3h = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    for (int64_t c = 0; c < nc; c += 16) {
        __m512i s1[4][2], s2[2][2][2];
        for (int p = 0; p < 4; p++) {   // planes 2p, 2p + 1; columns 8h .. 8h + 7
            const __m512i r0 = _mm512_load_si512(pl[2 * p] + c), r1 = _mm512_load_si512(pl[2 * p + 1] + c);
            s1[p][0] = _mm512_permutex2var_epi32(r0, i1l, r1);
            s1[p][1] = _mm512_permutex2var_epi32(r0, i1h, r1);
        }
        for (int q = 0; q < 2; q++) {   // planes 4q .. 4q + 3; columns 8h + 4m .. 8h + 4m + 3
            for (int h = 0; h < 2; h++) {
                s2[q][h][0] = _mm512_permutex2var_epi64(s1[2 * q][h], i2l, s1[2 * q + 1][h]);
                s2[q][h][1] = _mm512_permutex2var_epi64(s1[2 * q][h], i2h, s1[2 * q + 1][h]);
            }
        }
        for (int h = 0; h < 2; h++) {
            for (int m = 0; m < 2; m++) {
                for (int n = 0; n < 2; n++) {   // columns c + 8h + 4m + 2n and the next, all 8 planes
                    const int64_t   col  = c + 8 * h + 4 * m + 2 * n;
                    const __mmask16 k    = col + 2 <= nc ? (__mmask16) 0xFFFF : col + 1 == nc ? (__mmask16) 0xFF : 0;
                    const __m512i   v    = _mm512_permutex2var_epi64(s2[0][h][m], n ? i3h : i3l, s2[1][h][m]);
                    _mm512_mask_storeu_epi32(out + 8 * col, k, v);
                }
            }
        }
    }
}

// kernels-impl.h, e8p_q8t_cols: per group of 64 codeword columns, the rows' byte planes (struct
// q8_grp, kept for all rows), then per nibble e four code rows at a time: their planes interleaved
// bytewise (rows r .. r+3 of one column inside each int32 lane), so that one vpdpbusd with
// tq[r .. r+3] in every lane adds four rows' products per column (and one more with tq2); lane
// 4k + l of the q-th interleaved vector is column 16k + 4q + l of the group, put in column order
// by eight 128-bit shuffles into plane e of the group, the planes then transposed to out's layout
// (q8t_transpose; a per-column scalar scatter before, 1024 stores per 64 columns: as many
// instructions as the products).
T_VBMI static void q8t_cols_vbmi(const int8_t * tabs, const int8_t * mags, const uint16_t * codes, int64_t m, int64_t nb,
                                 const int8_t * tq, const int8_t * tq2, int32_t * out, int32_t * out2) {
    if (!mags) {
        caldera_kw_e8p_q8t_cols_c(tabs, mags, codes, m, nb, tq, tq2, out, out2);
        return;
    }
    struct q8_k k;
    q8_consts(mags, &k);
    const int64_t m4 = (m + 3) / 4;
    int32_t       t4[KW_Q8T_ROWS / 4], t42[KW_Q8T_ROWS / 4];
    struct q8_grp g[KW_Q8T_ROWS];
    for (int64_t qd = 0; qd < m4; qd++) {   // tq of rows 4qd .. 4qd+3 in the four bytes (0 past m)
        t4[qd] = t42[qd] = 0;
        for (int64_t j = 0; j < 4 && 4 * qd + j < m; j++) {
            t4[qd] |= (int32_t) ((uint32_t) (uint8_t) tq[4 * qd + j] << (8 * j));
            t42[qd] |= (int32_t) ((uint32_t) (uint8_t) tq2[4 * qd + j] << (8 * j));
        }
    }
    for (int64_t b0 = 0; b0 < nb; b0 += 64) {
        const int64_t left = nb - b0;
        for (int64_t r = 0; r < 4 * m4; r++) {
            if (r < m) {
                g[r] = q8_group(codes + r * nb + b0, left, &k);
            } else {   // past the last row: any u (its tq byte is 0)
                g[r].s = g[r].fa = g[r].fb = g[r].base = _mm512_setzero_si512();
                g[r].par = g[r].neg7 = 0;
            }
        }
        int32_t pl[2][8][64] __attribute__((aligned(64)));   // the group's sums, plane e, column order
        for (int e = 0; e < 8; e++) {
            __m512i acc[4], acc2[4];
            for (int q = 0; q < 4; q++) {
                acc[q] = acc2[q] = _mm512_setzero_si512();
            }
            for (int64_t qd = 0; qd < m4; qd++) {
                const struct q8_grp * gq = g + 4 * qd;
                const __m512i u0 = q8_plane(gq, &k, e), u1 = q8_plane(gq + 1, &k, e);
                const __m512i u2 = q8_plane(gq + 2, &k, e), u3 = q8_plane(gq + 3, &k, e);
                const __m512i l01 = _mm512_unpacklo_epi8(u0, u1), h01 = _mm512_unpackhi_epi8(u0, u1);
                const __m512i l23 = _mm512_unpacklo_epi8(u2, u3), h23 = _mm512_unpackhi_epi8(u2, u3);
                const __m512i v[4] = { _mm512_unpacklo_epi16(l01, l23), _mm512_unpackhi_epi16(l01, l23),
                                       _mm512_unpacklo_epi16(h01, h23), _mm512_unpackhi_epi16(h01, h23) };
                const __m512i tv = _mm512_set1_epi32(t4[qd]), tv2 = _mm512_set1_epi32(t42[qd]);
                for (int q = 0; q < 4; q++) {
                    acc[q]  = _mm512_dpbusd_epi32(acc[q], v[q], tv);
                    acc2[q] = _mm512_dpbusd_epi32(acc2[q], v[q], tv2);
                }
            }
            // 128-bit chunk k of acc[q] holds columns 16k + 4q .. 16k + 4q + 3: a 4 × 4 transpose of
            // chunks gives columns 16k .. 16k + 15 in order (the padded plane takes all 64)
            for (int h = 0; h < 2; h++) {
                const __m512i * a  = h ? acc2 : acc;
                int32_t *       o  = pl[h][e];
                const __m512i   t0 = _mm512_shuffle_i32x4(a[0], a[1], 0x44), t1 = _mm512_shuffle_i32x4(a[0], a[1], 0xEE);
                const __m512i   t2 = _mm512_shuffle_i32x4(a[2], a[3], 0x44), t3 = _mm512_shuffle_i32x4(a[2], a[3], 0xEE);
                _mm512_storeu_si512(o, _mm512_shuffle_i32x4(t0, t2, 0x88));
                _mm512_storeu_si512(o + 16, _mm512_shuffle_i32x4(t0, t2, 0xDD));
                _mm512_storeu_si512(o + 32, _mm512_shuffle_i32x4(t1, t3, 0x88));
                _mm512_storeu_si512(o + 48, _mm512_shuffle_i32x4(t1, t3, 0xDD));
            }
        }
        const int64_t nc = left < 64 ? left : 64;
        for (int h = 0; h < 2; h++) {
            q8t_transpose(pl[h], nc, (h ? out2 : out) + 8 * b0);
        }
    }
}

// kernels-impl.h, q8_prepare (the C version's layout): 16 columns per step for the step and the
// rounding (vcvtps2dq rounds to nearest even, as lrintf), the nibble order by one vpermb per 64
// bytes, and each plane of a group of 64 codewords from the 512 contiguous bytes of their x by four
// two-register byte permutes (16 codewords each).
T_VBMI static float q8_prepare_vbmi(const float * x, int64_t cols, int64_t period, int8_t * xq, int8_t * xpl,
                                    float * dl) {
    const int64_t nb = cols / 8, nk = cols / 32;   // cols % 32 == 0 on this path
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    int8_t *      xq2 = xq + cols + 512;
    float         corr = 0.0f;
    for (int64_t k = 0; k < nk; k++) {
        const __m512 x0 = _mm512_loadu_ps(x + 32 * k), x1 = _mm512_loadu_ps(x + 32 * k + 16);
        const float  amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        const float  d = amax / 127.0f, idf = amax > 0.0f ? 127.0f / amax : 0.0f;
        const __m512 id = _mm512_set1_ps(idf), id2 = _mm512_set1_ps(254.0f * idf), vd = _mm512_set1_ps(d);
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, id)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, id));
        q0 = _mm512_min_epi32(_mm512_max_epi32(q0, lo), hi);
        q1 = _mm512_min_epi32(_mm512_max_epi32(q1, lo), hi);
        // the residual x − d q (exact as in the C version: one rounding of the product, one of the difference)
        __m512i r0 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(x0, _mm512_mul_ps(_mm512_cvtepi32_ps(q0), vd)), id2));
        __m512i r1 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(x1, _mm512_mul_ps(_mm512_cvtepi32_ps(q1), vd)), id2));
        r0 = _mm512_min_epi32(_mm512_max_epi32(r0, lo), hi);
        r1 = _mm512_min_epi32(_mm512_max_epi32(r1, lo), hi);
        _mm_storeu_si128((__m128i *) (xq + 32 * k), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *) (xq + 32 * k + 16), _mm512_cvtepi32_epi8(q1));
        _mm_storeu_si128((__m128i *) (xq2 + 32 * k), _mm512_cvtepi32_epi8(r0));
        _mm_storeu_si128((__m128i *) (xq2 + 32 * k + 16), _mm512_cvtepi32_epi8(r1));
        dl[k]      = d;
        dl[nk + k] = d / 254.0f;
        corr += dl[k] * (float) (KW_Q8_OFFSET * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1))) +
                dl[nk + k] * (float) (KW_Q8_OFFSET * _mm512_reduce_add_epi32(_mm512_add_epi32(r0, r1)));
    }
    uint8_t pm[64], ix[8][64];
    for (int j = 0; j < 64; j++) {
        pm[j] = (uint8_t) ((j & ~7) + KW_E8P_PERM(j & 7));   // nibble order inside each codeword
        for (int e = 0; e < 8; e++) {
            ix[e][j] = (uint8_t) (8 * (j & 15) + e);          // byte e of codeword j % 16 of a pair
        }
    }
    const __m512i perm = _mm512_loadu_si512(pm);
    for (int h = 0; h < 2; h++) {
        int8_t * xh = h ? xq2 : xq;
        for (int64_t c = 0; c < cols; c += 64) {
            const __mmask64 k = cols - c >= 64 ? ~(__mmask64) 0 : ((__mmask64) 1 << (cols - c)) - 1;
            _mm512_mask_storeu_epi8(xh + c, k, _mm512_permutexvar_epi8(perm, _mm512_maskz_loadu_epi8(k, xh + c)));
        }
        for (int64_t b = nb; b < nb + 64; b++) {
            memcpy(xh + 8 * b, xh + 8 * (b % nb), 8);
        }
        for (int64_t p = 0; p < period; p++) {
            const int8_t * src = xh + 8 * ((64 * p) % nb);
            int8_t *       dst = xpl + h * period * 512 + p * 512;
            __m512i        z[8];
            for (int k = 0; k < 8; k++) {
                z[k] = _mm512_loadu_si512(src + 64 * k);
            }
            for (int e = 0; e < 8; e++) {
                const __m512i ie = _mm512_loadu_si512(ix[e]);
                __m512i       v  = _mm512_maskz_permutex2var_epi8((__mmask64) 0xFFFF, z[0], ie, z[1]);
                v = _mm512_or_si512(v, _mm512_maskz_permutex2var_epi8((__mmask64) 0xFFFF << 16, z[2], ie, z[3]));
                v = _mm512_or_si512(v, _mm512_maskz_permutex2var_epi8((__mmask64) 0xFFFF << 32, z[4], ie, z[5]));
                v = _mm512_or_si512(v, _mm512_maskz_permutex2var_epi8((__mmask64) 0xFFFF << 48, z[6], ie, z[7]));
                _mm512_store_si512(dst + e * 64, v);
            }
        }
    }
    return corr;
}

T_512 static void q8_rowdots_avx512(const int32_t * lanes, int64_t nrows, int64_t nl, const float * dl, float * out) {
    for (int64_t r = 0; r < nrows; r++) {
        const int32_t * l = lanes + r * nl;
        __m512          v = _mm512_setzero_ps();
        for (int64_t k = 0; k < nl; k += 16) {
            const __mmask16 m = nl - k >= 16 ? (__mmask16) 0xFFFF : (__mmask16) ((1u << (nl - k)) - 1u);
            v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(m, l + k)), _mm512_maskz_loadu_ps(m, dl + k), v);
        }
        out[r] = _mm512_reduce_add_ps(v);
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
    .q8_rowdots     = q8_rowdots_avx512,
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
    .q8_rowdots     = q8_rowdots_avx512,
    .rht_core       = caldera_kw_avx2_rht_core,
    .sign_scale     = caldera_kw_avx2_sign_scale,
    .q8_default     = 1,
};

#endif // CALDERA_KW_X86
