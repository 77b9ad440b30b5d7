// SPDX-License-Identifier: MIT
// test-gguf-model (label "model"): the real SmolLM2-135M-Instruct Q4_1 GGUF through the gguf
// plugin: model description, the 30 layers with the shape and type of every tensor, tokenizer
// keys, and dequantized values of chosen Q8_0 / Q4_1 / F32 tensors (HF layout) against the
// Python gguf package (fixtures/smollm2-expected.txt, made by fixtures/smollm2_expected.py).
// Skips (exit 77) when the file is in neither $CALDERA_SMOLLM2_GGUF nor $CALDERA_CACHE_DIR.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#define SMOL_FILE "SmolLM2-135M-Instruct.Q4_1.gguf"
// sampled values: |C - Python| / max(1, |Python|) (both do the same float32 operations)
#define SMOL_VALUE_TOL 1e-6
// sum and sum of squares (double accumulation in another order): relative to sum of squares
#define SMOL_SUM_TOL 1e-9

static char smol_path[4096];

static int find_model(void) {
    const char * env = getenv("CALDERA_SMOLLM2_GGUF");
    if (env && access(env, R_OK) == 0) {
        snprintf(smol_path, sizeof(smol_path), "%s", env);
        return 1;
    }
    const char * cache = getenv("CALDERA_CACHE_DIR");
    char         home[2048];
    if (!cache || !cache[0]) {
        snprintf(home, sizeof(home), "%s/.cache/caldera", getenv("HOME") ? getenv("HOME") : "");
        cache = home;
    }
    static const char * sub[] = { "smollm2/", "" };
    for (int i = 0; i < 2; i++) {
        snprintf(smol_path, sizeof(smol_path), "%s/%s%s", cache, sub[i], SMOL_FILE);
        if (access(smol_path, R_OK) == 0) return 1;
    }
    return 0;
}

struct h {
    struct caldera_ctx *              ctx;
    struct caldera_inst *             inst;
    const struct caldera_format_ops * ops;
};

static struct h open_model(void) {
    struct h h = { tu_ctx(), NULL, NULL };
    ck_assert_int_eq(caldera_inst_create(h.ctx, "gguf", "smol", &h.inst), 0);
    ck_assert_int_eq(caldera_inst_start(h.inst), 0);
    h.ops = caldera_inst_plugin(h.inst)->ops;
    ck_assert_msg(h.ops->open(h.inst, smol_path) == 0, "%s", caldera_ctx_errmsg(h.ctx));
    return h;
}

static void close_model(struct h * h) {
    caldera_inst_free(h->inst);
    caldera_ctx_free(h->ctx);
}

static int64_t find_tensor(struct h * h, const char * name) {
    struct caldera_tensor_info ti;
    for (int64_t i = 0; i < h->ops->n_tensors(h->inst); i++) {
        ck_assert_int_eq(h->ops->tensor_info(h->inst, i, &ti), 0);
        if (strcmp(ti.name, name) == 0) return i;
    }
    return -1;
}

