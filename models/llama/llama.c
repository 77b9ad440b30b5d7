// SPDX-License-Identifier: MIT
// llama: the model plugin for LLaMA-family decoders (LLaMA 1/2/3 without scaled RoPE, Mistral
// without sliding windows, SmolLM2, Qwen2-style q/k/v biases). Forward pass on the core's BLAS:
//   x = embed[tokens]                                                   (T × hidden)
//   per block:  h = rmsnorm(x) · attn_norm
//               q, k, v = h Wqᵀ (+bq), h Wkᵀ (+bk), h Wvᵀ (+bv)         (T × nh·hd, T × nkv·hd)
//               q, k = rope(q), rope(k)     HF rotate_half pairing (i, i + hd/2)
//               a = softmax(q kᵀ / √hd + causal) v   per head, KV head = head / (nh / nkv)
//               x += a Woᵀ
//               h = rmsnorm(x) · ffn_norm;  x += (silu(h Wgᵀ) ⊙ h Wuᵀ) Wdᵀ
//   logits = rmsnorm(x) · norm  headᵀ   (head = embed when tied)
// Weights are read through a format reader as f32 with Hugging Face names and layout (the
// gguf and llama2c readers undo their q/k row permutations). Prompt processing runs every linear
// as one gemm over all tokens of a batch; attention is two gemms per KV head and query block (the
// query heads of a KV head stacked), the blocks one per thread.
// Decoding keeps a KV cache (layers × positions × nkv·hd, f32).
#include <math.h>
#include <float.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "caldera/caldera-plugin.h"
#include "tokenizer.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
// F16C from CPUID leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports does not know "f16c".
static int llm_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
}
#endif

#define LLM_NAME_MAX   96
#define LLM_QBLOCK     128   // query rows per attention block (bounds the wasted masked half)
#define LLM_LOGIT_ROWS 64    // positions per logits chunk (64 × vocab floats)
#define LLM_MAX_TOKENS 4096  // tokens per forward chunk (bounds activation memory)

enum llm_group_kind { LLM_G_ATTN_IN = 0, LLM_G_ATTN_OUT, LLM_G_MLP_IN, LLM_G_MLP_OUT, LLM_G_COUNT };
static const char * const llm_group_suffix[LLM_G_COUNT] = { "attn_in", "attn_out", "mlp_in", "mlp_out" };

enum llm_lin_kind { LLM_Q = 0, LLM_K, LLM_V, LLM_O, LLM_GATE, LLM_UP, LLM_DOWN, LLM_LIN_PER_LAYER };
static const char * const llm_lin_name[LLM_LIN_PER_LAYER] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
};
static const enum llm_group_kind llm_lin_group[LLM_LIN_PER_LAYER] = {
    LLM_G_ATTN_IN, LLM_G_ATTN_IN, LLM_G_ATTN_IN, LLM_G_ATTN_OUT, LLM_G_MLP_IN, LLM_G_MLP_IN, LLM_G_MLP_OUT,
};

struct llm_lin {
    char                       name[LLM_NAME_MAX];   // HF weight name
    char                       gkey[LLM_NAME_MAX];   // input group key
    int64_t                    layer, rows, cols, group;
    float *                    w;      // rows × cols f32, or NULL (f16 or impl)
    uint16_t *                 w16;    // rows × cols f16 (weights = f16), or NULL
    float *                    bias;   // rows, or NULL
    struct caldera_linear_impl impl;   // used when has_impl
    int                        has_impl;
    struct caldera_tensor      wd;     // device = cuda: rows × cols f32 copy of w / w16 on the GPU, or data NULL
};

struct llm_layer {
    float *          attn_norm;  // hidden
    float *          ffn_norm;   // hidden
    struct llm_lin * lin;        // LLM_LIN_PER_LAYER consecutive entries of priv.lins
};

struct llm_work {
    float * x;    // T × hidden   residual stream
    float * h;    // T × hidden   normed input
    float * q;    // T × qd
    float * k;    // T × kvd (batch mode)
    float * v;    // T × kvd
    float * a;    // T × qd       attention output
    float * g;    // T × ffn
    float * u;    // T × ffn
    float * s;    // slots × attn_slot_floats(n_keys): attention scratch, one slot per thread
    float * lg;   // LLM_LOGIT_ROWS × vocab
};

enum llm_weights { LLM_W_F32 = 0, LLM_W_F16 = 1 };
enum llm_head { LLM_H_F32 = 0, LLM_H_F16 = 1, LLM_H_Q8 = 2 };
#define LLM_Q8_BLOCK 32   // columns per scale of the q8 head

struct llm_priv {
    int                       weights;     // option: enum llm_weights
    int64_t                   kv_ctx;      // option: default KV cache length (0: the model's)
    int                       simd;        // option: use the AVX2/FMA kernels where the CPU has them
    int                       head_mode;   // option: enum llm_head (applied at the next forward / decode)
    // the loaded model
    int                       loaded;
    struct caldera_model_desc d;
    int64_t                   hd, qd, kvd; // head dim, nh·hd, nkv·hd
    int64_t                   n_ctx;       // positions allowed (the model's context length)
    float                     rope_scale;  // positions are multiplied by this (linear scaling)
    double *                  inv_freq;    // hd/2: theta^(-2i/hd)
    float *                   rope_cs;     // hd: cos, then sin of the angles of position rope_pos (a decoded token)
    int64_t                   rope_pos;    // -1: none yet
    float *                   emb;         // vocab × hidden
    float *                   out_norm;    // hidden
    float *                   head;        // vocab × hidden (== emb when tied)
    int                       head_owned;
    // the compact head (head_mode != f32), built from head at the first use after the option is set
    int                       head_built;  // enum llm_head of the arrays below
    uint16_t *                head16;      // vocab × hidden f16 (f16)
    int8_t *                  head8;       // vocab × hidden int8 (q8)
    float *                   head8d;      // vocab × hidden/32 scales (q8)
    int16_t *                 head_xq;     // LLM_SMALL_N × hidden: decoded tokens' activations for head8 (q16_prepare)
    float *                   head_xd;     // LLM_SMALL_N × hidden/32: their block steps
    float *                   headq;       // vocab × hidden f32: the compact values again, for gemm
    struct caldera_tensor     head_d;      // device = cuda: vocab × hidden copy of head on the GPU, or data NULL
    struct llm_layer *        layers;      // n_layers
    struct llm_lin *          lins;        // n_layers × LLM_LIN_PER_LAYER
    int64_t                   n_lins;
    struct caldera_meta *     meta;        // copy of the reader's metadata (tokenizer source)
    struct llm_tokenizer *    tok;         // NULL when the file has no tokenizer
    const char *              chat_template;
    // decode cache
    float *                   kc, * vc;    // n_layers × kv_cap × kvd each
    int64_t                   kv_cap, kv_n;
    float *                   f16_scratch; // rows × cols of the largest f16 linear (pp with f16)
    const struct llm_kernels * k;          // dot products and softmax (pick_kernels)
    struct llm_work           wk;          // activation buffers kept between calls
    int64_t                   wk_T, wk_keys, wk_slots;
};

#define OFF(x) offsetof(struct llm_priv, x)
static const struct caldera_opt_choice llm_weight_choices[] = {
    { "f32", LLM_W_F32, "f32 weights (dequantized at load)" },
    { "f16", LLM_W_F16, "f16 weights (half the memory; converted to f32 per gemm or in the matvec)" },
    { NULL },
};
static const struct caldera_opt_choice llm_head_choices[] = {
    { "f32", LLM_H_F32, "the output head as loaded (f32)" },
    { "f16", LLM_H_F16, "f16 rows (half the bytes per decoded token)" },
    { "q8", LLM_H_Q8, "int8 rows, one f32 scale per 32 columns (8 bits + 1/32 scale: a quarter of the bytes per decoded token)" },
    { NULL },
};
static const struct caldera_option llm_options[] = {
    { "weights", "storage of the linear layers' weights", OFF(weights), CALDERA_OPT_ENUM, { .i64 = LLM_W_F32 },
      0, 0, llm_weight_choices },
    { "kv_ctx", "decode cache length when kv_reset is given 0; 0: the model's context length", OFF(kv_ctx),
      CALDERA_OPT_INT, { .i64 = 0 }, 0, 1 << 24 },
    { "simd", "use the AVX2/FMA/F16C kernels when the CPU has them (false: the portable C ones, for tests)", OFF(simd),
      CALDERA_OPT_BOOL, { .i64 = 1 }, 0, 0, NULL, 0, CALDERA_OPT_EXPERT },
    { "head", "storage of the output head (logits; the embedding lookup stays f32); may be set after loading",
      OFF(head_mode), CALDERA_OPT_ENUM, { .i64 = LLM_H_F32 }, 0, 0, llm_head_choices },
    { NULL },
};


struct llm_priv;
static void pick_kernels(struct llm_priv * p);

// ---------------------------------------------------------------------------------------------
// Loading

static const struct caldera_format_ops * fmt_ops(struct caldera_inst * reader) {
    const struct caldera_plugin * pl = caldera_inst_plugin(reader);
    return pl && pl->kind == CALDERA_PLUGIN_KIND_FORMAT ? pl->ops : NULL;
}

static int64_t find_tensor(struct caldera_inst * reader, const char * hf) {
    const struct caldera_format_ops * f = fmt_ops(reader);
    int64_t                           n = f->n_tensors(reader);
    for (int64_t i = 0; i < n; i++) {
        struct caldera_tensor_info ti;
        if (f->tensor_info(reader, i, &ti) == 0 && ti.hf_name && strcmp(ti.hf_name, hf) == 0) return i;
    }
    return -1;
}

// Does the reader hold tensors "<hf>.<suffix>" (a weight stored compressed by caldera-pipe: its
// stages' tensors) but no tensor @p hf itself?
static int stored_compressed(struct caldera_inst * reader, const char * hf) {
    const struct caldera_format_ops * f = fmt_ops(reader);
    size_t                            n = strlen(hf);
    if (find_tensor(reader, hf) >= 0) return 0;
    for (int64_t i = 0; i < f->n_tensors(reader); i++) {
        struct caldera_tensor_info ti;
        if (f->tensor_info(reader, i, &ti) < 0) continue;
        const char * nm = ti.hf_name ? ti.hf_name : ti.name;
        if (nm && strncmp(nm, hf, n) == 0 && nm[n] == '.') return 1;
    }
    return 0;
}

