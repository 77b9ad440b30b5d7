// SPDX-License-Identifier: MIT
// Tests of the llama model plugin against a second, straightforward implementation: tiny random
// models (GQA, tied and separate heads, q/k/v biases, linear RoPE scaling) are served by an
// in-memory format plugin defined here, and every logit of a batch forward pass is compared with
// a per-token, per-head double-precision forward written independently below. Also: KV-cache
// decoding equals the batch forward, the observer sees each input group, layer replacement
// (dense and opaque), f16 weights, and refusals of what the plugin cannot run.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define LOGIT_TOL 2e-4   // max |Δlogit| / max |logit|: f32 gemm sums of ≤ 64 terms per layer vs double
#define F16_TOL   2e-2   // f16 weights vs f32 (relative to max |logit|)

// ---------------------------------------------------------------------------------------------
// A tiny model and an in-memory format plugin that serves it

struct tiny {
    struct caldera_model_desc d;
    int                       bias;
    float *                   emb, * head, * norm;        // head NULL when tied
    float *                   an[4], * fn[4];             // per layer norms
    float *                   w[4][7];                    // q k v o gate up down
    float *                   b[4][3];                    // q k v biases
    char                      names[64][96];
    float *                   data[64];
    int64_t                   ne[64][2];
    int                       n;
};

static struct tiny g_tiny;

static void tiny_add(struct tiny * t, const char * name, float * data, int64_t r, int64_t c) {
    snprintf(t->names[t->n], sizeof(t->names[0]), "%s", name);
    t->data[t->n]  = data;
    t->ne[t->n][0] = r;
    t->ne[t->n][1] = c;
    t->n++;
}

static float * rnd(int64_t n, float sigma, uint64_t seed) {
    float * x = malloc((size_t) n * sizeof(float));
    tu_fill_normal(x, n, sigma, seed);
    return x;
}

static const char * const lin_names[7] = { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj" };

static void tiny_make(struct tiny * t, int64_t layers, int64_t hidden, int64_t ffn, int64_t nh, int64_t nkv, int64_t vocab,
                      int tied, int bias, const char * scaling, double factor, uint64_t seed) {
    memset(t, 0, sizeof(*t));
    snprintf(t->d.arch, sizeof(t->d.arch), "llama");
    t->d.n_layers = layers;
    t->d.hidden = hidden;
    t->d.ffn = ffn;
    t->d.n_heads = nh;
    t->d.n_kv_heads = nkv;
    t->d.head_dim = hidden / nh;
    t->d.vocab = vocab;
    t->d.ctx_len = 512;
    t->d.rope_theta = 10000.0 * (double) (1 + seed % 7);
    snprintf(t->d.rope_scaling, sizeof(t->d.rope_scaling), "%s", scaling);
    t->d.rope_scaling_factor = factor;
    t->d.norm_eps = 1e-5 * (double) (1 + seed % 3);
    t->d.tied_embeddings = tied;
    t->bias = bias;
    int64_t hd = t->d.head_dim, qd = nh * hd, kvd = nkv * hd;
    char    name[96];
    t->emb = rnd(vocab * hidden, 1.0f, seed + 1);
    tiny_add(t, "model.embed_tokens.weight", t->emb, vocab, hidden);
    t->norm = rnd(hidden, 0.2f, seed + 2);
    for (int64_t i = 0; i < hidden; i++) t->norm[i] += 1.0f;
    tiny_add(t, "model.norm.weight", t->norm, hidden, 0);
    if (!tied) {
        t->head = rnd(vocab * hidden, 0.5f, seed + 3);
        tiny_add(t, "lm_head.weight", t->head, vocab, hidden);
    }
    const int64_t rows[7] = { qd, kvd, kvd, hidden, ffn, ffn, hidden };
    const int64_t cols[7] = { hidden, hidden, hidden, qd, hidden, hidden, ffn };
    for (int64_t l = 0; l < layers; l++) {
        t->an[l] = rnd(hidden, 0.2f, seed + 10 + (uint64_t) l);
        t->fn[l] = rnd(hidden, 0.2f, seed + 20 + (uint64_t) l);
        for (int64_t i = 0; i < hidden; i++) {
            t->an[l][i] += 1.0f;
            t->fn[l][i] += 1.0f;
        }
        snprintf(name, sizeof(name), "model.layers.%d.input_layernorm.weight", (int) l);
        tiny_add(t, name, t->an[l], hidden, 0);
        snprintf(name, sizeof(name), "model.layers.%d.post_attention_layernorm.weight", (int) l);
        tiny_add(t, name, t->fn[l], hidden, 0);
        for (int k = 0; k < 7; k++) {
            t->w[l][k] = rnd(rows[k] * cols[k], (float) (1.0 / sqrt((double) cols[k])), seed + 100 + (uint64_t) (l * 7 + k));
            snprintf(name, sizeof(name), "model.layers.%d.%s.weight", (int) l, lin_names[k]);
            tiny_add(t, name, t->w[l][k], rows[k], cols[k]);
            if (bias && k < 3) {
                t->b[l][k] = rnd(rows[k], 0.3f, seed + 200 + (uint64_t) (l * 3 + k));
                snprintf(name, sizeof(name), "model.layers.%d.%s.bias", (int) l, lin_names[k]);
                tiny_add(t, name, t->b[l][k], rows[k], 0);
            }
        }
    }
}

static void tiny_free(struct tiny * t) {
    for (int i = 0; i < t->n; i++) free(t->data[i]);
    memset(t, 0, sizeof(*t));
}

static int mem_open(struct caldera_inst * inst, const char * path) { return 0; }
static int64_t mem_n(struct caldera_inst * inst) { return g_tiny.n; }
static int mem_info(struct caldera_inst * inst, int64_t i, struct caldera_tensor_info * out) {
    memset(out, 0, sizeof(*out));
    out->name = out->hf_name = g_tiny.names[i];
    out->dtype = CALDERA_DTYPE_F32;
    out->ndim = g_tiny.ne[i][1] ? 2 : 1;
    out->ne[0] = g_tiny.ne[i][0];
    out->ne[1] = g_tiny.ne[i][1];
    return 0;
}
static int mem_read(struct caldera_inst * inst, int64_t i, enum caldera_dtype want, struct caldera_tensor * out, int * owned) {
    ck_assert_int_eq(want, CALDERA_DTYPE_F32);
    *out = caldera_tensor_view_f32(g_tiny.data[i], g_tiny.ne[i][0], g_tiny.ne[i][1] ? g_tiny.ne[i][1] : 1);
    if (!g_tiny.ne[i][1]) {
        out->ndim = 1;
        out->ne[1] = 0;
    }
    *owned = 0;
    return 0;
}
static int mem_desc(struct caldera_inst * inst, struct caldera_model_desc * out) {
    *out = g_tiny.d;
    return 0;
}
static const struct caldera_format_ops mem_ops = {
    .struct_size = sizeof(struct caldera_format_ops), .open = mem_open, .n_tensors = mem_n, .tensor_info = mem_info,
    .read_tensor = mem_read, .model_desc = mem_desc,
};
static const struct caldera_plugin memfmt_plugin = {
    .abi_version = CALDERA_PLUGIN_ABI_VERSION, .struct_size = sizeof(struct caldera_plugin), .kind = CALDERA_PLUGIN_KIND_FORMAT,
    .name = "memfmt", .description = "test: the tiny model in memory", .ops = &mem_ops,
};

struct rig {
    struct caldera_ctx *             ctx;
    struct caldera_inst *            reader, * model;
    const struct caldera_model_ops * ops;
};

static int g_plain_c;   // 1: rig_open sets simd = false (the portable kernels)
static const char * g_head;   // rig_open sets option head to this after loading (as caldera-pipe --head)

static int rig_open(struct rig * r, const char * weights) {
    memset(r, 0, sizeof(*r));
    r->ctx = tu_ctx();
    ck_assert_int_eq(caldera_registry_add(r->ctx, &memfmt_plugin, "test"), 0);
    ck_assert_int_eq(caldera_inst_create(r->ctx, "memfmt", "mem", &r->reader), 0);
    ck_assert_int_eq(caldera_inst_start(r->reader), 0);
    ck_assert_int_eq(caldera_inst_create(r->ctx, "llama", "model", &r->model), 0);
    if (weights) ck_assert_int_eq(caldera_inst_set(r->model, "weights", weights), 0);
    if (g_plain_c) ck_assert_int_eq(caldera_inst_set(r->model, "simd", "false"), 0);
    ck_assert_int_eq(caldera_inst_start(r->model), 0);
    ck_assert_int_eq(caldera_model_ops_of(r->model, &r->ops), 0);
    int rc = r->ops->load(r->model, r->reader);
    if (rc == 0 && g_head) ck_assert_int_eq(caldera_inst_set(r->model, "head", g_head), 0);
    return rc;
}

static void rig_close(struct rig * r) {
    caldera_inst_free(r->model);
    caldera_inst_free(r->reader);
    caldera_ctx_free(r->ctx);
}

// ---------------------------------------------------------------------------------------------
// The reference: one token at a time, one head at a time, in double

static void ref_rms(const double * x, const float * w, double * y, int64_t n, double eps) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    double s = 1.0 / sqrt(ss / (double) n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * s * w[i];
}

static void ref_mv(const float * w, const float * b, const double * x, double * y, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; r++) {
        double s = b ? b[r] : 0.0;
        for (int64_t c = 0; c < cols; c++) s += (double) w[r * cols + c] * x[c];
        y[r] = s;
    }
}

