// SPDX-License-Identifier: MIT
// kern-c.c: the portable C variant of the kernels (any CPU), and the reference for the SIMD
// variants' structure. Also provides the uniform row decoder that the SIMD variants fall back to
// for bit widths and layouts they do not special-case.
#include <math.h>

#include "kernels-impl.h"

static void c_e8p_gemv(const struct caldera_kw * w, const float * xp, const float * xs, int64_t r0, int64_t r1,
                       float * y, int acc) {
    const int64_t    nb   = w->cols / 8;
    const float *    grid = w->e8_grid;
    const float      irho = w->bits > 2 ? 1.0f / w->e8_rho : 0.0f;
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t * c1 = w->codes + r * nb;
        float d1 = 0.0f, d2 = 0.0f, sh = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            uint32_t      neg;
            uint32_t      s = kw_e8p_signs(c1[b], &neg);
            const float * g = grid + (c1[b] >> 8) * 8;
            const float * x = xp + 8 * b;
            for (int j = 0; j < 8; j++) {
                d1 += ((s >> j) & 1u ? -g[j] : g[j]) * x[j];
            }
            sh += neg ? -xs[b] : xs[b];
        }
        d1 += 0.25f * sh;
        if (w->bits == 4) {
            const uint16_t * c2 = (const uint16_t *) w->codes2 + r * nb;
            float sh2 = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                uint32_t      neg;
                uint32_t      s = kw_e8p_signs(c2[b], &neg);
                const float * g = grid + (c2[b] >> 8) * 8;
                const float * x = xp + 8 * b;
                for (int j = 0; j < 8; j++) {
                    d2 += ((s >> j) & 1u ? -g[j] : g[j]) * x[j];
                }
                sh2 += neg ? -xs[b] : xs[b];
            }
            d2 += 0.25f * sh2;
        } else if (w->bits == 3) {
            const uint8_t * c2 = (const uint8_t *) w->codes2 + r * nb;
            for (int64_t b = 0; b < nb; b++) {
                const float * g = w->e8_rvq1 + c2[b] * 8;
                const float * x = xp + 8 * b;
                for (int j = 0; j < 8; j++) {
                    d2 += g[j] * x[j];
                }
            }
        }
        float v = kw_e8p_scale(w, r) * (d1 + d2 * irho);
        y[r - r0] = acc ? y[r - r0] + v : v;
    }
}

// Lanes of Σ u·xq (kernels-impl.h, struct kw_q8s): u = ±g + sh + 17 per nibble of each codeword,
// xq from the period's planes; the reference of the SIMD variants (the same integers).
void caldera_kw_e8p_q8_lanes_c(const struct kw_q8s * q, const uint16_t * codes, int64_t ncw, int32_t * lanes) {
    const int64_t ng = (ncw + 63) / 64;
    memset(lanes, 0, (size_t) (16 * ng) * sizeof(int32_t));
    for (int64_t c = 0; c < ncw; c++) {
        const int64_t  i = c % 64, p = (c / 64) % q->period;
        const uint16_t code = codes[c];
        uint32_t       neg;
        const uint32_t s = kw_e8p_signs(code, &neg);
        const int32_t  base = KW_Q8_OFFSET + (neg ? -1 : 1);
        int32_t        sum = 0, sum2 = 0;
        for (int e = 0; e < 8; e++) {
            const int32_t g = q->tabs[e * 256 + (code >> 8)];
            const int32_t u = base + ((s >> e) & 1u ? -g : g);
            sum += u * (int32_t) q->xpl[(p * 8 + e) * 64 + i];
            sum2 += u * (int32_t) q->xpl2[(p * 8 + e) * 64 + i];
        }
        lanes[c / 4] += 254 * sum + sum2;
    }
}

void caldera_kw_e8p_q8t_cols_c(const int8_t * tabs, const int8_t * mags, const uint16_t * codes, int64_t m, int64_t nb,
                               const int8_t * tq, const int8_t * tq2, int32_t * out, int32_t * out2) {
    (void) mags;   // the same sums from the 256-entry tables
    memset(out, 0, (size_t) (8 * nb) * sizeof(int32_t));
    memset(out2, 0, (size_t) (8 * nb) * sizeof(int32_t));
    for (int64_t r = 0; r < m; r++) {
        for (int64_t b = 0; b < nb; b++) {
            const uint16_t code = codes[r * nb + b];
            uint32_t       neg;
            const uint32_t s = kw_e8p_signs(code, &neg);
            const int32_t  base = KW_Q8_OFFSET + (neg ? -1 : 1);
            for (int e = 0; e < 8; e++) {
                const int32_t g = tabs[e * 256 + (code >> 8)];
                const int32_t u = base + ((s >> e) & 1u ? -g : g);
                out[8 * b + e] += u * (int32_t) tq[r];
                out2[8 * b + e] += u * (int32_t) tq2[r];
            }
        }
    }
}

