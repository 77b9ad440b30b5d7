// SPDX-License-Identifier: MIT
// Tests of the safetensors plugin: write -> read of every dtype and of typed metadata, the byte
// layout of what we write (checked by parsing it here), a file written by the Python
// `safetensors` package (fixtures/), HF and sharded folders with config.json, atomic finish,
// and every malformed-header path with its code and message.
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "testutil.h"

#define FIXTURE CALDERA_TEST_SRC_DIR "/fixtures/py_small.safetensors"
#define HF_TOK  CALDERA_TEST_SRC_DIR "/fixtures/hf_tok"  // a model folder with an HF tokenizer.json
// The "known" file: also checked by check_with_python.py (it persists in the build tree).
#define KNOWN_PATH CALDERA_TEST_BIN_DIR "/known.safetensors"

static const struct caldera_format_ops * ops_of(struct caldera_ctx * ctx) {
    const struct caldera_plugin * pl = caldera_registry_find(ctx, "safetensors");
    ck_assert_ptr_nonnull(pl);
    return pl->ops;
}

static struct caldera_inst * new_inst(struct caldera_ctx * ctx) {
    struct caldera_inst * inst = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, "safetensors", "st", &inst), 0);
    ck_assert_int_eq(caldera_inst_start(inst), 0);
    return inst;
}

static int64_t find(struct caldera_ctx * ctx, struct caldera_inst * inst, const char * name) {
    const struct caldera_format_ops * ops = ops_of(ctx);
    for (int64_t i = 0; i < ops->n_tensors(inst); i++) {
        struct caldera_tensor_info ti;
        ck_assert_int_eq(ops->tensor_info(inst, i, &ti), 0);
        if (strcmp(ti.name, name) == 0) return i;
    }
    return -1;
}

// ---------------------------------------------------------------------------------------------
// The known file: closed forms shared with check_with_python.py.

struct known {
    const char *       name;
    enum caldera_dtype dtype;
    int32_t            ndim;
    int64_t            ne[4];
};

static const struct known known_tensors[] = {
    { "f32", CALDERA_DTYPE_F32, 2, { 3, 5 } },       { "f64", CALDERA_DTYPE_F64, 3, { 2, 2, 2 } },
    { "f16", CALDERA_DTYPE_F16, 1, { 4 } },          { "bf16", CALDERA_DTYPE_BF16, 2, { 2, 3 } },
    { "f8_e4m3", CALDERA_DTYPE_F8_E4M3, 1, { 4 } },  { "f8_e5m2", CALDERA_DTYPE_F8_E5M2, 1, { 3 } },
    { "i8", CALDERA_DTYPE_I8, 1, { 5 } },            { "u8", CALDERA_DTYPE_U8, 1, { 5 } },
    { "i16", CALDERA_DTYPE_I16, 2, { 2, 3 } },       { "u16", CALDERA_DTYPE_U16, 1, { 3 } },
    { "i32", CALDERA_DTYPE_I32, 2, { 1, 4 } },       { "u32", CALDERA_DTYPE_U32, 1, { 2 } },
    { "i64", CALDERA_DTYPE_I64, 1, { 2 } },          { "u64", CALDERA_DTYPE_U64, 1, { 2 } },
    { "bool", CALDERA_DTYPE_BOOL, 1, { 4 } },        { "w4d", CALDERA_DTYPE_F32, 4, { 2, 1, 2, 3 } },
    { "zero", CALDERA_DTYPE_F32, 2, { 0, 3 } },
};
#define N_KNOWN ((int) (sizeof(known_tensors) / sizeof(known_tensors[0])))

static int64_t nelem(const struct known * k) {
    int64_t n = 1;
    for (int d = 0; d < k->ndim; d++) n *= k->ne[d];
    return n;
}

// Element i of known tensor k, stored into dst (its dtype's bytes).
static void known_value(const struct known * k, int64_t i, void * dst) {
    static const uint8_t e4m3[4] = { 0x38, 0x40, 0xB8, 0x00 };  // 1, 2, -1, 0
    static const uint8_t e5m2[3] = { 0x3C, 0xC0, 0x7C };        // 1, -2, inf
    switch (k->dtype) {
    case CALDERA_DTYPE_F32:  *(float *) dst = (float) i * 0.25f - 1.0f; break;
    case CALDERA_DTYPE_F64:  *(double *) dst = (double) i / 3.0; break;
    case CALDERA_DTYPE_F16:  *(uint16_t *) dst = caldera_f32_to_f16((float) i * 0.5f - 1.0f); break;
    case CALDERA_DTYPE_BF16: *(uint16_t *) dst = caldera_f32_to_bf16((float) (i - 3) * 0.125f); break;
    case CALDERA_DTYPE_F8_E4M3: *(uint8_t *) dst = e4m3[i]; break;
    case CALDERA_DTYPE_F8_E5M2: *(uint8_t *) dst = e5m2[i]; break;
    case CALDERA_DTYPE_I8:   *(int8_t *) dst = (int8_t) (i - 2); break;
    case CALDERA_DTYPE_U8:   *(uint8_t *) dst = (uint8_t) (250 + i); break;
    case CALDERA_DTYPE_I16:  *(int16_t *) dst = (int16_t) (i * 1000 - 3000); break;
    case CALDERA_DTYPE_U16:  *(uint16_t *) dst = (uint16_t) (60000 + i); break;
    case CALDERA_DTYPE_I32:  *(int32_t *) dst = (int32_t) (i * -100000); break;
    case CALDERA_DTYPE_U32:  *(uint32_t *) dst = 4000000000u + (uint32_t) i; break;
    case CALDERA_DTYPE_I64:  *(int64_t *) dst = -((int64_t) 1 << 40) + i; break;
    case CALDERA_DTYPE_U64:  *(uint64_t *) dst = ((uint64_t) 1 << 63) + (uint64_t) i; break;
    case CALDERA_DTYPE_BOOL: *(uint8_t *) dst = (uint8_t) (i % 2); break;
    default: ck_abort_msg("bad dtype");
    }
}

static struct caldera_meta * known_meta(void) {
    struct caldera_meta * m;
    ck_assert_int_eq(caldera_meta_init(&m), 0);
    ck_assert_int_eq(caldera_meta_set_string(m, "format", "pt"), 0);
    ck_assert_int_eq(caldera_meta_set_string(m, "general.name", "known"), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "llama.block_count", CALDERA_META_U32, 5), 0);
    ck_assert_int_eq(caldera_meta_set_float(m, "llama.rope.freq_base", CALDERA_META_F32, 10000.0), 0);
    ck_assert_int_eq(caldera_meta_set_float(m, "x.eps", CALDERA_META_F32, 1e-5), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "x.flag", CALDERA_META_BOOL, 1), 0);
    ck_assert_int_eq(caldera_meta_set_int(m, "x.big", CALDERA_META_I64, -((int64_t) 1 << 50)), 0);
    const char * toks[3] = { "a", "b\"q", "\xc3\xbc" };
    ck_assert_int_eq(caldera_meta_set_array(m, "tokenizer.ggml.tokens", CALDERA_META_STRING, 3, toks), 0);
    const float scores[3] = { 0.0f, -1.5f, 2.25f };
    ck_assert_int_eq(caldera_meta_set_array(m, "tokenizer.ggml.scores", CALDERA_META_F32, 3, scores), 0);
    const int32_t ty[2] = { 1, -2 };
    ck_assert_int_eq(caldera_meta_set_array(m, "tokenizer.ggml.token_type", CALDERA_META_I32, 2, ty), 0);
    return m;
}

// Write the known tensors (plus "strided": a (3, 4) view with ld 6) to path.
static void write_known(struct caldera_ctx * ctx, const char * path) {
    const struct caldera_format_ops * ops = ops_of(ctx);
    struct caldera_inst * inst = new_inst(ctx);
    struct caldera_meta * m = known_meta();
    ck_assert_int_eq(ops->create(inst, path, m), 0);
    for (int k = 0; k < N_KNOWN; k++) {
        const struct known * kt = &known_tensors[k];
        struct caldera_tensor t;
        ck_assert_int_eq(caldera_tensor_alloc(ctx, kt->dtype, kt->ndim, kt->ne, &t), 0);
        size_t es = caldera_dtype_block_bytes(kt->dtype);
        for (int64_t i = 0; i < nelem(kt); i++) known_value(kt, i, (char *) t.data + i * es);
        ck_assert_int_eq(ops->write_tensor(inst, kt->name, &t), 0);
        caldera_tensor_free(&t);
    }
    float buf[3 * 6];
    for (int r = 0; r < 3; r++) {
        for (int c = 0; c < 6; c++) buf[r * 6 + c] = (float) (r * 10 + c);
    }
    struct caldera_tensor sv = caldera_tensor_view_f32(buf, 3, 4);
    sv.ld = 6;
    ck_assert_int_eq(ops->write_tensor(inst, "strided", &sv), 0);
    ck_assert_int_eq(ops->finish(inst, 1), 0);
    caldera_meta_free(m);
    caldera_inst_free(inst);
}

