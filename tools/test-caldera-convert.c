// SPDX-License-Identifier: MIT
// Integration test of caldera-convert: stories260K (llama2c) -> HF safetensors folder, read
// back through libcaldera and compared bit for bit with the source; f16 export; re-export of
// the export; exit codes and messages of usage and runtime errors; no temporaries left over.
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "testutil.h"

#define STORIES CALDERA_SHARED_DATA "/stories260K/stories260K.bin"

static char errbuf[8192];

// Run caldera-convert with the NULL-terminated arguments; its stderr lands in errbuf.
static int run(const char * arg0, ...) {
    const char * argv[16];
    int n = 0;
    va_list ap;
    argv[n++] = CONVERT_EXE;
    va_start(ap, arg0);
    for (const char * a = arg0; a && n < 15; a = va_arg(ap, const char *)) argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    const char * errfile = tu_path(tu_tmpdir(), "stderr.txt");
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fd = open(errfile, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int nul = open("/dev/null", O_WRONLY);
        if (fd < 0 || nul < 0) _exit(126);
        dup2(fd, 2);
        dup2(nul, 1);
        execv(CONVERT_EXE, (char * const *) argv);
        _exit(127);
    }
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    size_t len = 0;
    char * e = tu_read_file(errfile, &len);
    snprintf(errbuf, sizeof(errbuf), "%s", e ? e : "");
    caldera_free(e);
    ck_assert_msg(WIFEXITED(status), "caldera-convert did not exit normally");
    return WEXITSTATUS(status);
}

static const struct caldera_format_ops * fops(struct caldera_ctx * ctx, const char * name) {
    const struct caldera_plugin * p = caldera_registry_find(ctx, name);
    ck_assert_ptr_nonnull(p);
    return p->ops;
}

static struct caldera_inst * open_model(struct caldera_ctx * ctx, const char * plugin, const char * path) {
    struct caldera_inst * inst;
    ck_assert_int_eq(caldera_inst_create(ctx, plugin, "m", &inst), 0);
    ck_assert_int_eq(caldera_inst_start(inst), 0);
    int rc = fops(ctx, plugin)->open(inst, path);
    ck_assert_msg(rc == 0, "%s: %s", path, caldera_ctx_errmsg(ctx));
    return inst;
}

static int64_t find_name(struct caldera_ctx * ctx, const char * plugin, struct caldera_inst * inst, const char * name) {
    const struct caldera_format_ops * ops = fops(ctx, plugin);
    for (int64_t i = 0; i < ops->n_tensors(inst); i++) {
        struct caldera_tensor_info ti;
        ck_assert_int_eq(ops->tensor_info(inst, i, &ti), 0);
        if (strcmp(ti.hf_name && ti.hf_name[0] ? ti.hf_name : ti.name, name) == 0) return i;   // gguf: HF name beside the GGUF one
    }
    return -1;
}

