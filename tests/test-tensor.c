// SPDX-License-Identifier: MIT
// Tensor and dtype tests (tensor.c, util.c): sizes of plain and block types, allocation and its
// failure injection, copies over strided views, check_finite, and the f16 / bf16 / f8 conversions
// checked exhaustively against decoders written independently here from the format definitions.
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <string.h>

static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

// IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
static double ref_f16(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

// OCP FP8 E4M3 (bias 7, no infinities, S.1111.111 = NaN) and E5M2 (bias 15, IEEE-like).
static double ref_e4m3(uint8_t c) {
    int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
    double v = (e == 15 && m == 7) ? NAN : e == 0 ? ldexp(m, -9) : ldexp(8 + m, e - 10);
    return s ? -v : v;
}

static double ref_e5m2(uint8_t c) {
    int s = c >> 7, e = (c >> 2) & 31, m = c & 3;
    double v = e == 31 ? (m ? NAN : INFINITY) : e == 0 ? ldexp(m, -16) : ldexp(4 + m, e - 17);
    return s ? -v : v;
}

static uint8_t to_f8(enum caldera_dtype t, float f) {
    uint8_t c = 0xaa;
    ck_assert_int_eq(caldera_convert_from_f32(t, &f, 1, &c), 0);
    return c;
}

static float from_f8(enum caldera_dtype t, uint8_t c) {
    float f = 0;
    ck_assert_int_eq(caldera_convert_to_f32(t, &c, 1, &f), 0);
    return f;
}

// ---------------------------------------------------------------------------------------------
// f16

START_TEST(test_f16_all_values) {
    for (uint32_t h = 0; h < 65536; h++) {
        float f = caldera_f16_to_f32((uint16_t) h);
        double r = ref_f16((uint16_t) h);
        if (isnan(r)) {
            ck_assert_msg(isnan(f), "0x%04x must decode to NaN", h);
            uint16_t back = caldera_f32_to_f16(f);
            ck_assert_msg((back & 0x7c00) == 0x7c00 && (back & 0x3ff) != 0, "NaN 0x%04x came back as 0x%04x", h, back);
            ck_assert_int_eq(back & 0x8000, h & 0x8000);
        } else {
            ck_assert_msg((double) f == r && !signbit(f) == !signbit(r), "0x%04x: %g vs %g", h, (double) f, r);
            ck_assert_msg(caldera_f32_to_f16(f) == h, "round trip of 0x%04x gave 0x%04x", h, caldera_f32_to_f16(f));
        }
    }
}
END_TEST

START_TEST(test_f16_rounding) {
    // ties to even at 1: ulp is 2^-10
    ck_assert_uint_eq(caldera_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);
    ck_assert_uint_eq(caldera_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);
    ck_assert_uint_eq(caldera_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
    ck_assert_uint_eq(caldera_f32_to_f16(-(1.0f + 0x1p-11f)), 0xbc00);
    // overflow: 65520 is the midpoint between 65504 and 2^16 and goes to inf
    ck_assert_uint_eq(caldera_f32_to_f16(65520.0f), 0x7c00);
    ck_assert_uint_eq(caldera_f32_to_f16(-65520.0f), 0xfc00);
    ck_assert_uint_eq(caldera_f32_to_f16(65519.0f), 0x7bff);
    ck_assert_uint_eq(caldera_f32_to_f16(65504.0f), 0x7bff);
    ck_assert_uint_eq(caldera_f32_to_f16(1e10f), 0x7c00);
    ck_assert_uint_eq(caldera_f32_to_f16(INFINITY), 0x7c00);
    ck_assert_uint_eq(caldera_f32_to_f16(-INFINITY), 0xfc00);
    // subnormals: 2^-24 is the smallest; 2^-25 ties to 0; 3·2^-25 ties up to 2·2^-24
    ck_assert_uint_eq(caldera_f32_to_f16(0x1p-24f), 0x0001);
    ck_assert_uint_eq(caldera_f32_to_f16(0x1p-25f), 0x0000);
    ck_assert_uint_eq(caldera_f32_to_f16(0x1.0001p-25f), 0x0001);
    ck_assert_uint_eq(caldera_f32_to_f16(3 * 0x1p-25f), 0x0002);
    ck_assert_uint_eq(caldera_f32_to_f16(1023 * 0x1p-24f), 0x03ff);
    ck_assert_uint_eq(caldera_f32_to_f16(1023.5f * 0x1p-24f), 0x0400);   // rounds up into the normals
    ck_assert_uint_eq(caldera_f32_to_f16(0x1p-14f), 0x0400);
    ck_assert_uint_eq(caldera_f32_to_f16(-0.0f), 0x8000);
    ck_assert_uint_eq(caldera_f32_to_f16(FLT_MIN / 4), 0x0000);
    uint16_t n = caldera_f32_to_f16(NAN);
    ck_assert(isnan(caldera_f16_to_f32(n)));
    // every midpoint between adjacent finite halves rounds to the even one; just off it, to the nearer
    for (uint32_t h = 0; h < 0x7c00; h++) {
        double lo = ref_f16((uint16_t) h), hi = h == 0x7bff ? 65536.0 : ref_f16((uint16_t) (h + 1));
        float mid = (float) ((lo + hi) / 2);   // 12 significant bits: exact in f32
        uint16_t even = (h & 1) ? (uint16_t) (h + 1) : (uint16_t) h;
        ck_assert_msg(caldera_f32_to_f16(mid) == even, "midpoint after 0x%04x gave 0x%04x", h, caldera_f32_to_f16(mid));
        ck_assert_uint_eq(caldera_f32_to_f16(nextafterf(mid, 0.0f)), h);
        ck_assert_uint_eq(caldera_f32_to_f16(nextafterf(mid, INFINITY)), h + 1);
        ck_assert_uint_eq(caldera_f32_to_f16(-nextafterf(mid, 0.0f)), h | 0x8000);
    }
}
END_TEST

// ---------------------------------------------------------------------------------------------
// bf16

START_TEST(test_bf16) {
    for (uint32_t h = 0; h < 65536; h++) {
        float f = caldera_bf16_to_f32((uint16_t) h);
        ck_assert_uint_eq(f32_bits(f), h << 16);
        uint16_t back = caldera_f32_to_bf16(f);
        if (isnan(f)) ck_assert(isnan(caldera_bf16_to_f32(back)));
        else ck_assert_msg(back == h, "bf16 round trip 0x%04x gave 0x%04x", h, back);
    }
    // ties to even: the ulp at 1 is 2^-7
    ck_assert_uint_eq(caldera_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
    ck_assert_uint_eq(caldera_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
    ck_assert_uint_eq(caldera_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
    ck_assert_uint_eq(caldera_f32_to_bf16(-(1.0f + 0x1p-8f)), 0xbf80);
    ck_assert_uint_eq(caldera_f32_to_bf16(FLT_MAX), 0x7f80);          // rounds past the largest bf16
    ck_assert_uint_eq(caldera_f32_to_bf16(bits_f32(0x7f7f7fffu)), 0x7f7f);
    ck_assert_uint_eq(caldera_f32_to_bf16(INFINITY), 0x7f80);
    ck_assert(isnan(caldera_bf16_to_f32(caldera_f32_to_bf16(bits_f32(0x7f800001u)))));   // sNaN stays NaN
    ck_assert(isnan(caldera_bf16_to_f32(caldera_f32_to_bf16(bits_f32(0xff800001u)))));
    for (uint32_t h = 0; h < 0x7f7f; h++) {   // midpoints: low half-word 0x8000
        uint32_t mid = (h << 16) | 0x8000u;
        uint16_t even = (h & 1) ? (uint16_t) (h + 1) : (uint16_t) h;
        ck_assert_uint_eq(caldera_f32_to_bf16(bits_f32(mid)), even);
        ck_assert_uint_eq(caldera_f32_to_bf16(bits_f32(mid - 1)), h);
        ck_assert_uint_eq(caldera_f32_to_bf16(bits_f32(mid + 1)), h + 1);
    }
}
END_TEST

// ---------------------------------------------------------------------------------------------
// f8

START_TEST(test_f8_e4m3) {
    for (int c = 0; c < 256; c++) {
        float f = from_f8(CALDERA_DTYPE_F8_E4M3, (uint8_t) c);
        double r = ref_e4m3((uint8_t) c);
        if (isnan(r)) {
            ck_assert_msg(isnan(f), "e4m3 0x%02x must be NaN", c);
            ck_assert(isnan(from_f8(CALDERA_DTYPE_F8_E4M3, to_f8(CALDERA_DTYPE_F8_E4M3, f))));
            continue;
        }
        ck_assert_msg((double) f == r && !signbit(f) == !signbit(r), "e4m3 0x%02x: %g vs %g", c, (double) f, r);
        ck_assert_msg(to_f8(CALDERA_DTYPE_F8_E4M3, f) == c, "e4m3 round trip 0x%02x", c);
    }
    ck_assert_int_eq(__builtin_popcount(0x7f), 7);
    ck_assert(isnan(from_f8(CALDERA_DTYPE_F8_E4M3, 0x7f)));
    ck_assert(isnan(from_f8(CALDERA_DTYPE_F8_E4M3, 0xff)));
    ck_assert_float_eq(from_f8(CALDERA_DTYPE_F8_E4M3, 0x7e), 448.0f);
    ck_assert_float_eq(from_f8(CALDERA_DTYPE_F8_E4M3, 0x01), 0x1p-9f);
    ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E4M3, NAN) & 0x7f, 0x7f);
    // saturation: no infinities, everything beyond 448 becomes ±448
    ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E4M3, 449.0f), 0x7e);
    ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E4M3, 1e6f), 0x7e);
    ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E4M3, INFINITY), 0x7e);
    ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E4M3, -1e6f), 0xfe);
    ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E4M3, 0x1p-11f), 0x00);            // ¼ of the smallest: 0
    ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E4M3, 0x1p-10f), 0x00);            // tie: even (0)
    ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E4M3, 3 * 0x1p-10f), 0x02);        // tie: even (2)
    // midpoints between adjacent finite codes → even code
    for (int c = 0; c < 0x7e; c++) {
        float mid = (float) ((ref_e4m3((uint8_t) c) + ref_e4m3((uint8_t) (c + 1))) / 2);
        ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E4M3, mid), (c & 1) ? c + 1 : c);
        ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E4M3, nextafterf(mid, 0.0f)), c);
        ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E4M3, nextafterf(mid, INFINITY)), c + 1);
    }
}
END_TEST

