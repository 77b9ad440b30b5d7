// SPDX-License-Identifier: MIT
// e8p-batch.c: E8P12 encoding of 8 vectors at once with AVX2 (one vector per lane), the hot loop
// of LDLQ over E8P. The same arithmetic as e8p_encode (e8p.h), operation for operation in the same
// order and without FMA contraction, so the codes are bit-identical to the scalar search (tested on
// random and tie vectors in test-e8.c), the norm-12 patterns included (scored in the lanes whose
// bound does not rule them out). Compiled without -m flags: the AVX2 function carries a target
// attribute and is only called when the CPU has AVX2.
#include "e8p-batch.h"

#include <string.h>

void e8p_key_index_build(const struct e8p_tables * t, uint8_t * key2idx) {
    memset(key2idx, 0, E8P_NKEYS);
    for (int j = 0; j < E8P_NABS_D8; j++) {
        key2idx[t->key[j]] = (uint8_t) j;
    }
}

void e8p_decode_table_build(const struct e8p_tables * t, float * dtab) {
    for (int a = 0; a < E8P_NABS; a++) {
        for (int i = 0; i < E8P_DIM; i++) {
            dtab[a * E8P_DIM + i] = (float) ((int) ((t->packed[a] >> (4 * E8P_SH(i))) & 0xFu) - 8) * 0.5f;
        }
    }
}