// xq (cols + 512): x / d_k rounded, d_k = max|x| of the 32-column block k / 127 (dl), in nibble
// order (xq[8b + e] = q of column 8b + PERM(e)), its first 64 codewords repeated after the end (so
// that any 64 consecutive codewords from a start < nb are contiguous); the residual's xq2 likewise
// (step d_k/254); and the period's planes of both. Returns 17 Σ_k (d_k Σ xq_k + d2_k Σ xq2_k).
float caldera_kw_q8_prepare_c(const float * x, int64_t cols, int64_t period, int8_t * xq, int8_t * xpl, float * dl) {
    const int64_t nb = cols / 8, nk = cols / 32;
    int8_t *      xq2 = xq + cols + 512;
    float         corr = 0.0f;
    for (int64_t k = 0; k < nk; k++) {
        float amax = 0.0f;
        for (int64_t c = 32 * k; c < 32 * k + 32; c++) {
            amax = fabsf(x[c]) > amax ? fabsf(x[c]) : amax;
        }
        const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f, id2 = 254.0f * id;
        int32_t     s = 0, s2 = 0;
        for (int64_t b = 4 * k; b < 4 * k + 4; b++) {
            for (int e = 0; e < 8; e++) {
                const float xv = x[8 * b + KW_E8P_PERM(e)];
                int32_t     q  = (int32_t) lrintf(xv * id);
                q = q > 127 ? 127 : q < -127 ? -127 : q;
                int32_t q2 = (int32_t) lrintf((xv - (float) q * d) * id2);
                q2 = q2 > 127 ? 127 : q2 < -127 ? -127 : q2;
                xq[8 * b + e]  = (int8_t) q;
                xq2[8 * b + e] = (int8_t) q2;
                s += q;
                s2 += q2;
            }
        }
        dl[k]      = d;
        dl[nk + k] = d / 254.0f;
        corr += dl[k] * (float) (KW_Q8_OFFSET * s) + dl[nk + k] * (float) (KW_Q8_OFFSET * s2);
    }
    for (int h = 0; h < 2; h++) {
        int8_t * xh = h ? xq2 : xq;
        for (int64_t b = nb; b < nb + 64; b++) {
            memcpy(xh + 8 * b, xh + 8 * (b % nb), 8);
        }
        for (int64_t p = 0; p < period; p++) {
            const int8_t * src = xh + 8 * ((64 * p) % nb);
            int8_t *       dst = xpl + h * period * 512 + p * 512;
            for (int64_t i = 0; i < 64; i++) {
                for (int e = 0; e < 8; e++) {
                    dst[e * 64 + i] = src[8 * i + e];
                }
            }
        }
    }
    return corr;
}

void caldera_kw_sign_scale_c(const uint8_t * sign, const float * x, int64_t n, float scale, float * o, int acc) {
    for (int64_t c = 0; c < n; c++) {
        const float v = (sign[c >> 3] >> (c & 7)) & 1u ? -scale * x[c] : scale * x[c];
        o[c] = acc ? o[c] + v : v;
    }
}

void caldera_kw_q8_rowdots_c(const int32_t * lanes, int64_t nrows, int64_t nl, const float * dl, float * out) {
    for (int64_t r = 0; r < nrows; r++) {
        float s = 0.0f;
        for (int64_t k = 0; k < nl; k++) {
            s += dl[k] * (float) lanes[r * nl + k];
        }
        out[r] = s;
    }
}

static void c_e8p_decode(const struct caldera_kw * w, int64_t r0, int64_t r1, float * dst, int64_t ld) {
    const int64_t nb   = w->cols / 8;
    const float   irho = w->bits > 2 ? 1.0f / w->e8_rho : 0.0f;
    for (int64_t r = r0; r < r1; r++) {
        const float s = kw_e8p_scale(w, r);
        float *     o = dst + (r - r0) * ld;
        for (int64_t b = 0; b < nb; b++) {
            const int64_t k = r * nb + b;
            for (int j = 0; j < 8; j++) {
                float v = kw_e8p_value(w->e8_grid, w->codes[k], j);
                if (w->bits == 4) {
                    v += kw_e8p_value(w->e8_grid, ((const uint16_t *) w->codes2)[k], j) * irho;
                } else if (w->bits == 3) {
                    v += w->e8_rvq1[((const uint8_t *) w->codes2)[k] * 8 + j] * irho;
                }
                o[8 * b + KW_E8P_PERM(j)] = s * v;
            }
        }
    }
}

