// SPDX-License-Identifier: MIT
// Tensors (views and owning allocations) and dtype conversions to and from f32.
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "internal.h"
#include "linalg_cuda.h"

struct caldera_tensor caldera_tensor_view_f32(float * data, int64_t rows, int64_t cols) {
    struct caldera_tensor t = { 0 };
    t.data   = data;
    t.dtype  = CALDERA_DTYPE_F32;
    t.device = CALDERA_DEVICE_CPU;
    t.ndim   = 2;
    t.ne[0]  = rows;
    t.ne[1]  = cols;
    t.ld     = cols;
    return t;
}

int caldera_shape_nelements(int32_t ndim, const int64_t * ne, int64_t * n, int32_t * bad_dim) {
    int64_t nz = 1;   // product of the non-zero dimensions
    int     zero = 0;
    for (int32_t i = 0; i < ndim; i++) {
        if (ne[i] < 0 || (ne[i] > 0 && __builtin_mul_overflow(nz, ne[i], &nz))) {
            if (bad_dim) *bad_dim = i;
            return -1;
        }
        zero |= ne[i] == 0;
    }
    *n = zero ? 0 : nz;
    return 0;
}

int64_t caldera_tensor_nelements(const struct caldera_tensor * t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->ne[i];
    return n;
}

int caldera_tensor_alloc(struct caldera_ctx * ctx, enum caldera_dtype dtype, int32_t ndim,
                         const int64_t * ne, struct caldera_tensor * out) {
    return caldera_tensor_alloc_device(ctx, CALDERA_DEVICE_CPU, dtype, ndim, ne, out);
}

int caldera_tensor_alloc_device(struct caldera_ctx * ctx, enum caldera_device device, enum caldera_dtype dtype,
                                int32_t ndim, const int64_t * ne, struct caldera_tensor * out) {
    memset(out, 0, sizeof(*out));
    if (ndim < 1 || ndim > CALDERA_MAX_DIMS) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "tensor rank %d; allowed: 1..%d", ndim, CALDERA_MAX_DIMS);
    }
    int64_t n;
    int32_t bad;
    if (caldera_shape_nelements(ndim, ne, &n, &bad) < 0) {
        return caldera_ctx_error(ctx, CALDERA_ERR_RANGE, "tensor dimension %d = %lld invalid or too large", (int) bad,
                                 (long long) ne[bad]);
    }
    size_t bytes;
    int rc = caldera_dtype_nbytes(dtype, n, &bytes);
    if (rc < 0) return caldera_ctx_error(ctx, rc, "tensor of %lld %s elements: invalid size", (long long) n, caldera_dtype_name(dtype));
    void * data = NULL;
    if (device == CALDERA_DEVICE_CUDA) {
        if (caldera_dtype_block_elems(dtype) != 1) {
            return caldera_ctx_error(ctx, CALDERA_ERR_UNSUPPORTED, "device tensor of block type %s; allowed: plain types",
                                     caldera_dtype_name(dtype));
        }
        if ((rc = caldera_cuda_alloc(ctx, bytes, &data)) < 0) return rc;   // zero-filled, as on the host
    } else if (device == CALDERA_DEVICE_CPU) {
        data = caldera_calloc(1, bytes ? bytes : 1);
        if (!data) return caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
    } else {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "tensor device %d; allowed: cpu (0), cuda (1)", (int) device);
    }
    out->data   = data;
    out->dtype  = dtype;
    out->device = device;
    out->ndim   = ndim;
    for (int i = 0; i < ndim; i++) out->ne[i] = ne[i];
    out->ld = ndim == 2 ? ne[1] : 0;
    return 0;
}

int caldera_tensor_alloc_f32(struct caldera_ctx * ctx, int64_t rows, int64_t cols, struct caldera_tensor * out) {
    int64_t ne[2] = { rows, cols };
    return caldera_tensor_alloc(ctx, CALDERA_DTYPE_F32, 2, ne, out);
}