// rotate_half RoPE of one head vector v (hd) at position pos: pairs (i, i + hd/2) turned by
// pos / factor · theta^(-2i/hd), written as a complex product
static void ref_rope(double * v, int64_t hd, double pos, double theta) {
    for (int64_t i = 0; i < hd / 2; i++) {
        double complex_re = v[i], complex_im = v[i + hd / 2];
        double ang = pos * pow(theta, -(double) (2 * i) / (double) hd);
        double c = cos(ang), s = sin(ang);
        v[i]          = complex_re * c - complex_im * s;
        v[i + hd / 2] = complex_re * s + complex_im * c;
    }
}

// logits (n_tok × vocab) of one sequence; wq_override: replacement for layer 0's q weight or NULL
static void ref_forward(const struct tiny * t, const int32_t * tok, int64_t n_tok, const float * wq0, double * logits) {
    const struct caldera_model_desc * d = &t->d;
    int64_t H = d->hidden, F = d->ffn, hd = d->head_dim, nh = d->n_heads, nkv = d->n_kv_heads;
    double  scale = strcmp(d->rope_scaling, "linear") == 0 ? 1.0 / d->rope_scaling_factor : 1.0;
    double * x = calloc((size_t) (n_tok * H), sizeof(double));
    double * K = calloc((size_t) (n_tok * nkv * hd), sizeof(double));
    double * V = calloc((size_t) (n_tok * nkv * hd), sizeof(double));
    double * Q = calloc((size_t) (n_tok * nh * hd), sizeof(double));
    double * h = malloc((size_t) H * sizeof(double));
    double * a = malloc((size_t) (nh * hd) * sizeof(double));
    double * g = malloc((size_t) F * sizeof(double)), * u = malloc((size_t) F * sizeof(double));
    double * o = malloc((size_t) H * sizeof(double)), * p = malloc((size_t) n_tok * sizeof(double));
    for (int64_t i = 0; i < n_tok; i++) {
        for (int64_t j = 0; j < H; j++) x[i * H + j] = t->emb[(int64_t) tok[i] * H + j];
    }
    for (int64_t l = 0; l < d->n_layers; l++) {
        for (int64_t i = 0; i < n_tok; i++) {   // q, k, v of every position first
            ref_rms(x + i * H, t->an[l], h, H, d->norm_eps);
            ref_mv(l == 0 && wq0 ? wq0 : t->w[l][0], t->bias ? t->b[l][0] : NULL, h, Q + i * nh * hd, nh * hd, H);
            ref_mv(t->w[l][1], t->bias ? t->b[l][1] : NULL, h, K + i * nkv * hd, nkv * hd, H);
            ref_mv(t->w[l][2], t->bias ? t->b[l][2] : NULL, h, V + i * nkv * hd, nkv * hd, H);
            for (int64_t hh = 0; hh < nh; hh++) ref_rope(Q + i * nh * hd + hh * hd, hd, (double) i * scale, d->rope_theta);
            for (int64_t hh = 0; hh < nkv; hh++) ref_rope(K + i * nkv * hd + hh * hd, hd, (double) i * scale, d->rope_theta);
        }
        for (int64_t i = 0; i < n_tok; i++) {
            for (int64_t hh = 0; hh < nh; hh++) {
                int64_t kvh = hh * nkv / nh;   // heads grouped consecutively
                double  m = -1e300, sum = 0;
                for (int64_t j = 0; j <= i; j++) {
                    double s = 0;
                    for (int64_t c = 0; c < hd; c++) s += Q[i * nh * hd + hh * hd + c] * K[j * nkv * hd + kvh * hd + c];
                    p[j] = s / sqrt((double) hd);
                    if (p[j] > m) m = p[j];
                }
                for (int64_t j = 0; j <= i; j++) sum += (p[j] = exp(p[j] - m));
                for (int64_t c = 0; c < hd; c++) {
                    double s = 0;
                    for (int64_t j = 0; j <= i; j++) s += p[j] / sum * V[j * nkv * hd + kvh * hd + c];
                    a[hh * hd + c] = s;
                }
            }
            ref_mv(t->w[l][3], NULL, a, o, H, nh * hd);
            for (int64_t j = 0; j < H; j++) x[i * H + j] += o[j];
            ref_rms(x + i * H, t->fn[l], h, H, d->norm_eps);
            ref_mv(t->w[l][4], NULL, h, g, F, H);
            ref_mv(t->w[l][5], NULL, h, u, F, H);
            for (int64_t j = 0; j < F; j++) g[j] = g[j] / (1.0 + exp(-g[j])) * u[j];
            ref_mv(t->w[l][6], NULL, g, o, H, F);
            for (int64_t j = 0; j < H; j++) x[i * H + j] += o[j];
        }
    }
    for (int64_t i = 0; i < n_tok; i++) {
        ref_rms(x + i * H, t->norm, h, H, d->norm_eps);
        ref_mv(t->head ? t->head : t->emb, NULL, h, logits + i * d->vocab, d->vocab, H);
    }
    free(x), free(K), free(V), free(Q), free(h), free(a), free(g), free(u), free(o), free(p);
}

