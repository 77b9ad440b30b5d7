// SPDX-License-Identifier: MIT
// Tests of the template quantizer "sign1": round trip within a named error bound, the scale's
// optimality, zeros, NaN/Inf, odd shapes, f16 scales, check/check_shape, bits and a bad pack.
// Copy this file with the plugin and keep every kind of case (style rule 10).
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// For N(0,1) weights with one scale per row, the relative error of sign(w) * mean|w| tends to
// sqrt(1 - 2/pi) = 0.6028 (the error of the best 1-bit scale). 0.603 in a simulation of 64x256.
#define SIGN1_MAX_REL_ERR_ROW     0.62
// Groups of 32 adapt to local magnitude; on N(0,1) data the gain is small (0.598 in a simulation of 16x128).
#define SIGN1_MAX_REL_ERR_GROUP32 0.62

static struct caldera_inst * sign1_inst(struct caldera_ctx * ctx, const char * group_size, const char * dtype) {
    struct caldera_inst * q = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, "sign1", "q", &q), 0);
    if (group_size) ck_assert_int_eq(caldera_inst_set(q, "group_size", group_size), 0);
    if (dtype) ck_assert_int_eq(caldera_inst_set(q, "scale_dtype", dtype), 0);
    int rc = caldera_inst_start(q);
    ck_assert_msg(rc == 0, "start: %s", caldera_ctx_errmsg(ctx));
    return q;
}

static double rel_err(const struct caldera_tensor * w, const struct caldera_tensor * w_hat) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < w->ne[0]; i++) {
        for (int64_t j = 0; j < w->ne[1]; j++) {
            double a = ((const float *) w->data)[i * w->ld + j], b = ((const float *) w_hat->data)[i * w_hat->ld + j];
            num += (a - b) * (a - b);
            den += a * a;
        }
    }
    return sqrt(num / den);
}

// quantize w, dequantize the pack, and check that both give the same w_hat; returns rel. error.
static double round_trip(struct caldera_ctx * ctx, struct caldera_inst * q, const struct caldera_tensor * w) {
    struct caldera_tensor w_hat, w_dq;
    struct caldera_pack * pack = NULL;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, w->ne[0], w->ne[1], &w_hat), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, w->ne[0], w->ne[1], &w_dq), 0);
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    int rc = caldera_quantizer_quantize(q, w, NULL, &w_hat, pack);
    ck_assert_msg(rc == 0, "quantize: %s", caldera_ctx_errmsg(ctx));
    rc = caldera_quantizer_dequantize(q, pack, &w_dq);
    ck_assert_msg(rc == 0, "dequantize: %s", caldera_ctx_errmsg(ctx));
    ck_assert(tu_max_abs_diff(&w_hat, &w_dq) == 0.0);  // bit-exact: the same stored scales
    double e = rel_err(w, &w_hat);
    caldera_pack_free(pack);
    caldera_tensor_free(&w_hat);
    caldera_tensor_free(&w_dq);
    return e;
}

