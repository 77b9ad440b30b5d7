// SPDX-License-Identifier: MIT
// Typed key/value metadata tests (meta.c): every scalar and array type, overwrite in place,
// string arrays, numeric conversions in the getters, copies, errors, and an OOM sweep.
#include "testutil.h"

#include <math.h>
#include <string.h>

START_TEST(test_meta_scalars) {
    struct caldera_meta * m = NULL;
    ck_assert_int_eq(caldera_meta_init(&m), 0);
    static const enum caldera_meta_type ints[] = {
        CALDERA_META_U8, CALDERA_META_I8, CALDERA_META_U16, CALDERA_META_I16, CALDERA_META_U32,
        CALDERA_META_I32, CALDERA_META_BOOL, CALDERA_META_I64,
    };
    char key[32];
    for (int i = 0; i < 8; i++) {
        snprintf(key, sizeof(key), "int.%d", i);
        ck_assert_int_eq(caldera_meta_set_int(m, key, ints[i], i == 1 ? -5 : i), 0);
    }
    ck_assert_int_eq(caldera_meta_set_uint64(m, "u64", UINT64_MAX), 0);
    ck_assert_int_eq(caldera_meta_set_uint64(m, "u64.small", 42), 0);
    ck_assert_int_eq(caldera_meta_set_float(m, "f32", CALDERA_META_F32, 0.5), 0);
    ck_assert_int_eq(caldera_meta_set_float(m, "f64", CALDERA_META_F64, -1e300), 0);
    ck_assert_int_eq(caldera_meta_set_string(m, "str", "hello"), 0);
    ck_assert_int_eq(caldera_meta_set_string_n(m, "str.n", "abcdef", 3), 0);
    ck_assert_int_eq(caldera_meta_count(m), 14);
    for (int i = 0; i < 8; i++) {
        snprintf(key, sizeof(key), "int.%d", i);
        int64_t v = 0;
        ck_assert_int_eq(caldera_meta_get_int(m, key, &v), 0);
        ck_assert_int_eq(v, i == 1 ? -5 : i);
        ck_assert_int_eq(caldera_meta_type_of(m, i), ints[i]);
        ck_assert_str_eq(caldera_meta_key(m, i), key);
    }
    int64_t v;
    double d;
    const char * s;
    ck_assert_int_eq(caldera_meta_type_of(m, 8), CALDERA_META_U64);
    ck_assert_int_eq(caldera_meta_get_int(m, "u64", &v), CALDERA_ERR_RANGE);   // > INT64_MAX
    ck_assert_int_eq(caldera_meta_get_int(m, "u64.small", &v), 0);
    ck_assert_int_eq(v, 42);
    ck_assert_int_eq(caldera_meta_get_float(m, "u64", &d), 0);
    ck_assert_double_eq(d, 18446744073709551615.0);
    ck_assert_int_eq(caldera_meta_get_float(m, "f32", &d), 0);
    ck_assert_double_eq(d, 0.5);
    ck_assert_int_eq(caldera_meta_get_float(m, "f64", &d), 0);
    ck_assert_double_eq(d, -1e300);
    ck_assert_int_eq(caldera_meta_get_string(m, "str", &s), 0);
    ck_assert_str_eq(s, "hello");
    ck_assert_int_eq(caldera_meta_get_string(m, "str.n", &s), 0);
    ck_assert_str_eq(s, "abc");
    ck_assert_int_eq(caldera_meta_type_of(m, 13), CALDERA_META_STRING);
    ck_assert_int_eq(caldera_meta_type_of(m, 14), CALDERA_META_COUNT);
    ck_assert_ptr_null(caldera_meta_key(m, -1));
    ck_assert_int_eq(caldera_meta_find(m, "f32"), 10);
    ck_assert_int_eq(caldera_meta_find(m, "nope"), -1);
    caldera_meta_free(m);
    caldera_meta_free(NULL);
}
END_TEST

