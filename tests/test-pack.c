// SPDX-License-Identifier: MIT
// Pack tests (pack.c): named tensors with nested prefixes, duplicate names, copies with dtype
// conversion, per-weight metadata, the bits count (bytes × 8), and an OOM sweep.
#include "testutil.h"

#include <string.h>

START_TEST(test_pack_prefixes) {
    struct caldera_pack * p = NULL;
    ck_assert_int_eq(caldera_pack_init(&p), 0);
    int64_t ne2[2] = { 4, 8 }, ne1[1] = { 3 };
    void * d = NULL;
    ck_assert_int_eq(caldera_pack_add(p, "codes", CALDERA_DTYPE_U8, 2, ne2, &d), 0);
    ck_assert_ptr_nonnull(d);
    for (int i = 0; i < 32; i++) ck_assert_uint_eq(((uint8_t *) d)[i], 0);   // zero-filled
    ((uint8_t *) d)[5] = 7;
    ck_assert_int_eq(caldera_pack_push_prefix(p, "Q."), 0);
    ck_assert_int_eq(caldera_pack_add(p, "codes", CALDERA_DTYPE_U8, 1, ne1, NULL), 0);
    ck_assert_int_eq(caldera_pack_push_prefix(p, "L."), 0);
    ck_assert_int_eq(caldera_pack_add(p, "scales", CALDERA_DTYPE_F16, 1, ne1, NULL), 0);
    struct caldera_tensor t;
    ck_assert_int_eq(caldera_pack_find(p, "scales", &t), 0);   // "Q.L.scales"
    ck_assert_int_eq(t.dtype, CALDERA_DTYPE_F16);
    ck_assert_int_eq(caldera_pack_find(p, "codes", &t), CALDERA_ERR_NOT_FOUND);   // "Q.L.codes"
    caldera_pack_pop_prefix(p);
    ck_assert_int_eq(caldera_pack_find(p, "codes", &t), 0);   // "Q.codes"
    ck_assert_int_eq(t.ndim, 1);
    ck_assert_int_eq(t.ne[0], 3);
    ck_assert_int_eq(caldera_pack_find(p, "L.scales", &t), 0);
    caldera_pack_pop_prefix(p);
    caldera_pack_pop_prefix(p);   // popping an empty stack is harmless
    ck_assert_int_eq(caldera_pack_find(p, "codes", &t), 0);
    ck_assert_int_eq(t.ndim, 2);
    ck_assert_int_eq(t.ld, 8);
    ck_assert_uint_eq(((uint8_t *) t.data)[5], 7);
    ck_assert_int_eq(caldera_pack_count(p), 3);
    ck_assert_str_eq(caldera_pack_name(p, 0), "codes");
    ck_assert_str_eq(caldera_pack_name(p, 1), "Q.codes");
    ck_assert_str_eq(caldera_pack_name(p, 2), "Q.L.scales");
    ck_assert_ptr_null(caldera_pack_name(p, 3));
    ck_assert_int_eq(caldera_pack_get(p, 2, &t), 0);
    ck_assert_int_eq(caldera_pack_get(p, 3, &t), CALDERA_ERR_NOT_FOUND);
    ck_assert_int_eq(caldera_pack_get(p, -1, &t), CALDERA_ERR_NOT_FOUND);
    // duplicate full name, also when reached through a prefix
    ck_assert_int_eq(caldera_pack_add(p, "codes", CALDERA_DTYPE_F32, 1, ne1, NULL), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_pack_push_prefix(p, "Q."), 0);
    ck_assert_int_eq(caldera_pack_add(p, "L.scales", CALDERA_DTYPE_F32, 1, ne1, NULL), CALDERA_ERR_INVAL);
    caldera_pack_pop_prefix(p);
    ck_assert_int_eq(caldera_pack_count(p), 3);
    // prefix depth limit (8)
    for (int i = 0; i < 8; i++) ck_assert_int_eq(caldera_pack_push_prefix(p, "x."), 0);
    ck_assert_int_eq(caldera_pack_push_prefix(p, "x."), CALDERA_ERR_RANGE);
    ck_assert_int_eq(caldera_pack_add(p, "deep", CALDERA_DTYPE_U8, 1, ne1, NULL), 0);
    ck_assert_str_eq(caldera_pack_name(p, 3), "x.x.x.x.x.x.x.x.deep");
    caldera_pack_free(p);   // with prefixes still pushed
    caldera_pack_free(NULL);
}
END_TEST