START_TEST(test_round_trip_row) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * q = sign1_inst(ctx, NULL, NULL);
    struct caldera_tensor w = tu_randn(ctx, 64, 256, 1);
    double e = round_trip(ctx, q, &w);
    ck_assert_msg(e < SIGN1_MAX_REL_ERR_ROW && e > 0.5, "rel err %g", e);
    caldera_tensor_free(&w);
    caldera_inst_free(q);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_round_trip_group_f16) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * q = sign1_inst(ctx, "32", "f16");
    struct caldera_tensor w = tu_randn(ctx, 16, 128, 2);
    double e = round_trip(ctx, q, &w);
    ck_assert_msg(e < SIGN1_MAX_REL_ERR_GROUP32, "rel err %g", e);
    caldera_tensor_free(&w);
    caldera_inst_free(q);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_scale_is_optimal) {
    // With the signs fixed, mean|w| minimises the squared error: scaling w_hat by 0.95 or
    // 1.05 must not reduce it.
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * q = sign1_inst(ctx, NULL, NULL);
    struct caldera_tensor w = tu_randn(ctx, 8, 64, 3), w_hat, w_s;
    struct caldera_pack * pack = NULL;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 8, 64, &w_hat), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 8, 64, &w_s), 0);
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &w_hat, pack), 0);
    double e0 = rel_err(&w, &w_hat);
    const float f[2] = { 0.95f, 1.05f };
    for (int k = 0; k < 2; k++) {
        for (int64_t i = 0; i < 8 * 64; i++) ((float *) w_s.data)[i] = f[k] * ((float *) w_hat.data)[i];
        ck_assert(rel_err(&w, &w_s) > e0);
    }
    caldera_pack_free(pack);
    caldera_tensor_free(&w);
    caldera_tensor_free(&w_hat);
    caldera_tensor_free(&w_s);
    caldera_inst_free(q);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_zeros_and_constants) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * q = sign1_inst(ctx, "4", NULL);
    struct caldera_tensor w, w_hat;
    struct caldera_pack * pack = NULL;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 3, 8, &w), 0);  // zero-filled
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 3, 8, &w_hat), 0);
    float * d = w.data;
    for (int j = 0; j < 8; j++) d[8 + j] = -2.5f;        // row 1: constant negative
    for (int j = 4; j < 8; j++) d[16 + j] = 3.0f;        // row 2: a zero group, then constants
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &w_hat, pack), 0);
    const float * h = w_hat.data;
    for (int j = 0; j < 24; j++) ck_assert_msg(h[j] == d[j], "element %d: %g != %g", j, h[j], d[j]);  // exact
    caldera_pack_free(pack);
    caldera_tensor_free(&w);
    caldera_tensor_free(&w_hat);
    caldera_inst_free(q);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_nan_inf) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * q = sign1_inst(ctx, NULL, NULL);
    struct caldera_tensor w = tu_randn(ctx, 4, 16, 4), w_hat;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 4, 16, &w_hat), 0);
    struct caldera_pack * pack = NULL;
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    ((float *) w.data)[2 * 16 + 5] = NAN;
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &w_hat, pack), CALDERA_ERR_NUMERIC);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[q] sign1: weight (2, 5) is NaN or Inf");
    ((float *) w.data)[2 * 16 + 5] = 0;
    ((float *) w.data)[3 * 16 + 15] = -INFINITY;
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &w_hat, pack), CALDERA_ERR_NUMERIC);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[q] sign1: weight (3, 15) is NaN or Inf");
    ck_assert_int_eq(caldera_pack_count(pack), 0);  // nothing written
    caldera_pack_free(pack);
    caldera_tensor_free(&w);
    caldera_tensor_free(&w_hat);
    caldera_inst_free(q);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_odd_shapes) {
    // Rows whose codes do not start on a byte boundary, a single weight, a single row.
    static const int64_t shapes[][2] = { { 3, 13 }, { 1, 1 }, { 1, 9 }, { 7, 3 }, { 5, 8 } };
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * q = sign1_inst(ctx, NULL, NULL);
    for (int k = 0; k < 5; k++) {
        struct caldera_tensor w = tu_randn(ctx, shapes[k][0], shapes[k][1], 10 + (uint64_t) k);
        double e = round_trip(ctx, q, &w);
        ck_assert(e < 1.0);
        caldera_tensor_free(&w);
    }
    caldera_inst_free(q);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_strided_view) {
    // w is a view with ld > cols: only the view's columns are read.
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * q = sign1_inst(ctx, NULL, NULL);
    struct caldera_tensor big = tu_randn(ctx, 4, 20, 5), w_hat, w_c;
    struct caldera_tensor w = big;
    w.ne[1] = 12;  // ld stays 20
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 4, 12, &w_hat), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 4, 12, &w_c), 0);
    ck_assert_int_eq(caldera_tensor_copy(ctx, &w_c, &w), 0);
    struct caldera_pack * p1 = NULL;
    ck_assert_int_eq(caldera_pack_init(&p1), 0);
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &w_hat, p1), 0);
    ck_assert(fabs(rel_err(&w, &w_hat) - round_trip(ctx, q, &w_c)) < 1e-12);
    caldera_pack_free(p1);
    caldera_tensor_free(&big);
    caldera_tensor_free(&w_hat);
    caldera_tensor_free(&w_c);
    caldera_inst_free(q);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_checks) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * q = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, "sign1", "q", &q), 0);
    ck_assert_int_eq(caldera_inst_set(q, "group_size", "1"), 0);
    ck_assert_int_eq(caldera_inst_start(q), CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[q] sign1: group_size = 1 stores a scale per weight (more bits than f16 "
                                              "weights); allowed: 0 or 2 and more");
    ck_assert_int_eq(caldera_inst_set(q, "group_size", "-1"), CALDERA_ERR_RANGE);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[q] sign1: option 'group_size' = -1 out of range [0, 1048576]");
    ck_assert_int_eq(caldera_inst_set(q, "scale_dtype", "bf16"), CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[q] sign1: option 'scale_dtype' = 'bf16' is not a valid choice; allowed: f32, f16");
    ck_assert_int_eq(caldera_inst_set(q, "group_size", "8"), 0);
    ck_assert_int_eq(caldera_inst_start(q), 0);
    const struct caldera_plugin * p = caldera_inst_plugin(q);
    ck_assert_int_eq(p->check_shape(q, 4, 24), 0);
    ck_assert_int_eq(p->check_shape(q, 4, 12), CALDERA_ERR_UNSUPPORTED);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[q] sign1: cols=12 is not a multiple of group_size=8");
    const struct caldera_quantizer_ops * ops = p->ops;
    ck_assert(ops->bits(q, 4, 64) == 4 * 64 + 4 * 8 * 32);
    ck_assert_int_eq(caldera_quantizer_codebook(q, &ops), CALDERA_ERR_UNSUPPORTED);
    caldera_inst_free(q);

    q = sign1_inst(ctx, NULL, "f16");
    ops = caldera_inst_plugin(q)->ops;
    ck_assert(ops->bits(q, 4, 64) == 4 * 64 + 4 * 16);
    caldera_inst_free(q);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_bad_pack) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * q = sign1_inst(ctx, NULL, NULL);
    struct caldera_tensor w = tu_randn(ctx, 4, 16, 6), w_hat, other;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 4, 16, &w_hat), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 4, 24, &other), 0);
    struct caldera_pack * pack = NULL;
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    ck_assert_int_eq(caldera_quantizer_dequantize(q, pack, &w_hat), CALDERA_ERR_NOT_FOUND);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[q] sign1: the pack has no tensor 'codes'");
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &w_hat, pack), 0);
    ck_assert_int_eq(caldera_quantizer_dequantize(q, pack, &other), CALDERA_ERR_FORMAT);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[q] sign1: pack does not match a 4x24 weight with 1 scale group(s) per row");
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &w_hat, pack), CALDERA_ERR_INVAL);  // names taken
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[q] sign1: cannot add tensor 'codes' to the pack");
    caldera_pack_free(pack);
    caldera_tensor_free(&w);
    caldera_tensor_free(&w_hat);
    caldera_tensor_free(&other);
    caldera_inst_free(q);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_help_and_defaults) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_plugin * p = caldera_registry_find(ctx, "sign1");
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(caldera_plugin_validate(ctx, p, NULL), 0);
    char * buf = NULL;
    size_t len = 0;
    FILE * f = open_memstream(&buf, &len);
    ck_assert_int_eq(caldera_plugin_print_help(p, f), 0);
    fclose(f);
    ck_assert_msg(strstr(buf, "sign1 (quantizer plugin, version 1.0.0)") == buf, "%s", buf);
    ck_assert_msg(strstr(buf, "default: f32; allowed: f32, f16") != NULL, "%s", buf);
    free(buf);
    struct caldera_inst * q = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, "sign1", NULL, &q), 0);
    char * t = caldera_inst_get_text(q, "group_size");
    ck_assert_str_eq(t, "0");
    caldera_free(t);
    caldera_inst_free(q);  // never started: uninit is not called, nothing to free
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * sign1_suite(void) {
    Suite * s = suite_create("sign1");
    TCase * tc = tcase_create("sign1");
    tcase_add_test(tc, test_round_trip_row);
    tcase_add_test(tc, test_round_trip_group_f16);
    tcase_add_test(tc, test_scale_is_optimal);
    tcase_add_test(tc, test_zeros_and_constants);
    tcase_add_test(tc, test_nan_inf);
    tcase_add_test(tc, test_odd_shapes);
    tcase_add_test(tc, test_strided_view);
    tcase_add_test(tc, test_checks);
    tcase_add_test(tc, test_bad_pack);
    tcase_add_test(tc, test_help_and_defaults);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(sign1_suite)
