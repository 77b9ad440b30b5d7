// SPDX-License-Identifier: MIT
// Tests of the pipeline engine with test plugins: a rounding quantizer, a sign-flip transform and a
// recording writer, reading the synthetic model. Covers a full run with metrics checked against an
// independent computation, every configuration diagnostic, overrides, failures that must leave
// no output, and the effective configuration.
#include <jansson.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#define PIPE_REL_ERR_TOL 1e-5   // relative agreement of the reported error with an independent one

// ---- tq: rounds every weight to a multiple of `step` ------------------------------------------
struct tq_priv { double step; int64_t max_cols; char * fail_on; double scale_out; };
static int tq_calls, tq_cancel_at;   // count quantize calls; cancel the run at call tq_cancel_at
static int64_t tq_ulp_at = -1;       // dequantize is one ulp off at this element (verify must see it)
static const struct caldera_option tq_options[] = {
    { "step", "rounding step", offsetof(struct tq_priv, step), CALDERA_OPT_DOUBLE, { .dbl = 0.25 }, 0.001, 1 },
    { "max_cols", "largest accepted in_features", offsetof(struct tq_priv, max_cols), CALDERA_OPT_INT, { .i64 = 1 << 20 }, 1, 1 << 20 },
    { "fail_on", "fail (numeric) on weights whose name contains this", offsetof(struct tq_priv, fail_on), CALDERA_OPT_STRING, { .str = "" } },
    { "scale_out", "factor of the stored step (codes are rounded with `step`)", offsetof(struct tq_priv, scale_out), CALDERA_OPT_DOUBLE, { .dbl = 1 }, 1, 1e38 },
    { NULL },
};
static int tq_check_shape(struct caldera_inst * inst, int64_t rows, int64_t cols) {
    struct tq_priv * p = caldera_inst_priv(inst);
    if (cols > p->max_cols) return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "cols %lld > max_cols %lld", (long long) cols, (long long) p->max_cols);
    return 0;
}
static int tq_quantize(struct caldera_inst * inst, const struct caldera_tensor * w, const struct caldera_tensor * h,
                       struct caldera_tensor * w_hat, struct caldera_pack * pack) {
    struct tq_priv * p = caldera_inst_priv(inst);
    int64_t m = w->ne[0], n = w->ne[1], ne[2] = { m, n }, one = 1;
    int8_t * codes;
    float * step;
    if (p->fail_on[0] && m == 48 && n == 32) return caldera_error(inst, CALDERA_ERR_NUMERIC, "asked to fail");
    if (++tq_calls == tq_cancel_at) caldera_ctx_cancel(caldera_inst_ctx(inst));   // stops at the next weight
    int rc = caldera_pack_add(pack, "codes", CALDERA_DTYPE_I8, 2, ne, (void **) &codes);
    if (rc == 0) rc = caldera_pack_add(pack, "step", CALDERA_DTYPE_F32, 1, &one, (void **) &step);
    if (rc < 0) return rc;
    step[0] = (float) (p->step * p->scale_out);
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
            float c = nearbyintf(((const float *) w->data)[i * w->ld + j] / (float) p->step);
            c = c > 127 ? 127 : c < -127 ? -127 : c;
            codes[i * n + j] = (int8_t) c;
            ((float *) w_hat->data)[i * w_hat->ld + j] = c * step[0];
        }
    }
    return 0;
}
static int tq_dequantize(struct caldera_inst * inst, const struct caldera_pack * pack, struct caldera_tensor * w_hat) {
    struct caldera_tensor c, s;
    if (caldera_pack_find(pack, "codes", &c) < 0 || caldera_pack_find(pack, "step", &s) < 0) return CALDERA_ERR_FORMAT;
    for (int64_t i = 0; i < c.ne[0] * c.ne[1]; i++) ((float *) w_hat->data)[i] = ((int8_t *) c.data)[i] * ((float *) s.data)[0];
    if (tq_ulp_at >= 0) ((float *) w_hat->data)[tq_ulp_at] = nextafterf(((float *) w_hat->data)[tq_ulp_at], INFINITY);
    return 0;
}
static const struct caldera_quantizer_ops tq_ops = { .struct_size = sizeof(struct caldera_quantizer_ops), .quantize = tq_quantize, .dequantize = tq_dequantize };
static const struct caldera_plugin tq_plugin = {
    CALDERA_PLUGIN_ABI_VERSION, sizeof(struct caldera_plugin), CALDERA_PLUGIN_KIND_QUANTIZER, "tq", "test rounding quantizer",
    CALDERA_VERSION_INT(1, 0, 0), 1, sizeof(struct tq_priv), tq_options, NULL, NULL, tq_check_shape, NULL, NULL, &tq_ops,
};

// ---- tneg: W -> -W, H unchanged -----------------------------------------------------------------
static int tneg_forward(struct caldera_inst * inst, const char * name, const struct caldera_tensor * w, const struct caldera_tensor * h,
                        struct caldera_tensor * w_out, struct caldera_tensor * h_out, struct caldera_pack * pack, void ** state) {
    struct caldera_ctx * ctx = caldera_inst_ctx(inst);
    int64_t one = 1;
    uint8_t * flag;
    int rc = caldera_tensor_alloc_f32(ctx, w->ne[0], w->ne[1], w_out);
    if (rc == 0 && h) rc = caldera_tensor_alloc_f32(ctx, h->ne[0], h->ne[1], h_out);
    if (rc == 0) rc = caldera_pack_add(pack, "flag", CALDERA_DTYPE_U8, 1, &one, (void **) &flag);
    if (rc < 0) return rc;
    for (int64_t i = 0; i < w->ne[0] * w->ne[1]; i++) ((float *) w_out->data)[i] = -((const float *) w->data)[i];
    if (h) memcpy(h_out->data, h->data, (size_t) (h->ne[0] * h->ne[1]) * 4);
    *state = NULL;
    return 0;
}
static int tneg_inverse(struct caldera_inst * inst, void * state, const struct caldera_tensor * w_t, struct caldera_tensor * w_out) {
    int rc = caldera_tensor_alloc_f32(caldera_inst_ctx(inst), w_t->ne[0], w_t->ne[1], w_out);
    if (rc < 0) return rc;
    for (int64_t i = 0; i < w_t->ne[0] * w_t->ne[1]; i++) ((float *) w_out->data)[i] = -((const float *) w_t->data)[i];
    return 0;
}
static void tneg_free(struct caldera_inst * inst, void * state) { (void) inst; (void) state; }
static const struct caldera_transform_ops tneg_ops = { sizeof(struct caldera_transform_ops), tneg_forward, tneg_inverse, tneg_free };
static const struct caldera_plugin tneg_plugin = {
    CALDERA_PLUGIN_ABI_VERSION, sizeof(struct caldera_plugin), CALDERA_PLUGIN_KIND_TRANSFORM, "tneg", "test sign flip",
    CALDERA_VERSION_INT(1, 0, 0), 1, 0, NULL, NULL, NULL, NULL, NULL, NULL, &tneg_ops,
};

