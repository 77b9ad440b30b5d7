// SPDX-License-Identifier: MIT
// Tests of the ldlq matrix quantizer against a small scalar codebook defined here (a real plugin
// registered with caldera_registry_add), an independent textbook GPTQ written in double precision,
// round-to-nearest, and the proxy loss computed directly; plus every error path.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ldlq-step.h"
#include "testutil.h"

#define LOSS_TOL      1e-4   // relative: LDL loss identity vs tr(E Hd Eᵀ) (f32 factors, f64 sums)
#define TUNE_TOL      1e-6   // relative: a tune pass may not raise the damped proxy loss by more
#define RTN_MARGIN    1.0    // ldlq loss <= RTN_MARGIN * RTN loss (never worse)

// ---------------------------------------------------------------------------------------------
// "tcb": symmetric uniform scalar codebook, one per-tensor absmax scale, levels k*s, |k| <= L.
// Option dim sets cb_dim (a codeword = dim scalars) to test block-size checks.

struct tcb_priv {
    int64_t bits;
    int64_t dim;
};

struct caldera_cb_state {
    int64_t  rows, cols;
    float    scale;
    int8_t * codes;   // (rows, cols)
};

static const struct caldera_option tcb_options[] = {
    { .name = "bits", .offset = offsetof(struct tcb_priv, bits), .type = CALDERA_OPT_INT, .def.i64 = 3, .min = 2,
      .max = 8, .help = "bits" },
    { .name = "dim", .offset = offsetof(struct tcb_priv, dim), .type = CALDERA_OPT_INT, .def.i64 = 1, .min = 1,
      .max = 16, .help = "cb_dim" },
    { .name = NULL }
};

static float tcb_level(const struct tcb_priv * p) { return (float) ((1 << (p->bits - 1)) - 1); }

static float tcb_round1(float x, float s, float lv, int8_t * code) {
    float k = rintf(x / s);
    k = k > lv ? lv : (k < -lv ? -lv : k);
    if (code) *code = (int8_t) k;
    return k * s;
}

static int64_t tcb_cb_dim(struct caldera_inst * inst) {
    return ((struct tcb_priv *) caldera_inst_priv(inst))->dim;
}

static void tcb_cb_free(struct caldera_inst * inst, struct caldera_cb_state * st) {
    (void) inst;
    if (st) { caldera_free(st->codes); caldera_free(st); }
}

static int tcb_cb_begin(struct caldera_inst * inst, const struct caldera_tensor * w, struct caldera_cb_state ** out) {
    const struct tcb_priv * p = caldera_inst_priv(inst);
    struct caldera_cb_state * st = caldera_calloc(1, sizeof(*st));
    if (!st) return CALDERA_ERR_NOMEM;
    st->rows = w->ne[0];
    st->cols = w->ne[1];
    st->codes = caldera_calloc((size_t) (st->rows * st->cols), 1);
    if (!st->codes) { tcb_cb_free(inst, st); return CALDERA_ERR_NOMEM; }
    float mx = 1e-8f;
    for (int64_t r = 0; r < st->rows; r++) {
        for (int64_t c = 0; c < st->cols; c++) {
            float a = fabsf(((const float *) w->data)[r * w->ld + c]);
            if (a > mx) mx = a;
        }
    }
    st->scale = mx / tcb_level(p);
    *out = st;
    return 0;
}

static int tcb_cb_round(struct caldera_inst * inst, struct caldera_cb_state * st, int64_t col0,
                        const struct caldera_tensor * x, struct caldera_tensor * x_hat) {
    const struct tcb_priv * p = caldera_inst_priv(inst);
    int64_t c = x->ne[1];
    if (c % p->dim || col0 % p->dim || col0 + c > st->cols || x->ne[0] != st->rows) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "tcb: bad cb_round columns");
    }
    float lv = tcb_level(p);
    for (int64_t r = 0; r < st->rows; r++) {
        for (int64_t k = 0; k < c; k++) {
            ((float *) x_hat->data)[r * x_hat->ld + k] = tcb_round1(((const float *) x->data)[r * x->ld + k],
                                                                    st->scale, lv, &st->codes[r * st->cols + col0 + k]);
        }
    }
    return 0;
}

static int tcb_cb_end(struct caldera_inst * inst, struct caldera_cb_state * st, struct caldera_pack * pack) {
    (void) inst;
    void * d;
    int64_t ne[2] = { st->rows, st->cols }, one = 1;
    int rc = caldera_pack_add(pack, "codes", CALDERA_DTYPE_I8, 2, ne, &d);
    if (rc < 0) return rc;
    memcpy(d, st->codes, (size_t) (st->rows * st->cols));
    if ((rc = caldera_pack_add(pack, "scale", CALDERA_DTYPE_F32, 1, &one, &d)) < 0) return rc;
    *(float *) d = st->scale;
    return 0;
}

static int tcb_quantize(struct caldera_inst * inst, const struct caldera_tensor * w, const struct caldera_tensor * h,
                        struct caldera_tensor * w_hat, struct caldera_pack * pack) {
    (void) h;
    struct caldera_cb_state * st = NULL;
    int rc = tcb_cb_begin(inst, w, &st);
    if (rc == 0) rc = tcb_cb_round(inst, st, 0, w, w_hat);
    if (rc == 0) rc = tcb_cb_end(inst, st, pack);
    tcb_cb_free(inst, st);
    return rc;
}

