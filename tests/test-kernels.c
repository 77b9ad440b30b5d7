// SPDX-License-Identifier: MIT
// Tests of the fused compressed-layer kernels (caldera-kernels.h) through the plugins' fused ops
// (e8, uniform: linear_*; rht: act_*): every kernel variant this CPU runs (portable C, AVX2,
// AVX-512) must equal the reference path, dequantize → dense product in double precision, on
// odd shapes, one and several positions, every code type; and the rht activation transform must
// equal the dense inverse transform applied to the weight.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "caldera/caldera-kernels.h"
#include "testutil.h"

// |y − y_ref| <= KW_TOL · Σ_c |Ŵ_rc x_c| (+ KW_TOL_ABS): f32 accumulation in another order than
// the double reference. Worst ratio measured over all cases and variants (CK_FORK=no prints it):
// 2.6e-7; the bound leaves 20x. (The worst case n·eps for n = 1536 would be 9e-5.)
#define KW_TOL     5e-6
#define KW_TOL_ABS 1e-30
// rht: the transform's own f32 rounding (an FWHT and a K×K product per side) on top; measured
// worst ratio 2.6e-7.
#define KW_RHT_TOL 1e-5

static double worst_ratio, worst_rht;  // largest |err| / (Σ|w x|) seen (reported; per test process)

// y_ref (batch × rows) = x (batch × cols) Ŵᵀ in double, and the error scale Σ|Ŵ x|; or the
// transposed product y_ref (batch × cols) = x (batch × rows) Ŵ when trans.
static void ref_product(const float * w, int64_t rows, int64_t cols, const float * x, int64_t batch, int trans,
                        double * y, double * scale) {
    const int64_t nout = trans ? cols : rows, nin = trans ? rows : cols;
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t o = 0; o < nout; o++) {
            double s = 0.0, a = 0.0;
            for (int64_t i = 0; i < nin; i++) {
                double wv = trans ? w[i * cols + o] : w[o * cols + i];
                double p  = wv * (double) x[b * nin + i];
                s += p;
                a += fabs(p);
            }
            y[b * nout + o]     = s;
            scale[b * nout + o] = a;
        }
    }
}

static void check_close(const float * y, const double * yref, const double * scale, int64_t n, double tol,
                        const char * what) {
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double) y[i] - yref[i]);
        double r   = scale[i] > 0.0 ? err / scale[i] : err;
        double * worst = tol == KW_RHT_TOL ? &worst_rht : &worst_ratio;
        if (r > *worst) {
            *worst = r;
        }
        if (!(err <= tol * scale[i] + KW_TOL_ABS)) {
            ck_abort_msg("%s: element %lld: %.9g vs reference %.9g (|err| %.3g > %.3g · %.3g)", what, (long long) i,
                         (double) y[i], yref[i], err, tol, scale[i]);
        }
    }
}

// A started quantizer instance with options "k=v,k=v".
static struct caldera_inst * make_q(struct caldera_ctx * ctx, const char * plugin, const char * opts) {
    struct caldera_inst * q = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, plugin, "q", &q), 0);
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", opts);
    for (char * kv = strtok(buf, ","); kv; kv = strtok(NULL, ",")) {
        char * eq = strchr(kv, '=');
        ck_assert_ptr_nonnull(eq);
        *eq = 0;
        ck_assert_msg(caldera_inst_set(q, kv, eq + 1) == 0, "option %s=%s", kv, eq + 1);
    }
    ck_assert_int_eq(caldera_inst_start(q), 0);
    return q;
}