// ---------------------------------------------------------------------------------------------
// Collecting logits of the plugin

struct sink { float * lg; int64_t n_tok, vocab, calls; };

static int sink_fn(void * user, int64_t seq, int64_t pos0, const struct caldera_tensor * l) {
    struct sink * s = user;
    ck_assert_int_eq(l->ne[1], s->vocab);
    for (int64_t r = 0; r < l->ne[0]; r++) {
        memcpy(s->lg + ((seq * s->n_tok) + pos0 + r) * s->vocab, (const float *) l->data + r * l->ld,
               (size_t) s->vocab * sizeof(float));
    }
    s->calls++;
    return 0;
}

static int32_t * tokens(int64_t n, int64_t vocab, uint64_t seed) {
    int32_t *          t = malloc((size_t) n * sizeof(int32_t));
    struct caldera_rng rng;
    caldera_rng_seed(&rng, seed);
    for (int64_t i = 0; i < n; i++) t[i] = (int32_t) (caldera_rng_u64(&rng) % (uint64_t) vocab);
    return t;
}

// max |a - ref| / max |ref|
static double rel_err(const float * a, const double * ref, int64_t n) {
    double m = 0, e = 0;
    for (int64_t i = 0; i < n; i++) {
        m = fabs(ref[i]) > m ? fabs(ref[i]) : m;
        e = fabs(a[i] - ref[i]) > e ? fabs(a[i] - ref[i]) : e;
    }
    return e / m;
}

static void check_vs_reference(const char * weights, double tol) {
    struct rig r;
    ck_assert_int_eq(rig_open(&r, weights), 0);
    int64_t   n_seq = 2, n_tok = 150, V = g_tiny.d.vocab;   // 150 > the 128-row query block
    int32_t * tok = tokens(n_seq * n_tok, V, 7);
    struct sink s = { calloc((size_t) (n_seq * n_tok * V), sizeof(float)), n_tok, V, 0 };
    struct caldera_model_forward_args fa = { .struct_size = sizeof(fa), .tokens = tok, .n_seq = n_seq, .n_tok = n_tok,
                                             .on_logits = sink_fn, .logits_user = &s, .logits_from = 0, .logits_to = n_tok };
    ck_assert_int_eq(r.ops->forward(r.model, &fa), 0);
    double * ref = malloc((size_t) (n_tok * V) * sizeof(double));
    for (int64_t sq = 0; sq < n_seq; sq++) {
        ref_forward(&g_tiny, tok + sq * n_tok, n_tok, NULL, ref);
        double e = rel_err(s.lg + sq * n_tok * V, ref, n_tok * V);
        ck_assert_msg(e < tol, "sequence %d: relative logit error %g >= %g", (int) sq, e, tol);
    }
    free(ref), free(s.lg), free(tok);
    rig_close(&r);
}

START_TEST(test_forward_gqa_tied) {
    tiny_make(&g_tiny, 2, 32, 48, 4, 2, 61, 1, 0, "", 0, 1);
    check_vs_reference(NULL, LOGIT_TOL);
    tiny_free(&g_tiny);
}
END_TEST

