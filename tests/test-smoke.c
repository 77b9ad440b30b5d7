// SPDX-License-Identifier: MIT
// Smoke test of the core: a context comes up, allocates, and reports errors through its message.
#include "testutil.h"

START_TEST(test_ctx_basics) {
    struct caldera_ctx * ctx = tu_ctx();
    ck_assert_int_eq(caldera_ctx_threads(ctx), 2);
    ck_assert_int_eq(caldera_ctx_error(ctx, CALDERA_ERR_RANGE, "x = %d", 5), CALDERA_ERR_RANGE);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "x = 5");
    ck_assert_str_eq(caldera_status_str(CALDERA_ERR_NUMERIC), "numerical failure");
    ck_assert_str_eq(caldera_status_str(12345), "unknown status");
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * smoke_suite(void) {
    Suite * s = suite_create("smoke");
    TCase * tc = tcase_create("core");
    tcase_add_test(tc, test_ctx_basics);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(smoke_suite)
