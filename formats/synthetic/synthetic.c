// SPDX-License-Identifier: MIT
// synthetic: a format plugin that serves a deterministic, LLaMA-shaped model of "real-like"
// random weights together with a calibration Hessian for every linear weight. It needs no
// file, so pipelines, tests and benchmarks can run anywhere.
//
// Weights: W = G·diag(c) + U·diag(σ)·Vᵀ with G ~ N(0, 1/n), heavy-tailed column scales c (a few
// outlier input channels, as in LLM activations), and a rank-8 spike (a few large singular
// values). Hessians: H = X Xᵀ/s + ridge·I for X (n × s) with a decaying spectrum and the same
// outlier channels, normalised to mean diagonal 1. q/k/v share one Hessian, gate/up another.
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "caldera/caldera-plugin.h"

enum { SYN_Q, SYN_K, SYN_V, SYN_O, SYN_GATE, SYN_UP, SYN_DOWN, SYN_NORM1, SYN_NORM2, SYN_PER_LAYER };

struct syn_priv {
    int64_t  layers;    // options
    int64_t  hidden;
    int64_t  ffn;
    int64_t  kv_dim;
    int64_t  seed;
    int64_t  samples;
    double   ridge;
    int      hessians;
    int64_t  n;          // tensors
    char **  names;
    struct caldera_tensor_info * infos;
};

#define OFF(x) offsetof(struct syn_priv, x)
static const struct caldera_option syn_options[] = {
    { "layers", "number of transformer layers", OFF(layers), CALDERA_OPT_INT, { .i64 = 2 }, 1, 512 },
    { "hidden", "hidden size (q/k/v/o are hidden × hidden, kv: kv_dim × hidden)", OFF(hidden), CALDERA_OPT_INT, { .i64 = 256 }, 1, 65536 },
    { "ffn", "feed-forward size (gate/up: ffn × hidden, down: hidden × ffn)", OFF(ffn), CALDERA_OPT_INT, { .i64 = 688 }, 1, 262144 },
    { "kv_dim", "output size of k and v (0: hidden)", OFF(kv_dim), CALDERA_OPT_INT, { .i64 = 0 }, 0, 65536 },
    { "seed", "seed of every generated tensor", OFF(seed), CALDERA_OPT_INT, { .i64 = 0 }, 0, 9.2e18 },
    { "samples", "calibration samples behind each Hessian (0: 2 × its size)", OFF(samples), CALDERA_OPT_INT, { .i64 = 0 }, 0, 1e7 },
    { "ridge", "ridge added to the Hessian diagonal (relative to its mean)", OFF(ridge), CALDERA_OPT_DOUBLE, { .dbl = 0.01 }, 0, 1e3 },
    { "hessians", "serve '<weight>.hessian' tensors", OFF(hessians), CALDERA_OPT_BOOL, { .i64 = 1 }, 0, -1 },
    { NULL },
};

static const char * const syn_suffix[SYN_PER_LAYER] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
    "mlp.down_proj", "input_layernorm", "post_attention_layernorm",
};

static void syn_close(struct caldera_inst * inst) {
    struct syn_priv * p = caldera_inst_priv(inst);
    for (int64_t i = 0; p->names && i < p->n; i++) caldera_free(p->names[i]);
    caldera_freep(&p->names);
    caldera_freep(&p->infos);
    p->n = 0;
}

static void syn_shape(const struct syn_priv * p, int kind, int64_t * rows, int64_t * cols) {
    int64_t h = p->hidden, f = p->ffn, kv = p->kv_dim ? p->kv_dim : p->hidden;
    switch (kind) {
    case SYN_Q: case SYN_O: *rows = h; *cols = h; break;
    case SYN_K: case SYN_V: *rows = kv; *cols = h; break;
    case SYN_GATE: case SYN_UP: *rows = f; *cols = h; break;
    case SYN_DOWN: *rows = h; *cols = f; break;
    default: *rows = 1; *cols = h; break;
    }
}