START_TEST(test_forward_untied_bias_linear_rope) {
    tiny_make(&g_tiny, 3, 48, 80, 6, 2, 37, 0, 1, "linear", 4.0, 2);
    check_vs_reference(NULL, LOGIT_TOL);
    tiny_free(&g_tiny);
}
END_TEST

START_TEST(test_forward_mha_f16) {
    tiny_make(&g_tiny, 2, 32, 40, 4, 4, 29, 1, 0, "none", 0, 3);
    check_vs_reference(NULL, LOGIT_TOL);
    check_vs_reference("f16", F16_TOL);
    tiny_free(&g_tiny);
}
END_TEST

static void check_decode(const char * weights);

// The portable C kernels (simd = false): batch forward and decoding, f32 and f16.
START_TEST(test_plain_c_kernels) {
    g_plain_c = 1;
    tiny_make(&g_tiny, 2, 32, 40, 4, 2, 29, 1, 0, "", 0, 9);
    check_vs_reference(NULL, LOGIT_TOL);
    check_decode(NULL);
    check_decode("f16");
    tiny_free(&g_tiny);
    g_plain_c = 0;
}
END_TEST

// Decoding: the prompt in two parts, then token by token; logits equal the batch forward's.
static void check_decode(const char * weights) {
    struct rig r;
    ck_assert_int_eq(rig_open(&r, weights), 0);
    int64_t   n_tok = 140, V = g_tiny.d.vocab;
    int32_t * tok = tokens(n_tok, V, 11);
    struct sink s = { calloc((size_t) (n_tok * V), sizeof(float)), n_tok, V, 0 };
    struct caldera_model_forward_args fa = { .struct_size = sizeof(fa), .tokens = tok, .n_seq = 1, .n_tok = n_tok,
                                             .on_logits = sink_fn, .logits_user = &s, .logits_from = 0, .logits_to = n_tok };
    ck_assert_int_eq(r.ops->forward(r.model, &fa), 0);
    float * lg = malloc((size_t) V * sizeof(float));
    ck_assert_int_eq(r.ops->kv_reset(r.model, 200), 0);
    ck_assert_int_eq(r.ops->decode(r.model, tok, 70, NULL), 0);
    ck_assert_int_eq(r.ops->decode(r.model, tok + 70, 30, lg), 0);
    ck_assert_int_eq(r.ops->kv_pos(r.model), 100);
    double m = 0, e = 0;
    for (int64_t j = 0; j < V; j++) {
        m = fmax(m, fabs(s.lg[99 * V + j]));
        e = fmax(e, fabs(lg[j] - s.lg[99 * V + j]));
    }
    ck_assert_msg(e / m < 1e-4, "decode after 100 tokens: relative error %g", e / m);
    for (int64_t i = 100; i < n_tok; i++) {
        ck_assert_int_eq(r.ops->decode(r.model, tok + i, 1, lg), 0);
        for (int64_t j = 0; j < V; j++) {
            m = fmax(m, fabs(s.lg[i * V + j]));
            e = fmax(e, fabs(lg[j] - s.lg[i * V + j]));
        }
        ck_assert_msg(e / m < 1e-4, "decode of position %d: relative error %g", (int) i, e / m);
    }
    // the cache overflows with a clear error; reset empties it
    ck_assert_int_eq(r.ops->kv_reset(r.model, 4), 0);
    ck_assert_int_eq(r.ops->decode(r.model, tok, 5, lg), CALDERA_ERR_RANGE);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(r.ctx), "overflow"));
    ck_assert_int_eq(r.ops->decode(r.model, tok, 4, lg), 0);
    free(lg), free(s.lg), free(tok);
    rig_close(&r);
}

START_TEST(test_decode_equals_forward) {
    tiny_make(&g_tiny, 2, 48, 64, 6, 3, 53, 0, 1, "linear", 2.0, 4);   // biases: q/k/v one by one
    check_decode(NULL);
    check_decode("f16");
    tiny_free(&g_tiny);
    tiny_make(&g_tiny, 2, 48, 64, 6, 2, 53, 1, 0, "", 0, 8);             // no biases: q/k/v in one loop
    check_decode(NULL);
    check_decode("f16");
    tiny_free(&g_tiny);
}
END_TEST

// The compact heads (option head, set after loading): the batch forward equals the double
// reference computed with the head rounded independently here (q8: per 32 columns d = max|w|/127,
// w = d·round(w/d); f16: IEEE half), and decoding (f16 / int8 rows) equals the batch forward (f32
// gemm on the same values), with the AVX and the portable kernels.
START_TEST(test_compact_heads) {
    tiny_make(&g_tiny, 2, 64, 80, 4, 2, 61, 1, 0, "", 0, 21);   // tied head, hidden a multiple of 32
    const int64_t n = g_tiny.d.vocab * g_tiny.d.hidden;
    float *       hq = malloc((size_t) n * sizeof(float));
    for (int mode = 0; mode < 2; mode++) {
        if (mode == 0) {
            for (int64_t b = 0; b < n; b += 32) {
                double amax = 0;
                for (int64_t i = b; i < b + 32; i++) amax = fmax(amax, fabs(g_tiny.emb[i]));
                double d = (float) (amax / 127.0);
                for (int64_t i = b; i < b + 32; i++) hq[i] = (float) (d * nearbyint(g_tiny.emb[i] / d));
            }
        } else {
            uint16_t * h16 = malloc((size_t) n * sizeof(uint16_t));
            ck_assert_int_eq(caldera_convert_from_f32(CALDERA_DTYPE_F16, g_tiny.emb, n, h16), 0);
            ck_assert_int_eq(caldera_convert_to_f32(CALDERA_DTYPE_F16, h16, n, hq), 0);
            free(h16);
        }
        g_head = mode == 0 ? "q8" : "f16";
        g_tiny.head = hq;   // the reference's head; the plugin still reads the tied embedding
        check_vs_reference(NULL, LOGIT_TOL);
        g_tiny.head = NULL;
        check_decode(NULL);
        setenv("CALDERA_KERNELS", "avx2", 1);   // the AVX2 rows where the CPU has AVX512-VNNI too
        check_decode(NULL);
        unsetenv("CALDERA_KERNELS");
        g_plain_c = 1;
        check_decode(NULL);
        g_plain_c = 0;
    }
    g_head = NULL;
    free(hq);
    tiny_free(&g_tiny);
}
END_TEST