START_TEST(test_smol_desc_and_meta) {
    struct h                  h = open_model();
    struct caldera_model_desc md;
    ck_assert_int_eq(h.ops->model_desc(h.inst, &md), 0);
    ck_assert_str_eq(md.arch, "llama");
    ck_assert_int_eq(md.n_layers, 30);
    ck_assert_int_eq(md.hidden, 576);
    ck_assert_int_eq(md.ffn, 1536);
    ck_assert_int_eq(md.n_heads, 9);
    ck_assert_int_eq(md.n_kv_heads, 3);
    ck_assert_int_eq(md.head_dim, 64);
    ck_assert_int_eq(md.vocab, 49152);
    ck_assert_int_eq(md.ctx_len, 8192);
    ck_assert(md.rope_theta == 100000.0);
    ck_assert(fabs(md.norm_eps - 1e-5) < 1e-11);
    ck_assert_str_eq(md.rope_scaling, "");
    ck_assert_int_eq(md.tied_embeddings, 1);

    const struct caldera_meta * m = h.ops->meta(h.inst);
    enum caldera_meta_type      et;
    int64_t                     n, v;
    const void *                d;
    const char *                s;
    ck_assert_int_eq(caldera_meta_get_array(m, "tokenizer.ggml.tokens", &et, &n, &d), 0);
    ck_assert_int_eq(et, CALDERA_META_STRING);
    ck_assert_int_eq(n, 49152);
    ck_assert_str_eq(((char * const *) d)[0], "<|endoftext|>");
    ck_assert_str_eq(((char * const *) d)[1], "<|im_start|>");
    ck_assert_str_eq(((char * const *) d)[49151], "ectable");
    ck_assert_int_eq(caldera_meta_get_array(m, "tokenizer.ggml.merges", &et, &n, &d), 0);
    ck_assert_int_eq(n, 48900);
    ck_assert_str_eq(((char * const *) d)[0], "\xc4\xa0 t");
    ck_assert_int_eq(caldera_meta_get_array(m, "tokenizer.ggml.token_type", &et, &n, &d), 0);
    ck_assert_int_eq(et, CALDERA_META_I32);
    ck_assert_int_eq(n, 49152);
    ck_assert_int_eq(caldera_meta_get_int(m, "tokenizer.ggml.bos_token_id", &v), 0);
    ck_assert_int_eq(v, 1);
    ck_assert_int_eq(caldera_meta_get_string(m, "tokenizer.ggml.model", &s), 0);
    ck_assert_str_eq(s, "gpt2");
    close_model(&h);
}
END_TEST

START_TEST(test_smol_tensors) {
    struct h h = open_model();
    ck_assert_int_eq(h.ops->n_tensors(h.inst), 1 + 30 * 9 + 1);
    static const struct { const char * gguf, * hf; int64_t r, c; enum caldera_dtype dt; } per_layer[] = {
        { "attn_q",      "self_attn.q_proj",         576,  576,  CALDERA_DTYPE_Q4_1 },
        { "attn_k",      "self_attn.k_proj",         192,  576,  CALDERA_DTYPE_Q4_1 },
        { "attn_v",      "self_attn.v_proj",         192,  576,  CALDERA_DTYPE_Q4_1 },
        { "attn_output", "self_attn.o_proj",         576,  576,  CALDERA_DTYPE_Q4_1 },
        { "ffn_gate",    "mlp.gate_proj",            1536, 576,  CALDERA_DTYPE_Q4_1 },
        { "ffn_up",      "mlp.up_proj",              1536, 576,  CALDERA_DTYPE_Q4_1 },
        { "ffn_down",    "mlp.down_proj",            576,  1536, CALDERA_DTYPE_Q4_1 },
        { "attn_norm",   "input_layernorm",          576,  0,    CALDERA_DTYPE_F32 },
        { "ffn_norm",    "post_attention_layernorm", 576,  0,    CALDERA_DTYPE_F32 },
    };
    struct caldera_tensor_info ti;
    for (int l = 0; l < 30; l++) {
        for (int k = 0; k < 9; k++) {
            char name[96], hf[128];
            snprintf(name, sizeof(name), "blk.%d.%s.weight", l, per_layer[k].gguf);
            snprintf(hf, sizeof(hf), "model.layers.%d.%s.weight", l, per_layer[k].hf);
            int64_t i = find_tensor(&h, name);
            ck_assert_msg(i >= 0, "%s missing", name);
            ck_assert_int_eq(h.ops->tensor_info(h.inst, i, &ti), 0);
            ck_assert_str_eq(ti.hf_name, hf);
            ck_assert_msg(ti.dtype == per_layer[k].dt, "%s: %s", name, caldera_dtype_name(ti.dtype));
            ck_assert_int_eq(ti.ndim, per_layer[k].c ? 2 : 1);
            ck_assert_int_eq(ti.ne[0], per_layer[k].r);
            if (per_layer[k].c) ck_assert_int_eq(ti.ne[1], per_layer[k].c);
        }
    }
    ck_assert_int_eq(h.ops->tensor_info(h.inst, find_tensor(&h, "token_embd.weight"), &ti), 0);
    ck_assert_int_eq(ti.dtype, CALDERA_DTYPE_Q8_0);
    ck_assert_int_eq(ti.ne[0], 49152);
    ck_assert_int_eq(ti.ne[1], 576);
    ck_assert_uint_eq(ti.nbytes, (size_t) 49152 * 576 / 32 * 34);
    ck_assert_str_eq(ti.hf_name, "model.embed_tokens.weight");
    ck_assert_int_eq(h.ops->tensor_info(h.inst, find_tensor(&h, "output_norm.weight"), &ti), 0);
    ck_assert_str_eq(ti.hf_name, "model.norm.weight");
    ck_assert_int_eq(find_tensor(&h, "output.weight"), -1);
    close_model(&h);
}
END_TEST