void e8p_encode8_scalar(const struct e8p_tables * t, const uint8_t * key2idx, const float x[8][E8P_DIM], int n,
                        uint16_t codes[8]) {
    (void) key2idx;
    for (int l = 0; l < n; l++) {
        float out[E8P_DIM];
        codes[l] = e8p_encode(t, x[l], out);
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define T_AVX2 __attribute__((target("avx2")))

int e8p_have_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}

// Per lane l: codes[l] = e8p_encode(t, x[l]) for l < n (n <= 8; the other lanes are padding).
T_AVX2 void e8p_encode8_avx2(const struct e8p_tables * t, const uint8_t * key2idx, const float x[8][E8P_DIM], int n,
                             uint16_t codes[8]) {
    float xs[E8P_DIM][8];   // coordinate i of lane l at [i][l]
    for (int l = 0; l < 8; l++) {
        for (int i = 0; i < E8P_DIM; i++) {
            xs[i][l] = l < n ? x[l][i] : 0.0f;
        }
    }
    __m256 X[E8P_DIM];
    for (int i = 0; i < E8P_DIM; i++) {
        X[i] = _mm256_loadu_ps(xs[i]);
    }
    const __m256  absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256  zero = _mm256_setzero_ps();
    // the 7 types of e8p_encode: (count of 3/2, count of 5/2)
    static const int n3s[7] = { 0, 1, 2, 3, 4, 0, 1 };
    static const int n5s[7] = { 0, 0, 0, 0, 0, 1, 1 };
    __m256  best_cost = _mm256_set1_ps(INFINITY);
    __m256i best_p = _mm256_setzero_si256(), best_type = _mm256_setzero_si256();
    __m256i best_j12 = _mm256_setzero_si256();   // the pattern where best_type = -1 (a norm-12 one)
    for (int p = 0; p < 2; p++) {
        const __m256 shift = _mm256_set1_ps(p ? -0.25f : 0.25f);
        __m256 ay[E8P_DIM], yy = zero, ypar = zero;   // ypar: all ones where an odd number of y < 0
        for (int i = 0; i < E8P_DIM; i++) {
            __m256 y = _mm256_sub_ps(X[i], shift);
            yy   = _mm256_add_ps(yy, _mm256_mul_ps(y, y));
            ypar = _mm256_xor_ps(ypar, _mm256_cmp_ps(y, zero, _CMP_LT_OQ));
            ay[i] = _mm256_and_ps(y, absmask);
        }
        __m256 sv[E8P_DIM];
        for (int i = 0; i < E8P_DIM; i++) {
            sv[i] = ay[i];
        }
#define CX(a, b)                                 \
        do {                                     \
            __m256 va_ = sv[a], vb_ = sv[b];     \
            sv[a] = _mm256_max_ps(va_, vb_);     \
            sv[b] = _mm256_min_ps(va_, vb_);     \
        } while (0)
        CX(0, 2); CX(1, 3); CX(4, 6); CX(5, 7);
        CX(0, 4); CX(1, 5); CX(2, 6); CX(3, 7);
        CX(0, 1); CX(2, 3); CX(4, 5); CX(6, 7);
        CX(2, 4); CX(3, 5); CX(1, 4); CX(3, 6);
        CX(1, 2); CX(3, 4); CX(5, 6);
#undef CX
        __m256 pre[E8P_DIM + 1];
        pre[0] = zero;
        for (int k = 0; k < E8P_DIM; k++) {
            pre[k + 1] = _mm256_add_ps(pre[k], sv[k]);
        }
        const __m256 ymin = sv[E8P_DIM - 1];
        for (int ty = 0; ty < 7; ty++) {
            const int n5 = n5s[ty], n35 = n5s[ty] + n3s[ty];
            // dot = 2.5 pre[n5] + 1.5 (pre[n35] - pre[n5]) + 0.5 (pre[8] - pre[n35]), left to right
            __m256 dot = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(2.5f), pre[n5]),
                                                     _mm256_mul_ps(_mm256_set1_ps(1.5f), _mm256_sub_ps(pre[n35], pre[n5]))),
                                       _mm256_mul_ps(_mm256_set1_ps(0.5f), _mm256_sub_ps(pre[E8P_DIM], pre[n35])));
            const float nn = (float) (2 + 2 * n3s[ty] + 6 * n5);
            // pen = 4 where (n3 odd) != ypar; pen * 0.5f = 2 exactly, then times ymin
            __m256 odd = (n3s[ty] & 1) ? _mm256_xor_ps(ypar, _mm256_castsi256_ps(_mm256_set1_epi32(-1))) : ypar;
            __m256 penh = _mm256_and_ps(odd, _mm256_set1_ps(2.0f));
            __m256 inner = _mm256_sub_ps(_mm256_sub_ps(_mm256_mul_ps(_mm256_set1_ps(2.0f), dot), _mm256_set1_ps(nn)),
                                         _mm256_mul_ps(penh, ymin));
            __m256 cost = _mm256_sub_ps(yy, inner);
            __m256 better = _mm256_cmp_ps(cost, best_cost, _CMP_LT_OQ);
            best_cost = _mm256_blendv_ps(best_cost, cost, better);
            __m256i bi = _mm256_castps_si256(better);
            best_p    = _mm256_blendv_epi8(best_p, _mm256_set1_epi32(p), bi);
            best_type = _mm256_blendv_epi8(best_type, _mm256_set1_epi32(ty), bi);
        }
        // lb12 = yy - (2 (1.5 pre[5] + 0.5 (pre[8] - pre[5])) - 12); scalar when not lb12 > best + 1e-5 (1 + yy)
        __m256 lb12 = _mm256_sub_ps(yy, _mm256_sub_ps(_mm256_mul_ps(_mm256_set1_ps(2.0f),
                                    _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(1.5f), pre[5]),
                                                  _mm256_mul_ps(_mm256_set1_ps(0.5f), _mm256_sub_ps(pre[E8P_DIM], pre[5])))),
                                    _mm256_set1_ps(12.0f)));
        __m256 lim = _mm256_add_ps(best_cost, _mm256_mul_ps(_mm256_set1_ps(1e-5f), _mm256_add_ps(_mm256_set1_ps(1.0f), yy)));
        const __m256 need = _mm256_cmp_ps(lb12, lim, _CMP_NGT_UQ);
        const int needm = _mm256_movemask_ps(need) & ((1 << n) - 1);
        if (!needm) {
            continue;
        }
        // The 29 norm-12 patterns, for each lane whose bound does not rule them out (1.6 lanes of 8
        // on average where any does): the lane's scores 8 patterns per vector, each with the
        // per-pattern arithmetic of e8p_encode, then compared in pattern order as it does.
        float ayl[E8P_DIM][8], yyl[8], bc[8];
        int32_t bpl[8], btl[8], bjl[8], ypl[8];
        for (int i = 0; i < E8P_DIM; i++) {
            _mm256_storeu_ps(ayl[i], ay[i]);
        }
        _mm256_storeu_ps(yyl, yy);
        _mm256_storeu_ps(bc, best_cost);
        _mm256_storeu_si256((__m256i *) bpl, best_p);
        _mm256_storeu_si256((__m256i *) btl, best_type);
        _mm256_storeu_si256((__m256i *) bjl, best_j12);
        _mm256_storeu_si256((__m256i *) ypl, _mm256_castps_si256(ypar));
        for (int l = 0; l < n; l++) {
            if (!((needm >> l) & 1)) {
                continue;
            }
            const float * pen = ypl[l] ? t->pen_odd : t->pen_even;
            const __m256 yyv = _mm256_set1_ps(yyl[l]);
            float sc[32];   // patterns 224..255; 227..255 are the norm-12 ones
            for (int j0 = E8P_NABS - 32; j0 < E8P_NABS; j0 += 8) {
                __m256 m[E8P_DIM];
                for (int i = 0; i < E8P_DIM; i++) {
                    m[i] = _mm256_mul_ps(_mm256_set1_ps(ayl[i][l]), _mm256_loadu_ps(&t->absv[i][j0]));
                }
                __m256 d = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(m[0], m[1]), _mm256_add_ps(m[2], m[3])),
                                         _mm256_add_ps(_mm256_add_ps(m[4], m[5]), _mm256_add_ps(m[6], m[7])));
                __m256 a = _mm256_min_ps(m[0], m[1]), b = _mm256_min_ps(m[2], m[3]);
                __m256 c = _mm256_min_ps(m[4], m[5]), e = _mm256_min_ps(m[6], m[7]);
                a = _mm256_min_ps(a, b);
                c = _mm256_min_ps(c, e);
                __m256 mn = _mm256_min_ps(a, c);
                __m256 v = _mm256_sub_ps(yyv, _mm256_sub_ps(_mm256_sub_ps(_mm256_mul_ps(_mm256_set1_ps(2.0f), d),
                                                                          _mm256_loadu_ps(&t->norm2[j0])),
                                                            _mm256_mul_ps(_mm256_loadu_ps(&pen[j0]), mn)));
                _mm256_storeu_ps(sc + (j0 - (E8P_NABS - 32)), v);
            }
            for (int j = E8P_NABS_D8; j < E8P_NABS; j++) {
                if (sc[j - (E8P_NABS - 32)] < bc[l]) {
                    bc[l]  = sc[j - (E8P_NABS - 32)];
                    bpl[l] = p;
                    btl[l] = -1;
                    bjl[l] = j;
                }
            }
        }
        best_cost = _mm256_loadu_ps(bc);
        best_p    = _mm256_loadu_si256((const __m256i *) bpl);
        best_type = _mm256_loadu_si256((const __m256i *) btl);
        best_j12  = _mm256_loadu_si256((const __m256i *) bjl);
    }
    // The sorted match of the best type as a pattern: digit of coordinate i from the rank of |y_i|
    // (ties: lower coordinate first), then the code as in e8p_code_of.
    int32_t bp[8], bt[8];
    _mm256_storeu_si256((__m256i *) bp, best_p);
    _mm256_storeu_si256((__m256i *) bt, best_type);
    const __m256 shift = _mm256_blendv_ps(_mm256_set1_ps(0.25f), _mm256_set1_ps(-0.25f),
                                          _mm256_castsi256_ps(_mm256_cmpeq_epi32(best_p, _mm256_set1_epi32(1))));
    __m256 y[E8P_DIM], ay[E8P_DIM];
    for (int i = 0; i < E8P_DIM; i++) {
        y[i]  = _mm256_sub_ps(X[i], shift);
        ay[i] = _mm256_and_ps(y[i], absmask);
    }
    static const int32_t n5tab[8] = { 0, 0, 0, 0, 0, 1, 1, 0 };
    static const int32_t n35tab[8] = { 0, 1, 2, 3, 4, 1, 2, 0 };
    const __m256i n5v = _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *) n5tab), best_type);
    const __m256i n35v = _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *) n35tab), best_type);
    __m256i key = _mm256_setzero_si256(), neg = _mm256_setzero_si256(), ypar = _mm256_setzero_si256();
    __m256i imin = _mm256_setzero_si256();
    __m256  mmin = _mm256_set1_ps(INFINITY);
    for (int i = 0; i < E8P_DIM; i++) {
        __m256i rank = _mm256_setzero_si256();
        for (int k = 0; k < E8P_DIM; k++) {
            if (k == i) {
                continue;
            }
            __m256 c = k < i ? _mm256_cmp_ps(ay[k], ay[i], _CMP_GE_OQ) : _mm256_cmp_ps(ay[k], ay[i], _CMP_GT_OQ);
            rank = _mm256_sub_epi32(rank, _mm256_castps_si256(c));
        }
        // digit = rank < n5 ? 2 : rank < n35 ? 1 : 0
        __m256i d = _mm256_sub_epi32(_mm256_setzero_si256(),
                                     _mm256_add_epi32(_mm256_cmpgt_epi32(n5v, rank), _mm256_cmpgt_epi32(n35v, rank)));
        key = _mm256_or_si256(key, _mm256_slli_epi32(d, 2 * (7 - i)));
        __m256i ni = _mm256_srli_epi32(_mm256_castps_si256(_mm256_cmp_ps(y[i], zero, _CMP_LT_OQ)), 31);
        neg  = _mm256_or_si256(neg, _mm256_slli_epi32(ni, i));
        ypar = _mm256_xor_si256(ypar, ni);
        // m = |y_i| * |a'_i| with |a'_i| = digit + 1/2; the first smallest
        __m256 m = _mm256_mul_ps(ay[i], _mm256_add_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(0.5f)));
        __m256 lt = _mm256_cmp_ps(m, mmin, _CMP_LT_OQ);
        mmin = _mm256_blendv_ps(mmin, m, lt);
        imin = _mm256_blendv_epi8(imin, _mm256_set1_epi32(i), _mm256_castps_si256(lt));
    }
    int32_t keys[8], negs[8], ypars[8], imins[8], bj[8];
    _mm256_storeu_si256((__m256i *) keys, key);
    _mm256_storeu_si256((__m256i *) negs, neg);
    _mm256_storeu_si256((__m256i *) ypars, ypar);
    _mm256_storeu_si256((__m256i *) imins, imin);
    _mm256_storeu_si256((__m256i *) bj, best_j12);
    for (int l = 0; l < n; l++) {
        if (bt[l] < 0) {   // a norm-12 pattern: its code as e8p_encode makes it
            float out[E8P_DIM];
            codes[l] = e8p_code_of(t, x[l], bp[l], bj[l], out);
            continue;
        }
        const int      j = key2idx[keys[l]];
        const uint32_t aneg = (uint32_t) (n3s[bt[l]] & 1);   // the pattern sum 4 + n3 + 2 n5 is odd
        uint32_t       ng = (uint32_t) negs[l];
        if ((uint32_t) ypars[l] ^ aneg) {
            ng ^= 1u << imins[l];
        }
        uint32_t flips = ng ^ (aneg << 7), bits = 0;
        for (int i = 0; i < E8P_DIM; i++) {
            bits |= ((flips >> i) & 1u) << E8P_SH(i);
        }
        bits ^= (uint32_t) bp[l];
        codes[l] = (uint16_t) (((uint32_t) j << 8) | bits);
    }
}

