// SPDX-License-Identifier: MIT
// Tests of the llama2c reader: the real stories260K checkpoint against the raw file, a tiny
// hand-made checkpoint whose every value encodes its position (names, shapes, offsets, the
// q/k row permutation), RoPE equivalence of the permutation, the tokenizer, and each
// malformed-file path with its code and message.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define STORIES CALDERA_SHARED_DATA "/stories260K/stories260K.bin"
#define TOK512  CALDERA_SHARED_DATA "/stories260K/tok512.bin"
#define ROPE_TOL 1e-5   // |q·k| difference between Meta and HF RoPE (f32 rounding of sums of 8 terms)

static const struct caldera_format_ops * ops_of(struct caldera_ctx * ctx) {
    const struct caldera_plugin * pl = caldera_registry_find(ctx, "llama2c");
    ck_assert_ptr_nonnull(pl);
    return pl->ops;
}

static struct caldera_inst * new_inst(struct caldera_ctx * ctx) {
    struct caldera_inst * inst = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, "llama2c", "src", &inst), 0);
    ck_assert_int_eq(caldera_inst_start(inst), 0);
    return inst;
}

// Open path with a fresh instance; return the status (the instance in *out).
static int open_path(struct caldera_ctx * ctx, const char * path, const char * tokenizer, struct caldera_inst ** out) {
    struct caldera_inst * inst = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, "llama2c", "src", &inst), 0);
    if (tokenizer) ck_assert_int_eq(caldera_inst_set(inst, "tokenizer", tokenizer), 0);
    ck_assert_int_eq(caldera_inst_start(inst), 0);
    *out = inst;
    return ops_of(ctx)->open(inst, path);
}

static int find_hf(struct caldera_ctx * ctx, struct caldera_inst * inst, const char * hf) {
    const struct caldera_format_ops * ops = ops_of(ctx);
    for (int64_t i = 0; i < ops->n_tensors(inst); i++) {
        struct caldera_tensor_info ti;
        ck_assert_int_eq(ops->tensor_info(inst, i, &ti), 0);
        if (strcmp(ti.hf_name, hf) == 0) return (int) i;
    }
    return -1;
}

static float * read_raw(const char * path, size_t * n) {
    size_t len;
    char * b = tu_read_file(path, &len);
    ck_assert_ptr_nonnull(b);
    float * f = malloc(len);
    memcpy(f, b, len);
    caldera_free(b);
    *n = len / 4;
    return f;
}

// ---------------------------------------------------------------------------------------------
// The real checkpoint.

START_TEST(test_stories_desc_and_names) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * inst;
    const struct caldera_format_ops * ops = ops_of(ctx);
    ck_assert_int_eq(open_path(ctx, STORIES, NULL, &inst), 0);
    ck_assert_int_eq(ops->n_tensors(inst), 2 + 9 * 5);  // embed, 9 per layer, norm; tied: no lm_head
    struct caldera_model_desc d;
    ck_assert_int_eq(ops->model_desc(inst, &d), 0);
    ck_assert_str_eq(d.arch, "llama");
    ck_assert_int_eq(d.hidden, 64);
    ck_assert_int_eq(d.ffn, 172);
    ck_assert_int_eq(d.n_layers, 5);
    ck_assert_int_eq(d.n_heads, 8);
    ck_assert_int_eq(d.n_kv_heads, 4);
    ck_assert_int_eq(d.head_dim, 8);
    ck_assert_int_eq(d.vocab, 512);
    ck_assert_int_eq(d.ctx_len, 512);
    ck_assert_int_eq(d.tied_embeddings, 1);
    ck_assert(d.rope_theta == 10000.0);
    ck_assert(d.norm_eps == 1e-5);
    struct caldera_tensor_info ti;
    ck_assert_int_eq(ops->tensor_info(inst, 0, &ti), 0);
    ck_assert_str_eq(ti.hf_name, "model.embed_tokens.weight");
    ck_assert_str_eq(ti.name, "tok_embeddings.weight");
    ck_assert_int_eq(ti.ne[0], 512);
    ck_assert_int_eq(ti.ne[1], 64);
    int k = find_hf(ctx, inst, "model.layers.4.self_attn.k_proj.weight");
    ck_assert_int_ge(k, 0);
    ck_assert_int_eq(ops->tensor_info(inst, k, &ti), 0);
    ck_assert_int_eq(ti.ndim, 2);
    ck_assert_int_eq(ti.ne[0], 32);
    ck_assert_int_eq(ti.ne[1], 64);
    ck_assert_int_eq(ti.nbytes, 32 * 64 * 4);
    ck_assert_int_ge(find_hf(ctx, inst, "model.layers.0.mlp.down_proj.weight"), 0);
    ck_assert_int_ge(find_hf(ctx, inst, "model.norm.weight"), 0);
    ck_assert_int_eq(find_hf(ctx, inst, "lm_head.weight"), -1);
    // GGUF-style keys
    const struct caldera_meta * m = ops->meta(inst);
    int64_t v;
    ck_assert_int_eq(caldera_meta_get_int(m, "llama.block_count", &v), 0);
    ck_assert_int_eq(v, 5);
    ck_assert_int_eq(caldera_meta_get_int(m, "llama.attention.head_count_kv", &v), 0);
    ck_assert_int_eq(v, 4);
    ck_assert_int_eq(ops->tensor_info(inst, 47, &ti), CALDERA_ERR_RANGE);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "tensor index 47 out of range [0, 47)"));
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