// Read tensor @p hf of shape (r, c) (c = 0: 1-d of r) into a new f32 (or f16) array.
// optional: absent -> *out = NULL and 0.
static int read_weight(struct caldera_inst * inst, struct caldera_inst * reader, const char * hf, int64_t r,
                       int64_t c, int optional, int f16, void ** out) {
    const struct caldera_format_ops * f = fmt_ops(reader);
    struct caldera_tensor_info        ti;
    struct caldera_tensor             t = { 0 };
    int                               owned = 0, rc;
    int64_t                           idx = find_tensor(reader, hf);
    *out = NULL;
    if (idx < 0) {
        if (optional) return 0;
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "the model has no tensor '%s'; a llama-family decoder needs it", hf);
    }
    if ((rc = f->tensor_info(reader, idx, &ti)) < 0) return rc;
    int shape_ok = c == 0 ? (ti.ndim == 1 && ti.ne[0] == r) : (ti.ndim == 2 && ti.ne[0] == r && ti.ne[1] == c);
    if (!shape_ok) {
        char got[64] = "";
        for (int32_t k = 0; k < ti.ndim && k < CALDERA_MAX_DIMS; k++) {
            size_t l = strlen(got);
            snprintf(got + l, sizeof(got) - l, "%s%" PRId64, k ? "x" : "", ti.ne[k]);
        }
        if (c == 0) return caldera_error(inst, CALDERA_ERR_FORMAT, "tensor '%s' has shape %s; expected %" PRId64, hf, got, r);
        return caldera_error(inst, CALDERA_ERR_FORMAT, "tensor '%s' has shape %s; expected %" PRId64 "x%" PRId64, hf, got, r, c);
    }
    if ((rc = f->read_tensor(reader, idx, CALDERA_DTYPE_F32, &t, &owned)) < 0) return rc;
    int64_t n = c == 0 ? r : r * c;
    size_t  esz = f16 ? sizeof(uint16_t) : sizeof(float);
    void *  dst = caldera_malloc((size_t) n * esz);
    if (!dst) {
        rc = caldera_error(inst, CALDERA_ERR_NOMEM, "tensor '%s': cannot allocate %zu bytes", hf, (size_t) n * esz);
        goto done;
    }
    // the reader's view may be 2-d with ld >= cols
    int64_t rows = c == 0 ? 1 : r, cols = c == 0 ? r : c, ld = (t.ndim == 2 && t.ld > 0) ? t.ld : cols;
    for (int64_t i = 0; i < rows; i++) {
        const float * src = (const float *) t.data + i * ld;
        if (f16) {
            caldera_convert_from_f32(CALDERA_DTYPE_F16, src, cols, (uint16_t *) dst + i * cols);
        } else {
            memcpy((float *) dst + i * cols, src, (size_t) cols * sizeof(float));
        }
    }
    for (int64_t i = 0; i < (f16 ? 0 : n); i++) {
        if (!isfinite(((float *) dst)[i])) {
            caldera_free(dst);
            rc = caldera_error(inst, CALDERA_ERR_NUMERIC, "tensor '%s' has a NaN or Inf at element %" PRId64, hf, i);
            goto done;
        }
    }
    *out = dst;
    rc = 0;
done:
    if (owned) caldera_tensor_free(&t);
    return rc;
}

static void work_free(struct llm_work * w) {
    caldera_free(w->x);
    caldera_free(w->h);
    caldera_free(w->q);
    caldera_free(w->k);
    caldera_free(w->v);
    caldera_free(w->a);
    caldera_free(w->g);
    caldera_free(w->u);
    caldera_free(w->s);
    caldera_free(w->lg);
    memset(w, 0, sizeof(*w));
}

static void llm_release(struct caldera_inst * inst) {
    struct llm_priv * p = caldera_inst_priv(inst);
    for (int64_t i = 0; i < p->n_lins; i++) {
        struct llm_lin * l = &p->lins[i];
        caldera_free(l->w);
        caldera_free(l->w16);
        caldera_free(l->bias);
        caldera_tensor_free(&l->wd);
        if (l->has_impl && l->impl.free) l->impl.free(l->impl.state);
    }
    caldera_tensor_free(&p->head_d);
    for (int64_t i = 0; p->layers && i < p->d.n_layers; i++) {
        caldera_free(p->layers[i].attn_norm);
        caldera_free(p->layers[i].ffn_norm);
    }
    if (p->head_owned) caldera_free(p->head);
    caldera_free(p->head16);
    caldera_free(p->head8);
    caldera_free(p->head8d);
    caldera_free(p->head_xq);
    caldera_free(p->head_xd);
    caldera_free(p->headq);
    caldera_free(p->emb);
    caldera_free(p->out_norm);
    caldera_free(p->layers);
    caldera_free(p->lins);
    caldera_free(p->inv_freq);
    caldera_free(p->rope_cs);
    caldera_free(p->kc);
    caldera_free(p->vc);
    caldera_free(p->f16_scratch);
    work_free(&p->wk);
    llm_tokenizer_free(p->tok);
    caldera_meta_free(p->meta);
    int     weights = p->weights, simd = p->simd, head_mode = p->head_mode;
    int64_t kv_ctx  = p->kv_ctx;
    memset(p, 0, sizeof(*p));
    p->weights   = weights;
    p->simd      = simd;
    p->head_mode = head_mode;
    p->kv_ctx  = kv_ctx;
}

static int check_desc(struct caldera_inst * inst, struct llm_priv * p) {
    static const char * const archs[] = { "llama", "mistral", "qwen2", "smollm" };
    int                       ok = 0;
    struct caldera_model_desc * d = &p->d;
    for (size_t i = 0; i < sizeof(archs) / sizeof(archs[0]); i++) ok |= strcmp(d->arch, archs[i]) == 0;
    if (!ok) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "architecture '%s' is not supported; allowed: llama, mistral, "
                             "qwen2, smollm (LLaMA-family decoders)", d->arch[0] ? d->arch : "(unknown)");
    }
    const struct { const char * what; int64_t v; } need[] = {
        { "n_layers (block count)", d->n_layers }, { "hidden (embedding length)", d->hidden },
        { "ffn (feed-forward length)", d->ffn }, { "n_heads (attention head count)", d->n_heads },
        { "n_kv_heads", d->n_kv_heads }, { "head_dim", d->head_dim }, { "vocab", d->vocab },
    };
    for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
        if (need[i].v <= 0) {
            return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "the model description has no %s; the llama model needs it",
                                 need[i].what);
        }
    }
    if (d->n_heads % d->n_kv_heads != 0) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "n_kv_heads %" PRId64 " does not divide n_heads %" PRId64,
                             d->n_kv_heads, d->n_heads);
    }
    if (d->head_dim % 2 != 0) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "head_dim %" PRId64 " is odd; RoPE needs an even head size", d->head_dim);
    }
    p->rope_scale = 1.0f;
    if (d->rope_scaling[0] && strcmp(d->rope_scaling, "none") != 0) {
        if (strcmp(d->rope_scaling, "linear") != 0) {
            return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "RoPE scaling type '%s' is not supported; allowed: none, linear",
                                 d->rope_scaling);
        }
        if (!(d->rope_scaling_factor > 0)) {
            return caldera_error(inst, CALDERA_ERR_FORMAT, "RoPE scaling 'linear' with factor %g; it must be > 0",
                                 d->rope_scaling_factor);
        }
        p->rope_scale = (float) (1.0 / d->rope_scaling_factor);
    }
    if (!(d->rope_theta > 0)) d->rope_theta = 10000.0;   // LLaMA's default when the file omits it
    if (!(d->norm_eps > 0)) d->norm_eps = 1e-5;          // LLaMA's default
    p->n_ctx = d->ctx_len > 0 ? d->ctx_len : 2048;
    return 0;
}

static int llm_load(struct caldera_inst * inst, struct caldera_inst * reader) {
    struct llm_priv *                 p = caldera_inst_priv(inst);
    const struct caldera_format_ops * f = reader ? fmt_ops(reader) : NULL;
    char                              name[LLM_NAME_MAX];
    int                               rc, f16 = p->weights == LLM_W_F16;
    int64_t                           n_compressed = 0;   // linears stored compressed (caldera-pipe output)
    if (!f) return caldera_error(inst, CALDERA_ERR_INVAL, "load: the reader is not a format instance");
    pick_kernels(p);
    if (p->loaded) llm_release(inst);
    if (!f->model_desc) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "load: the format '%s' gives no model description",
                             caldera_inst_plugin(reader)->name);
    }
    if ((rc = f->model_desc(reader, &p->d)) < 0) {
        char why[512];   // the message buffer is the one being written: copy it first
        snprintf(why, sizeof(why), "%s", caldera_ctx_errmsg(caldera_inst_ctx(inst)));
        return caldera_error(inst, rc, "load: no model description: %s", why);
    }
    if ((rc = check_desc(inst, p)) < 0) goto fail;
    struct caldera_model_desc * d = &p->d;
    p->hd  = d->head_dim;
    p->qd  = d->n_heads * d->head_dim;
    p->kvd = d->n_kv_heads * d->head_dim;
    rc = CALDERA_ERR_NOMEM;
    p->inv_freq = caldera_malloc((size_t) (p->hd / 2) * sizeof(double));
    p->rope_cs  = caldera_malloc((size_t) p->hd * sizeof(float));
    p->rope_pos = -1;
    p->layers   = caldera_calloc((size_t) d->n_layers, sizeof(*p->layers));
    p->lins     = caldera_calloc((size_t) (d->n_layers * LLM_LIN_PER_LAYER), sizeof(*p->lins));
    if (!p->inv_freq || !p->rope_cs || !p->layers || !p->lins) {
        caldera_error(inst, rc, "load: cannot allocate the model tables");
        goto fail;
    }
    for (int64_t i = 0; i < p->hd / 2; i++) p->inv_freq[i] = pow(d->rope_theta, -2.0 * (double) i / (double) p->hd);
    p->n_lins = d->n_layers * LLM_LIN_PER_LAYER;
    if ((rc = read_weight(inst, reader, "model.embed_tokens.weight", d->vocab, d->hidden, 0, 0, (void **) &p->emb)) < 0) goto fail;
    if ((rc = read_weight(inst, reader, "model.norm.weight", d->hidden, 0, 0, 0, (void **) &p->out_norm)) < 0) goto fail;
    if ((rc = read_weight(inst, reader, "lm_head.weight", d->vocab, d->hidden, 1, 0, (void **) &p->head)) < 0) goto fail;
    if (p->head) {
        p->head_owned = 1;
    } else {
        p->head = p->emb;   // tied embeddings (or the file has no separate head)
    }
    const int64_t out_dim[LLM_LIN_PER_LAYER] = { p->qd, p->kvd, p->kvd, d->hidden, d->ffn, d->ffn, d->hidden };
    const int64_t in_dim[LLM_LIN_PER_LAYER]  = { d->hidden, d->hidden, d->hidden, p->qd, d->hidden, d->hidden, d->ffn };
    for (int64_t l = 0; l < d->n_layers; l++) {
        struct llm_layer * L = &p->layers[l];
        L->lin = &p->lins[l * LLM_LIN_PER_LAYER];
        snprintf(name, sizeof(name), "model.layers.%" PRId64 ".input_layernorm.weight", l);
        if ((rc = read_weight(inst, reader, name, d->hidden, 0, 0, 0, (void **) &L->attn_norm)) < 0) goto fail;
        snprintf(name, sizeof(name), "model.layers.%" PRId64 ".post_attention_layernorm.weight", l);
        if ((rc = read_weight(inst, reader, name, d->hidden, 0, 0, 0, (void **) &L->ffn_norm)) < 0) goto fail;
        for (int k = 0; k < LLM_LIN_PER_LAYER; k++) {
            struct llm_lin * lin = &L->lin[k];
            snprintf(lin->name, sizeof(lin->name), "model.layers.%" PRId64 ".%s.weight", l, llm_lin_name[k]);
            snprintf(lin->gkey, sizeof(lin->gkey), "model.layers.%" PRId64 ".%s", l, llm_group_suffix[llm_lin_group[k]]);
            lin->layer = l;
            lin->rows  = out_dim[k];
            lin->cols  = in_dim[k];
            lin->group = l * LLM_G_COUNT + llm_lin_group[k];
            if (stored_compressed(reader, lin->name)) {
                n_compressed++;   // no weight until caldera_model_load_compressed gives the layer its form
            } else {
                rc = read_weight(inst, reader, lin->name, lin->rows, lin->cols, 0, f16, f16 ? (void **) &lin->w16 : (void **) &lin->w);
                if (rc < 0) goto fail;
            }
            if (k <= LLM_V) {   // Qwen2-style biases
                snprintf(name, sizeof(name), "model.layers.%" PRId64 ".%s.bias", l, llm_lin_name[k]);
                if ((rc = read_weight(inst, reader, name, lin->rows, 0, 1, 0, (void **) &lin->bias)) < 0) goto fail;
            }
        }
    }
    // tokenizer (optional): from a private copy of the metadata
    const struct caldera_meta * m = f->meta ? f->meta(reader) : NULL;
    if (m && caldera_meta_find(m, "tokenizer.ggml.model") >= 0) {
        if ((rc = caldera_meta_init(&p->meta)) < 0 || (rc = caldera_meta_copy(p->meta, m)) < 0) {
            caldera_error(inst, rc, "load: cannot copy the metadata");
            goto fail;
        }
        if ((rc = llm_tokenizer_init(caldera_inst_ctx(inst), p->meta, &p->tok)) < 0) goto fail;
        if (caldera_meta_get_string(p->meta, "tokenizer.chat_template", &p->chat_template) < 0) p->chat_template = NULL;
    }
    p->loaded = 1;
    if (n_compressed > 0) {
        caldera_inst_log(inst, CALDERA_LOG_DEBUG, "%" PRId64 " of %" PRId64 " linear weights are stored compressed; they run once "
                         "caldera_model_load_compressed gives them their form", n_compressed, p->n_lins);
    }
    caldera_inst_log(inst, CALDERA_LOG_INFO, "arch %s, %" PRId64 " layers, hidden %" PRId64 ", ffn %" PRId64 ", %" PRId64 "/%"
                     PRId64 " heads of %" PRId64 ", vocab %" PRId64 ", %s head, rope theta %g%s, %s weights%s", d->arch,
                     d->n_layers, d->hidden, d->ffn, d->n_heads, d->n_kv_heads, p->hd, d->vocab,
                     p->head_owned ? "separate" : "tied", d->rope_theta, p->rope_scale != 1.0f ? " (linear scaling)" : "",
                     f16 ? "f16" : "f32", p->tok ? "" : ", no tokenizer");
    return 0;