// e8p_decode of one code as a vector: the stored values, negated where the (parity-fixed) sign
// bit is set (a sign flip, as -v), plus the shift: the same floats as the scalar decode.
T_AVX2 static inline __m256 e8p_decode_avx2(const float * dtab, uint32_t code) {
    const __m256i bit = _mm256_setr_epi32(1 << E8P_SH(0), 1 << E8P_SH(1), 1 << E8P_SH(2), 1 << E8P_SH(3),
                                          1 << E8P_SH(4), 1 << E8P_SH(5), 1 << E8P_SH(6), 1 << E8P_SH(7));
    uint32_t       signs = code & 0xFFu;
    const uint32_t p = (uint32_t) __builtin_parity(signs);
    signs ^= p;
    __m256  v = _mm256_loadu_ps(dtab + (size_t) (code >> 8) * E8P_DIM);
    __m256i m = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int) signs), bit), bit);
    v = _mm256_xor_ps(v, _mm256_and_ps(_mm256_castsi256_ps(m), _mm256_set1_ps(-0.0f)));
    return _mm256_add_ps(v, _mm256_set1_ps(p ? -0.25f : 0.25f));
}

T_AVX2 void e8p_round8_avx2(const struct e8p_tables * t, const uint8_t * key2idx, const float * dtab, int bits,
                            const float * const x[8], const float s[8], int n, float * const y[8], uint16_t c1[8],
                            uint16_t c2[8]) {
    float xs[8][E8P_DIM], r[8][E8P_DIM];
    __m256 v1[8];
    for (int l = 0; l < n; l++) {   // x / s as x * (1/s)
        const float inv = s[l] > 0.0f ? 1.0f / s[l] : 0.0f;
        _mm256_storeu_ps(xs[l], _mm256_mul_ps(_mm256_loadu_ps(x[l]), _mm256_set1_ps(inv)));
    }
    e8p_encode8_avx2(t, key2idx, (const float (*)[E8P_DIM]) xs, n, c1);
    for (int l = 0; l < n; l++) {
        v1[l] = e8p_decode_avx2(dtab, c1[l]);
        c2[l] = 0;
    }
    if (bits == 4) {   // residual (x − v1) · rho, its code, value v1 + v2 / rho
        const __m256 rho = _mm256_set1_ps(E8P_RESID_SCALE_4BIT);
        for (int l = 0; l < n; l++) {
            _mm256_storeu_ps(r[l], _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xs[l]), v1[l]), rho));
        }
        e8p_encode8_avx2(t, key2idx, (const float (*)[E8P_DIM]) r, n, c2);
        for (int l = 0; l < n; l++) {
            v1[l] = _mm256_add_ps(v1[l], _mm256_div_ps(e8p_decode_avx2(dtab, c2[l]), rho));
        }
    }
    for (int l = 0; l < n; l++) {
        _mm256_storeu_ps(y[l], _mm256_mul_ps(_mm256_set1_ps(s[l]), v1[l]));
    }
}

#else

void e8p_round8_avx2(const struct e8p_tables * t, const uint8_t * key2idx, const float * dtab, int bits,
                     const float * const x[8], const float s[8], int n, float * const y[8], uint16_t c1[8],
                     uint16_t c2[8]) {
    (void) key2idx;
    (void) dtab;
    for (int l = 0; l < n; l++) {
        e8p_round_scaled(t, bits, s[l], x[l], y[l], &c1[l], &c2[l]);
    }
}

int e8p_have_avx2(void) {
    return 0;
}

void e8p_encode8_avx2(const struct e8p_tables * t, const uint8_t * key2idx, const float x[8][E8P_DIM], int n,
                      uint16_t codes[8]) {
    e8p_encode8_scalar(t, key2idx, x, n, codes);
}

#endif