// Observer: one call per input group and layer, in order, with the right widths; the layer-0
// attention input is rmsnorm(embedding) · input_layernorm; n_layers stops early.
struct obs_log { int64_t calls, last_group, n_tok; const struct tiny * t; const int32_t * tok; double max_err; };

static int obs_fn(void * user, int64_t group, int64_t linear, const struct caldera_tensor * x) {
    struct obs_log * o = user;
    ck_assert_int_eq(group, o->last_group + 1);
    o->last_group = group;
    o->calls++;
    ck_assert_int_eq(x->ne[0], o->n_tok);
    if (group == 0) {
        int64_t H = o->t->d.hidden;
        double  xe[256], he[256];
        for (int64_t i = 0; i < o->n_tok; i++) {
            for (int64_t j = 0; j < H; j++) xe[j] = o->t->emb[(int64_t) o->tok[i] * H + j];
            ref_rms(xe, o->t->an[0], he, H, o->t->d.norm_eps);
            for (int64_t j = 0; j < H; j++) o->max_err = fmax(o->max_err, fabs(((const float *) x->data)[i * x->ld + j] - he[j]));
        }
    }
    return 0;
}

START_TEST(test_observer_and_groups) {
    tiny_make(&g_tiny, 3, 32, 48, 4, 2, 41, 1, 0, "", 0, 5);
    struct rig r;
    ck_assert_int_eq(rig_open(&r, NULL), 0);
    ck_assert_int_eq(r.ops->n_linears(r.model), 21);
    ck_assert_int_eq(r.ops->n_groups(r.model), 12);
    struct caldera_model_linear li;
    const int64_t want_group[7] = { 0, 0, 0, 1, 2, 2, 3 };
    for (int64_t i = 0; i < 21; i++) {
        ck_assert_int_eq(r.ops->linear_info(r.model, i, &li), 0);
        ck_assert_int_eq(li.layer, i / 7);
        ck_assert_int_eq(li.group, (i / 7) * 4 + want_group[i % 7]);
        ck_assert_int_eq(r.ops->linear_find(r.model, li.name), i);
    }
    ck_assert_int_eq(r.ops->linear_info(r.model, 8, &li), 0);
    ck_assert_str_eq(li.name, "model.layers.1.self_attn.k_proj.weight");
    ck_assert_str_eq(li.group_key, "model.layers.1.attn_in");
    ck_assert_int_eq(li.rows, 16);
    ck_assert_int_eq(li.cols, 32);
    ck_assert_int_eq(r.ops->linear_info(r.model, 13, &li), 0);
    ck_assert_str_eq(li.group_key, "model.layers.1.mlp_out");
    ck_assert_int_eq(li.cols, 48);
    ck_assert_int_eq(r.ops->linear_info(r.model, 21, &li), CALDERA_ERR_RANGE);
    int32_t *      tok = tokens(2 * 20, 41, 3);
    struct obs_log o   = { 0, -1, 2 * 20, &g_tiny, tok, 0 };
    struct caldera_model_forward_args fa = { .struct_size = sizeof(fa), .tokens = tok, .n_seq = 2, .n_tok = 20,
                                             .observe = obs_fn, .observe_user = &o };
    ck_assert_int_eq(r.ops->forward(r.model, &fa), 0);
    ck_assert_int_eq(o.calls, 12);
    ck_assert_msg(o.max_err < 1e-5, "layer-0 input differs by %g", o.max_err);
    o = (struct obs_log) { 0, -1, 2 * 20, &g_tiny, tok, 0 };
    fa.n_layers = 2;
    ck_assert_int_eq(r.ops->forward(r.model, &fa), 0);
    ck_assert_int_eq(o.calls, 8);
    free(tok);
    rig_close(&r);
    tiny_free(&g_tiny);
}
END_TEST

// Replacement: layer 0's q_proj by another weight, dense (copied and owned) and opaque; the
// logits then match the reference run with that weight.
struct naive_impl { const float * w; int64_t rows, cols; int * freed; };
static int naive_apply(void * state, struct caldera_ctx * ctx, const struct caldera_tensor * x, struct caldera_tensor * y) {
    struct naive_impl * s = state;
    for (int64_t t = 0; t < x->ne[0]; t++) {
        for (int64_t r = 0; r < s->rows; r++) {
            double acc = 0;
            for (int64_t c = 0; c < s->cols; c++) acc += (double) s->w[r * s->cols + c] * ((const float *) x->data)[t * x->ld + c];
            ((float *) y->data)[t * y->ld + r] = (float) acc;
        }
    }
    return 0;
}
static void naive_free(void * state) { *((struct naive_impl *) state)->freed += 1; }

