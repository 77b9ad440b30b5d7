// SPDX-License-Identifier: MIT
// test-gguf: the gguf format plugin against fixtures made by the Python gguf package
// (fixtures/make_fixtures.py): dequantization of every type, metadata of every value type,
// llama names and the q/k permutation, the writer (round trips, atomic finish), and one test
// per kind of malformed file, each with its exact status code and message.
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf-quants.h"
#include "testutil.h"

#define FIX(name) CALDERA_TEST_SRC_DIR "/fixtures/" name
#define GGUF_KEY_U "caldera.gguf.dtype.u"

// Largest |C - Python| over a dequantized fixture, relative to max(1, |Python|). Both sides do
// the same float32 operations, so this is rounding slack only.
#define GGUF_DEQ_TOL 1e-6
// f32 -> f16 conversion of a dequantized value (half an f16 ulp, relative)
#define GGUF_F16_TOL 4.9e-4

// ---------------------------------------------------------------------------------------------
// Helpers.

struct h {
    struct caldera_ctx *              ctx;
    struct caldera_inst *             inst;
    const struct caldera_format_ops * ops;
};

// An instance not started yet (options can still be set).
static struct h h_create(void) {
    struct h h = { tu_ctx(), NULL, NULL };
    ck_assert_int_eq(caldera_inst_create(h.ctx, "gguf", "src", &h.inst), 0);
    h.ops = caldera_inst_plugin(h.inst)->ops;
    return h;
}

static struct h h_new(void) {
    struct h h = h_create();
    ck_assert_int_eq(caldera_inst_start(h.inst), 0);
    return h;
}

static void h_free(struct h * h) {
    caldera_inst_free(h->inst);
    caldera_ctx_free(h->ctx);
}

static int64_t find_tensor(struct h * h, const char * name) {
    struct caldera_tensor_info ti;
    for (int64_t i = 0; i < h->ops->n_tensors(h->inst); i++) {
        ck_assert_int_eq(h->ops->tensor_info(h->inst, i, &ti), 0);
        if (strcmp(ti.name, name) == 0) return i;
    }
    ck_abort_msg("tensor %s not found", name);
    return -1;
}

static float * read_floats(const char * path, size_t * n) {
    size_t len = 0;
    char * b   = tu_read_file(path, &len);
    ck_assert_ptr_nonnull(b);
    *n = len / 4;
    return (float *) b;
}

static void assert_err(struct h * h, int rc, int want, const char * frag) {
    const char * msg = caldera_ctx_errmsg(h->ctx);
    ck_assert_msg(rc == want, "rc %d (%s), expected %d (%s); message: %s", rc, caldera_status_str(rc), want,
                  caldera_status_str(want), msg);
    ck_assert_msg(strstr(msg, frag) != NULL, "message '%s' does not contain '%s'", msg, frag);
}

static int count_dir(const char * dir) {
    DIR * d = opendir(dir);
    int   n = 0;
    ck_assert_ptr_nonnull(d);
    for (struct dirent * e; (e = readdir(d));) {
        if (e->d_name[0] != '.') n++;
    }
    closedir(d);
    return n;
}

static const char * fresh_dir(const char * tag) {
    static char dir[8][600];
    static int  k;
    char *      p = dir[k++ & 7];
    snprintf(p, 600, "%s/%s", tu_tmpdir(), tag);
    mkdir(p, 0755);
    return p;
}

// ---------------------------------------------------------------------------------------------
// Dequantization against gguf-py.

START_TEST(test_types_dequant) {
    struct h h = h_new();
    ck_assert_int_eq(h.ops->open(h.inst, FIX("types.gguf")), 0);
    ck_assert_int_eq(h.ops->n_tensors(h.inst), 18);
    size_t  nexp;
    float * exp = read_floats(FIX("types-expected.bin"), &nexp);
    FILE *  f   = fopen(FIX("types-expected.txt"), "r");
    ck_assert_ptr_nonnull(f);
    char line[256];
    int  checked = 0;
    while (fgets(line, sizeof(line), f)) {
        char    name[64], shape[64];
        long    off;
        if (line[0] == '#' || sscanf(line, "%63s %ld %63s", name, &off, shape) != 3) continue;
        int64_t i = find_tensor(&h, name);
        struct caldera_tensor_info ti;
        ck_assert_int_eq(h.ops->tensor_info(h.inst, i, &ti), 0);
        // shape in PyTorch order
        char got[64] = "";
        for (int d = 0; d < ti.ndim; d++) {
            snprintf(got + strlen(got), sizeof(got) - strlen(got), d ? "x%lld" : "%lld", (long long) ti.ne[d]);
        }
        ck_assert_str_eq(got, shape);
        if (strcmp(name, "f32_3d") != 0) {
            enum caldera_dtype dt;
            ck_assert_int_eq(caldera_dtype_from_name(name, &dt), 0);
            ck_assert_msg(ti.dtype == dt, "%s: dtype %s", name, caldera_dtype_name(ti.dtype));
            size_t nb;
            ck_assert_int_eq(caldera_dtype_nbytes(dt, ti.ne[0] * ti.ne[1], &nb), 0);
            ck_assert_uint_eq(ti.nbytes, nb);
        }
        struct caldera_tensor t;
        int                   owned = -1;
        ck_assert_int_eq(h.ops->read_tensor(h.inst, i, CALDERA_DTYPE_F32, &t, &owned), 0);
        ck_assert_int_eq(t.dtype, CALDERA_DTYPE_F32);
        ck_assert_int_eq(t.ndim, ti.ndim);
        int64_t n = caldera_tensor_nelements(&t);
        ck_assert((size_t) (off + n) <= nexp);
        double worst = 0;
        for (int64_t k = 0; k < n; k++) {
            double e = exp[off + k], g = ((float *) t.data)[k];
            double d = fabs(g - e) / fmax(1.0, fabs(e));
            if (!(d <= worst)) worst = d;   // NaN-safe
        }
        ck_assert_msg(worst <= GGUF_DEQ_TOL, "%s: max relative diff %g > %g", name, worst, GGUF_DEQ_TOL);
        // plain f32 comes back as a view of the file, everything else as a copy
        ck_assert_int_eq(owned, strncmp(name, "f32", 3) == 0 ? 0 : 1);
        if (owned) caldera_tensor_free(&t);
        checked++;
    }
    fclose(f);
    ck_assert_int_eq(checked, 18);
    caldera_free(exp);
    h_free(&h);
}
END_TEST

// The stored dtype is a view; another plain dtype is a conversion; block targets are refused.
START_TEST(test_types_native_and_convert) {
    struct h h = h_new();
    ck_assert_int_eq(h.ops->open(h.inst, FIX("types.gguf")), 0);
    size_t  nexp;
    float * exp = read_floats(FIX("types-expected.bin"), &nexp);
    struct caldera_tensor t, f16;
    int                   owned;
    int64_t               i = find_tensor(&h, "q4_0");
    ck_assert_int_eq(h.ops->read_tensor(h.inst, i, CALDERA_DTYPE_Q4_0, &t, &owned), 0);
    ck_assert_int_eq(owned, 0);
    ck_assert_int_eq(t.dtype, CALDERA_DTYPE_Q4_0);
    ck_assert_int_eq(t.ne[0], 3);
    ck_assert_int_eq(t.ne[1], 512);
    // the raw blocks dequantize (through the plugin's kernel) to the expected values
    float row[512];
    gguf_to_f32(gguf_type_by_id(2), CALDERA_DTYPE_Q4_0, t.data, row, 512);
    for (int k = 0; k < 512; k++) ck_assert_float_eq_tol(row[k], exp[4608 + k], GGUF_DEQ_TOL);
    // q4_0 -> f16
    ck_assert_int_eq(h.ops->read_tensor(h.inst, i, CALDERA_DTYPE_F16, &f16, &owned), 0);
    ck_assert_int_eq(owned, 1);
    ck_assert_int_eq(f16.dtype, CALDERA_DTYPE_F16);
    for (int k = 0; k < 3 * 512; k++) {
        float v = caldera_f16_to_f32(((uint16_t *) f16.data)[k]);
        ck_assert_msg(fabs(v - exp[4608 + k]) <= GGUF_F16_TOL * fmax(1e-3, fabs(exp[4608 + k])), "k %d", k);
    }
    caldera_tensor_free(&f16);
    // to another block type: refused
    int rc = h.ops->read_tensor(h.inst, i, CALDERA_DTYPE_Q8_0, &t, &owned);
    assert_err(&h, rc, CALDERA_ERR_UNSUPPORTED, "converting to q8_0 is not supported");
    rc = h.ops->read_tensor(h.inst, 99, CALDERA_DTYPE_F32, &t, &owned);
    assert_err(&h, rc, CALDERA_ERR_RANGE, "tensor index 99 out of range [0, 18)");
    caldera_free(exp);
    h_free(&h);
}
END_TEST

// A tensor big enough to be dequantized in parallel chunks (2M elements, 2 threads) equals the
// kernel applied serially row by row; q/k permutation on top of it as well.
START_TEST(test_parallel_dequant) {
    const int64_t rows = 4096, cols = 512, nb = cols / 32;
    struct h      h    = h_new();
    uint8_t *     raw  = malloc((size_t) (rows * nb * 34));
    struct caldera_rng rng;
    caldera_rng_seed(&rng, 99);
    for (int64_t b = 0; b < rows * nb; b++) {
        uint16_t d = caldera_f32_to_f16((float) (caldera_rng_uniform(&rng) * 0.01));
        memcpy(raw + b * 34, &d, 2);
        for (int k = 0; k < 32; k++) raw[b * 34 + 2 + k] = (uint8_t) caldera_rng_u64(&rng);
    }
    struct caldera_meta * m;
    ck_assert_int_eq(caldera_meta_init(&m), 0);
    ck_assert_int_eq(caldera_meta_set_string(m, "general.architecture", "llama"), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "llama.attention.head_count", CALDERA_META_U32, 32), 0);
    const char * path = tu_path(fresh_dir("par"), "big.gguf");
    ck_assert_int_eq(h.ops->create(h.inst, path, m), 0);
    caldera_meta_free(m);
    struct caldera_tensor q = { raw, CALDERA_DTYPE_Q8_0, CALDERA_DEVICE_CPU, 2, { rows, cols }, cols };
    ck_assert_int_eq(h.ops->write_tensor(h.inst, "blk.0.ffn_up.weight", &q), 0);
    ck_assert_int_eq(h.ops->write_tensor(h.inst, "blk.0.attn_q.weight", &q), 0);   // GGUF name: stored as given
    ck_assert_int_eq(h.ops->finish(h.inst, 1), 0);
    struct h r = h_new();
    ck_assert_int_eq(r.ops->open(r.inst, path), 0);
    float * serial = malloc((size_t) (rows * cols) * sizeof(float));
    for (int64_t i = 0; i < rows; i++) {
        gguf_to_f32(gguf_type_by_id(8), CALDERA_DTYPE_Q8_0, raw + i * nb * 34, serial + i * cols, cols);
    }
    struct caldera_tensor t;
    int                   owned;
    ck_assert_int_eq(r.ops->read_tensor(r.inst, 0, CALDERA_DTYPE_F32, &t, &owned), 0);
    ck_assert_mem_eq(t.data, serial, (size_t) (rows * cols) * sizeof(float));
    caldera_tensor_free(&t);
    // attn_q: HF row h*128 + t*64 + j is stored row h*128 + 2j + t
    ck_assert_int_eq(r.ops->read_tensor(r.inst, 1, CALDERA_DTYPE_F32, &t, &owned), 0);
    for (int64_t i = 0; i < rows; i++) {
        int64_t hh = i / 128, rr = i % 128, src = hh * 128 + 2 * (rr % 64) + rr / 64;
        ck_assert_mem_eq((float *) t.data + i * cols, serial + src * cols, (size_t) cols * sizeof(float));
    }
    caldera_tensor_free(&t);
    free(serial);
    free(raw);
    h_free(&r);
    h_free(&h);
}
END_TEST