START_TEST(test_meta_conversions) {
    struct caldera_meta * m = NULL;
    ck_assert_int_eq(caldera_meta_init(&m), 0);
    caldera_meta_set_int(m, "i", CALDERA_META_I32, -7);
    caldera_meta_set_float(m, "whole", CALDERA_META_F64, 3.0);
    caldera_meta_set_float(m, "frac", CALDERA_META_F32, 2.5);
    caldera_meta_set_float(m, "huge", CALDERA_META_F64, 1e30);
    caldera_meta_set_float(m, "nan", CALDERA_META_F64, NAN);
    caldera_meta_set_int(m, "b", CALDERA_META_BOOL, 1);
    caldera_meta_set_string(m, "s", "12");
    int64_t v = 0;
    double d = 0;
    ck_assert_int_eq(caldera_meta_get_float(m, "i", &d), 0);      // integer read as double
    ck_assert_double_eq(d, -7.0);
    ck_assert_int_eq(caldera_meta_get_float(m, "b", &d), 0);
    ck_assert_double_eq(d, 1.0);
    ck_assert_int_eq(caldera_meta_get_int(m, "whole", &v), 0);    // integral double read as int
    ck_assert_int_eq(v, 3);
    ck_assert_int_eq(caldera_meta_get_int(m, "frac", &v), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_meta_get_int(m, "huge", &v), CALDERA_ERR_RANGE);   // not representable
    ck_assert_int_eq(caldera_meta_get_int(m, "nan", &v), CALDERA_ERR_RANGE);
    // a string is not a number, a number not a string; missing keys
    ck_assert_int_eq(caldera_meta_get_int(m, "s", &v), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_meta_get_float(m, "s", &d), CALDERA_ERR_INVAL);
    const char * s;
    ck_assert_int_eq(caldera_meta_get_string(m, "i", &s), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_meta_get_int(m, "missing", &v), CALDERA_ERR_NOT_FOUND);
    ck_assert_int_eq(caldera_meta_get_float(m, "missing", &d), CALDERA_ERR_NOT_FOUND);
    ck_assert_int_eq(caldera_meta_get_string(m, "missing", &s), CALDERA_ERR_NOT_FOUND);
    ck_assert_int_eq(caldera_meta_get_array(m, "missing", NULL, NULL, NULL), CALDERA_ERR_NOT_FOUND);
    ck_assert_int_eq(caldera_meta_get_array(m, "i", NULL, NULL, NULL), CALDERA_ERR_INVAL);
    // setters reject wrong types
    ck_assert_int_eq(caldera_meta_set_int(m, "x", CALDERA_META_F32, 1), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_meta_set_int(m, "x", CALDERA_META_STRING, 1), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_meta_set_float(m, "x", CALDERA_META_I32, 1), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_meta_set_array(m, "x", CALDERA_META_ARRAY, 1, &v), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_meta_set_array(m, "x", CALDERA_META_I32, -1, &v), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_meta_find(m, "x"), -1);   // failed sets leave no key behind
    caldera_meta_free(m);
}
END_TEST

START_TEST(test_meta_overwrite_order) {
    struct caldera_meta * m = NULL;
    ck_assert_int_eq(caldera_meta_init(&m), 0);
    caldera_meta_set_string(m, "a", "first");
    caldera_meta_set_int(m, "b", CALDERA_META_U32, 2);
    const char * strs[] = { "x", "y" };
    caldera_meta_set_array(m, "c", CALDERA_META_STRING, 2, strs);
    // overwrite each with another type: position kept, old value freed (ASan checks)
    ck_assert_int_eq(caldera_meta_set_int(m, "a", CALDERA_META_I8, -1), 0);
    ck_assert_int_eq(caldera_meta_set_string(m, "b", "now a string"), 0);
    const int16_t arr[3] = { 1, -2, 3 };
    ck_assert_int_eq(caldera_meta_set_array(m, "c", CALDERA_META_I16, 3, arr), 0);
    ck_assert_int_eq(caldera_meta_set_float(m, "a", CALDERA_META_F32, 1.25), 0);
    ck_assert_int_eq(caldera_meta_count(m), 3);
    ck_assert_str_eq(caldera_meta_key(m, 0), "a");
    ck_assert_str_eq(caldera_meta_key(m, 1), "b");
    ck_assert_str_eq(caldera_meta_key(m, 2), "c");
    ck_assert_int_eq(caldera_meta_type_of(m, 0), CALDERA_META_F32);
    ck_assert_int_eq(caldera_meta_type_of(m, 1), CALDERA_META_STRING);
    ck_assert_int_eq(caldera_meta_type_of(m, 2), CALDERA_META_ARRAY);
    // a value set from itself (pointer into the old value) survives the overwrite
    const char * s;
    ck_assert_int_eq(caldera_meta_get_string(m, "b", &s), 0);
    ck_assert_int_eq(caldera_meta_set_string(m, "b", s + 4), 0);
    ck_assert_int_eq(caldera_meta_get_string(m, "b", &s), 0);
    ck_assert_str_eq(s, "a string");
    // many keys: growth keeps insertion order
    char key[16];
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "k%03d", i);
        ck_assert_int_eq(caldera_meta_set_int(m, key, CALDERA_META_I32, i), 0);
    }
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "k%03d", i);
        ck_assert_str_eq(caldera_meta_key(m, 3 + i), key);
    }
    caldera_meta_free(m);
}
END_TEST