// Files in dir other than "." and "..".
static int count_files(const char * dir) {
    DIR * d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent * e;
    while ((e = readdir(d))) n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

START_TEST(test_roundtrip_every_dtype) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    write_known(ctx, KNOWN_PATH);
    struct caldera_inst * inst = new_inst(ctx);
    ck_assert_int_eq(ops->open(inst, KNOWN_PATH), 0);
    ck_assert_int_eq(ops->n_tensors(inst), N_KNOWN + 1);
    for (int k = 0; k < N_KNOWN; k++) {
        const struct known * kt = &known_tensors[k];
        int64_t i = find(ctx, inst, kt->name);
        ck_assert_msg(i >= 0, "%s missing", kt->name);
        struct caldera_tensor_info ti;
        ck_assert_int_eq(ops->tensor_info(inst, i, &ti), 0);
        ck_assert_int_eq(ti.dtype, kt->dtype);
        ck_assert_int_eq(ti.ndim, kt->ndim);
        for (int d = 0; d < kt->ndim; d++) ck_assert_int_eq(ti.ne[d], kt->ne[d]);
        size_t es = caldera_dtype_block_bytes(kt->dtype);
        ck_assert_uint_eq(ti.nbytes, (size_t) nelem(kt) * es);
        struct caldera_tensor t;
        int owned = -1;
        ck_assert_int_eq(ops->read_tensor(inst, i, kt->dtype, &t, &owned), 0);
        ck_assert_int_eq(owned, 0);  // same dtype: a view into the map, aligned by our writer
        ck_assert_uint_eq((uintptr_t) t.data % es, 0);
        for (int64_t e = 0; e < nelem(kt); e++) {
            uint8_t want[8];
            known_value(kt, e, want);
            ck_assert_msg(memcmp((char *) t.data + e * es, want, es) == 0, "%s[%lld]", kt->name, (long long) e);
        }
        // f32 on request: a converted copy
        if (nelem(kt) > 0 && kt->dtype != CALDERA_DTYPE_F32) {
            struct caldera_tensor f;
            ck_assert_int_eq(ops->read_tensor(inst, i, CALDERA_DTYPE_F32, &f, &owned), 0);
            ck_assert_int_eq(owned, 1);
            ck_assert_int_eq(f.dtype, CALDERA_DTYPE_F32);
            float * fv = caldera_malloc((size_t) nelem(kt) * 4);
            ck_assert_int_eq(caldera_convert_to_f32(kt->dtype, t.data, nelem(kt), fv), 0);
            ck_assert(memcmp(fv, f.data, (size_t) nelem(kt) * 4) == 0);
            caldera_free(fv);
            caldera_tensor_free(&f);
        }
    }
    int64_t s = find(ctx, inst, "strided");
    struct caldera_tensor t;
    int owned;
    ck_assert_int_eq(ops->read_tensor(inst, s, CALDERA_DTYPE_F32, &t, &owned), 0);
    ck_assert_int_eq(t.ld, 4);
    for (int r = 0; r < 3; r++) {
        for (int c = 0; c < 4; c++) ck_assert(((float *) t.data)[r * 4 + c] == (float) (r * 10 + c));
    }
    // the f32 -> f16 direction too
    int64_t f = find(ctx, inst, "f32");
    struct caldera_tensor h;
    ck_assert_int_eq(ops->read_tensor(inst, f, CALDERA_DTYPE_F16, &h, &owned), 0);
    ck_assert_int_eq(owned, 1);
    for (int e = 0; e < 15; e++) ck_assert_uint_eq(((uint16_t *) h.data)[e], caldera_f32_to_f16((float) e * 0.25f - 1.0f));
    caldera_tensor_free(&h);
    // f16 -> bf16 goes through a row of f32: when that buffer (the allocation after the copy's own)
    // cannot be had, the error says out of memory, not "no conversion"
    caldera_alloc_fail_at(2);
    ck_assert_int_eq(ops->read_tensor(inst, find(ctx, inst, "f16"), CALDERA_DTYPE_BF16, &h, &owned), CALDERA_ERR_NOMEM);
    caldera_alloc_fail_at(0);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "tensor 'f16': out of memory converting f16 to bf16"));
    ck_assert_int_eq(ops->read_tensor(inst, find(ctx, inst, "f16"), CALDERA_DTYPE_BF16, &h, &owned), 0);
    caldera_tensor_free(&h);
    // no model description without config.json or general.architecture
    struct caldera_model_desc d;
    ck_assert_int_eq(ops->model_desc(inst, &d), CALDERA_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "no model description"));
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_metadata_typed_roundtrip) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    const char * path = tu_path(tu_tmpdir(), "meta.safetensors");
    write_known(ctx, path);
    struct caldera_inst * inst = new_inst(ctx);
    ck_assert_int_eq(ops->open(inst, path), 0);
    const struct caldera_meta * m = ops->meta(inst);
    const char * s;
    int64_t v;
    double x;
    ck_assert_int_eq(caldera_meta_get_string(m, "format", &s), 0);
    ck_assert_str_eq(s, "pt");
    int idx = caldera_meta_find(m, "llama.block_count");
    ck_assert_int_ge(idx, 0);
    ck_assert_int_eq(caldera_meta_type_of(m, idx), CALDERA_META_U32);
    ck_assert_int_eq(caldera_meta_get_int(m, "llama.block_count", &v), 0);
    ck_assert_int_eq(v, 5);
    ck_assert_int_eq(caldera_meta_get_float(m, "x.eps", &x), 0);
    ck_assert((float) x == 1e-5f);  // f32 written with 9 significant digits: exact
    ck_assert_int_eq(caldera_meta_type_of(m, caldera_meta_find(m, "x.eps")), CALDERA_META_F32);
    ck_assert_int_eq(caldera_meta_type_of(m, caldera_meta_find(m, "x.flag")), CALDERA_META_BOOL);
    ck_assert_int_eq(caldera_meta_get_int(m, "x.big", &v), 0);
    ck_assert_int_eq(v, -((int64_t) 1 << 50));
    enum caldera_meta_type et;
    int64_t n;
    const void * data;
    ck_assert_int_eq(caldera_meta_get_array(m, "tokenizer.ggml.tokens", &et, &n, &data), 0);
    ck_assert_int_eq(et, CALDERA_META_STRING);
    ck_assert_int_eq(n, 3);
    ck_assert_str_eq(((const char * const *) data)[1], "b\"q");
    ck_assert_str_eq(((const char * const *) data)[2], "\xc3\xbc");
    ck_assert_int_eq(caldera_meta_get_array(m, "tokenizer.ggml.scores", &et, &n, &data), 0);
    ck_assert_int_eq(et, CALDERA_META_F32);
    ck_assert(((const float *) data)[1] == -1.5f && ((const float *) data)[2] == 2.25f);
    ck_assert_int_eq(caldera_meta_get_array(m, "tokenizer.ggml.token_type", &et, &n, &data), 0);
    ck_assert_int_eq(et, CALDERA_META_I32);
    ck_assert_int_eq(((const int32_t *) data)[1], -2);
    ck_assert_int_eq(caldera_meta_find(m, "caldera.meta_types"), -1);  // internal key is consumed
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

// update_meta replaces the metadata given to create: the reader sees only the new set.
START_TEST(test_update_meta) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    const char * path = tu_path(tu_tmpdir(), "update.safetensors");
    char p2[1024];
    snprintf(p2, sizeof(p2), "%s", path);
    struct caldera_meta * m1, * m2;
    ck_assert_int_eq(caldera_meta_init(&m1), 0);
    ck_assert_int_eq(caldera_meta_init(&m2), 0);
    caldera_meta_set_string(m1, "a", "first");
    caldera_meta_set_string(m1, "gone", "x");
    caldera_meta_set_string(m2, "a", "second");
    caldera_meta_set_int(m2, "n", CALDERA_META_I32, -7);
    struct caldera_inst * w = new_inst(ctx);
    ck_assert_int_eq(ops->update_meta(w, m2), CALDERA_ERR_INVAL);   // nothing is being written yet
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "update_meta: no file is being written"));
    ck_assert_int_eq(ops->create(w, p2, m1), 0);
    float v[3] = { 1, 2, 3 };
    struct caldera_tensor t = caldera_tensor_view_f32(v, 1, 3);
    ck_assert_int_eq(ops->write_tensor(w, "t", &t), 0);
    ck_assert_int_eq(ops->update_meta(w, m2), 0);
    ck_assert_int_eq(ops->finish(w, 1), 0);
    caldera_inst_free(w);
    struct caldera_inst * r = new_inst(ctx);
    ck_assert_int_eq(ops->open(r, p2), 0);
    const char * s;
    int64_t n;
    ck_assert_int_eq(caldera_meta_get_string(ops->meta(r), "a", &s), 0);
    ck_assert_str_eq(s, "second");
    ck_assert_int_eq(caldera_meta_get_int(ops->meta(r), "n", &n), 0);
    ck_assert_int_eq(n, -7);
    ck_assert_int_eq(caldera_meta_find(ops->meta(r), "gone"), -1);
    caldera_inst_free(r);
    caldera_meta_free(m1);
    caldera_meta_free(m2);
    caldera_ctx_free(ctx);
}
END_TEST