// twrap: a quantizer that hands the work to another one named by its REF option `inner`
// (as ldlq wraps a codebook); the report must name the inner plugin too.
struct twrap_priv { struct caldera_inst * inner; };
static const struct caldera_option twrap_options[] = {
    { "inner", "the quantizer doing the work", offsetof(struct twrap_priv, inner), CALDERA_OPT_REF, .ref_kind = CALDERA_PLUGIN_KIND_QUANTIZER },
    { NULL },
};
static int twrap_quantize(struct caldera_inst * inst, const struct caldera_tensor * w, const struct caldera_tensor * h,
                          struct caldera_tensor * w_hat, struct caldera_pack * pack) {
    return caldera_quantizer_quantize(((struct twrap_priv *) caldera_inst_priv(inst))->inner, w, h, w_hat, pack);
}
static int twrap_dequantize(struct caldera_inst * inst, const struct caldera_pack * pack, struct caldera_tensor * w_hat) {
    return caldera_quantizer_dequantize(((struct twrap_priv *) caldera_inst_priv(inst))->inner, pack, w_hat);
}
static const struct caldera_quantizer_ops twrap_ops = { .struct_size = sizeof(struct caldera_quantizer_ops), .quantize = twrap_quantize,
                                                        .dequantize = twrap_dequantize };
static const struct caldera_plugin twrap_plugin = {
    CALDERA_PLUGIN_ABI_VERSION, sizeof(struct caldera_plugin), CALDERA_PLUGIN_KIND_QUANTIZER, "twrap", "test wrapper",
    CALDERA_VERSION_INT(2, 3, 4), 7, sizeof(struct twrap_priv), twrap_options, NULL, NULL, NULL, NULL, NULL, &twrap_ops,
};

// ---- memsink: a writer that records what it is given --------------------------------------------
static char    sink_names[512][160];
static int     sink_n, sink_created, sink_finished, sink_commit;
static float   sink_sum;
static int     sink_norm_dtype = -1;   // dtype the copied input_layernorm of layer 0 arrived in
struct sink_priv { char * path; };
static const struct caldera_option sink_options[] = {
    { "path", "output path", offsetof(struct sink_priv, path), CALDERA_OPT_PATH, { .str = "mem" } },
    { NULL },
};
static int sink_create(struct caldera_inst * inst, const char * path, const struct caldera_meta * meta) {
    sink_created++;
    sink_n = 0;
    const char * v;
    ck_assert_int_eq(caldera_meta_get_string(meta, "caldera.version", &v), 0);
    return 0;
}
static int sink_write(struct caldera_inst * inst, const char * name, const struct caldera_tensor * t) {
    snprintf(sink_names[sink_n++ % 512], 160, "%s", name);
    if (!strcmp(name, "model.layers.0.input_layernorm.weight")) sink_norm_dtype = t->dtype;
    if (t->dtype == CALDERA_DTYPE_F32) for (int64_t i = 0; i < caldera_tensor_nelements(t); i++) sink_sum += ((float *) t->data)[i];
    return 0;
}
static int sink_finish(struct caldera_inst * inst, int commit) {
    sink_finished++;
    sink_commit = commit;
    return 0;
}
static const struct caldera_format_ops sink_ops = { .struct_size = sizeof(struct caldera_format_ops), .create = sink_create,
                                                    .write_tensor = sink_write, .finish = sink_finish };
static const struct caldera_plugin sink_plugin = {
    CALDERA_PLUGIN_ABI_VERSION, sizeof(struct caldera_plugin), CALDERA_PLUGIN_KIND_FORMAT, "memsink", "test writer",
    CALDERA_VERSION_INT(1, 0, 0), 1, sizeof(struct sink_priv), sink_options, NULL, NULL, NULL, NULL, NULL, &sink_ops,
};

static struct caldera_ctx * pctx(void) {
    struct caldera_ctx * ctx = tu_ctx();
    ck_assert_int_eq(caldera_registry_add(ctx, &tq_plugin, "test"), 0);
    ck_assert_int_eq(caldera_registry_add(ctx, &tneg_plugin, "test"), 0);
    ck_assert_int_eq(caldera_registry_add(ctx, &sink_plugin, "test"), 0);
    ck_assert_int_eq(caldera_registry_add(ctx, &twrap_plugin, "test"), 0);
    return ctx;
}

static const char * GOOD_INI =
    "[caldera]\n"
    "reader = src\n"
    "writer = out\n"
    "hessians = src\n"
    "stages = neg, q\n"
    "verify = true\n"
    "\n"
    "[src]\n"
    "plugin = synthetic\n"
    "layers = 1\n"
    "hidden = 32\n"
    "ffn = 48\n"
    "seed = 5\n"
    "\n"
    "[neg]\n"
    "plugin = tneg\n"
    "\n"
    "[q]\n"
    "plugin = tq\n"
    "step = 0.05\n"
    "\n"
    "[out]\n"
    "plugin = memsink\n";

static int sink_has(const char * name) {
    for (int i = 0; i < sink_n; i++) if (strcmp(sink_names[i], name) == 0) return 1;
    return 0;
}