static int tcb_dequantize(struct caldera_inst * inst, const struct caldera_pack * pack, struct caldera_tensor * w_hat) {
    (void) inst;
    struct caldera_tensor codes, scale;
    int rc;
    if ((rc = caldera_pack_find(pack, "codes", &codes)) < 0 || (rc = caldera_pack_find(pack, "scale", &scale)) < 0) return rc;
    float s = *(const float *) scale.data;
    for (int64_t r = 0; r < w_hat->ne[0]; r++) {
        for (int64_t c = 0; c < w_hat->ne[1]; c++) {
            ((float *) w_hat->data)[r * w_hat->ld + c] = (float) ((const int8_t *) codes.data)[r * codes.ne[1] + c] * s;
        }
    }
    return 0;
}

static double tcb_bits(struct caldera_inst * inst, int64_t rows, int64_t cols) {
    const struct tcb_priv * p = caldera_inst_priv(inst);
    return (double) p->bits * (double) rows * (double) cols + 32.0;
}

static const struct caldera_quantizer_ops tcb_ops = {
    .struct_size = sizeof(struct caldera_quantizer_ops),
    .quantize = tcb_quantize, .dequantize = tcb_dequantize, .bits = tcb_bits,
    .cb_dim = tcb_cb_dim, .cb_begin = tcb_cb_begin, .cb_round = tcb_cb_round, .cb_end = tcb_cb_end,
    .cb_free = tcb_cb_free,
};

static const struct caldera_plugin tcb_plugin = {
    .abi_version = CALDERA_PLUGIN_ABI_VERSION, .struct_size = sizeof(struct caldera_plugin),
    .kind = CALDERA_PLUGIN_KIND_QUANTIZER, .name = "tcb", .description = "test scalar codebook",
    .version = CALDERA_VERSION_INT(0, 0, 1), .format_version = 1, .priv_size = sizeof(struct tcb_priv),
    .options = tcb_options, .ops = &tcb_ops,
};

// A quantizer without the codebook level.
static const struct caldera_quantizer_ops nocb_ops = {
    .struct_size = sizeof(struct caldera_quantizer_ops), .quantize = tcb_quantize, .dequantize = tcb_dequantize,
};
static const struct caldera_plugin nocb_plugin = {
    .abi_version = CALDERA_PLUGIN_ABI_VERSION, .struct_size = sizeof(struct caldera_plugin),
    .kind = CALDERA_PLUGIN_KIND_QUANTIZER, .name = "nocb", .description = "quantizer without cb ops",
    .version = CALDERA_VERSION_INT(0, 0, 1), .format_version = 1, .priv_size = sizeof(struct tcb_priv),
    .options = tcb_options, .ops = &nocb_ops,
};

// ---------------------------------------------------------------------------------------------
// Fixture helpers

struct fx {
    struct caldera_ctx *  ctx;
    struct caldera_inst * cb;
    struct caldera_inst * q;
};

static struct fx fx_make(const char * bits, const char * dim) {
    struct fx f = { .ctx = tu_ctx() };
    ck_assert_int_eq(caldera_registry_add(f.ctx, &tcb_plugin, "test"), 0);
    ck_assert_int_eq(caldera_registry_add(f.ctx, &nocb_plugin, "test"), 0);
    ck_assert_int_eq(caldera_inst_create(f.ctx, "tcb", "cb", &f.cb), 0);
    ck_assert_int_eq(caldera_inst_set(f.cb, "bits", bits), 0);
    ck_assert_int_eq(caldera_inst_set(f.cb, "dim", dim), 0);
    ck_assert_int_eq(caldera_inst_start(f.cb), 0);
    ck_assert_int_eq(caldera_inst_create(f.ctx, "ldlq", "q", &f.q), 0);
    ck_assert_int_eq(caldera_inst_set_ref(f.q, "codebook", f.cb), 0);
    return f;
}

static void fx_free(struct fx * f) {
    caldera_inst_free(f->q);
    caldera_inst_free(f->cb);
    caldera_ctx_free(f->ctx);
}

// Quantize w with instance q; returns w_hat (caller frees) and the rc.
static int run_q(struct caldera_inst * q, const struct caldera_tensor * w, const struct caldera_tensor * h,
                 struct caldera_tensor * w_hat, struct caldera_pack ** pack_out) {
    struct caldera_pack * pack = NULL;
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(caldera_inst_ctx(q), w->ne[0], w->ne[1], w_hat), 0);
    const struct caldera_quantizer_ops * ops = caldera_inst_plugin(q)->ops;
    int rc = ops->quantize(q, w, h, w_hat, pack);
    if (pack_out) *pack_out = pack;
    else caldera_pack_free(pack);
    return rc;
}