static int syn_open(struct caldera_inst * inst, const char * path) {
    (void) path;
    struct syn_priv * p = caldera_inst_priv(inst);
    syn_close(inst);
    int64_t per = SYN_PER_LAYER + (p->hessians ? 7 : 0);
    int64_t n = p->layers * per;
    p->names = caldera_calloc((size_t) n, sizeof(char *));
    p->infos = caldera_calloc((size_t) n, sizeof(*p->infos));
    if (!p->names || !p->infos) return caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory listing %lld tensors", (long long) n);
    p->n = n;
    int64_t k = 0;
    for (int64_t l = 0; l < p->layers; l++) {
        for (int kind = 0; kind < SYN_PER_LAYER; kind++) {
            int64_t r, c;
            syn_shape(p, kind, &r, &c);
            p->names[k] = caldera_malloc(96);
            if (!p->names[k]) return CALDERA_ERR_NOMEM;
            snprintf(p->names[k], 96, "model.layers.%lld.%s.weight", (long long) l, syn_suffix[kind]);
            struct caldera_tensor_info * ti = &p->infos[k];
            ti->name = ti->hf_name = p->names[k];
            ti->dtype = CALDERA_DTYPE_F32;
            ti->ndim = kind >= SYN_NORM1 ? 1 : 2;
            ti->ne[0] = kind >= SYN_NORM1 ? c : r;
            ti->ne[1] = kind >= SYN_NORM1 ? 0 : c;
            ti->nbytes = (size_t) (r * c) * 4;
            k++;
        }
        for (int kind = 0; p->hessians && kind < SYN_NORM1; kind++) {
            int64_t r, c;
            syn_shape(p, kind, &r, &c);
            p->names[k] = caldera_malloc(96);
            if (!p->names[k]) return CALDERA_ERR_NOMEM;
            snprintf(p->names[k], 96, "model.layers.%lld.%s.hessian", (long long) l, syn_suffix[kind]);
            struct caldera_tensor_info * ti = &p->infos[k];
            ti->name = ti->hf_name = p->names[k];
            ti->dtype = CALDERA_DTYPE_F32;
            ti->ndim = 2;
            ti->ne[0] = ti->ne[1] = c;
            ti->nbytes = (size_t) (c * c) * 4;
            k++;
        }
    }
    return 0;
}

static int64_t syn_n_tensors(struct caldera_inst * inst) { return ((struct syn_priv *) caldera_inst_priv(inst))->n; }

static int syn_tensor_info(struct caldera_inst * inst, int64_t i, struct caldera_tensor_info * out) {
    struct syn_priv * p = caldera_inst_priv(inst);
    if (i < 0 || i >= p->n) return caldera_error(inst, CALDERA_ERR_RANGE, "tensor %lld out of range [0, %lld)", (long long) i, (long long) p->n);
    *out = p->infos[i];
    return 0;
}

// Heavy-tailed positive channel scales, shared by W's columns and H's inputs of one layer group.
static void channel_scales(uint64_t seed, int64_t n, float * c) {
    struct caldera_rng rng;
    caldera_rng_seed(&rng, seed);
    for (int64_t j = 0; j < n; j++) {
        double g = caldera_rng_normal(&rng);
        c[j] = (float) exp(0.5 * g);                          // log-normal spread
        if (caldera_rng_uniform(&rng) < 0.01) c[j] *= 8.0f;    // ~1% outlier channels
    }
}