START_TEST(test_run_metrics) {
    struct caldera_ctx * ctx = pctx();
    struct caldera_config * cfg;
    struct caldera_pipeline * pl;
    ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
    ck_assert_int_eq(caldera_config_parse_string(cfg, "good.ini", GOOD_INI), 0);
    int rc = caldera_pipeline_init(ctx, cfg, &pl);
    for (int64_t i = 0; i < caldera_config_ndiag(cfg); i++) fprintf(stderr, "%s\n", caldera_config_diag(cfg, i));
    ck_assert_int_eq(rc, 0);
    sink_created = sink_finished = 0;
    ck_assert_msg(caldera_pipeline_run(pl) == 0, "%s", caldera_ctx_errmsg(ctx));
    ck_assert_int_eq(sink_created, 1);
    ck_assert_int_eq(sink_finished, 1);
    ck_assert_int_eq(sink_commit, 1);
    ck_assert(sink_has("model.layers.0.self_attn.q_proj.weight.q.codes"));
    ck_assert(sink_has("model.layers.0.self_attn.q_proj.weight.q.step"));
    ck_assert(sink_has("model.layers.0.self_attn.q_proj.weight.neg.flag"));
    ck_assert(sink_has("model.layers.0.input_layernorm.weight"));          // copied as is
    ck_assert(!sink_has("model.layers.0.self_attn.q_proj.weight"));         // compressed, not copied

    // Independent check of the reported numbers for one weight: read W and H again, round.
    json_error_t jerr;
    json_t * rep = json_loads(caldera_pipeline_report_json(pl), 0, &jerr);
    ck_assert_ptr_nonnull(rep);
    json_t * tensors = json_object_get(rep, "tensors");
    ck_assert_int_eq(json_array_size(tensors), 7);
    json_t * t0 = NULL;
    size_t i;
    json_t * t;
    json_array_foreach(tensors, i, t) if (!strcmp(json_string_value(json_object_get(t, "name")), "model.layers.0.mlp.up_proj.weight")) t0 = t;
    ck_assert_ptr_nonnull(t0);
    struct caldera_inst * src;
    ck_assert_int_eq(caldera_inst_create(ctx, "synthetic", "s2", &src), 0);
    caldera_inst_set(src, "layers", "1"); caldera_inst_set(src, "hidden", "32"); caldera_inst_set(src, "ffn", "48"); caldera_inst_set(src, "seed", "5");
    ck_assert_int_eq(caldera_inst_start(src), 0);
    const struct caldera_format_ops * ops = caldera_inst_plugin(src)->ops;
    ck_assert_int_eq(ops->open(src, NULL), 0);
    struct caldera_tensor w = { 0 }, h = { 0 };
    int owned;
    for (int64_t k = 0; k < ops->n_tensors(src); k++) {
        struct caldera_tensor_info ti;
        ops->tensor_info(src, k, &ti);
        if (!strcmp(ti.name, "model.layers.0.mlp.up_proj.weight")) ops->read_tensor(src, k, CALDERA_DTYPE_F32, &w, &owned);
        if (!strcmp(ti.name, "model.layers.0.mlp.up_proj.hessian")) ops->read_tensor(src, k, CALDERA_DTYPE_F32, &h, &owned);
    }
    ck_assert_int_eq(w.ne[0], 48);
    double num = 0, den = 0, fnum = 0, fden = 0;
    float * wd = w.data, * hd = h.data;
    float   q[48 * 32];   // tq on -W (codes clipped to ±127), then the sign flipped back
    for (int k = 0; k < 48 * 32; k++) q[k] = -fminf(fmaxf(nearbyintf(-wd[k] / 0.05f), -127.0f), 127.0f) * 0.05f;
    for (int r = 0; r < 48; r++) {
        for (int a = 0; a < 32; a++) {
            double ea = wd[r * 32 + a] - q[r * 32 + a];
            fnum += ea * ea;
            fden += (double) wd[r * 32 + a] * wd[r * 32 + a];
            for (int b = 0; b < 32; b++) {
                double eb = wd[r * 32 + b] - q[r * 32 + b];
                num += ea * hd[a * 32 + b] * eb;
                den += (double) wd[r * 32 + a] * hd[a * 32 + b] * wd[r * 32 + b];
            }
        }
    }
    double rel_h = sqrt(num / den), rel = sqrt(fnum / fden);
    ck_assert_double_eq_tol(json_real_value(json_object_get(t0, "rel_err_h")), rel_h, PIPE_REL_ERR_TOL * rel_h);
    ck_assert_double_eq_tol(json_real_value(json_object_get(t0, "rel_err")), rel, PIPE_REL_ERR_TOL * rel);
    ck_assert(json_is_true(json_object_get(t0, "data_aware")));
    // bits: 8 bits per code + one f32 step + one u8 flag, over 48·32 parameters
    ck_assert_double_eq_tol(json_real_value(json_object_get(t0, "bits_per_param")), (8.0 * 48 * 32 + 32 + 8) / (48.0 * 32), 1e-8);
    caldera_tensor_free(&w);
    caldera_tensor_free(&h);
    json_decref(rep);
    caldera_inst_free(src);
    caldera_pipeline_free(pl);
    caldera_config_free(cfg);
    caldera_ctx_free(ctx);
}
END_TEST

static const char * BAD_INI =
    "[caldera]\n"                 // 1
    "reader = src\n"              // 2
    "writer = nosuch\n"           // 3
    "stages = q, neg\n"           // 4
    "\n"                          // 5
    "[src]\n"                     // 6
    "plugin = synthetc\n"         // 7
    "\n"                          // 8
    "[q]\n"                       // 9
    "plugin = tq\n"               // 10
    "stpe = 0.1\n"                // 11
    "max_cols = 0\n"              // 12
    "max_cols = 3\n"              // 13
    "this line is wrong\n"        // 14
    "[neg]\n"                     // 15
    "plugin = tneg\n"             // 16
    "[unused]\n"                  // 17
    "plugin = tq\n";              // 18