// tr((W - Ŵ) H (W - Ŵ)ᵀ), in double, directly.
static double proxy_loss(const struct caldera_tensor * w, const struct caldera_tensor * wh, const struct caldera_tensor * h) {
    int64_t m = w->ne[0], n = w->ne[1];
    double s = 0;
    double * e = malloc((size_t) n * sizeof(double));
    for (int64_t r = 0; r < m; r++) {
        for (int64_t c = 0; c < n; c++) e[c] = (double) ((float *) w->data)[r * w->ld + c] - ((float *) wh->data)[r * wh->ld + c];
        for (int64_t i = 0; i < n; i++) {
            double t = 0;
            for (int64_t j = 0; j < n; j++) t += (double) ((float *) h->data)[i * h->ld + j] * e[j];
            s += t * e[i];
        }
    }
    free(e);
    return s;
}

// H + damp * mean(diag H) * I (a new tensor).
static struct caldera_tensor damped(struct caldera_ctx * ctx, const struct caldera_tensor * h, double damp) {
    int64_t n = h->ne[0];
    struct caldera_tensor d;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, n, n, &d), 0);
    ck_assert_int_eq(caldera_tensor_copy(ctx, &d, h), 0);
    double mean = 0;
    for (int64_t i = 0; i < n; i++) mean += ((float *) h->data)[i * n + i];
    mean /= (double) n;
    for (int64_t i = 0; i < n; i++) ((float *) d.data)[i * n + i] += (float) (damp * mean);
    return d;
}

static int64_t count_diff(const struct caldera_tensor * a, const struct caldera_tensor * b) {
    int64_t k = 0;
    for (int64_t r = 0; r < a->ne[0]; r++)
        for (int64_t c = 0; c < a->ne[1]; c++)
            k += ((float *) a->data)[r * a->ld + c] != ((float *) b->data)[r * b->ld + c];
    return k;
}

// ---------------------------------------------------------------------------------------------

START_TEST(test_identity_is_rtn) {
    struct fx f = fx_make("3", "1");
    ck_assert_int_eq(caldera_inst_start(f.q), 0);
    struct caldera_tensor w = tu_randn(f.ctx, 37, 64, 11), wq, wr, wi;
    struct caldera_pack * pq, * pr;
    ck_assert_int_eq(run_q(f.q, &w, NULL, &wq, &pq), 0);
    ck_assert_int_eq(run_q(f.cb, &w, NULL, &wr, &pr), 0);
    ck_assert_int_eq(count_diff(&wq, &wr), 0);
    // explicit H = I with damp 0: L = I exactly, so still identical
    struct caldera_tensor eye;
    ck_assert_int_eq(caldera_tensor_alloc_f32(f.ctx, 64, 64, &eye), 0);
    for (int i = 0; i < 64; i++) ((float *) eye.data)[i * 64 + i] = 1.0f;
    ck_assert_int_eq(caldera_inst_set(f.q, "damp", "0"), 0);
    ck_assert_int_eq(caldera_inst_set(f.q, "tune_iters", "3"), 0);
    ck_assert_int_eq(run_q(f.q, &w, &eye, &wi, NULL), 0);
    ck_assert_int_eq(count_diff(&wi, &wr), 0);
    // the pack holds the codebook's tensors (and nothing of ldlq's own)
    ck_assert_int_eq(caldera_pack_count(pq), 2);
    ck_assert_uint_eq(caldera_pack_bits(pq), caldera_pack_bits(pr));
    caldera_pack_free(pq); caldera_pack_free(pr);
    caldera_tensor_free(&w); caldera_tensor_free(&wq); caldera_tensor_free(&wr); caldera_tensor_free(&wi);
    caldera_tensor_free(&eye);
    fx_free(&f);
}
END_TEST

// ldlq never worse than RTN on random (full-rank) and real-like (low rank + ridge) Hessians.
START_TEST(test_better_than_rtn) {
    struct fx f = fx_make("3", "1");
    ck_assert_int_eq(caldera_inst_start(f.q), 0);
    const int64_t m = 48, n = 96;
    double sum_ratio = 0;
    int cases = 0;
    for (uint64_t seed = 1; seed <= 4; seed++) {
        for (int kind = 0; kind < 2; kind++) {
            struct caldera_tensor w = tu_randn(f.ctx, m, n, 100 + seed), wq, wr;
            struct caldera_tensor h = kind == 0 ? tu_hessian(f.ctx, n, 2 * n, 0.0, seed)
                                                : tu_hessian(f.ctx, n, n / 8, 0.01, seed);
            ck_assert_int_eq(run_q(f.q, &w, &h, &wq, NULL), 0);
            ck_assert_int_eq(run_q(f.cb, &w, NULL, &wr, NULL), 0);
            double lq = proxy_loss(&w, &wq, &h), lr = proxy_loss(&w, &wr, &h);
            ck_assert_msg(lq <= RTN_MARGIN * lr, "seed %d kind %d: ldlq %g > rtn %g", (int) seed, kind, lq, lr);
            sum_ratio += lq / lr;
            cases++;
            caldera_tensor_free(&w); caldera_tensor_free(&wq); caldera_tensor_free(&wr); caldera_tensor_free(&h);
        }
    }
    // and clearly better on average (a broken feedback would give ~1)
    ck_assert_msg(sum_ratio / cases < 0.9, "mean loss ratio ldlq/rtn = %g", sum_ratio / cases);
    fx_free(&f);
}
END_TEST