// Entries of dir whose name contains ".tmp."
static int count_tmp(const char * dir) {
    DIR * d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent * e;
    while ((e = readdir(d))) n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

// Every tensor of the source (by HF name) equals the export: f32 bit for bit, or its f16
// rounding when f16 is set. Returns the number of tensors compared.
// Every tensor of src, read back from out (format plugin oplugin) by its HF name: same shape, and
// bit-identical f32 (or the f16 rounding of each value).
static int64_t compare_in(struct caldera_ctx * ctx, const char * splugin, struct caldera_inst * src, const char * oplugin,
                          struct caldera_inst * out, int f16) {
    const struct caldera_format_ops * so = fops(ctx, splugin), * oo = fops(ctx, oplugin);
    int64_t n = so->n_tensors(src);
    ck_assert_int_eq(oo->n_tensors(out), n);
    for (int64_t i = 0; i < n; i++) {
        struct caldera_tensor_info si, oi;
        ck_assert_int_eq(so->tensor_info(src, i, &si), 0);
        int64_t j = find_name(ctx, oplugin, out, si.hf_name);
        ck_assert_msg(j >= 0, "%s missing from the export", si.hf_name);
        ck_assert_int_eq(oo->tensor_info(out, j, &oi), 0);
        ck_assert_int_eq(oi.dtype, f16 ? CALDERA_DTYPE_F16 : CALDERA_DTYPE_F32);
        ck_assert_int_eq(oi.ndim, si.ndim);
        for (int d = 0; d < si.ndim; d++) ck_assert_int_eq(oi.ne[d], si.ne[d]);
        struct caldera_tensor a, b;
        int oa, ob;
        ck_assert_int_eq(so->read_tensor(src, i, CALDERA_DTYPE_F32, &a, &oa), 0);
        ck_assert_int_eq(oo->read_tensor(out, j, oi.dtype, &b, &ob), 0);
        int64_t ne = caldera_tensor_nelements(&a);
        if (f16) {
            for (int64_t k = 0; k < ne; k++) {
                ck_assert_uint_eq(((uint16_t *) b.data)[k], caldera_f32_to_f16(((float *) a.data)[k]));
            }
        } else {
            ck_assert_msg(memcmp(a.data, b.data, (size_t) ne * 4) == 0, "%s differs", si.hf_name);
        }
        if (oa) caldera_tensor_free(&a);
        if (ob) caldera_tensor_free(&b);
    }
    return n;
}

static int64_t compare_all(struct caldera_ctx * ctx, const char * splugin, struct caldera_inst * src,
                           struct caldera_inst * out, int f16) {
    return compare_in(ctx, splugin, src, "safetensors", out, f16);
}

START_TEST(test_stories_export_bit_exact) {
    struct caldera_ctx * ctx = tu_ctx();
    char out[1024];
    snprintf(out, sizeof(out), "%s", tu_path(tu_tmpdir(), "stories-hf"));
    ck_assert_msg(run(STORIES, out, "-q", NULL) == 0, "stderr: %s", errbuf);
    struct caldera_inst * src = open_model(ctx, "llama2c", STORIES);
    struct caldera_inst * dst = open_model(ctx, "safetensors", out);
    ck_assert_int_eq(compare_all(ctx, "llama2c", src, dst, 0), 47);
    // the description survives through config.json
    struct caldera_model_desc a, b;
    ck_assert_int_eq(fops(ctx, "llama2c")->model_desc(src, &a), 0);
    ck_assert_int_eq(fops(ctx, "safetensors")->model_desc(dst, &b), 0);
    ck_assert_str_eq(b.arch, a.arch);
    ck_assert_int_eq(b.n_layers, a.n_layers);
    ck_assert_int_eq(b.hidden, a.hidden);
    ck_assert_int_eq(b.ffn, a.ffn);
    ck_assert_int_eq(b.n_heads, a.n_heads);
    ck_assert_int_eq(b.n_kv_heads, a.n_kv_heads);
    ck_assert_int_eq(b.head_dim, a.head_dim);
    ck_assert_int_eq(b.vocab, a.vocab);
    ck_assert_int_eq(b.ctx_len, a.ctx_len);
    ck_assert(b.rope_theta == a.rope_theta);
    ck_assert(b.norm_eps == a.norm_eps);
    ck_assert_int_eq(b.tied_embeddings, a.tied_embeddings);
    // the tokenizer travels in __metadata__ with its types
    const struct caldera_meta * ma = fops(ctx, "llama2c")->meta(src), * mb = fops(ctx, "safetensors")->meta(dst);
    enum caldera_meta_type ea, eb;
    int64_t na, nb;
    const void * da, * db;
    ck_assert_int_eq(caldera_meta_get_array(ma, "tokenizer.ggml.tokens", &ea, &na, &da), 0);
    ck_assert_int_eq(caldera_meta_get_array(mb, "tokenizer.ggml.tokens", &eb, &nb, &db), 0);
    ck_assert_int_eq(eb, CALDERA_META_STRING);
    ck_assert_int_eq(nb, na);
    for (int64_t k = 0; k < na; k++) ck_assert_str_eq(((const char * const *) db)[k], ((const char * const *) da)[k]);
    ck_assert_int_eq(caldera_meta_get_array(ma, "tokenizer.ggml.scores", &ea, &na, &da), 0);
    ck_assert_int_eq(caldera_meta_get_array(mb, "tokenizer.ggml.scores", &eb, &nb, &db), 0);
    ck_assert_int_eq(eb, CALDERA_META_F32);
    ck_assert(memcmp(da, db, (size_t) na * 4) == 0);
    const char * s;
    ck_assert_int_eq(caldera_meta_get_string(mb, "format", &s), 0);
    ck_assert_str_eq(s, "pt");
    ck_assert_int_eq(caldera_meta_get_string(mb, "caldera.source_format", &s), 0);
    ck_assert_str_eq(s, "llama2c");
    // config.json and tokenizer_config.json as transformers names them
    json_error_t err;
    json_t * cfg = json_load_file(tu_path(out, "config.json"), 0, &err);
    ck_assert_msg(cfg != NULL, "%s", err.text);
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(cfg, "architectures"), 0)), "LlamaForCausalLM");
    ck_assert_int_eq(json_integer_value(json_object_get(cfg, "num_hidden_layers")), 5);
    ck_assert_int_eq(json_integer_value(json_object_get(cfg, "intermediate_size")), 172);
    ck_assert(json_is_true(json_object_get(cfg, "tie_word_embeddings")));
    ck_assert_int_eq(json_integer_value(json_object_get(cfg, "bos_token_id")), 1);
    json_decref(cfg);
    json_t * tok = json_load_file(tu_path(out, "tokenizer_config.json"), 0, &err);
    ck_assert_msg(tok != NULL, "%s", err.text);
    ck_assert_str_eq(json_string_value(json_object_get(tok, "bos_token")), "\n<s>\n");
    ck_assert_str_eq(json_string_value(json_object_get(tok, "eos_token")), "\n</s>\n");
    json_decref(tok);
    ck_assert_int_eq(count_tmp(tu_tmpdir()), 0);
    caldera_inst_free(dst);
    caldera_inst_free(src);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_f16_and_reexport) {
    struct caldera_ctx * ctx = tu_ctx();
    char out16[1024];
    snprintf(out16, sizeof(out16), "%s", tu_path(tu_tmpdir(), "stories-f16"));
    ck_assert_msg(run(STORIES, out16, "--dtype", "f16", "--from", "llama2c", NULL) == 0, "stderr: %s", errbuf);
    ck_assert_ptr_nonnull(strstr(errbuf, "47 tensors"));  // the summary line without -q
    struct caldera_inst * src = open_model(ctx, "llama2c", STORIES);
    struct caldera_inst * dst = open_model(ctx, "safetensors", out16);
    ck_assert_int_eq(compare_all(ctx, "llama2c", src, dst, 1), 47);
    caldera_inst_free(dst);
    // an export of the f32 export (safetensors -> safetensors) is the same model again
    char out1[1024], out2[1024];
    snprintf(out1, sizeof(out1), "%s", tu_path(tu_tmpdir(), "re1"));
    snprintf(out2, sizeof(out2), "%s", tu_path(tu_tmpdir(), "re2"));
    ck_assert_msg(run(STORIES, out1, "-q", NULL) == 0, "stderr: %s", errbuf);
    ck_assert_msg(run(out1, out2, "-q", NULL) == 0, "stderr: %s", errbuf);
    dst = open_model(ctx, "safetensors", out2);
    ck_assert_int_eq(compare_all(ctx, "llama2c", src, dst, 0), 47);
    struct caldera_model_desc d;
    ck_assert_int_eq(fops(ctx, "safetensors")->model_desc(dst, &d), 0);
    ck_assert_int_eq(d.n_kv_heads, 4);
    caldera_inst_free(dst);
    caldera_inst_free(src);
    caldera_ctx_free(ctx);
}
END_TEST