// What other readers see: parse our file's bytes here, by the format's rules.
START_TEST(test_written_layout) {
    struct caldera_ctx * ctx = tu_ctx();
    const char * path = tu_path(tu_tmpdir(), "layout.safetensors");
    write_known(ctx, path);
    size_t len;
    char * b = tu_read_file(path, &len);
    ck_assert_ptr_nonnull(b);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | (uint8_t) b[i];
    ck_assert_uint_eq((8 + n) % 8, 0);
    ck_assert_int_eq(b[8], '{');
    json_error_t err;
    json_t * h = json_loadb(b + 8, n, JSON_REJECT_DUPLICATES, &err);
    ck_assert_msg(h != NULL, "%s", err.text);
    json_t * md = json_object_get(h, "__metadata__");
    ck_assert(json_is_object(md));
    ck_assert_str_eq(json_string_value(json_object_get(md, "format")), "pt");
    ck_assert_str_eq(json_string_value(json_object_get(md, "llama.block_count")), "5");
    ck_assert_str_eq(json_string_value(json_object_get(md, "tokenizer.ggml.scores")), "[0.0,-1.5,2.25]");
    ck_assert_str_eq(json_string_value(json_object_get(md, "x.flag")), "true");
    // data offsets: contiguous from 0 to the end of the file, each aligned to its element size
    uint64_t total = len - 8 - n, covered = 0;
    const char * key;
    json_t * v;
    json_object_foreach(h, key, v) {
        if (strcmp(key, "__metadata__") == 0) continue;
        json_t * o = json_object_get(v, "data_offsets");
        uint64_t s0 = (uint64_t) json_integer_value(json_array_get(o, 0));
        uint64_t s1 = (uint64_t) json_integer_value(json_array_get(o, 1));
        enum caldera_dtype dt = CALDERA_DTYPE_COUNT;
        for (int k = 0; k < N_KNOWN; k++) {
            if (strcmp(known_tensors[k].name, key) == 0) dt = known_tensors[k].dtype;
        }
        if (strcmp(key, "strided") == 0) dt = CALDERA_DTYPE_F32;
        ck_assert_msg(dt != CALDERA_DTYPE_COUNT, "unexpected tensor %s", key);
        ck_assert_msg(s0 % caldera_dtype_block_bytes(dt) == 0, "%s at %llu not aligned", key, (unsigned long long) s0);
        covered += s1 - s0;
        ck_assert_uint_le(s1, total);
    }
    ck_assert_uint_eq(covered, total);  // no gaps: with no overlaps this means contiguous
    json_decref(h);
    caldera_free(b);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_python_fixture) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    struct caldera_inst * inst = new_inst(ctx);
    ck_assert_int_eq(ops->open(inst, FIXTURE), 0);
    ck_assert_int_eq(ops->n_tensors(inst), 7);
    struct caldera_tensor t;
    int owned;
    // F16 (3, 4) = (arange(12) - 6) / 4, exact in f16; read as f32
    int64_t i = find(ctx, inst, "model.layers.0.mlp.up_proj.weight");
    ck_assert_int_eq(ops->read_tensor(inst, i, CALDERA_DTYPE_F32, &t, &owned), 0);
    ck_assert_int_eq(t.ndim, 2);
    for (int k = 0; k < 12; k++) ck_assert(((float *) t.data)[k] == (float) (k - 6) / 4.0f);
    if (owned) caldera_tensor_free(&t);
    // F32 (2, 5) = float32(arange(10) * 0.1)
    i = find(ctx, inst, "lm_head.weight");
    ck_assert_int_eq(ops->read_tensor(inst, i, CALDERA_DTYPE_F32, &t, &owned), 0);
    ck_assert_int_eq(owned, 0);
    for (int k = 0; k < 10; k++) ck_assert(((float *) t.data)[k] == (float) (k * 0.1));
    i = find(ctx, inst, "ids");
    ck_assert_int_eq(ops->read_tensor(inst, i, CALDERA_DTYPE_I64, &t, &owned), 0);
    ck_assert(((int64_t *) t.data)[0] == -1 && ((int64_t *) t.data)[2] == ((int64_t) 1 << 40));
    i = find(ctx, inst, "scalar");  // shape []: presented as one element
    struct caldera_tensor_info ti;
    ck_assert_int_eq(ops->tensor_info(inst, i, &ti), 0);
    ck_assert_int_eq(ti.ndim, 1);
    ck_assert_int_eq(ti.ne[0], 1);
    ck_assert_int_eq(ops->read_tensor(inst, i, CALDERA_DTYPE_F64, &t, &owned), 0);
    ck_assert(((double *) t.data)[0] == M_PI);
    i = find(ctx, inst, "mask");
    ck_assert_int_eq(ops->read_tensor(inst, i, CALDERA_DTYPE_BOOL, &t, &owned), 0);
    ck_assert(memcmp(t.data, "\1\0\0\1", 4) == 0);
    i = find(ctx, inst, "u16");
    ck_assert_int_eq(ops->read_tensor(inst, i, CALDERA_DTYPE_F32, &t, &owned), 0);
    ck_assert(((float *) t.data)[1] == 65535.0f);
    caldera_tensor_free(&t);
    i = find(ctx, inst, "empty");
    ck_assert_int_eq(ops->tensor_info(inst, i, &ti), 0);
    ck_assert_int_eq(ti.ne[0], 0);
    ck_assert_int_eq(ti.nbytes, 0);
    const char * s;
    ck_assert_int_eq(caldera_meta_get_string(ops->meta(inst), "note", &s), 0);
    ck_assert_str_eq(s, "py fixture");
    ck_assert_int_ge(ops->probe_path(FIXTURE), 50);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_finish_abort_and_writer_errors) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/abort", tu_tmpdir());
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    const char * path = tu_path(dir, "out.safetensors");
    struct caldera_inst * inst = new_inst(ctx);
    float x[6] = { 1, 2, 3, 4, 5, 6 };
    struct caldera_tensor t = caldera_tensor_view_f32(x, 2, 3);
    ck_assert_int_eq(ops->write_tensor(inst, "a", &t), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "no file is being written; call create first"));
    ck_assert_int_eq(ops->finish(inst, 1), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "finish: no file is being written"));
    ck_assert_int_eq(ops->create(inst, path, NULL), 0);
    ck_assert_int_eq(ops->create(inst, path, NULL), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "is still being written; call finish first"));
    ck_assert_int_eq(ops->write_tensor(inst, "a", &t), 0);
    ck_assert_int_eq(ops->write_tensor(inst, "a", &t), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "tensor 'a' was already written"));
    ck_assert_int_eq(ops->write_tensor(inst, "__metadata__", &t), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "invalid tensor name '__metadata__'"));
    struct caldera_tensor q = t;
    q.dtype = CALDERA_DTYPE_Q4_0;
    ck_assert_int_eq(ops->write_tensor(inst, "q", &q), CALDERA_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "dtype q4_0 cannot be stored in safetensors"));
    ck_assert_int_ge(count_files(dir), 1);  // the temporary data file
    ck_assert_int_eq(ops->finish(inst, 0), 0);
    ck_assert_int_eq(count_files(dir), 0);  // finish(0) leaves nothing behind
    // an instance freed in the middle of writing also cleans up
    ck_assert_int_eq(ops->create(inst, path, NULL), 0);
    ck_assert_int_eq(ops->write_tensor(inst, "a", &t), 0);
    caldera_inst_free(inst);
    ck_assert_int_eq(count_files(dir), 0);
    // committing leaves exactly the final file
    inst = new_inst(ctx);
    ck_assert_int_eq(ops->create(inst, path, NULL), 0);
    ck_assert_int_eq(ops->write_tensor(inst, "a", &t), 0);
    ck_assert_int_eq(ops->finish(inst, 1), 0);
    ck_assert_int_eq(count_files(dir), 1);
    ck_assert_int_eq(access(path, F_OK), 0);
    // metadata that JSON cannot carry
    struct caldera_meta * m;
    ck_assert_int_eq(caldera_meta_init(&m), 0);
    ck_assert_int_eq(caldera_meta_set_float(m, "bad", CALDERA_META_F64, INFINITY), 0);
    ck_assert_int_eq(ops->create(inst, path, m), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "metadata 'bad': not representable in JSON"));
    caldera_meta_free(m);
    ck_assert_int_eq(count_files(dir), 1);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