fail:
    llm_release(inst);
    return rc;
}

#define NEED_LOADED(p, inst)                                                                      \
    do {                                                                                          \
        if (!(p)->loaded) return caldera_error((inst), CALDERA_ERR_INVAL, "no model is loaded; call load first"); \
    } while (0)

static int llm_desc(struct caldera_inst * inst, struct caldera_model_desc * out) {
    struct llm_priv * p = caldera_inst_priv(inst);
    NEED_LOADED(p, inst);
    *out = p->d;
    return 0;
}

static int64_t llm_n_linears(struct caldera_inst * inst) {
    struct llm_priv * p = caldera_inst_priv(inst);
    return p->loaded ? p->n_lins : 0;
}

static int64_t llm_n_groups(struct caldera_inst * inst) {
    struct llm_priv * p = caldera_inst_priv(inst);
    return p->loaded ? p->d.n_layers * LLM_G_COUNT : 0;
}

static int llm_linear_info(struct caldera_inst * inst, int64_t i, struct caldera_model_linear * out) {
    struct llm_priv * p = caldera_inst_priv(inst);
    NEED_LOADED(p, inst);
    if (i < 0 || i >= p->n_lins) {
        return caldera_error(inst, CALDERA_ERR_RANGE, "linear %" PRId64 " does not exist; allowed: 0..%" PRId64, i, p->n_lins - 1);
    }
    const struct llm_lin * l = &p->lins[i];
    *out = (struct caldera_model_linear) { .name = l->name, .layer = l->layer, .rows = l->rows, .cols = l->cols,
                                           .group = l->group, .group_key = l->gkey };
    return 0;
}

static int64_t llm_linear_find(struct caldera_inst * inst, const char * name) {
    struct llm_priv * p = caldera_inst_priv(inst);
    for (int64_t i = 0; p->loaded && name && i < p->n_lins; i++) {
        if (strcmp(p->lins[i].name, name) == 0) return i;
    }
    return -1;
}

static void lin_drop(struct llm_lin * l) {
    caldera_freep(&l->w);
    caldera_freep(&l->w16);
    caldera_tensor_free(&l->wd);
    if (l->has_impl && l->impl.free) l->impl.free(l->impl.state);
    memset(&l->impl, 0, sizeof(l->impl));
    l->has_impl = 0;
}

static int llm_set_linear_weight(struct caldera_inst * inst, int64_t i, struct caldera_tensor * w, int owned) {
    struct llm_priv * p = caldera_inst_priv(inst);
    struct llm_lin *  l;
    int               rc;
    NEED_LOADED(p, inst);
    if (i < 0 || i >= p->n_lins) {
        return caldera_error(inst, CALDERA_ERR_RANGE, "set_linear_weight: linear %" PRId64 " does not exist; allowed: 0..%" PRId64,
                             i, p->n_lins - 1);
    }
    l = &p->lins[i];
    if ((rc = caldera_check_matrix(inst, "set_linear_weight", l->name, w, l->rows, l->cols)) < 0) return rc;
    if ((rc = caldera_check_finite(inst, "set_linear_weight", l->name, w)) < 0) return rc;
    float * dst;
    if (owned && w->ld == w->ne[1]) {
        dst = w->data;
        memset(w, 0, sizeof(*w));
    } else {
        if (!(dst = caldera_malloc((size_t) (l->rows * l->cols) * sizeof(float)))) {
            return caldera_error(inst, CALDERA_ERR_NOMEM, "set_linear_weight: cannot allocate %s", l->name);
        }
        for (int64_t r = 0; r < l->rows; r++) {
            memcpy(dst + r * l->cols, (const float *) w->data + r * w->ld, (size_t) l->cols * sizeof(float));
        }
        if (owned) caldera_tensor_free(w);
    }
    lin_drop(l);
    l->w = dst;
    return 0;
}

static int llm_set_linear_impl(struct caldera_inst * inst, int64_t i, const struct caldera_linear_impl * impl) {
    struct llm_priv * p = caldera_inst_priv(inst);
    NEED_LOADED(p, inst);
    if (i < 0 || i >= p->n_lins) {
        return caldera_error(inst, CALDERA_ERR_RANGE, "set_linear_impl: linear %" PRId64 " does not exist; allowed: 0..%" PRId64,
                             i, p->n_lins - 1);
    }
    if (!impl || !impl->apply || impl->struct_size < offsetof(struct caldera_linear_impl, free)) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "set_linear_impl: %s: the implementation has no apply function",
                             p->lins[i].name);
    }
    struct llm_lin * l = &p->lins[i];
    lin_drop(l);
    memset(&l->impl, 0, sizeof(l->impl));
    memcpy(&l->impl, impl, impl->struct_size < sizeof(l->impl) ? impl->struct_size : sizeof(l->impl));
    l->impl.struct_size = sizeof(l->impl);
    l->has_impl         = 1;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Kernels

struct rms_args { const float * x; float * y; const float * w; int64_t n, ldx, ldy; double eps; };

static void rms_rows(void * arg, int64_t i0, int64_t i1) {
    const struct rms_args * a = arg;
    for (int64_t i = i0; i < i1; i++) {
        const float * x = a->x + i * a->ldx;
        float *       y = a->y + i * a->ldy;
        double        ss = 0;
        for (int64_t j = 0; j < a->n; j++) ss += (double) x[j] * x[j];
        float s = (float) (1.0 / sqrt(ss / (double) a->n + a->eps));
        for (int64_t j = 0; j < a->n; j++) y[j] = x[j] * s * a->w[j];
    }
}

static void rmsnorm(struct caldera_ctx * ctx, const float * x, float * y, const float * w, int64_t rows, int64_t n, double eps) {
    struct rms_args a = { x, y, w, n, n, n, eps };
    caldera_parallel_for(ctx, rows, 16, rms_rows, &a);
}

// ---- few-token products (decoding): y[t, r] = Σ_c w[r, c] x[t, c], t < n (n small), rows in parallel.
// Memory-bound on W; AVX2/FMA/F16C versions are chosen at run time, the plain C ones elsewhere.

static float dot_f32_c(const float * a, const float * b, int64_t n) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

static float dot_f16_c(const uint16_t * a, const float * b, int64_t n) {
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += caldera_f16_to_f32(a[i]) * b[i];
    return s;
}

// Decoding with the q8 head: the activations x of a token quantized once per block of 32 to int16,
// xq = round(x/dx) with dx = max|x|/32767 per block (15 bits and the sign: as exact as the E8P
// kernels' int8 level plus its residual), so that a row's block is an exact integer sum.
static void q16_prepare(const float * x, int64_t n, int16_t * xq, float * xd) {
    for (int64_t b = 0; b < n; b += LLM_Q8_BLOCK) {
        float amax = 0;
        for (int64_t i = b; i < b + LLM_Q8_BLOCK; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
        const float id = amax > 0 ? 32767.0f / amax : 0.0f;
        xd[b / LLM_Q8_BLOCK] = amax / 32767.0f;
        for (int64_t i = b; i < b + LLM_Q8_BLOCK; i++) {
            long q = lrintf(x[i] * id);
            xq[i] = (int16_t) (q > 32767 ? 32767 : q < -32767 ? -32767 : q);
        }
    }
}

// y[i] = Σ_b (wd_ib · xd_b) · Σ_{c in block b} w_ic xq_c for n q8 rows w (n × cols, cols a multiple
// of LLM_Q8_BLOCK; wd n × cols/32 scales): the integer sums exact (|sum| ≤ 32 · 127 · 32767 < 2^31),
// the SIMD forms differ only in the order of the f32 sums.
static void q8_rows_c(const int8_t * w, const float * wd, int64_t cols, int64_t n, const int16_t * xq, const float * xd,
                      float * y) {
    const int64_t nb = cols / LLM_Q8_BLOCK;
    for (int64_t i = 0; i < n; i++) {
        float s = 0;
        for (int64_t b = 0; b < nb; b++) {
            const int8_t * q = w + i * cols + b * LLM_Q8_BLOCK;
            int32_t        t = 0;
            for (int j = 0; j < LLM_Q8_BLOCK; j++) t += (int32_t) q[j] * xq[b * LLM_Q8_BLOCK + j];
            s += (wd[i * nb + b] * xd[b]) * (float) t;
        }
        y[i] = s;
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LLM_X86 1
__attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}
__attribute__((target("avx2,fma"))) static float dot_f32_avx2(const float * a, const float * b, int64_t n) {
    __m256  s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}
__attribute__((target("avx2,fma,f16c"))) static float dot_f16_avx2(const uint16_t * a, const float * b, int64_t n) {
    __m256  s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (a + i)));
        __m256 a1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (a + i + 8)));
        s0 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(a1, _mm256_loadu_ps(b + i + 8), s1);
    }
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += caldera_f16_to_f32(a[i]) * b[i];
    return s;
}