START_TEST(test_all_diagnostics) {
    struct caldera_ctx * ctx = pctx();
    struct caldera_config * cfg;
    struct caldera_pipeline * pl = NULL;
    ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
    caldera_config_parse_string(cfg, "bad.ini", BAD_INI);
    ck_assert_int_eq(caldera_pipeline_init(ctx, cfg, &pl), CALDERA_ERR_CONFIG);
    ck_assert_ptr_null(pl);
    static const char * expected[] = {
        "bad.ini:13: [q] duplicate key 'max_cols' (first set at line 12)",
        "bad.ini:14: [q] expected 'key = value', '[section]' or a comment; got 'this line is wrong'",
        "bad.ini:7: [src] unknown plugin 'synthetc'; did you mean 'synthetic'?",
        "bad.ini:11: [q] tq: unknown option 'stpe'; did you mean 'step'?",
        "bad.ini:12: [q] tq: option 'max_cols' = 0 out of range [1, 1048576]",
        "bad.ini:3: [caldera] option 'writer' = 'nosuch' names no section; allowed: (no section of that kind)",
        "bad.ini:4: [caldera] stage 'q' is a quantizer; allowed: transforms first, then one quantizer or decomposer last",
        "bad.ini:4: [caldera] the last stage 'neg' is a transform; allowed: a quantizer or a decomposer",
        "bad.ini:17: [unused] tq: section is never used (no stage or reference names it)",
    };
    int64_t nd = caldera_config_ndiag(cfg);
    for (size_t k = 0; k < sizeof(expected) / sizeof(*expected); k++) {
        int found = 0;
        for (int64_t d = 0; d < nd; d++) found |= strcmp(caldera_config_diag(cfg, d), expected[k]) == 0;
        if (!found) for (int64_t d = 0; d < nd; d++) fprintf(stderr, "diag: %s\n", caldera_config_diag(cfg, d));
        ck_assert_msg(found, "missing diagnostic: %s", expected[k]);
    }
    ck_assert_int_eq(nd, (int64_t) (sizeof(expected) / sizeof(*expected)));
    caldera_config_free(cfg);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_override_and_shape_check) {
    struct caldera_ctx * ctx = pctx();
    struct caldera_config * cfg;
    struct caldera_pipeline * pl = NULL;
    ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
    ck_assert_int_eq(caldera_config_parse_string(cfg, "good.ini", GOOD_INI), 0);
    ck_assert_int_eq(caldera_config_set(cfg, "q.step=2"), 0);
    ck_assert_int_eq(caldera_config_set(cfg, "nodot=1"), CALDERA_ERR_CONFIG);
    ck_assert_int_eq(caldera_pipeline_init(ctx, cfg, &pl), CALDERA_ERR_CONFIG);
    ck_assert_str_eq(caldera_config_diag(cfg, 0), "--set:2: 'nodot=1' is not an assignment; allowed: section.key=value");
    ck_assert_str_eq(caldera_config_diag(cfg, 1), "--set:1: [q] tq: option 'step' = 2 out of range [0.001, 1]");
    caldera_config_free(cfg);

    // The shape check reads the model's headers and asks the stages about every selected weight.
    ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
    ck_assert_int_eq(caldera_config_parse_string(cfg, "shape.ini",
                                                 "[caldera]\nreader = src\nstages = q\n[src]\nplugin = synthetic\nlayers = 1\n"
                                                 "hidden = 32\nffn = 48\n[q]\nplugin = tq\n"), 0);
    ck_assert_int_eq(caldera_config_set(cfg, "q.max_cols=40"), 0);
    ck_assert_int_eq(caldera_config_set(cfg, "caldera.include=*.down_proj.weight, *.q_proj.weight"), 0);
    ck_assert_int_eq(caldera_pipeline_init(ctx, cfg, &pl), CALDERA_ERR_CONFIG);
    int64_t nd = caldera_config_ndiag(cfg);
    int found = 0;
    for (int64_t d = 0; d < nd; d++) {
        found |= !strcmp(caldera_config_diag(cfg, d), "shape.ini:9: [q] tq: weight model.layers.0.mlp.down_proj.weight (32 x 48): cols 48 > max_cols 40");
    }
    ck_assert_msg(found, "first diag: %s", caldera_config_diag(cfg, 0));
    caldera_config_free(cfg);
    caldera_ctx_free(ctx);
}
END_TEST

// gate_proj and up_proj (both 48 x 32) fail, at once on two workers: the error is the first failure in
// the reader's order with its own message. CI once saw "weight gate_proj ...: weight up_proj ...: [q]
// tq: asked to fail" when both workers prefixed the context's one shared message; each weight's
// errors now go to its own slot. Repeated, since the interleaving is a matter of timing.
START_TEST(test_failure_leaves_no_output) {
    for (int rep = 0; rep < 20; rep++) {
        struct caldera_ctx *      ctx = pctx();
        struct caldera_config *   cfg;
        struct caldera_pipeline * pl = NULL;
        ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
        ck_assert_int_eq(caldera_config_parse_string(cfg, "good.ini", GOOD_INI), 0);
        ck_assert_int_eq(caldera_config_set(cfg, "q.fail_on=up"), 0);
        ck_assert_int_eq(caldera_config_set(cfg, "caldera.threads=2"), 0);
        ck_assert_int_eq(caldera_pipeline_init(ctx, cfg, &pl), 0);
        sink_finished = 0;
        ck_assert_int_eq(caldera_pipeline_run(pl), CALDERA_ERR_NUMERIC);
        ck_assert_str_eq(caldera_ctx_errmsg(ctx), "weight model.layers.0.mlp.gate_proj.weight (48 x 32): [q] tq: asked to fail");
        ck_assert_int_eq(sink_finished, 1);
        ck_assert_int_eq(sink_commit, 0);   // the writer is told to drop its temporary output
        caldera_pipeline_free(pl);
        caldera_config_free(cfg);
        caldera_ctx_free(ctx);
    }
}
END_TEST

// The stage list (report and file metadata) names every plugin that produced data: a quantizer
// reached through a stage's REF option is listed under it with its version and format version.
START_TEST(test_stage_list_nested) {
    struct caldera_ctx * ctx = pctx();
    struct caldera_config * cfg;
    struct caldera_pipeline * pl = NULL;
    ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
    ck_assert_int_eq(caldera_config_parse_string(cfg, "good.ini", GOOD_INI), 0);
    ck_assert_int_eq(caldera_config_parse_string(cfg, "more.ini", "[w]\nplugin = twrap\ninner = q\n"), 0);
    ck_assert_int_eq(caldera_config_set(cfg, "caldera.stages=neg, w"), 0);
    ck_assert_int_eq(caldera_pipeline_init(ctx, cfg, &pl), 0);
    ck_assert_int_eq(caldera_pipeline_run(pl), 0);
    json_error_t jerr;
    json_t * rep = json_loads(caldera_pipeline_report_json(pl), 0, &jerr);
    ck_assert_ptr_nonnull(rep);
    char * got = json_dumps(json_object_get(rep, "stages"), JSON_COMPACT | JSON_SORT_KEYS);
    ck_assert_str_eq(got, "[{\"format_version\":1,\"kind\":\"transform\",\"plugin\":\"tneg\",\"section\":\"neg\",\"version\":\"1.0.0\"},"
                          "{\"format_version\":7,\"kind\":\"quantizer\",\"plugin\":\"twrap\",\"section\":\"w\",\"uses\":"
                          "[{\"format_version\":1,\"kind\":\"quantizer\",\"option\":\"inner\",\"plugin\":\"tq\",\"section\":\"q\","
                          "\"version\":\"1.0.0\"}],\"version\":\"2.3.4\"}]");
    free(got);
    json_decref(rep);
    caldera_pipeline_free(pl);
    caldera_config_free(cfg);
    caldera_ctx_free(ctx);
}
END_TEST