// Reading tensor B drops the mapped pages of tensor A (MADV_DONTNEED, to keep streaming
// memory flat); A's view must still show A's values (the pages come back from the file).
START_TEST(test_views_survive_page_dropping) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    const char * path = tu_path(tu_tmpdir(), "pages.safetensors");
    enum { ROWS = 64, COLS = 1024 };  // 256 KB each: many pages
    struct caldera_tensor a = tu_randn(ctx, ROWS, COLS, 1), b = tu_randn(ctx, ROWS, COLS, 2);
    struct caldera_inst * inst = new_inst(ctx);
    ck_assert_int_eq(ops->create(inst, path, NULL), 0);
    ck_assert_int_eq(ops->write_tensor(inst, "a", &a), 0);
    ck_assert_int_eq(ops->write_tensor(inst, "b", &b), 0);
    ck_assert_int_eq(ops->finish(inst, 1), 0);
    ck_assert_int_eq(ops->open(inst, path), 0);
    struct caldera_tensor va, vb;
    int oa, ob;
    ck_assert_int_eq(ops->read_tensor(inst, find(ctx, inst, "a"), CALDERA_DTYPE_F32, &va, &oa), 0);
    ck_assert_int_eq(oa, 0);
    ck_assert(memcmp(va.data, a.data, (size_t) ROWS * COLS * 4) == 0);
    ck_assert_int_eq(ops->read_tensor(inst, find(ctx, inst, "b"), CALDERA_DTYPE_F32, &vb, &ob), 0);
    ck_assert(memcmp(vb.data, b.data, (size_t) ROWS * COLS * 4) == 0);
    ck_assert(memcmp(va.data, a.data, (size_t) ROWS * COLS * 4) == 0);  // dropped, read back
    ck_assert_int_eq(ops->read_tensor(inst, find(ctx, inst, "a"), CALDERA_DTYPE_F16, &va, &oa), 0);
    ck_assert_int_eq(oa, 1);
    ck_assert(memcmp(vb.data, b.data, (size_t) ROWS * COLS * 4) == 0);
    caldera_tensor_free(&va);
    caldera_tensor_free(&a);
    caldera_tensor_free(&b);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_argument_errors) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    struct caldera_inst * inst = new_inst(ctx);
    ck_assert_int_eq(ops->open(inst, NULL), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "no path given; set option 'path'"));
    ck_assert_int_eq(ops->create(inst, NULL, NULL), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "create: no path given; set option 'path'"));
    ck_assert_int_eq(ops->create(inst, tu_path(tu_tmpdir(), "no-such-dir/x.safetensors"), NULL), CALDERA_ERR_IO);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "no-such-dir/x.safetensors.data.tmp."));
    ck_assert_int_eq(ops->create(inst, tu_path(tu_tmpdir(), "args.safetensors"), NULL), 0);
    float x[4] = { 0 };
    struct caldera_tensor t = caldera_tensor_view_f32(x, 2, 2);
    t.ndim = 0;
    ck_assert_int_eq(ops->write_tensor(inst, "r0", &t), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "tensor 'r0': rank 0; allowed 1..4"));
    t.ndim = 2;
    t.ne[0] = -2;
    ck_assert_int_eq(ops->write_tensor(inst, "neg", &t), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "tensor 'neg': invalid shape"));
    t.ne[0] = 2;
    t.device = CALDERA_DEVICE_CUDA;
    ck_assert_int_eq(ops->write_tensor(inst, "gpu", &t), CALDERA_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "tensor 'gpu' is not in CPU memory"));
    ck_assert_int_eq(ops->write_tensor(inst, "", &t), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "invalid tensor name ''"));
    ck_assert_int_eq(ops->finish(inst, 0), 0);
    // the path option is used when open()/create() get none
    caldera_inst_free(inst);
    ck_assert_int_eq(caldera_inst_create(ctx, "safetensors", "st", &inst), 0);
    ck_assert_int_eq(caldera_inst_set(inst, "path", FIXTURE), 0);
    ck_assert_int_eq(caldera_inst_start(inst), 0);
    ck_assert_int_eq(ops->open(inst, NULL), 0);
    ck_assert_int_eq(ops->n_tensors(inst), 7);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

// A rejected tensor (name not UTF-8) leaves the file consistent: the next one reads back.
START_TEST(test_rejected_tensor_keeps_file_consistent) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    const char * path = tu_path(tu_tmpdir(), "reject.safetensors");
    struct caldera_inst * inst = new_inst(ctx);
    float a[4] = { 1, 2, 3, 4 }, b[4] = { 5, 6, 7, 8 }, c[4] = { -1, -2, -3, -4 };
    struct caldera_tensor ta = caldera_tensor_view_f32(a, 2, 2), tb = caldera_tensor_view_f32(b, 2, 2);
    struct caldera_tensor tc = caldera_tensor_view_f32(c, 2, 2);
    ck_assert_int_eq(ops->create(inst, path, NULL), 0);
    ck_assert_int_eq(ops->write_tensor(inst, "a", &ta), 0);
    ck_assert_int_eq(ops->write_tensor(inst, "bad\xff", &tc), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "is not valid UTF-8"));
    ck_assert_int_eq(ops->write_tensor(inst, "b", &tb), 0);
    ck_assert_int_eq(ops->finish(inst, 1), 0);
    ck_assert_int_eq(ops->open(inst, path), 0);
    ck_assert_int_eq(ops->n_tensors(inst), 2);
    struct caldera_tensor t;
    int owned;
    ck_assert_int_eq(ops->read_tensor(inst, find(ctx, inst, "b"), CALDERA_DTYPE_F32, &t, &owned), 0);
    ck_assert(memcmp(t.data, b, sizeof(b)) == 0);
    ck_assert_int_eq(ops->read_tensor(inst, find(ctx, inst, "a"), CALDERA_DTYPE_F32, &t, &owned), 0);
    ck_assert(memcmp(t.data, a, sizeof(a)) == 0);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// Folders: HF single file + config.json, sharded with an index.

static const char * CONFIG =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 64,"
    " \"intermediate_size\": 172, \"num_hidden_layers\": 5, \"num_attention_heads\": 8,"
    " \"num_key_value_heads\": 4, \"vocab_size\": 512, \"max_position_embeddings\": 1024,"
    " \"rope_theta\": 100000.0, \"rms_norm_eps\": 1e-05, \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0},"
    " \"bos_token_id\": 1, \"eos_token_id\": 2}";

static void write_shard(struct caldera_ctx * ctx, const char * path, const char * const * names, int n) {
    const struct caldera_format_ops * ops = ops_of(ctx);
    struct caldera_inst * inst = new_inst(ctx);
    ck_assert_int_eq(ops->create(inst, path, NULL), 0);
    for (int k = 0; k < n; k++) {
        float v[4] = { (float) k, (float) k + 0.5f, -1, 2 };
        struct caldera_tensor t = caldera_tensor_view_f32(v, 2, 2);
        ck_assert_int_eq(ops->write_tensor(inst, names[k], &t), 0);
    }
    ck_assert_int_eq(ops->finish(inst, 1), 0);
    caldera_inst_free(inst);
}

static const char * make_dir(const char * name) {
    const char * d = tu_path(tu_tmpdir(), name);
    ck_assert_int_eq(mkdir(d, 0755), 0);
    return d;
}

static const char * INDEX_OK =
    "{\"metadata\": {\"total_size\": 48}, \"weight_map\": {\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\","
    " \"model.norm.weight\": \"model-00001-of-00002.safetensors\", \"lm_head.weight\": \"model-00002-of-00002.safetensors\"}}";

// A sharded folder; extra2 is one more tensor name for shard 2 (or NULL).
static char * make_sharded(struct caldera_ctx * ctx, const char * name, const char * index, const char * extra2) {
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s", make_dir(name));
    const char * s1[] = { "model.embed_tokens.weight", "model.norm.weight" };
    const char * s2[] = { "lm_head.weight", extra2 };
    write_shard(ctx, tu_path(dir, "model-00001-of-00002.safetensors"), s1, 2);
    write_shard(ctx, tu_path(dir, "model-00002-of-00002.safetensors"), s2, extra2 ? 2 : 1);
    ck_assert_int_eq(tu_write_file(tu_path(dir, "model.safetensors.index.json"), index), 0);
    ck_assert_int_eq(tu_write_file(tu_path(dir, "config.json"), CONFIG), 0);
    return strdup(dir);
}