// Quantize a random m×n W with quantizer q, then for every variant this CPU has, for batch 1 and
// 5, plain and transposed+accumulate: the fused linear_apply equals the double-precision product
// with the dequantized Ŵ.
static void check_quantizer(struct caldera_ctx * ctx, struct caldera_inst * q, int64_t m, int64_t n, uint64_t seed,
                            const char * what) {
    const struct caldera_quantizer_ops * ops = caldera_inst_plugin(q)->ops;
    ck_assert(CALDERA_OPS_HAS(ops, struct caldera_quantizer_ops, linear_init));
    ck_assert(CALDERA_OPS_HAS(ops, struct caldera_quantizer_ops, linear_apply));
    struct caldera_tensor w = tu_randn(ctx, m, n, seed), w_hat = { 0 }, w_deq = { 0 };
    struct caldera_pack * pack = NULL;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &w_hat), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &w_deq), 0);
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    ck_assert_int_eq(ops->quantize(q, &w, NULL, &w_hat, pack), 0);
    ck_assert_int_eq(ops->dequantize(q, pack, &w_deq), 0);  // the reference Ŵ
    void * st = NULL;
    ck_assert_int_eq(ops->linear_init(q, pack, m, n, &st), 0);

    enum { BMAX = 5 };
    const int64_t mx = m > n ? m : n;
    float *  x    = malloc((size_t) (BMAX * mx) * sizeof(float));
    float *  y    = malloc((size_t) (BMAX * mx) * sizeof(float));
    double * yref = malloc((size_t) (BMAX * mx) * sizeof(double));
    double * sc   = malloc((size_t) (BMAX * mx) * sizeof(double));
    ck_assert(x && y && yref && sc);
    const int64_t batches[2] = { 1, BMAX };
    caldera_kernel_set_q8(0);   // f32 activations: the tight bound
    for (int isa = 0; isa < CALDERA_ISA_COUNT; isa++) {
        if (!caldera_kernel_isa_supported(isa)) {
            continue;
        }
        ck_assert_int_eq(caldera_kernel_set_isa(isa), 0);
        for (int bi = 0; bi < 2; bi++) {
            const int64_t bt = batches[bi];
            char msg[256];
            // y = x Ŵᵀ
            tu_fill_normal(x, bt * n, 1.0f, seed + 17 + (uint64_t) bt);
            struct caldera_tensor xt = caldera_tensor_view_f32(x, bt, n), yt = caldera_tensor_view_f32(y, bt, m);
            ck_assert_int_eq(ops->linear_apply(q, st, &xt, &yt, 0), 0);
            ref_product(w_deq.data, m, n, x, bt, 0, yref, sc);
            snprintf(msg, sizeof(msg), "%s %lldx%lld %s batch %lld", what, (long long) m, (long long) n,
                     caldera_kernel_isa_name(isa), (long long) bt);
            check_close(y, yref, sc, bt * m, KW_TOL, msg);
            // y = y0 + x Ŵ (transposed, accumulating)
            tu_fill_normal(x, bt * m, 1.0f, seed + 31 + (uint64_t) bt);
            tu_fill_normal(y, bt * n, 1.0f, seed + 47 + (uint64_t) bt);
            ref_product(w_deq.data, m, n, x, bt, 1, yref, sc);
            for (int64_t i = 0; i < bt * n; i++) {
                yref[i] += y[i];
                sc[i] += fabs(y[i]);
            }
            xt = caldera_tensor_view_f32(x, bt, m);
            yt = caldera_tensor_view_f32(y, bt, n);
            ck_assert_int_eq(ops->linear_apply(q, st, &xt, &yt, CALDERA_LINEAR_TRANSPOSE | CALDERA_LINEAR_ACCUMULATE), 0);
            snprintf(msg, sizeof(msg), "%s %lldx%lld %s batch %lld transposed", what, (long long) m, (long long) n,
                     caldera_kernel_isa_name(isa), (long long) bt);
            check_close(y, yref, sc, bt * n, KW_TOL, msg);
        }
    }
    // int8 activations (E8P 2/4-bit GEMV; a no-op for other types): within the closed-form bound
    // of the activation rounding, Σ_c |Ŵ_rc| d_k(c)/254/2 with d_k = max|x|/127 of the 32-column
    // block (x and its rounding residual, step d_k/254, are both int8) (+ KW_TOL · Σ|Ŵ x| for the f32
    // steps), and every variant equal to the C one within KW_TOL (the integer sums are the same).
    float *  yc = malloc((size_t) m * sizeof(float));
    double * qb = malloc((size_t) m * sizeof(double));
    ck_assert(yc && qb);
    tu_fill_normal(x, n, 1.0f, seed + 61);
    ref_product(w_deq.data, m, n, x, 1, 0, yref, sc);
    for (int64_t r = 0; r < m; r++) {
        qb[r] = 0.0;
        for (int64_t c0 = 0; c0 < n; c0 += 32) {
            double amax = 0.0, wabs = 0.0;
            for (int64_t c = c0; c < c0 + 32 && c < n; c++) {
                amax = fabs(x[c]) > amax ? fabs(x[c]) : amax;
                wabs += fabs(((const float *) w_deq.data)[r * n + c]);
            }
            qb[r] += wabs * amax / 127.0 / 254.0 / 2.0;
        }
    }
    caldera_kernel_set_q8(1);
    for (int isa = 0; isa < CALDERA_ISA_COUNT; isa++) {
        if (!caldera_kernel_isa_supported(isa)) {
            continue;
        }
        ck_assert_int_eq(caldera_kernel_set_isa(isa), 0);
        struct caldera_tensor xt = caldera_tensor_view_f32(x, 1, n), yt = caldera_tensor_view_f32(y, 1, m);
        ck_assert_int_eq(ops->linear_apply(q, st, &xt, &yt, 0), 0);
        for (int64_t r = 0; r < m; r++) {
            double err = fabs((double) y[r] - yref[r]);
            ck_assert_msg(err <= qb[r] * (1.0 + 1e-6) + KW_TOL * sc[r] + KW_TOL_ABS, "%s %lldx%lld %s int8: row %lld: "
                          "%.9g vs %.9g (|err| %.3g > bound %.3g)", what, (long long) m, (long long) n,
                          caldera_kernel_isa_name(isa), (long long) r, (double) y[r], yref[r], err, qb[r]);
            if (isa == CALDERA_ISA_C) {
                yc[r] = y[r];
            } else {
                ck_assert_msg(fabs((double) y[r] - yc[r]) <= KW_TOL * sc[r] + KW_TOL_ABS, "%s %lldx%lld %s int8: row %lld: "
                              "%.9g vs the C variant's %.9g", what, (long long) m, (long long) n,
                              caldera_kernel_isa_name(isa), (long long) r, (double) y[r], (double) yc[r]);
            }
        }
    }
    // int8 transposed (+ accumulate): x_r s_r and its residual rounded with dt = max_r |x_r s_r|/127
    // and dt/254, so |Δy_c| <= Σ_r |Ŵ_rc / s_r| dt/254/2 (the row scales s_r from the pack; E8P only)
    struct caldera_tensor sct = { 0 };
    if (caldera_pack_find(pack, "codes", &sct) == 0 && sct.dtype == CALDERA_DTYPE_U16 &&
        caldera_pack_find(pack, "scale", &sct) == 0) {
        const int64_t ns = caldera_tensor_nelements(&sct);
        float *       s  = malloc((size_t) ns * sizeof(float));
        float *       yt = malloc((size_t) n * sizeof(float)), * ytc = malloc((size_t) n * sizeof(float));
        double *      tb = malloc((size_t) n * sizeof(double));
        ck_assert(s && yt && ytc && tb);
        ck_assert_int_eq(caldera_convert_to_f32(sct.dtype, sct.data, ns, s), 0);
        tu_fill_normal(x, m, 1.0f, seed + 71);
        tu_fill_normal(y, n, 1.0f, seed + 73);
        ref_product(w_deq.data, m, n, x, 1, 1, yref, sc);
        double dt = 0.0;
        for (int64_t r = 0; r < m; r++) {
            dt = fmax(dt, fabs((double) x[r] * s[ns > 1 ? r : 0]) / 127.0);
        }
        for (int64_t c = 0; c < n; c++) {
            yref[c] += y[c];
            sc[c] += fabs(y[c]);
            tb[c] = 0.0;
            for (int64_t r = 0; r < m; r++) {
                const double sr = s[ns > 1 ? r : 0];
                tb[c] += sr != 0.0 ? fabs(((const float *) w_deq.data)[r * n + c] / sr) * dt / 254.0 / 2.0 : 0.0;
            }
        }
        for (int isa = 0; isa < CALDERA_ISA_COUNT; isa++) {
            if (!caldera_kernel_isa_supported(isa)) {
                continue;
            }
            ck_assert_int_eq(caldera_kernel_set_isa(isa), 0);
            memcpy(yt, y, (size_t) n * sizeof(float));
            struct caldera_tensor xt = caldera_tensor_view_f32(x, 1, m), yv = caldera_tensor_view_f32(yt, 1, n);
            ck_assert_int_eq(ops->linear_apply(q, st, &xt, &yv, CALDERA_LINEAR_TRANSPOSE | CALDERA_LINEAR_ACCUMULATE), 0);
            for (int64_t c = 0; c < n; c++) {
                const double err = fabs((double) yt[c] - yref[c]);
                ck_assert_msg(err <= tb[c] * (1.0 + 1e-6) + KW_TOL * sc[c] + KW_TOL_ABS, "%s %lldx%lld %s int8 transposed: "
                              "column %lld: %.9g vs %.9g (|err| %.3g > bound %.3g)", what, (long long) m, (long long) n,
                              caldera_kernel_isa_name(isa), (long long) c, (double) yt[c], yref[c], err, tb[c]);
                if (isa == CALDERA_ISA_C) {
                    ytc[c] = yt[c];
                } else {   // the same integer sums as the C variant
                    ck_assert_msg(fabs((double) yt[c] - ytc[c]) <= KW_TOL * sc[c] + KW_TOL_ABS, "%s %lldx%lld %s int8 "
                                  "transposed: column %lld: %.9g vs the C variant's %.9g", what, (long long) m,
                                  (long long) n, caldera_kernel_isa_name(isa), (long long) c, (double) yt[c], (double) ytc[c]);
                }
            }
        }
        free(s);
        free(yt);
        free(ytc);
        free(tb);
    }
    caldera_kernel_set_q8(-1);
    free(yc);
    free(qb);
    caldera_kernel_set_isa(-1);
    ops->linear_free(q, st);
    free(x);
    free(y);
    free(yref);
    free(sc);
    caldera_pack_free(pack);
    caldera_tensor_free(&w);
    caldera_tensor_free(&w_hat);
    caldera_tensor_free(&w_deq);
}