// Generic uniform row decoder (every bit width, granularity and rule), also the SIMD variants'
// fallback.
void caldera_kw_uni_decode_row_c(const struct caldera_kw * w, int64_t r, int64_t c0, int64_t c1, float * dst) {
    const int64_t  n      = w->cols;
    const uint64_t nbytes = ((uint64_t) w->rows * (uint64_t) n * (uint64_t) w->bits + 7) / 8;
    const float    half   = kw_uni_half(w->rule, w->bits);
    const int64_t  ngr    = w->gran == CALDERA_KW_GRAN_GROUP ? (n + w->group_size - 1) / w->group_size : 0;
    for (int64_t c = c0; c < c1; c++) {
        int64_t g;
        switch (w->gran) {
        case CALDERA_KW_GRAN_TENSOR: g = 0; break;
        case CALDERA_KW_GRAN_ROW:    g = r; break;
        case CALDERA_KW_GRAN_COLUMN: g = c; break;
        default:                     g = r * ngr + c / w->group_size; break;
        }
        uint32_t k = kw_uni_code(w->stream, nbytes, (uint64_t) (r * n + c), w->bits);
        float    d = kw_uni_param(w, w->scale, g);
        float    h = w->zero ? (float) w->zero[g] : half;
        dst[c - c0] = kw_uni_value(k, h, d);
    }
}

static void c_f16_gemv(const struct caldera_kw * w, const float * x, int64_t r0, int64_t r1, float * y, int acc) {
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t * row = (const uint16_t *) w->data + r * w->ld;
        float d = 0.0f;
        for (int64_t c = 0; c < w->cols; c++) {
            d += kw_f16_to_f32(row[c]) * x[c];
        }
        y[r - r0] = acc ? y[r - r0] + d : d;
    }
}

static void c_f16_decode(const struct caldera_kw * w, int64_t r0, int64_t r1, float * dst, int64_t ld) {
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t * row = (const uint16_t *) w->data + r * w->ld;
        for (int64_t c = 0; c < w->cols; c++) {
            dst[(r - r0) * ld + c] = kw_f16_to_f32(row[c]);
        }
    }
}

static float c_dot(const float * a, const float * b, int64_t n) {
    float d = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        d += a[i] * b[i];
    }
    return d;
}

static void c_fwht(float * x, int64_t n) {
    for (int64_t h = 1; h < n; h <<= 1) {
        for (int64_t i = 0; i < n; i += h << 1) {
            for (int64_t j = i; j < i + h; j++) {
                float u = x[j], v = x[j + h];
                x[j]     = u + v;
                x[j + h] = u - v;
            }
        }
    }
}

static void c_axpy(float a, const float * x, float * y, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        y[i] += a * x[i];
    }
}

void caldera_kw_rht_core_c(const float * h, int64_t k, int64_t p2, const float * src, float * dst, int trans,
                           float scale) {
    for (int64_t a = 0; a < k; a++) {
        float * d = dst + a * p2;
        for (int64_t l = 0; l < p2; l++) {
            d[l] = 0.0f;
        }
        for (int64_t b = 0; b < k; b++) {
            const float   hv = (trans ? h[b * k + a] : h[a * k + b]) * scale;
            const float * s  = src + b * p2;
            for (int64_t l = 0; l < p2; l++) {
                d[l] += hv * s[l];
            }
        }
    }
}

const struct kw_variant caldera_kw_variant_c = {
    .e8p_gemv       = c_e8p_gemv,
    .e8p_decode     = c_e8p_decode,
    .uni_decode_row = caldera_kw_uni_decode_row_c,
    .f16_gemv       = c_f16_gemv,
    .f16_decode     = c_f16_decode,
    .dot            = c_dot,
    .fwht           = c_fwht,
    .axpy           = c_axpy,
    .e8p_q8_lanes   = caldera_kw_e8p_q8_lanes_c,
    .q8_prepare     = caldera_kw_q8_prepare_c,
    .e8p_q8t_cols   = caldera_kw_e8p_q8t_cols_c,
    .q8_rowdots     = caldera_kw_q8_rowdots_c,
    .rht_core       = caldera_kw_rht_core_c,
    .sign_scale     = caldera_kw_sign_scale_c,
};