// Every block type: the table agrees with the core's dtype sizes.
START_TEST(test_type_table) {
    static const uint32_t ids[] = { 0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 30 };
    for (size_t k = 0; k < sizeof(ids) / sizeof(ids[0]); k++) {
        const struct gguf_type * t = gguf_type_by_id(ids[k]);
        ck_assert_ptr_nonnull(t);
        ck_assert(t->supported);
        ck_assert_int_eq(t->blck, caldera_dtype_block_elems(t->dtype));
        ck_assert_uint_eq(t->bytes, caldera_dtype_block_bytes(t->dtype));
        ck_assert_ptr_eq(gguf_type_by_dtype(t->dtype), t);
    }
    ck_assert_ptr_null(gguf_type_by_id(4));     // removed from ggml: unknown, never guessed
    ck_assert_ptr_null(gguf_type_by_id(1000));
    ck_assert(!gguf_type_by_id(16)->supported);
    ck_assert_str_eq(gguf_type_by_id(16)->name, "IQ2_XXS");
}
END_TEST

// Q8_1 and Q8_K (no gguf-py dequantizer): closed form x = d * q on hand-made blocks.
START_TEST(test_q8_1_q8_k_closed_form) {
    uint8_t b1[36] = { 0 }, bk[292] = { 0 };
    float   y[256];
    uint16_t d16 = caldera_f32_to_f16(0.25f);
    memcpy(b1, &d16, 2);
    for (int j = 0; j < 32; j++) b1[4 + j] = (uint8_t) (int8_t) (j - 16);
    gguf_to_f32(gguf_type_by_id(9), CALDERA_DTYPE_Q8_1, b1, y, 32);
    for (int j = 0; j < 32; j++) ck_assert_float_eq(y[j], 0.25f * (float) (j - 16));
    float dk = -0.125f;
    memcpy(bk, &dk, 4);
    for (int j = 0; j < 256; j++) bk[4 + j] = (uint8_t) (int8_t) (j % 255 - 127);
    gguf_to_f32(gguf_type_by_id(15), CALDERA_DTYPE_Q8_K, bk, y, 256);
    for (int j = 0; j < 256; j++) ck_assert_float_eq(y[j], -0.125f * (float) (j % 255 - 127));
}
END_TEST

// ---------------------------------------------------------------------------------------------
// Metadata.