#define Q8_PREFETCH 3072   // bytes ahead of the row read (q8_rows_vnni)

// 16 weights widened to int16 per vpmovsxbw, vpmaddwd with xq: a block in two steps, one f32 FMA.
__attribute__((target("avx2,fma"))) static void q8_rows_avx2(const int8_t * w, const float * wd, int64_t cols, int64_t n,
                                                              const int16_t * xq, const float * xd, float * y) {
    const int64_t nb = cols / LLM_Q8_BLOCK;
    for (int64_t i = 0; i < n; i++) {
        __m256 s0 = _mm256_setzero_ps();
        for (int64_t o = 0; o < cols; o += 64) _mm_prefetch((const char *) (w + i * cols + Q8_PREFETCH + o), _MM_HINT_T0);
        _mm_prefetch((const char *) (wd + i * nb + Q8_PREFETCH / LLM_Q8_BLOCK), _MM_HINT_T0);
        for (int64_t b = 0; b < nb; b++) {
            const int8_t *  q  = w + i * cols + b * LLM_Q8_BLOCK;
            const int16_t * xb = xq + b * LLM_Q8_BLOCK;
            __m256i t = _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) q)),
                                          _mm256_loadu_si256((const __m256i *) xb));
            t = _mm256_add_epi32(t, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) (q + 16))),
                                                      _mm256_loadu_si256((const __m256i *) (xb + 16))));
            s0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_set1_ps(wd[i * nb + b] * xd[b]), s0);
        }
        y[i] = hsum256(s0);
    }
}

// AVX512-VNNI: a block of 32 weights is one vpmovsxbw and one vpdpwssd, two blocks per step. The
// head is a stream of 28 MB per token (SmolLM2) that the hardware prefetcher alone fetches at about
// 12 GB/s here; each row first prefetches the row 3 KiB ahead (and its scales). Four rows per step
// sharing the loads of xq ran at half the speed (four interleaved streams).
__attribute__((target("avx512f,avx512bw,avx512vnni,avx2,fma"))) static void q8_rows_vnni(
    const int8_t * w, const float * wd, int64_t cols, int64_t n, const int16_t * xq, const float * xd, float * y) {
    const int64_t nb = cols / LLM_Q8_BLOCK;
    const __m512i z  = _mm512_setzero_si512();
    for (int64_t i = 0; i < n; i++) {
        const int8_t * q = w + i * cols;
        const float *  d = wd + i * nb;
        for (int64_t o = 0; o < cols; o += 64) _mm_prefetch((const char *) (q + Q8_PREFETCH + o), _MM_HINT_T0);
        _mm_prefetch((const char *) (d + Q8_PREFETCH / LLM_Q8_BLOCK), _MM_HINT_T0);
        __m512  s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
        int64_t b  = 0;
        for (; b + 2 <= nb; b += 2) {
            const __m512i p0 = _mm512_dpwssd_epi32(z, _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *) (q + 32 * b))),
                                                   _mm512_loadu_si512(xq + 32 * b));
            const __m512i p1 = _mm512_dpwssd_epi32(
                z, _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *) (q + 32 * b + 32))), _mm512_loadu_si512(xq + 32 * b + 32));
            s0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), _mm512_set1_ps(d[b] * xd[b]), s0);
            s1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), _mm512_set1_ps(d[b + 1] * xd[b + 1]), s1);
        }
        if (b < nb) {
            const __m512i p0 = _mm512_dpwssd_epi32(z, _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *) (q + 32 * b))),
                                                   _mm512_loadu_si512(xq + 32 * b));
            s0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), _mm512_set1_ps(d[b] * xd[b]), s0);
        }
        y[i] = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    }
}

// exp by range reduction x = n ln2 + r and a degree-6 polynomial for e^r on |r| <= ln2/2 (the
// Cephes single-precision coefficients; relative error about 1e-7); 8 lanes at a time.
__attribute__((target("avx2,fma"))) static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// s[0, nv) <- softmax(s[0, nv)) in place
__attribute__((target("avx2,fma"))) static void softmax_avx2(float * s, int64_t nv) {
    __m256  vm = _mm256_set1_ps(-FLT_MAX);
    int64_t j = 0;
    for (; j + 8 <= nv; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(s + j));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vm), _mm256_extractf128_ps(vm, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float m = _mm_cvtss_f32(m4);
    for (; j < nv; j++) m = s[j] > m ? s[j] : m;
    __m256 vsum = _mm256_setzero_ps(), vmx = _mm256_set1_ps(m);
    for (j = 0; j + 8 <= nv; j += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), vmx));
        _mm256_storeu_ps(s + j, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum256(vsum);
    for (; j < nv; j++) sum += (s[j] = expf(s[j] - m));
    __m256 vinv = _mm256_set1_ps(1.0f / sum);
    for (j = 0; j + 8 <= nv; j += 8) _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), vinv));
    for (; j < nv; j++) s[j] *= 1.0f / sum;
}
#endif

static void softmax_c(float * s, int64_t nv) {
    float m = -FLT_MAX, sum = 0;
    for (int64_t j = 0; j < nv; j++) m = s[j] > m ? s[j] : m;
    for (int64_t j = 0; j < nv; j++) sum += (s[j] = expf(s[j] - m));
    float inv = 1.0f / sum;
    for (int64_t j = 0; j < nv; j++) s[j] *= inv;
}

typedef float (*dot_f32_fn)(const float *, const float *, int64_t);
typedef float (*dot_f16_fn)(const uint16_t *, const float *, int64_t);
typedef void (*q8_rows_fn)(const int8_t *, const float *, int64_t, int64_t, const int16_t *, const float *, float *);
// The kernels of the process: AVX2 ones when the CPU has them (chosen once; the q8 head's rows with
// AVX512-VNNI where present), else plain C. The option simd = false makes an instance use the C
// ones; the environment's CALDERA_KERNELS = c | avx2 (as for libcaldera's kernels) caps the choice
// at load (the tests cover every variant the CPU has).
struct llm_kernels { dot_f32_fn dot_f32; dot_f16_fn dot_f16; void (*softmax)(float *, int64_t); q8_rows_fn q8_rows; };
static const struct llm_kernels llm_kernels_c = { dot_f32_c, dot_f16_c, softmax_c, q8_rows_c };
#ifdef LLM_X86
static const struct llm_kernels llm_kernels_avx2 = { dot_f32_avx2, dot_f16_avx2, softmax_avx2, q8_rows_avx2 };
static const struct llm_kernels llm_kernels_vnni = { dot_f32_avx2, dot_f16_avx2, softmax_avx2, q8_rows_vnni };
#endif

static void pick_kernels(struct llm_priv * p) {
    p->k = &llm_kernels_c;
#ifdef LLM_X86
    __builtin_cpu_init();
    if (p->simd && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && llm_has_f16c()) {
        p->k = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni")
                   ? &llm_kernels_vnni
                   : &llm_kernels_avx2;
        const char * env = getenv("CALDERA_KERNELS");
        if (env && strcmp(env, "avx2") == 0) p->k = &llm_kernels_avx2;
        if (env && strcmp(env, "c") == 0) p->k = &llm_kernels_c;
    }
#endif
}

// w8 (q8 rows, w8d their scales) takes the int16 activations xq (n_x × cols) and their steps xd
// (n_x × cols/32) of q16_prepare instead of x.
struct mv_args { const struct llm_kernels * k; const float * w; const uint16_t * w16; const float * x; float * y;
                 int64_t cols, n_x, ld_x, ld_y; const int8_t * w8; const float * w8d; const int16_t * xq; const float * xd; };

static void mv_rows(void * arg, int64_t r0, int64_t r1) {
    const struct mv_args * a = arg;
    if (a->w8) {   // 64 rows (36 KiB at 576 columns, cache-resident) for every token in turn
        const int64_t nb = a->cols / LLM_Q8_BLOCK;
        for (int64_t c = r0; c < r1; c += 64) {
            const int64_t n = r1 - c < 64 ? r1 - c : 64;
            for (int64_t t = 0; t < a->n_x; t++) {
                a->k->q8_rows(a->w8 + c * a->cols, a->w8d + c * nb, a->cols, n, a->xq + t * a->cols, a->xd + t * nb,
                              a->y + t * a->ld_y + c);
            }
        }
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t t = 0; t < a->n_x; t++) {
            const float * x = a->x + t * a->ld_x;
            a->y[t * a->ld_y + r] = a->w ? a->k->dot_f32(a->w + r * a->cols, x, a->cols)
                                         : a->k->dot_f16(a->w16 + r * a->cols, x, a->cols);
        }
    }
}

#define LLM_SMALL_N 4   // up to this many token rows go through mv_rows instead of gemm

struct f16_cv_args { const uint16_t * w; float * out; int64_t cols; };
static void f16_cv_rows(void * arg, int64_t r0, int64_t r1) {
    const struct f16_cv_args * a = arg;
    caldera_convert_to_f32(CALDERA_DTYPE_F16, a->w + r0 * a->cols, (r1 - r0) * a->cols, a->out + r0 * a->cols);
}

// Several linears with the same input x, few tokens: one parallel loop over all their rows (one
// wake-up of the pool instead of one per layer). Rows of job k are [start[k], start[k+1]).
struct mv_job { const float * w; const uint16_t * w16; float * y; int64_t ld_y; };
struct mvm_args { const struct llm_kernels * k; struct mv_job job[3]; int64_t start[4]; int n_job; const float * x;
                  int64_t cols, n_x, ld_x; };

static void mvm_rows(void * arg, int64_t r0, int64_t r1) {
    const struct mvm_args * a = arg;
    for (int k = 0; k < a->n_job; k++) {
        int64_t lo = r0 > a->start[k] ? r0 : a->start[k], hi = r1 < a->start[k + 1] ? r1 : a->start[k + 1];
        if (lo >= hi) continue;
        struct mv_args m = { a->k, a->job[k].w, a->job[k].w16, a->x, a->job[k].y, a->cols, a->n_x, a->ld_x, a->job[k].ld_y };
        mv_rows(&m, lo - a->start[k], hi - a->start[k]);
    }
}

// mv_rows over [0, rows) as LLM_MV_TASKS tasks of contiguous rows: for the output head (49152 rows,
// memory-bound), where the 4 chunks per thread of caldera_parallel_for left one thread waiting for
// up to a chunk (~150 us of a decoded token's ~1.2 ms head at 2 threads) at the end.
#define LLM_MV_TASKS 32
struct mv_tasks { struct mv_args * a; int64_t rows; };
static void mv_task_rows(void * arg, int64_t t0, int64_t t1) {
    const struct mv_tasks * m = arg;
    mv_rows(m->a, m->rows * t0 / LLM_MV_TASKS, m->rows * t1 / LLM_MV_TASKS);
}
static void mv_rows_tasks(struct caldera_ctx * ctx, int64_t rows, struct mv_args * a) {
    if (rows < 256 * LLM_MV_TASKS) {
        caldera_parallel_for(ctx, rows, 256, mv_rows, a);
        return;
    }
    struct mv_tasks m = { a, rows };
    caldera_parallel_tasks(ctx, LLM_MV_TASKS, mv_task_rows, &m);
}