// OUTPUT.gguf: one dense GGUF file (llama.cpp names and q/k order), read back by the gguf reader
// (which undoes the order) bit-exact against the source; an existing file is refused, untouched.
START_TEST(test_gguf_output) {
    struct caldera_ctx * ctx = tu_ctx();
    char out[1024];
    snprintf(out, sizeof(out), "%s", tu_path(tu_tmpdir(), "stories.gguf"));
    ck_assert_msg(run(STORIES, out, "-q", NULL) == 0, "stderr: %s", errbuf);
    struct caldera_inst * src = open_model(ctx, "llama2c", STORIES);
    struct caldera_inst * dst = open_model(ctx, "gguf", out);
    ck_assert_int_eq(compare_in(ctx, "llama2c", src, "gguf", dst, 0), 47);
    struct caldera_tensor_info ti;
    ck_assert_int_eq(fops(ctx, "gguf")->tensor_info(dst, find_name(ctx, "gguf", dst, "model.layers.0.self_attn.q_proj.weight"), &ti), 0);
    ck_assert_str_eq(ti.name, "blk.0.attn_q.weight");
    struct caldera_model_desc d;
    ck_assert_int_eq(fops(ctx, "gguf")->model_desc(dst, &d), 0);
    ck_assert_int_eq(d.n_layers, 5);
    ck_assert_int_eq(d.n_kv_heads, 4);
    caldera_inst_free(dst);
    size_t len0 = 0, len1 = 0;
    char * before = tu_read_file(out, &len0);
    ck_assert_int_eq(run(STORIES, out, "-q", NULL), 1);
    ck_assert_ptr_nonnull(strstr(errbuf, "exists; remove it first"));
    char * after = tu_read_file(out, &len1);
    ck_assert(before && after && len0 == len1 && memcmp(before, after, len0) == 0);
    caldera_free(before);
    caldera_free(after);
    ck_assert_int_eq(count_tmp(tu_tmpdir()), 0);
    caldera_inst_free(src);
    caldera_ctx_free(ctx);
}
END_TEST