void caldera_tensor_free(struct caldera_tensor * t) {
    if (!t) return;
    if (t->device == CALDERA_DEVICE_CUDA) caldera_cuda_free(t->data);
    else caldera_free(t->data);
    memset(t, 0, sizeof(*t));
}

static int64_t row_stride(const struct caldera_tensor * t) {
    return (t->ndim == 2 && t->ld) ? t->ld : (t->ndim >= 1 ? t->ne[t->ndim - 1] : 1);
}

int caldera_tensor_copy(struct caldera_ctx * ctx, struct caldera_tensor * dst, const struct caldera_tensor * src) {
    if (dst->ndim != src->ndim) return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "tensor copy: rank %d vs %d", dst->ndim, src->ndim);
    for (int i = 0; i < src->ndim; i++) {
        if (dst->ne[i] != src->ne[i]) return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "tensor copy: shapes differ in dimension %d", i);
    }
    if (src->device != CALDERA_DEVICE_CPU || dst->device != CALDERA_DEVICE_CPU) return caldera_cuda_copy(ctx, dst, src);
    int64_t cols = src->ndim ? src->ne[src->ndim - 1] : 1;
    int64_t rows = cols ? caldera_tensor_nelements(src) / (cols ? cols : 1) : 0;
    // no elements: nothing to copy, and no row buffer of `cols` floats (a shape such as (0, 2^56)
    // from a file would otherwise allocate 2^58 bytes for nothing)
    if (rows == 0 || cols == 0) return 0;
    int64_t sld = row_stride(src), dld = row_stride(dst);
    size_t  ses = caldera_dtype_block_bytes(src->dtype), des = caldera_dtype_block_bytes(dst->dtype);
    if (src->dtype == dst->dtype) {
        if (caldera_dtype_block_elems(src->dtype) != 1 && (sld != cols || dld != cols)) {
            return caldera_ctx_error(ctx, CALDERA_ERR_UNSUPPORTED, "strided copy of block type %s", caldera_dtype_name(src->dtype));
        }
        if (sld == cols && dld == cols) {
            size_t bytes;
            int rc = caldera_dtype_nbytes(src->dtype, rows * cols, &bytes);
            if (rc < 0) return caldera_ctx_error(ctx, rc, "tensor copy: invalid size");
            memmove(dst->data, src->data, bytes);
            return 0;
        }
        for (int64_t r = 0; r < rows; r++) {
            memmove((char *) dst->data + (size_t) (r * dld) * des, (const char *) src->data + (size_t) (r * sld) * ses,
                    (size_t) cols * ses);
        }
        return 0;
    }
    // Convert row by row through f32; a row buffer only when neither side is f32.
    float * tmp = NULL;
    if (src->dtype != CALDERA_DTYPE_F32 && dst->dtype != CALDERA_DTYPE_F32 &&
        !(tmp = caldera_malloc((size_t) cols * sizeof(float)))) {
        return caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "tensor copy: out of memory for a row of %" PRId64 " floats "
                                 "(%s to %s)", cols, caldera_dtype_name(src->dtype), caldera_dtype_name(dst->dtype));
    }
    int rc = 0;
    for (int64_t r = 0; r < rows && rc == 0; r++) {
        const void * s = (const char *) src->data + (size_t) (r * sld) * ses;
        void *       d = (char *) dst->data + (size_t) (r * dld) * des;
        if (src->dtype == CALDERA_DTYPE_F32) {
            rc = caldera_convert_from_f32(dst->dtype, s, cols, d);
        } else if (dst->dtype == CALDERA_DTYPE_F32) {
            rc = caldera_convert_to_f32(src->dtype, s, cols, d);
        } else {
            rc = caldera_convert_to_f32(src->dtype, s, cols, tmp);
            if (rc == 0) rc = caldera_convert_from_f32(dst->dtype, tmp, cols, d);
        }
    }
    caldera_free(tmp);
    if (rc < 0) {
        return caldera_ctx_error(ctx, rc, "no conversion from %s to %s", caldera_dtype_name(src->dtype),
                                 caldera_dtype_name(dst->dtype));
    }
    return 0;
}