START_TEST(test_meta_values) {
    struct h h = h_new();
    ck_assert_int_eq(h.ops->open(h.inst, FIX("meta.gguf")), 0);
    const struct caldera_meta * m = h.ops->meta(h.inst);
    ck_assert_ptr_nonnull(m);
    int64_t      v;
    double       f;
    const char * s;
    struct { const char * key; enum caldera_meta_type t; int64_t v; } ints[] = {
        { "t.u8", CALDERA_META_U8, 200 },          { "t.i8", CALDERA_META_I8, -100 },
        { "t.u16", CALDERA_META_U16, 60000 },      { "t.i16", CALDERA_META_I16, -30000 },
        { "t.u32", CALDERA_META_U32, 4000000000 }, { "t.i32", CALDERA_META_I32, -2000000000 },
        { "t.bool", CALDERA_META_BOOL, 1 },        { "t.i64", CALDERA_META_I64, -9000000000000000000 },
        { "general.alignment", CALDERA_META_U32, 64 },
    };
    for (size_t k = 0; k < sizeof(ints) / sizeof(ints[0]); k++) {
        ck_assert_int_eq(caldera_meta_get_int(m, ints[k].key, &v), 0);
        ck_assert_int_eq(v, ints[k].v);
        ck_assert_int_eq(caldera_meta_type_of(m, caldera_meta_find(m, ints[k].key)), ints[k].t);
    }
    ck_assert_int_eq(caldera_meta_get_int(m, "t.u64", &v), CALDERA_ERR_RANGE);   // > INT64_MAX
    ck_assert_uint_eq((uint64_t) v, 18000000000000000000ull);
    ck_assert_int_eq(caldera_meta_get_float(m, "t.f32", &f), 0);
    ck_assert(f == 0.15625);
    ck_assert_int_eq(caldera_meta_get_float(m, "t.f64", &f), 0);
    ck_assert(f == 2.718281828459045);
    ck_assert_int_eq(caldera_meta_get_string(m, "t.string", &s), 0);
    ck_assert_str_eq(s, "h\xc3\xa9llo, gguf");
    ck_assert_int_eq(caldera_meta_get_string(m, "general.architecture", &s), 0);
    ck_assert_str_eq(s, "test");

    enum caldera_meta_type et;
    int64_t                n;
    const void *           d;
    ck_assert_int_eq(caldera_meta_get_array(m, "t.arr_u8", &et, &n, &d), 0);
    ck_assert_int_eq(et, CALDERA_META_U8);
    ck_assert_int_eq(n, 3);
    ck_assert_int_eq(((const uint8_t *) d)[2], 255);
    ck_assert_int_eq(caldera_meta_get_array(m, "t.arr_i16", &et, &n, &d), 0);
    ck_assert_int_eq(et, CALDERA_META_I16);
    ck_assert_int_eq(((const int16_t *) d)[2], -3);
    ck_assert_int_eq(caldera_meta_get_array(m, "t.arr_i32", &et, &n, &d), 0);
    ck_assert_int_eq(n, 4);
    ck_assert_int_eq(((const int32_t *) d)[3], -10);
    ck_assert_int_eq(caldera_meta_get_array(m, "t.arr_f32", &et, &n, &d), 0);
    ck_assert(((const float *) d)[1] == -1.25f);
    ck_assert_int_eq(caldera_meta_get_array(m, "t.arr_u64", &et, &n, &d), 0);
    ck_assert_uint_eq(((const uint64_t *) d)[1], 18000000000000000000ull);
    ck_assert_int_eq(caldera_meta_get_array(m, "t.arr_f64", &et, &n, &d), 0);
    ck_assert(((const double *) d)[0] == 1e-300);
    ck_assert_int_eq(caldera_meta_get_array(m, "t.arr_bool", &et, &n, &d), 0);
    ck_assert_int_eq(et, CALDERA_META_BOOL);
    ck_assert_int_eq(((const uint8_t *) d)[0] + 2 * ((const uint8_t *) d)[1] + 4 * ((const uint8_t *) d)[2], 5);
    ck_assert_int_eq(caldera_meta_get_array(m, "t.arr_str", &et, &n, &d), 0);
    ck_assert_int_eq(et, CALDERA_META_STRING);
    ck_assert_int_eq(n, 3);
    ck_assert_str_eq(((char * const *) d)[0], "a");
    ck_assert_str_eq(((char * const *) d)[1], "");
    ck_assert_str_eq(((char * const *) d)[2], "tokens \xe2\x96\x81x");

    // alignment 64: the tensors come from the right offsets
    struct caldera_tensor t;
    int                   owned;
    ck_assert_int_eq(h.ops->read_tensor(h.inst, find_tensor(&h, "a"), CALDERA_DTYPE_F32, &t, &owned), 0);
    for (int k = 0; k < 40; k++) ck_assert_float_eq(((float *) t.data)[k], (float) k);
    ck_assert_int_eq(h.ops->read_tensor(h.inst, find_tensor(&h, "b"), CALDERA_DTYPE_F32, &t, &owned), 0);
    for (int k = 0; k < 8; k++) ck_assert_float_eq(((float *) t.data)[k], 2.0f * (float) k);
    // model_desc of a file without architecture hyper-parameters: zeros, tied
    struct caldera_model_desc md;
    ck_assert_int_eq(h.ops->model_desc(h.inst, &md), 0);
    ck_assert_str_eq(md.arch, "test");
    ck_assert_int_eq(md.n_layers, 0);
    ck_assert_int_eq(md.tied_embeddings, 1);
    h_free(&h);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// llama: model description, HF names, q/k permutation undone.

static void llama_permute(const float * hf, float * out, int64_t rows, int64_t cols, int64_t n_head) {
    // the converter: reshape(n_head, 2, hd/2, cols).swapaxes(1, 2) (written here from the formula
    // independently of the plugin): GGUF row h*hd + 2j + t holds HF row h*hd + t*hd/2 + j
    int64_t hd = rows / n_head;
    for (int64_t hh = 0; hh < n_head; hh++)
        for (int64_t j = 0; j < hd / 2; j++)
            for (int64_t t = 0; t < 2; t++)
                memcpy(out + (hh * hd + 2 * j + t) * cols, hf + (hh * hd + t * hd / 2 + j) * cols,
                       (size_t) cols * sizeof(float));
}

START_TEST(test_llama_desc_names_perm) {
    struct h h = h_new();
    ck_assert_int_eq(h.ops->open(h.inst, FIX("llama.gguf")), 0);
    struct caldera_model_desc md;
    ck_assert_int_eq(h.ops->model_desc(h.inst, &md), 0);
    ck_assert_str_eq(md.arch, "llama");
    ck_assert_int_eq(md.n_layers, 1);
    ck_assert_int_eq(md.hidden, 64);
    ck_assert_int_eq(md.ffn, 96);
    ck_assert_int_eq(md.n_heads, 4);
    ck_assert_int_eq(md.n_kv_heads, 2);
    ck_assert_int_eq(md.head_dim, 16);
    ck_assert_int_eq(md.vocab, 12);
    ck_assert_int_eq(md.ctx_len, 256);
    ck_assert(md.rope_theta == 10000.0);
    ck_assert_str_eq(md.rope_scaling, "linear");
    ck_assert(md.rope_scaling_factor == 2.0);
    ck_assert(fabs(md.norm_eps - 1e-5) < 1e-12);
    ck_assert_int_eq(md.tied_embeddings, 1);

    static const char * names[][2] = {
        { "token_embd.weight", "model.embed_tokens.weight" },
        { "blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight" },
        { "blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight" },
        { "blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight" },
        { "output_norm.weight", "model.norm.weight" },
    };
    struct caldera_tensor_info ti;
    for (int k = 0; k < 5; k++) {
        ck_assert_int_eq(h.ops->tensor_info(h.inst, k, &ti), 0);
        ck_assert_str_eq(ti.name, names[k][0]);
        ck_assert_str_eq(ti.hf_name, names[k][1]);
    }
    size_t  nexp;
    float * exp = read_floats(FIX("llama-expected.bin"), &nexp);
    ck_assert_uint_eq(nexp, 64 * 64 + 32 * 64);
    struct caldera_tensor q, k, kraw, v;
    int                   owned;
    ck_assert_int_eq(h.ops->read_tensor(h.inst, 1, CALDERA_DTYPE_F32, &q, &owned), 0);
    ck_assert_int_eq(owned, 1);   // permuted: a copy, even though stored as f32
    ck_assert_mem_eq(q.data, exp, 64 * 64 * sizeof(float));
    ck_assert_int_eq(h.ops->read_tensor(h.inst, 2, CALDERA_DTYPE_F32, &k, &owned), 0);
    for (int j = 0; j < 32 * 64; j++) ck_assert_float_eq_tol(((float *) k.data)[j], exp[4096 + j], GGUF_DEQ_TOL);
    // stored dtype (Q8_0) asked: raw rows permuted back, which dequantize to the same values
    ck_assert_int_eq(h.ops->read_tensor(h.inst, 2, CALDERA_DTYPE_Q8_0, &kraw, &owned), 0);
    ck_assert_int_eq(owned, 1);
    float row[64];
    for (int r = 0; r < 32; r++) {
        gguf_to_f32(gguf_type_by_id(8), CALDERA_DTYPE_Q8_0, (uint8_t *) kraw.data + r * 68, row, 64);
        ck_assert_mem_eq(row, (float *) k.data + r * 64, sizeof(row));
    }
    // v is not permuted: a view equal to the HF k values stored as is
    ck_assert_int_eq(h.ops->read_tensor(h.inst, 3, CALDERA_DTYPE_F32, &v, &owned), 0);
    ck_assert_int_eq(owned, 0);
    caldera_tensor_free(&k);
    caldera_tensor_free(&kraw);

    // hf_layout = 0: the stored (permuted) rows
    struct h h2 = h_create();
    ck_assert_int_eq(caldera_inst_set(h2.inst, "hf_layout", "false"), 0);
    ck_assert_int_eq(caldera_inst_start(h2.inst), 0);
    ck_assert_int_eq(h2.ops->open(h2.inst, FIX("llama.gguf")), 0);
    struct caldera_tensor qs;
    ck_assert_int_eq(h2.ops->read_tensor(h2.inst, 1, CALDERA_DTYPE_F32, &qs, &owned), 0);
    ck_assert_int_eq(owned, 0);
    float * perm = malloc(64 * 64 * sizeof(float));
    llama_permute(q.data, perm, 64, 64, 4);
    ck_assert_mem_eq(qs.data, perm, 64 * 64 * sizeof(float));
    free(perm);
    caldera_tensor_free(&q);
    caldera_free(exp);
    h_free(&h2);
    h_free(&h);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// Writer.

// update_meta replaces the file metadata; dtype keys of converted tensors (u8 stored as i8) survive.
START_TEST(test_update_meta) {
    struct h h = h_new();
    const char * path = tu_path(fresh_dir("upd"), "upd.gguf");
    char p2[700];
    snprintf(p2, sizeof(p2), "%s", path);
    struct caldera_meta * m1, * m2;
    ck_assert_int_eq(caldera_meta_init(&m1), 0);
    ck_assert_int_eq(caldera_meta_init(&m2), 0);
    caldera_meta_set_string(m1, "general.architecture", "test");
    caldera_meta_set_string(m1, "gone", "x");
    caldera_meta_set_string(m2, "general.architecture", "test");
    caldera_meta_set_string(m2, "caldera.report", "{\"ok\": 1}");
    assert_err(&h, h.ops->update_meta(h.inst, m2), CALDERA_ERR_INVAL, "update_meta: no file is being written");
    ck_assert_int_eq(h.ops->create(h.inst, p2, m1), 0);
    uint8_t u[6] = { 0, 1, 128, 200, 255, 7 };
    struct caldera_tensor tu8 = { u, CALDERA_DTYPE_U8, CALDERA_DEVICE_CPU, 1, { 6 }, 0 };
    ck_assert_int_eq(h.ops->write_tensor(h.inst, "u", &tu8), 0);
    ck_assert_int_eq(h.ops->update_meta(h.inst, m2), 0);
    ck_assert_int_eq(h.ops->finish(h.inst, 1), 0);
    caldera_meta_free(m1);
    caldera_meta_free(m2);
    h_free(&h);

    struct h r = h_new();
    ck_assert_int_eq(r.ops->open(r.inst, p2), 0);
    const char * s;
    ck_assert_int_eq(caldera_meta_get_string(r.ops->meta(r.inst), "caldera.report", &s), 0);
    ck_assert_str_eq(s, "{\"ok\": 1}");
    ck_assert_int_eq(caldera_meta_find(r.ops->meta(r.inst), "gone"), -1);
    struct caldera_tensor_info ti;
    ck_assert_int_eq(r.ops->tensor_info(r.inst, find_tensor(&r, "u"), &ti), 0);
    ck_assert_int_eq(ti.dtype, CALDERA_DTYPE_U8);
    struct caldera_tensor t;
    int owned = 0;
    ck_assert_int_eq(r.ops->read_tensor(r.inst, find_tensor(&r, "u"), CALDERA_DTYPE_U8, &t, &owned), 0);
    ck_assert_int_eq(memcmp(t.data, u, 6), 0);
    if (owned) caldera_tensor_free(&t);
    h_free(&r);
}
END_TEST

// Strings with NUL bytes (real tokenizers have a "\0" token) are written and read back whole.
START_TEST(test_strings_with_nul) {
    struct h h = h_new();
    const char * path = tu_path(fresh_dir("nul"), "nul.gguf");
    char p2[700];
    snprintf(p2, sizeof(p2), "%s", path);
    struct caldera_meta * m;
    ck_assert_int_eq(caldera_meta_init(&m), 0);
    ck_assert_int_eq(caldera_meta_set_string_n(m, "s", "a\0b", 3), 0);
    const char * strs[3] = { "<s>", "\0", "x\0y" };
    const size_t lens[3] = { 3, 1, 3 };
    ck_assert_int_eq(caldera_meta_set_string_array_n(m, "tokenizer.ggml.tokens", 3, strs, lens), 0);
    ck_assert_int_eq(h.ops->create(h.inst, p2, m), 0);
    ck_assert_int_eq(h.ops->finish(h.inst, 1), 0);
    caldera_meta_free(m);
    h_free(&h);
    struct h r = h_new();
    ck_assert_int_eq(r.ops->open(r.inst, p2), 0);
    const char * s;
    size_t len;
    ck_assert_int_eq(caldera_meta_get_string_n(r.ops->meta(r.inst), "s", &s, &len), 0);
    ck_assert_uint_eq(len, 3);
    ck_assert_int_eq(memcmp(s, "a\0b", 3), 0);
    int64_t n;
    const char * const * a;
    const size_t * l;
    ck_assert_int_eq(caldera_meta_get_string_array_n(r.ops->meta(r.inst), "tokenizer.ggml.tokens", &n, &a, &l), 0);
    ck_assert_int_eq(n, 3);
    ck_assert_uint_eq(l[1], 1);
    ck_assert_int_eq(a[1][0], 0);
    ck_assert_uint_eq(l[2], 3);
    ck_assert_int_eq(memcmp(a[2], "x\0y", 3), 0);
    h_free(&r);
}
END_TEST

START_TEST(test_write_roundtrip) {
    struct h h = h_create();
    ck_assert_int_eq(caldera_inst_set(h.inst, "alignment", "64"), 0);
    ck_assert_int_eq(caldera_inst_start(h.inst), 0);
    const char * dir  = getenv("GGUF_WRITE_SAMPLE_DIR") ? getenv("GGUF_WRITE_SAMPLE_DIR") : fresh_dir("rt");
    const char * path = tu_path(dir, "written.gguf");
    unlink(path);

    struct caldera_meta * m;
    ck_assert_int_eq(caldera_meta_init(&m), 0);
    ck_assert_int_eq(caldera_meta_set_string(m, "general.architecture", "test"), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "w.u8", CALDERA_META_U8, 250), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "w.i8", CALDERA_META_I8, -5), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "w.u16", CALDERA_META_U16, 65535), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "w.i16", CALDERA_META_I16, -32768), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "w.u32", CALDERA_META_U32, 4294967295), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "w.i32", CALDERA_META_I32, -7), 0);
    ck_assert_int_eq(caldera_meta_set_float(m, "w.f32", CALDERA_META_F32, -0.75), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "w.bool", CALDERA_META_BOOL, 1), 0);
    ck_assert_int_eq(caldera_meta_set_uint64(m, "w.u64", 18446744073709551615ull), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "w.i64", CALDERA_META_I64, INT64_MIN), 0);
    ck_assert_int_eq(caldera_meta_set_float(m, "w.f64", CALDERA_META_F64, 1.0 / 3.0), 0);
    ck_assert_int_eq(caldera_meta_set_string(m, "w.str", "caldera"), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "general.alignment", CALDERA_META_U32, 8), 0); // replaced by 64
    const int32_t ai[3] = { 1, -2, 3 };
    ck_assert_int_eq(caldera_meta_set_array(m, "w.arr_i32", CALDERA_META_I32, 3, ai), 0);
    ck_assert_int_eq(caldera_meta_set_array(m, "w.arr_empty", CALDERA_META_F32, 0, ai), 0);
    const char * strs[] = { "x", "", "yz" };
    ck_assert_int_eq(caldera_meta_set_array(m, "w.arr_str", CALDERA_META_STRING, 3, strs), 0);
    ck_assert_int_eq(h.ops->create(h.inst, path, m), 0);
    caldera_meta_free(m);
    ck_assert(access(path, F_OK) != 0);   // nothing under the final name before finish

    // a strided 2-d f32 view (ld 7 > 5) and one tensor of each plain dtype
    float big[4 * 7];
    for (int k = 0; k < 28; k++) big[k] = (float) k * 0.5f - 3.0f;
    struct caldera_tensor w32 = { big, CALDERA_DTYPE_F32, CALDERA_DEVICE_CPU, 2, { 4, 5 }, 7 };
    ck_assert_int_eq(h.ops->write_tensor(h.inst, "w.f32", &w32), 0);
    static const enum caldera_dtype dts[] = {
        CALDERA_DTYPE_F16, CALDERA_DTYPE_BF16, CALDERA_DTYPE_F64, CALDERA_DTYPE_I8, CALDERA_DTYPE_I16,
        CALDERA_DTYPE_I32, CALDERA_DTYPE_I64, CALDERA_DTYPE_U8, CALDERA_DTYPE_U16, CALDERA_DTYPE_U32,
        CALDERA_DTYPE_U64, CALDERA_DTYPE_BOOL,
    };
    uint8_t raw[12][3 * 6 * 8];
    for (size_t k = 0; k < 12; k++) {
        for (size_t b = 0; b < sizeof(raw[k]); b++) raw[k][b] = (uint8_t) (b * 7 + k * 13 + 1);
        if (dts[k] == CALDERA_DTYPE_BOOL) for (size_t b = 0; b < sizeof(raw[k]); b++) raw[k][b] &= 1;
        if (dts[k] == CALDERA_DTYPE_F16 || dts[k] == CALDERA_DTYPE_BF16 || dts[k] == CALDERA_DTYPE_F64) {
            float src[18];
            for (int e = 0; e < 18; e++) src[e] = (float) e - 8.5f;
            ck_assert_int_eq(caldera_convert_from_f32(dts[k], src, 18, raw[k]), 0);
        }
        struct caldera_tensor t = { raw[k], dts[k], CALDERA_DEVICE_CPU, 3, { 3, 1, 6 }, 0 };
        char name[32];
        snprintf(name, sizeof(name), "t.%s", caldera_dtype_name(dts[k]));
        ck_assert_int_eq(h.ops->write_tensor(h.inst, name, &t), 0);
    }
    // a block type, copied raw from the fixture
    struct h hq = h_new();
    ck_assert_int_eq(hq.ops->open(hq.inst, FIX("types.gguf")), 0);
    struct caldera_tensor q4;
    int                   owned;
    ck_assert_int_eq(hq.ops->read_tensor(hq.inst, find_tensor(&hq, "q4_k"), CALDERA_DTYPE_Q4_K, &q4, &owned), 0);
    ck_assert_int_eq(h.ops->write_tensor(h.inst, "t.q4_k", &q4), 0);
    float one = 42.0f;
    struct caldera_tensor s1 = { &one, CALDERA_DTYPE_F32, CALDERA_DEVICE_CPU, 1, { 1 }, 0 };
    ck_assert_int_eq(h.ops->write_tensor(h.inst, "scalar", &s1), 0);
    ck_assert(access(path, F_OK) != 0);
    ck_assert_int_eq(h.ops->finish(h.inst, 1), 0);
    ck_assert(access(path, F_OK) == 0);
    ck_assert_int_eq(count_dir(dir), 1);   // no temporary left behind

    // read back
    struct h r = h_new();
    ck_assert_int_eq(r.ops->open(r.inst, path), 0);
    ck_assert_int_eq(r.ops->n_tensors(r.inst), 15);
    const struct caldera_meta * rm = r.ops->meta(r.inst);
    int64_t                     v;
    double                      f;
    const char *                s;
    ck_assert_int_eq(caldera_meta_get_int(rm, "general.alignment", &v), 0);
    ck_assert_int_eq(v, 64);
    ck_assert_int_eq(caldera_meta_get_int(rm, "w.u8", &v), 0);    ck_assert_int_eq(v, 250);
    ck_assert_int_eq(caldera_meta_get_int(rm, "w.i8", &v), 0);    ck_assert_int_eq(v, -5);
    ck_assert_int_eq(caldera_meta_get_int(rm, "w.u16", &v), 0);   ck_assert_int_eq(v, 65535);
    ck_assert_int_eq(caldera_meta_get_int(rm, "w.i16", &v), 0);   ck_assert_int_eq(v, -32768);
    ck_assert_int_eq(caldera_meta_get_int(rm, "w.u32", &v), 0);   ck_assert_int_eq(v, 4294967295);
    ck_assert_int_eq(caldera_meta_get_int(rm, "w.i32", &v), 0);   ck_assert_int_eq(v, -7);
    ck_assert_int_eq(caldera_meta_get_int(rm, "w.bool", &v), 0);  ck_assert_int_eq(v, 1);
    ck_assert_int_eq(caldera_meta_get_int(rm, "w.i64", &v), 0);   ck_assert(v == INT64_MIN);
    ck_assert_int_eq(caldera_meta_get_int(rm, "w.u64", &v), CALDERA_ERR_RANGE);
    ck_assert((uint64_t) v == 18446744073709551615ull);
    ck_assert_int_eq(caldera_meta_get_float(rm, "w.f32", &f), 0); ck_assert(f == -0.75);
    ck_assert_int_eq(caldera_meta_get_float(rm, "w.f64", &f), 0); ck_assert(f == 1.0 / 3.0);
    ck_assert_int_eq(caldera_meta_get_string(rm, "w.str", &s), 0); ck_assert_str_eq(s, "caldera");
    ck_assert_int_eq(caldera_meta_type_of(rm, caldera_meta_find(rm, "w.u16")), CALDERA_META_U16);
    enum caldera_meta_type et;
    int64_t                n;
    const void *           d;
    ck_assert_int_eq(caldera_meta_get_array(rm, "w.arr_i32", &et, &n, &d), 0);
    ck_assert_int_eq(et, CALDERA_META_I32);
    ck_assert_mem_eq(d, ai, sizeof(ai));
    ck_assert_int_eq(caldera_meta_get_array(rm, "w.arr_empty", &et, &n, &d), 0);
    ck_assert_int_eq(et, CALDERA_META_F32);
    ck_assert_int_eq(n, 0);
    ck_assert_int_eq(caldera_meta_get_array(rm, "w.arr_str", &et, &n, &d), 0);
    ck_assert_int_eq(n, 3);
    ck_assert_str_eq(((char * const *) d)[2], "yz");

    struct caldera_tensor t;
    ck_assert_int_eq(r.ops->read_tensor(r.inst, find_tensor(&r, "w.f32"), CALDERA_DTYPE_F32, &t, &owned), 0);
    ck_assert_int_eq(t.ne[0], 4);
    ck_assert_int_eq(t.ne[1], 5);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 5; j++) ck_assert_float_eq(((float *) t.data)[i * 5 + j], big[i * 7 + j]);
    for (size_t k = 0; k < 12; k++) {
        char name[32];
        snprintf(name, sizeof(name), "t.%s", caldera_dtype_name(dts[k]));
        struct caldera_tensor_info ti;
        int64_t                    i = find_tensor(&r, name);
        ck_assert_int_eq(r.ops->tensor_info(r.inst, i, &ti), 0);
        ck_assert_msg(ti.dtype == dts[k], "%s read back as %s", name, caldera_dtype_name(ti.dtype));
        ck_assert_int_eq(ti.ndim, 3);
        ck_assert_int_eq(ti.ne[0], 3);
        ck_assert_int_eq(ti.ne[2], 6);
        ck_assert_int_eq(r.ops->read_tensor(r.inst, i, dts[k], &t, &owned), 0);
        ck_assert_int_eq(owned, 0);
        ck_assert_mem_eq(t.data, raw[k], ti.nbytes);
        // as f32 too: the same as the core's conversion
        float a[18], b[18];
        ck_assert_int_eq(r.ops->read_tensor(r.inst, i, CALDERA_DTYPE_F32, &t, &owned), 0);
        memcpy(a, t.data, sizeof(a));
        if (owned) caldera_tensor_free(&t);
        ck_assert_int_eq(caldera_convert_to_f32(dts[k], raw[k], 18, b), 0);
        ck_assert_mem_eq(a, b, sizeof(a));
    }
    struct caldera_tensor q4b;
    ck_assert_int_eq(r.ops->read_tensor(r.inst, find_tensor(&r, "t.q4_k"), CALDERA_DTYPE_Q4_K, &q4b, &owned), 0);
    ck_assert_mem_eq(q4b.data, q4.data, 3 * 2 * 144);
    ck_assert_int_eq(r.ops->read_tensor(r.inst, find_tensor(&r, "scalar"), CALDERA_DTYPE_F32, &t, &owned), 0);
    ck_assert_float_eq(((float *) t.data)[0], 42.0f);
    // (the reader checked every data offset against general.alignment = 64 when it opened the file)
    h_free(&r);
    h_free(&hq);
    h_free(&h);
}
END_TEST