// verify names the element (index, row, col) and prints both values with enough digits to differ.
START_TEST(test_verify_mismatch_message) {
    struct caldera_ctx * ctx = pctx();
    struct caldera_config * cfg;
    struct caldera_pipeline * pl = NULL;
    ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
    ck_assert_int_eq(caldera_config_parse_string(cfg, "good.ini", GOOD_INI), 0);
    ck_assert_int_eq(caldera_config_set(cfg, "q.step=0.0397675"), 0);
    ck_assert_int_eq(caldera_pipeline_init(ctx, cfg, &pl), 0);
    tq_ulp_at = 37;   // every weight here has 32 columns: row 1, col 5
    int rc = caldera_pipeline_run(pl);
    tq_ulp_at = -1;
    ck_assert_int_eq(rc, CALDERA_ERR_BUG);
    const char * msg = caldera_ctx_errmsg(ctx);
    const char * at = strstr(msg, "(element 37 = row 1, col 5: decoded ");
    ck_assert_msg(at != NULL, "%s", msg);
    float dec, want;
    ck_assert_msg(sscanf(at, "(element 37 = row 1, col 5: decoded %g vs %g)", &dec, &want) == 2, "%s", msg);
    ck_assert_msg(dec != want && dec == nextafterf(want, INFINITY), "%s: the printed values do not tell the floats apart", msg);
    caldera_pipeline_free(pl);
    caldera_config_free(cfg);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_print_config) {
    struct caldera_ctx * ctx = pctx();
    struct caldera_config * cfg;
    struct caldera_pipeline * pl = NULL;
    ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
    ck_assert_int_eq(caldera_config_parse_string(cfg, "good.ini", GOOD_INI), 0);
    ck_assert_int_eq(caldera_pipeline_init(ctx, cfg, &pl), 0);
    char * buf = NULL;
    size_t len = 0;
    FILE * f = open_memstream(&buf, &len);
    ck_assert_int_eq(caldera_pipeline_print_config(pl, f), 0);
    fclose(f);
    ck_assert_ptr_nonnull(strstr(buf, "[caldera]\nreader = src\nwriter = out\n"));
    ck_assert_ptr_nonnull(strstr(buf, "include = *.self_attn.*_proj.weight, *.mlp.*_proj.weight\n"));
    ck_assert_ptr_nonnull(strstr(buf, "[q]\nplugin = tq\nstep = 0.05\nmax_cols = 1048576\n"));
    ck_assert_ptr_nonnull(strstr(buf, "[src]\nplugin = synthetic\nlayers = 1\nhidden = 32\nffn = 48\n"));
    free(buf);
    caldera_pipeline_free(pl);
    caldera_config_free(cfg);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_path_expansion) {
    struct caldera_ctx * ctx = pctx();
    struct caldera_config * cfg;
    struct caldera_pipeline * pl = NULL;
    setenv("CALDERA_TEST_DIR", "/tmp/xyz", 1);
    unsetenv("CALDERA_TEST_UNSET");
    ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
    ck_assert_int_eq(caldera_config_parse_string(cfg, "good.ini", GOOD_INI), 0);
    ck_assert_int_eq(caldera_config_set(cfg, "out.path=${CALDERA_TEST_DIR}/a/${CALDERA_TEST_UNSET:-${CALDERA_TEST_DIR}/b}.st"), 0);
    ck_assert_int_eq(caldera_pipeline_init(ctx, cfg, &pl), 0);
    char * buf = NULL;
    size_t len = 0;
    FILE * f = open_memstream(&buf, &len);
    caldera_pipeline_print_config(pl, f);
    fclose(f);
    ck_assert_ptr_nonnull(strstr(buf, "[out]\nplugin = memsink\npath = /tmp/xyz/a//tmp/xyz/b.st\n"));
    free(buf);
    caldera_pipeline_free(pl);
    caldera_config_free(cfg);
    ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
    ck_assert_int_eq(caldera_config_parse_string(cfg, "good.ini", GOOD_INI), 0);
    ck_assert_int_eq(caldera_config_set(cfg, "out.path=${CALDERA_TEST_UNSET}/x"), 0);
    ck_assert_int_eq(caldera_pipeline_init(ctx, cfg, &pl), CALDERA_ERR_CONFIG);
    ck_assert_str_eq(caldera_config_diag(cfg, 0), "--set:1: [out] memsink: option 'path': environment variable CALDERA_TEST_UNSET is not set; "
                                                  "allowed: set it, or write ${CALDERA_TEST_UNSET:-default}");
    caldera_config_free(cfg);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_copy_dtype) {
    struct caldera_ctx * ctx = pctx();
    for (int k = 0; k < 2; k++) {
        struct caldera_config * cfg;
        struct caldera_pipeline * pl = NULL;
        ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
        ck_assert_int_eq(caldera_config_parse_string(cfg, "good.ini", GOOD_INI), 0);
        if (k == 1) ck_assert_int_eq(caldera_config_set(cfg, "caldera.copy_dtype=f16"), 0);
        ck_assert_int_eq(caldera_pipeline_init(ctx, cfg, &pl), 0);
        sink_norm_dtype = -1;
        ck_assert_int_eq(caldera_pipeline_run(pl), 0);
        ck_assert_int_eq(sink_norm_dtype, k == 0 ? CALDERA_DTYPE_F32 : CALDERA_DTYPE_F16);
        caldera_pipeline_free(pl);
        caldera_config_free(cfg);
    }
    caldera_ctx_free(ctx);
}
END_TEST