START_TEST(test_f8_e5m2) {
    for (int c = 0; c < 256; c++) {
        float f = from_f8(CALDERA_DTYPE_F8_E5M2, (uint8_t) c);
        double r = ref_e5m2((uint8_t) c);
        if (isnan(r)) {
            ck_assert_msg(isnan(f), "e5m2 0x%02x must be NaN", c);
            ck_assert(isnan(from_f8(CALDERA_DTYPE_F8_E5M2, to_f8(CALDERA_DTYPE_F8_E5M2, f))));
            continue;
        }
        ck_assert_msg((double) f == r && !signbit(f) == !signbit(r), "e5m2 0x%02x: %g vs %g", c, (double) f, r);
        ck_assert_msg(to_f8(CALDERA_DTYPE_F8_E5M2, f) == c, "e5m2 round trip 0x%02x", c);
    }
    ck_assert_float_eq(from_f8(CALDERA_DTYPE_F8_E5M2, 0x7b), 57344.0f);
    ck_assert(isinf(from_f8(CALDERA_DTYPE_F8_E5M2, 0x7c)));
    // round to nearest even up to the overflow threshold 57344 + 4096 (half an ulp), then inf
    ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E5M2, 60000.0f), 0x7b);
    ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E5M2, nextafterf(61440.0f, 0.0f)), 0x7b);
    ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E5M2, 61440.0f), 0x7c);
    ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E5M2, -1e6f), 0xfc);
    ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E5M2, INFINITY), 0x7c);
    ck_assert(isnan(from_f8(CALDERA_DTYPE_F8_E5M2, to_f8(CALDERA_DTYPE_F8_E5M2, NAN))));
    for (int c = 0; c < 0x7b; c++) {
        float mid = (float) ((ref_e5m2((uint8_t) c) + ref_e5m2((uint8_t) (c + 1))) / 2);
        ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E5M2, mid), (c & 1) ? c + 1 : c);
        ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E5M2, nextafterf(mid, 0.0f)), c);
        ck_assert_uint_eq(to_f8(CALDERA_DTYPE_F8_E5M2, nextafterf(mid, INFINITY)), c + 1);
    }
}
END_TEST

