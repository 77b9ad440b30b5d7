// SPDX-License-Identifier: MIT
// gguf-quants.c: the table of ggml tensor types and the dequantization of ggml's block
// formats to f32, written from the published block layouts (ggml-common.h block_* structs,
// described again beside each function). All data is little-endian and read with memcpy, so
// blocks may sit at any address.
#include "gguf-quants.h"

#include <string.h>

#define QK    32   // elements per block of the 32-element types
#define QK_K 256   // elements per super-block of the k-quants

static inline float ld_f16(const uint8_t * p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return caldera_f16_to_f32(h);
}

static inline float ld_f32(const uint8_t * p) {
    float f;
    memcpy(&f, p, 4);
    return f;
}

// Q4_0, 18 bytes: d (f16), qs[16]. Element j < 16 is the low nibble of qs[j], element j + 16
// the high nibble; x = d * (q - 8).
static void deq_q4_0(const uint8_t * b, float * y) {
    const float     d  = ld_f16(b);
    const uint8_t * qs = b + 2;
    for (int j = 0; j < QK / 2; j++) {
        y[j]          = d * (float) ((int) (qs[j] & 0x0F) - 8);
        y[j + QK / 2] = d * (float) ((int) (qs[j] >> 4) - 8);
    }
}

// Q4_1, 20 bytes: d (f16), m (f16), qs[16] (nibbles as Q4_0); x = d * q + m.
static void deq_q4_1(const uint8_t * b, float * y) {
    const float     d  = ld_f16(b);
    const float     m  = ld_f16(b + 2);
    const uint8_t * qs = b + 4;
    for (int j = 0; j < QK / 2; j++) {
        y[j]          = d * (float) (qs[j] & 0x0F) + m;
        y[j + QK / 2] = d * (float) (qs[j] >> 4) + m;
    }
}

// Q5_0, 22 bytes: d (f16), qh (u32: bit j = 5th bit of element j), qs[16] (low 4 bits as
// Q4_0); x = d * (q - 16).
static void deq_q5_0(const uint8_t * b, float * y) {
    const float d = ld_f16(b);
    uint32_t    qh;
    memcpy(&qh, b + 2, 4);
    const uint8_t * qs = b + 6;
    for (int j = 0; j < QK / 2; j++) {
        const int lo = (qs[j] & 0x0F) | (int) (((qh >> j) & 1u) << 4);
        const int hi = (qs[j] >> 4) | (int) (((qh >> (j + QK / 2)) & 1u) << 4);
        y[j]          = d * (float) (lo - 16);
        y[j + QK / 2] = d * (float) (hi - 16);
    }
}

// Q5_1, 24 bytes: d (f16), m (f16), qh (u32), qs[16]; x = d * q + m.
static void deq_q5_1(const uint8_t * b, float * y) {
    const float d = ld_f16(b);
    const float m = ld_f16(b + 2);
    uint32_t    qh;
    memcpy(&qh, b + 4, 4);
    const uint8_t * qs = b + 8;
    for (int j = 0; j < QK / 2; j++) {
        const int lo = (qs[j] & 0x0F) | (int) (((qh >> j) & 1u) << 4);
        const int hi = (qs[j] >> 4) | (int) (((qh >> (j + QK / 2)) & 1u) << 4);
        y[j]          = d * (float) lo + m;
        y[j + QK / 2] = d * (float) hi + m;
    }
}

// Q8_0, 34 bytes: d (f16), qs[32] (i8); x = d * q.
static void deq_q8_0(const uint8_t * b, float * y) {
    const float d = ld_f16(b);
    for (int j = 0; j < QK; j++) {
        y[j] = d * (float) (int8_t) b[2 + j];
    }
}

// Q8_1, 36 bytes: d (f16), s (f16, = d * sum(q), unused here), qs[32] (i8); x = d * q.
static void deq_q8_1(const uint8_t * b, float * y) {
    const float d = ld_f16(b);
    for (int j = 0; j < QK; j++) {
        y[j] = d * (float) (int8_t) b[4 + j];
    }
}