int caldera_tensor_check_finite(const struct caldera_tensor * t, int64_t * first_bad) {
    int64_t cols = t->ndim ? t->ne[t->ndim - 1] : 1;
    int64_t rows = cols ? caldera_tensor_nelements(t) / cols : 0;
    int64_t ld   = row_stride(t);
    if (t->dtype == CALDERA_DTYPE_F32) {
        // all exponent bits set: Inf or NaN; a branch-free scan (vectorised) first, then the
        // first bad element of a row that has one
        for (int64_t r = 0; r < rows; r++) {
            const float * p = (const float *) t->data + r * ld;
            uint32_t any = 0;
            for (int64_t c = 0; c < cols; c++) {
                uint32_t u;
                memcpy(&u, p + c, sizeof(u));
                any |= (uint32_t) ((u & 0x7f800000u) == 0x7f800000u);
            }
            for (int64_t c = 0; any && c < cols; c++) {
                if (!isfinite(p[c])) {
                    if (first_bad) *first_bad = r * cols + c;
                    return CALDERA_ERR_NUMERIC;
                }
            }
        }
    } else if (t->dtype == CALDERA_DTYPE_F64) {
        for (int64_t r = 0; r < rows; r++) {
            const double * p = (const double *) t->data + r * ld;
            for (int64_t c = 0; c < cols; c++) {
                if (!isfinite(p[c])) {
                    if (first_bad) *first_bad = r * cols + c;
                    return CALDERA_ERR_NUMERIC;
                }
            }
        }    } else if (t->dtype == CALDERA_DTYPE_F16 || t->dtype == CALDERA_DTYPE_BF16) {
        // all exponent bits set: Inf or NaN
        const uint16_t mask = t->dtype == CALDERA_DTYPE_F16 ? 0x7c00 : 0x7f80;
        for (int64_t r = 0; r < rows; r++) {
            const uint16_t * p = (const uint16_t *) t->data + r * ld;
            for (int64_t c = 0; c < cols; c++) {
                if ((p[c] & mask) == mask) {
                    if (first_bad) *first_bad = r * cols + c;
                    return CALDERA_ERR_NUMERIC;
                }
            }
        }
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Scalar conversions

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float caldera_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t) (h & 0x8000) << 16;
    uint32_t exp  = (h >> 10) & 0x1f;
    uint32_t man  = h & 0x3ff;
    if (exp == 0) {
        // zero or subnormal: man · 2^-24
        float v = (float) man * 0x1.0p-24f;
        return sign ? -v : v;
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (man << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t caldera_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffff;
    if (ax >= 0x7f800000u) {  // inf or nan
        return (uint16_t) (sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 | ((ax >> 13) & 0x3ff) : 0));
    }
    if (ax >= 0x477ff000u) return (uint16_t) (sign | 0x7c00);  // rounds to >= 65520: inf
    if (ax < 0x38800000u) {
        // subnormal half (or zero): round ax·2^24 to an integer, ties to even
        float v = bits_f32(ax) * 0x1.0p24f;
        float r = rintf(v);  // default rounding mode: nearest even
        return (uint16_t) (sign | (uint32_t) r);
    }
    uint32_t m = ax + 0xfffu + ((ax >> 13) & 1);  // round to nearest even at bit 13
    return (uint16_t) (sign | ((m - 0x38000000u) >> 13));
}

float caldera_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t) h << 16); }

uint16_t caldera_f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffff) > 0x7f800000u) return (uint16_t) ((x >> 16) | 0x40);  // quiet nan
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t) (x >> 16);
}

// OCP FP8: E4M3 (bias 7, no infinities, S.1111.111 = NaN, max 448) and E5M2 (bias 15, IEEE-like).
static float f8_e4m3_to_f32(uint8_t v) {
    uint32_t s = v >> 7, e = (v >> 3) & 0xf, m = v & 7;
    float r;
    if (e == 15 && m == 7) return NAN;
    if (e == 0) r = (float) m * 0x1.0p-9f;
    else        r = ldexpf(1.0f + (float) m / 8.0f, (int) e - 7);
    return s ? -r : r;
}