START_TEST(test_sharded_folder_and_config) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    char * dir = make_sharded(ctx, "sharded", INDEX_OK, NULL);
    ck_assert_int_ge(ops->probe_path(dir), 50);
    struct caldera_inst * inst = new_inst(ctx);
    ck_assert_int_eq(ops->open(inst, dir), 0);
    ck_assert_int_eq(ops->n_tensors(inst), 3);
    int64_t i = find(ctx, inst, "lm_head.weight");
    ck_assert_int_ge(i, 0);
    struct caldera_tensor t;
    int owned;
    ck_assert_int_eq(ops->read_tensor(inst, i, CALDERA_DTYPE_F32, &t, &owned), 0);
    ck_assert(((float *) t.data)[1] == 0.5f);
    struct caldera_model_desc d;
    ck_assert_int_eq(ops->model_desc(inst, &d), 0);
    ck_assert_str_eq(d.arch, "llama");
    ck_assert_int_eq(d.n_layers, 5);
    ck_assert_int_eq(d.hidden, 64);
    ck_assert_int_eq(d.ffn, 172);
    ck_assert_int_eq(d.n_heads, 8);
    ck_assert_int_eq(d.n_kv_heads, 4);
    ck_assert_int_eq(d.head_dim, 8);  // hidden / heads when head_dim is absent
    ck_assert_int_eq(d.vocab, 512);
    ck_assert_int_eq(d.ctx_len, 1024);
    ck_assert(d.rope_theta == 100000.0);
    ck_assert(d.norm_eps == 1e-5);
    ck_assert_str_eq(d.rope_scaling, "linear");
    ck_assert(d.rope_scaling_factor == 2.0);
    ck_assert_int_eq(d.tied_embeddings, 0);  // not said, and lm_head.weight exists
    const struct caldera_meta * m = ops->meta(inst);
    int64_t v;
    double x;
    const char * s;
    ck_assert_int_eq(caldera_meta_get_string(m, "general.architecture", &s), 0);
    ck_assert_str_eq(s, "llama");
    ck_assert_int_eq(caldera_meta_get_int(m, "llama.block_count", &v), 0);
    ck_assert_int_eq(v, 5);
    ck_assert_int_eq(caldera_meta_get_int(m, "llama.context_length", &v), 0);
    ck_assert_int_eq(v, 1024);
    ck_assert_int_eq(caldera_meta_get_int(m, "llama.attention.head_count_kv", &v), 0);
    ck_assert_int_eq(v, 4);
    ck_assert_int_eq(caldera_meta_get_float(m, "llama.rope.freq_base", &x), 0);
    ck_assert(x == 100000.0);
    ck_assert_int_eq(caldera_meta_get_string(m, "llama.rope.scaling.type", &s), 0);
    ck_assert_str_eq(s, "linear");
    ck_assert_int_eq(caldera_meta_get_int(m, "tokenizer.ggml.eos_token_id", &v), 0);
    ck_assert_int_eq(v, 2);
    // the index file itself and a shard file with config.json beside it open too
    ck_assert_int_eq(ops->open(inst, tu_path(dir, "model.safetensors.index.json")), 0);
    ck_assert_int_eq(ops->n_tensors(inst), 3);
    ck_assert_int_eq(ops->open(inst, tu_path(dir, "model-00002-of-00002.safetensors")), 0);
    ck_assert_int_eq(ops->n_tensors(inst), 1);
    ck_assert_int_eq(ops->model_desc(inst, &d), 0);
    caldera_inst_free(inst);
    free(dir);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_single_folder_tied) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s", make_dir("single"));
    const char * names[] = { "model.embed_tokens.weight" };
    write_shard(ctx, tu_path(dir, "model.safetensors"), names, 1);
    ck_assert_int_eq(tu_write_file(tu_path(dir, "config.json"), "{\"model_type\": \"llama\", \"num_attention_heads\": 9,"
                                   " \"hidden_size\": 576, \"head_dim\": 64}"), 0);
    struct caldera_inst * inst = new_inst(ctx);
    ck_assert_int_eq(ops->open(inst, dir), 0);
    struct caldera_model_desc d;
    ck_assert_int_eq(ops->model_desc(inst, &d), 0);
    ck_assert_int_eq(d.tied_embeddings, 1);
    ck_assert_int_eq(d.n_kv_heads, 9);  // defaults to n_heads
    ck_assert_int_eq(d.head_dim, 64);
    ck_assert(d.rope_theta == 10000.0);
    // a broken config.json is an error of its own
    ck_assert_int_eq(tu_write_file(tu_path(dir, "config.json"), "{\"model_type\": "), 0);
    ck_assert_int_eq(ops->open(inst, dir), CALDERA_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "config.json: not valid JSON"));
    ck_assert_int_eq(ops->n_tensors(inst), 0);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

static int unhex(const char * hex, char * out, size_t cap) {
    size_t n = strlen(hex) / 2;
    ck_assert_uint_lt(n, cap);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        ck_assert_int_eq(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (char) v;
    }
    out[n] = 0;
    return (int) n;
}

// tokenizer.json written by the `tokenizers` package (fixtures/make_tokenizer_fixture.py);
// expect.txt holds values taken from that package's API.
START_TEST(test_hf_tokenizer_json) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    struct caldera_inst * inst = new_inst(ctx);
    ck_assert_int_eq(ops->open(inst, HF_TOK), 0);
    const struct caldera_meta * m = ops->meta(inst);
    const char * s;
    ck_assert_int_eq(caldera_meta_get_string(m, "tokenizer.ggml.model", &s), 0);
    ck_assert_str_eq(s, "gpt2");
    enum caldera_meta_type et;
    int64_t n_tok, n_merges, n_types;
    const void * toks, * merges, * types;
    ck_assert_int_eq(caldera_meta_get_array(m, "tokenizer.ggml.tokens", &et, &n_tok, &toks), 0);
    ck_assert_int_eq(caldera_meta_get_array(m, "tokenizer.ggml.merges", &et, &n_merges, &merges), 0);
    ck_assert_int_eq(caldera_meta_get_array(m, "tokenizer.ggml.token_type", &et, &n_types, &types), 0);
    ck_assert_int_eq(n_types, n_tok);
    size_t len;
    char * ex = tu_read_file(HF_TOK "/expect.txt", &len);
    ck_assert_ptr_nonnull(ex);
    int checked = 0;
    for (char * save = NULL, * line = strtok_r(ex, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char what[16], hex[256], want[128];
        long long a;
        if (sscanf(line, "%15s %lld %255s", what, &a, hex) == 3) {
            unhex(hex, want, sizeof(want));
            if (strcmp(what, "token") == 0) {
                ck_assert_int_lt(a, n_tok);
                ck_assert_str_eq(((const char * const *) toks)[a], want);
            } else {
                ck_assert_int_lt(a, n_merges);
                ck_assert_str_eq(((const char * const *) merges)[a], want);
            }
        } else {
            ck_assert_int_eq(sscanf(line, "%15s %lld", what, &a), 2);
            ck_assert_int_eq(strcmp(what, "vocab") == 0 ? n_tok : n_merges, a);
        }
        checked++;
    }
    ck_assert_int_ge(checked, 10);
    ck_assert_int_eq(((const int32_t *) types)[0], 3);  // <|endoftext|>: special added token
    ck_assert_int_eq(((const int32_t *) types)[3], 1);
    int64_t v;
    ck_assert_int_eq(caldera_meta_get_int(m, "tokenizer.ggml.bos_token_id", &v), 0);  // from config.json
    ck_assert_int_eq(v, 1);
    caldera_free(ex);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

static void expect_open_fail(const char * path, int code, const char * msg) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * inst = new_inst(ctx);
    int rc = ops_of(ctx)->open(inst, path);
    ck_assert_msg(rc == code, "%s: rc %d (%s), want %d; msg: %s", path, rc, caldera_status_str(rc), code,
                  caldera_ctx_errmsg(ctx));
    ck_assert_msg(strstr(caldera_ctx_errmsg(ctx), msg) != NULL, "message '%s' lacks '%s'", caldera_ctx_errmsg(ctx), msg);
    ck_assert_int_eq(ops_of(ctx)->n_tensors(inst), 0);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}