// ---------------------------------------------------------------------------------------------

START_TEST(test_isa_choice) {
    ck_assert(caldera_kernel_isa_supported(CALDERA_ISA_C));
    ck_assert_str_eq(caldera_kernel_isa_name(CALDERA_ISA_C), "c");
    ck_assert_str_eq(caldera_kernel_isa_name(CALDERA_ISA_AVX2), "avx2");
    ck_assert_str_eq(caldera_kernel_isa_name(CALDERA_ISA_AVX512), "avx512");
    ck_assert_str_eq(caldera_kernel_isa_name(99), "?");
    ck_assert_int_eq(caldera_kernel_set_isa(CALDERA_ISA_COUNT), CALDERA_ERR_UNSUPPORTED);
    int best = CALDERA_ISA_C;
    for (int i = 0; i < CALDERA_ISA_COUNT; i++) {
        if (caldera_kernel_isa_supported(i)) {
            best = i;
            ck_assert_int_eq(caldera_kernel_set_isa(i), 0);
            ck_assert_int_eq(caldera_kernel_isa(), i);
        } else {
            ck_assert_int_eq(caldera_kernel_set_isa(i), CALDERA_ERR_UNSUPPORTED);
        }
    }
    ck_assert_int_eq(caldera_kernel_set_isa(-1), 0);
    const char * env = getenv("CALDERA_KERNELS");
    if (!env || !*env) {
        ck_assert_int_eq(caldera_kernel_isa(), best);   // automatic: the best the CPU has
    }
}
END_TEST