static int gen_weight(struct caldera_inst * inst, struct syn_priv * p, int64_t layer, int kind, struct caldera_tensor * out) {
    struct caldera_ctx * ctx = caldera_inst_ctx(inst);
    int64_t m, n;
    syn_shape(p, kind, &m, &n);
    char key[64];
    snprintf(key, sizeof(key), "w.%lld.%d", (long long) layer, kind);
    uint64_t seed = caldera_seed_mix((uint64_t) p->seed, key);
    int rc;
    if (kind >= SYN_NORM1) {
        int64_t ne[1] = { n };
        if ((rc = caldera_tensor_alloc(ctx, CALDERA_DTYPE_F32, 1, ne, out)) < 0) return rc;
        struct caldera_rng rng;
        caldera_rng_seed(&rng, seed);
        for (int64_t j = 0; j < n; j++) ((float *) out->data)[j] = (float) (1.0 + 0.1 * caldera_rng_normal(&rng));
        return 0;
    }
    if ((rc = caldera_tensor_alloc_f32(ctx, m, n, out)) < 0) return rc;
    float * w = out->data;
    float * c = caldera_malloc((size_t) n * sizeof(float));
    int64_t r = 8 < (m < n ? m : n) ? 8 : (m < n ? m : n);
    float * u = caldera_malloc((size_t) (m * r) * sizeof(float));
    float * v = caldera_malloc((size_t) (n * r) * sizeof(float));
    if (!c || !u || !v) {
        caldera_free(c); caldera_free(u); caldera_free(v);
        caldera_tensor_free(out);
        return CALDERA_ERR_NOMEM;
    }
    char ckey[64];
    snprintf(ckey, sizeof(ckey), "c.%lld.%d", (long long) layer, kind == SYN_K || kind == SYN_V ? SYN_Q : kind == SYN_UP ? SYN_GATE : kind);
    channel_scales(caldera_seed_mix((uint64_t) p->seed, ckey), n, c);
    struct caldera_rng rng;
    caldera_rng_seed(&rng, seed);
    float sd = (float) (1.0 / sqrt((double) n));
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) w[i * n + j] = (float) caldera_rng_normal(&rng) * sd * c[j];
    }
    for (int64_t i = 0; i < m * r; i++) u[i] = (float) caldera_rng_normal(&rng);
    for (int64_t i = 0; i < n * r; i++) v[i] = (float) caldera_rng_normal(&rng);
    // spike: Σ_k σ_k u_k v_kᵀ with σ_k = 4/(k+1) · sd, scaled so it matters but does not dominate
    for (int64_t k = 0; k < r; k++) {
        float s = 4.0f * sd / (float) (k + 1) / (float) sqrt((double) n);
        for (int64_t i = 0; i < m; i++) {
            float a = u[i * r + k] * s;
            for (int64_t j = 0; j < n; j++) w[i * n + j] += a * v[j * r + k];
        }
    }
    caldera_free(c);
    caldera_free(u);
    caldera_free(v);
    return 0;
}

static int gen_hessian(struct caldera_inst * inst, struct syn_priv * p, int64_t layer, int kind, struct caldera_tensor * out) {
    struct caldera_ctx * ctx = caldera_inst_ctx(inst);
    int64_t m, n;
    syn_shape(p, kind, &m, &n);
    int group = kind == SYN_K || kind == SYN_V ? SYN_Q : kind == SYN_UP ? SYN_GATE : kind;
    int64_t s = p->samples ? p->samples : 2 * n;
    int rc;
    struct caldera_tensor x = { 0 };
    if ((rc = caldera_tensor_alloc_f32(ctx, n, s, &x)) < 0) return rc;
    if ((rc = caldera_tensor_alloc_f32(ctx, n, n, out)) < 0) {
        caldera_tensor_free(&x);
        return rc;
    }
    float * c = caldera_malloc((size_t) n * sizeof(float));
    if (!c) {
        caldera_tensor_free(&x);
        caldera_tensor_free(out);
        return CALDERA_ERR_NOMEM;
    }
    char key[64];
    snprintf(key, sizeof(key), "c.%lld.%d", (long long) layer, group);
    channel_scales(caldera_seed_mix((uint64_t) p->seed, key), n, c);
    snprintf(key, sizeof(key), "h.%lld.%d", (long long) layer, group);
    struct caldera_rng rng;
    caldera_rng_seed(&rng, caldera_seed_mix((uint64_t) p->seed, key));
    // X = diag(c) · Z · diag(d), Z ~ N(0,1), sample weights d_k = 1/sqrt(1 + k/8): a decaying spectrum
    float * xd = x.data;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t k = 0; k < s; k++) xd[i * s + k] = (float) caldera_rng_normal(&rng) * c[i] / (float) sqrt(1.0 + (double) k / 8.0);
    }
    caldera_free(c);
    rc = caldera_linalg_syrk(ctx, CALDERA_NO_TRANS, 1.0f / (float) s, &x, 0.0f, out);
    caldera_tensor_free(&x);
    if (rc < 0) {
        caldera_tensor_free(out);
        return rc;
    }
    float * h = out->data;
    double mean = 0;
    for (int64_t i = 0; i < n; i++) mean += h[i * n + i];
    mean /= (double) n;
    for (int64_t i = 0; i < n * n; i++) h[i] = (float) (h[i] / mean);
    for (int64_t i = 0; i < n; i++) h[i * n + i] += (float) p->ridge;
    return 0;
}