// --dtype q8_0|q4_0|q4_1: stories260K's 2-d tensors with rows of whole 32-blocks in the block type
// (read back by the gguf reader, which dequantizes), the others f32 bit for bit. Each element lies
// within the round-to-nearest bound of its block, computed here from the source block: with d (and
// m) the f16 values the block's definition gives, |x - x̂| <= d/2 where x/d (Q8_0: always; Q4_0:
// x/d <= 7.5, the one level above 7 is clamped to 7; Q4_1: (x - m)/d in [-0.5, 15.5]) needs no
// clamp, else the distance to the clamped level.
#define TOL_BLOCK_REL 1e-6   // f32 arithmetic in the encoder and the decoder, relative to |x| + 16 d
static void check_block_type(const char * dtype, enum caldera_dtype dt, int64_t want_blocked) {
    struct caldera_ctx * ctx = tu_ctx();
    char out[1024];
    snprintf(out, sizeof(out), "%s/stories-%s.gguf", tu_tmpdir(), dtype);
    ck_assert_msg(run(STORIES, out, "-q", "--dtype", dtype, NULL) == 0, "stderr: %s", errbuf);
    struct caldera_inst * src = open_model(ctx, "llama2c", STORIES);
    struct caldera_inst * dst = open_model(ctx, "gguf", out);
    const struct caldera_format_ops * so = fops(ctx, "llama2c"), * oo = fops(ctx, "gguf");
    int64_t blocked = 0;
    for (int64_t i = 0; i < so->n_tensors(src); i++) {
        struct caldera_tensor_info si, oi;
        struct caldera_tensor a, b;
        int oa, ob;
        ck_assert_int_eq(so->tensor_info(src, i, &si), 0);
        int64_t j = find_name(ctx, "gguf", dst, si.hf_name);
        ck_assert_int_ge(j, 0);
        ck_assert_int_eq(oo->tensor_info(dst, j, &oi), 0);
        ck_assert_int_eq(so->read_tensor(src, i, CALDERA_DTYPE_F32, &a, &oa), 0);
        ck_assert_int_eq(oo->read_tensor(dst, j, CALDERA_DTYPE_F32, &b, &ob), 0);
        const int64_t ne = caldera_tensor_nelements(&a);
        const float * x = a.data, * y = b.data;
        if (si.ndim == 2 && si.ne[1] % 32 == 0) {
            blocked++;
            ck_assert_int_eq(oi.dtype, dt);
            ck_assert_uint_eq(oi.nbytes, (size_t) (ne / 32) * (dt == CALDERA_DTYPE_Q8_0 ? 34 : dt == CALDERA_DTYPE_Q4_0 ? 18 : 20));
            // q_proj, k_proj: rows permuted by llama.cpp's layout, which the reader undoes; their blocks are
            // whole rows' pieces all the same (rows of 64), so the bound holds there too
            for (int64_t k0 = 0; k0 < ne; k0 += 32) {
                float amax = 0.0f, m = 0.0f, lo = x[k0], hi = x[k0];
                for (int k = 0; k < 32; k++) {
                    float v = x[k0 + k];
                    amax = fmaxf(amax, fabsf(v));
                    if (fabsf(v) > fabsf(m)) m = v;
                    lo = fminf(lo, v), hi = fmaxf(hi, v);
                }
                double d, off = 0.0, top;
                if (dt == CALDERA_DTYPE_Q8_0) d = caldera_f16_to_f32(caldera_f32_to_f16(amax / 127.0f)), top = 127.5;
                else if (dt == CALDERA_DTYPE_Q4_0) d = caldera_f16_to_f32(caldera_f32_to_f16(m / -8.0f)), top = 7.5;
                else d = caldera_f16_to_f32(caldera_f32_to_f16((hi - lo) / 15.0f)), off = caldera_f16_to_f32(caldera_f32_to_f16(lo)), top = 15.5;
                const double bot = dt == CALDERA_DTYPE_Q4_1 ? -0.5 : -top - (dt == CALDERA_DTYPE_Q4_0 ? 1.0 : 0.0);
                for (int k = 0; k < 32; k++) {
                    double v = x[k0 + k], t = d != 0.0 ? (v - off) / d : 0.0;
                    double bound = fabs(d) * fmax(0.5, fmax(t - top + 0.5, bot + 0.5 - t)) + TOL_BLOCK_REL * (fabs(v) + 16.0 * fabs(d));
                    ck_assert_msg(fabs(v - y[k0 + k]) <= bound, "%s %s element %lld: %.9g against %.9g (d %.6g, bound %.6g)", dtype,
                                  si.hf_name, (long long) (k0 + k), v, (double) y[k0 + k], d, bound);
                }
            }
        } else {
            ck_assert_int_eq(oi.dtype, CALDERA_DTYPE_F32);
            ck_assert_msg(memcmp(a.data, b.data, (size_t) ne * 4) == 0, "%s differs", si.hf_name);
        }
        if (oa) caldera_tensor_free(&a);
        if (ob) caldera_tensor_free(&b);
    }
    ck_assert_int_eq(blocked, want_blocked);
    caldera_inst_free(dst);
    caldera_inst_free(src);
    caldera_ctx_free(ctx);
}