// The loss the LDL identity gives (pack meta) equals tr(E Hd Eᵀ) computed directly.
START_TEST(test_ldl_loss_identity) {
    for (int dim = 1; dim <= 2; dim++) {
        struct fx f = fx_make("4", dim == 1 ? "1" : "2");
        ck_assert_int_eq(caldera_inst_set(f.q, "block", dim == 1 ? "4" : "2"), 0);
        ck_assert_int_eq(caldera_inst_start(f.q), 0);
        struct caldera_tensor w = tu_randn(f.ctx, 20, 64, 5), wq;
        struct caldera_tensor h = tu_hessian(f.ctx, 64, 16, 0.01, 9);
        struct caldera_tensor hd = damped(f.ctx, &h, 0.01);
        struct caldera_pack * pack;
        ck_assert_int_eq(run_q(f.q, &w, &h, &wq, &pack), 0);
        double lm = -1, ld = proxy_loss(&w, &wq, &hd);
        ck_assert_int_eq(caldera_meta_get_float(caldera_pack_meta(pack), "ldlq.loss_ldlq", &lm), 0);
        ck_assert_msg(fabs(lm - ld) <= LOSS_TOL * ld, "LDL loss %g vs direct %g", lm, ld);
        // dequantize through ldlq reproduces w_hat exactly
        struct caldera_tensor wd;
        ck_assert_int_eq(caldera_tensor_alloc_f32(f.ctx, 20, 64, &wd), 0);
        ck_assert_int_eq(caldera_quantizer_dequantize(f.q, pack, &wd), 0);
        ck_assert_int_eq(count_diff(&wd, &wq), 0);
        caldera_pack_free(pack);
        caldera_tensor_free(&w); caldera_tensor_free(&wq); caldera_tensor_free(&h); caldera_tensor_free(&hd);
        caldera_tensor_free(&wd);
        fx_free(&f);
    }
}
END_TEST

// Tune passes never increase the (damped) proxy loss, checked after every pass; they help.
START_TEST(test_tune_monotone) {
    for (int dim = 1; dim <= 2; dim++) {
        struct fx f = fx_make("3", dim == 1 ? "1" : "2");
        ck_assert_int_eq(caldera_inst_start(f.q), 0);
        struct caldera_tensor w = tu_randn(f.ctx, 32, 128, 21);
        struct caldera_tensor h = tu_hessian(f.ctx, 128, 24, 0.01, 22);
        struct caldera_tensor hd = damped(f.ctx, &h, 0.01);
        double prev = INFINITY, first = 0, last = 0;
        for (int t = 0; t <= 5; t++) {
            char buf[8];
            snprintf(buf, sizeof(buf), "%d", t);
            ck_assert_int_eq(caldera_inst_set(f.q, "tune_iters", buf), 0);
            ck_assert_int_eq(caldera_inst_set(f.q, "buffer_cols", t % 2 ? "32" : "128"), 0);
            struct caldera_tensor wq;
            ck_assert_int_eq(run_q(f.q, &w, &h, &wq, NULL), 0);
            double l = proxy_loss(&w, &wq, &hd);
            ck_assert_msg(l <= prev * (1 + TUNE_TOL), "dim %d pass %d: loss %g > previous %g", dim, t, l, prev);
            if (t == 0) first = l;
            last = l;
            prev = l;
            caldera_tensor_free(&wq);
        }
        ck_assert_msg(last < first, "dim %d: tune passes changed nothing (%g)", dim, first);
        caldera_tensor_free(&w); caldera_tensor_free(&h); caldera_tensor_free(&hd);
        fx_free(&f);
    }
}
END_TEST

// Textbook GPTQ (Frantar et al. 2022, Alg. 1 without lazy batches) in double precision: columns
// in the order given, U = upper Cholesky factor of Hd⁻¹, err = (w - q)/U_ii, w_{>i} -= err U_{i,>i}.
// ldlq goes from the last column to the first, so the reference runs on reversed columns.
static void gptq_reference(const float * w, const float * hd, int64_t m, int64_t n, float scale, float lv, float * out) {
    double * a = calloc((size_t) (n * n), sizeof(double));    // P Hd P, then its inverse, then U
    double * x = calloc((size_t) (m * n), sizeof(double));    // W P, updated in place
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) a[i * n + j] = hd[(n - 1 - i) * n + (n - 1 - j)];
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = 0; c < n; c++) x[r * n + c] = w[r * n + (n - 1 - c)];
    // inverse by Gauss-Jordan (SPD, no pivoting needed)
    double * inv = calloc((size_t) (n * n), sizeof(double));
    for (int64_t i = 0; i < n; i++) inv[i * n + i] = 1;
    for (int64_t k = 0; k < n; k++) {
        double p = a[k * n + k];
        for (int64_t j = 0; j < n; j++) { a[k * n + j] /= p; inv[k * n + j] /= p; }
        for (int64_t i = 0; i < n; i++) {
            if (i == k) continue;
            double f = a[i * n + k];
            for (int64_t j = 0; j < n; j++) { a[i * n + j] -= f * a[k * n + j]; inv[i * n + j] -= f * inv[k * n + j]; }
        }
    }
    // upper Cholesky: inv = Uᵀ U
    double * u = calloc((size_t) (n * n), sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = i; j < n; j++) {
            double s = inv[i * n + j];
            for (int64_t k = 0; k < i; k++) s -= u[k * n + i] * u[k * n + j];
            u[i * n + j] = i == j ? sqrt(s) : s / u[i * n + i];
        }
    }
    for (int64_t i = 0; i < n; i++) {
        for (int64_t r = 0; r < m; r++) {
            float q = tcb_round1((float) x[r * n + i], scale, lv, NULL);
            double err = (x[r * n + i] - q) / u[i * n + i];
            x[r * n + i] = q;
            for (int64_t j = i + 1; j < n; j++) x[r * n + j] -= err * u[i * n + j];
        }
    }
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = 0; c < n; c++) out[r * n + c] = (float) x[r * n + (n - 1 - c)];
    free(a); free(x); free(inv); free(u);
}