// SmolLM2 shapes (576, 1536, 192) and odd ones, E8P 2-bit (the CALDERA backbone).
// 37 x 96 and 3 x 32: the int8 path's partial last group of 64 codewords, periods of 3 and 1 groups.
static const int64_t shapes[][2] = { { 576, 576 }, { 1536, 576 }, { 576, 1536 }, { 192, 576 }, { 37, 200 }, { 1, 8 },
                                     { 37, 96 }, { 3, 32 } };

START_TEST(test_e8p_2bit_shapes) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * q = make_q(ctx, "e8", "bits=2");
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        check_quantizer(ctx, q, shapes[i][0], shapes[i][1], 100 + i, "e8 2-bit tensor f16");
    }
    caldera_inst_free(q);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_e8p_variants) {
    static const char * const opts[] = {
        "bits=2,scale_mode=row", "bits=2,scale_dtype=f32",
        "bits=3", "bits=3,scale_mode=row,scale_dtype=f32",
        "bits=4", "bits=4,scale_mode=row",
    };
    struct caldera_ctx * ctx = tu_ctx();
    for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
        struct caldera_inst * q = make_q(ctx, "e8", opts[i]);
        check_quantizer(ctx, q, 192, 576, 200 + i, opts[i]);
        check_quantizer(ctx, q, 29, 40, 300 + i, opts[i]);
        caldera_inst_free(q);
    }
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_uniform_variants) {
    // bit widths 1..8, every granularity, symmetric (both level sets) and asymmetric, groups that
    // do and do not divide the row, f16 and f32 scales; shapes where rows start mid-byte.
    static const char * const opts[] = {
        "bits=4,granularity=group,group_size=64",
        "bits=4,granularity=group,group_size=64,symmetric=0",
        "bits=4,granularity=row,levels=reference",
        "bits=2,granularity=group,group_size=32,symmetric=0,scale_dtype=f32",
        "bits=8,granularity=tensor",
        "bits=3,granularity=group,group_size=20",
        "bits=5,granularity=column,symmetric=0",
        "bits=1,granularity=row",
        "bits=6,granularity=group,group_size=7,levels=reference",
        "bits=4,granularity=column",
    };
    static const int64_t ushapes[][2] = { { 192, 576 }, { 37, 203 }, { 3, 9 } };
    struct caldera_ctx * ctx = tu_ctx();
    for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
        struct caldera_inst * q = make_q(ctx, "uniform", opts[i]);
        for (size_t s = 0; s < sizeof(ushapes) / sizeof(ushapes[0]); s++) {
            check_quantizer(ctx, q, ushapes[s][0], ushapes[s][1], 400 + 10 * i + s, opts[i]);
        }
        caldera_inst_free(q);
    }
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_uniform_smollm_shapes) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * q = make_q(ctx, "uniform", "bits=4,granularity=group,group_size=64,symmetric=0");
    for (size_t i = 0; i < 4; i++) {
        check_quantizer(ctx, q, shapes[i][0], shapes[i][1], 500 + i, "uniform 4-bit g64 asym");
    }
    caldera_inst_free(q);
    caldera_ctx_free(ctx);
}
END_TEST