// Under device = cuda: *dev, a device copy of the f32 weight w (rows × cols), or of the f16 w16
// converted through scratch, made on the first large product and kept until the weight is
// replaced or the model released, so that the GEMMs of calibration and evaluation do not copy
// the weights to the GPU every call (only the activations cross the bus).
static int dev_weight(struct caldera_inst * inst, const char * name, const float * w, const uint16_t * w16, int64_t rows,
                      int64_t cols, float * scratch, struct caldera_tensor * dev) {
    struct caldera_ctx * ctx = caldera_inst_ctx(inst);
    const int64_t ne[2] = { rows, cols };
    int rc;
    if (dev->data) return 0;
    if (!w) {
        struct f16_cv_args a = { w16, scratch, cols };
        caldera_parallel_for(ctx, rows, 16, f16_cv_rows, &a);
        w = scratch;
    }
    struct caldera_tensor h = caldera_tensor_view_f32((float *) w, rows, cols);
    if ((rc = caldera_tensor_alloc_device(ctx, CALDERA_DEVICE_CUDA, CALDERA_DTYPE_F32, 2, ne, dev)) < 0 ||
        (rc = caldera_tensor_copy(ctx, dev, &h)) < 0) {
        caldera_tensor_free(dev);
        return caldera_error(inst, rc, "%s: cannot keep the weight on the GPU: %s", name, caldera_ctx_errmsg(ctx));
    }
    return 0;
}

// y (n × rows, ld ldy) = x (n × cols, ld ldx) Wᵀ (+ bias)
static int lin_apply(struct caldera_inst * inst, struct llm_lin * l, const float * x, int64_t ldx, float * y, int64_t ldy,
                     int64_t n) {
    struct llm_priv *     p   = caldera_inst_priv(inst);
    struct caldera_ctx *  ctx = caldera_inst_ctx(inst);
    struct caldera_tensor tx  = { .data = (void *) x, .dtype = CALDERA_DTYPE_F32, .ndim = 2, .ne = { n, l->cols }, .ld = ldx };
    struct caldera_tensor ty  = { .data = y, .dtype = CALDERA_DTYPE_F32, .ndim = 2, .ne = { n, l->rows }, .ld = ldy };
    int                   rc;
    if (l->has_impl) {
        if ((rc = l->impl.apply(l->impl.state, ctx, &tx, &ty)) < 0) {
            return caldera_error(inst, rc, "%s: the replaced layer's apply failed: %s", l->name, caldera_ctx_errmsg(ctx));
        }
    } else if ((l->w || l->w16) && n <= LLM_SMALL_N) {
        struct mv_args a = { p->k, l->w, l->w16, x, y, l->cols, n, ldx, ldy };
        caldera_parallel_for(ctx, l->rows, 32, mv_rows, &a);
    } else if ((l->w || l->w16) && caldera_ctx_device(ctx) == CALDERA_DEVICE_CUDA) {
        // cuBLAS with the weight kept on the GPU; x and y are copied per call
        if ((rc = dev_weight(inst, l->name, l->w, l->w16, l->rows, l->cols, p->f16_scratch, &l->wd)) < 0 ||
            (rc = caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_TRANS, 1.0f, &tx, &l->wd, 0.0f, &ty)) < 0) {
            return rc;
        }
    } else if (l->w) {
        struct caldera_tensor tw = caldera_tensor_view_f32(l->w, l->rows, l->cols);
        if ((rc = caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_TRANS, 1.0f, &tx, &tw, 0.0f, &ty)) < 0) return rc;
    } else if (l->w16) {
        struct f16_cv_args a = { l->w16, p->f16_scratch, l->cols };
        caldera_parallel_for(ctx, l->rows, 16, f16_cv_rows, &a);
        struct caldera_tensor tw = caldera_tensor_view_f32(p->f16_scratch, l->rows, l->cols);
        if ((rc = caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_TRANS, 1.0f, &tx, &tw, 0.0f, &ty)) < 0) return rc;
    } else {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "%s: the file stores this weight compressed; it runs once "
                             "caldera_model_load_compressed gives it its form (caldera_model_open does for a caldera-pipe "
                             "output)", l->name);
    }
    if (l->bias) {
        for (int64_t t = 0; t < n; t++) {
            for (int64_t r = 0; r < l->rows; r++) y[t * ldy + r] += l->bias[r];
        }
    }
    return 0;
}

// RoPE (HF rotate_half) in place on rows of x (n × heads·hd, ld), row t at position pos0 + t.
// cs: the cos and sin of the angles when every row is at position pos0 (one decoded token: the
// same for every layer, computed once by rope_angles), else NULL.
struct rope_args { const struct llm_priv * p; float * x; int64_t ld, heads, pos0; const float * cs; };

static void rope_angles(const struct llm_priv * p, int64_t pos0, float * cs) {
    int64_t half = p->hd / 2;
    double  pos  = (double) pos0 * p->rope_scale;
    for (int64_t i = 0; i < half; i++) {
        double ang = pos * p->inv_freq[i];
        cs[i]        = (float) cos(ang);
        cs[half + i] = (float) sin(ang);
    }
}

static void rope_rows(void * arg, int64_t t0, int64_t t1) {
    const struct rope_args * a = arg;
    int64_t                  half = a->p->hd / 2;
    for (int64_t t = t0; t < t1; t++) {
        double pos = (double) (a->pos0 + t) * a->p->rope_scale;
        for (int64_t i = 0; i < half; i++) {
            float c, s;
            if (a->cs) {
                c = a->cs[i];
                s = a->cs[half + i];
            } else {
                double ang = pos * a->p->inv_freq[i];
                c = (float) cos(ang);
                s = (float) sin(ang);
            }
            for (int64_t h = 0; h < a->heads; h++) {
                float * v  = a->x + t * a->ld + h * a->p->hd;
                float   x1 = v[i], x2 = v[i + half];
                v[i]        = x1 * c - x2 * s;
                v[i + half] = x2 * c + x1 * s;
            }
        }
    }
}

// Row-wise causal softmax of s (rows × nk, ld nk): row r may see keys 0 .. first_vis + r.
struct smax_args { const struct llm_kernels * k; float * s; int64_t nk, first_vis; };
static void smax_rows(void * arg, int64_t r0, int64_t r1) {
    const struct smax_args * a = arg;
    for (int64_t r = r0; r < r1; r++) {
        float * s  = a->s + r * a->nk;
        int64_t nv = a->first_vis + r + 1;   // visible keys
        if (nv > a->nk) nv = a->nk;
        a->k->softmax(s, nv);
        if (nv < a->nk) memset(s + nv, 0, (size_t) (a->nk - nv) * sizeof(float));
    }
}

// g[i] = silu(g[i]) u[i] for the elements i of [i0, i1); with silu_done, g holds silu(g) already
struct swiglu_args { float * g; const float * u; int silu_done; };
static void swiglu_elems(void * arg, int64_t i0, int64_t i1) {
    const struct swiglu_args * a = arg;
    if (a->silu_done) {
        for (int64_t i = i0; i < i1; i++) a->g[i] *= a->u[i];
        return;
    }
    for (int64_t i = i0; i < i1; i++) {
        float g = a->g[i];
        a->g[i] = g / (1.0f + expf(-g)) * a->u[i];
    }
}

// g[i] = silu(g[i]) = g / (1 + e^-g), the first half of swiglu_elems (the same float operations)
static void silu_inplace(float * g, int64_t n) {
    for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i]));
}

// Attention of a few query rows (decoding): heads in parallel, dot products and axpys; scores of
// head h in s + h · nk (s holds n_heads × nk floats).
struct sattn_args { const struct llm_priv * p; const float * q, * k, * v; float * o, * s; int64_t ldkv, n, p0; };

static void sattn_heads(void * arg, int64_t h0, int64_t h1) {
    const struct sattn_args * a = arg;
    const struct llm_priv *   p = a->p;
    int64_t                   rep = p->d.n_heads / p->d.n_kv_heads, hd = p->hd;
    float                     scale = (float) (1.0 / sqrt((double) hd));
    for (int64_t h = h0; h < h1; h++) {
        int64_t g = h / rep;
        for (int64_t i = 0; i < a->n; i++) {
            int64_t       nk = a->p0 + i + 1;
            const float * q = a->q + i * p->qd + h * hd;
            float *       s = a->s + h * (a->p0 + a->n);
            for (int64_t j = 0; j < nk; j++) s[j] = p->k->dot_f32(q, a->k + j * a->ldkv + g * hd, hd) * scale;
            p->k->softmax(s, nk);
            float * o = a->o + i * p->qd + h * hd;
            for (int64_t c = 0; c < hd; c++) o[c] = 0;
            for (int64_t j = 0; j < nk; j++) {
                const float * vj = a->v + j * a->ldkv + g * hd;
                float         pj = s[j];
                for (int64_t c = 0; c < hd; c++) o[c] += pj * vj[c];
            }
        }
    }
}

// Attention of n_seq sequences of n queries each (rows of q, positions p0 .. p0+n-1 of each)
// over keys 0 .. p0+n-1 (rows of k, v with leading dimension ldkv; sequence sq's at k + sq ·
// kv_stride, kv_stride 0 in cache mode), into o (n_seq·n × qd). s: attn_slot_floats(p, nk) floats
// per thread. The rep query heads of a KV head are stacked into one block of rep · bn rows, so
// each (sequence, KV head, query block of ≤ LLM_QBLOCK rows) is one item of two gemms,
//   S = scale · Qs Kᵀ (rep·bn × nk), causal softmax of its rows, Os = S V (rep·bn × hd),
// and the items run one per thread (single-threaded BLAS each), the most keys first. An element
// of S or O is the same dot product, in the same order, as with one gemm per head.
static int64_t attn_slot_floats(const struct llm_priv * p, int64_t n_keys) {
    int64_t rep = p->d.n_heads / p->d.n_kv_heads;
    return rep * LLM_QBLOCK * (n_keys + 2 * p->hd);   // S (rep·QB × nk), Qs and Os (rep·QB × hd)
}

struct battn_args {
    struct caldera_inst * inst;
    const float * q, * k, * v;
    float *       o, * s;
    int64_t       ldkv, kv_stride, n, p0, n_seq, n_blocks, n_items, slot_floats;
    atomic_llong  next;   // next item to claim
    atomic_int    rc;     // first failure
};