static float f8_e5m2_to_f32(uint8_t v) { return caldera_f16_to_f32((uint16_t) v << 8); }

static uint8_t f32_to_f8_generic(float f, int ebits, int mbits, int bias, float maxv, int has_inf) {
    uint8_t sign = signbit(f) ? 0x80 : 0;
    float a = fabsf(f);
    if (isnan(f)) return has_inf ? (uint8_t) (sign | 0x7f) : (uint8_t) (sign | 0x7f);
    // with infinities, round to nearest even up to maxv + ulp/2 (IEEE overflow threshold)
    if (has_inf && a >= maxv + ldexpf(1.0f, (1 << ebits) - 3 - bias - mbits)) {
        return (uint8_t) (sign | (((1 << ebits) - 1) << mbits));
    }
    if (!has_inf && a > maxv) {
        return (uint8_t) (sign | ((((1 << ebits) - 1) << mbits) | ((1 << mbits) - 2)));  // saturate to max
    }
    // brute force over the 128 magnitudes: exact nearest, ties to even code
    uint8_t best = 0;
    float   bd = INFINITY;
    for (int c = 0; c < 128; c++) {
        int e = c >> mbits, m = c & ((1 << mbits) - 1);
        float v;
        if (has_inf && e == (1 << ebits) - 1) continue;
        if (!has_inf && e == (1 << ebits) - 1 && m == (1 << mbits) - 1) continue;
        if (e == 0) v = ldexpf((float) m, 1 - bias - mbits);
        else        v = ldexpf(1.0f + (float) m / (float) (1 << mbits), e - bias);
        float d = fabsf(v - a);
        if (d < bd || (d == bd && (c & 1) == 0)) { bd = d; best = (uint8_t) c; }
    }
    return (uint8_t) (sign | best);
}

int caldera_convert_to_f32(enum caldera_dtype type, const void * src, int64_t n, float * dst) {
    switch (type) {
    case CALDERA_DTYPE_F32: memmove(dst, src, (size_t) n * 4); return 0;
    case CALDERA_DTYPE_F64: for (int64_t i = 0; i < n; i++) dst[i] = (float) ((const double *) src)[i]; return 0;
    case CALDERA_DTYPE_F16: for (int64_t i = 0; i < n; i++) dst[i] = caldera_f16_to_f32(((const uint16_t *) src)[i]); return 0;
    case CALDERA_DTYPE_BF16: for (int64_t i = 0; i < n; i++) dst[i] = caldera_bf16_to_f32(((const uint16_t *) src)[i]); return 0;
    case CALDERA_DTYPE_F8_E4M3: for (int64_t i = 0; i < n; i++) dst[i] = f8_e4m3_to_f32(((const uint8_t *) src)[i]); return 0;
    case CALDERA_DTYPE_F8_E5M2: for (int64_t i = 0; i < n; i++) dst[i] = f8_e5m2_to_f32(((const uint8_t *) src)[i]); return 0;
    case CALDERA_DTYPE_I8:  for (int64_t i = 0; i < n; i++) dst[i] = ((const int8_t *) src)[i]; return 0;
    case CALDERA_DTYPE_U8:
    case CALDERA_DTYPE_BOOL: for (int64_t i = 0; i < n; i++) dst[i] = ((const uint8_t *) src)[i]; return 0;
    case CALDERA_DTYPE_I16: for (int64_t i = 0; i < n; i++) dst[i] = ((const int16_t *) src)[i]; return 0;
    case CALDERA_DTYPE_U16: for (int64_t i = 0; i < n; i++) dst[i] = ((const uint16_t *) src)[i]; return 0;
    case CALDERA_DTYPE_I32: for (int64_t i = 0; i < n; i++) dst[i] = (float) ((const int32_t *) src)[i]; return 0;
    case CALDERA_DTYPE_U32: for (int64_t i = 0; i < n; i++) dst[i] = (float) ((const uint32_t *) src)[i]; return 0;
    case CALDERA_DTYPE_I64: for (int64_t i = 0; i < n; i++) dst[i] = (float) ((const int64_t *) src)[i]; return 0;
    case CALDERA_DTYPE_U64: for (int64_t i = 0; i < n; i++) dst[i] = (float) ((const uint64_t *) src)[i]; return 0;
    default: return CALDERA_ERR_UNSUPPORTED;
    }
}