START_TEST(test_replace_layers) {
    tiny_make(&g_tiny, 2, 32, 48, 4, 2, 43, 1, 0, "", 0, 6);
    struct rig r;
    ck_assert_int_eq(rig_open(&r, NULL), 0);
    int64_t   n_tok = 40, V = 43;
    float *   wq = rnd(32 * 32, 0.2f, 99);
    int32_t * tok = tokens(n_tok, V, 5);
    double *  ref = malloc((size_t) (n_tok * V) * sizeof(double));
    ref_forward(&g_tiny, tok, n_tok, wq, ref);
    struct sink s = { calloc((size_t) (n_tok * V), sizeof(float)), n_tok, V, 0 };
    struct caldera_model_forward_args fa = { .struct_size = sizeof(fa), .tokens = tok, .n_seq = 1, .n_tok = n_tok,
                                             .on_logits = sink_fn, .logits_user = &s, .logits_from = 0, .logits_to = n_tok };
    int64_t i = r.ops->linear_find(r.model, "model.layers.0.self_attn.q_proj.weight");
    ck_assert_int_eq(i, 0);
    // copied
    struct caldera_tensor tw = caldera_tensor_view_f32(wq, 32, 32);
    ck_assert_int_eq(r.ops->set_linear_weight(r.model, i, &tw, 0), 0);
    ck_assert_int_eq(r.ops->forward(r.model, &fa), 0);
    ck_assert_double_lt(rel_err(s.lg, ref, n_tok * V), LOGIT_TOL);
    // owned
    struct caldera_tensor own = { 0 };
    ck_assert_int_eq(caldera_tensor_alloc_f32(r.ctx, 32, 32, &own), 0);
    memcpy(own.data, wq, 32 * 32 * sizeof(float));
    ck_assert_int_eq(r.ops->set_linear_weight(r.model, i, &own, 1), 0);
    ck_assert_ptr_null(own.data);
    memset(s.lg, 0, (size_t) (n_tok * V) * sizeof(float));
    ck_assert_int_eq(r.ops->forward(r.model, &fa), 0);
    ck_assert_double_lt(rel_err(s.lg, ref, n_tok * V), LOGIT_TOL);
    // opaque
    int                        freed = 0;
    struct naive_impl          st = { wq, 32, 32, &freed };
    struct caldera_linear_impl impl = { .struct_size = sizeof(impl), .state = &st, .apply = naive_apply, .free = naive_free };
    ck_assert_int_eq(r.ops->set_linear_impl(r.model, i, &impl), 0);
    memset(s.lg, 0, (size_t) (n_tok * V) * sizeof(float));
    ck_assert_int_eq(r.ops->forward(r.model, &fa), 0);
    ck_assert_double_lt(rel_err(s.lg, ref, n_tok * V), LOGIT_TOL);
    // the wrong shape is refused, naming the layer
    struct caldera_tensor bad = caldera_tensor_view_f32(wq, 16, 32);
    ck_assert_int_eq(r.ops->set_linear_weight(r.model, i, &bad, 0), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(r.ctx), "q_proj"));
    ck_assert_int_eq(freed, 0);
    ck_assert_int_eq(r.ops->set_linear_weight(r.model, i, &tw, 0), 0);   // replaces the impl: freed
    ck_assert_int_eq(freed, 1);
    ck_assert_int_eq(r.ops->set_linear_impl(r.model, i, &impl), 0);
    r.ops->release(r.model);                                               // release frees it too
    ck_assert_int_eq(freed, 2);
    ck_assert_int_eq(r.ops->n_linears(r.model), 0);
    free(wq), free(tok), free(ref), free(s.lg);
    rig_close(&r);
    tiny_free(&g_tiny);
}
END_TEST

START_TEST(test_refusals) {
    struct rig r;
    tiny_make(&g_tiny, 1, 16, 24, 2, 1, 11, 1, 0, "", 0, 7);
    snprintf(g_tiny.d.arch, sizeof(g_tiny.d.arch), "gptneox");
    ck_assert_int_eq(rig_open(&r, NULL), CALDERA_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(r.ctx), "gptneox"));
    rig_close(&r);
    snprintf(g_tiny.d.arch, sizeof(g_tiny.d.arch), "llama");
    snprintf(g_tiny.d.rope_scaling, sizeof(g_tiny.d.rope_scaling), "yarn");
    ck_assert_int_eq(rig_open(&r, NULL), CALDERA_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(r.ctx), "yarn"));
    rig_close(&r);
    g_tiny.d.rope_scaling[0] = 0;
    g_tiny.n--;   // drop the last tensor (layer 0's down_proj)
    ck_assert_int_eq(rig_open(&r, NULL), CALDERA_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(r.ctx), "model.layers.0.mlp.down_proj.weight"));
    // nothing loaded: members refuse, forward too
    ck_assert_int_eq(r.ops->n_linears(r.model), 0);
    int32_t t0 = 0;
    struct caldera_model_forward_args fa = { .struct_size = sizeof(fa), .tokens = &t0, .n_seq = 1, .n_tok = 1 };
    ck_assert_int_eq(r.ops->forward(r.model, &fa), CALDERA_ERR_INVAL);
    rig_close(&r);
    g_tiny.n++;
    ck_assert_int_eq(rig_open(&r, NULL), 0);
    int32_t bad = 11;
    fa.tokens = &bad;
    ck_assert_int_eq(r.ops->forward(r.model, &fa), CALDERA_ERR_RANGE);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(r.ctx), "0..10"));
    fa.tokens = &t0;
    fa.n_tok = 513;
    ck_assert_int_eq(r.ops->forward(r.model, &fa), CALDERA_ERR_RANGE);
    // no tokenizer in this file: a clear NOT_FOUND
    struct caldera_model_vocab v;
    ck_assert_int_eq(r.ops->vocab(r.model, &v), CALDERA_ERR_NOT_FOUND);
    rig_close(&r);
    tiny_free(&g_tiny);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// stories260K (llama2.c checkpoint and tok512): the known greedy continuation, and perplexity
// protocols recomputed here from the forward pass's full logits

#define STORIES CALDERA_SHARED_DATA "/stories260K/stories260K.bin"
#define WIKI    CALDERA_SHARED_DATA "/wikitext-2-raw/wiki.test.raw"
static const char * const STORIES_CONT =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, "
    "red ball. She wanted to play with it, but it was too high";