// A folder with the fixture's model and config and the given tokenizer.json text.
static const char * tok_dir(const char * name, const char * tokenizer_json) {
    static char dir[1024];
    snprintf(dir, sizeof(dir), "%s", make_dir(name));
    size_t len;
    char * st = tu_read_file(HF_TOK "/model.safetensors", &len);
    FILE * f = fopen(tu_path(dir, "model.safetensors"), "wb");
    fwrite(st, 1, len, f);
    fclose(f);
    caldera_free(st);
    ck_assert_int_eq(tu_write_file(tu_path(dir, "tokenizer.json"), tokenizer_json), 0);
    return dir;
}

START_TEST(test_hf_tokenizer_errors) {
    struct caldera_ctx * ctx = tu_ctx();
    expect_open_fail(tok_dir("tok-json", "{\"model\": "), CALDERA_ERR_FORMAT, "tokenizer.json: not valid JSON");
    expect_open_fail(tok_dir("tok-novocab", "{\"model\": {\"type\": \"BPE\"}}"), CALDERA_ERR_FORMAT,
                     "model.vocab (object), model.merges (array) or added_tokens (array) missing");
    expect_open_fail(tok_dir("tok-badid", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}"),
                     CALDERA_ERR_FORMAT, "vocab id of 'a' is not an integer in [0, 2^24)");
    expect_open_fail(tok_dir("tok-dupid", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}}"),
                     CALDERA_ERR_FORMAT, "vocab id 0 is given to 'a' and 'b'");
    expect_open_fail(tok_dir("tok-gap", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 2}, \"merges\": []},"
                             " \"added_tokens\": [{\"id\": 2, \"content\": \"b\"}]}"),
                     CALDERA_ERR_FORMAT, "token id 1 is missing (ids must be 0..2)");
    // issue 11: an id of 2^24 - 1 from 60 bytes must not allocate 2^24 token slots (~192 MiB)
    expect_open_fail(tok_dir("tok-huge-id", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 16777215}, \"merges\": []}}"),
                     CALDERA_ERR_FORMAT, "token id 16777215 but only 1 vocab and added entries; ids must be 0..0 without gaps");
    expect_open_fail(tok_dir("tok-merge", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [3]}}"),
                     CALDERA_ERR_FORMAT, "model.merges[0] is neither");
    expect_open_fail(tok_dir("tok-added", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                             " \"added_tokens\": [{\"id\": \"x\"}]}"),
                     CALDERA_ERR_FORMAT, "added_tokens[0] needs an integer id");
    // another tokenizer model is skipped, not an error
    struct caldera_inst * inst = new_inst(ctx);
    ck_assert_int_eq(ops_of(ctx)->open(inst, tok_dir("tok-unigram", "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}")), 0);
    ck_assert_int_eq(caldera_meta_find(ops_of(ctx)->meta(inst), "tokenizer.ggml.tokens"), -1);
    ck_assert_ptr_nonnull(strstr(tu_log(), "tokenizer model \"Unigram\" is not read (only byte-level BPE)"));
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_sharded_errors) {
    struct caldera_ctx * ctx = tu_ctx();
    char * dir = make_sharded(ctx, "sh-missing", INDEX_OK, NULL);
    unlink(tu_path(dir, "model-00002-of-00002.safetensors"));
    expect_open_fail(dir, CALDERA_ERR_NOT_FOUND, "shard 'model-00002-of-00002.safetensors' named in the index is missing");
    free(dir);
    dir = make_sharded(ctx, "sh-wrong", "{\"weight_map\": {\"lm_head.weight\": \"model-00001-of-00002.safetensors\"}}", NULL);
    expect_open_fail(dir, CALDERA_ERR_FORMAT,
                     "tensor 'lm_head.weight' is mapped to 'model-00001-of-00002.safetensors' but not found there");
    free(dir);
    dir = make_sharded(ctx, "sh-dup", "{\"weight_map\": {\"lm_head.weight\": \"model-00002-of-00002.safetensors\","
                       " \"model.norm.weight\": \"model-00001-of-00002.safetensors\"}}", "model.norm.weight");
    expect_open_fail(dir, CALDERA_ERR_FORMAT, "tensor 'model.norm.weight' is defined twice");
    free(dir);
    dir = make_sharded(ctx, "sh-path", "{\"weight_map\": {\"a\": \"../x.safetensors\"}}", NULL);
    expect_open_fail(dir, CALDERA_ERR_FORMAT, "weight_map entry of 'a' is not a file name in the same folder");
    free(dir);
    dir = make_sharded(ctx, "sh-json", "{\"weight_map\": {\"a\": ", NULL);
    expect_open_fail(dir, CALDERA_ERR_FORMAT, "model.safetensors.index.json: not valid JSON");
    free(dir);
    dir = make_sharded(ctx, "sh-nomap", "{\"metadata\": {}}", NULL);
    expect_open_fail(dir, CALDERA_ERR_FORMAT, "\"weight_map\" missing or not an object");
    free(dir);
    expect_open_fail(make_dir("empty-dir"), CALDERA_ERR_NOT_FOUND,
                     "folder has neither model.safetensors nor model.safetensors.index.json");
    expect_open_fail("/nonexistent/model.safetensors", CALDERA_ERR_NOT_FOUND, "/nonexistent/model.safetensors");
    caldera_ctx_free(ctx);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// Malformed headers: a file with header text h (length claimed = strlen(h) unless claim != 0)
// and data_len zero bytes of data.

static const char * raw_file(const char * name, uint64_t claim, const char * h, size_t data_len) {
    const char * path = tu_path(tu_tmpdir(), name);
    FILE * f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    uint64_t n = claim ? claim : strlen(h);
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t) (n >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(h, 1, strlen(h), f);
    for (size_t i = 0; i < data_len; i++) fputc(0, f);
    fclose(f);
    return path;
}

static void bad(const char * h, size_t data_len, int code, const char * msg) {
    static int k;
    char name[64];
    snprintf(name, sizeof(name), "bad-%d.safetensors", k++);
    expect_open_fail(raw_file(name, 0, h, data_len), code, msg);
}

START_TEST(test_bad_sizes) {
    const char * p = tu_path(tu_tmpdir(), "tiny.safetensors");
    ck_assert_int_eq(tu_write_file(p, "abc"), 0);
    expect_open_fail(p, CALDERA_ERR_FORMAT, "tiny.safetensors: file of 3 bytes is too small for a safetensors header");
    expect_open_fail(raw_file("past-end.safetensors", 1000, "{}", 0), CALDERA_ERR_FORMAT,
                     "header length 1000 runs past the end of the file (10 bytes)");
    expect_open_fail(raw_file("huge-len.safetensors", UINT64_MAX, "{}", 0), CALDERA_ERR_FORMAT,
                     "header length 18446744073709551615 runs past the end of the file");
    // over the 100 MB limit but inside the (sparse) file
    const char * big = raw_file("limit.safetensors", ((uint64_t) 100 << 20) + 8, "{}", 0);
    ck_assert_int_eq(truncate(big, ((off_t) 101 << 20)), 0);
    expect_open_fail(big, CALDERA_ERR_FORMAT, "exceeds the limit of 104857600 bytes");
}
END_TEST

START_TEST(test_bad_json) {
    bad("{\"a\": ", 0, CALDERA_ERR_FORMAT, "header is not valid JSON");
    bad("[1, 2]", 0, CALDERA_ERR_FORMAT, "header is not a JSON object");
    bad("", 0, CALDERA_ERR_FORMAT, "header is not valid JSON");
    bad("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
        " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", 8, CALDERA_ERR_FORMAT,
        "duplicate object key");
    bad("{\"a\": 3}", 0, CALDERA_ERR_FORMAT, "tensor 'a': entry is not a JSON object");
    bad("{\"__metadata__\": [1]}", 0, CALDERA_ERR_FORMAT, "\"__metadata__\" is not a JSON object");
    bad("{\"__metadata__\": {\"k\": 5}}", 0, CALDERA_ERR_FORMAT, "\"__metadata__\" value of 'k' is not a string");
}
END_TEST

START_TEST(test_bad_tensor_fields) {
    bad("{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, CALDERA_ERR_FORMAT, "tensor 'w': \"dtype\" missing or not a string");
    bad("{\"w\": {\"dtype\": 7, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, CALDERA_ERR_FORMAT,
        "tensor 'w': \"dtype\" missing or not a string");
    bad("{\"w\": {\"dtype\": \"C64\", \"shape\": [1], \"data_offsets\": [0, 8]}}", 8, CALDERA_ERR_UNSUPPORTED,
        "tensor 'w': dtype \"C64\" is not supported; supported: F64, F32");
    bad("{\"w\": {\"dtype\": \"f32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, CALDERA_ERR_UNSUPPORTED,
        "dtype \"f32\" is not supported");
    bad("{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, CALDERA_ERR_FORMAT, "tensor 'w': \"shape\" missing or not an array");
    bad("{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4, CALDERA_ERR_FORMAT,
        "tensor 'w': shape[0] is not a non-negative integer");
    bad("{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 1.5], \"data_offsets\": [0, 4]}}", 4, CALDERA_ERR_FORMAT,
        "tensor 'w': shape[1] is not a non-negative integer");
    bad("{\"w\": {\"dtype\": \"F32\", \"shape\": [1, 1, 1, 1, 1], \"data_offsets\": [0, 4]}}", 4, CALDERA_ERR_UNSUPPORTED,
        "tensor 'w': shape has 5 dimensions; at most 4 supported");
    bad("{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], \"data_offsets\": [0, 4]}}", 4, CALDERA_ERR_FORMAT,
        "tensor 'w': the product of the shape overflows 64 bits");
    bad("{\"w\": {\"dtype\": \"F64\", \"shape\": [4611686018427387904], \"data_offsets\": [0, 4]}}", 4, CALDERA_ERR_FORMAT,
        "tensor 'w': the byte size of the shape overflows");
    bad("{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, CALDERA_ERR_FORMAT, "tensor 'w': \"data_offsets\" missing or invalid");
    bad("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 0]}}", 4, CALDERA_ERR_FORMAT,
        "\"data_offsets\" missing or invalid; allowed: [begin, end] with 0 <= begin <= end");
    bad("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}", 8, CALDERA_ERR_FORMAT,
        "tensor 'w': \"data_offsets\" missing or invalid");
    bad("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 4, CALDERA_ERR_FORMAT,
        "tensor 'w': \"data_offsets\" missing or invalid");
    bad("{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 4, CALDERA_ERR_FORMAT,
        "tensor 'w': data_offsets [0, 8] run past the end of the data (4 bytes)");
    bad("{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 4]}}", 8, CALDERA_ERR_FORMAT,
        "tensor 'w': data_offsets span 4 bytes but F32 x 2 elements need 8");
    bad("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
        " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}", 12, CALDERA_ERR_FORMAT,
        "tensors 'a' and 'b' overlap in the data section");
}
END_TEST

// A file from another writer whose header length is not a multiple of 8: the F32 data is
// misaligned in the map, so the reader copies it instead of handing out a misaligned view.
START_TEST(test_misaligned_data_is_copied) {
    struct caldera_ctx * ctx = tu_ctx();
    const char * h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";  // 55 bytes
    ck_assert_int_eq(strlen(h) % 4 != 0, 1);
    const char * path = tu_path(tu_tmpdir(), "misaligned.safetensors");
    FILE * f = fopen(path, "wb");
    uint64_t n = strlen(h);
    fwrite(&n, 8, 1, f);  // little-endian host
    fwrite(h, 1, n, f);
    float v[2] = { 1.5f, -3.0f };
    fwrite(v, 4, 2, f);
    fclose(f);
    struct caldera_inst * inst = new_inst(ctx);
    ck_assert_int_eq(ops_of(ctx)->open(inst, path), 0);
    struct caldera_tensor t;
    int owned;
    ck_assert_int_eq(ops_of(ctx)->read_tensor(inst, 0, CALDERA_DTYPE_F32, &t, &owned), 0);
    ck_assert_int_eq(owned, 1);
    ck_assert_uint_eq((uintptr_t) t.data % 4, 0);
    ck_assert(((float *) t.data)[0] == 1.5f && ((float *) t.data)[1] == -3.0f);
    caldera_tensor_free(&t);
    ck_assert_int_eq(ops_of(ctx)->read_tensor(inst, 1, CALDERA_DTYPE_F32, &t, &owned), CALDERA_ERR_RANGE);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "tensor index 1 out of range [0, 1)"));
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_probe) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    ck_assert_int_eq(ops->probe_path(CALDERA_SHARED_DATA "/stories260K/stories260K.bin"), 0);
    ck_assert_int_eq(ops->probe_path("/nonexistent"), 0);
    const char * noext = raw_file("noext", 0, "{\"__metadata__\":{}}", 0);
    ck_assert_int_ge(ops->probe_path(noext), 50);
    ck_assert_int_eq(ops->probe_path(tu_tmpdir()), 0);  // a folder without a model
    caldera_ctx_free(ctx);
}
END_TEST