static int syn_read_tensor(struct caldera_inst * inst, int64_t i, enum caldera_dtype want, struct caldera_tensor * out, int * owned) {
    struct syn_priv * p = caldera_inst_priv(inst);
    if (i < 0 || i >= p->n) return caldera_error(inst, CALDERA_ERR_RANGE, "tensor %lld out of range [0, %lld)", (long long) i, (long long) p->n);
    int64_t per = SYN_PER_LAYER + (p->hessians ? 7 : 0);
    int64_t layer = i / per, k = i % per;
    struct caldera_tensor f = { 0 };
    int rc = k < SYN_PER_LAYER ? gen_weight(inst, p, layer, (int) k, &f) : gen_hessian(inst, p, layer, (int) (k - SYN_PER_LAYER), &f);
    if (rc < 0) return rc == CALDERA_ERR_NOMEM ? caldera_error(inst, rc, "out of memory generating %s", p->names[i]) : rc;
    *owned = 1;
    if (want == CALDERA_DTYPE_F32) {
        *out = f;
        return 0;
    }
    struct caldera_tensor t = { 0 };
    rc = caldera_tensor_alloc(caldera_inst_ctx(inst), want, f.ndim, f.ne, &t);
    if (rc == 0) rc = caldera_tensor_copy(caldera_inst_ctx(inst), &t, &f);
    caldera_tensor_free(&f);
    if (rc < 0) {
        caldera_tensor_free(&t);
        return caldera_error(inst, rc, "cannot provide %s as %s", p->names[i], caldera_dtype_name(want));
    }
    *out = t;
    return 0;
}

static int syn_model_desc(struct caldera_inst * inst, struct caldera_model_desc * out) {
    struct syn_priv * p = caldera_inst_priv(inst);
    memset(out, 0, sizeof(*out));
    snprintf(out->arch, sizeof(out->arch), "synthetic");
    out->n_layers = p->layers;
    out->hidden = p->hidden;
    out->ffn = p->ffn;
    return 0;
}

static void syn_uninit(struct caldera_inst * inst) { syn_close(inst); }

static const struct caldera_format_ops syn_ops = {
    .struct_size  = sizeof(struct caldera_format_ops),
    .probe_path   = NULL,
    .open         = syn_open,
    .n_tensors    = syn_n_tensors,
    .tensor_info  = syn_tensor_info,
    .read_tensor  = syn_read_tensor,
    .meta         = NULL,
    .model_desc   = syn_model_desc,
    .close        = syn_close,
    .create       = NULL,
    .write_tensor = NULL,
    .finish       = NULL,
};

static const struct caldera_plugin synthetic_plugin = {
    .abi_version    = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size    = sizeof(struct caldera_plugin),
    .kind           = CALDERA_PLUGIN_KIND_FORMAT,
    .name           = "synthetic",
    .description    = "generated LLaMA-shaped model of real-like weights with calibration Hessians (no file)",
    .version        = CALDERA_VERSION_INT(0, 1, 0),
    .format_version = 1,
    .priv_size      = sizeof(struct syn_priv),
    .options        = syn_options,
    .uninit         = syn_uninit,
    .ops            = &syn_ops,
};

CALDERA_PLUGIN_DEFINE(synthetic_plugin)