START_TEST(test_matches_gptq_reference) {
    struct fx f = fx_make("4", "1");
    ck_assert_int_eq(caldera_inst_set(f.q, "buffer_cols", "8"), 0);
    ck_assert_int_eq(caldera_inst_start(f.q), 0);
    const int64_t m = 12, n = 40;
    int64_t total_diff = 0;
    for (uint64_t seed = 1; seed <= 3; seed++) {
        struct caldera_tensor w = tu_randn(f.ctx, m, n, 300 + seed), wq, ref;
        struct caldera_tensor h = tu_hessian(f.ctx, n, 10, 0.01, 400 + seed);
        struct caldera_tensor hd = damped(f.ctx, &h, 0.01);
        ck_assert_int_eq(run_q(f.q, &w, &h, &wq, NULL), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(f.ctx, m, n, &ref), 0);
        float mx = 1e-8f;
        for (int64_t i = 0; i < m * n; i++) mx = fmaxf(mx, fabsf(((float *) w.data)[i]));
        gptq_reference(w.data, hd.data, m, n, mx / 7.0f, 7.0f, ref.data);
        total_diff += count_diff(&wq, &ref);
        caldera_tensor_free(&w); caldera_tensor_free(&wq); caldera_tensor_free(&ref);
        caldera_tensor_free(&h); caldera_tensor_free(&hd);
    }
    ck_assert_msg(total_diff == 0, "%lld of %lld weights differ from the GPTQ reference", (long long) total_diff,
                  (long long) (3 * m * n));
    fx_free(&f);
}
END_TEST

// Odd shapes, and buffer widths that do not divide n give the same result as one buffer.
START_TEST(test_odd_shapes_and_buffers) {
    struct fx f = fx_make("3", "1");
    ck_assert_int_eq(caldera_inst_start(f.q), 0);
    static const int64_t shapes[][2] = { { 1, 8 }, { 3, 577 }, { 16, 200 } };
    for (int s = 0; s < 3; s++) {
        int64_t m = shapes[s][0], n = shapes[s][1];
        struct caldera_tensor w = tu_randn(f.ctx, m, n, 50 + s), wr, whole;
        struct caldera_tensor h = tu_hessian(f.ctx, n, n / 4 + 1, 0.01, 60 + s);
        char buf[32];
        snprintf(buf, sizeof(buf), "%lld", (long long) n);
        ck_assert_int_eq(caldera_inst_set(f.q, "buffer_cols", buf), 0);
        ck_assert_int_eq(run_q(f.q, &w, &h, &whole, NULL), 0);
        ck_assert_int_eq(run_q(f.cb, &w, NULL, &wr, NULL), 0);
        ck_assert(proxy_loss(&w, &whole, &h) <= RTN_MARGIN * proxy_loss(&w, &wr, &h));
        static const char * bufs[] = { "1", "7", "64", "128", "1000" };
        for (int k = 0; k < 5; k++) {
            struct caldera_tensor wb;
            ck_assert_int_eq(caldera_inst_set(f.q, "buffer_cols", bufs[k]), 0);
            ck_assert_int_eq(run_q(f.q, &w, &h, &wb, NULL), 0);
            ck_assert_msg(count_diff(&wb, &whole) == 0, "%lldx%lld buffer %s differs from buffer n", (long long) m,
                          (long long) n, bufs[k]);
            caldera_tensor_free(&wb);
        }
        caldera_tensor_free(&w); caldera_tensor_free(&wr); caldera_tensor_free(&whole); caldera_tensor_free(&h);
    }
    fx_free(&f);
}
END_TEST