// Every allocation of open() and of a whole write fails once in turn: each failure is
// CALDERA_ERR_NOMEM, leaves nothing open or behind, and leaks nothing (run under ASan).
START_TEST(test_oom_sweep) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    char * dir = make_sharded(ctx, "oom-sharded", INDEX_OK, NULL);
    const char * known = tu_path(tu_tmpdir(), "oom-known.safetensors");
    write_known(ctx, known);
    const char * paths[3] = { dir, known, HF_TOK };
    for (int k = 0; k < 3; k++) {
        struct caldera_inst * inst = new_inst(ctx);
        int n, rc = -1;
        for (n = 1; n < 10000 && rc != 0; n++) {
            caldera_alloc_fail_at(n);
            rc = ops->open(inst, paths[k]);
            caldera_alloc_fail_at(0);
            ck_assert_msg(rc == 0 || rc == CALDERA_ERR_NOMEM, "%s: allocation %d: rc %d (%s)", paths[k], n, rc,
                          caldera_ctx_errmsg(ctx));
            if (rc) ck_assert_int_eq(ops->n_tensors(inst), 0);
        }
        ck_assert_int_eq(rc, 0);
        ck_assert_int_gt(n, 3);
        caldera_inst_free(inst);
    }
    char wdir[1024];
    snprintf(wdir, sizeof(wdir), "%s", make_dir("oom-write"));
    struct caldera_meta * m = known_meta();
    float x[6] = { 1, 2, 3, 4, 5, 6 };
    struct caldera_tensor t = caldera_tensor_view_f32(x, 2, 3);
    int rc = -1;
    for (int n = 1; n < 10000 && rc != 0; n++) {
        struct caldera_inst * inst = new_inst(ctx);
        caldera_alloc_fail_at(n);
        rc = ops->create(inst, tu_path(wdir, "w.safetensors"), m);
        if (rc == 0) rc = ops->write_tensor(inst, "a", &t);
        if (rc == 0) rc = ops->write_tensor(inst, "b", &t);
        if (rc == 0) rc = ops->finish(inst, 1);
        caldera_alloc_fail_at(0);
        ck_assert_msg(rc == 0 || rc == CALDERA_ERR_NOMEM, "write, allocation %d: rc %d (%s)", n, rc, caldera_ctx_errmsg(ctx));
        caldera_inst_free(inst);
        ck_assert_int_eq(count_files(wdir), rc == 0 ? 1 : 0);
    }
    ck_assert_int_eq(rc, 0);
    caldera_meta_free(m);
    free(dir);
    caldera_ctx_free(ctx);
}
END_TEST