// Every tensor against the raw file at offsets computed here from run.c's layout.
START_TEST(test_stories_values_vs_raw) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * inst;
    const struct caldera_format_ops * ops = ops_of(ctx);
    ck_assert_int_eq(open_path(ctx, STORIES, NULL, &inst), 0);
    size_t nraw;
    float * raw = read_raw(STORIES, &nraw);
    const float * w = raw + 7;  // after the 7 int32 header fields
    const int64_t dim = 64, hid = 172, L = 5, kvd = 32, V = 512, hd = 8;
    // start of each kind (in floats), in file order
    int64_t o_emb = 0, o_ra = o_emb + V * dim, o_wq = o_ra + L * dim, o_wk = o_wq + L * dim * dim;
    int64_t o_wv = o_wk + L * kvd * dim, o_wo = o_wv + L * kvd * dim, o_rf = o_wo + L * dim * dim;
    int64_t o_w1 = o_rf + L * dim, o_w2 = o_w1 + L * hid * dim, o_w3 = o_w2 + L * dim * hid;
    int64_t o_fin = o_w3 + L * hid * dim;
    ck_assert_int_eq((int64_t) nraw - 7, o_fin + dim + 512 * hd);
    struct { const char * hf; int64_t off, rows, cols, heads; } cases[] = {
        { "model.embed_tokens.weight", o_emb, V, dim, 0 },
        { "model.layers.2.input_layernorm.weight", o_ra + 2 * dim, dim, 1, 0 },
        { "model.layers.3.self_attn.q_proj.weight", o_wq + 3 * dim * dim, dim, dim, 8 },
        { "model.layers.1.self_attn.k_proj.weight", o_wk + 1 * kvd * dim, kvd, dim, 4 },
        { "model.layers.4.self_attn.v_proj.weight", o_wv + 4 * kvd * dim, kvd, dim, 0 },
        { "model.layers.0.self_attn.o_proj.weight", o_wo, dim, dim, 0 },
        { "model.layers.4.post_attention_layernorm.weight", o_rf + 4 * dim, dim, 1, 0 },
        { "model.layers.2.mlp.gate_proj.weight", o_w1 + 2 * hid * dim, hid, dim, 0 },
        { "model.layers.2.mlp.down_proj.weight", o_w2 + 2 * dim * hid, dim, hid, 0 },
        { "model.layers.4.mlp.up_proj.weight", o_w3 + 4 * hid * dim, hid, dim, 0 },
        { "model.norm.weight", o_fin, dim, 1, 0 },
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        int i = find_hf(ctx, inst, cases[c].hf);
        ck_assert_msg(i >= 0, "%s missing", cases[c].hf);
        struct caldera_tensor t;
        int owned = -1;
        ck_assert_int_eq(ops->read_tensor(inst, i, CALDERA_DTYPE_F32, &t, &owned), 0);
        ck_assert_int_eq(owned, cases[c].heads ? 1 : 0);  // views unless permuted
        const float * d = t.data;
        for (int64_t r = 0; r < cases[c].rows; r++) {
            int64_t src_r = r;
            if (cases[c].heads) {  // HF row r of head h is Meta row 2r' (+1 for the second half)
                int64_t h = r / hd, rr = r % hd;
                src_r = h * hd + (rr < hd / 2 ? 2 * rr : 2 * (rr - hd / 2) + 1);
            }
            for (int64_t j = 0; j < cases[c].cols; j++) {
                float e = w[cases[c].off + src_r * cases[c].cols + j];
                ck_assert_msg(memcmp(&d[r * cases[c].cols + j], &e, 4) == 0, "%s (%lld, %lld)", cases[c].hf,
                              (long long) r, (long long) j);
            }
        }
        if (owned) caldera_tensor_free(&t);
    }
    free(raw);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_stories_tokenizer) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * inst;
    const struct caldera_format_ops * ops = ops_of(ctx);
    ck_assert_int_eq(open_path(ctx, STORIES, NULL, &inst), 0);  // tok512.bin found beside it
    const struct caldera_meta * m = ops->meta(inst);
    const char * s;
    ck_assert_int_eq(caldera_meta_get_string(m, "tokenizer.ggml.model", &s), 0);
    ck_assert_str_eq(s, "llama");
    enum caldera_meta_type et;
    int64_t n;
    const void * data;
    ck_assert_int_eq(caldera_meta_get_array(m, "tokenizer.ggml.tokens", &et, &n, &data), 0);
    ck_assert_int_eq(et, CALDERA_META_STRING);
    ck_assert_int_eq(n, 512);
    const char * const * toks = data;
    ck_assert_str_eq(toks[0], "<unk>");
    ck_assert_str_eq(toks[1], "\n<s>\n");
    ck_assert_str_eq(toks[3], "<0x00>");
    ck_assert_str_eq(toks[260], "he");
    ck_assert_str_eq(toks[259], "\xe2\x96\x81t");     // " t" in tok512.bin: SentencePiece's U+2581 restored
    ck_assert_str_eq(toks[265], "\xe2\x96\x81the");
    ck_assert_str_eq(toks[2], "\n</s>\n");             // control tokens keep their text
    ck_assert_str_eq(toks[511], "\xe2\x80\x8a");
    ck_assert_int_eq(caldera_meta_get_array(m, "tokenizer.ggml.scores", &et, &n, &data), 0);
    ck_assert_int_eq(et, CALDERA_META_F32);
    ck_assert(((const float *) data)[260] == -1.0f);
    ck_assert(((const float *) data)[511] == -252.0f);
    ck_assert_int_eq(caldera_meta_get_array(m, "tokenizer.ggml.token_type", &et, &n, &data), 0);
    ck_assert_int_eq(((const int32_t *) data)[0], 2);
    ck_assert_int_eq(((const int32_t *) data)[2], 3);
    ck_assert_int_eq(((const int32_t *) data)[3], 6);
    ck_assert_int_eq(((const int32_t *) data)[258], 6);
    ck_assert_int_eq(((const int32_t *) data)[259], 1);
    int64_t v;
    ck_assert_int_eq(caldera_meta_get_int(m, "tokenizer.ggml.bos_token_id", &v), 0);
    ck_assert_int_eq(v, 1);
    ck_assert_int_eq(caldera_meta_get_int(m, "tokenizer.ggml.eos_token_id", &v), 0);
    ck_assert_int_eq(v, 2);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_stories_f16_and_probe) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * inst;
    const struct caldera_format_ops * ops = ops_of(ctx);
    ck_assert_int_eq(open_path(ctx, STORIES, NULL, &inst), 0);
    int i = find_hf(ctx, inst, "model.layers.1.self_attn.q_proj.weight");
    struct caldera_tensor t32, t16;
    int o32, o16;
    ck_assert_int_eq(ops->read_tensor(inst, i, CALDERA_DTYPE_F32, &t32, &o32), 0);
    ck_assert_int_eq(ops->read_tensor(inst, i, CALDERA_DTYPE_F16, &t16, &o16), 0);
    ck_assert_int_eq(o16, 1);
    ck_assert_int_eq(t16.dtype, CALDERA_DTYPE_F16);
    for (int64_t k = 0; k < 64 * 64; k++) {
        ck_assert_uint_eq(((uint16_t *) t16.data)[k], caldera_f32_to_f16(((float *) t32.data)[k]));
    }
    caldera_tensor_free(&t32);
    caldera_tensor_free(&t16);
    ck_assert_int_ge(ops->probe_path(STORIES), 50);
    ck_assert_int_eq(ops->probe_path(TOK512), 0);
    ck_assert_int_eq(ops->probe_path("/nonexistent/x.bin"), 0);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// A tiny hand-made checkpoint: every float encodes (kind, layer, row, col).