START_TEST(test_bits_delegate) {
    struct fx f = fx_make("3", "1");
    ck_assert_int_eq(caldera_inst_start(f.q), 0);
    const struct caldera_quantizer_ops * ops = caldera_inst_plugin(f.q)->ops;
    ck_assert_double_eq(ops->bits(f.q, 10, 16), 3.0 * 160 + 32);
    fx_free(&f);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// Error paths

static void expect_err(struct caldera_ctx * ctx, int rc, int want, const char * text) {
    ck_assert_int_eq(rc, want);
    ck_assert_msg(strstr(caldera_ctx_errmsg(ctx), text) != NULL, "message '%s' lacks '%s'", caldera_ctx_errmsg(ctx),
                  text);
}

START_TEST(test_err_config) {
    struct fx f = fx_make("3", "2");
    // codebook without cb ops
    struct caldera_inst * nocb;
    ck_assert_int_eq(caldera_inst_create(f.ctx, "nocb", "plain", &nocb), 0);
    ck_assert_int_eq(caldera_inst_start(nocb), 0);
    ck_assert_int_eq(caldera_inst_set_ref(f.q, "codebook", nocb), 0);
    expect_err(f.ctx, caldera_inst_start(f.q), CALDERA_ERR_UNSUPPORTED, "[plain] (plugin nocb) has no codebook interface");
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(f.ctx), "[q] ldlq:"));
    // block not a multiple of cb_dim = 2
    ck_assert_int_eq(caldera_inst_set_ref(f.q, "codebook", f.cb), 0);
    ck_assert_int_eq(caldera_inst_set(f.q, "block", "3"), 0);
    expect_err(f.ctx, caldera_inst_start(f.q), CALDERA_ERR_RANGE, "option 'block' = 3 is not a multiple of the codebook's cb_dim 2");
    // buffer not a multiple of the block
    ck_assert_int_eq(caldera_inst_set(f.q, "block", "4"), 0);
    ck_assert_int_eq(caldera_inst_set(f.q, "buffer_cols", "10"), 0);
    expect_err(f.ctx, caldera_inst_start(f.q), CALDERA_ERR_RANGE, "option 'buffer_cols' = 10 is not a multiple of the block size 4");
    ck_assert_int_eq(caldera_inst_set(f.q, "buffer_cols", "12"), 0);
    ck_assert_int_eq(caldera_inst_start(f.q), 0);
    // shape check: cols not a multiple of the block
    const struct caldera_plugin * pl = caldera_inst_plugin(f.q);
    expect_err(f.ctx, pl->check_shape(f.q, 4, 10), CALDERA_ERR_UNSUPPORTED, "cols=10 is not a multiple of the block size 4");
    ck_assert_int_eq(pl->check_shape(f.q, 4, 12), 0);
    caldera_inst_free(nocb);
    // codebook not set at all
    struct caldera_inst * q2;
    ck_assert_int_eq(caldera_inst_create(f.ctx, "ldlq", "q2", &q2), 0);
    expect_err(f.ctx, caldera_inst_start(q2), CALDERA_ERR_INVAL, "option 'codebook'");
    caldera_inst_free(q2);
    fx_free(&f);
}
END_TEST

START_TEST(test_err_inputs) {
    struct fx f = fx_make("3", "1");
    ck_assert_int_eq(caldera_inst_set(f.q, "damp", "0"), 0);
    ck_assert_int_eq(caldera_inst_start(f.q), 0);
    const int64_t m = 4, n = 16;
    struct caldera_tensor w = tu_randn(f.ctx, m, n, 1), wh, h = tu_hessian(f.ctx, n, 32, 0.0, 2), hbad;
    // NaN in W
    ((float *) w.data)[1 * n + 3] = NAN;
    expect_err(f.ctx, run_q(f.q, &w, &h, &wh, NULL), CALDERA_ERR_NUMERIC, "W has a NaN or Inf at (1, 3)");
    caldera_tensor_free(&wh);
    ((float *) w.data)[1 * n + 3] = 0.5f;
    // Inf in H
    ck_assert_int_eq(caldera_tensor_alloc_f32(f.ctx, n, n, &hbad), 0);
    ck_assert_int_eq(caldera_tensor_copy(f.ctx, &hbad, &h), 0);
    ((float *) hbad.data)[2 * n + 5] = INFINITY;
    expect_err(f.ctx, run_q(f.q, &w, &hbad, &wh, NULL), CALDERA_ERR_NUMERIC, "H has a NaN or Inf at (2, 5)");
    caldera_tensor_free(&wh);
    // not positive definite: an indefinite H (one negative eigenvalue direction) with damp 0
    ck_assert_int_eq(caldera_tensor_copy(f.ctx, &hbad, &h), 0);
    ((float *) hbad.data)[7 * n + 7] = -5.0f;
    expect_err(f.ctx, run_q(f.q, &w, &hbad, &wh, NULL), CALDERA_ERR_NUMERIC, "is not positive definite");
    caldera_tensor_free(&wh);
    // all-zero H: damping a zero mean diagonal cannot help
    memset(hbad.data, 0, (size_t) (n * n) * sizeof(float));
    ck_assert_int_eq(caldera_inst_set(f.q, "damp", "0.01"), 0);
    expect_err(f.ctx, run_q(f.q, &w, &hbad, &wh, NULL), CALDERA_ERR_NUMERIC, "mean(diag H) = 0");
    caldera_tensor_free(&wh);
    // H of the wrong size
    struct caldera_tensor hs = tu_hessian(f.ctx, n - 1, 8, 0.1, 3);
    expect_err(f.ctx, run_q(f.q, &w, &hs, &wh, NULL), CALDERA_ERR_INVAL, "H is 15x15; allowed: 16x16");
    caldera_tensor_free(&wh);
    // w_hat of the wrong size
    struct caldera_pack * pack;
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    struct caldera_tensor small;
    ck_assert_int_eq(caldera_tensor_alloc_f32(f.ctx, m, n - 1, &small), 0);
    const struct caldera_quantizer_ops * ops = caldera_inst_plugin(f.q)->ops;
    expect_err(f.ctx, ops->quantize(f.q, &w, &h, &small, pack), CALDERA_ERR_INVAL, "w_hat is 4x15; allowed: 4x16");
    struct caldera_tensor okh;
    ck_assert_int_eq(caldera_tensor_alloc_f32(f.ctx, m, n, &okh), 0);
    expect_err(f.ctx, ops->quantize(f.q, &w, &h, &okh, NULL), CALDERA_ERR_INVAL, "pack is NULL");
    caldera_tensor_free(&okh);
    caldera_pack_free(pack);
    caldera_tensor_free(&small); caldera_tensor_free(&hs);
    caldera_tensor_free(&w); caldera_tensor_free(&h); caldera_tensor_free(&hbad);
    fx_free(&f);
}
END_TEST