// Q2_K, 84 bytes: scales[16] (low nibble: scale, high nibble: min, per 16 elements),
// qs[64] (2-bit), d (f16), dmin (f16). Element i lives in byte qs[32 * (i / 128) + i % 32] at
// bit 2 * ((i % 128) / 32); x = d * sc * q - dmin * m.
static void deq_q2_k(const uint8_t * b, float * y) {
    const uint8_t * sc   = b;
    const uint8_t * qs   = b + 16;
    const float     d    = ld_f16(b + 80);
    const float     dmin = ld_f16(b + 82);
    for (int g = 0; g < QK_K / 16; g++) {
        const float dl = d * (float) (sc[g] & 0x0F);
        const float ml = dmin * (float) (sc[g] >> 4);
        for (int k = 0; k < 16; k++) {
            const int i = 16 * g + k;
            const int q = (qs[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3;
            y[i] = dl * (float) q - ml;
        }
    }
}

// Q3_K, 110 bytes: hmask[32], qs[64] (low 2 bits, as Q2_K), scales[12] (16 signed 6-bit
// scales), d (f16). High bit of element i: bit i / 32 of hmask[i % 32]; when it is 0 the
// value is q - 4. Scale j: low 4 bits from scales[j % 8] (nibble j / 8), high 2 bits from
// scales[8 + j % 4] (bits 2 * (j / 4)), minus 32. x = d * scale * q.
static void deq_q3_k(const uint8_t * b, float * y) {
    const uint8_t * hm = b;
    const uint8_t * qs = b + 32;
    const uint8_t * sc = b + 96;
    const float     d  = ld_f16(b + 108);
    for (int g = 0; g < QK_K / 16; g++) {
        const int   lo = (sc[g % 8] >> (4 * (g / 8))) & 0x0F;
        const int   hi = (sc[8 + g % 4] >> (2 * (g / 4))) & 0x03;
        const float dl = d * (float) ((lo | (hi << 4)) - 32);
        for (int k = 0; k < 16; k++) {
            const int i = 16 * g + k;
            int       q = (qs[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3;
            if (!((hm[i % 32] >> (i / 32)) & 1)) {
                q -= 4;
            }
            y[i] = dl * (float) q;
        }
    }
}

// The 12 scale bytes of Q4_K and Q5_K hold 8 (scale, min) pairs of 6 bits: for j < 4,
// scale = s[j] & 63, min = s[j + 4] & 63; for j >= 4, scale = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4,
// min = (s[j + 4] >> 4) | (s[j] >> 6) << 4.
static inline void k_scale_min(const uint8_t * s, int j, int * sc, int * m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m  = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        *m  = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// Q4_K, 144 bytes: d (f16), dmin (f16), scales[12], qs[128]. Sub-block j (32 elements) takes
// nibble j % 2 of qs[32 * (j / 2) + l]; x = d * sc_j * q - dmin * m_j.
static void deq_q4_k(const uint8_t * b, float * y) {
    const float     d    = ld_f16(b);
    const float     dmin = ld_f16(b + 2);
    const uint8_t * s    = b + 4;
    const uint8_t * qs   = b + 16;
    for (int j = 0; j < QK_K / 32; j++) {
        int sc, m;
        k_scale_min(s, j, &sc, &m);
        const float dl = d * (float) sc;
        const float ml = dmin * (float) m;
        for (int l = 0; l < 32; l++) {
            const int q = (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0x0F;
            y[32 * j + l] = dl * (float) q - ml;
        }
    }
}

// Q5_K, 176 bytes: d (f16), dmin (f16), scales[12], qh[32], qs[128]. Low 4 bits as Q4_K,
// 5th bit of sub-block j element l: bit j of qh[l].
static void deq_q5_k(const uint8_t * b, float * y) {
    const float     d    = ld_f16(b);
    const float     dmin = ld_f16(b + 2);
    const uint8_t * s    = b + 4;
    const uint8_t * qh   = b + 16;
    const uint8_t * qs   = b + 48;
    for (int j = 0; j < QK_K / 32; j++) {
        int sc, m;
        k_scale_min(s, j, &sc, &m);
        const float dl = d * (float) sc;
        const float ml = dmin * (float) m;
        for (int l = 0; l < 32; l++) {
            const int q = ((qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0x0F) | (((qh[l] >> j) & 1) << 4);
            y[32 * j + l] = dl * (float) q - ml;
        }
    }
}

// Q6_K, 210 bytes: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (i8), d (f16).
// Element i, h = i / 128, w = i % 128: low bits = nibble w / 64 of ql[64 h + w % 64], high bits =
// bits 2 (w / 32) of qh[32 h + w % 32]; x = d * scales[i / 16] * (q - 32).
static void deq_q6_k(const uint8_t * b, float * y) {
    const uint8_t * ql = b;
    const uint8_t * qh = b + 128;
    const int8_t *  sc = (const int8_t *) (b + 192);
    const float     d  = ld_f16(b + 208);
    for (int g = 0; g < QK_K / 16; g++) {
        const float dl = d * (float) sc[g];
        for (int k = 0; k < 16; k++) {
            const int i  = 16 * g + k;
            const int h  = i / 128;
            const int w  = i % 128;
            const int lo = (ql[64 * h + w % 64] >> (4 * (w / 64))) & 0x0F;
            const int hi = (qh[32 * h + w % 32] >> (2 * (w / 32))) & 0x03;
            y[i] = dl * (float) ((lo | (hi << 4)) - 32);
        }
    }
}

// Q8_K, 292 bytes: d (f32), qs[256] (i8), bsums[16] (i16, unused here); x = d * q.
static void deq_q8_k(const uint8_t * b, float * y) {
    const float d = ld_f32(b);
    for (int j = 0; j < QK_K; j++) {
        y[j] = d * (float) (int8_t) b[4 + j];
    }
}

#define PLAIN(id, nm, dt, sz)       { id, nm, 1, dt, 1, sz, NULL }
#define BLOCK(id, nm, dt, n, sz, f) { id, nm, 1, dt, n, sz, f }
#define KNOWN(id, nm)               { id, nm, 0, CALDERA_DTYPE_COUNT, 0, 0, NULL }

// Ids and names as in ggml's enum ggml_type (and gguf-py's GGMLQuantizationType). Ids not
// listed (4, 5, 31-33, 36-38: removed from ggml; anything newer) are reported as unknown.
static const struct gguf_type gguf_types[] = {
    PLAIN( 0, "F32",  CALDERA_DTYPE_F32, 4),
    PLAIN( 1, "F16",  CALDERA_DTYPE_F16, 2),
    BLOCK( 2, "Q4_0", CALDERA_DTYPE_Q4_0, QK, 18, deq_q4_0),
    BLOCK( 3, "Q4_1", CALDERA_DTYPE_Q4_1, QK, 20, deq_q4_1),
    BLOCK( 6, "Q5_0", CALDERA_DTYPE_Q5_0, QK, 22, deq_q5_0),
    BLOCK( 7, "Q5_1", CALDERA_DTYPE_Q5_1, QK, 24, deq_q5_1),
    BLOCK( 8, "Q8_0", CALDERA_DTYPE_Q8_0, QK, 34, deq_q8_0),
    BLOCK( 9, "Q8_1", CALDERA_DTYPE_Q8_1, QK, 36, deq_q8_1),
    BLOCK(10, "Q2_K", CALDERA_DTYPE_Q2_K, QK_K, 84, deq_q2_k),
    BLOCK(11, "Q3_K", CALDERA_DTYPE_Q3_K, QK_K, 110, deq_q3_k),
    BLOCK(12, "Q4_K", CALDERA_DTYPE_Q4_K, QK_K, 144, deq_q4_k),
    BLOCK(13, "Q5_K", CALDERA_DTYPE_Q5_K, QK_K, 176, deq_q5_k),
    BLOCK(14, "Q6_K", CALDERA_DTYPE_Q6_K, QK_K, 210, deq_q6_k),
    BLOCK(15, "Q8_K", CALDERA_DTYPE_Q8_K, QK_K, 292, deq_q8_k),
    KNOWN(16, "IQ2_XXS"),
    KNOWN(17, "IQ2_XS"),
    KNOWN(18, "IQ3_XXS"),
    KNOWN(19, "IQ1_S"),
    KNOWN(20, "IQ4_NL"),
    KNOWN(21, "IQ3_S"),
    KNOWN(22, "IQ2_S"),
    KNOWN(23, "IQ4_XS"),
    PLAIN(24, "I8",   CALDERA_DTYPE_I8, 1),
    PLAIN(25, "I16",  CALDERA_DTYPE_I16, 2),
    PLAIN(26, "I32",  CALDERA_DTYPE_I32, 4),
    PLAIN(27, "I64",  CALDERA_DTYPE_I64, 8),
    PLAIN(28, "F64",  CALDERA_DTYPE_F64, 8),
    KNOWN(29, "IQ1_M"),
    PLAIN(30, "BF16", CALDERA_DTYPE_BF16, 2),
    KNOWN(34, "TQ1_0"),
    KNOWN(35, "TQ2_0"),
    KNOWN(39, "MXFP4"),
    KNOWN(40, "NVFP4"),
    KNOWN(41, "Q1_0"),
};

#define N_TYPES ((int) (sizeof(gguf_types) / sizeof(gguf_types[0])))

const struct gguf_type * gguf_type_by_id(uint32_t id) {
    for (int i = 0; i < N_TYPES; i++) {
        if (gguf_types[i].id == id) {
            return &gguf_types[i];
        }
    }
    return NULL;
}

const struct gguf_type * gguf_type_by_dtype(enum caldera_dtype dt) {
    for (int i = 0; i < N_TYPES; i++) {
        if (gguf_types[i].supported && gguf_types[i].dtype == dt) {
            return &gguf_types[i];
        }
    }
    return NULL;
}

const char * gguf_supported_names(void) {
    return "F32, F16, BF16, F64, I8, I16, I32, I64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, "
           "Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K";
}

void gguf_to_f32(const struct gguf_type * t, enum caldera_dtype dt, const uint8_t * src, float * dst,
                 int64_t n) {
    if (t->deq) {
        for (int64_t b = 0; b < n / t->blck; b++) {
            t->deq(src + (size_t) b * t->bytes, dst + b * t->blck);
        }
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        const uint8_t * p = src + (size_t) i * t->bytes;
        switch (dt) {
        case CALDERA_DTYPE_F32:  dst[i] = ld_f32(p); break;
        case CALDERA_DTYPE_F16:  dst[i] = ld_f16(p); break;
        case CALDERA_DTYPE_BF16: { uint16_t h; memcpy(&h, p, 2); dst[i] = caldera_bf16_to_f32(h); break; }
        case CALDERA_DTYPE_F64:  { double v; memcpy(&v, p, 8); dst[i] = (float) v; break; }
        case CALDERA_DTYPE_I8:   dst[i] = (float) (int8_t) p[0]; break;
        case CALDERA_DTYPE_I16:  { int16_t v; memcpy(&v, p, 2); dst[i] = (float) v; break; }
        case CALDERA_DTYPE_I32:  { int32_t v; memcpy(&v, p, 4); dst[i] = (float) v; break; }
        case CALDERA_DTYPE_I64:  { int64_t v; memcpy(&v, p, 8); dst[i] = (float) v; break; }
        case CALDERA_DTYPE_U8:   dst[i] = (float) p[0]; break;
        case CALDERA_DTYPE_BOOL: dst[i] = p[0] ? 1.0f : 0.0f; break;
        case CALDERA_DTYPE_U16:  { uint16_t v; memcpy(&v, p, 2); dst[i] = (float) v; break; }
        case CALDERA_DTYPE_U32:  { uint32_t v; memcpy(&v, p, 4); dst[i] = (float) v; break; }
        case CALDERA_DTYPE_U64:  { uint64_t v; memcpy(&v, p, 8); dst[i] = (float) v; break; }
        default:                 dst[i] = 0.0f; break;   // not reached: only supported types come here
        }
    }
}