static struct caldera_inst * open_stories(struct caldera_ctx * ctx, const struct caldera_model_ops ** ops) {
    struct caldera_inst * m = NULL;
    int                   rc = caldera_model_open(ctx, STORIES, NULL, &m);
    ck_assert_msg(rc == 0, "stories260K: %s", caldera_ctx_errmsg(ctx));
    ck_assert_int_eq(caldera_model_ops_of(m, ops), 0);
    return m;
}

START_TEST(test_stories_greedy) {
    struct caldera_ctx *             ctx = tu_ctx();
    const struct caldera_model_ops * ops;
    struct caldera_inst *            m = open_stories(ctx, &ops);
    struct caldera_model_vocab       v;
    ck_assert_int_eq(ops->vocab(m, &v), 0);
    ck_assert_int_eq(v.n_vocab, 512);
    int32_t * ids = NULL;
    int64_t   n = 0;
    ck_assert_int_eq(ops->tokenize(m, "Once upon a time", 16, 1, 0, &ids, &n), 0);
    ck_assert_int_eq(ids[0], v.bos);
    float * lg = malloc(512 * sizeof(float));
    char    text[1024] = "Once upon a time";
    ck_assert_int_eq(ops->kv_reset(m, 0), 0);
    ck_assert_int_eq(ops->decode(m, ids, n, lg), 0);
    for (int step = 0; step < 200 && strlen(text) < strlen(STORIES_CONT); step++) {
        int32_t best = 0;
        for (int32_t j = 1; j < 512; j++) best = lg[j] > lg[best] ? j : best;
        const char * piece;
        size_t       len;
        ck_assert_int_eq(ops->token_piece(m, best, &piece, &len, NULL), 0);
        ck_assert_uint_lt(strlen(text) + len, sizeof(text));
        strncat(text, piece, len);
        ck_assert_int_eq(ops->decode(m, &best, 1, lg), 0);
    }
    ck_assert_msg(strncmp(text, STORIES_CONT, strlen(STORIES_CONT)) == 0, "greedy continuation:\n%s\nexpected:\n%s", text,
                  STORIES_CONT);
    free(lg);
    caldera_free(ids);
    caldera_inst_free(m);
    caldera_ctx_free(ctx);
}
END_TEST

struct full_logits { float * lg; int64_t vocab; };
static int full_fn(void * user, int64_t seq, int64_t pos0, const struct caldera_tensor * l) {
    struct full_logits * f = user;
    for (int64_t r = 0; r < l->ne[0]; r++) {
        memcpy(f->lg + (pos0 + r) * f->vocab, (const float *) l->data + r * l->ld, (size_t) f->vocab * sizeof(float));
    }
    return 0;
}

// -log softmax(x)[t] in long double
static double nll_of(const float * x, int64_t n, int32_t t) {
    long double m = x[0], s = 0;
    for (int64_t j = 1; j < n; j++) m = x[j] > m ? x[j] : m;
    for (int64_t j = 0; j < n; j++) s += expl((long double) x[j] - m);
    return (double) (logl(s) - ((long double) x[t] - m));
}