START_TEST(test_pack_bits_and_tensors) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_pack * p = NULL;
    ck_assert_int_eq(caldera_pack_init(&p), 0);
    ck_assert_uint_eq(caldera_pack_bits(p), 0);
    int64_t ne[2] = { 3, 5 }, nq[1] = { 64 };
    ck_assert_int_eq(caldera_pack_add(p, "a", CALDERA_DTYPE_F16, 2, ne, NULL), 0);      // 30 bytes
    ck_assert_int_eq(caldera_pack_add(p, "b", CALDERA_DTYPE_Q4_0, 1, nq, NULL), 0);     // 2 × 18 bytes
    ck_assert_int_eq(caldera_pack_add(p, "c", CALDERA_DTYPE_F8_E4M3, 2, ne, NULL), 0);  // 15 bytes
    ck_assert_uint_eq(caldera_pack_bits(p), (30 + 36 + 15) * 8);
    ck_assert_uint_eq(caldera_pack_bits(NULL), 0);
    // block type with a count that is not a multiple of the block: rejected, nothing added
    int64_t nbad[1] = { 40 };
    ck_assert_int_eq(caldera_pack_add(p, "bad", CALDERA_DTYPE_Q4_0, 1, nbad, NULL), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_pack_add(p, "bad", CALDERA_DTYPE_F32, 0, nbad, NULL), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_pack_count(p), 3);
    // add_tensor from a strided f32 view, converted to f16 and to bf16
    float buf[3 * 7];
    for (int i = 0; i < 21; i++) buf[i] = (float) i * 0.5f;
    struct caldera_tensor v = caldera_tensor_view_f32(buf, 3, 5), t;
    v.ld = 7;
    ck_assert_int_eq(caldera_pack_add_tensor(p, "w16", CALDERA_DTYPE_F16, &v), 0);
    ck_assert_int_eq(caldera_pack_add_tensor(p, "w32", CALDERA_DTYPE_F32, &v), 0);
    ck_assert_int_eq(caldera_pack_find(p, "w16", &t), 0);
    for (int r = 0; r < 3; r++) {
        for (int c = 0; c < 5; c++) ck_assert_float_eq(caldera_f16_to_f32(((uint16_t *) t.data)[r * 5 + c]), buf[r * 7 + c]);
    }
    ck_assert_int_eq(caldera_pack_find(p, "w32", &t), 0);
    ck_assert_float_eq(((float *) t.data)[5], buf[7]);
    ck_assert_uint_eq(caldera_pack_bits(p), (30 + 36 + 15 + 30 + 60) * 8);
    // a failed conversion rolls the add back
    ck_assert_int_eq(caldera_pack_add_tensor(p, "wq", CALDERA_DTYPE_Q8_0, &v), CALDERA_ERR_INVAL);   // 15 elements
    float b32[32] = { 0 };
    struct caldera_tensor v32 = caldera_tensor_view_f32(b32, 1, 32);
    ck_assert_int_eq(caldera_pack_add_tensor(p, "wq", CALDERA_DTYPE_Q8_0, &v32), CALDERA_ERR_UNSUPPORTED);
    ck_assert_int_eq(caldera_pack_find(p, "wq", &t), CALDERA_ERR_NOT_FOUND);
    ck_assert_int_eq(caldera_pack_add_tensor(p, "w16", CALDERA_DTYPE_F16, &v), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_pack_count(p), 5);
    // per-weight metadata lives and dies with the pack
    struct caldera_meta * m = caldera_pack_meta(p);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(caldera_meta_set_string(m, "plugin", "e8"), 0);
    caldera_pack_free(p);
    caldera_ctx_free(ctx);
}
END_TEST

// Allocation N fails for N = 1.. until a sequence of pack operations succeeds: every failure is
// NOMEM and nothing leaks (ASan).
START_TEST(test_pack_oom_sweep) {
    float buf[6] = { 1, 2, 3, 4, 5, 6 };
    struct caldera_tensor v = caldera_tensor_view_f32(buf, 2, 3);
    int64_t ne[1] = { 4 };
    int done = 0;
    for (int64_t k = 1; k < 200 && !done; k++) {
        struct caldera_pack * p = NULL;
        caldera_alloc_fail_at(k);
        int rc = caldera_pack_init(&p);
        if (rc == 0) rc = caldera_pack_push_prefix(p, "Q.");
        char name[16];
        for (int i = 0; i < 12 && rc == 0; i++) {
            snprintf(name, sizeof(name), "t%d", i);
            rc = caldera_pack_add(p, name, CALDERA_DTYPE_U8, 1, ne, NULL);
        }
        if (rc == 0) rc = caldera_pack_add_tensor(p, "w", CALDERA_DTYPE_F16, &v);
        struct caldera_tensor t;
        if (rc == 0) rc = caldera_pack_find(p, "w", &t);
        caldera_alloc_fail_at(0);
        if (rc == 0) done = 1;
        else ck_assert_int_eq(rc, CALDERA_ERR_NOMEM);
        caldera_pack_free(p);
    }
    ck_assert(done);
}
END_TEST

static Suite * pack_suite(void) {
    Suite * s = suite_create("pack");
    TCase * tc = tcase_create("pack");
    tcase_add_test(tc, test_pack_prefixes);
    tcase_add_test(tc, test_pack_bits_and_tensors);
    tcase_add_test(tc, test_pack_oom_sweep);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(pack_suite)