// Dense f16 and f32 descriptors (the factors a decomposer stores unquantized).
START_TEST(test_dense_types) {
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t m = 45, n = 131, ld = 140, bt = 3;
    float *    wf = calloc((size_t) (m * ld), sizeof(float));
    uint16_t * wh = calloc((size_t) (m * ld), sizeof(uint16_t));
    float *    wr = malloc((size_t) (m * n) * sizeof(float));
    float *    x = malloc((size_t) (bt * n) * sizeof(float)), * y = malloc((size_t) (bt * m) * sizeof(float));
    double *   yref = malloc((size_t) (bt * m) * sizeof(double)), * sc = malloc((size_t) (bt * m) * sizeof(double));
    tu_fill_normal(wr, m * n, 1.0f, 9);
    for (int64_t r = 0; r < m; r++) {
        for (int64_t c = 0; c < n; c++) {
            wh[r * ld + c] = caldera_f32_to_f16(wr[r * n + c]);
            wr[r * n + c]  = caldera_f16_to_f32(wh[r * ld + c]);   // the reference: f16-rounded
            wf[r * ld + c] = wr[r * n + c];
        }
    }
    tu_fill_normal(x, bt * n, 1.0f, 10);
    for (int isa = 0; isa < CALDERA_ISA_COUNT; isa++) {
        if (!caldera_kernel_isa_supported(isa)) {
            continue;
        }
        ck_assert_int_eq(caldera_kernel_set_isa(isa), 0);
        for (int t = 0; t < 2; t++) {
            struct caldera_kw kw = { .type = t ? CALDERA_KW_F16 : CALDERA_KW_F32, .rows = m, .cols = n,
                                     .data = t ? (const void *) wh : (const void *) wf, .ld = ld };
            for (int64_t b = 1; b <= bt; b += bt - 1) {
                ck_assert_int_eq(caldera_kw_matmul(ctx, &kw, x, b, n, y, m, 0), 0);
                ref_product(wr, m, n, x, b, 0, yref, sc);
                check_close(y, yref, sc, b * m, KW_TOL, t ? "f16" : "f32");
            }
        }
    }
    caldera_kernel_set_isa(-1);
    free(wf);
    free(wh);
    free(wr);
    free(x);
    free(y);
    free(yref);
    free(sc);
    caldera_ctx_free(ctx);
}
END_TEST