// Writing an HF-layout q/k under llama names with the converter's permutation, then reading it:
// the permute -> unpermute round trip gives back the HF matrices exactly.
START_TEST(test_llama_permutation_roundtrip) {
    struct h     h    = h_new();
    const char * path = tu_path(fresh_dir("perm"), "llama.gguf");
    const int64_t n_head = 6, n_kv = 2, hd = 8, cols = 48;
    struct caldera_meta * m;
    ck_assert_int_eq(caldera_meta_init(&m), 0);
    ck_assert_int_eq(caldera_meta_set_string(m, "general.architecture", "llama"), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "llama.attention.head_count", CALDERA_META_U32, n_head), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "llama.attention.head_count_kv", CALDERA_META_U32, n_kv), 0);
    ck_assert_int_eq(h.ops->create(h.inst, path, m), 0);
    caldera_meta_free(m);
    struct caldera_tensor hq = tu_randn(h.ctx, n_head * hd, cols, 1), hk = tu_randn(h.ctx, n_kv * hd, cols, 2);
    struct caldera_tensor pq = tu_randn(h.ctx, n_head * hd, cols, 3), pk = tu_randn(h.ctx, n_kv * hd, cols, 4);
    llama_permute(hq.data, pq.data, n_head * hd, cols, n_head);
    llama_permute(hk.data, pk.data, n_kv * hd, cols, n_kv);
    ck_assert_int_eq(h.ops->write_tensor(h.inst, "blk.3.attn_q.weight", &pq), 0);
    ck_assert_int_eq(h.ops->write_tensor(h.inst, "blk.3.attn_k.weight", &pk), 0);
    float bias[48];
    float pbias[48];
    for (int k = 0; k < 48; k++) bias[k] = (float) k;
    llama_permute(bias, pbias, 48, 1, n_head);
    struct caldera_tensor pb = { pbias, CALDERA_DTYPE_F32, CALDERA_DEVICE_CPU, 1, { 48 }, 0 };
    ck_assert_int_eq(h.ops->write_tensor(h.inst, "blk.3.attn_q.bias", &pb), 0);
    ck_assert_int_eq(h.ops->finish(h.inst, 1), 0);

    struct h r = h_new();
    ck_assert_int_eq(r.ops->open(r.inst, path), 0);
    struct caldera_tensor t;
    struct caldera_tensor_info ti;
    int                   owned;
    ck_assert_int_eq(r.ops->tensor_info(r.inst, 0, &ti), 0);
    ck_assert_str_eq(ti.hf_name, "model.layers.3.self_attn.q_proj.weight");
    ck_assert_int_eq(r.ops->read_tensor(r.inst, 0, CALDERA_DTYPE_F32, &t, &owned), 0);
    ck_assert_mem_eq(t.data, hq.data, (size_t) (n_head * hd * cols) * sizeof(float));
    caldera_tensor_free(&t);
    ck_assert_int_eq(r.ops->read_tensor(r.inst, 1, CALDERA_DTYPE_F32, &t, &owned), 0);
    ck_assert_mem_eq(t.data, hk.data, (size_t) (n_kv * hd * cols) * sizeof(float));
    caldera_tensor_free(&t);
    ck_assert_int_eq(r.ops->tensor_info(r.inst, 2, &ti), 0);
    ck_assert_str_eq(ti.hf_name, "model.layers.3.self_attn.q_proj.bias");
    ck_assert_int_eq(r.ops->read_tensor(r.inst, 2, CALDERA_DTYPE_F32, &t, &owned), 0);
    ck_assert_mem_eq(t.data, bias, sizeof(bias));
    caldera_tensor_free(&t);
    // as stored dtype (f32): also unpermuted
    ck_assert_int_eq(r.ops->read_tensor(r.inst, 2, CALDERA_DTYPE_F16, &t, &owned), 0);
    for (int k = 0; k < 48; k++) ck_assert_float_eq(caldera_f16_to_f32(((uint16_t *) t.data)[k]), (float) k);
    caldera_tensor_free(&t);
    caldera_tensor_free(&hq);
    caldera_tensor_free(&hk);
    caldera_tensor_free(&pq);
    caldera_tensor_free(&pk);
    h_free(&r);
    h_free(&h);
}
END_TEST