// Never a crash: 400 corrupted copies of a valid file (random bytes of the header and length
// changed, random truncation). Each open either fails with a format-type code and a message, or
// succeeds and then every tensor reads (run under ASan to catch out-of-bounds reads).
START_TEST(test_corruption_never_crashes) {
    struct caldera_ctx * ctx = tu_ctx();
    const struct caldera_format_ops * ops = ops_of(ctx);
    const char * src = tu_path(tu_tmpdir(), "fuzz-src.safetensors");
    write_known(ctx, src);
    size_t len;
    char * orig = tu_read_file(src, &len);
    ck_assert_ptr_nonnull(orig);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | (uint8_t) orig[i];
    char * buf = malloc(len);
    struct caldera_rng rng;
    caldera_rng_seed(&rng, 1234);
    char path[1024];
    snprintf(path, sizeof(path), "%s", tu_path(tu_tmpdir(), "fuzz.safetensors"));
    int opened = 0;
    for (int it = 0; it < 400; it++) {
        memcpy(buf, orig, len);
        size_t cut = len;
        int flips = 1 + (int) (caldera_rng_u64(&rng) % 4);
        for (int f = 0; f < flips; f++) {
            size_t at = (size_t) (caldera_rng_u64(&rng) % (8 + n));  // length field or header text
            static const char json_chars[] = "0123456789[]{}\",:-";
            uint64_t r = caldera_rng_u64(&rng);
            buf[at] = (r & 1) ? (char) (r >> 8) : json_chars[(r >> 8) % (sizeof(json_chars) - 1)];
        }
        if (caldera_rng_u64(&rng) % 4 == 0) cut = (size_t) (caldera_rng_u64(&rng) % len);
        FILE * fp = fopen(path, "wb");
        fwrite(buf, 1, cut, fp);
        fclose(fp);
        struct caldera_inst * inst = new_inst(ctx);
        int rc = ops->open(inst, path);
        ck_assert_msg(rc == 0 || rc == CALDERA_ERR_FORMAT || rc == CALDERA_ERR_UNSUPPORTED,
                      "iteration %d: rc %d (%s)", it, rc, caldera_ctx_errmsg(ctx));
        if (rc < 0) ck_assert_msg(strstr(caldera_ctx_errmsg(ctx), "fuzz.safetensors") != NULL, "%s", caldera_ctx_errmsg(ctx));
        for (int64_t i = 0; rc == 0 && i < ops->n_tensors(inst); i++) {
            struct caldera_tensor t;
            int owned;
            struct caldera_tensor_info ti;
            ck_assert_int_eq(ops->tensor_info(inst, i, &ti), 0);
            int r2 = ops->read_tensor(inst, i, CALDERA_DTYPE_F32, &t, &owned);
            if (r2 == 0 && ti.nbytes > 0) {  // touch every element
                volatile float sink = 0;
                for (int64_t k = 0; k < caldera_tensor_nelements(&t); k++) sink += ((float *) t.data)[k];
                (void) sink;
            }
            if (r2 == 0 && owned) caldera_tensor_free(&t);
        }
        opened += rc == 0;
        caldera_inst_free(inst);
    }
    ck_assert_int_gt(opened, 0);   // some mutations keep the file valid (e.g. in names)
    ck_assert_int_lt(opened, 400); // and most do not
    free(buf);
    caldera_free(orig);
    caldera_ctx_free(ctx);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// Issue 11: inputs found by fuzzing (tests/fuzz/regress/), each a test that failed before its fix.

#define REGRESS(name) CALDERA_TEST_SRC_DIR "/../../tests/fuzz/regress/safetensors/" name

// Typed metadata with hidden = INT64_MIN and n_heads = -1: head_dim = hidden / n_heads trapped
// (SIGFPE); negative and absurd hyper-parameters are now an error naming the key and value.
START_TEST(test_regress_hparams_int64_min) {
    expect_open_fail(REGRESS("issue11-int64-min-div-sigfpe.safetensors"), CALDERA_ERR_FORMAT,
                     "a.embedding_length = -9223372036854775808; allowed: an integer in [0, 2147483647]");
    expect_open_fail(raw_file("heads-neg.safetensors", 0,
                              "{\"__metadata__\": {\"general.architecture\": \"a\", \"a.attention.head_count\": \"-1\","
                              " \"caldera.meta_types\": \"{\\\"a.attention.head_count\\\": \\\"i64\\\"}\"}}", 0),
                     CALDERA_ERR_FORMAT, "a.attention.head_count = -1; allowed: an integer in [0, 2147483647]");
    expect_open_fail(raw_file("eps-nan.safetensors", 0,
                              "{\"__metadata__\": {\"general.architecture\": \"a\", \"a.rope.freq_base\": \"-2.5\","
                              " \"caldera.meta_types\": \"{\\\"a.rope.freq_base\\\": \\\"f64\\\"}\"}}", 0),
                     CALDERA_ERR_FORMAT, "a.rope.freq_base = -2.5; allowed: a finite number >= 0");
    // the same in config.json
    const char * dir = tok_dir("cfg-neg", "{}");
    ck_assert_int_eq(tu_write_file(tu_path(dir, "config.json"),
                                   "{\"model_type\": \"llama\", \"hidden_size\": 64, \"num_attention_heads\": -8}"), 0);
    expect_open_fail(dir, CALDERA_ERR_FORMAT, "config.json: num_attention_heads = -8; allowed: an integer in [0, 2147483647]");
    dir = tok_dir("cfg-huge", "{}");
    ck_assert_int_eq(tu_write_file(tu_path(dir, "config.json"), "{\"model_type\": \"llama\", \"hidden_size\": 4294967296}"), 0);
    expect_open_fail(dir, CALDERA_ERR_FORMAT, "config.json: hidden_size = 4294967296; allowed: an integer in [0, 2147483647]");
}
END_TEST

// A JSON file beside the model is parsed whole: above the header limit it is refused unread.
START_TEST(test_sidecar_json_limit) {
    const char * dir = tok_dir("big-config", "{}");
    ck_assert_int_eq(tu_write_file(tu_path(dir, "config.json"), "{}"), 0);
    ck_assert_int_eq(truncate(tu_path(dir, "config.json"), ((off_t) 100 << 20) + 1), 0);  // sparse
    expect_open_fail(dir, CALDERA_ERR_FORMAT, "config.json: 104857601 bytes of JSON exceed the limit of 104857600 bytes");
}
END_TEST

// "{}" and no data: qsort was called with a NULL base (UB, fatal under UBSan). Now: 0 tensors.
// Campaign of 30 November 2026: shape [0, 256, 2^56] has no elements, but its non-zero dimensions
// overflow int64 in product; it was accepted (the product was checked in order, and 0 · x never overflows).
START_TEST(test_regress_zero_dim_product_overflow) {
    expect_open_fail(REGRESS("fuzz-zero-dim-product-overflow.safetensors"), CALDERA_ERR_FORMAT,
                     "tensor 'w': the product of the shape overflows 64 bits");
}
END_TEST

START_TEST(test_regress_empty_header) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * inst = new_inst(ctx);
    ck_assert_int_eq(ops_of(ctx)->open(inst, REGRESS("issue11-empty-header-qsort-null.safetensors")), 0);
    ck_assert_int_eq(ops_of(ctx)->n_tensors(inst), 0);
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

// CI's fuzz step of 30 November 2026: shape [0, 25, 2^56] (no elements; the non-zero dimensions fit
// in int64) read as another dtype made tensor_copy allocate a row buffer of 2^56 floats. A tensor
// with no elements now reads in every dtype without allocating for its rows.
START_TEST(test_regress_zero_rows_huge_cols) {
    struct caldera_ctx *  ctx  = tu_ctx();
    struct caldera_inst * inst = new_inst(ctx);
    ck_assert_int_eq(ops_of(ctx)->open(inst, REGRESS("fuzz-zero-rows-huge-cols-alloc.safetensors")), 0);
    ck_assert_int_eq(ops_of(ctx)->n_tensors(inst), 1);
    const enum caldera_dtype want[] = { CALDERA_DTYPE_F32, CALDERA_DTYPE_F16, CALDERA_DTYPE_BF16 };
    for (int k = 0; k < 3; k++) {
        struct caldera_tensor t;
        int                   owned = 0;
        ck_assert_msg(ops_of(ctx)->read_tensor(inst, 0, want[k], &t, &owned) == 0, "%s", caldera_ctx_errmsg(ctx));
        ck_assert_int_eq(t.ndim, 3);
        ck_assert_int_eq(t.ne[0], 0);
        ck_assert_int_eq(t.ne[2], (int64_t) 1 << 56);
        if (owned) caldera_tensor_free(&t);
    }
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * safetensors_suite(void) {
    Suite * s = suite_create("safetensors");
    TCase * tc = tcase_create("roundtrip");
    tcase_add_test(tc, test_roundtrip_every_dtype);
    tcase_add_test(tc, test_metadata_typed_roundtrip);
    tcase_add_test(tc, test_update_meta);
    tcase_add_test(tc, test_written_layout);
    tcase_add_test(tc, test_python_fixture);
    tcase_add_test(tc, test_finish_abort_and_writer_errors);
    tcase_add_test(tc, test_rejected_tensor_keeps_file_consistent);
    tcase_add_test(tc, test_argument_errors);
    tcase_add_test(tc, test_views_survive_page_dropping);
    tcase_add_test(tc, test_misaligned_data_is_copied);
    tcase_add_test(tc, test_probe);
    suite_add_tcase(s, tc);
    tc = tcase_create("folders");
    tcase_add_test(tc, test_sharded_folder_and_config);
    tcase_add_test(tc, test_single_folder_tied);
    tcase_add_test(tc, test_sharded_errors);
    tcase_add_test(tc, test_oom_sweep);
    tcase_add_test(tc, test_hf_tokenizer_json);
    tcase_add_test(tc, test_hf_tokenizer_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("malformed");
    tcase_add_test(tc, test_bad_sizes);
    tcase_add_test(tc, test_bad_json);
    tcase_add_test(tc, test_bad_tensor_fields);
    tcase_add_test(tc, test_corruption_never_crashes);
    tcase_add_test(tc, test_regress_hparams_int64_min);
    tcase_add_test(tc, test_regress_empty_header);
    tcase_add_test(tc, test_regress_zero_dim_product_overflow);
    tcase_add_test(tc, test_regress_zero_rows_huge_cols);
    tcase_add_test(tc, test_sidecar_json_limit);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(safetensors_suite)