static void battn_items(void * arg, int64_t t0, int64_t t1) {
    struct battn_args *  a   = arg;
    struct llm_priv *    p   = caldera_inst_priv(a->inst);
    struct caldera_ctx * ctx = caldera_inst_ctx(a->inst);
    int64_t              rep = p->d.n_heads / p->d.n_kv_heads, hd = p->hd, nkv = p->d.n_kv_heads;
    float                scale = (float) (1.0 / sqrt((double) hd));
    for (int64_t t = t0; t < t1; t++) {
        float * qs = a->s + t * a->slot_floats;   // rep·bn × hd
        float * os = qs + rep * LLM_QBLOCK * hd;  // rep·bn × hd
        float * ss = os + rep * LLM_QBLOCK * hd;  // rep·bn × nk
        for (int64_t it; atomic_load(&a->rc) == 0 && (it = atomic_fetch_add(&a->next, 1)) < a->n_items;) {
            int64_t blk = a->n_blocks - 1 - it / (a->n_seq * nkv);   // the last (most keys) first
            int64_t sq = it % (a->n_seq * nkv) / nkv, g = it % nkv;
            int64_t i0 = blk * LLM_QBLOCK, bn = a->n - i0 < LLM_QBLOCK ? a->n - i0 : LLM_QBLOCK;
            int64_t nk = a->p0 + i0 + bn, mr = rep * bn;   // keys visible to the block's last row; stacked rows
            const float * qb = a->q + (sq * a->n + i0) * p->qd + g * rep * hd;
            float *       ob = a->o + (sq * a->n + i0) * p->qd + g * rep * hd;
            for (int64_t j = 0; j < rep; j++) {
                for (int64_t r = 0; r < bn; r++) memcpy(qs + (j * bn + r) * hd, qb + r * p->qd + j * hd, (size_t) hd * sizeof(float));
            }
            struct caldera_tensor tq = caldera_tensor_view_f32(qs, mr, hd);
            struct caldera_tensor tk = { .data = (void *) (a->k + sq * a->kv_stride + g * hd), .dtype = CALDERA_DTYPE_F32,
                                         .ndim = 2, .ne = { nk, hd }, .ld = a->ldkv };
            struct caldera_tensor tv = { .data = (void *) (a->v + sq * a->kv_stride + g * hd), .dtype = CALDERA_DTYPE_F32,
                                         .ndim = 2, .ne = { nk, hd }, .ld = a->ldkv };
            struct caldera_tensor ts = caldera_tensor_view_f32(ss, mr, nk);
            struct caldera_tensor to = caldera_tensor_view_f32(os, mr, hd);
            int rc = caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_TRANS, scale, &tq, &tk, 0.0f, &ts);
            for (int64_t j = 0; rc == 0 && j < rep; j++) {
                struct smax_args sa = { p->k, ss + j * bn * nk, nk, a->p0 + i0 };
                smax_rows(&sa, 0, bn);
            }
            if (rc == 0) rc = caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &ts, &tv, 0.0f, &to);
            if (rc < 0) {
                int zero = 0;
                atomic_compare_exchange_strong(&a->rc, &zero, rc);
                break;
            }
            for (int64_t j = 0; j < rep; j++) {
                for (int64_t r = 0; r < bn; r++) memcpy(ob + r * p->qd + j * hd, os + (j * bn + r) * hd, (size_t) hd * sizeof(float));
            }
        }
    }
}

static int attention(struct caldera_inst * inst, const float * q, const float * k, const float * v, int64_t ldkv,
                     int64_t kv_stride, int64_t n_seq, int64_t n, int64_t p0, float * o, float * s, int64_t slots) {
    struct llm_priv *    p   = caldera_inst_priv(inst);
    struct caldera_ctx * ctx = caldera_inst_ctx(inst);
    if (n <= LLM_SMALL_N && p->d.n_heads <= LLM_QBLOCK) {
        for (int64_t sq = 0; sq < n_seq; sq++) {
            struct sattn_args a = { p, q + sq * n * p->qd, k + sq * kv_stride, v + sq * kv_stride, o + sq * n * p->qd, s, ldkv, n, p0 };
            caldera_parallel_for(ctx, p->d.n_heads, 1, sattn_heads, &a);
        }
        return 0;
    }
    int64_t n_blocks = (n + LLM_QBLOCK - 1) / LLM_QBLOCK;
    struct battn_args a = { .inst = inst, .q = q, .k = k, .v = v, .o = o, .s = s, .ldkv = ldkv, .kv_stride = kv_stride, .n = n,
                            .p0 = p0, .n_seq = n_seq, .n_blocks = n_blocks, .n_items = n_seq * p->d.n_kv_heads * n_blocks,
                            .slot_floats = attn_slot_floats(p, p0 + n) };
    atomic_init(&a.next, 0);
    atomic_init(&a.rc, 0);
    int64_t th = caldera_ctx_threads(ctx);
    if (th > slots) th = slots;
    if (th > a.n_items) th = a.n_items;
    caldera_parallel_for_blas(ctx, th, 1, battn_items, &a);
    return atomic_load(&a.rc);
}

// ---------------------------------------------------------------------------------------------
// The blocks



// The activation buffers are kept in the instance between calls (fresh pages cost page faults on
// every pass); they grow when a call needs more and are freed by release.
static int work_alloc(struct caldera_inst * inst, struct llm_work * w, int64_t T, int64_t n_keys, int batch_kv, int logits) {
    struct llm_priv * p = caldera_inst_priv(inst);
    int64_t           H = p->d.hidden;
    int64_t           slots = caldera_ctx_threads(caldera_inst_ctx(inst));   // attention scratch: one per thread
    if (p->wk.x && T <= p->wk_T && n_keys <= p->wk_keys && slots <= p->wk_slots && (!batch_kv || p->wk.k) && (!logits || p->wk.lg)) {
        *w = p->wk;
        return 0;
    }
    if (p->wk.x) {   // grow: never smaller than what was there
        T      = T > p->wk_T ? T : p->wk_T;
        n_keys = n_keys > p->wk_keys ? n_keys : p->wk_keys;
        slots  = slots > p->wk_slots ? slots : p->wk_slots;
        batch_kv |= p->wk.k != NULL;
        logits |= p->wk.lg != NULL;
        work_free(&p->wk);
    }
    memset(w, 0, sizeof(*w));
    w->x = caldera_malloc((size_t) (T * H) * sizeof(float));
    w->h = caldera_malloc((size_t) (T * H) * sizeof(float));
    w->q = caldera_malloc((size_t) (T * p->qd) * sizeof(float));
    w->a = caldera_malloc((size_t) (T * p->qd) * sizeof(float));
    w->g = caldera_malloc((size_t) (T * p->d.ffn) * sizeof(float));
    w->u = caldera_malloc((size_t) (T * p->d.ffn) * sizeof(float));
    w->s = caldera_malloc((size_t) (slots * attn_slot_floats(p, n_keys)) * sizeof(float));
    int ok = w->x && w->h && w->q && w->a && w->g && w->u && w->s;
    if (batch_kv) {
        w->k = caldera_malloc((size_t) (T * p->kvd) * sizeof(float));
        w->v = caldera_malloc((size_t) (T * p->kvd) * sizeof(float));
        ok = ok && w->k && w->v;
    }
    if (logits) {
        w->lg = caldera_malloc((size_t) (LLM_LOGIT_ROWS * p->d.vocab) * sizeof(float));
        ok    = ok && w->lg;
    }
    if (!ok) {
        work_free(w);
        p->wk_T = p->wk_keys = p->wk_slots = 0;
        return caldera_error(inst, CALDERA_ERR_NOMEM, "cannot allocate the activations of %" PRId64 " tokens", T);
    }
    p->wk      = *w;
    p->wk_T    = T;
    p->wk_keys = n_keys;
    p->wk_slots = slots;
    return 0;
}

static int embed(struct caldera_inst * inst, const int32_t * tokens, int64_t T, float * x) {
    struct llm_priv * p = caldera_inst_priv(inst);
    for (int64_t t = 0; t < T; t++) {
        if (tokens[t] < 0 || tokens[t] >= p->d.vocab) {
            return caldera_error(inst, CALDERA_ERR_RANGE, "token %" PRId64 " is %" PRId32 "; allowed: 0..%" PRId64, t, tokens[t],
                                 p->d.vocab - 1);
        }
        memcpy(x + t * p->d.hidden, p->emb + (int64_t) tokens[t] * p->d.hidden, (size_t) p->d.hidden * sizeof(float));
    }
    return 0;
}

struct obs { caldera_model_observe_fn fn; void * user; };

static int observe(struct caldera_inst * inst, const struct obs * ob, const struct llm_lin * first, const float * x, int64_t T) {
    if (!ob || !ob->fn) return 0;
    struct llm_priv *     p  = caldera_inst_priv(inst);
    struct caldera_tensor tx = caldera_tensor_view_f32((float *) x, T, first->cols);
    int                   rc = ob->fn(ob->user, first->group, first - p->lins, &tx);
    if (rc < 0) return caldera_error(inst, rc, "the observer of %s stopped the forward pass", first->gkey);
    return 0;
}

// Replaced layers (caldera_linear_impl) sharing one decoded token's input, one task each: a layer's
// whole chain (a compressed layer's transforms, its codes' GEMV, its low-rank products) runs on one
// thread, the layers side by side (q | k, v; gate | up), instead of each product split over the
// threads with the chain's short steps between them serial. The tasks are caldera_parallel_tasks:
// a thread that runs out of layers helps with the loops still open inside the others (q's GEMV
// rows while k and v are done: q is 60% of the three).
struct impl_task { struct caldera_inst * inst; struct llm_lin ** l; float ** y; const int64_t * ldy; const float * x;
                   int64_t ldx; int silu0; atomic_int rc; };

static void impl_tasks(void * arg, int64_t j0, int64_t j1) {
    struct impl_task * t = arg;
    for (int64_t j = j0; j < j1; j++) {
        int rc = lin_apply(t->inst, t->l[j], t->x, t->ldx, t->y[j], t->ldy[j], 1);
        if (rc == 0 && j == 0 && t->silu0) silu_inplace(t->y[0], t->l[0]->rows);   // on the thread that has y[0] in cache
        if (rc < 0) {
            int none = 0;
            atomic_compare_exchange_strong(&t->rc, &none, rc);
        }
    }
}

// lin_apply for k (≤ 3) linears that share the input x; few-token dense ones in one loop. Returns 1
// when it also applied silu to y[0] in place (asked by silu0: the replaced layers of a decoded
// token as tasks, where the gate's thread does it beside the up product), else 0.
static int lin_apply_multi(struct caldera_inst * inst, struct llm_lin ** l, float ** y, const int64_t * ldy, int k,
                           const float * x, int64_t ldx, int64_t n, int silu0) {
    int rc, fused = n <= LLM_SMALL_N, impls = n == 1 && k > 1 && caldera_ctx_threads(caldera_inst_ctx(inst)) > 1;
    for (int j = 0; j < k; j++) fused = fused && !l[j]->has_impl && !l[j]->bias && (l[j]->w || l[j]->w16);
    for (int j = 0; j < k; j++) impls = impls && l[j]->has_impl;
    if (impls) {
        struct impl_task t = { .inst = inst, .l = l, .y = y, .ldy = ldy, .x = x, .ldx = ldx, .silu0 = silu0 };
        atomic_init(&t.rc, 0);
        caldera_parallel_tasks(caldera_inst_ctx(inst), k, impl_tasks, &t);
        rc = atomic_load(&t.rc);
        return rc < 0 ? rc : silu0;
    }
    if (!fused) {
        for (int j = 0; j < k; j++) {
            if ((rc = lin_apply(inst, l[j], x, ldx, y[j], ldy[j], n)) < 0) return rc;
        }
        return 0;
    }
    struct mvm_args a = { .k = ((struct llm_priv *) caldera_inst_priv(inst))->k, .n_job = k, .x = x, .cols = l[0]->cols,
                          .n_x = n, .ld_x = ldx };
    for (int j = 0; j < k; j++) {
        a.job[j]       = (struct mv_job) { l[j]->w, l[j]->w16, y[j], ldy[j] };
        a.start[j + 1] = a.start[j] + l[j]->rows;
    }
    caldera_parallel_for(caldera_inst_ctx(inst), a.start[k], 32, mvm_rows, &a);
    return 0;
}