// Permutation preconditions, model_desc without an architecture, and the dtype convention key.
START_TEST(test_llama_perm_errors_and_convention) {
    struct h     h    = h_new();
    const char * dir  = fresh_dir("perm-err");
    const char * path = tu_path(dir, "a.gguf");
    float        x[8 * 4] = { 0 };
    uint8_t      u[4] = { 1, 2, 250, 255 };
    struct caldera_tensor q  = { x, CALDERA_DTYPE_F32, CALDERA_DEVICE_CPU, 2, { 8, 4 }, 4 };
    struct caldera_tensor uu = { u, CALDERA_DTYPE_U8, CALDERA_DEVICE_CPU, 1, { 4 }, 0 };
    struct caldera_meta * m;
    ck_assert_int_eq(caldera_meta_init(&m), 0);
    ck_assert_int_eq(caldera_meta_set_string(m, "general.architecture", "llama"), 0);
    ck_assert_int_eq(caldera_meta_set_string(m, GGUF_KEY_U, "u8"), 0);       // stale: dropped
    ck_assert_int_eq(caldera_meta_set_string(m, "caldera.gguf.dtype.v", "u8"), 0);
    ck_assert_int_eq(h.ops->create(h.inst, path, m), 0);
    ck_assert_int_eq(h.ops->write_tensor(h.inst, "blk.0.attn_q.weight", &q), 0);
    ck_assert_int_eq(h.ops->write_tensor(h.inst, "u", &uu), 0);
    ck_assert_int_eq(h.ops->finish(h.inst, 1), 0);
    caldera_meta_free(m);

    // no head count: q cannot be unpermuted; the convention key of 'u' is there once
    struct h r = h_new();
    ck_assert_int_eq(r.ops->open(r.inst, path), 0);
    struct caldera_tensor t;
    int                   owned;
    int rc = r.ops->read_tensor(r.inst, 0, CALDERA_DTYPE_F32, &t, &owned);
    assert_err(&r, rc, CALDERA_ERR_FORMAT, "tensor 'blk.0.attn_q.weight': llama.attention.head_count is missing");
    struct caldera_tensor_info ti;
    ck_assert_int_eq(r.ops->tensor_info(r.inst, 1, &ti), 0);
    ck_assert_int_eq(ti.dtype, CALDERA_DTYPE_U8);
    ck_assert_int_eq(r.ops->read_tensor(r.inst, 1, CALDERA_DTYPE_F32, &t, &owned), 0);
    ck_assert_float_eq(((float *) t.data)[3], 255.0f);
    caldera_tensor_free(&t);

    // the meta of that file copied into a new one, with 'u' written again: still one key
    const char * path2 = tu_path(dir, "b.gguf");
    ck_assert_int_eq(caldera_meta_init(&m), 0);
    ck_assert_int_eq(caldera_meta_copy(m, r.ops->meta(r.inst)), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "llama.attention.head_count", CALDERA_META_U32, 3), 0);
    ck_assert_int_eq(h.ops->create(h.inst, path2, m), 0);
    caldera_meta_free(m);
    ck_assert_int_eq(h.ops->write_tensor(h.inst, "blk.0.attn_q.weight", &q), 0);
    ck_assert_int_eq(h.ops->write_tensor(h.inst, "u", &uu), 0);
    struct caldera_tensor v = { x, CALDERA_DTYPE_F32, CALDERA_DEVICE_CPU, 1, { 4 }, 0 };
    ck_assert_int_eq(h.ops->write_tensor(h.inst, "v", &v), 0);
    ck_assert_int_eq(h.ops->finish(h.inst, 1), 0);
    h_free(&r);

    r = h_new();
    ck_assert_int_eq(r.ops->open(r.inst, path2), 0);
    // 8 rows are not 3 heads of an even size
    rc = r.ops->read_tensor(r.inst, 0, CALDERA_DTYPE_F32, &t, &owned);
    assert_err(&r, rc, CALDERA_ERR_FORMAT, "8 rows are not 3 heads of an even head size");
    ck_assert_int_eq(r.ops->tensor_info(r.inst, 1, &ti), 0);
    ck_assert_int_eq(ti.dtype, CALDERA_DTYPE_U8);
    // the stale key for 'v' (f32) given in the meta was not written
    ck_assert_int_eq(r.ops->tensor_info(r.inst, 2, &ti), 0);
    ck_assert_int_eq(ti.dtype, CALDERA_DTYPE_F32);
    ck_assert_int_eq(caldera_meta_find(r.ops->meta(r.inst), "caldera.gguf.dtype.v"), -1);
    h_free(&r);

    // no general.architecture
    const char * path3 = tu_path(dir, "c.gguf");
    ck_assert_int_eq(h.ops->create(h.inst, path3, NULL), 0);
    ck_assert_int_eq(h.ops->finish(h.inst, 1), 0);
    r = h_new();
    ck_assert_int_eq(r.ops->open(r.inst, path3), 0);
    ck_assert_int_eq(r.ops->n_tensors(r.inst), 0);
    struct caldera_model_desc md;
    rc = r.ops->model_desc(r.inst, &md);
    assert_err(&r, rc, CALDERA_ERR_NOT_FOUND, "no string key 'general.architecture'");
    h_free(&r);
    h_free(&h);
}
END_TEST

// HF llama names in, llama.cpp names and q/k row order out (gguf_names = 1, the default): the
// stored rows equal the converter's permutation (computed by the test), and the reader gives
// the HF names and values back. gguf_names = 0 keeps HF names and layout.
START_TEST(test_write_hf_names_llama_layout) {
    const int64_t n_head = 4, n_kv = 2, hd = 8, cols = 32;
    const char *  dir = fresh_dir("hfnames");
    struct caldera_meta * m;
    ck_assert_int_eq(caldera_meta_init(&m), 0);
    ck_assert_int_eq(caldera_meta_set_string(m, "general.architecture", "llama"), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "llama.attention.head_count", CALDERA_META_U32, n_head), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "llama.attention.head_count_kv", CALDERA_META_U32, n_kv), 0);
    struct caldera_ctx *  c0 = tu_ctx();
    struct caldera_tensor q  = tu_randn(c0, n_head * hd, cols + 3, 11);   // strided view below
    struct caldera_tensor k  = tu_randn(c0, n_kv * hd, cols, 12);
    struct caldera_tensor e  = tu_randn(c0, 10, cols, 13);
    struct caldera_tensor qv = q;
    qv.ne[1] = cols;   // ld stays cols + 3
    float bias[32];
    for (int i = 0; i < 32; i++) bias[i] = (float) i;
    struct caldera_tensor b = { bias, CALDERA_DTYPE_F32, CALDERA_DEVICE_CPU, 1, { 32 }, 0 };

    for (int mode = 1; mode >= 0; mode--) {
        struct h     h    = h_create();
        const char * path = tu_path(dir, mode ? "gguf-names.gguf" : "hf-names.gguf");
        if (!mode) ck_assert_int_eq(caldera_inst_set(h.inst, "gguf_names", "false"), 0);
        ck_assert_int_eq(caldera_inst_set(h.inst, "path", path), 0);
        ck_assert_int_eq(caldera_inst_start(h.inst), 0);
        ck_assert_int_eq(h.ops->create(h.inst, NULL, m), 0);   // the path comes from the option
        ck_assert_int_eq(h.ops->write_tensor(h.inst, "model.layers.0.self_attn.q_proj.weight", &qv), 0);
        ck_assert_int_eq(h.ops->write_tensor(h.inst, "model.layers.0.self_attn.k_proj.weight", &k), 0);
        ck_assert_int_eq(h.ops->write_tensor(h.inst, "model.layers.0.self_attn.q_proj.bias", &b), 0);
        ck_assert_int_eq(h.ops->write_tensor(h.inst, "model.embed_tokens.weight", &e), 0);
        ck_assert_int_eq(h.ops->write_tensor(h.inst, "model.layers.0.self_attn.q_proj.weight.Q.codes", &e), 0);
        ck_assert_int_eq(h.ops->finish(h.inst, 1), 0);
        h_free(&h);

        static const char * gg[] = { "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_q.bias",
                                     "token_embd.weight", "model.layers.0.self_attn.q_proj.weight.Q.codes" };
        static const char * hf[] = { "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                                     "model.layers.0.self_attn.q_proj.bias", "model.embed_tokens.weight",
                                     "model.layers.0.self_attn.q_proj.weight.Q.codes" };
        // reader with hf_layout: names and values as written
        struct h r = h_new();
        ck_assert_int_eq(r.ops->open(r.inst, path), 0);
        struct caldera_tensor_info ti;
        struct caldera_tensor      t;
        int                        owned;
        for (int i = 0; i < 5; i++) {
            ck_assert_int_eq(r.ops->tensor_info(r.inst, i, &ti), 0);
            ck_assert_str_eq(ti.name, mode || i == 4 ? gg[i] : hf[i]);
            ck_assert_str_eq(ti.hf_name, hf[i]);
        }
        ck_assert_int_eq(r.ops->read_tensor(r.inst, 0, CALDERA_DTYPE_F32, &t, &owned), 0);
        for (int64_t i = 0; i < n_head * hd; i++) {
            ck_assert_mem_eq((float *) t.data + i * cols, (float *) q.data + i * (cols + 3), cols * sizeof(float));
        }
        if (owned) caldera_tensor_free(&t);
        ck_assert_int_eq(r.ops->read_tensor(r.inst, 1, CALDERA_DTYPE_F32, &t, &owned), 0);
        ck_assert_mem_eq(t.data, k.data, (size_t) (n_kv * hd * cols) * sizeof(float));
        if (owned) caldera_tensor_free(&t);
        ck_assert_int_eq(r.ops->read_tensor(r.inst, 2, CALDERA_DTYPE_F32, &t, &owned), 0);
        ck_assert_mem_eq(t.data, bias, sizeof(bias));
        if (owned) caldera_tensor_free(&t);
        h_free(&r);

        // as stored: llama.cpp's order with GGUF names, HF order with HF names
        r = h_create();
        ck_assert_int_eq(caldera_inst_set(r.inst, "hf_layout", "false"), 0);
        ck_assert_int_eq(caldera_inst_set(r.inst, "path", path), 0);
        ck_assert_int_eq(caldera_inst_start(r.inst), 0);
        ck_assert_int_eq(r.ops->open(r.inst, NULL), 0);
        float * pk = malloc((size_t) (n_kv * hd * cols) * sizeof(float));
        llama_permute(k.data, pk, n_kv * hd, cols, n_kv);
        ck_assert_int_eq(r.ops->read_tensor(r.inst, 1, CALDERA_DTYPE_F32, &t, &owned), 0);
        ck_assert_int_eq(owned, 0);
        ck_assert_mem_eq(t.data, mode ? pk : k.data, (size_t) (n_kv * hd * cols) * sizeof(float));
        float pb[32];
        llama_permute(bias, pb, 32, 1, n_head);
        ck_assert_int_eq(r.ops->read_tensor(r.inst, 2, CALDERA_DTYPE_F32, &t, &owned), 0);
        ck_assert_mem_eq(t.data, mode ? pb : bias, sizeof(pb));
        free(pk);
        h_free(&r);
    }
    caldera_meta_free(m);

    // arch llama without head counts: q_proj cannot be written in llama.cpp's order
    struct h h = h_new();
    ck_assert_int_eq(caldera_meta_init(&m), 0);
    ck_assert_int_eq(caldera_meta_set_string(m, "general.architecture", "llama"), 0);
    ck_assert_int_eq(h.ops->create(h.inst, tu_path(dir, "noheads.gguf"), m), 0);
    caldera_meta_free(m);
    int rc = h.ops->write_tensor(h.inst, "model.layers.0.self_attn.q_proj.weight", &k);
    assert_err(&h, rc, CALDERA_ERR_INVAL, "tensor 'model.layers.0.self_attn.q_proj.weight' (blk.0.attn_q.weight): "
               "llama.attention.head_count is not in the metadata");
    ck_assert_int_eq(h.ops->write_tensor(h.inst, "model.layers.0.self_attn.v_proj.weight", &k), 0);   // no permutation
    ck_assert_int_eq(h.ops->finish(h.inst, 0), 0);
    // neither a path argument nor the option
    rc = h.ops->open(h.inst, NULL);
    assert_err(&h, rc, CALDERA_ERR_INVAL, "open: no file given; set option 'path'");
    rc = h.ops->create(h.inst, "", NULL);
    assert_err(&h, rc, CALDERA_ERR_INVAL, "create: no file given; set option 'path'");
    h_free(&h);
    caldera_tensor_free(&q);
    caldera_tensor_free(&k);
    caldera_tensor_free(&e);
    caldera_ctx_free(c0);
}
END_TEST