START_TEST(test_smol_values_vs_python) {
    struct h h = open_model();
    FILE *   f = fopen(CALDERA_TEST_SRC_DIR "/fixtures/smollm2-expected.txt", "r");
    ck_assert_ptr_nonnull(f);
    static char line[8192];
    int         checked = 0, types = 0;
    while (fgets(line, sizeof(line), f)) {
        if (line[0] == '#') continue;
        char   name[96], type[16], shape[64];
        long   count;
        double sum, sumsq, amax;
        ck_assert_int_eq(sscanf(line, "%95s %15s %63s %ld %lf %lf %lf", name, type, shape, &count, &sum, &sumsq, &amax), 7);
        int64_t i = find_tensor(&h, name);
        ck_assert_msg(i >= 0, "%s", name);
        struct caldera_tensor t;
        int                   owned;
        ck_assert_int_eq(h.ops->read_tensor(h.inst, i, CALDERA_DTYPE_F32, &t, &owned), 0);
        int64_t       n = caldera_tensor_nelements(&t);
        const float * x = t.data;
        ck_assert_int_eq(n, count);
        double s = 0, s2 = 0, mx = 0;
        for (int64_t k = 0; k < n; k++) {
            s += x[k];
            s2 += (double) x[k] * x[k];
            mx = fmax(mx, fabs(x[k]));
        }
        ck_assert_msg(fabs(s - sum) <= SMOL_SUM_TOL * sumsq + 1e-12, "%s: sum %.17g vs %.17g", name, s, sum);
        ck_assert_msg(fabs(s2 - sumsq) <= SMOL_SUM_TOL * sumsq, "%s: sumsq %.17g vs %.17g", name, s2, sumsq);
        ck_assert_msg(fabs(mx - amax) <= SMOL_VALUE_TOL * fmax(1, amax), "%s: max %.9g vs %.9g", name, mx, amax);
        ck_assert_ptr_nonnull(fgets(line, sizeof(line), f));
        char * p = line;
        for (int k = 0; k < 24; k++) {
            long   idx;
            double val;
            int    used;
            ck_assert_int_eq(sscanf(p, "%ld %lf%n", &idx, &val, &used), 2);
            p += used;
            ck_assert(idx >= 0 && idx < n);
            ck_assert_msg(fabs(x[idx] - val) <= SMOL_VALUE_TOL * fmax(1, fabs(val)), "%s[%ld] = %.9g, python %.9g", name,
                          idx, x[idx], val);
        }
        if (owned) caldera_tensor_free(&t);
        types |= strcmp(type, "Q8_0") == 0 ? 1 : strcmp(type, "Q4_1") == 0 ? 2 : strcmp(type, "F32") == 0 ? 4 : 0;
        checked++;
    }
    fclose(f);
    ck_assert_int_eq(checked, 12);
    ck_assert_int_eq(types, 7);
    close_model(&h);
}
END_TEST