// One block over T = n_seq × n_tok rows of w->x. Cache mode (kc != NULL, n_seq == 1): K/V rows are
// written at positions p0 .. p0+n_tok-1 of the layer's cache (kc, vc: kv_cap × kvd) and
// attention reads positions 0 .. p0+n_tok-1; batch mode: every sequence attends to its own rows.
static int block(struct caldera_inst * inst, int64_t l, struct llm_work * w, int64_t n_seq, int64_t n_tok, int64_t p0,
                 float * kc, float * vc, const struct obs * ob) {
    struct llm_priv *    p   = caldera_inst_priv(inst);
    struct caldera_ctx * ctx = caldera_inst_ctx(inst);
    struct llm_layer *   L   = &p->layers[l];
    int64_t              T = n_seq * n_tok, H = p->d.hidden, F = p->d.ffn;
    int                  rc;
    rmsnorm(ctx, w->x, w->h, L->attn_norm, T, H, p->d.norm_eps);
    if ((rc = observe(inst, ob, &L->lin[LLM_Q], w->h, T)) < 0) return rc;
    float * kd = kc ? kc + p0 * p->kvd : w->k;
    float * vd = vc ? vc + p0 * p->kvd : w->v;
    {
        struct llm_lin * ls[3] = { &L->lin[LLM_Q], &L->lin[LLM_K], &L->lin[LLM_V] };
        float *          ys[3] = { w->q, kd, vd };
        const int64_t    ld[3] = { p->qd, p->kvd, p->kvd };
        if ((rc = lin_apply_multi(inst, ls, ys, ld, 3, w->h, H, T, 0)) < 0) return rc;
    }
    const float * cs = NULL;
    if (n_tok == 1) {   // one position for every sequence: its angles once per decoded token
        if (p->rope_pos != p0) {
            rope_angles(p, p0, p->rope_cs);
            p->rope_pos = p0;
        }
        cs = p->rope_cs;
    }
    for (int64_t sq = 0; sq < n_seq; sq++) {
        struct rope_args rq = { p, w->q + sq * n_tok * p->qd, p->qd, p->d.n_heads, p0, cs };
        struct rope_args rk = { p, kd + sq * n_tok * p->kvd, p->kvd, p->d.n_kv_heads, p0, cs };
        caldera_parallel_for(ctx, n_tok, 4, rope_rows, &rq);
        caldera_parallel_for(ctx, n_tok, 4, rope_rows, &rk);
    }
    if ((rc = attention(inst, w->q, kc ? kc : kd, vc ? vc : vd, p->kvd, kc ? 0 : n_tok * p->kvd, n_seq, n_tok, p0, w->a, w->s,
                        p->wk_slots)) < 0) {
        return rc;
    }
    if ((rc = observe(inst, ob, &L->lin[LLM_O], w->a, T)) < 0) return rc;
    if ((rc = lin_apply(inst, &L->lin[LLM_O], w->a, p->qd, w->h, H, T)) < 0) return rc;
    for (int64_t i = 0; i < T * H; i++) w->x[i] += w->h[i];
    rmsnorm(ctx, w->x, w->h, L->ffn_norm, T, H, p->d.norm_eps);
    if ((rc = observe(inst, ob, &L->lin[LLM_GATE], w->h, T)) < 0) return rc;
    {
        struct llm_lin * ls[2] = { &L->lin[LLM_GATE], &L->lin[LLM_UP] };
        float *          ys[2] = { w->g, w->u };
        const int64_t    ld[2] = { F, F };
        if ((rc = lin_apply_multi(inst, ls, ys, ld, 2, w->h, H, T, 1)) < 0) return rc;
    }
    struct swiglu_args sa = { w->g, w->u, rc };
    // a decoded token: silu done in the gate task, the product serially; else 3 chunks of FFN 1536
    caldera_parallel_for(ctx, T * F, sa.silu_done ? T * F : T == 1 ? 512 : 4 * F, swiglu_elems, &sa);
    if ((rc = observe(inst, ob, &L->lin[LLM_DOWN], w->g, T)) < 0) return rc;
    if ((rc = lin_apply(inst, &L->lin[LLM_DOWN], w->g, F, w->h, H, T)) < 0) return rc;
    for (int64_t i = 0; i < T * H; i++) w->x[i] += w->h[i];
    return 0;
}

// The head in the storage the option asks for, built from the f32 head at the first use: f16 or
// q8 rows for decoding, and the same values again in f32 (headq) for the batched gemm, so that
// both paths compute with one set of weights.
static int head_prepare(struct caldera_inst * inst) {
    struct llm_priv * p = caldera_inst_priv(inst);
    const int64_t     V = p->d.vocab, H = p->d.hidden;
    if (p->head_mode == p->head_built) return 0;
    caldera_tensor_free(&p->head_d);   // a GPU copy of the previous values
    caldera_freep(&p->head16);
    caldera_freep(&p->head8);
    caldera_freep(&p->head8d);
    caldera_freep(&p->head_xq);
    caldera_freep(&p->head_xd);
    caldera_freep(&p->headq);
    p->head_built = LLM_H_F32;
    if (p->head_mode == LLM_H_F32) return 0;
    if (p->head_mode == LLM_H_Q8 && H % LLM_Q8_BLOCK != 0) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "option head = q8 needs hidden (%" PRId64 ") to be a multiple "
                             "of %d; allowed here: f32, f16", H, LLM_Q8_BLOCK);
    }
    p->headq = caldera_malloc((size_t) (V * H) * sizeof(float));
    if (p->head_mode == LLM_H_F16) {
        p->head16 = caldera_malloc((size_t) (V * H) * sizeof(uint16_t));
    } else {
        p->head8  = caldera_malloc((size_t) (V * H));
        p->head8d = caldera_malloc((size_t) (V * (H / LLM_Q8_BLOCK)) * sizeof(float));
        p->head_xq = caldera_malloc((size_t) (LLM_SMALL_N * H) * sizeof(int16_t));
        p->head_xd = caldera_malloc((size_t) (LLM_SMALL_N * (H / LLM_Q8_BLOCK)) * sizeof(float));
    }
    if (!p->headq || !(p->head16 || (p->head8 && p->head8d && p->head_xq && p->head_xd))) {
        caldera_freep(&p->head16);
        caldera_freep(&p->head8);
        caldera_freep(&p->head8d);
        caldera_freep(&p->head_xq);
        caldera_freep(&p->head_xd);
        caldera_freep(&p->headq);
        return caldera_error(inst, CALDERA_ERR_NOMEM, "cannot allocate the %s output head (%" PRId64 " x %" PRId64 ")",
                             p->head_mode == LLM_H_F16 ? "f16" : "q8", V, H);
    }
    if (p->head_mode == LLM_H_F16) {
        caldera_convert_from_f32(CALDERA_DTYPE_F16, p->head, V * H, p->head16);
        caldera_convert_to_f32(CALDERA_DTYPE_F16, p->head16, V * H, p->headq);
    } else {
        // symmetric int8 per block of 32: d = max|w|/127, q = round(w/d)
        for (int64_t b = 0; b < V * H / LLM_Q8_BLOCK; b++) {
            const float * w = p->head + b * LLM_Q8_BLOCK;
            float         amax = 0;
            for (int i = 0; i < LLM_Q8_BLOCK; i++) amax = fabsf(w[i]) > amax ? fabsf(w[i]) : amax;
            const float d = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
            p->head8d[b] = d;
            for (int i = 0; i < LLM_Q8_BLOCK; i++) {
                long q = lrintf(w[i] * id);
                q = q > 127 ? 127 : q < -127 ? -127 : q;
                p->head8[b * LLM_Q8_BLOCK + i] = (int8_t) q;
                p->headq[b * LLM_Q8_BLOCK + i] = (float) q * d;
            }
        }
    }
    p->head_built = p->head_mode;
    return 0;
}

// logits of rows [r0, r1) of the final normed states h (rows of hidden) into chunks
static int head_rows(struct caldera_inst * inst, struct llm_work * w, const float * h, int64_t r0, int64_t r1,
                     caldera_model_logits_fn fn, void * user, int64_t seq, int64_t pos_of_r0) {
    struct llm_priv *    p   = caldera_inst_priv(inst);
    struct caldera_ctx * ctx = caldera_inst_ctx(inst);
    int                  rc;
    if ((rc = head_prepare(inst)) < 0) return rc;
    const int            hm = p->head_built;
    struct caldera_tensor th = caldera_tensor_view_f32(hm == LLM_H_F32 ? p->head : p->headq, p->d.vocab, p->d.hidden);
    for (int64_t c0 = r0; c0 < r1; c0 += LLM_LOGIT_ROWS) {
        int64_t               nc = r1 - c0 < LLM_LOGIT_ROWS ? r1 - c0 : LLM_LOGIT_ROWS;
        struct caldera_tensor tx = caldera_tensor_view_f32((float *) h + c0 * p->d.hidden, nc, p->d.hidden);
        struct caldera_tensor tl = caldera_tensor_view_f32(w->lg, nc, p->d.vocab);
        if (nc <= LLM_SMALL_N) {
            struct mv_args a = { p->k, hm == LLM_H_F32 ? p->head : NULL, p->head16, tx.data, w->lg, p->d.hidden, nc,
                                 p->d.hidden, p->d.vocab, hm == LLM_H_Q8 ? p->head8 : NULL, p->head8d, p->head_xq,
                                 p->head_xd };
            for (int64_t t = 0; hm == LLM_H_Q8 && t < nc; t++) {
                q16_prepare(tx.data + t * p->d.hidden, p->d.hidden, p->head_xq + t * p->d.hidden,
                            p->head_xd + t * (p->d.hidden / LLM_Q8_BLOCK));
            }
            mv_rows_tasks(ctx, p->d.vocab, &a);
        } else if (caldera_ctx_device(ctx) == CALDERA_DEVICE_CUDA) {   // the head kept on the GPU
            if ((rc = dev_weight(inst, "the output head", th.data, NULL, p->d.vocab, p->d.hidden, NULL, &p->head_d)) < 0 ||
                (rc = caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_TRANS, 1.0f, &tx, &p->head_d, 0.0f, &tl)) < 0) {
                return rc;
            }
        } else if ((rc = caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_TRANS, 1.0f, &tx, &th, 0.0f, &tl)) < 0) {
            return rc;
        }
        if (fn && (rc = fn(user, seq, pos_of_r0 + (c0 - r0), &tl)) < 0) {
            return caldera_error(inst, rc, "the logits receiver stopped the forward pass");
        }
    }
    return 0;
}