enum { T_DIM = 8, T_HID = 12, T_L = 2, T_H = 2, T_KV = 1, T_V = 10, T_SEQ = 4, T_HS = T_DIM / T_H };

static float enc(int kind, int layer, int row, int col) { return (float) (kind * 1000000 + layer * 10000 + row * 100 + col); }

static void put(FILE * f, int kind, int layers, int rows, int cols) {
    for (int l = 0; l < layers; l++) {
        for (int r = 0; r < rows; r++) {
            for (int c = 0; c < cols; c++) {
                float v = enc(kind, l, r, c);
                fwrite(&v, 4, 1, f);
            }
        }
    }
}

// Write the tiny checkpoint (shared: vocab > 0) and return its path.
static const char * write_tiny(const char * name, int shared) {
    const char * path = tu_path(tu_tmpdir(), name);
    FILE * f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    int32_t h[7] = { T_DIM, T_HID, T_L, T_H, T_KV, shared ? T_V : -T_V, T_SEQ };
    fwrite(h, 4, 7, f);
    put(f, 1, 1, T_V, T_DIM);               // token embedding
    put(f, 2, T_L, 1, T_DIM);               // rms_att: (layers, dim) as 1 row each
    put(f, 3, T_L, T_DIM, T_DIM);           // wq
    put(f, 4, T_L, T_KV * T_HS, T_DIM);     // wk
    put(f, 5, T_L, T_KV * T_HS, T_DIM);     // wv
    put(f, 6, T_L, T_DIM, T_DIM);           // wo
    put(f, 7, T_L, 1, T_DIM);               // rms_ffn
    put(f, 8, T_L, T_HID, T_DIM);           // w1
    put(f, 9, T_L, T_DIM, T_HID);           // w2
    put(f, 10, T_L, T_HID, T_DIM);          // w3
    put(f, 11, 1, 1, T_DIM);                // rms_final
    put(f, 12, 2, T_SEQ, T_HS / 2);         // freq_cis_real, freq_cis_imag
    if (!shared) put(f, 13, 1, T_V, T_DIM); // wcls
    fclose(f);
    return path;
}