// stories260K's 2-d tensors with rows of 64: the embedding and 6 of the 7 linears of each of 5 layers
// (down_proj's rows are 172 long).
START_TEST(test_gguf_block_types) {
    check_block_type("q8_0", CALDERA_DTYPE_Q8_0, 1 + 5 * 6);
    check_block_type("q4_0", CALDERA_DTYPE_Q4_0, 1 + 5 * 6);
    check_block_type("q4_1", CALDERA_DTYPE_Q4_1, 1 + 5 * 6);
}
END_TEST

START_TEST(test_usage_errors) {
    char out[1024];
    snprintf(out, sizeof(out), "%s", tu_path(tu_tmpdir(), "never"));
    ck_assert_int_eq(run(NULL), 2);
    ck_assert_ptr_nonnull(strstr(errbuf, "expected INPUT and OUTPUT_DIR, got 0 argument(s)"));
    ck_assert_int_eq(run(STORIES, NULL), 2);
    ck_assert_int_eq(run(STORIES, out, "extra", NULL), 2);
    ck_assert_int_eq(run(STORIES, out, "--dtype", "bf8", NULL), 2);
    ck_assert_ptr_nonnull(strstr(errbuf, "--dtype bf8; allowed: f32, f16, q8_0, q4_0, q4_1"));
    ck_assert_int_eq(run(STORIES, out, "--dtype", "q8_0", NULL), 2);
    ck_assert_ptr_nonnull(strstr(errbuf, "--dtype q8_0 needs an OUTPUT.gguf"));
    ck_assert_int_eq(run(STORIES, out, "--bogus", NULL), 2);
    ck_assert_ptr_nonnull(strstr(errbuf, "unknown or incomplete option '--bogus'"));
    ck_assert_int_eq(run(STORIES, out, "--from", "nosuch", NULL), 2);
    ck_assert_ptr_nonnull(strstr(errbuf, "--from nosuch: no format plugin of that name can read models; allowed:"));
    ck_assert_ptr_nonnull(strstr(errbuf, "llama2c"));
    ck_assert_int_eq(run("--help", NULL), 0);
    ck_assert_int_eq(access(out, F_OK), -1);
}
END_TEST

START_TEST(test_runtime_errors) {
    char out[1024], keep[1100];
    snprintf(out, sizeof(out), "%s", tu_path(tu_tmpdir(), "out-rt"));
    snprintf(keep, sizeof(keep), "%s/keep.txt", out);
    ck_assert_int_eq(run("/nonexistent/model.bin", out, NULL), 1);
    ck_assert_ptr_nonnull(strstr(errbuf, "/nonexistent/model.bin: no format plugin recognises this file"));
    ck_assert_int_eq(run("--plugin-path", "/nonexistent/plugins", STORIES, out, NULL), 1);
    ck_assert_ptr_nonnull(strstr(errbuf, "/nonexistent/plugins: cannot open plugin directory"));
    // the wrong reader: the context's message is printed
    ck_assert_int_eq(run(STORIES, out, "--from", "safetensors", NULL), 1);
    ck_assert_ptr_nonnull(strstr(errbuf, "safetensors: " STORIES ": header length"));
    // an existing, non-empty output folder is left alone
    ck_assert_int_eq(mkdir(out, 0755), 0);
    ck_assert_int_eq(tu_write_file(keep, "x"), 0);
    ck_assert_int_eq(run(STORIES, out, NULL), 1);
    ck_assert_ptr_nonnull(strstr(errbuf, "exists and is not an empty folder"));
    ck_assert_int_eq(access(keep, F_OK), 0);
    ck_assert_int_eq(count_tmp(tu_tmpdir()), 0);
    // an empty one is replaced
    unlink(keep);
    ck_assert_msg(run(STORIES, out, "-q", NULL) == 0, "stderr: %s", errbuf);
    ck_assert_int_eq(access(tu_path(out, "model.safetensors"), F_OK), 0);
}
END_TEST