START_TEST(test_write_abort_and_errors) {
    struct h     h   = h_new();
    const char * dir = fresh_dir("abort");
    const char * path = tu_path(dir, "out.gguf");
    float        x[32] = { 0 };
    struct caldera_tensor t = { x, CALDERA_DTYPE_F32, CALDERA_DEVICE_CPU, 2, { 2, 16 }, 16 };
    int rc = h.ops->write_tensor(h.inst, "a", &t);
    assert_err(&h, rc, CALDERA_ERR_INVAL, "no file is being written; call create first");
    rc = h.ops->finish(h.inst, 1);
    assert_err(&h, rc, CALDERA_ERR_INVAL, "finish: no file is being written");

    ck_assert_int_eq(h.ops->create(h.inst, path, NULL), 0);
    ck_assert_int_eq(count_dir(dir), 1);   // the temporary
    ck_assert_int_eq(h.ops->write_tensor(h.inst, "a", &t), 0);
    rc = h.ops->write_tensor(h.inst, "a", &t);
    assert_err(&h, rc, CALDERA_ERR_INVAL, "tensor 'a' was already written; names must be unique");
    struct caldera_tensor f8 = { x, CALDERA_DTYPE_F8_E4M3, CALDERA_DEVICE_CPU, 1, { 8 }, 0 };
    rc = h.ops->write_tensor(h.inst, "f8", &f8);
    assert_err(&h, rc, CALDERA_ERR_UNSUPPORTED, "tensor 'f8': dtype f8_e4m3 has no GGUF type");
    struct caldera_tensor q = { x, CALDERA_DTYPE_Q8_0, CALDERA_DEVICE_CPU, 2, { 1, 48 }, 48 };
    rc = h.ops->write_tensor(h.inst, "q", &q);
    assert_err(&h, rc, CALDERA_ERR_INVAL, "rows of 48 elements are not a multiple of the Q8_0 block size 32");
    struct caldera_tensor z = { x, CALDERA_DTYPE_F32, CALDERA_DEVICE_CPU, 0, { 0 }, 0 };
    rc = h.ops->write_tensor(h.inst, "z", &z);
    assert_err(&h, rc, CALDERA_ERR_INVAL, "tensor 'z' has 0 dimensions; allowed 1..4");
    rc = h.ops->open(h.inst, FIX("types.gguf"));
    assert_err(&h, rc, CALDERA_ERR_INVAL, "already has a file open");
    ck_assert_int_eq(h.ops->finish(h.inst, 0), 0);
    ck_assert(access(path, F_OK) != 0);
    ck_assert_int_eq(count_dir(dir), 0);

    // an instance freed in the middle of writing removes its temporary
    ck_assert_int_eq(h.ops->create(h.inst, path, NULL), 0);
    ck_assert_int_eq(h.ops->write_tensor(h.inst, "a", &t), 0);
    ck_assert_int_eq(count_dir(dir), 1);
    h_free(&h);
    ck_assert_int_eq(count_dir(dir), 0);

    // a folder that does not exist
    struct h h2 = h_new();
    rc = h2.ops->create(h2.inst, "/nonexistent-dir-caldera/x.gguf", NULL);
    assert_err(&h2, rc, CALDERA_ERR_IO, "cannot create a temporary file beside it");
    h_free(&h2);
    // option check
    struct h h3 = h_create();
    ck_assert_int_eq(caldera_inst_set(h3.inst, "alignment", "48"), 0);
    rc = caldera_inst_start(h3.inst);
    assert_err(&h3, rc, CALDERA_ERR_RANGE, "option 'alignment' = 48 is not a power of two");
    h_free(&h3);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// Malformed files, built here from a small valid layout.

struct bb {
    uint8_t * p;
    size_t    n, cap;
};

static void bb_put(struct bb * b, const void * d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p   = realloc(b->p, b->cap);
        ck_assert_ptr_nonnull(b->p);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void bb_u32(struct bb * b, uint32_t v) { bb_put(b, &v, 4); }
static void bb_u64(struct bb * b, uint64_t v) { bb_put(b, &v, 8); }
static void bb_str(struct bb * b, const char * s) { bb_u64(b, strlen(s)); bb_put(b, s, strlen(s)); }
static void bb_pad(struct bb * b, size_t a) { while (b->n % a) bb_put(b, "", 1); }

struct tspec {
    const char * name;
    size_t       nlen;   // 0: strlen(name)
    uint32_t     ndim;
    uint64_t     dims[6];
    uint32_t     type;
    uint64_t     offset;
};

struct spec {
    const char * magic;
    uint32_t     version;
    int          n_tensors_override, n_kv_override;   // -1: the true counts
    uint64_t     n_tensors_raw, n_kv_raw;             // used when the override is -2
    struct bb    kv;                                  // extra key/values (raw)
    int          n_extra_kv;
    int          nt;
    struct tspec t[4];
    size_t       align;
    size_t       data_bytes;
};

static struct spec spec_valid(void) {
    struct spec s = { "GGUF", 3, -1, -1, 0, 0, { 0 }, 0, 2, {
        { "a", 0, 2, { 8, 2 }, 0, 0 },
        { "b", 0, 1, { 8 }, 0, 64 },
    }, 32, 96 };
    return s;
}

static const char * spec_write(struct spec * s, const char * tag) {
    struct bb b = { 0 };
    bb_put(&b, s->magic, 4);
    bb_u32(&b, s->version);
    bb_u64(&b, s->n_tensors_override == -2 ? s->n_tensors_raw : (uint64_t) s->nt);
    bb_u64(&b, s->n_kv_override == -2 ? s->n_kv_raw : (uint64_t) (1 + s->n_extra_kv));
    bb_str(&b, "general.architecture");
    bb_u32(&b, CALDERA_META_STRING);
    bb_str(&b, "test");
    if (s->kv.n) bb_put(&b, s->kv.p, s->kv.n);
    for (int i = 0; i < s->nt; i++) {
        size_t nl = s->t[i].nlen ? s->t[i].nlen : strlen(s->t[i].name);
        bb_u64(&b, nl);
        bb_put(&b, s->t[i].name, nl);
        bb_u32(&b, s->t[i].ndim);
        for (uint32_t d = 0; d < s->t[i].ndim && d < 6; d++) bb_u64(&b, s->t[i].dims[d]);
        bb_u32(&b, s->t[i].type);
        bb_u64(&b, s->t[i].offset);
    }
    bb_pad(&b, s->align);
    for (size_t k = 0; k < s->data_bytes / 4; k++) {
        float v = (float) k;
        bb_put(&b, &v, 4);
    }
    const char * path = tu_path(tu_tmpdir(), tag);
    FILE *       f    = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(b.p, 1, b.n, f), b.n);
    fclose(f);
    free(b.p);
    free(s->kv.p);
    return path;
}

// Open the file of spec s: expect code and message fragment (0: success, then read everything).
static void expect_open(struct spec * s, const char * tag, int code, const char * frag) {
    const char * path = spec_write(s, tag);
    struct h     h    = h_new();
    int          rc   = h.ops->open(h.inst, path);
    if (code == 0) {
        ck_assert_msg(rc == 0, "%s: %s", tag, caldera_ctx_errmsg(h.ctx));
    } else {
        assert_err(&h, rc, code, frag);
        ck_assert_msg(strstr(caldera_ctx_errmsg(h.ctx), path) != NULL, "message names the file");
        ck_assert_int_eq(h.ops->n_tensors(h.inst), 0);
    }
    h_free(&h);
}

START_TEST(test_bad_valid_base) {
    struct spec s = spec_valid();
    expect_open(&s, "valid.gguf", 0, NULL);
    s = spec_valid();
    s.version = 2;   // v2 has the same layout
    expect_open(&s, "v2.gguf", 0, NULL);
}
END_TEST

START_TEST(test_bad_magic) {
    struct spec s = spec_valid();
    s.magic = "GGML";
    expect_open(&s, "magic.gguf", CALDERA_ERR_FORMAT, "bad magic 47 47 4d 4c at offset 0; a GGUF file starts with \"GGUF\"");
}
END_TEST

START_TEST(test_bad_version) {
    struct spec s = spec_valid();
    s.version = 1;
    expect_open(&s, "v1.gguf", CALDERA_ERR_FORMAT, "offset 4: GGUF version 1 is not supported; allowed: 2, 3");
    s = spec_valid();
    s.version = 4;
    expect_open(&s, "v4.gguf", CALDERA_ERR_FORMAT, "GGUF version 4 is not supported");
    s = spec_valid();
    s.version = 3u << 24;
    expect_open(&s, "vbe.gguf", CALDERA_ERR_FORMAT, "big-endian file?");
}
END_TEST

START_TEST(test_bad_counts) {
    struct spec s = spec_valid();
    s.n_tensors_override = -2;
    s.n_tensors_raw      = UINT64_MAX / 2;
    expect_open(&s, "nt.gguf", CALDERA_ERR_FORMAT, "offset 8: n_tensors = 9223372036854775807 tensor infos cannot fit");
    s = spec_valid();
    s.n_kv_override = -2;
    s.n_kv_raw      = 1ull << 40;
    expect_open(&s, "nkv.gguf", CALDERA_ERR_FORMAT, "offset 16: n_kv = 1099511627776 key/values cannot fit");
    // more keys than the reader takes (the file is big enough for them)
    s = spec_valid();
    s.n_kv_override = -2;
    s.n_kv_raw      = (1 << 20) + 1;
    s.data_bytes    = ((1 << 20) + 1) * 13;
    expect_open(&s, "manykv.gguf", CALDERA_ERR_UNSUPPORTED, "offset 16: n_kv = 1048577 keys; at most 1048576 are read");
    // counts that fit the size bound but claim more entries than there are: truncation
    s = spec_valid();
    s.n_kv_override = -2;
    s.n_kv_raw      = 5;
    expect_open(&s, "nkv5.gguf", CALDERA_ERR_FORMAT, "offset 83: key 2 has length 562949953421312, past the end");
}
END_TEST

START_TEST(test_bad_lengths) {
    struct spec s = spec_valid();
    bb_u64(&s.kv, 1ull << 62);   // a key of 2^62 bytes
    s.n_extra_kv = 1;
    expect_open(&s, "keylen.gguf", CALDERA_ERR_FORMAT, "key 1 has length 4611686018427387904, past the end of the file");
    s = spec_valid();
    bb_str(&s.kv, "k.s");
    bb_u32(&s.kv, CALDERA_META_STRING);
    bb_u64(&s.kv, 1000000);
    s.n_extra_kv = 1;
    expect_open(&s, "strlen.gguf", CALDERA_ERR_FORMAT, "the value of key 'k.s' has length 1000000, past the end");
    s = spec_valid();
    bb_str(&s.kv, "k.a");
    bb_u32(&s.kv, CALDERA_META_ARRAY);
    bb_u32(&s.kv, CALDERA_META_U32);
    bb_u64(&s.kv, 1ull << 61);
    s.n_extra_kv = 1;
    expect_open(&s, "arrlen.gguf", CALDERA_ERR_FORMAT, "key 'k.a': array of 2305843009213693952 u32 elements runs past");
    s = spec_valid();
    bb_str(&s.kv, "k.sa");
    bb_u32(&s.kv, CALDERA_META_ARRAY);
    bb_u32(&s.kv, CALDERA_META_STRING);
    bb_u64(&s.kv, 1ull << 60);
    s.n_extra_kv = 1;
    expect_open(&s, "sarrlen.gguf", CALDERA_ERR_FORMAT, "key 'k.sa': array of 1152921504606846976 strings cannot fit");
    s = spec_valid();
    bb_str(&s.kv, "k.sa");
    bb_u32(&s.kv, CALDERA_META_ARRAY);
    bb_u32(&s.kv, CALDERA_META_STRING);
    bb_u64(&s.kv, 2);
    bb_str(&s.kv, "ok");
    bb_u64(&s.kv, 1ull << 50);
    s.n_extra_kv = 1;
    expect_open(&s, "sarrelem.gguf", CALDERA_ERR_FORMAT, "element 1 of key 'k.sa' has length 1125899906842624, past");
    s = spec_valid();
    s.t[0].name = "";
    s.t[0].ndim = 1;
    expect_open(&s, "emptyname.gguf", 0, NULL);   // empty names are legal
    // a tensor with a zero dimension has no data: any aligned offset, even past the end, is fine
    s = spec_valid();
    s.t[1].dims[0] = 0;
    s.t[1].offset  = 1ull << 40;
    const char * path = spec_write(&s, "empty.gguf");
    struct h     h    = h_new();
    ck_assert_int_eq(h.ops->open(h.inst, path), 0);
    struct caldera_tensor t;
    int                   owned;
    ck_assert_int_eq(h.ops->read_tensor(h.inst, 1, CALDERA_DTYPE_F32, &t, &owned), 0);
    ck_assert_int_eq(caldera_tensor_nelements(&t), 0);
    if (owned) caldera_tensor_free(&t);
    ck_assert_int_eq(h.ops->read_tensor(h.inst, 1, CALDERA_DTYPE_F16, &t, &owned), 0);
    ck_assert_int_eq(caldera_tensor_nelements(&t), 0);
    if (owned) caldera_tensor_free(&t);
    h_free(&h);
}
END_TEST

START_TEST(test_bad_kv_types) {
    struct spec s = spec_valid();
    bb_str(&s.kv, "k.x");
    bb_u32(&s.kv, 13);
    bb_u32(&s.kv, 0);
    s.n_extra_kv = 1;
    expect_open(&s, "kvtype.gguf", CALDERA_ERR_FORMAT, "key 'k.x': unknown value type 13; allowed 0..12");
    s = spec_valid();
    bb_str(&s.kv, "k.n");
    bb_u32(&s.kv, CALDERA_META_ARRAY);
    bb_u32(&s.kv, CALDERA_META_ARRAY);
    bb_u64(&s.kv, 1);
    bb_u32(&s.kv, CALDERA_META_U8);
    bb_u64(&s.kv, 1);
    bb_put(&s.kv, "x", 1);
    s.n_extra_kv = 1;
    expect_open(&s, "nested.gguf", CALDERA_ERR_UNSUPPORTED, "key 'k.n' is an array of arrays; nested arrays are not supported");
    s = spec_valid();
    bb_str(&s.kv, "k.e");
    bb_u32(&s.kv, CALDERA_META_ARRAY);
    bb_u32(&s.kv, 77);
    bb_u64(&s.kv, 0);
    s.n_extra_kv = 1;
    expect_open(&s, "elemtype.gguf", CALDERA_ERR_FORMAT, "key 'k.e': unknown array element type 77");
    s = spec_valid();
    bb_str(&s.kv, "general.architecture");
    bb_u32(&s.kv, CALDERA_META_U8);
    bb_put(&s.kv, "x", 1);
    s.n_extra_kv = 1;
    expect_open(&s, "dupkey.gguf", CALDERA_ERR_FORMAT, "duplicate key 'general.architecture'; keys must be unique");
    s = spec_valid();
    bb_u64(&s.kv, 3);
    bb_put(&s.kv, "a\0b", 3);
    bb_u32(&s.kv, CALDERA_META_U8);
    bb_put(&s.kv, "x", 1);
    s.n_extra_kv = 1;
    expect_open(&s, "nulkey.gguf", CALDERA_ERR_FORMAT, "key 1 contains a NUL byte");
}
END_TEST

// A dtype convention key that does not fit the storage type is ignored with a warning.
START_TEST(test_bad_convention_key) {
    struct spec s = spec_valid();
    bb_str(&s.kv, "caldera.gguf.dtype.a");
    bb_u32(&s.kv, CALDERA_META_STRING);
    bb_str(&s.kv, "u8");
    s.n_extra_kv = 1;
    const char * path = spec_write(&s, "conv.gguf");
    struct h     h    = h_new();
    tu_log_clear();
    ck_assert_int_eq(h.ops->open(h.inst, path), 0);
    struct caldera_tensor_info ti;
    ck_assert_int_eq(h.ops->tensor_info(h.inst, 0, &ti), 0);
    ck_assert_int_eq(ti.dtype, CALDERA_DTYPE_F32);
    ck_assert_ptr_nonnull(strstr(tu_log(), "caldera.gguf.dtype.a = 'u8' does not fit storage type F32; ignored"));
    h_free(&h);
}
END_TEST

static void add_alignment(struct spec * s, uint32_t type, uint64_t v) {
    bb_str(&s->kv, "general.alignment");
    bb_u32(&s->kv, type);
    if (type == CALDERA_META_STRING) bb_str(&s->kv, "32");
    else bb_put(&s->kv, &v, type == CALDERA_META_U64 ? 8 : 4);
    s->n_extra_kv = 1;
}

START_TEST(test_bad_alignment) {
    struct spec s = spec_valid();
    add_alignment(&s, CALDERA_META_U32, 48);
    expect_open(&s, "align48.gguf", CALDERA_ERR_FORMAT, "general.alignment = 48 is not a power of two");
    s = spec_valid();
    add_alignment(&s, CALDERA_META_U32, 0);
    expect_open(&s, "align0.gguf", CALDERA_ERR_FORMAT, "general.alignment = 0 is not a power of two");
    s = spec_valid();
    add_alignment(&s, CALDERA_META_STRING, 0);
    expect_open(&s, "alignstr.gguf", CALDERA_ERR_FORMAT, "key 'general.alignment' has type string");
    s = spec_valid();
    add_alignment(&s, CALDERA_META_U32, 64);
    s.align = 64;
    s.t[1].offset = 64;
    expect_open(&s, "align64.gguf", 0, NULL);
    s = spec_valid();
    add_alignment(&s, CALDERA_META_U32, 64);
    s.align = 64;
    s.t[1].offset = 32;
    expect_open(&s, "misal64.gguf", CALDERA_ERR_FORMAT, "data offset 32 is not a multiple of the alignment 64");
    s = spec_valid();
    add_alignment(&s, CALDERA_META_U64, 16);   // any integer type is accepted
    s.align = 16;
    s.t[1].offset = 64;
    expect_open(&s, "align16.gguf", 0, NULL);
}
END_TEST

START_TEST(test_bad_tensor_offsets) {
    struct spec s = spec_valid();
    s.t[1].offset = 96;
    expect_open(&s, "past.gguf", CALDERA_ERR_FORMAT, "tensor 'b': data [96, +32) of the data section at");
    s = spec_valid();
    s.t[1].offset = UINT64_MAX - 31;
    expect_open(&s, "pastwrap.gguf", CALDERA_ERR_FORMAT, "runs past the end of the file");
    s = spec_valid();
    s.t[1].offset = 40;
    expect_open(&s, "misaligned.gguf", CALDERA_ERR_FORMAT, "tensor 'b': data offset 40 is not a multiple of the alignment 32");
    s = spec_valid();
    s.t[1].offset = 32;
    expect_open(&s, "overlap.gguf", CALDERA_ERR_FORMAT, "tensors 'a' [0, 64) and 'b' [32, 64) overlap");
    s = spec_valid();
    s.data_bytes = 80;   // b ends 16 bytes after the end of the file
    expect_open(&s, "short.gguf", CALDERA_ERR_FORMAT, "tensor 'b': data [64, +32)");
}
END_TEST

START_TEST(test_bad_dims_types) {
    struct spec s = spec_valid();
    s.t[0].ndim = 0;
    expect_open(&s, "dim0.gguf", CALDERA_ERR_FORMAT, "tensor 'a' has 0 dimensions; allowed 1..4");
    s = spec_valid();
    s.t[0].ndim = 5;
    s.t[0].dims[2] = s.t[0].dims[3] = s.t[0].dims[4] = 1;
    expect_open(&s, "dim5.gguf", CALDERA_ERR_FORMAT, "tensor 'a' has 5 dimensions; allowed 1..4");
    s = spec_valid();
    s.t[0].ndim = 3;
    s.t[0].dims[0] = 1ull << 32;
    s.t[0].dims[1] = 1ull << 31;
    s.t[0].dims[2] = 4;
    expect_open(&s, "overflow.gguf", CALDERA_ERR_FORMAT, "tensor 'a': dimension 1 = 2147483648 makes the element count overflow 64 bits");
    s = spec_valid();
    s.t[0].dims[0] = 1ull << 63;
    expect_open(&s, "dimbig.gguf", CALDERA_ERR_FORMAT, "dimension 0 = 9223372036854775808 makes the element count");
    s = spec_valid();
    s.t[0].dims[0] = 1ull << 40;   // fits in 64 bits but not in the file
    expect_open(&s, "dimhuge.gguf", CALDERA_ERR_FORMAT, "tensor 'a': data [0, +8796093022208)");
    s = spec_valid();
    s.t[0].type = 99;
    expect_open(&s, "type99.gguf", CALDERA_ERR_FORMAT, "tensor 'a' has unknown ggml type 99; supported: F32");
    s = spec_valid();
    s.t[0].type = 4;
    expect_open(&s, "type4.gguf", CALDERA_ERR_FORMAT, "unknown ggml type 4");
    s = spec_valid();
    s.t[0].type = 16;
    expect_open(&s, "iq2.gguf", CALDERA_ERR_UNSUPPORTED, "tensor 'a' has ggml type 16 (IQ2_XXS), which this plugin does not read");
    s = spec_valid();
    s.t[0].type = 8;   // Q8_0 rows of 8 elements
    expect_open(&s, "blk.gguf", CALDERA_ERR_FORMAT, "tensor 'a': Q8_0 rows of 8 elements are not a multiple of the block size 32");
    s = spec_valid();
    s.t[1].name = "a";
    expect_open(&s, "dupname.gguf", CALDERA_ERR_FORMAT, "duplicate tensor name 'a'; names must be unique");
    s = spec_valid();
    s.t[1].name = "b\0c";
    s.t[1].nlen = 3;
    expect_open(&s, "nulname.gguf", CALDERA_ERR_FORMAT, "the name of tensor 1 contains a NUL byte");
}
END_TEST

// Every prefix of a valid file that cuts into the header or the tensor data is rejected with
// FORMAT (never a crash or an out-of-bounds read). meta.gguf: data from 832, last tensor 'b'
// [1024, 1056), then 32 bytes of gguf-py's padding, so prefixes of 1056 bytes and more are valid.
START_TEST(test_truncated_every_length) {
    size_t len;
    char * full = tu_read_file(FIX("meta.gguf"), &len);
    ck_assert_ptr_nonnull(full);
    ck_assert_uint_eq(len, 1088);
    const char * path = tu_path(tu_tmpdir(), "trunc.gguf");
    struct h     h    = h_new();
    // the file only grows, so writing each prefix over the last one needs no truncation (which
    // is slow on a busy file system)
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ck_assert_int_ge(fd, 0);
    for (size_t n = 0; n <= 1056; n++) {
        ck_assert_int_eq(pwrite(fd, full, n, 0), (ssize_t) n);
        int rc = h.ops->open(h.inst, path);
        if (n == 1056) {
            ck_assert_int_eq(rc, 0);
            break;
        }
        ck_assert_msg(rc == CALDERA_ERR_FORMAT, "prefix of %zu bytes: rc %d", n, rc);
        if (n < 24) {
            ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(h.ctx), "truncated"));
        }
    }
    close(fd);
    caldera_free(full);
    h_free(&h);
}
END_TEST