// W x through the rht activation ops (x̃ = Uᵀ S_U pad(x), then W̃ x̃ with the transformed weight,
// then S_V U ỹ, cropped) equals Ŵ x with Ŵ the transform's dense inverse of W̃ (sizes with and
// without padding, Paley cores of both kinds, powers of two).
START_TEST(test_rht_activations) {
    static const int64_t rshapes[][2] = { { 576, 1536 }, { 1536, 576 }, { 192, 576 }, { 100, 37 }, { 64, 256 } };
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * t = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, "rht", "rht", &t), 0);
    ck_assert_int_eq(caldera_inst_start(t), 0);
    const struct caldera_transform_ops * ops = caldera_inst_plugin(t)->ops;
    ck_assert(CALDERA_OPS_HAS(ops, struct caldera_transform_ops, act_init));
    for (size_t s = 0; s < sizeof(rshapes) / sizeof(rshapes[0]); s++) {
        const int64_t m = rshapes[s][0], n = rshapes[s][1];
        struct caldera_tensor w = tu_randn(ctx, m, n, 600 + s), wt = { 0 }, what = { 0 };
        struct caldera_pack * pack = NULL;
        void * fst = NULL, * ast = NULL;
        int64_t mp = 0, np = 0;
        ck_assert_int_eq(caldera_pack_init(&pack), 0);
        ck_assert_int_eq(ops->forward(t, "model.layers.0.mlp.up_proj.weight", &w, NULL, &wt, NULL, pack, &fst), 0);
        // a stand-in for the compressed transformed weight: W̃ itself, perturbed
        float * wtd = wt.data;
        for (int64_t i = 0; i < wt.ne[0] * wt.ne[1]; i++) {
            wtd[i] += 0.01f * (float) ((i * 7919) % 13 - 6);
        }
        ck_assert_int_eq(ops->inverse(t, fst, &wt, &what), 0);   // dense Ŵ (m × n)
        ck_assert_int_eq(ops->act_init(t, pack, m, n, &ast, &mp, &np), 0);
        ck_assert_int_eq(mp, wt.ne[0]);
        ck_assert_int_eq(np, wt.ne[1]);
        const int64_t bt = 9;   // 9 >= KW_RHT_BATCHED: the K×K core as one sgemm over the batch
        float *  x  = malloc((size_t) (bt * n) * sizeof(float)), * xt = malloc((size_t) (bt * np) * sizeof(float));
        float *  yt = malloc((size_t) (bt * mp) * sizeof(float)), * y = malloc((size_t) (bt * m) * sizeof(float));
        double * yref = malloc((size_t) (bt * m) * sizeof(double)), * sc = malloc((size_t) (bt * m) * sizeof(double));
        tu_fill_normal(x, bt * n, 1.0f, 700 + s);
        ref_product(what.data, m, n, x, bt, 0, yref, sc);
        for (int isa = 0; isa < CALDERA_ISA_COUNT; isa++) {
            if (!caldera_kernel_isa_supported(isa)) {
                continue;
            }
            ck_assert_int_eq(caldera_kernel_set_isa(isa), 0);
            for (int64_t b = 1; b <= bt; b += bt - 1) {
                struct caldera_tensor xv = caldera_tensor_view_f32(x, b, n), xtv = caldera_tensor_view_f32(xt, b, np);
                struct caldera_tensor ytv = caldera_tensor_view_f32(yt, b, mp), yv = caldera_tensor_view_f32(y, b, m);
                ck_assert_int_eq(ops->act_in(t, ast, &xv, &xtv), 0);
                ck_assert_int_eq(caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_TRANS, 1.0f, &xtv, &wt, 0.0f, &ytv), 0);
                ck_assert_int_eq(ops->act_out(t, ast, &ytv, &yv, 0), 0);
                char msg[128];
                snprintf(msg, sizeof(msg), "rht %lldx%lld %s batch %lld", (long long) m, (long long) n,
                         caldera_kernel_isa_name(isa), (long long) b);
                check_close(y, yref, sc, b * m, KW_RHT_TOL, msg);
            }
        }
        caldera_kernel_set_isa(-1);
        free(x);
        free(xt);
        free(yt);
        free(y);
        free(yref);
        free(sc);
        ops->act_free(t, ast);
        ops->free_state(t, fst);
        caldera_pack_free(pack);
        caldera_tensor_free(&w);
        caldera_tensor_free(&wt);
        caldera_tensor_free(&what);
    }
    caldera_inst_free(t);
    caldera_ctx_free(ctx);
}
END_TEST

// A started instance of plugin with options and the named quantizer references.
static struct caldera_inst * make_inst(struct caldera_ctx * ctx, const char * plugin, const char * name, const char * opts,
                                       const char * const * ref_keys, struct caldera_inst * const * refs, int nref) {
    struct caldera_inst * d = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, plugin, name, &d), 0);
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", opts);
    for (char * kv = strtok(buf, ","); kv; kv = strtok(NULL, ",")) {
        char * eq = strchr(kv, '=');
        *eq = 0;
        ck_assert_msg(caldera_inst_set(d, kv, eq + 1) == 0, "option %s=%s", kv, eq + 1);
    }
    for (int i = 0; i < nref; i++) {
        ck_assert_int_eq(caldera_inst_set_ref(d, ref_keys[i], refs[i]), 0);
    }
    ck_assert_msg(caldera_inst_start(d) == 0, "%s", caldera_ctx_errmsg(ctx));
    return d;
}