START_TEST(test_meta_arrays) {
    struct caldera_meta * m = NULL;
    ck_assert_int_eq(caldera_meta_init(&m), 0);
    const float f[4] = { 1, 2.5f, -3, 0 };
    const uint64_t u[2] = { 1, UINT64_MAX };
    const char * strs[3] = { "alpha", "", "gamma" };
    const char raw[] = "abcXYZ";
    const char * parts[2] = { raw, raw + 3 };
    const size_t lens[2] = { 3, 3 };
    ck_assert_int_eq(caldera_meta_set_array(m, "f", CALDERA_META_F32, 4, f), 0);
    ck_assert_int_eq(caldera_meta_set_array(m, "u", CALDERA_META_U64, 2, u), 0);
    ck_assert_int_eq(caldera_meta_set_array(m, "s", CALDERA_META_STRING, 3, strs), 0);
    ck_assert_int_eq(caldera_meta_set_string_array_n(m, "sn", 2, parts, lens), 0);
    ck_assert_int_eq(caldera_meta_set_array(m, "empty", CALDERA_META_I32, 0, NULL), 0);
    enum caldera_meta_type et;
    int64_t n;
    const void * data;
    ck_assert_int_eq(caldera_meta_get_array(m, "f", &et, &n, &data), 0);
    ck_assert_int_eq(et, CALDERA_META_F32);
    ck_assert_int_eq(n, 4);
    ck_assert_int_eq(memcmp(data, f, sizeof(f)), 0);
    ck_assert(data != (const void *) f);   // a copy
    ck_assert_int_eq(caldera_meta_get_array(m, "u", &et, &n, &data), 0);
    ck_assert_uint_eq(((const uint64_t *) data)[1], UINT64_MAX);
    ck_assert_int_eq(caldera_meta_get_array(m, "s", &et, &n, &data), 0);
    ck_assert_int_eq(et, CALDERA_META_STRING);
    ck_assert_int_eq(n, 3);
    for (int i = 0; i < 3; i++) ck_assert_str_eq(((char * const *) data)[i], strs[i]);
    ck_assert_int_eq(caldera_meta_get_array(m, "sn", &et, &n, &data), 0);
    ck_assert_str_eq(((char * const *) data)[0], "abc");
    ck_assert_str_eq(((char * const *) data)[1], "XYZ");
    ck_assert_int_eq(caldera_meta_get_array(m, "empty", &et, &n, NULL), 0);
    ck_assert_int_eq(n, 0);
    ck_assert_int_eq(caldera_meta_type_of(m, 2), CALDERA_META_ARRAY);
    // an array is not a scalar
    int64_t v;
    const char * s;
    ck_assert_int_eq(caldera_meta_get_int(m, "f", &v), CALDERA_ERR_INVAL);
    ck_assert_int_eq(caldera_meta_get_string(m, "s", &s), CALDERA_ERR_INVAL);
    // copy: everything, deep
    struct caldera_meta * c = NULL;
    ck_assert_int_eq(caldera_meta_init(&c), 0);
    caldera_meta_set_string(c, "f", "will be replaced");
    ck_assert_int_eq(caldera_meta_copy(c, m), 0);
    ck_assert_int_eq(caldera_meta_count(c), 5);
    caldera_meta_free(m);
    ck_assert_int_eq(caldera_meta_get_array(c, "s", &et, &n, &data), 0);
    ck_assert_str_eq(((char * const *) data)[2], "gamma");
    ck_assert_int_eq(caldera_meta_get_array(c, "f", &et, &n, &data), 0);
    ck_assert_float_eq(((const float *) data)[1], 2.5f);
    caldera_meta_free(c);
}
END_TEST

// Every allocation of a sequence of sets fails once in turn: each failure is NOMEM, nothing leaks
// (ASan), and the store stays usable.
START_TEST(test_meta_oom_sweep) {
    const char * strs[3] = { "a", "bb", "ccc" };
    const int32_t arr[3] = { 1, 2, 3 };
    int done = 0;
    for (int64_t k = 1; k < 200 && !done; k++) {
        struct caldera_meta * m = NULL;
        caldera_alloc_fail_at(k);
        int rc = caldera_meta_init(&m);
        char key[16];
        for (int i = 0; i < 20 && rc == 0; i++) {
            snprintf(key, sizeof(key), "k%d", i);
            rc = caldera_meta_set_int(m, key, CALDERA_META_I32, i);
        }
        if (rc == 0) rc = caldera_meta_set_string(m, "s", "text");
        if (rc == 0) rc = caldera_meta_set_array(m, "sa", CALDERA_META_STRING, 3, strs);
        if (rc == 0) rc = caldera_meta_set_array(m, "ia", CALDERA_META_I32, 3, arr);
        if (rc == 0) rc = caldera_meta_set_array(m, "sa", CALDERA_META_STRING, 3, strs);
        caldera_alloc_fail_at(0);
        if (rc == 0) done = 1;
        else ck_assert_int_eq(rc, CALDERA_ERR_NOMEM);
        caldera_meta_free(m);
    }
    ck_assert(done);
}
END_TEST