START_TEST(test_tiny_layout_and_permutation) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    for (int shared = 0; shared <= 1; shared++) {
        struct caldera_inst * inst;
        const char * path = write_tiny(shared ? "tiny-shared.bin" : "tiny-unshared.bin", shared);
        ck_assert_int_eq(open_path(ctx, path, NULL, &inst), 0);
        ck_assert_int_eq(ops->n_tensors(inst), 2 + 9 * T_L + (shared ? 0 : 1));
        struct caldera_model_desc d;
        ck_assert_int_eq(ops->model_desc(inst, &d), 0);
        ck_assert_int_eq(d.tied_embeddings, shared);
        ck_assert_int_eq(d.vocab, T_V);
        ck_assert_int_eq(caldera_meta_find(ops->meta(inst), "tokenizer.ggml.tokens"), -1);  // none beside it
        // Hand-written HF row order of q (2 heads of 4): per head [0, 2, 1, 3].
        static const int q_rows[T_DIM] = { 0, 2, 1, 3, 4, 6, 5, 7 };
        static const int k_rows[T_KV * T_HS] = { 0, 2, 1, 3 };
        struct { const char * hf; int kind, layer, rows, cols; const int * perm; } cases[] = {
            { "model.embed_tokens.weight", 1, 0, T_V, T_DIM, NULL },
            { "model.layers.1.input_layernorm.weight", 2, 1, 1, T_DIM, NULL },
            { "model.layers.0.self_attn.q_proj.weight", 3, 0, T_DIM, T_DIM, q_rows },
            { "model.layers.1.self_attn.q_proj.weight", 3, 1, T_DIM, T_DIM, q_rows },
            { "model.layers.1.self_attn.k_proj.weight", 4, 1, T_KV * T_HS, T_DIM, k_rows },
            { "model.layers.0.self_attn.v_proj.weight", 5, 0, T_KV * T_HS, T_DIM, NULL },
            { "model.layers.1.self_attn.o_proj.weight", 6, 1, T_DIM, T_DIM, NULL },
            { "model.layers.0.post_attention_layernorm.weight", 7, 0, 1, T_DIM, NULL },
            { "model.layers.1.mlp.gate_proj.weight", 8, 1, T_HID, T_DIM, NULL },
            { "model.layers.1.mlp.down_proj.weight", 9, 1, T_DIM, T_HID, NULL },
            { "model.layers.0.mlp.up_proj.weight", 10, 0, T_HID, T_DIM, NULL },
            { "model.norm.weight", 11, 0, 1, T_DIM, NULL },
            { "lm_head.weight", 13, 0, T_V, T_DIM, NULL },
        };
        for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
            int i = find_hf(ctx, inst, cases[c].hf);
            if (shared && cases[c].kind == 13) {
                ck_assert_int_eq(i, -1);
                continue;
            }
            ck_assert_msg(i >= 0, "%s missing", cases[c].hf);
            struct caldera_tensor_info ti;
            ck_assert_int_eq(ops->tensor_info(inst, i, &ti), 0);
            ck_assert_int_eq(ti.ndim, cases[c].rows == 1 ? 1 : 2);
            struct caldera_tensor t;
            int owned;
            ck_assert_int_eq(ops->read_tensor(inst, i, CALDERA_DTYPE_F32, &t, &owned), 0);
            const float * v = t.data;
            for (int r = 0; r < cases[c].rows; r++) {
                for (int j = 0; j < cases[c].cols; j++) {
                    int sr = cases[c].perm ? cases[c].perm[r] : r;
                    ck_assert_msg(v[r * cases[c].cols + j] == enc(cases[c].kind, cases[c].layer, sr, j),
                                  "%s (%d, %d): %g", cases[c].hf, r, j, (double) v[r * cases[c].cols + j]);
                }
            }
            if (owned) caldera_tensor_free(&t);
        }
        caldera_inst_free(inst);
    }
    caldera_ctx_free(ctx);
}
END_TEST