// A writer built with the first ABI's format ops (no update_meta member) must never have it called.
static int old_update_called;
static int old_update(struct caldera_inst * inst, const struct caldera_meta * meta) {
    old_update_called = 1;
    return CALDERA_ERR_BUG;
}
static const struct caldera_format_ops oldsink_ops = {
    .struct_size = offsetof(struct caldera_format_ops, update_meta),   // as if built before it existed
    .create = sink_create, .write_tensor = sink_write, .finish = sink_finish,
    .update_meta = old_update,   // beyond struct_size: must not be read
};
static const struct caldera_plugin oldsink_plugin = {
    CALDERA_PLUGIN_ABI_VERSION, sizeof(struct caldera_plugin), CALDERA_PLUGIN_KIND_FORMAT, "oldsink", "old writer",
    CALDERA_VERSION_INT(1, 0, 0), 1, sizeof(struct sink_priv), sink_options, NULL, NULL, NULL, NULL, NULL, &oldsink_ops,
};

START_TEST(test_appended_ops_checked) {
    struct caldera_ctx * ctx = pctx();
    ck_assert_int_eq(caldera_registry_add(ctx, &oldsink_plugin, "test"), 0);
    struct caldera_config * cfg;
    struct caldera_pipeline * pl = NULL;
    ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
    ck_assert_int_eq(caldera_config_parse_string(cfg, "good.ini", GOOD_INI), 0);
    ck_assert_int_eq(caldera_config_set(cfg, "out.plugin=oldsink"), 0);
    ck_assert_int_eq(caldera_pipeline_init(ctx, cfg, &pl), 0);
    old_update_called = 0;
    ck_assert_int_eq(caldera_pipeline_run(pl), 0);
    ck_assert_int_eq(old_update_called, 0);
    caldera_pipeline_free(pl);
    caldera_config_free(cfg);
    caldera_ctx_free(ctx);
}
END_TEST

static struct caldera_pipeline * resume_pipeline(struct caldera_ctx * ctx, struct caldera_config ** cfg, const char * out,
                                                 const char * ckpt, const char * step) {
    struct caldera_pipeline * pl = NULL;
    char a[1200];
    ck_assert_int_eq(caldera_config_init(ctx, cfg), 0);
    ck_assert_int_eq(caldera_config_parse_string(*cfg, "good.ini", GOOD_INI), 0);
    ck_assert_int_eq(caldera_config_set(*cfg, "out.plugin=safetensors"), 0);
    snprintf(a, sizeof(a), "out.path=%s", out);
    ck_assert_int_eq(caldera_config_set(*cfg, a), 0);
    snprintf(a, sizeof(a), "caldera.checkpoint=%s", ckpt);
    ck_assert_int_eq(caldera_config_set(*cfg, a), 0);
    snprintf(a, sizeof(a), "q.step=%s", step);
    ck_assert_int_eq(caldera_config_set(*cfg, a), 0);
    // one weight at a time, so that "cancelled at the third call" checkpoints exactly three weights
    ck_assert_int_eq(caldera_config_set(*cfg, "caldera.threads=1"), 0);
    int rc = caldera_pipeline_init(ctx, *cfg, &pl);
    for (int64_t i = 0; i < caldera_config_ndiag(*cfg); i++) fprintf(stderr, "%s\n", caldera_config_diag(*cfg, i));
    ck_assert_int_eq(rc, 0);
    return pl;
}

// An interrupted run started again continues from its last finished weight and ends with the
// same output bytes as an uninterrupted run; a different configuration is refused.
START_TEST(test_resume_same_bytes) {
    const char * dir = tu_tmpdir();
    char out[600], ckpt[600], ref[600];
    snprintf(out, sizeof(out), "%s/resume.safetensors", dir);
    snprintf(ckpt, sizeof(ckpt), "%s/resume.ckpt", dir);
    snprintf(ref, sizeof(ref), "%s/reference.safetensors", dir);
    struct caldera_config * cfg;
    struct caldera_pipeline * pl;
    // 1. uninterrupted, with the same configuration (checkpoint on): the reference bytes
    struct caldera_ctx * ctx = pctx();
    pl = resume_pipeline(ctx, &cfg, out, ckpt, "0.05");
    tq_calls = 0;
    tq_cancel_at = 0;
    ck_assert_int_eq(caldera_pipeline_run(pl), 0);
    ck_assert_int_eq(tq_calls, 7);
    ck_assert_int_eq(access(ckpt, F_OK), -1);          // a finished run removes its checkpoint
    ck_assert_int_eq(rename(out, ref), 0);
    caldera_pipeline_free(pl);
    caldera_config_free(cfg);
    caldera_ctx_free(ctx);
    // 2. interrupted after the third weight: no output file, three checkpointed weights
    ctx = pctx();
    pl = resume_pipeline(ctx, &cfg, out, ckpt, "0.05");
    tq_calls = 0;
    tq_cancel_at = 3;
    ck_assert_int_eq(caldera_pipeline_run(pl), CALDERA_ERR_CANCELLED);
    ck_assert_int_eq(access(out, F_OK), -1);
    ck_assert_int_eq(access(ckpt, F_OK), 0);
    caldera_pipeline_free(pl);
    caldera_config_free(cfg);
    caldera_ctx_free(ctx);
    // 3. a different configuration may not continue that checkpoint
    ctx = pctx();
    pl = resume_pipeline(ctx, &cfg, out, ckpt, "0.1");
    ck_assert_int_eq(caldera_pipeline_run(pl), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "was made by a different configuration"));
    caldera_pipeline_free(pl);
    caldera_config_free(cfg);
    caldera_ctx_free(ctx);
    // 4. the same configuration continues: only the 4 remaining weights are computed, same bytes
    ctx = pctx();
    pl = resume_pipeline(ctx, &cfg, out, ckpt, "0.05");
    tq_calls = 0;
    tq_cancel_at = 0;
    ck_assert_msg(caldera_pipeline_run(pl) == 0, "%s", caldera_ctx_errmsg(ctx));
    ck_assert_int_eq(tq_calls, 4);
    size_t la = 0, lb = 0;
    char * a = tu_read_file(ref, &la), * b = tu_read_file(out, &lb);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(la, lb);
    ck_assert_int_eq(memcmp(a, b, la), 0);
    ck_assert_int_eq(access(ckpt, F_OK), -1);
    caldera_free(a);
    caldera_free(b);
    caldera_pipeline_free(pl);
    caldera_config_free(cfg);
    caldera_ctx_free(ctx);
}
END_TEST

// ---- NaN / Inf (issue 11): never passed on silently --------------------------------------------