static int llm_forward(struct caldera_inst * inst, const struct caldera_model_forward_args * args) {
    struct llm_priv * p = caldera_inst_priv(inst);
    struct llm_work   w = { 0 };
    int               rc;
    NEED_LOADED(p, inst);
    if (!args || args->struct_size < offsetof(struct caldera_model_forward_args, n_layers) || !args->tokens) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "forward: no arguments or no tokens");
    }
    int64_t n_tok = args->n_tok, n_seq = args->n_seq;
    int64_t n_layers = args->struct_size >= offsetof(struct caldera_model_forward_args, n_layers) + sizeof(int64_t)
                           ? args->n_layers : 0;
    if (n_seq < 1 || n_tok < 1 || n_tok > p->n_ctx) {
        return caldera_error(inst, CALDERA_ERR_RANGE, "forward: %" PRId64 " sequences of %" PRId64 " tokens; allowed: >= 1 "
                             "sequence of 1..%" PRId64 " tokens (the context length)", n_seq, n_tok, p->n_ctx);
    }
    if (n_layers < 0 || n_layers > p->d.n_layers) {
        return caldera_error(inst, CALDERA_ERR_RANGE, "forward: n_layers %" PRId64 "; allowed: 0..%" PRId64, n_layers, p->d.n_layers);
    }
    int64_t from = args->logits_from < 0 ? 0 : args->logits_from;
    int64_t to   = args->logits_to > n_tok ? n_tok : args->logits_to;
    int     want_logits = args->on_logits && from < to && (n_layers == 0 || n_layers == p->d.n_layers);
    if (n_layers == 0) n_layers = p->d.n_layers;
    int64_t spc = LLM_MAX_TOKENS / n_tok;   // sequences per chunk
    if (spc < 1) spc = 1;
    if (spc > n_seq) spc = n_seq;
    if (p->weights == LLM_W_F16 && !p->f16_scratch) {
        int64_t mx = 0;
        for (int64_t i = 0; i < p->n_lins; i++) mx = p->lins[i].rows * p->lins[i].cols > mx ? p->lins[i].rows * p->lins[i].cols : mx;
        if (!(p->f16_scratch = caldera_malloc((size_t) mx * sizeof(float)))) {
            return caldera_error(inst, CALDERA_ERR_NOMEM, "forward: cannot allocate the f16 conversion buffer");
        }
    }
    if ((rc = work_alloc(inst, &w, spc * n_tok, n_tok, 1, want_logits)) < 0) return rc;
    struct obs ob = { args->observe, args->observe_user };
    for (int64_t s0 = 0; s0 < n_seq; s0 += spc) {
        int64_t ns = n_seq - s0 < spc ? n_seq - s0 : spc;
        if ((rc = embed(inst, args->tokens + s0 * n_tok, ns * n_tok, w.x)) < 0) goto fail;
        for (int64_t l = 0; l < n_layers; l++) {
            if ((rc = block(inst, l, &w, ns, n_tok, 0, NULL, NULL, &ob)) < 0) goto fail;
        }
        if (!want_logits) continue;
        for (int64_t sq = 0; sq < ns; sq++) {
            // only the wanted rows are normed
            float * xs = w.x + (sq * n_tok + from) * p->d.hidden;
            float * hs = w.h + (sq * n_tok + from) * p->d.hidden;
            rmsnorm(caldera_inst_ctx(inst), xs, hs, p->out_norm, to - from, p->d.hidden, p->d.norm_eps);
            if ((rc = head_rows(inst, &w, w.h + sq * n_tok * p->d.hidden, from, to, args->on_logits, args->logits_user, s0 + sq,
                                from)) < 0) {
                goto fail;
            }
        }
    }
    rc = 0;
fail:
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Decoding with a KV cache

static int llm_kv_reset(struct caldera_inst * inst, int64_t n_ctx) {
    struct llm_priv * p = caldera_inst_priv(inst);
    NEED_LOADED(p, inst);
    if (n_ctx <= 0) n_ctx = p->kv_ctx > 0 ? p->kv_ctx : p->n_ctx;
    if (n_ctx > p->n_ctx) {
        return caldera_error(inst, CALDERA_ERR_RANGE, "kv_reset: %" PRId64 " positions; allowed: 1..%" PRId64 " (the context length)",
                             n_ctx, p->n_ctx);
    }
    if (n_ctx != p->kv_cap) {
        caldera_freep(&p->kc);
        caldera_freep(&p->vc);
        size_t bytes = (size_t) (p->d.n_layers * n_ctx * p->kvd) * sizeof(float);
        p->kc = caldera_malloc(bytes);
        p->vc = caldera_malloc(bytes);
        if (!p->kc || !p->vc) {
            caldera_freep(&p->kc);
            caldera_freep(&p->vc);
            p->kv_cap = 0;
            return caldera_error(inst, CALDERA_ERR_NOMEM, "kv_reset: cannot allocate a cache of %" PRId64 " positions (2 × %zu bytes)",
                                 n_ctx, bytes);
        }
        p->kv_cap = n_ctx;
    }
    p->kv_n = 0;
    return 0;
}

static int64_t llm_kv_pos(struct caldera_inst * inst) {
    struct llm_priv * p = caldera_inst_priv(inst);
    return p->loaded ? p->kv_n : 0;
}

static int llm_decode(struct caldera_inst * inst, const int32_t * tokens, int64_t n, float * logits) {
    struct llm_priv * p = caldera_inst_priv(inst);
    struct llm_work   w = { 0 };
    int               rc;
    NEED_LOADED(p, inst);
    if (!p->kc && (rc = llm_kv_reset(inst, 0)) < 0) return rc;
    if (n < 1 || !tokens) return caldera_error(inst, CALDERA_ERR_INVAL, "decode: no tokens given");
    if (p->kv_n + n > p->kv_cap) {
        return caldera_error(inst, CALDERA_ERR_RANGE, "decode: %" PRId64 " more tokens after %" PRId64 " would overflow the cache of %"
                             PRId64 " positions", n, p->kv_n, p->kv_cap);
    }
    if (p->weights == LLM_W_F16 && n > 4 && !p->f16_scratch) {
        int64_t mx = 0;
        for (int64_t i = 0; i < p->n_lins; i++) mx = p->lins[i].rows * p->lins[i].cols > mx ? p->lins[i].rows * p->lins[i].cols : mx;
        if (!(p->f16_scratch = caldera_malloc((size_t) mx * sizeof(float)))) {
            return caldera_error(inst, CALDERA_ERR_NOMEM, "decode: cannot allocate the f16 conversion buffer");
        }
    }
    int64_t chunk = n < LLM_MAX_TOKENS ? n : LLM_MAX_TOKENS;
    if ((rc = work_alloc(inst, &w, chunk, p->kv_n + n, 0, logits != NULL)) < 0) return rc;
    for (int64_t t0 = 0; t0 < n; t0 += chunk) {
        int64_t nt = n - t0 < chunk ? n - t0 : chunk;
        if ((rc = embed(inst, tokens + t0, nt, w.x)) < 0) goto fail;
        for (int64_t l = 0; l < p->d.n_layers; l++) {
            float * kc = p->kc + l * p->kv_cap * p->kvd, * vc = p->vc + l * p->kv_cap * p->kvd;
            if ((rc = block(inst, l, &w, 1, nt, p->kv_n, kc, vc, NULL)) < 0) goto fail;
        }
        p->kv_n += nt;
        if (logits && t0 + nt == n) {
            float * xl = w.x + (nt - 1) * p->d.hidden;
            rmsnorm(caldera_inst_ctx(inst), xl, w.h, p->out_norm, 1, p->d.hidden, p->d.norm_eps);
            if ((rc = head_rows(inst, &w, w.h, 0, 1, NULL, NULL, 0, 0)) < 0) goto fail;
            memcpy(logits, w.lg, (size_t) p->d.vocab * sizeof(float));
        }
    }
    rc = 0;
fail:
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

#define NEED_TOK(p, inst)                                                                          \
    do {                                                                                           \
        NEED_LOADED(p, inst);                                                                      \
        if (!(p)->tok) return caldera_error((inst), CALDERA_ERR_NOT_FOUND, "the model file has no tokenizer " \
                                            "(no tokenizer.ggml.* keys); give one (llama2c: option 'tokenizer')"); \
    } while (0)

static int llm_vocab(struct caldera_inst * inst, struct caldera_model_vocab * out) {
    struct llm_priv * p = caldera_inst_priv(inst);
    NEED_TOK(p, inst);
    *out = (struct caldera_model_vocab) { .n_vocab = llm_tokenizer_n_vocab(p->tok), .bos = llm_tokenizer_bos(p->tok),
                                          .eos = llm_tokenizer_eos(p->tok), .eot = llm_tokenizer_eot(p->tok),
                                          .add_bos = llm_tokenizer_add_bos(p->tok), .chat_template = p->chat_template };
    return 0;
}

static int llm_tokenize(struct caldera_inst * inst, const char * text, size_t len, int add_bos, int parse_special,
                        int32_t ** ids, int64_t * n) {
    struct llm_priv * p = caldera_inst_priv(inst);
    NEED_TOK(p, inst);
    return llm_tokenizer_encode(p->tok, text, len, add_bos, parse_special, ids, n);
}

static int llm_token_piece(struct caldera_inst * inst, int32_t id, const char ** piece, size_t * len, int * is_control) {
    struct llm_priv * p = caldera_inst_priv(inst);
    NEED_TOK(p, inst);
    if (is_control) *is_control = llm_tokenizer_is_control(p->tok, id);
    return llm_tokenizer_piece(p->tok, id, piece, len);
}

static void llm_uninit(struct caldera_inst * inst) { llm_release(inst); }

static const struct caldera_model_ops llm_ops = {
    .struct_size       = sizeof(struct caldera_model_ops),
    .load              = llm_load,
    .release           = llm_release,
    .desc              = llm_desc,
    .n_linears         = llm_n_linears,
    .n_groups          = llm_n_groups,
    .linear_info       = llm_linear_info,
    .linear_find       = llm_linear_find,
    .set_linear_weight = llm_set_linear_weight,
    .set_linear_impl   = llm_set_linear_impl,
    .forward           = llm_forward,
    .vocab             = llm_vocab,
    .tokenize          = llm_tokenize,
    .token_piece       = llm_token_piece,
    .kv_reset          = llm_kv_reset,
    .kv_pos            = llm_kv_pos,
    .decode            = llm_decode,
};

static const struct caldera_plugin llama_plugin = {
    .abi_version    = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size    = sizeof(struct caldera_plugin),
    .kind           = CALDERA_PLUGIN_KIND_MODEL,
    .name           = "llama",
    .description    = "LLaMA-family decoders (LLaMA, Mistral, SmolLM2, Qwen2 biases): forward, calibration hooks, decoding",
    .version        = CALDERA_VERSION_INT(0, 1, 0),
    .format_version = 1,
    .priv_size      = sizeof(struct llm_priv),
    .options        = llm_options,
    .uninit         = llm_uninit,
    .ops            = &llm_ops,
};

CALDERA_PLUGIN_DEFINE(llama_plugin)