// The point of the permutation: RoPE in llama2.c's interleaved form on Meta rows gives the
// same attention scores as HF's rotate_half form on the permuted rows.
static void rope_meta(float * x, int hd, int pos) {
    for (int i = 0; i < hd; i += 2) {
        double th = pos * pow(10000.0, -(double) i / hd);
        float a = x[i], b = x[i + 1];
        x[i]     = (float) (a * cos(th) - b * sin(th));
        x[i + 1] = (float) (a * sin(th) + b * cos(th));
    }
}

static void rope_hf(float * x, int hd, int pos) {
    for (int i = 0; i < hd / 2; i++) {
        double th = pos * pow(10000.0, -(double) (2 * i) / hd);
        float a = x[i], b = x[i + hd / 2];
        x[i]          = (float) (a * cos(th) - b * sin(th));
        x[i + hd / 2] = (float) (b * cos(th) + a * sin(th));
    }
}

START_TEST(test_rope_equivalence_stories) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    struct caldera_inst * inst;
    ck_assert_int_eq(open_path(ctx, STORIES, NULL, &inst), 0);
    size_t nraw;
    float * raw = read_raw(STORIES, &nraw);
    const int dim = 64, hd = 8, V = 512, L = 5;
    const float * wq_meta = raw + 7 + V * dim + L * dim;  // layer 0 wq, Meta rows
    const float * wk_meta = wq_meta + L * dim * dim;      // layer 0 wk
    struct caldera_tensor q, k;
    int oq, ok;
    ck_assert_int_eq(ops->read_tensor(inst, find_hf(ctx, inst, "model.layers.0.self_attn.q_proj.weight"),
                                      CALDERA_DTYPE_F32, &q, &oq), 0);
    ck_assert_int_eq(ops->read_tensor(inst, find_hf(ctx, inst, "model.layers.0.self_attn.k_proj.weight"),
                                      CALDERA_DTYPE_F32, &k, &ok), 0);
    float x[64];
    tu_fill_normal(x, dim, 1.0f, 7);
    double max_diff = 0;
    for (int h = 0; h < 8; h++) {
        int kh = h / 2;  // GQA: 2 query heads per kv head
        float qm[8], km[8], qh[8], kh8[8];
        for (int r = 0; r < hd; r++) {
            double a = 0, b = 0, c = 0, e = 0;
            for (int j = 0; j < dim; j++) {
                a += wq_meta[(h * hd + r) * dim + j] * x[j];
                b += wk_meta[(kh * hd + r) * dim + j] * x[j];
                c += ((float *) q.data)[(h * hd + r) * dim + j] * x[j];
                e += ((float *) k.data)[(kh * hd + r) * dim + j] * x[j];
            }
            qm[r] = (float) a; km[r] = (float) b; qh[r] = (float) c; kh8[r] = (float) e;
        }
        rope_meta(qm, hd, 5);
        rope_meta(km, hd, 2);
        rope_hf(qh, hd, 5);
        rope_hf(kh8, hd, 2);
        double sm = 0, sh = 0;
        for (int r = 0; r < hd; r++) {
            sm += qm[r] * km[r];
            sh += qh[r] * kh8[r];
        }
        max_diff = fmax(max_diff, fabs(sm - sh));
    }
    ck_assert_msg(max_diff < ROPE_TOL, "RoPE scores differ by %g", max_diff);
    caldera_tensor_free(&q);
    caldera_tensor_free(&k);
    free(raw);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// Malformed inputs

static const char * write_bytes(const char * name, const void * data, size_t n) {
    const char * path = tu_path(tu_tmpdir(), name);
    FILE * f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    if (n) ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    fclose(f);
    return path;
}

// A copy of the stories checkpoint with header field `field` set to `value` and `delta` bytes
// added (> 0: zeros appended) or removed (< 0) at the end.
static const char * stories_variant(const char * name, int field, int32_t value, long delta) {
    size_t len;
    char * b = tu_read_file(STORIES, &len);
    ck_assert_ptr_nonnull(b);
    char * c = calloc(1, len + (delta > 0 ? (size_t) delta : 0));
    memcpy(c, b, len);
    if (field >= 0) memcpy(c + 4 * field, &value, 4);
    const char * p = write_bytes(name, c, (size_t) ((long) len + delta));
    free(c);
    caldera_free(b);
    return p;
}