// SmolLM2-135M (GGUF, Q4_1/Q8_0) -> safetensors: the export holds exactly what the gguf plugin
// reads (f32). Needs scripts/fetch-model.sh; run with --smollm2 (CTest label slow).
static char smol_path[1024];

START_TEST(test_smollm2_gguf_export) {
    struct caldera_ctx * ctx = tu_ctx();
    char out[1024];
    snprintf(out, sizeof(out), "%s", tu_path(tu_tmpdir(), "smollm2-hf"));
    ck_assert_msg(run(smol_path, out, "-q", NULL) == 0, "stderr: %s", errbuf);
    struct caldera_inst * src = open_model(ctx, "gguf", smol_path);
    struct caldera_inst * dst = open_model(ctx, "safetensors", out);
    ck_assert_int_eq(compare_all(ctx, "gguf", src, dst, 0), 272);
    struct caldera_model_desc a, b;
    ck_assert_int_eq(fops(ctx, "gguf")->model_desc(src, &a), 0);
    ck_assert_int_eq(fops(ctx, "safetensors")->model_desc(dst, &b), 0);
    ck_assert_int_eq(b.n_layers, 30);
    ck_assert_int_eq(b.n_kv_heads, a.n_kv_heads);
    ck_assert_int_eq(b.head_dim, a.head_dim);
    ck_assert_int_eq(b.vocab, a.vocab);
    ck_assert((float) b.norm_eps == (float) a.norm_eps);
    ck_assert(b.rope_theta == a.rope_theta);
    ck_assert_int_eq(b.tied_embeddings, a.tied_embeddings);
    caldera_inst_free(dst);
    caldera_inst_free(src);
    caldera_ctx_free(ctx);
    // 539 MB: do not leave it in the build tree
    static const char * const files[] = { "model.safetensors", "config.json", "tokenizer_config.json" };
    for (size_t k = 0; k < 3; k++) ck_assert_int_eq(unlink(tu_path(out, files[k])), 0);
    ck_assert_int_eq(rmdir(out), 0);
}
END_TEST

static Suite * convert_suite(int smollm2) {
    Suite * s = suite_create("caldera-convert");
    TCase * tc = tcase_create("convert");
    if (smollm2) {
        tcase_set_timeout(tc, 300);
        tcase_add_test(tc, test_smollm2_gguf_export);
    } else {
        tcase_add_test(tc, test_stories_export_bit_exact);
        tcase_add_test(tc, test_f16_and_reexport);
        tcase_add_test(tc, test_gguf_output);
        tcase_add_test(tc, test_gguf_block_types);
        tcase_add_test(tc, test_usage_errors);
        tcase_add_test(tc, test_runtime_errors);
    }
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char ** argv) {
    int smollm2 = argc > 1 && strcmp(argv[1], "--smollm2") == 0;
    if (smollm2) {
        const char * env = getenv("CALDERA_SMOLLM2_GGUF");
        snprintf(smol_path, sizeof(smol_path), "%s",
                 env && env[0] ? env : CALDERA_CACHE_DIR "/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        if (access(smol_path, R_OK) != 0) {
            fprintf(stderr, "skipped: %s not found (run scripts/fetch-model.sh)\n", smol_path);
            return 77;
        }
        struct caldera_ctx * ctx = NULL;
        int have_gguf = caldera_ctx_init(&ctx) == 0 && caldera_registry_find(ctx, "gguf") != NULL;
        caldera_ctx_free(ctx);
        if (!have_gguf) {
            fprintf(stderr, "skipped: libcaldera has no gguf plugin\n");
            return 77;
        }
    }
    return tu_run(convert_suite(smollm2));
}