// ---------------------------------------------------------------------------------------------
// dtypes, integer conversions

START_TEST(test_dtype_sizes) {
    size_t b = 0;
    ck_assert_int_eq(caldera_dtype_nbytes(CALDERA_DTYPE_F32, 10, &b), 0);
    ck_assert_uint_eq(b, 40);
    ck_assert_int_eq(caldera_dtype_nbytes(CALDERA_DTYPE_BF16, 3, &b), 0);
    ck_assert_uint_eq(b, 6);
    ck_assert_int_eq(caldera_dtype_nbytes(CALDERA_DTYPE_F8_E4M3, 0, &b), 0);
    ck_assert_uint_eq(b, 0);
    // ggml blocks: q4_0 is 32 elements in 18 bytes, q4_k 256 in 144, q8_k 256 in 292
    ck_assert_int_eq(caldera_dtype_block_elems(CALDERA_DTYPE_Q4_0), 32);
    ck_assert_uint_eq(caldera_dtype_block_bytes(CALDERA_DTYPE_Q4_0), 18);
    ck_assert_int_eq(caldera_dtype_nbytes(CALDERA_DTYPE_Q4_0, 64, &b), 0);
    ck_assert_uint_eq(b, 36);
    ck_assert_int_eq(caldera_dtype_nbytes(CALDERA_DTYPE_Q4_K, 512, &b), 0);
    ck_assert_uint_eq(b, 288);
    ck_assert_int_eq(caldera_dtype_nbytes(CALDERA_DTYPE_Q8_K, 256, &b), 0);
    ck_assert_uint_eq(b, 292);
    ck_assert_int_eq(caldera_dtype_nbytes(CALDERA_DTYPE_Q4_0, 33, &b), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_dtype_nbytes(CALDERA_DTYPE_Q6_K, 255, &b), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_dtype_nbytes(CALDERA_DTYPE_F32, -1, &b), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_dtype_nbytes(CALDERA_DTYPE_COUNT, 1, &b), CALDERA_ERR_INVAL);
    // overflow of size_t
    ck_assert_int_eq(caldera_dtype_nbytes(CALDERA_DTYPE_F64, INT64_MAX, &b), CALDERA_ERR_RANGE);
    ck_assert_int_eq(caldera_dtype_nbytes(CALDERA_DTYPE_F32, INT64_MAX / 2 + 1, &b), CALDERA_ERR_RANGE);
    ck_assert_int_eq(caldera_dtype_nbytes(CALDERA_DTYPE_U8, INT64_MAX, &b), 0);
    ck_assert_uint_eq(b, (size_t) INT64_MAX);
    enum caldera_dtype t;
    ck_assert_int_eq(caldera_dtype_from_name("BF16", &t), 0);
    ck_assert_int_eq(t, CALDERA_DTYPE_BF16);
    ck_assert_int_eq(caldera_dtype_from_name("q4_k", &t), 0);
    ck_assert_int_eq(t, CALDERA_DTYPE_Q4_K);
    ck_assert_int_eq(caldera_dtype_from_name("f12", &t), CALDERA_ERR_NOT_FOUND);
    ck_assert_str_eq(caldera_dtype_name(CALDERA_DTYPE_F8_E5M2), "f8_e5m2");
    ck_assert_str_eq(caldera_dtype_name(CALDERA_DTYPE_COUNT), "?");
}
END_TEST