static void expect_fail(const char * path, const char * tokenizer, int code, const char * msg) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * inst;
    int rc = open_path(ctx, path, tokenizer, &inst);
    ck_assert_msg(rc == code, "%s: rc %d (%s), want %d; msg: %s", path, rc, caldera_status_str(rc), code,
                  caldera_ctx_errmsg(ctx));
    ck_assert_msg(strstr(caldera_ctx_errmsg(ctx), msg) != NULL, "message '%s' lacks '%s'", caldera_ctx_errmsg(ctx), msg);
    ck_assert_int_eq(ops_of(ctx)->n_tensors(inst), 0);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}

START_TEST(test_bad_missing) {
    expect_fail("/nonexistent/stories.bin", NULL, CALDERA_ERR_NOT_FOUND, "/nonexistent/stories.bin: cannot open");
}
END_TEST

START_TEST(test_bad_too_small) {
    int32_t h[3] = { 64, 172, 5 };
    expect_fail(write_bytes("small.bin", h, sizeof(h)), NULL, CALDERA_ERR_FORMAT,
                "file of 12 bytes is too small for the 28-byte llama2.c header");
}
END_TEST

START_TEST(test_bad_truncated) {
    expect_fail(stories_variant("trunc.bin", -1, 0, -100), NULL, CALDERA_ERR_FORMAT,
                "needs 1056540 bytes but the file has 1056440");
}
END_TEST

START_TEST(test_bad_trailing) {
    expect_fail(stories_variant("trail.bin", -1, 0, 4), NULL, CALDERA_ERR_FORMAT,
                "needs 1056540 bytes but the file has 1056544");
}
END_TEST

START_TEST(test_bad_negative_dim) {
    expect_fail(stories_variant("negdim.bin", 0, -64, 0), NULL, CALDERA_ERR_FORMAT, "header field dim = -64; must be > 0");
}
END_TEST

START_TEST(test_bad_zero_layers) {
    expect_fail(stories_variant("zerol.bin", 2, 0, 0), NULL, CALDERA_ERR_FORMAT, "header field n_layers = 0; must be > 0");
}
END_TEST

START_TEST(test_bad_zero_vocab) {
    expect_fail(stories_variant("zerov.bin", 5, 0, 0), NULL, CALDERA_ERR_FORMAT, "vocab_size = 0; must be nonzero");
}
END_TEST

START_TEST(test_bad_kv_heads) {
    expect_fail(stories_variant("kv.bin", 4, 3, 0), NULL, CALDERA_ERR_FORMAT, "n_kv_heads 3 must divide n_heads 8");
}
END_TEST

START_TEST(test_bad_head_size) {
    expect_fail(stories_variant("hs.bin", 3, 7, 0), NULL, CALDERA_ERR_FORMAT, "dim 64 / n_heads 7 is not an even integer head size");
}
END_TEST

START_TEST(test_bad_huge_sizes) {
    // dim = 2^30 and 2^30 layers: the products overflow 64 bits and must not wrap into a match.
    const char * p = stories_variant("huge.bin", 0, 1 << 30, 0);
    FILE * f = fopen(p, "r+b");
    int32_t big = 1 << 30, heads = 1 << 20;
    fseek(f, 8, SEEK_SET);
    fwrite(&big, 4, 1, f);    // n_layers
    fwrite(&heads, 4, 1, f);  // n_heads
    fwrite(&heads, 4, 1, f);  // n_kv_heads
    fclose(f);
    expect_fail(p, NULL, CALDERA_ERR_FORMAT, "header sizes overflow 64 bits");
}
END_TEST

START_TEST(test_bad_unshared_mismatch) {
    // vocab_size < 0 asks for a classifier that the file does not have
    expect_fail(stories_variant("unshared.bin", 5, -512, 0), NULL, CALDERA_ERR_FORMAT,
                "needs 1187612 bytes but the file has 1056540");
}
END_TEST

static const char * tok_variant(const char * name, size_t cut, int patch_off, int32_t patch) {
    size_t len;
    char * b = tu_read_file(TOK512, &len);
    ck_assert_ptr_nonnull(b);
    if (patch_off >= 0) memcpy(b + patch_off, &patch, 4);
    const char * p = write_bytes(name, b, len - cut);
    caldera_free(b);
    return p;
}