START_TEST(test_stories_perplexity_protocols) {
    struct caldera_ctx *             ctx = tu_ctx();
    const struct caldera_model_ops * ops;
    struct caldera_inst *            m = open_stories(ctx, &ops);
    char *                           text = NULL;
    size_t                           len = 0;
    ck_assert_int_eq(caldera_text_read(ctx, WIKI, CALDERA_TEXT_ROWS, &text, &len), 0);
    len = 20000;   // a prefix is enough
    int32_t * ids = NULL;
    int64_t   n = 0;
    ck_assert_int_eq(ops->tokenize(m, text, len, 1, 0, &ids, &n), 0);
    const int64_t C = 96, V = 512;
    struct full_logits f = { malloc((size_t) (C * V) * sizeof(float)), V };
    int32_t           win[96];
    struct caldera_model_vocab voc;
    ck_assert_int_eq(ops->vocab(m, &voc), 0);
    // llamacpp: 5 windows; BOS replaces each window's first token; positions [48, 95) scored
    double  sum = 0, sum2 = 0;
    int64_t cnt = 0;
    for (int64_t w = 0; w < 5; w++) {
        memcpy(win, ids + w * C, sizeof(win));
        win[0] = voc.bos;
        struct caldera_model_forward_args fa = { .struct_size = sizeof(fa), .tokens = win, .n_seq = 1, .n_tok = C,
                                                 .on_logits = full_fn, .logits_user = &f, .logits_from = 0, .logits_to = C };
        ck_assert_int_eq(ops->forward(m, &fa), 0);
        for (int64_t j = C / 2; j < C - 1; j++) {
            double e = nll_of(f.lg + j * V, V, ids[w * C + j + 1]);
            sum += e;
            sum2 += e * e;
            cnt++;
        }
    }
    struct caldera_ppl_params pp = { .struct_size = sizeof(pp), .protocol = CALDERA_PPL_LLAMACPP, .ctx = C, .windows = 5 };
    struct caldera_ppl_result res;
    ck_assert_int_eq(caldera_model_perplexity(m, text, len, &pp, &res), 0);
    double mean = sum / (double) cnt, ppl = exp(mean);
    double err = sqrt((sum2 / (double) cnt - mean * mean) / (double) (cnt - 1)) * ppl;
    ck_assert_int_eq(res.tokens_scored, 5 * 47);
    ck_assert_int_eq(res.windows, 5);
    ck_assert_int_eq(res.text_tokens, n);
    ck_assert_msg(fabs(res.ppl - ppl) < 1e-5 * ppl, "llamacpp ppl %.8f, recomputed %.8f", res.ppl, ppl);
    ck_assert_msg(fabs(res.ppl_err - err) < 1e-4 * err, "llamacpp ± %.8f, recomputed %.8f", res.ppl_err, err);
    pp.batch = 3;   // windows 0-2 and 3-4 in two passes: the same numbers
    struct caldera_ppl_result res3;
    ck_assert_int_eq(caldera_model_perplexity(m, text, len, &pp, &res3), 0);
    ck_assert_int_eq(res3.tokens_scored, res.tokens_scored);
    ck_assert_msg(fabs(res3.ppl - res.ppl) < 1e-6 * res.ppl, "batched ppl %.8f vs %.8f", res3.ppl, res.ppl);
    // strided, stride 40: windows at 0, 40, 80; the first scores tokens 1..95, then the new ones
    sum = 0, cnt = 0;
    int64_t prev_end = 0;
    for (int64_t b = 0; b <= 80; b += 40) {
        struct caldera_model_forward_args fa = { .struct_size = sizeof(fa), .tokens = ids + b, .n_seq = 1, .n_tok = C,
                                                 .on_logits = full_fn, .logits_user = &f, .logits_from = 0, .logits_to = C };
        ck_assert_int_eq(ops->forward(m, &fa), 0);
        for (int64_t t = (prev_end > b + 1 ? prev_end : b + 1); t < b + C; t++) {
            sum += nll_of(f.lg + (t - 1 - b) * V, V, ids[t]);
            cnt++;
        }
        prev_end = b + C;
    }
    pp = (struct caldera_ppl_params) { .struct_size = sizeof(pp), .protocol = CALDERA_PPL_STRIDED, .ctx = C, .windows = 3,
                                       .stride = 40 };
    ck_assert_int_eq(caldera_model_perplexity(m, text, len, &pp, &res), 0);
    ck_assert_int_eq(res.tokens_scored, cnt);
    ck_assert_int_eq(cnt, 95 + 40 + 40);
    ck_assert_msg(fabs(res.ppl - exp(sum / (double) cnt)) < 1e-5 * res.ppl, "strided ppl %.8f, recomputed %.8f", res.ppl,
                  exp(sum / (double) cnt));
    // too short a text for one llamacpp window: a clear error
    pp = (struct caldera_ppl_params) { .struct_size = sizeof(pp), .protocol = CALDERA_PPL_LLAMACPP, .ctx = 512 };
    ck_assert_int_eq(caldera_model_perplexity(m, "Once upon a time", 16, &pp, &res), CALDERA_ERR_RANGE);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "a window needs 512"));
    free(f.lg);
    caldera_free(ids);
    caldera_free(text);
    caldera_inst_free(m);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_text_layouts) {
    struct caldera_ctx * ctx = tu_ctx();
    const char *         path = tu_path(tu_tmpdir(), "t.txt");
    ck_assert_int_eq(tu_write_file(path, "a\r\nb\r\n\rc\n"), 0);
    char * t;
    size_t n;
    ck_assert_int_eq(caldera_text_read(ctx, path, CALDERA_TEXT_RAW, &t, &n), 0);
    ck_assert_str_eq(t, "a\r\nb\r\n\rc\n");
    caldera_free(t);
    ck_assert_int_eq(caldera_text_read(ctx, path, CALDERA_TEXT_LF, &t, &n), 0);
    ck_assert_str_eq(t, "a\nb\n\rc\n");
    caldera_free(t);
    ck_assert_int_eq(caldera_text_read(ctx, path, CALDERA_TEXT_ROWS, &t, &n), 0);
    ck_assert_str_eq(t, "a\n\nb\n\n\rc\n\n");
    ck_assert_uint_eq(n, strlen(t));
    caldera_free(t);
    ck_assert_int_eq(caldera_text_read(ctx, tu_path(tu_tmpdir(), "missing.txt"), CALDERA_TEXT_RAW, &t, &n), CALDERA_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "missing.txt"));
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_model_open_errors) {
    struct caldera_ctx *  ctx = tu_ctx();
    struct caldera_inst * m = NULL;
    const char *          path = tu_path(tu_tmpdir(), "notes.txt");
    ck_assert_int_eq(tu_write_file(path, "not a model\n"), 0);
    ck_assert_int_eq(caldera_model_open(ctx, path, NULL, &m), CALDERA_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "notes.txt"));
    ck_assert_ptr_null(m);
    struct caldera_model_open_params mp = { .struct_size = sizeof(mp), .format = "nosuch" };
    ck_assert_int_eq(caldera_model_open(ctx, path, &mp, &m), CALDERA_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "nosuch"));
    mp = (struct caldera_model_open_params) { .struct_size = sizeof(mp), .format = "llama2c" };
    ck_assert_int_lt(caldera_model_open(ctx, path, &mp, &m), 0);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "notes.txt"));
    mp = (struct caldera_model_open_params) { .struct_size = sizeof(mp), .weights = "f8" };
    ck_assert_int_lt(caldera_model_open(ctx, STORIES, &mp, &m), 0);
    ck_assert_ptr_null(m);
    // the model plugin is not a format: ops_of refuses other kinds by name
    struct caldera_inst *            fr = NULL;
    const struct caldera_model_ops * ops;
    ck_assert_int_eq(caldera_inst_create(ctx, "llama2c", "src", &fr), 0);
    ck_assert_int_eq(caldera_model_ops_of(fr, &ops), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "not a model"));
    caldera_inst_free(fr);
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * llama_suite(void) {
    Suite * s = suite_create("llama");
    TCase * tc = tcase_create("reference");
    tcase_add_test(tc, test_forward_gqa_tied);
    tcase_add_test(tc, test_forward_untied_bias_linear_rope);
    tcase_add_test(tc, test_forward_mha_f16);
    tcase_add_test(tc, test_decode_equals_forward);
    tcase_add_test(tc, test_plain_c_kernels);
    tcase_add_test(tc, test_observer_and_groups);
    tcase_add_test(tc, test_replace_layers);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_compact_heads);
    suite_add_tcase(s, tc);
    tc = tcase_create("stories260K");
    tcase_add_test(tc, test_stories_greedy);
    tcase_add_test(tc, test_stories_perplexity_protocols);
    tcase_add_test(tc, test_text_layouts);
    tcase_add_test(tc, test_model_open_errors);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(llama_suite)