// Low-rank decomposers (caldera: Q by ldlq over e8 2-bit, Lᵀ and R by uniform 4-bit or stored
// f16; svd; lplr): the fused y = g (Q x + L (R x)) equals the reconstructed Ŵ times x.
START_TEST(test_decomposers) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * e8 = make_q(ctx, "e8", "bits=2");
    struct caldera_inst * u4 = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, "uniform", "u4", &u4), 0);
    ck_assert_int_eq(caldera_inst_set(u4, "group_size", "32"), 0);
    ck_assert_int_eq(caldera_inst_start(u4), 0);
    const char * cbk[1] = { "codebook" };
    struct caldera_inst * ldlq = make_inst(ctx, "ldlq", "ldlq", "", cbk, &e8, 1);
    const char * keys[3] = { "q", "l_quant", "r_quant" };
    struct caldera_inst * quant[3] = { ldlq, u4, u4 };
    struct {
        const char * plugin, * opts;
        int          nref;
    } cases[] = {
        { "caldera", "rank=8,outer_iters=2,inner_iters=2", 3 },                 // Q + quantized Lᵀ, R
        { "caldera", "rank=6,outer_iters=2,inner_iters=2,global_scale=0", 1 },  // Q + f16 factors
        { "svd",     "rank=5", 3 },
        { "lplr",    "rank=7,factor_dtype=f32", 0 },
    };
    const int64_t m = 96, n = 128;
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        const char * const * kk = strcmp(cases[c].plugin, "lplr") == 0 ? keys + 1 : keys;
        struct caldera_inst * const * rr = strcmp(cases[c].plugin, "lplr") == 0 ? quant + 1 : quant;
        struct caldera_inst * d = make_inst(ctx, cases[c].plugin, "d", cases[c].opts, kk, rr, cases[c].nref);
        const struct caldera_decomposer_ops * ops = caldera_inst_plugin(d)->ops;
        ck_assert(CALDERA_OPS_HAS(ops, struct caldera_decomposer_ops, linear_init));
        struct caldera_tensor w = tu_randn(ctx, m, n, 800 + c), h = tu_hessian(ctx, n, 32, 0.01, 900 + c);
        struct caldera_tensor w_hat = { 0 }, w_rec = { 0 };
        struct caldera_pack * pack = NULL;
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &w_hat), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &w_rec), 0);
        ck_assert_int_eq(caldera_pack_init(&pack), 0);
        ck_assert_msg(ops->decompose(d, &w, &h, &w_hat, pack) == 0, "%s", caldera_ctx_errmsg(ctx));
        ck_assert_int_eq(ops->reconstruct(d, pack, &w_rec), 0);
        void * st = NULL;
        ck_assert_msg(ops->linear_init(d, pack, m, n, &st) == 0, "%s", caldera_ctx_errmsg(ctx));
        const int64_t bt = 3;
        float *  x = malloc((size_t) (bt * n) * sizeof(float)), * y = malloc((size_t) (bt * m) * sizeof(float));
        double * yref = malloc((size_t) (bt * m) * sizeof(double)), * sc = malloc((size_t) (bt * m) * sizeof(double));
        tu_fill_normal(x, bt * n, 1.0f, 1000 + c);
        caldera_kernel_set_q8(0);   // f32 activations (check_quantizer covers the int8 path)
        for (int isa = 0; isa < CALDERA_ISA_COUNT; isa++) {
            if (!caldera_kernel_isa_supported(isa)) {
                continue;
            }
            ck_assert_int_eq(caldera_kernel_set_isa(isa), 0);
            for (int64_t b = 1; b <= bt; b += bt - 1) {
                struct caldera_tensor xv = caldera_tensor_view_f32(x, b, n), yv = caldera_tensor_view_f32(y, b, m);
                ck_assert_int_eq(ops->linear_apply(d, st, &xv, &yv, 0), 0);
                ref_product(w_rec.data, m, n, x, b, 0, yref, sc);
                char msg[160];
                snprintf(msg, sizeof(msg), "%s %s %s batch %lld", cases[c].plugin, cases[c].opts,
                         caldera_kernel_isa_name(isa), (long long) b);
                // Q x and L (R x) are summed in another order than Ŵ = Q + L R: the error scale is
                // that of the two terms, which Σ|Ŵ x| can underestimate by cancellation; use 4x.
                check_close(y, yref, sc, b * m, 4 * KW_TOL, msg);
            }
        }
        caldera_kernel_set_q8(-1);
        caldera_kernel_set_isa(-1);
        ops->linear_free(d, st);
        free(x);
        free(y);
        free(yref);
        free(sc);
        caldera_pack_free(pack);
        caldera_tensor_free(&w);
        caldera_tensor_free(&h);
        caldera_tensor_free(&w_hat);
        caldera_tensor_free(&w_rec);
        caldera_inst_free(d);
    }
    caldera_inst_free(ldlq);
    caldera_inst_free(u4);
    caldera_inst_free(e8);
    caldera_ctx_free(ctx);
}
END_TEST