START_TEST(test_bad_tokenizer) {
    expect_fail(STORIES, "/nonexistent/tok.bin", CALDERA_ERR_NOT_FOUND, "/nonexistent/tok.bin: cannot open tokenizer");
    expect_fail(STORIES, tok_variant("tok-trunc.bin", 10, -1, 0), CALDERA_ERR_FORMAT, "truncated");
    expect_fail(STORIES, tok_variant("tok-empty.bin", 6227 - 2, -1, 0), CALDERA_ERR_FORMAT, "tokenizer of 2 bytes is truncated");
    expect_fail(STORIES, tok_variant("tok-maxlen.bin", 0, 0, -1), CALDERA_ERR_FORMAT, "max_token_length -1; must be > 0");
    // issue 11: fewer than 8 bytes per token of the checkpoint's vocabulary fails before any allocation for it
    expect_fail(STORIES, tok_variant("tok-short.bin", 6227 - 100, -1, 0), CALDERA_ERR_FORMAT,
                "tokenizer of 100 bytes cannot hold the 512 tokens of the checkpoint (8 bytes at least each)");
    // token 0: score at 4, length at 8 ("<unk>" = 5): claim 9 > max_token_length 7
    expect_fail(STORIES, tok_variant("tok-len.bin", 0, 8, 9), CALDERA_ERR_FORMAT, "token 0 has length 9; allowed 0..7");
    expect_fail(STORIES, tok_variant("tok-neg.bin", 0, 8, -3), CALDERA_ERR_FORMAT, "token 0 has length -3");
    // extra bytes: a vocabulary of a different size
    size_t len;
    char * b = tu_read_file(TOK512, &len);
    char * c = calloc(1, len + 8);
    memcpy(c, b, len);
    expect_fail(STORIES, write_bytes("tok-extra.bin", c, len + 8), CALDERA_ERR_FORMAT,
                "8 bytes after the last of 512 tokens");
    free(c);
    caldera_free(b);
}
END_TEST

START_TEST(test_explicit_tokenizer_and_no_path) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * inst;
    // The tiny model has 10 tokens: tok512.bin does not fit it.
    const char * tiny = write_tiny("tiny-tok.bin", 1);
    ck_assert_int_eq(open_path(ctx, tiny, TOK512, &inst), CALDERA_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "after the last of 10 tokens"));
    caldera_inst_free(inst);
    inst = new_inst(ctx);
    ck_assert_int_eq(ops_of(ctx)->open(inst, NULL), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "no path given; set option 'path'"));
    ck_assert_int_eq(ops_of(ctx)->model_desc(inst, &(struct caldera_model_desc){ 0 }), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "no checkpoint is open"));
    ck_assert_int_eq(caldera_inst_set(inst, "path", STORIES), 0);
    caldera_inst_free(inst);
    // the path option is used when open() gets none
    ck_assert_int_eq(caldera_inst_create(ctx, "llama2c", "src", &inst), 0);
    ck_assert_int_eq(caldera_inst_set(inst, "path", STORIES), 0);
    ck_assert_int_eq(caldera_inst_start(inst), 0);
    ck_assert_int_eq(ops_of(ctx)->open(inst, NULL), 0);
    ck_assert_int_eq(ops_of(ctx)->n_tensors(inst), 47);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