// Strings keep their byte length (GGUF tokens may hold NUL bytes); copies keep it too.
START_TEST(test_lengths_and_u64) {
    struct caldera_meta * m, * c;
    ck_assert_int_eq(caldera_meta_init(&m), 0);
    ck_assert_int_eq(caldera_meta_set_string_n(m, "s", "a\0b", 3), 0);
    const char * strs[2] = { "x\0y\0", "" };
    const size_t lens[2] = { 5, 0 };
    ck_assert_int_eq(caldera_meta_set_string_array_n(m, "arr", 2, strs, lens), 0);
    ck_assert_int_eq(caldera_meta_set_uint64(m, "big", UINT64_MAX), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "neg", CALDERA_META_I32, -1), 0);
    ck_assert_int_eq(caldera_meta_init(&c), 0);
    ck_assert_int_eq(caldera_meta_copy(c, m), 0);
    const struct caldera_meta * ms[2] = { m, c };
    for (int k = 0; k < 2; k++) {
        const char * s;
        size_t len;
        ck_assert_int_eq(caldera_meta_get_string_n(ms[k], "s", &s, &len), 0);
        ck_assert_uint_eq(len, 3);
        ck_assert_int_eq(memcmp(s, "a\0b", 3), 0);
        int64_t n;
        const char * const * a;
        const size_t * l;
        ck_assert_int_eq(caldera_meta_get_string_array_n(ms[k], "arr", &n, &a, &l), 0);
        ck_assert_int_eq(n, 2);
        ck_assert_uint_eq(l[0], 5);
        ck_assert_uint_eq(l[1], 0);
        ck_assert_int_eq(memcmp(a[0], "x\0y\0", 5), 0);
        uint64_t u;
        ck_assert_int_eq(caldera_meta_get_uint64(ms[k], "big", &u), 0);
        ck_assert(u == UINT64_MAX);
        ck_assert_int_eq(caldera_meta_get_uint64(ms[k], "neg", &u), CALDERA_ERR_RANGE);
        ck_assert_int_eq(caldera_meta_get_uint64(ms[k], "s", &u), CALDERA_ERR_INVAL);
        ck_assert_int_eq(caldera_meta_get_string_array_n(ms[k], "s", &n, &a, &l), CALDERA_ERR_INVAL);
        ck_assert_int_eq(caldera_meta_get_string_n(ms[k], "nope", &s, &len), CALDERA_ERR_NOT_FOUND);
    }
    caldera_meta_free(m);
    caldera_meta_free(c);
}
END_TEST

// Many keys: every one found at its insertion index (the hash index grows), overwrites keep order.
START_TEST(test_many_keys) {
    struct caldera_meta * m;
    ck_assert_int_eq(caldera_meta_init(&m), 0);
    char key[32];
    for (int i = 0; i < 70000; i++) {
        snprintf(key, sizeof(key), "k.%d", i);
        ck_assert_int_eq(caldera_meta_set_int(m, key, CALDERA_META_I32, i), 0);
    }
    ck_assert_int_eq(caldera_meta_count(m), 70000);
    ck_assert_int_eq(caldera_meta_set_int(m, "k.123", CALDERA_META_I32, -5), 0);   // overwrite
    ck_assert_int_eq(caldera_meta_count(m), 70000);
    for (int i = 0; i < 70000; i++) {
        snprintf(key, sizeof(key), "k.%d", i);
        ck_assert_int_eq(caldera_meta_find(m, key), i);
        int64_t v;
        ck_assert_int_eq(caldera_meta_get_int(m, key, &v), 0);
        ck_assert_int_eq(v, i == 123 ? -5 : i);
    }
    ck_assert_int_eq(caldera_meta_find(m, "k.70000"), -1);
    caldera_meta_free(m);
}
END_TEST

static Suite * meta_suite(void) {
    Suite * s = suite_create("meta");
    TCase * tc = tcase_create("meta");
    tcase_add_test(tc, test_lengths_and_u64);
    tcase_add_test(tc, test_many_keys);
    tcase_add_test(tc, test_meta_scalars);
    tcase_add_test(tc, test_meta_conversions);
    tcase_add_test(tc, test_meta_overwrite_order);
    tcase_add_test(tc, test_meta_arrays);
    tcase_add_test(tc, test_meta_oom_sweep);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(meta_suite)