START_TEST(test_convert_ints) {
    const int8_t i8[3] = { -128, 0, 127 };
    const uint16_t u16[2] = { 0, 65535 };
    const int64_t i64[2] = { -(1LL << 40), 3 };
    float f[3];
    ck_assert_int_eq(caldera_convert_to_f32(CALDERA_DTYPE_I8, i8, 3, f), 0);
    ck_assert(f[0] == -128.0f && f[1] == 0.0f && f[2] == 127.0f);
    ck_assert_int_eq(caldera_convert_to_f32(CALDERA_DTYPE_U16, u16, 2, f), 0);
    ck_assert(f[1] == 65535.0f);
    ck_assert_int_eq(caldera_convert_to_f32(CALDERA_DTYPE_I64, i64, 2, f), 0);
    ck_assert(f[0] == -0x1p40f && f[1] == 3.0f);
    double d[2];
    const float src[2] = { 1.5f, -2.25f };
    ck_assert_int_eq(caldera_convert_from_f32(CALDERA_DTYPE_F64, src, 2, d), 0);
    ck_assert(d[0] == 1.5 && d[1] == -2.25);
    uint8_t blk[64];
    ck_assert_int_eq(caldera_convert_to_f32(CALDERA_DTYPE_Q4_0, blk, 32, f), CALDERA_ERR_UNSUPPORTED);
    ck_assert_int_eq(caldera_convert_from_f32(CALDERA_DTYPE_Q8_0, src, 2, blk), CALDERA_ERR_UNSUPPORTED);
    ck_assert_int_eq(caldera_convert_from_f32(CALDERA_DTYPE_I32, src, 2, blk), CALDERA_ERR_UNSUPPORTED);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// tensors

START_TEST(test_tensor_alloc) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor t;
    int64_t ne3[3] = { 2, 3, 4 };
    ck_assert_int_eq(caldera_tensor_alloc(ctx, CALDERA_DTYPE_F16, 3, ne3, &t), 0);
    ck_assert_int_eq(caldera_tensor_nelements(&t), 24);
    for (int i = 0; i < 24; i++) ck_assert_uint_eq(((uint16_t *) t.data)[i], 0);
    ck_assert_uint_eq((uintptr_t) t.data % 64, 0);
    caldera_tensor_free(&t);
    ck_assert_ptr_null(t.data);
    caldera_tensor_free(&t);   // safe on a zeroed struct
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 5, 7, &t), 0);
    ck_assert_int_eq(t.ld, 7);
    ck_assert_int_eq(t.ndim, 2);
    caldera_tensor_free(&t);
    int64_t neg[2] = { 3, -1 }, big[2] = { INT64_MAX / 2, 4 }, q[1] = { 48 };
    ck_assert_int_eq(caldera_tensor_alloc(ctx, CALDERA_DTYPE_F32, 0, ne3, &t), CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "tensor rank 0; allowed: 1..4");
    ck_assert_int_eq(caldera_tensor_alloc(ctx, CALDERA_DTYPE_F32, 5, ne3, &t), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_tensor_alloc(ctx, CALDERA_DTYPE_F32, 2, neg, &t), CALDERA_ERR_RANGE);
    ck_assert_int_eq(caldera_tensor_alloc(ctx, CALDERA_DTYPE_F32, 2, big, &t), CALDERA_ERR_RANGE);
    ck_assert_ptr_null(t.data);
    ck_assert_int_eq(caldera_tensor_alloc(ctx, CALDERA_DTYPE_Q4_0, 1, q, &t), CALDERA_ERR_INVAL);
    q[0] = 64;
    ck_assert_int_eq(caldera_tensor_alloc(ctx, CALDERA_DTYPE_Q4_0, 1, q, &t), 0);
    caldera_tensor_free(&t);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_tensor_alloc_nomem) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor t;
    int64_t ne[2] = { 3, 5 };
    caldera_alloc_fail_at(1);
    ck_assert_int_eq(caldera_tensor_alloc(ctx, CALDERA_DTYPE_F32, 2, ne, &t), CALDERA_ERR_NOMEM);
    ck_assert_ptr_null(t.data);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "out of memory"));
    // the failure is one-shot: the next allocation works
    ck_assert_int_eq(caldera_tensor_alloc(ctx, CALDERA_DTYPE_F32, 2, ne, &t), 0);
    caldera_tensor_free(&t);
    // a conversion between two non-f32 types fails cleanly, and says so, when its row buffer
    // cannot be allocated; a conversion from or to f32 needs no buffer (it used to allocate one,
    // and its failure was reported by the format readers as "no conversion")
    struct caldera_tensor a = tu_randn(ctx, 3, 5, 1), h, b;
    ck_assert_int_eq(caldera_tensor_alloc(ctx, CALDERA_DTYPE_F16, 2, ne, &h), 0);
    ck_assert_int_eq(caldera_tensor_alloc(ctx, CALDERA_DTYPE_BF16, 2, ne, &b), 0);
    caldera_alloc_fail_at(1);
    ck_assert_int_eq(caldera_tensor_copy(ctx, &h, &a), 0);
    ck_assert_int_eq(caldera_tensor_copy(ctx, &b, &h), CALDERA_ERR_NOMEM);
    caldera_alloc_fail_at(0);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "out of memory"));
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "f16 to bf16"));
    ck_assert_int_eq(caldera_tensor_copy(ctx, &b, &h), 0);
    caldera_tensor_free(&a); caldera_tensor_free(&h); caldera_tensor_free(&b);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_tensor_copy) {
    struct caldera_ctx * ctx = tu_ctx();
    // strided f32 view → f16 → strided f32 view
    float buf[4 * 9], out[4 * 6];
    for (int i = 0; i < 36; i++) buf[i] = (i % 9) < 5 ? (float) (i * 0.25 - 3) : NAN;
    struct caldera_tensor src = caldera_tensor_view_f32(buf, 4, 5), dst = caldera_tensor_view_f32(out, 4, 5), h;
    src.ld = 9;
    dst.ld = 6;
    for (int i = 0; i < 24; i++) out[i] = 99.0f;
    int64_t ne[2] = { 4, 5 };
    ck_assert_int_eq(caldera_tensor_alloc(ctx, CALDERA_DTYPE_F16, 2, ne, &h), 0);
    ck_assert_int_eq(caldera_tensor_copy(ctx, &h, &src), 0);
    ck_assert_int_eq(caldera_tensor_copy(ctx, &dst, &h), 0);
    for (int r = 0; r < 4; r++) {
        for (int c = 0; c < 6; c++) {
            if (c < 5) ck_assert_float_eq(out[r * 6 + c], buf[r * 9 + c]);   // multiples of 1/4: exact
            else ck_assert_float_eq(out[r * 6 + c], 99.0f);
        }
    }
    int64_t first = -1;
    ck_assert_int_eq(caldera_tensor_check_finite(&src, &first), 0);
    buf[2 * 9 + 3] = INFINITY;
    ck_assert_int_eq(caldera_tensor_check_finite(&src, &first), CALDERA_ERR_NUMERIC);
    ck_assert_int_eq(first, 2 * 5 + 3);
    // same dtype, strided
    for (int i = 0; i < 24; i++) out[i] = 99.0f;
    ck_assert_int_eq(caldera_tensor_copy(ctx, &dst, &src), 0);
    ck_assert(isinf(out[2 * 6 + 3]));
    ck_assert_float_eq(out[5], 99.0f);
    // shape mismatch, block type strided, no conversion for block types
    struct caldera_tensor small = caldera_tensor_view_f32(buf, 4, 4);
    ck_assert_int_eq(caldera_tensor_copy(ctx, &small, &src), CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "tensor copy: shapes differ in dimension 1");
    int64_t nq[1] = { 32 };
    struct caldera_tensor q, f1;
    ck_assert_int_eq(caldera_tensor_alloc(ctx, CALDERA_DTYPE_Q8_0, 1, nq, &q), 0);
    ck_assert_int_eq(caldera_tensor_alloc(ctx, CALDERA_DTYPE_F32, 1, nq, &f1), 0);
    ck_assert_int_eq(caldera_tensor_copy(ctx, &f1, &q), CALDERA_ERR_UNSUPPORTED);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "no conversion from q8_0 to f32");
    caldera_tensor_free(&q); caldera_tensor_free(&f1); caldera_tensor_free(&h);
    // f64 check_finite
    double dd[3] = { 1, NAN, 2 };
    struct caldera_tensor dt = { .data = dd, .dtype = CALDERA_DTYPE_F64, .ndim = 1, .ne = { 3 } };
    ck_assert_int_eq(caldera_tensor_check_finite(&dt, &first), CALDERA_ERR_NUMERIC);
    ck_assert_int_eq(first, 1);
    caldera_ctx_free(ctx);
}
END_TEST