// Every allocation of open() fails once in turn: CALDERA_ERR_NOMEM, nothing left open, no leak.
START_TEST(test_oom_sweep) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    struct caldera_inst * inst = new_inst(ctx);
    int n, rc = -1;
    for (n = 1; n < 10000 && rc != 0; n++) {
        caldera_alloc_fail_at(n);
        rc = ops->open(inst, STORIES);
        caldera_alloc_fail_at(0);
        ck_assert_msg(rc == 0 || rc == CALDERA_ERR_NOMEM, "allocation %d: rc %d (%s)", n, rc, caldera_ctx_errmsg(ctx));
        if (rc) ck_assert_int_eq(ops->n_tensors(inst), 0);
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_int_gt(n, 3);
    // and for a permuted read (a converted copy)
    int q = find_hf(ctx, inst, "model.layers.0.self_attn.q_proj.weight");
    struct caldera_tensor t;
    int owned;
    rc = -1;
    for (n = 1; n < 100 && rc != 0; n++) {
        caldera_alloc_fail_at(n);
        rc = ops->read_tensor(inst, q, CALDERA_DTYPE_F16, &t, &owned);
        caldera_alloc_fail_at(0);
        ck_assert_msg(rc == 0 || rc == CALDERA_ERR_NOMEM, "read, allocation %d: rc %d", n, rc);
    }
    ck_assert_int_eq(rc, 0);
    caldera_tensor_free(&t);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

// Never a crash: 300 checkpoints with random header fields (small, negative, huge, or off by
// one from the real value), some truncated, and 300 corrupted tokenizers. Each open fails with
// CALDERA_ERR_FORMAT or succeeds and then every tensor reads (run under ASan).
START_TEST(test_corruption_never_crashes) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    size_t len, tlen;
    char * orig = tu_read_file(STORIES, &len);
    char * tok = tu_read_file(TOK512, &tlen);
    ck_assert_ptr_nonnull(orig);
    ck_assert_ptr_nonnull(tok);
    char * buf = malloc(len > tlen ? len : tlen);
    struct caldera_rng rng;
    caldera_rng_seed(&rng, 99);
    char path[1024], tpath[1024];
    snprintf(path, sizeof(path), "%s", tu_path(tu_tmpdir(), "fuzz.bin"));
    snprintf(tpath, sizeof(tpath), "%s", tu_path(tu_tmpdir(), "fuzz-tok.bin"));
    int opened = 0;
    for (int it = 0; it < 600; it++) {
        int tokfuzz = it >= 300;
        const char * p = tokfuzz ? tpath : path;
        size_t n = tokfuzz ? tlen : len;
        memcpy(buf, tokfuzz ? tok : orig, n);
        for (int f = 0; f < 1 + (int) (caldera_rng_u64(&rng) % 3); f++) {
            uint64_t r = caldera_rng_u64(&rng);
            int32_t v, old;
            size_t at = tokfuzz ? 4 * (size_t) (r % 64) : 4 * (size_t) (r % 7);  // tokenizer: its first records
            memcpy(&old, buf + at, 4);
            switch ((r >> 8) % 4) {
            case 0: v = (int32_t) (r >> 16); break;                 // anything
            case 1: v = -(int32_t) ((r >> 16) % 1000); break;        // zero or negative
            case 2: v = old + ((r >> 16) % 2 ? 1 : -1); break;       // off by one
            default: v = (int32_t) ((r >> 16) % 4096); break;        // small
            }
            memcpy(buf + at, &v, 4);
        }
        if (caldera_rng_u64(&rng) % 4 == 0) n = (size_t) (caldera_rng_u64(&rng) % n);
        FILE * fp = fopen(p, "wb");
        fwrite(buf, 1, n, fp);
        fclose(fp);
        struct caldera_inst * inst;
        int rc = open_path(ctx, tokfuzz ? STORIES : path, tokfuzz ? tpath : NULL, &inst);
        ck_assert_msg(rc == 0 || rc == CALDERA_ERR_FORMAT, "iteration %d: rc %d (%s)", it, rc, caldera_ctx_errmsg(ctx));
        for (int64_t i = 0; rc == 0 && i < ops->n_tensors(inst); i++) {
            struct caldera_tensor t;
            int owned;
            ck_assert_int_eq(ops->read_tensor(inst, i, CALDERA_DTYPE_F32, &t, &owned), 0);
            volatile float sink = 0;
            for (int64_t k = 0; k < caldera_tensor_nelements(&t); k++) sink += ((float *) t.data)[k];
            (void) sink;
            if (owned) caldera_tensor_free(&t);
        }
        opened += rc == 0;
        caldera_inst_free(inst);
    }
    ck_assert_int_lt(opened, 600);
    free(buf);
    caldera_free(tok);
    caldera_free(orig);
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * llama2c_suite(void) {
    Suite * s = suite_create("llama2c");
    TCase * tc = tcase_create("stories260K");
    tcase_add_test(tc, test_stories_desc_and_names);
    tcase_add_test(tc, test_stories_values_vs_raw);
    tcase_add_test(tc, test_stories_tokenizer);
    tcase_add_test(tc, test_stories_f16_and_probe);
    tcase_add_test(tc, test_rope_equivalence_stories);
    suite_add_tcase(s, tc);
    tc = tcase_create("tiny");
    tcase_add_test(tc, test_tiny_layout_and_permutation);
    tcase_add_test(tc, test_explicit_tokenizer_and_no_path);
    tcase_add_test(tc, test_oom_sweep);
    suite_add_tcase(s, tc);
    tc = tcase_create("malformed");
    tcase_add_test(tc, test_bad_missing);
    tcase_add_test(tc, test_bad_too_small);
    tcase_add_test(tc, test_bad_truncated);
    tcase_add_test(tc, test_bad_trailing);
    tcase_add_test(tc, test_bad_negative_dim);
    tcase_add_test(tc, test_bad_zero_layers);
    tcase_add_test(tc, test_bad_zero_vocab);
    tcase_add_test(tc, test_bad_kv_heads);
    tcase_add_test(tc, test_bad_head_size);
    tcase_add_test(tc, test_bad_huge_sizes);
    tcase_add_test(tc, test_bad_unshared_mismatch);
    tcase_add_test(tc, test_bad_tokenizer);
    tcase_add_test(tc, test_corruption_never_crashes);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(llama2c_suite)