// Packs made of views (as a runtime builds them over an mmapped file) work without copies.
START_TEST(test_pack_views) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * q = make_q(ctx, "e8", "bits=2");
    const struct caldera_quantizer_ops * ops = caldera_inst_plugin(q)->ops;
    struct caldera_tensor w = tu_randn(ctx, 16, 64, 5), w_hat = { 0 }, t;
    struct caldera_pack * own = NULL, * view = NULL;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 16, 64, &w_hat), 0);
    ck_assert_int_eq(caldera_pack_init(&own), 0);
    ck_assert_int_eq(caldera_pack_init(&view), 0);
    ck_assert_int_eq(ops->quantize(q, &w, NULL, &w_hat, own), 0);
    ck_assert_int_eq(caldera_pack_push_prefix(view, "q."), 0);
    for (int64_t i = 0; i < caldera_pack_count(own); i++) {
        ck_assert_int_eq(caldera_pack_get(own, i, &t), 0);
        ck_assert_int_eq(caldera_pack_add_view(view, caldera_pack_name(own, i), &t), 0);
    }
    ck_assert_int_eq(caldera_pack_add_view(view, "codes", &t), CALDERA_ERR_INVAL);   // duplicate
    ck_assert_int_eq(caldera_pack_bits(view), caldera_pack_bits(own));
    void * st = NULL;
    ck_assert_int_eq(ops->linear_init(q, view, 16, 64, &st), 0);
    struct caldera_tensor codes;
    ck_assert_int_eq(caldera_pack_find(own, "codes", &codes), 0);
    ck_assert_ptr_eq(((const struct caldera_kw *) st)->codes, codes.data);   // in place, no copy
    ops->linear_free(q, st);
    caldera_pack_free(view);   // frees nothing of own's
    caldera_pack_free(own);
    caldera_tensor_free(&w);
    caldera_tensor_free(&w_hat);
    caldera_inst_free(q);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_errors) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * q = make_q(ctx, "e8", "bits=4");
    const struct caldera_quantizer_ops * ops = caldera_inst_plugin(q)->ops;
    struct caldera_pack * pack = NULL;
    void * st = (void *) 1;
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    ck_assert_int_eq(ops->linear_init(q, pack, 8, 16, &st), CALDERA_ERR_NOT_FOUND);
    ck_assert_ptr_null(st);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "linear_init: the pack has no tensor 'codes'"));
    ck_assert_int_eq(ops->linear_init(q, pack, 8, 12, &st), CALDERA_ERR_UNSUPPORTED);
    int64_t ne[2] = { 8, 2 };
    ck_assert_int_eq(caldera_pack_add(pack, "codes", CALDERA_DTYPE_U16, 2, ne, NULL), 0);
    ck_assert_int_eq(caldera_pack_add(pack, "scale", CALDERA_DTYPE_F16, 1, ne, NULL), 0);   // 8 scales, wanted 1
    ck_assert_int_eq(ops->linear_init(q, pack, 8, 16, &st), CALDERA_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "'scale' is f16 with 8 elements; expected f16 with 1"));
    caldera_pack_free(pack);
    caldera_inst_free(q);

    struct caldera_kw kw = { .type = CALDERA_KW_E8P, .rows = 4, .cols = 12, .bits = 2 };
    ck_assert_int_eq(caldera_kw_check(ctx, &kw), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "scale is NULL"));
    float s = 1.0f;
    kw.scale = &s;
    kw.scale_dtype = CALDERA_DTYPE_F32;
    ck_assert_int_eq(caldera_kw_check(ctx, &kw), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "cols=12, bits=2; allowed: cols a multiple of 8"));
    struct caldera_kw u = { .type = CALDERA_KW_UNIFORM, .rows = 2, .cols = 2, .bits = 9, .scale = &s,
                            .scale_dtype = CALDERA_DTYPE_F32 };
    ck_assert_int_eq(caldera_kw_check(ctx, &u), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "allowed: bits 1..8"));
    float wd[4] = { 1, 2, 3, 4 }, x[2] = { 1, 1 }, y[2];
    struct caldera_kw d = { .type = CALDERA_KW_F32, .rows = 2, .cols = 2, .data = wd, .ld = 2 };
    ck_assert_int_eq(caldera_kw_matmul(ctx, &d, x, 1, 1, y, 2, 0), CALDERA_ERR_INVAL);   // ldx < cols
    ck_assert_int_eq(caldera_kw_matmul(ctx, &d, x, 1, 2, y, 2, 0), 0);
    ck_assert(y[0] == 3.0f && y[1] == 7.0f);
    struct caldera_kw_rht r = { .n = 10, .np = 12, .k = 3, .p2 = 4 };
    ck_assert_int_eq(caldera_kw_rht_in(ctx, &r, x, 1, 10, y, 12), CALDERA_ERR_INVAL);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_report_tolerance) {
    // runs after the numeric tests in no-fork mode only; in fork mode each test had its own process
    fprintf(stderr, "test-kernels: worst |err| / sum|w x| in this process: layers %.3g (bound %g), rht %.3g (bound %g)\n",
            worst_ratio, KW_TOL, worst_rht, KW_RHT_TOL);
}
END_TEST

static Suite * kernels_suite(void) {
    Suite * s = suite_create("kernels");
    TCase * tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_isa_choice);
    tcase_add_test(tc, test_e8p_2bit_shapes);
    tcase_add_test(tc, test_e8p_variants);
    tcase_add_test(tc, test_uniform_variants);
    tcase_add_test(tc, test_uniform_smollm_shapes);
    tcase_add_test(tc, test_dense_types);
    tcase_add_test(tc, test_rht_activations);
    tcase_add_test(tc, test_decomposers);
    tcase_add_test(tc, test_pack_views);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_report_tolerance);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(kernels_suite)
