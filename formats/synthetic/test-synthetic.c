// SPDX-License-Identifier: MIT
// Tests of the synthetic format: listing, shapes, determinism, shared and positive definite Hessians.
#include <math.h>
#include <string.h>

#include "testutil.h"

#define SYN_MEAN_DIAG_TOL 1e-4  // mean diagonal of H is 1 + ridge up to f32 rounding

static struct caldera_inst * open_syn(struct caldera_ctx * ctx, const char * seed) {
    struct caldera_inst * inst = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, "synthetic", "src", &inst), 0);
    ck_assert_int_eq(caldera_inst_set(inst, "layers", "2"), 0);
    ck_assert_int_eq(caldera_inst_set(inst, "hidden", "64"), 0);
    ck_assert_int_eq(caldera_inst_set(inst, "ffn", "96"), 0);
    ck_assert_int_eq(caldera_inst_set(inst, "kv_dim", "32"), 0);
    ck_assert_int_eq(caldera_inst_set(inst, "seed", seed), 0);
    ck_assert_int_eq(caldera_inst_start(inst), 0);
    const struct caldera_format_ops * ops = caldera_inst_plugin(inst)->ops;
    ck_assert_int_eq(ops->open(inst, NULL), 0);
    return inst;
}

static int64_t find(struct caldera_inst * inst, const char * name) {
    const struct caldera_format_ops * ops = caldera_inst_plugin(inst)->ops;
    for (int64_t i = 0; i < ops->n_tensors(inst); i++) {
        struct caldera_tensor_info ti;
        ck_assert_int_eq(ops->tensor_info(inst, i, &ti), 0);
        if (strcmp(ti.name, name) == 0) return i;
    }
    ck_abort_msg("tensor %s not listed", name);
    return -1;
}

static struct caldera_tensor read(struct caldera_inst * inst, const char * name) {
    const struct caldera_format_ops * ops = caldera_inst_plugin(inst)->ops;
    struct caldera_tensor t;
    int owned = 0;
    ck_assert_int_eq(ops->read_tensor(inst, find(inst, name), CALDERA_DTYPE_F32, &t, &owned), 0);
    ck_assert_int_eq(owned, 1);
    return t;
}

START_TEST(test_listing_and_shapes) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * inst = open_syn(ctx, "1");
    const struct caldera_format_ops * ops = caldera_inst_plugin(inst)->ops;
    ck_assert_int_eq(ops->n_tensors(inst), 2 * (9 + 7));
    struct caldera_tensor_info ti;
    ck_assert_int_eq(ops->tensor_info(inst, find(inst, "model.layers.1.self_attn.k_proj.weight"), &ti), 0);
    ck_assert_int_eq(ti.ne[0], 32);
    ck_assert_int_eq(ti.ne[1], 64);
    ck_assert_int_eq(ops->tensor_info(inst, find(inst, "model.layers.0.mlp.down_proj.weight"), &ti), 0);
    ck_assert_int_eq(ti.ne[0], 64);
    ck_assert_int_eq(ti.ne[1], 96);
    ck_assert_int_eq(ops->tensor_info(inst, find(inst, "model.layers.0.mlp.down_proj.hessian"), &ti), 0);
    ck_assert_int_eq(ti.ne[0], 96);
    ck_assert_int_eq(ti.ne[1], 96);
    ck_assert_int_eq(ops->tensor_info(inst, 999, &ti), CALDERA_ERR_RANGE);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "[src] synthetic: tensor 999 out of range"));
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_deterministic) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * a = open_syn(ctx, "7"), * b = open_syn(ctx, "7"), * c = open_syn(ctx, "8");
    struct caldera_tensor wa = read(a, "model.layers.0.self_attn.q_proj.weight");
    struct caldera_tensor wb = read(b, "model.layers.0.self_attn.q_proj.weight");
    struct caldera_tensor wc = read(c, "model.layers.0.self_attn.q_proj.weight");
    ck_assert_int_eq(memcmp(wa.data, wb.data, 64 * 64 * 4), 0);
    ck_assert_int_ne(memcmp(wa.data, wc.data, 64 * 64 * 4), 0);
    double fro = tu_fro(&wa);
    ck_assert(fro > 1.0 && fro < 64.0);   // entries ~ N(0, c²/n): the norm is O(sqrt(m))
    caldera_tensor_free(&wa); caldera_tensor_free(&wb); caldera_tensor_free(&wc);
    caldera_inst_free(a); caldera_inst_free(b); caldera_inst_free(c);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_hessians) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * inst = open_syn(ctx, "3");
    struct caldera_tensor hq = read(inst, "model.layers.0.self_attn.q_proj.hessian");
    struct caldera_tensor hv = read(inst, "model.layers.0.self_attn.v_proj.hessian");
    struct caldera_tensor ho = read(inst, "model.layers.0.self_attn.o_proj.hessian");
    ck_assert_int_eq(memcmp(hq.data, hv.data, 64 * 64 * 4), 0);   // q, k, v share their input
    ck_assert_int_ne(memcmp(hq.data, ho.data, 64 * 64 * 4), 0);
    const float * h = hq.data;
    double mean = 0;
    for (int i = 0; i < 64; i++) {
        mean += h[i * 64 + i];
        for (int j = 0; j < 64; j++) ck_assert_float_eq(h[i * 64 + j], h[j * 64 + i]);
    }
    ck_assert_double_eq_tol(mean / 64, 1.01, SYN_MEAN_DIAG_TOL);
    float w[64];
    struct caldera_tensor v;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 64, 64, &v), 0);
    ck_assert_int_eq(caldera_linalg_eigh(ctx, &hq, w, &v), 0);
    ck_assert(w[0] >= 0.01 * 0.999);      // ridge bounds the spectrum from below
    caldera_tensor_free(&v);
    caldera_tensor_free(&hq); caldera_tensor_free(&hv); caldera_tensor_free(&ho);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_convert_f16) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * inst = open_syn(ctx, "1");
    const struct caldera_format_ops * ops = caldera_inst_plugin(inst)->ops;
    struct caldera_tensor t, f;
    int owned;
    int64_t i = find(inst, "model.layers.0.input_layernorm.weight");
    ck_assert_int_eq(ops->read_tensor(inst, i, CALDERA_DTYPE_F16, &t, &owned), 0);
    ck_assert_int_eq(ops->read_tensor(inst, i, CALDERA_DTYPE_F32, &f, &owned), 0);
    ck_assert_int_eq(t.dtype, CALDERA_DTYPE_F16);
    for (int j = 0; j < 64; j++) {
        ck_assert_float_eq(caldera_f16_to_f32(((uint16_t *) t.data)[j]), caldera_f16_to_f32(caldera_f32_to_f16(((float *) f.data)[j])));
    }
    caldera_tensor_free(&t);
    caldera_tensor_free(&f);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * synthetic_suite(void) {
    Suite * s = suite_create("synthetic");
    TCase * tc = tcase_create("synthetic");
    tcase_add_test(tc, test_listing_and_shapes);
    tcase_add_test(tc, test_deterministic);
    tcase_add_test(tc, test_hessians);
    tcase_add_test(tc, test_convert_f16);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(synthetic_suite)