int caldera_convert_from_f32(enum caldera_dtype type, const float * src, int64_t n, void * dst) {
    switch (type) {
    case CALDERA_DTYPE_F32: memmove(dst, src, (size_t) n * 4); return 0;
    case CALDERA_DTYPE_F64: for (int64_t i = 0; i < n; i++) ((double *) dst)[i] = src[i]; return 0;
    case CALDERA_DTYPE_F16: for (int64_t i = 0; i < n; i++) ((uint16_t *) dst)[i] = caldera_f32_to_f16(src[i]); return 0;
    case CALDERA_DTYPE_BF16: for (int64_t i = 0; i < n; i++) ((uint16_t *) dst)[i] = caldera_f32_to_bf16(src[i]); return 0;
    case CALDERA_DTYPE_F8_E4M3:
        for (int64_t i = 0; i < n; i++) ((uint8_t *) dst)[i] = f32_to_f8_generic(src[i], 4, 3, 7, 448.0f, 0);
        return 0;
    case CALDERA_DTYPE_F8_E5M2:
        for (int64_t i = 0; i < n; i++) ((uint8_t *) dst)[i] = f32_to_f8_generic(src[i], 5, 2, 15, 57344.0f, 1);
        return 0;
    default: return CALDERA_ERR_UNSUPPORTED;
    }
}

// ---------------------------------------------------------------------------------------------
// Argument checks shared by plugins (one wording everywhere).

int caldera_check_matrix(const struct caldera_inst * inst, const char * where, const char * what,
                         const struct caldera_tensor * t, int64_t rows, int64_t cols) {
    if (!t || !t->data) return caldera_error(inst, CALDERA_ERR_INVAL, "%s: %s is NULL", where, what);
    if (t->ndim != 2 || t->dtype != CALDERA_DTYPE_F32 || t->device != CALDERA_DEVICE_CPU || t->ld < t->ne[1]) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "%s: %s must be a 2-d f32 CPU tensor with ld >= cols (got %d-d %s%s)",
                             where, what, (int) t->ndim, caldera_dtype_name(t->dtype),
                             t->device != CALDERA_DEVICE_CPU ? " on a device" : t->ndim == 2 && t->ld < t->ne[1] ? ", ld < cols" : "");
    }
    if ((rows >= 0 && t->ne[0] != rows) || (cols >= 0 && t->ne[1] != cols)) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "%s: %s is %" PRId64 "x%" PRId64 "; allowed: %" PRId64 "x%" PRId64, where,
                             what, t->ne[0], t->ne[1], rows >= 0 ? rows : t->ne[0], cols >= 0 ? cols : t->ne[1]);
    }
    return 0;
}

int caldera_check_finite(const struct caldera_inst * inst, const char * where, const char * what,
                         const struct caldera_tensor * t) {
    if (caldera_tensor_check_finite(t, NULL) == 0) return 0;
    int64_t ld = row_stride(t), cols = t->ndim >= 2 ? t->ne[1] : caldera_tensor_nelements(t);
    int64_t rows = cols ? caldera_tensor_nelements(t) / cols : 0;
    for (int64_t i = 0; t->dtype == CALDERA_DTYPE_F32 && i < rows; i++) {
        const float * r = (const float *) t->data + i * ld;
        for (int64_t j = 0; j < cols; j++) {
            if (!isfinite(r[j])) {
                return caldera_error(inst, CALDERA_ERR_NUMERIC, "%s: %s has a NaN or Inf at (%" PRId64 ", %" PRId64 "); the input must be finite",
                                     where, what, i, j);
            }
        }
    }
    return caldera_error(inst, CALDERA_ERR_NUMERIC, "%s: %s has a NaN or Inf; the input must be finite", where, what);
}