// Random byte corruption of the fixtures: every open either fails with a status or succeeds and
// every tensor then reads (the checks are what keep ASan quiet here).
START_TEST(test_fuzz_corruption) {
    static const char * files[] = { FIX("meta.gguf"), FIX("llama.gguf"), FIX("types.gguf") };

    struct caldera_rng  rng;
    caldera_rng_seed(&rng, 7);
    int      opened = 0, failed = 0;
    struct h h      = h_new();   // one instance: open / close per trial
    for (int fi = 0; fi < 3; fi++) {
        size_t len;
        char * full = tu_read_file(files[fi], &len);
        ck_assert_ptr_nonnull(full);
        char * buf = malloc(len);
        char   name[32];
        snprintf(name, sizeof(name), "fuzz-%d.gguf", fi);   // same size every trial: overwritten in place
        const char * path = tu_path(tu_tmpdir(), name);
        // corrupt the header region (where the parser works), 1..4 bytes per trial
        size_t hdr = len < 2048 ? len : 2048;
        for (int trial = 0; trial < 300; trial++) {
            memcpy(buf, full, len);
            int nflip = 1 + (int) (caldera_rng_u64(&rng) % 4);
            for (int k = 0; k < nflip; k++) {
                size_t at = caldera_rng_u64(&rng) % hdr;
                buf[at] = (char) (caldera_rng_u64(&rng) & 0xFF);
            }
            int fd = open(path, O_WRONLY | O_CREAT, 0644);
            ck_assert_int_ge(fd, 0);
            ck_assert_int_eq(pwrite(fd, buf, len, 0), (ssize_t) len);
            close(fd);
            int rc = h.ops->open(h.inst, path);
            if (rc == 0) {
                opened++;
                for (int64_t i = 0; i < h.ops->n_tensors(h.inst); i++) {
                    struct caldera_tensor t;
                    int                   owned;
                    if (h.ops->read_tensor(h.inst, i, CALDERA_DTYPE_F32, &t, &owned) == 0 && owned) {
                        caldera_tensor_free(&t);
                    }
                }
                struct caldera_model_desc md;
                h.ops->model_desc(h.inst, &md);
                h.ops->close(h.inst);
            } else {
                failed++;
                ck_assert(rc < 0);
                ck_assert(caldera_ctx_errmsg(h.ctx)[0] != 0);
            }
        }
        free(buf);
        caldera_free(full);
    }
    h_free(&h);
    ck_assert_int_eq(opened + failed, 900);
    ck_assert(failed > 0);
}
END_TEST