START_TEST(test_err_cols_not_block) {
    struct fx f = fx_make("3", "2");
    ck_assert_int_eq(caldera_inst_start(f.q), 0);
    struct caldera_tensor w = tu_randn(f.ctx, 3, 7, 1), wh;
    expect_err(f.ctx, run_q(f.q, &w, NULL, &wh, NULL), CALDERA_ERR_UNSUPPORTED, "W is 3x7; allowed: rows >= 1 and cols a positive multiple of the block size 2");
    caldera_tensor_free(&wh); caldera_tensor_free(&w);
    fx_free(&f);
}
END_TEST

// Out-of-memory sweep (SQLite style): fail allocation k = 1, 2, ... inside quantize until it
// succeeds; every failure must be CALDERA_ERR_NOMEM and leak nothing (checked under ASan).
START_TEST(test_oom_sweep) {
    struct fx f = fx_make("3", "2");
    ck_assert_int_eq(caldera_inst_set(f.q, "tune_iters", "1"), 0);
    ck_assert_int_eq(caldera_inst_set(f.q, "buffer_cols", "4"), 0);
    ck_assert_int_eq(caldera_inst_start(f.q), 0);
    struct caldera_tensor w = tu_randn(f.ctx, 6, 16, 1), h = tu_hessian(f.ctx, 16, 8, 0.01, 2), wh, ref;
    ck_assert_int_eq(run_q(f.q, &w, &h, &ref, NULL), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(f.ctx, 6, 16, &wh), 0);
    const struct caldera_quantizer_ops * ops = caldera_inst_plugin(f.q)->ops;
    int rc = -1;
    int64_t k;
    for (k = 1; k < 500 && rc != 0; k++) {
        struct caldera_pack * pack;
        ck_assert_int_eq(caldera_pack_init(&pack), 0);
        caldera_alloc_fail_at(k);
        rc = ops->quantize(f.q, &w, &h, &wh, pack);
        caldera_alloc_fail_at(0);
        caldera_pack_free(pack);
        ck_assert_msg(rc == 0 || rc == CALDERA_ERR_NOMEM, "allocation %lld: rc %d", (long long) k, rc);
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_int_gt(k, 5);   // the sweep did hit allocations
    ck_assert_int_eq(count_diff(&wh, &ref), 0);
    caldera_tensor_free(&w); caldera_tensor_free(&h); caldera_tensor_free(&wh); caldera_tensor_free(&ref);
    fx_free(&f);
}
END_TEST

// Strided views (ld > cols) for W, H and w_hat give the same result as contiguous tensors.
START_TEST(test_strided_views) {
    struct fx f = fx_make("3", "1");
    ck_assert_int_eq(caldera_inst_set(f.q, "tune_iters", "2"), 0);
    ck_assert_int_eq(caldera_inst_start(f.q), 0);
    const int64_t m = 9, n = 24, pad = 5;
    struct caldera_tensor w = tu_randn(f.ctx, m, n, 3), h = tu_hessian(f.ctx, n, 6, 0.01, 4), ref;
    ck_assert_int_eq(run_q(f.q, &w, &h, &ref, NULL), 0);
    float * wb = calloc((size_t) (m * (n + pad)), sizeof(float));
    float * hb = calloc((size_t) (n * (n + pad)), sizeof(float));
    float * ob = calloc((size_t) (m * (n + pad)), sizeof(float));
    for (int64_t r = 0; r < m; r++) memcpy(wb + r * (n + pad), (float *) w.data + r * n, (size_t) n * sizeof(float));
    for (int64_t r = 0; r < n; r++) memcpy(hb + r * (n + pad), (float *) h.data + r * n, (size_t) n * sizeof(float));
    struct caldera_tensor ws = caldera_tensor_view_f32(wb, m, n), hs = caldera_tensor_view_f32(hb, n, n);
    struct caldera_tensor os = caldera_tensor_view_f32(ob, m, n);
    ws.ld = os.ld = hs.ld = n + pad;
    struct caldera_pack * pack;
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    const struct caldera_quantizer_ops * ops = caldera_inst_plugin(f.q)->ops;
    ck_assert_int_eq(ops->quantize(f.q, &ws, &hs, &os, pack), 0);
    ck_assert_int_eq(count_diff(&os, &ref), 0);
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = n; c < n + pad; c++) ck_assert(ob[r * (n + pad) + c] == 0.0f);   // padding untouched
    caldera_pack_free(pack);
    free(wb); free(hb); free(ob);
    caldera_tensor_free(&w); caldera_tensor_free(&h); caldera_tensor_free(&ref);
    fx_free(&f);
}
END_TEST