// model.safetensors: a 2x4 weight (w01 at [0][1], w12 at [1][2]) and an f16 norm (n2 at [2]);
// hess.safetensors: its 4x4 Hessian (identity, h31 at [3][1]).
static void write_nonfinite_model(struct caldera_ctx * ctx, const char * dir, float w12, float w00, uint16_t n2, float h31) {
    const struct caldera_format_ops * ops = caldera_registry_find(ctx, "safetensors")->ops;
    float w[8] = { w00, 0.5f, -1, 2, 0.25f, 1, w12, -0.75f }, h[16] = { 0 };
    uint16_t n[4] = { 0x3c00, 0x3c00, n2, 0x3c00 };
    int64_t ne4 = 4;
    for (int i = 0; i < 4; i++) h[i * 5] = 1;
    h[13] = h31;
    struct caldera_tensor tw = caldera_tensor_view_f32(w, 2, 4), th = caldera_tensor_view_f32(h, 4, 4), tn = { 0 };
    tn.data = n;
    tn.dtype = CALDERA_DTYPE_F16;
    tn.ndim = 1;
    tn.ne[0] = ne4;
    struct caldera_inst * inst;
    ck_assert_int_eq(caldera_inst_create(ctx, "safetensors", "w", &inst), 0);
    ck_assert_int_eq(caldera_inst_start(inst), 0);
    ck_assert_int_eq(ops->create(inst, tu_path(dir, "model.safetensors"), NULL), 0);
    ck_assert_int_eq(ops->write_tensor(inst, "model.layers.0.mlp.down_proj.weight", &tw), 0);
    ck_assert_int_eq(ops->write_tensor(inst, "model.norm.weight", &tn), 0);
    ck_assert_int_eq(ops->finish(inst, 1), 0);
    ck_assert_int_eq(ops->create(inst, tu_path(dir, "hess.safetensors"), NULL), 0);
    ck_assert_int_eq(ops->write_tensor(inst, "model.layers.0.mlp.down_proj.hessian", &th), 0);
    ck_assert_int_eq(ops->finish(inst, 1), 0);
    caldera_inst_free(inst);
}

static void expect_numeric(const char * dir, float w12, float w00, uint16_t n2, float h31, const char * scale_out,
                           const char * msg) {
    struct caldera_ctx * ctx = pctx();
    struct caldera_config * cfg;
    struct caldera_pipeline * pl = NULL;
    char ini[2048];
    write_nonfinite_model(ctx, dir, w12, w00, n2, h31);
    snprintf(ini, sizeof(ini),
             "[caldera]\nreader = src\nwriter = out\nhessians = hs\nstages = q\n[src]\nplugin = safetensors\npath = %s\n"
             "[hs]\nplugin = safetensors\npath = %s\n[q]\nplugin = tq\nstep = 0.25\nscale_out = %s\n[out]\nplugin = memsink\n",
             tu_path(dir, "model.safetensors"), tu_path(dir, "hess.safetensors"), scale_out);
    ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
    ck_assert_int_eq(caldera_config_parse_string(cfg, "nan.ini", ini), 0);
    ck_assert_int_eq(caldera_pipeline_init(ctx, cfg, &pl), 0);
    sink_finished = sink_commit = 0;
    int rc = caldera_pipeline_run(pl);
    ck_assert_msg(rc == (msg ? CALDERA_ERR_NUMERIC : 0), "rc %d: %s", rc, caldera_ctx_errmsg(ctx));
    if (msg) {
        ck_assert_msg(strstr(caldera_ctx_errmsg(ctx), msg), "'%s' lacks '%s'", caldera_ctx_errmsg(ctx), msg);
        ck_assert_int_eq(sink_commit, 0);   // nothing was committed
    } else {
        ck_assert_int_eq(sink_commit, 1);
    }
    caldera_pipeline_free(pl);
    caldera_config_free(cfg);
    caldera_ctx_free(ctx);
}

START_TEST(test_nonfinite_named) {
    const char * dir = tu_tmpdir();
    const float inf = INFINITY;
    expect_numeric(dir, 1, 1, 0x3c00, 0, "1", NULL);   // the finite model runs
    expect_numeric(dir, NAN, 1, 0x3c00, 0, "1", "weight model.layers.0.mlp.down_proj.weight has a NaN or Inf at row 1, column 2");
    expect_numeric(dir, 1, 1, 0x3c00, -inf, "1",
                   "Hessian model.layers.0.mlp.down_proj.hessian has a NaN or Inf at row 3, column 1");
    // a copied (not compressed) tensor: f16 +Inf, and an f16 NaN
    expect_numeric(dir, 1, 1, 0x7c00, 0, "1", "tensor model.norm.weight has a NaN or Inf at element 2");
    expect_numeric(dir, 1, 1, 0x7e01, 0, "1", "tensor model.norm.weight has a NaN or Inf at element 2");
    // finite input whose approximation overflows: W[0][0] = 4 is code 16, times a stored step of 0.25e38
    expect_numeric(dir, 1, 4, 0x3c00, 0, "1e38",
                   "the approximation of weight model.layers.0.mlp.down_proj.weight has a NaN or Inf at row 0, column 0");
}
END_TEST

// A pipeline file of many bad lines reports the first 100 and one line saying so; text over 1 MiB is
// refused unparsed (issue 11: memory bounded by what a configuration can need).
START_TEST(test_config_limits) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_config * cfg;
    size_t n = 150 * 8;
    char * text = calloc(1, (1 << 20) + 2);
    for (size_t i = 0; i < n; i += 8) memcpy(text + i, "garbage\n", 8);
    ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
    ck_assert_int_eq(caldera_config_parse_string(cfg, "bad.ini", text), CALDERA_ERR_CONFIG);
    ck_assert_int_eq(caldera_config_ndiag(cfg), 101);
    ck_assert_str_eq(caldera_config_diag(cfg, 100), "bad.ini: too many errors; only the first 100 are reported");
    caldera_config_free(cfg);
    memset(text, ';', (1 << 20) + 1);   // a comment, one byte too long
    ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
    ck_assert_int_eq(caldera_config_parse_string(cfg, "big.ini", text), CALDERA_ERR_CONFIG);
    ck_assert_str_eq(caldera_config_diag(cfg, 0), "big.ini: pipeline text of 1048577 bytes; at most 1048576 are read");
    caldera_config_free(cfg);
    free(text);
    caldera_ctx_free(ctx);
}
END_TEST