START_TEST(test_open_errors_misc) {
    struct h h  = h_new();
    int      rc = h.ops->open(h.inst, "/nonexistent/model.gguf");
    assert_err(&h, rc, CALDERA_ERR_NOT_FOUND, "/nonexistent/model.gguf: cannot open");
    rc = h.ops->open(h.inst, tu_tmpdir());
    assert_err(&h, rc, CALDERA_ERR_IO, "not a regular file");
    struct caldera_model_desc md;
    rc = h.ops->model_desc(h.inst, &md);
    assert_err(&h, rc, CALDERA_ERR_INVAL, "no file is open");
    ck_assert_int_eq(h.ops->probe_path(FIX("types.gguf")), 100);
    ck_assert_int_eq(h.ops->probe_path(FIX("make_fixtures.py")), 0);
    ck_assert_int_eq(h.ops->probe_path("/nonexistent/out.gguf"), 50);
    // open, close, open again on the same instance
    ck_assert_int_eq(h.ops->open(h.inst, FIX("llama.gguf")), 0);
    h.ops->close(h.inst);
    ck_assert_int_eq(h.ops->n_tensors(h.inst), 0);
    ck_assert_int_eq(h.ops->open(h.inst, FIX("types.gguf")), 0);
    ck_assert_int_eq(h.ops->n_tensors(h.inst), 18);
    h_free(&h);
}
END_TEST

// Allocation failure at every step of open: NOMEM (or success once past the last allocation),
// never a crash; LeakSanitizer in the ASan build checks that the failed opens free everything.
START_TEST(test_open_oom_sweep) {
    struct h h = h_new();
    int      ok = 0, n;
    for (n = 1; n < 2000 && !ok; n++) {
        caldera_alloc_fail_at(n);
        int rc = h.ops->open(h.inst, FIX("llama.gguf"));
        caldera_alloc_fail_at(0);
        if (rc == 0) {
            ok = 1;
            ck_assert_int_eq(h.ops->n_tensors(h.inst), 5);
            h.ops->close(h.inst);
        } else {
            ck_assert_msg(rc == CALDERA_ERR_NOMEM, "failing allocation %d: rc %d (%s)", n, rc, caldera_ctx_errmsg(h.ctx));
            ck_assert_int_eq(h.ops->n_tensors(h.inst), 0);
        }
    }
    ck_assert_msg(ok && n > 10, "open succeeded after %d steps", n);
    h_free(&h);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// Issue 11: inputs found by fuzzing (tests/fuzz/regress/), each a test that failed before its fix.

// A regression input of fuzz-gguf (tests/fuzz/regress/gguf): its first byte is the harness's option
// byte, the rest the file. Written without that byte to a temporary file whose path is returned.
static const char * regress_file(const char * name) {
    size_t len = 0;
    char * b   = tu_read_file(tu_path(CALDERA_TEST_SRC_DIR "/../../tests/fuzz/regress/gguf", name), &len);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_gt(len, 1);
    const char * path = tu_path(tu_tmpdir(), name);
    FILE *       f    = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(b + 1, 1, len - 1, f), len - 1);
    ck_assert_int_eq(fclose(f), 0);
    free(b);
    return path;
}

// blk.0.attn_q.weight of shape (2^62, 0) in a llama file: 0 bytes, so it passes open; reading it
// looped 2^62 times in the q/k un-permutation (a hang). An empty tensor is now read at once.
START_TEST(test_regress_qk_perm_zero_dim) {
    const char * path = regress_file("issue11-qk-perm-zero-dim-hang.gguf");
    struct h     h    = h_new();
    ck_assert_int_eq(h.ops->open(h.inst, path), 0);
    struct caldera_tensor_info ti;
    ck_assert_int_eq(h.ops->tensor_info(h.inst, 0, &ti), 0);
    ck_assert_int_eq(ti.ne[0], (int64_t) 1 << 62);
    ck_assert_int_eq(ti.ne[1], 0);
    const enum caldera_dtype want[] = { CALDERA_DTYPE_F32, CALDERA_DTYPE_F16 };
    for (int k = 0; k < 2; k++) {
        struct caldera_tensor t;
        int owned;
        ck_assert_int_eq(h.ops->read_tensor(h.inst, 0, want[k], &t, &owned), 0);
        ck_assert_int_eq(t.ne[0], (int64_t) 1 << 62);
        ck_assert_int_eq(t.ne[1], 0);
        if (owned) caldera_tensor_free(&t);
    }
    h_free(&h);
}
END_TEST

// Found by the campaign of 30 November 2026 (tests/fuzz/regress/gguf/fuzz-zero-dim-product-overflow.gguf,
// a harness input: its first byte is the harness's option byte). A tensor of GGUF dims (0, 256, 2^56)
// has no elements, but its non-zero dimensions overflow int64 in product: it passed open, and code that
// multiplies some of the dimensions would overflow. It is refused, naming the dimension.
START_TEST(test_regress_zero_dim_product_overflow) {
    const char * path = regress_file("fuzz-zero-dim-product-overflow.gguf");
    struct h     h    = h_new();
    assert_err(&h, h.ops->open(h.inst, path), CALDERA_ERR_FORMAT,
               "tensor 'w': dimension 2 = 72057594037927936 makes the element count overflow 64 bits");
    h_free(&h);
    // the check itself, in any order of the dimensions; a zero with small others stays valid
    const int64_t bad[][3] = { { 0, 256, (int64_t) 1 << 56 }, { (int64_t) 1 << 56, 256, 0 }, { 256, 0, (int64_t) 1 << 56 } };
    int64_t       n        = -1;
    int32_t       at       = -1;
    for (int i = 0; i < 3; i++) ck_assert_int_eq(caldera_shape_nelements(3, bad[i], &n, &at), -1);
    ck_assert_int_eq(at, 2);
    const int64_t ok[3] = { (int64_t) 1 << 54, 256, 0 }, neg[2] = { 4, -1 };
    ck_assert_int_eq(caldera_shape_nelements(3, ok, &n, NULL), 0);
    ck_assert_int_eq(n, 0);
    ck_assert_int_eq(caldera_shape_nelements(2, neg, &n, &at), -1);
    ck_assert_int_eq(at, 1);
    const int64_t big[2] = { (int64_t) 1 << 31, ((int64_t) 1 << 32) - 1 };
    ck_assert_int_eq(caldera_shape_nelements(2, big, &n, NULL), 0);
    ck_assert_int_eq(n, INT64_MAX - ((int64_t) 1 << 31) + 1);   // 2^63 − 2^31
}
END_TEST

// Hyper-parameters (typed metadata) that are negative or absurd: an error naming key and value
// (hidden = INT64_MIN with n_heads = -1 trapped in hidden / n_heads in the safetensors reader).
START_TEST(test_regress_hparams) {
    static const struct { uint32_t type; uint64_t v; const char * key; const char * msg; } cases[] = {
        { CALDERA_META_I64, (uint64_t) INT64_MIN, "test.embedding_length",
          "test.embedding_length = -9223372036854775808 (i64); allowed: an integer in [0, 2147483647]" },
        { CALDERA_META_I32, (uint32_t) -1, "test.attention.head_count",
          "test.attention.head_count = -1 (i32); allowed: an integer in [0, 2147483647]" },
        { CALDERA_META_U64, UINT64_MAX, "test.block_count",
          "test.block_count = 18446744073709551615 (u64); allowed: an integer in [0, 2147483647]" },
        { CALDERA_META_F64, 0x7FF8000000000000ull, "test.rope.freq_base",
          "test.rope.freq_base = nan (f64); allowed: a finite number >= 0" },
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        struct spec s = spec_valid();
        bb_str(&s.kv, cases[c].key);
        bb_u32(&s.kv, cases[c].type);
        if (cases[c].type == CALDERA_META_I32) bb_u32(&s.kv, (uint32_t) cases[c].v);
        else bb_u64(&s.kv, cases[c].v);
        s.n_extra_kv = 1;
        const char * path = spec_write(&s, "hparam.gguf");
        struct h h = h_new();
        struct caldera_model_desc d;
        ck_assert_int_eq(h.ops->open(h.inst, path), 0);
        assert_err(&h, h.ops->model_desc(h.inst, &d), CALDERA_ERR_FORMAT, cases[c].msg);
        ck_assert_int_eq(d.hidden, 0);
        h_free(&h);
    }
}
END_TEST

static Suite * gguf_suite(void) {
    Suite * s  = suite_create("gguf");
    TCase * tc = tcase_create("read");
    tcase_add_test(tc, test_types_dequant);
    tcase_add_test(tc, test_types_native_and_convert);
    tcase_add_test(tc, test_type_table);
    tcase_add_test(tc, test_parallel_dequant);
    tcase_add_test(tc, test_q8_1_q8_k_closed_form);
    tcase_add_test(tc, test_meta_values);
    tcase_add_test(tc, test_llama_desc_names_perm);
    tcase_add_test(tc, test_open_errors_misc);
    tcase_add_test(tc, test_open_oom_sweep);
    suite_add_tcase(s, tc);
    tc = tcase_create("write");
    tcase_add_test(tc, test_write_roundtrip);
    tcase_add_test(tc, test_update_meta);
    tcase_add_test(tc, test_strings_with_nul);
    tcase_add_test(tc, test_llama_permutation_roundtrip);
    tcase_add_test(tc, test_write_abort_and_errors);
    tcase_add_test(tc, test_llama_perm_errors_and_convention);
    tcase_add_test(tc, test_write_hf_names_llama_layout);
    suite_add_tcase(s, tc);
    tc = tcase_create("malformed");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_bad_valid_base);
    tcase_add_test(tc, test_bad_magic);
    tcase_add_test(tc, test_bad_version);
    tcase_add_test(tc, test_bad_counts);
    tcase_add_test(tc, test_bad_lengths);
    tcase_add_test(tc, test_bad_kv_types);
    tcase_add_test(tc, test_bad_alignment);
    tcase_add_test(tc, test_bad_convention_key);
    tcase_add_test(tc, test_bad_tensor_offsets);
    tcase_add_test(tc, test_bad_dims_types);
    tcase_add_test(tc, test_truncated_every_length);
    tcase_add_test(tc, test_fuzz_corruption);
    tcase_add_test(tc, test_regress_qk_perm_zero_dim);
    tcase_add_test(tc, test_regress_hparams);
    tcase_add_test(tc, test_regress_zero_dim_product_overflow);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(gguf_suite)
