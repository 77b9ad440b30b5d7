// SPDX-License-Identifier: MIT
// kern-c.c: the portable C variant of the kernels (any CPU), and the reference for the SIMD
// variants' structure. Also provides the uniform row decoder that the SIMD variants fall back to
// for bit widths and layouts they do not special-case.
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

// Σ_k d_k <tab[codes] bytes, xq_k> over one row of codes (integer sums per block, then scaled).
static float c_q8_row(const struct kw_q8x * q, const uint16_t * c, int64_t nb) {
    float d = 0.0f;
    for (int64_t b0 = 0; b0 < nb; b0 += KW_Q8_BLOCK / 8) {
        int32_t isum = 0;
        for (int64_t b = b0; b < b0 + KW_Q8_BLOCK / 8; b++) {
            const uint8_t * t = (const uint8_t *) &q->tab[c[b]];
            const int8_t *  x = q->xq + 8 * b;
            for (int j = 0; j < 8; j++) {
                isum += (int32_t) t[j] * (int32_t) x[j];
            }
        }
        d += q->dl[2 * b0] * (float) isum;
    }
    return d - q->corr;
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
    .e8p_q8_row     = c_q8_row,
    .rht_core       = caldera_kw_rht_core_c,
};