// Export through the writer as a pipeline does (HF names, f32, the source's metadata): the new
// file stores layer 0 under GGUF names in llama.cpp's row order, i.e. its stored rows equal the
// source's stored rows dequantized, and the tokenizer survives.
START_TEST(test_smol_export_layer0) {
    struct h     src = open_model();
    const char * out = tu_path(tu_tmpdir(), "smol-layer0.gguf");
    struct caldera_inst * w;
    ck_assert_int_eq(caldera_inst_create(src.ctx, "gguf", "dst", &w), 0);
    ck_assert_int_eq(caldera_inst_start(w), 0);
    ck_assert_int_eq(src.ops->create(w, out, src.ops->meta(src.inst)), 0);
    int64_t written = 0;
    for (int64_t i = 0; i < src.ops->n_tensors(src.inst); i++) {
        struct caldera_tensor_info ti;
        ck_assert_int_eq(src.ops->tensor_info(src.inst, i, &ti), 0);
        if (strncmp(ti.name, "blk.0.", 6) != 0) continue;
        struct caldera_tensor t;
        int                   owned;
        ck_assert_int_eq(src.ops->read_tensor(src.inst, i, CALDERA_DTYPE_F32, &t, &owned), 0);
        ck_assert_int_eq(src.ops->write_tensor(w, ti.hf_name, &t), 0);
        if (owned) caldera_tensor_free(&t);
        written++;
    }
    ck_assert_int_eq(written, 9);
    ck_assert_int_eq(src.ops->finish(w, 1), 0);
    caldera_inst_free(w);

    // both files as stored (hf_layout = 0)
    struct caldera_inst * a, * b;
    ck_assert_int_eq(caldera_inst_create(src.ctx, "gguf", "a", &a), 0);
    ck_assert_int_eq(caldera_inst_create(src.ctx, "gguf", "b", &b), 0);
    ck_assert_int_eq(caldera_inst_set(a, "hf_layout", "false"), 0);
    ck_assert_int_eq(caldera_inst_set(b, "hf_layout", "false"), 0);
    ck_assert_int_eq(caldera_inst_start(a), 0);
    ck_assert_int_eq(caldera_inst_start(b), 0);
    ck_assert_int_eq(src.ops->open(a, smol_path), 0);
    ck_assert_int_eq(src.ops->open(b, out), 0);
    ck_assert_int_eq(src.ops->n_tensors(b), 9);
    for (int64_t i = 0; i < 9; i++) {
        struct caldera_tensor_info tb;
        ck_assert_int_eq(src.ops->tensor_info(b, i, &tb), 0);
        ck_assert_int_eq(strncmp(tb.name, "blk.0.", 6), 0);
        ck_assert_int_eq(tb.dtype, CALDERA_DTYPE_F32);
        int64_t ia = -1;
        for (int64_t j = 0; j < src.ops->n_tensors(a) && ia < 0; j++) {
            struct caldera_tensor_info ta;
            ck_assert_int_eq(src.ops->tensor_info(a, j, &ta), 0);
            if (strcmp(ta.name, tb.name) == 0) ia = j;
        }
        ck_assert_msg(ia >= 0, "%s", tb.name);
        struct caldera_tensor x, y;
        int                   ox, oy;
        ck_assert_int_eq(src.ops->read_tensor(a, ia, CALDERA_DTYPE_F32, &x, &ox), 0);
        ck_assert_int_eq(src.ops->read_tensor(b, i, CALDERA_DTYPE_F32, &y, &oy), 0);
        ck_assert_int_eq(caldera_tensor_nelements(&x), caldera_tensor_nelements(&y));
        ck_assert_msg(memcmp(x.data, y.data, (size_t) caldera_tensor_nelements(&x) * sizeof(float)) == 0, "%s", tb.name);
        if (ox) caldera_tensor_free(&x);
        if (oy) caldera_tensor_free(&y);
    }
    int64_t n;
    ck_assert_int_eq(caldera_meta_get_array(src.ops->meta(b), "tokenizer.ggml.merges", NULL, &n, NULL), 0);
    ck_assert_int_eq(n, 48900);
    caldera_inst_free(a);
    caldera_inst_free(b);
    close_model(&src);
}
END_TEST

static Suite * smol_suite(void) {
    Suite * s  = suite_create("gguf-model");
    TCase * tc = tcase_create("smollm2");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_smol_desc_and_meta);
    tcase_add_test(tc, test_smol_tensors);
    tcase_add_test(tc, test_smol_values_vs_python);
    tcase_add_test(tc, test_smol_export_layer0);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    if (!find_model()) {
        fprintf(stderr, "test-gguf-model: %s not found (set CALDERA_SMOLLM2_GGUF or CALDERA_CACHE_DIR); skipped\n",
                SMOL_FILE);
        return 77;
    }
    return tu_run(smol_suite());
}