// A hessians section that lacks some weight's Hessian stops the run with the tensor name it
// expected (it used to fall back to H = I silently, which hid a misnamed or partial file);
// hessian_missing = identity keeps the data-free fallback on request.
START_TEST(test_hessian_missing_is_an_error) {
    struct caldera_ctx * ctx = pctx();
    for (int k = 0; k < 2; k++) {
        struct caldera_config * cfg;
        struct caldera_pipeline * pl;
        ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
        ck_assert_int_eq(caldera_config_parse_string(cfg, "good.ini", GOOD_INI), 0);
        // the model has two layers, the Hessian file only the first one's
        ck_assert_int_eq(caldera_config_set(cfg, "src.layers=2"), 0);
        ck_assert_int_eq(caldera_config_set(cfg, "caldera.hessians=hs"), 0);
        ck_assert_int_eq(caldera_config_set(cfg, "hs.plugin=synthetic"), 0);
        ck_assert_int_eq(caldera_config_set(cfg, "hs.layers=1"), 0);
        ck_assert_int_eq(caldera_config_set(cfg, "hs.hidden=32"), 0);
        ck_assert_int_eq(caldera_config_set(cfg, "hs.ffn=48"), 0);
        ck_assert_int_eq(caldera_config_set(cfg, "hs.seed=5"), 0);
        if (k == 1) ck_assert_int_eq(caldera_config_set(cfg, "caldera.hessian_missing=identity"), 0);
        int rc = caldera_pipeline_init(ctx, cfg, &pl);
        for (int64_t i = 0; i < caldera_config_ndiag(cfg); i++) fprintf(stderr, "%s\n", caldera_config_diag(cfg, i));
        ck_assert_int_eq(rc, 0);
        sink_commit = -1;
        rc = caldera_pipeline_run(pl);
        if (k == 0) {
            ck_assert_int_eq(rc, CALDERA_ERR_NOT_FOUND);
            ck_assert_str_eq(caldera_ctx_errmsg(ctx), "no Hessian 'model.layers.1.self_attn.q_proj.hessian' for weight "
                                                      "model.layers.1.self_attn.q_proj.weight in [hs]; allowed: a Hessian "
                                                      "for every compressed weight, or hessian_missing = identity (H = I)");
            ck_assert_int_eq(sink_commit, 0);   // nothing committed
        } else {
            ck_assert_msg(rc == 0, "%s", caldera_ctx_errmsg(ctx));
            ck_assert_int_eq(sink_commit, 1);
            json_error_t jerr;
            json_t * rep = json_loads(caldera_pipeline_report_json(pl), 0, &jerr);
            ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(rep, "summary"), "weights_with_hessian")), 7);
            ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(rep, "summary"), "weights")), 14);
            json_decref(rep);
        }
        caldera_pipeline_free(pl);
        caldera_config_free(cfg);
    }
    caldera_ctx_free(ctx);
}
END_TEST

// A settings section that [caldera] no longer names because of an empty override (--set caldera.eval=)
// is ignored with a warning, so that switching evaluation or calibration off is one override; one
// that nothing names without such an override is an error like any unused section.
START_TEST(test_settings_section_switched_off) {
    struct caldera_ctx * ctx = pctx();
    static const char * ini = "[caldera]\nreader = src\nstages = q\neval = ev\n[src]\nplugin = synthetic\nlayers = 1\n"
                              "hidden = 32\nffn = 48\n[q]\nplugin = tq\n[ev]\nctx = 64\nwindows = 2\n";
    for (int k = 0; k < 3; k++) {
        struct caldera_config * cfg;
        struct caldera_pipeline * pl = NULL;
        ck_assert_int_eq(caldera_config_init(ctx, &cfg), 0);
        ck_assert_int_eq(caldera_config_parse_string(cfg, "ev.ini", ini), 0);
        if (k == 0) ck_assert_int_eq(caldera_config_set(cfg, "caldera.eval="), 0);
        if (k == 1) ck_assert_int_eq(caldera_config_set(cfg, "caldera.eval=q"), 0);
        if (k == 2) {   // [ev] holds eval settings, but the eval key names another (nonexistent) section
            ck_assert_int_eq(caldera_config_set(cfg, "caldera.eval=ev2"), 0);
        }
        int rc = caldera_pipeline_init(ctx, cfg, &pl);
        if (k == 0) {
            for (int64_t i = 0; i < caldera_config_ndiag(cfg); i++) fprintf(stderr, "%s\n", caldera_config_diag(cfg, i));
            ck_assert_int_eq(rc, 0);
            ck_assert_int_eq(caldera_config_ndiag(cfg), 0);
            caldera_pipeline_free(pl);
        } else {
            ck_assert_int_eq(rc, CALDERA_ERR_CONFIG);
            int found = 0;
            for (int64_t d = 0; d < caldera_config_ndiag(cfg); d++) {
                found |= !strcmp(caldera_config_diag(cfg, d), "ev.ini:12: [ev] section of eval settings is never used; allowed: "
                                 "[caldera] eval = ev (or eval = with an empty value to switch it off)");
            }
            ck_assert_msg(found, "first diag: %s", caldera_config_diag(cfg, 0));
        }
        caldera_config_free(cfg);
    }
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * pipeline_suite(void) {
    Suite * s = suite_create("pipeline");
    TCase * tc = tcase_create("pipeline");
    tcase_add_test(tc, test_run_metrics);
    tcase_add_test(tc, test_all_diagnostics);
    tcase_add_test(tc, test_override_and_shape_check);
    tcase_add_test(tc, test_failure_leaves_no_output);
    tcase_add_test(tc, test_print_config);
    tcase_add_test(tc, test_verify_mismatch_message);
    tcase_add_test(tc, test_stage_list_nested);
    tcase_add_test(tc, test_path_expansion);
    tcase_add_test(tc, test_copy_dtype);
    tcase_add_test(tc, test_appended_ops_checked);
    tcase_add_test(tc, test_resume_same_bytes);
    tcase_add_test(tc, test_nonfinite_named);
    tcase_add_test(tc, test_config_limits);
    tcase_add_test(tc, test_hessian_missing_is_an_error);
    tcase_add_test(tc, test_settings_section_switched_off);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(pipeline_suite)