static int argq_quantize(struct caldera_inst * i, const struct caldera_tensor * w, const struct caldera_tensor * h,
                         struct caldera_tensor * wh, struct caldera_pack * p) {
    return CALDERA_ERR_UNSUPPORTED;
}
static int argq_dequantize(struct caldera_inst * i, const struct caldera_pack * p, struct caldera_tensor * wh) {
    return CALDERA_ERR_UNSUPPORTED;
}
static const struct caldera_quantizer_ops argq_ops = { .struct_size = sizeof(struct caldera_quantizer_ops),
                                                       .quantize = argq_quantize, .dequantize = argq_dequantize };
static const struct caldera_plugin argq_plugin = {
    .abi_version = CALDERA_PLUGIN_ABI_VERSION, .struct_size = sizeof(struct caldera_plugin),
    .kind = CALDERA_PLUGIN_KIND_QUANTIZER, .name = "argq", .description = "test", .ops = &argq_ops,
};

// The argument checks plugins share: one wording, (row, col) of the first bad element.
START_TEST(test_argument_checks) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * inst = NULL;
    ck_assert_int_eq(caldera_registry_add(ctx, &argq_plugin, "test"), 0);
    ck_assert_int_eq(caldera_inst_create(ctx, "argq", "sec", &inst), 0);
    float v[3 * 5];
    for (int i = 0; i < 15; i++) v[i] = (float) i;
    struct caldera_tensor t = { v, CALDERA_DTYPE_F32, CALDERA_DEVICE_CPU, 2, { 3, 4 }, 5 };   // strided view
    ck_assert_int_eq(caldera_check_matrix(inst, "quantize", "W", &t, 3, -1), 0);
    ck_assert_int_eq(caldera_check_matrix(inst, "quantize", "W", &t, -1, 5), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "quantize: W is 3x4; allowed: 3x5"));
    ck_assert_int_eq(caldera_check_matrix(inst, "f", "W", NULL, -1, -1), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "f: W is NULL"));
    struct caldera_tensor bad = t;
    bad.dtype = CALDERA_DTYPE_F16;
    ck_assert_int_eq(caldera_check_matrix(inst, "f", "W", &bad, -1, -1), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "f: W must be a 2-d f32 CPU tensor with ld >= cols (got 2-d f16)"));
    bad = t;
    bad.ld = 3;
    ck_assert_int_eq(caldera_check_matrix(inst, "f", "W", &bad, -1, -1), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "ld < cols"));
    ck_assert_int_eq(caldera_check_finite(inst, "f", "W", &t), 0);
    v[4] = NAN;                                  // outside the view (column 4 of a 4-column view)
    ck_assert_int_eq(caldera_check_finite(inst, "f", "W", &t), 0);
    v[2 * 5 + 3] = INFINITY;                     // row 2, column 3
    ck_assert_int_eq(caldera_check_finite(inst, "f", "W", &t), CALDERA_ERR_NUMERIC);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "f: W has a NaN or Inf at (2, 3)"));
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * tensor_suite(void) {
    Suite * s = suite_create("tensor");
    TCase * tc = tcase_create("conversions");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_argument_checks);
    tcase_add_test(tc, test_f16_all_values);
    tcase_add_test(tc, test_f16_rounding);
    tcase_add_test(tc, test_bf16);
    tcase_add_test(tc, test_f8_e4m3);
    tcase_add_test(tc, test_f8_e5m2);
    tcase_add_test(tc, test_convert_ints);
    suite_add_tcase(s, tc);
    tc = tcase_create("tensors");
    tcase_add_test(tc, test_dtype_sizes);
    tcase_add_test(tc, test_tensor_alloc);
    tcase_add_test(tc, test_tensor_alloc_nomem);
    tcase_add_test(tc, test_tensor_copy);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(tensor_suite)