START_TEST(test_tune_step_kernels) {
    // The core's tune-step entry points on the CPU (for b = 8 an AVX2 path where the CPU has it)
    // against the scalar work items of ldlq-step.h, bit for bit: targets, guard decisions (both
    // ways: q or old nearer in the H_jj norm) and the rewritten rows; b = 8 and b = 4, H_jj a view
    // with ld > b.
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_rng rng;
    caldera_rng_seed(&rng, 31);
    for (int64_t b = 4; b <= 8; b += 4) {
        const int64_t m = 67, ldh = 3 * b;
        float * old = malloc((size_t) (m * b) * sizeof(float)), * g = malloc((size_t) (m * b) * sizeof(float));
        float * hi = malloc((size_t) (b * b) * sizeof(float)), * hbig = malloc((size_t) (b * ldh) * sizeof(float));
        float * xs = malloc((size_t) (m * b) * sizeof(float)), * xr = malloc((size_t) (m * b) * sizeof(float));
        float * q = malloc((size_t) (m * b) * sizeof(float));
        for (int64_t i = 0; i < m * b; i++) {
            old[i] = (float) caldera_rng_normal(&rng);
            g[i] = (float) (0.3 * caldera_rng_normal(&rng));
        }
        for (int64_t i = 0; i < b * b; i++) hi[i] = (float) (0.2 * caldera_rng_normal(&rng));
        for (int64_t k = 0; k < b; k++) {   // a symmetric positive definite H_jj inside a wider matrix
            for (int64_t l = 0; l < ldh; l++) hbig[k * ldh + l] = 0.0f;
            for (int64_t l = 0; l <= k; l++) {
                float v = l == k ? (float) (b + caldera_rng_uniform(&rng)) : (float) (0.5 * caldera_rng_normal(&rng));
                hbig[k * ldh + b + l] = hbig[l * ldh + b + k] = v;
            }
        }
        struct caldera_tensor to = caldera_tensor_view_f32(old, m, b), tg = caldera_tensor_view_f32(g, m, b);
        struct caldera_tensor th = caldera_tensor_view_f32(hi, b, b), tx = caldera_tensor_view_f32(xs, m, b);
        struct caldera_tensor tq = caldera_tensor_view_f32(q, m, b), thj = caldera_tensor_view_f32(hbig + b, b, b);
        thj.ld = ldh;
        ck_assert_int_eq(caldera_ldlq_tune_target(ctx, &to, &tg, &th, &tx), 0);
        for (int64_t r = 0; r < m; r++) {
            for (int64_t k = 0; k < b; k++) {
                const float e = ldlq_tune_target(r, k, old, g, hi, b);
                ck_assert_msg(memcmp(&xs[r * b + k], &e, sizeof(e)) == 0, "b %d target (%d, %d)", (int) b, (int) r, (int) k);
                q[r * b + k] = xs[r * b + k] + (float) (0.4 * caldera_rng_normal(&rng));
            }
        }
        memcpy(xr, xs, (size_t) (m * b) * sizeof(float));
        int64_t kept = -1, kept_ref = 0;
        ck_assert_int_eq(caldera_ldlq_tune_guard(ctx, &tq, &to, &thj, &tx, &kept), 0);
        for (int64_t r = 0; r < m; r++) kept_ref += ldlq_tune_guard(r, q, old, xr, hbig + b, ldh, b);
        ck_assert_int_eq(kept, kept_ref);
        ck_assert(kept > 0 && kept < m);   // both decisions exercised
        ck_assert(memcmp(xs, xr, (size_t) (m * b) * sizeof(float)) == 0);
        free(old); free(g); free(hi); free(hbig); free(xs); free(xr); free(q);
    }
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * ldlq_suite(void) {
    Suite * s = suite_create("ldlq");
    TCase * tc = tcase_create("scalar");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_identity_is_rtn);
    tcase_add_test(tc, test_better_than_rtn);
    tcase_add_test(tc, test_ldl_loss_identity);
    tcase_add_test(tc, test_tune_monotone);
    tcase_add_test(tc, test_matches_gptq_reference);
    tcase_add_test(tc, test_odd_shapes_and_buffers);
    tcase_add_test(tc, test_bits_delegate);
    tcase_add_test(tc, test_strided_views);
    tcase_add_test(tc, test_tune_step_kernels);
    suite_add_tcase(s, tc);
    TCase * te = tcase_create("errors");
    tcase_add_test(te, test_err_config);
    tcase_add_test(te, test_err_inputs);
    tcase_add_test(te, test_err_cols_not_block);
    tcase_add_test(te, test_oom_sweep);
    suite_add_tcase(s, te);
    return s;
}

TU_MAIN(ldlq_suite)
