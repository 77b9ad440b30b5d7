// SPDX-License-Identifier: MIT
// Typed option tests (FFmpeg libavutil/tests/opt.c): defaults, parsing every type from text
// with the exact error text, unknown keys with suggestions, required options and references,
// set -> format -> set round trips, option-table validation, and the init/uninit lifecycle.
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------
// Test plugins, registered with caldera_registry_add

static int dummy_quantize(struct caldera_inst * inst, const struct caldera_tensor * w, const struct caldera_tensor * h,
                          struct caldera_tensor * w_hat, struct caldera_pack * pack) {
    return CALDERA_ERR_UNSUPPORTED;
}
static int dummy_dequantize(struct caldera_inst * inst, const struct caldera_pack * pack, struct caldera_tensor * w_hat) {
    return CALDERA_ERR_UNSUPPORTED;
}
static const struct caldera_quantizer_ops dummy_qops = {
    .struct_size = sizeof(struct caldera_quantizer_ops),
    .quantize    = dummy_quantize,
    .dequantize  = dummy_dequantize,
};
static int dummy_decompose(struct caldera_inst * inst, const struct caldera_tensor * w, const struct caldera_tensor * h,
                           struct caldera_tensor * w_hat, struct caldera_pack * pack) {
    return CALDERA_ERR_UNSUPPORTED;
}
static int dummy_reconstruct(struct caldera_inst * inst, const struct caldera_pack * pack, struct caldera_tensor * w_hat) {
    return CALDERA_ERR_UNSUPPORTED;
}
static const struct caldera_decomposer_ops dummy_dops = {
    .struct_size = sizeof(struct caldera_decomposer_ops),
    .decompose   = dummy_decompose,
    .reconstruct = dummy_reconstruct,
};

// "opts": one option of every type.
struct opts_priv {
    int                     flag;
    int64_t                 bits;
    int64_t                 group;
    double                  damp;
    double                  gain;
    char *                  label;
    int                     mode;
    char *                  path;
    struct caldera_int_list layers;
    struct caldera_inst *   inner;
    int64_t                 old;
};

enum { MODE_RMS = 1, MODE_ABSMAX = 2, MODE_NONE = 5 };
static const struct caldera_opt_choice mode_choices[] = {
    { "rms",    MODE_RMS,    "root mean square" },
    { "absmax", MODE_ABSMAX, "largest magnitude" },
    { "none",   MODE_NONE,   "no scale" },
    { NULL, 0, NULL },
};

#define OFF(x) offsetof(struct opts_priv, x)
static const struct caldera_option opts_options[] = {
    { "flag",   "a switch",                  OFF(flag),   CALDERA_OPT_BOOL,     { .i64 = 1 } },
    { "bits",   "bits per weight",           OFF(bits),   CALDERA_OPT_INT,      { .i64 = 2 }, 2, 4 },
    { "group",  "group size, any integer",   OFF(group),  CALDERA_OPT_INT,      { .i64 = 64 }, 1, 0 },
    { "damp",   "damping, relative",         OFF(damp),   CALDERA_OPT_DOUBLE,   { .dbl = 0.01 }, 0.0, 1.0 },
    { "gain",   "gain, any number",          OFF(gain),   CALDERA_OPT_DOUBLE,   { .dbl = -2.5 }, 1, 0 },
    { "label",  "free text",                 OFF(label),  CALDERA_OPT_STRING,   { .str = "x" } },
    { "mode",   "how scales are chosen",     OFF(mode),   CALDERA_OPT_ENUM,     { .i64 = MODE_RMS }, 0, 0, mode_choices },
    { "path",   "a file",                    OFF(path),   CALDERA_OPT_PATH,     { .str = NULL } },
    { "layers", "layer indices",             OFF(layers), CALDERA_OPT_INT_LIST, { .str = "1, 2, 3" }, 0, 99 },
    { "inner",  "a quantizer to wrap",       OFF(inner),  CALDERA_OPT_REF,      { .i64 = 0 }, 0, 0, NULL,
      CALDERA_PLUGIN_KIND_QUANTIZER, CALDERA_OPT_OPTIONAL_REF },
    { "old",    "an old name",               OFF(old),    CALDERA_OPT_INT,      { .i64 = 0 }, 1, 0, NULL, 0,
      CALDERA_OPT_DEPRECATED },
    { NULL },
};
#undef OFF

static const struct caldera_plugin opts_plugin = {
    .abi_version = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(struct caldera_plugin),
    .kind        = CALDERA_PLUGIN_KIND_QUANTIZER,
    .name        = "opts",
    .description = "every option type",
    .version     = CALDERA_VERSION_INT(0, 1, 0),
    .priv_size   = sizeof(struct opts_priv),
    .options     = opts_options,
    .ops         = &dummy_qops,
};

// "needs": a required option, a required reference and an optional one.
struct needs_priv {
    int64_t               seed;
    struct caldera_inst * inner;
    struct caldera_inst * lr;
};

#define OFF(x) offsetof(struct needs_priv, x)
static const struct caldera_option needs_options[] = {
    { "seed",  "random seed",            OFF(seed),  CALDERA_OPT_INT, { .i64 = 0 }, 0, 1000, NULL, 0, CALDERA_OPT_REQUIRED },
    { "inner", "quantizer to wrap",      OFF(inner), CALDERA_OPT_REF, { .i64 = 0 }, 0, 0, NULL, CALDERA_PLUGIN_KIND_QUANTIZER },
    { "lr",    "low-rank decomposition", OFF(lr),    CALDERA_OPT_REF, { .i64 = 0 }, 0, 0, NULL, CALDERA_PLUGIN_KIND_DECOMPOSER,
      CALDERA_OPT_OPTIONAL_REF },
    { NULL },
};
#undef OFF

static const struct caldera_plugin needs_plugin = {
    .abi_version = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(struct caldera_plugin),
    .kind        = CALDERA_PLUGIN_KIND_DECOMPOSER,
    .name        = "needs",
    .description = "required options",
    .priv_size   = sizeof(struct needs_priv),
    .options     = needs_options,
    .ops         = &dummy_dops,
};

static const struct caldera_plugin deco_plugin = {
    .abi_version = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(struct caldera_plugin),
    .kind        = CALDERA_PLUGIN_KIND_DECOMPOSER,
    .name        = "deco",
    .description = "a decomposer",
    .ops         = &dummy_dops,
};

// "life": check/init/uninit with counters; init allocates, then fails when told to.
struct life_priv {
    int     fail_init;
    int     fail_check;
    float * buf;
};

static int life_checks, life_inits, life_uninits;

static int life_check(struct caldera_inst * inst) {
    struct life_priv * p = caldera_inst_priv(inst);
    life_checks++;
    if (p->fail_check) return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "fail_check is set; allowed: false");
    return 0;
}

static int life_init(struct caldera_inst * inst) {
    struct life_priv * p = caldera_inst_priv(inst);
    life_inits++;
    p->buf = caldera_malloc(1024 * sizeof(float));
    if (!p->buf) return CALDERA_ERR_NOMEM;
    if (p->fail_init) return caldera_error(inst, CALDERA_ERR_NUMERIC, "init failed on purpose");
    return 0;
}

static void life_uninit(struct caldera_inst * inst) {
    struct life_priv * p = caldera_inst_priv(inst);
    life_uninits++;
    caldera_freep(&p->buf);
}

static const struct caldera_option life_options[] = {
    { "fail_init",  "make init fail",  offsetof(struct life_priv, fail_init),  CALDERA_OPT_BOOL, { .i64 = 0 } },
    { "fail_check", "make check fail", offsetof(struct life_priv, fail_check), CALDERA_OPT_BOOL, { .i64 = 0 } },
    { NULL },
};

static const struct caldera_plugin life_plugin = {
    .abi_version = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(struct caldera_plugin),
    .kind        = CALDERA_PLUGIN_KIND_QUANTIZER,
    .name        = "life",
    .description = "lifecycle",
    .priv_size   = sizeof(struct life_priv),
    .options     = life_options,
    .check       = life_check,
    .init        = life_init,
    .uninit      = life_uninit,
    .ops         = &dummy_qops,
};

static struct caldera_ctx * opt_ctx(void) {
    struct caldera_ctx * ctx = tu_ctx();
    ck_assert_int_eq(caldera_registry_add(ctx, &opts_plugin, NULL), 0);
    ck_assert_int_eq(caldera_registry_add(ctx, &needs_plugin, NULL), 0);
    ck_assert_int_eq(caldera_registry_add(ctx, &deco_plugin, NULL), 0);
    ck_assert_int_eq(caldera_registry_add(ctx, &life_plugin, NULL), 0);
    return ctx;
}

static struct caldera_inst * new_inst(struct caldera_ctx * ctx, const char * plugin, const char * name) {
    struct caldera_inst * inst = NULL;
    int rc = caldera_inst_create(ctx, plugin, name, &inst);
    ck_assert_msg(rc == 0, "create %s: %s", plugin, caldera_ctx_errmsg(ctx));
    return inst;
}

// The option's text form equals want.
static void expect_text(struct caldera_inst * inst, const char * key, const char * want) {
    char * t = caldera_inst_get_text(inst, key);
    ck_assert_msg(t != NULL, "no text for '%s'", key);
    ck_assert_msg(strcmp(t, want) == 0, "%s: '%s', expected '%s'", key, t, want);
    caldera_free(t);
}

// Setting key = value succeeds and reads back as want.
static void expect_set(struct caldera_inst * inst, const char * key, const char * value, const char * want) {
    int rc = caldera_inst_set(inst, key, value);
    ck_assert_msg(rc == 0, "%s = '%s': %s", key, value, caldera_ctx_errmsg(caldera_inst_ctx(inst)));
    expect_text(inst, key, want);
}

// Setting key = value fails with code and exactly the message "[opt] opts: <msg>"; the value
// is unchanged.
static void expect_set_fail(struct caldera_inst * inst, const char * key, const char * value, int code, const char * msg) {
    char * before = caldera_inst_get_text(inst, key);
    int rc = caldera_inst_set(inst, key, value);
    ck_assert_msg(rc == code, "%s = '%s': rc %d, expected %d", key, value, rc, code);
    char want[1024];
    snprintf(want, sizeof(want), "[%s] %s: %s", caldera_inst_name(inst), caldera_inst_plugin(inst)->name, msg);
    ck_assert_str_eq(caldera_ctx_errmsg(caldera_inst_ctx(inst)), want);
    if (before) {
        expect_text(inst, key, before);
        caldera_free(before);
    }
}

// ---------------------------------------------------------------------------------------------

START_TEST(test_defaults) {
    struct caldera_ctx * ctx = opt_ctx();
    struct caldera_inst * o = new_inst(ctx, "opts", "opt");
    struct opts_priv * p = caldera_inst_priv(o);
    ck_assert_int_eq(p->flag, 1);
    ck_assert_int_eq(p->bits, 2);
    ck_assert_int_eq(p->group, 64);
    ck_assert(p->damp == 0.01);
    ck_assert_str_eq(p->label, "x");
    ck_assert_int_eq(p->mode, MODE_RMS);
    ck_assert_ptr_null(p->path);
    ck_assert_int_eq(p->layers.n, 3);
    ck_assert_int_eq(p->layers.v[2], 3);
    ck_assert_ptr_null(p->inner);
    expect_text(o, "flag", "true");
    expect_text(o, "bits", "2");
    expect_text(o, "damp", "0.01");
    expect_text(o, "gain", "-2.5");
    expect_text(o, "label", "x");
    expect_text(o, "mode", "rms");
    expect_text(o, "path", "");
    expect_text(o, "layers", "1, 2, 3");
    expect_text(o, "inner", "");
    ck_assert_ptr_null(caldera_inst_get_text(o, "nope"));
    // The instance starts with no explicit setting: optional reference, no required option.
    ck_assert_int_eq(caldera_inst_start(o), 0);
    caldera_inst_free(o);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_bool) {
    struct caldera_ctx * ctx = opt_ctx();
    struct caldera_inst * o = new_inst(ctx, "opts", "opt");
    static const char * yes[] = { "true", "yes", "on", "1", "TRUE", "Yes" };
    static const char * no[] = { "false", "no", "off", "0", "FALSE", "Off" };
    for (int i = 0; i < 6; i++) {
        expect_set(o, "flag", no[i], "false");
        expect_set(o, "flag", yes[i], "true");
    }
    expect_set_fail(o, "flag", "maybe", CALDERA_ERR_INVAL,
                    "option 'flag' = 'maybe' is not a boolean; allowed: true, false, yes, no, on, off, 1, 0");
    expect_set_fail(o, "flag", "", CALDERA_ERR_INVAL,
                    "option 'flag' = '' is not a boolean; allowed: true, false, yes, no, on, off, 1, 0");
    expect_set_fail(o, "flag", "2", CALDERA_ERR_INVAL,
                    "option 'flag' = '2' is not a boolean; allowed: true, false, yes, no, on, off, 1, 0");
    caldera_inst_free(o);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_int) {
    struct caldera_ctx * ctx = opt_ctx();
    struct caldera_inst * o = new_inst(ctx, "opts", "opt");
    expect_set(o, "bits", "3", "3");
    expect_set(o, "bits", " 4 ", "4");
    expect_set(o, "bits", "2", "2");
    expect_set(o, "bits", "0x3", "3");
    expect_set_fail(o, "bits", "5", CALDERA_ERR_RANGE, "option 'bits' = 5 out of range [2, 4]");
    expect_set_fail(o, "bits", "1", CALDERA_ERR_RANGE, "option 'bits' = 1 out of range [2, 4]");
    expect_set_fail(o, "bits", "-3", CALDERA_ERR_RANGE, "option 'bits' = -3 out of range [2, 4]");
    expect_set_fail(o, "bits", "abc", CALDERA_ERR_INVAL, "option 'bits' = 'abc' is not an integer; allowed: an integer in [2, 4]");
    expect_set_fail(o, "bits", "3.5", CALDERA_ERR_INVAL, "option 'bits' = '3.5' is not an integer; allowed: an integer in [2, 4]");
    expect_set_fail(o, "bits", "", CALDERA_ERR_INVAL, "option 'bits' = '' is not an integer; allowed: an integer in [2, 4]");
    expect_set_fail(o, "bits", "3 4", CALDERA_ERR_INVAL, "option 'bits' = '3 4' is not an integer; allowed: an integer in [2, 4]");
    // No range: any 64-bit integer.
    expect_set(o, "group", "-7", "-7");
    expect_set(o, "group", "9223372036854775807", "9223372036854775807");
    expect_set_fail(o, "group", "99999999999999999999", CALDERA_ERR_INVAL,
                    "option 'group' = '99999999999999999999' is not an integer; allowed: an integer");
    // A leading zero is decimal, not octal: "010" is ten, and "08" is eight (strtoll base 0
    // read "010" as 8 and rejected "08").
    expect_set(o, "group", "010", "10");
    expect_set(o, "group", "08", "8");
    expect_set(o, "group", "-0x10", "-16");
    caldera_inst_free(o);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_double) {
    struct caldera_ctx * ctx = opt_ctx();
    struct caldera_inst * o = new_inst(ctx, "opts", "opt");
    expect_set(o, "damp", "0.5", "0.5");
    expect_set(o, "damp", "1e-3", "0.001");
    expect_set(o, "damp", "0", "0");
    expect_set(o, "damp", "1", "1");
    expect_set(o, "damp", "0.1", "0.1");   // the shortest text that reads back as the same double
    expect_set(o, "damp", "0.7", "0.7");   // not %.17g's 0.69999999999999996
    expect_set(o, "damp", "0.30000000000000004", "0.30000000000000004");   // 0.1 + 0.2 needs 17 digits
    expect_set(o, "damp", "0.33333333333333331", "0.3333333333333333");    // 1/3 needs 16
    expect_set_fail(o, "damp", "1.5", CALDERA_ERR_RANGE, "option 'damp' = 1.5 out of range [0, 1]");
    expect_set_fail(o, "damp", "-0.25", CALDERA_ERR_RANGE, "option 'damp' = -0.25 out of range [0, 1]");
    expect_set_fail(o, "damp", "nan", CALDERA_ERR_INVAL, "option 'damp' = 'nan' is not a finite number; allowed: a number in [0, 1]");
    expect_set_fail(o, "damp", "inf", CALDERA_ERR_INVAL, "option 'damp' = 'inf' is not a finite number; allowed: a number in [0, 1]");
    expect_set_fail(o, "damp", "1e999", CALDERA_ERR_INVAL,
                    "option 'damp' = '1e999' is not a finite number; allowed: a number in [0, 1]");
    expect_set_fail(o, "damp", "half", CALDERA_ERR_INVAL, "option 'damp' = 'half' is not a finite number; allowed: a number in [0, 1]");
    expect_set_fail(o, "damp", "", CALDERA_ERR_INVAL, "option 'damp' = '' is not a finite number; allowed: a number in [0, 1]");
    expect_set(o, "gain", "-1e300", "-1e+300");
    expect_set_fail(o, "gain", "x", CALDERA_ERR_INVAL, "option 'gain' = 'x' is not a finite number; allowed: a number");
    caldera_inst_free(o);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_string_path_enum) {
    struct caldera_ctx * ctx = opt_ctx();
    struct caldera_inst * o = new_inst(ctx, "opts", "opt");
    expect_set(o, "label", "hello, world = 1", "hello, world = 1");
    expect_set(o, "label", "", "");
    expect_set(o, "path", "/tmp/model.safetensors", "/tmp/model.safetensors");
    expect_set(o, "mode", "absmax", "absmax");
    expect_set(o, "mode", "none", "none");
    ck_assert_int_eq(((struct opts_priv *) caldera_inst_priv(o))->mode, MODE_NONE);
    expect_set_fail(o, "mode", "RMS", CALDERA_ERR_INVAL, "option 'mode' = 'RMS' is not a valid choice; allowed: rms, absmax, none");
    expect_set_fail(o, "mode", "1", CALDERA_ERR_INVAL, "option 'mode' = '1' is not a valid choice; allowed: rms, absmax, none");
    expect_set_fail(o, "inner", "q", CALDERA_ERR_INVAL, "option 'inner' is a reference; it is resolved by the configuration");
    caldera_inst_free(o);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_int_list) {
    struct caldera_ctx * ctx = opt_ctx();
    struct caldera_inst * o = new_inst(ctx, "opts", "opt");
    struct opts_priv * p = caldera_inst_priv(o);
    expect_set(o, "layers", "4, 5,6", "4, 5, 6");
    ck_assert_int_eq(p->layers.n, 3);
    ck_assert_int_eq(p->layers.v[0], 4);
    expect_set(o, "layers", "0 99", "0, 99");
    expect_set(o, "layers", "7", "7");
    expect_set(o, "layers", "", "");
    ck_assert_int_eq(p->layers.n, 0);
    expect_set(o, "layers", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17",
               "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17");  // grows past 8
    expect_set_fail(o, "layers", "1, x", CALDERA_ERR_INVAL,
                    "option 'layers': 'x' is not an integer; allowed: a comma-separated list of integers");
    expect_set_fail(o, "layers", "1, 100", CALDERA_ERR_RANGE, "option 'layers': list element 100 out of range [0, 99]");
    expect_set_fail(o, "layers", "-1", CALDERA_ERR_RANGE, "option 'layers': list element -1 out of range [0, 99]");
    caldera_inst_free(o);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_unknown_key) {
    struct caldera_ctx * ctx = opt_ctx();
    struct caldera_inst * o = new_inst(ctx, "opts", "q");
    ck_assert_int_eq(caldera_inst_set(o, "bts", "3"), CALDERA_ERR_NOT_FOUND);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[q] opts: unknown option 'bts'; did you mean 'bits'?");
    ck_assert_int_eq(caldera_inst_set(o, "labels", "3"), CALDERA_ERR_NOT_FOUND);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[q] opts: unknown option 'labels'; did you mean 'label'?");
    ck_assert_int_eq(caldera_inst_set(o, "layer_s", "3"), CALDERA_ERR_NOT_FOUND);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[q] opts: unknown option 'layer_s'; did you mean 'layers'?");
    ck_assert_int_eq(caldera_inst_set(o, "mdoe", "rms"), CALDERA_ERR_NOT_FOUND);  // a transposition is one edit
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[q] opts: unknown option 'mdoe'; did you mean 'mode'?");
    ck_assert_int_eq(caldera_inst_set(o, "Bits", "3"), CALDERA_ERR_NOT_FOUND);  // keys are case-sensitive
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[q] opts: unknown option 'Bits'; did you mean 'bits'?");
    ck_assert_int_eq(caldera_inst_set(o, "quantizer", "3"), CALDERA_ERR_NOT_FOUND);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[q] opts: unknown option 'quantizer' (caldera-pipe --help-plugin opts lists them)");
    caldera_inst_free(o);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_required_and_refs) {
    struct caldera_ctx * ctx = opt_ctx();
    struct caldera_inst * n = new_inst(ctx, "needs", "cal");
    struct caldera_inst * q = new_inst(ctx, "opts", "q");
    struct caldera_inst * d = new_inst(ctx, "deco", "lr");
    ck_assert_int_eq(caldera_inst_start(n), CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[cal] needs: required option 'seed' is not set");
    ck_assert_int_eq(caldera_inst_set(n, "seed", "123"), 0);
    ck_assert_int_eq(caldera_inst_start(n), CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[cal] needs: option 'inner' must name a [section] of kind quantizer");

    // Kind mismatch, unknown key, and a key that is not a reference.
    ck_assert_int_eq(caldera_inst_set_ref(n, "inner", d), CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[cal] needs: option 'inner' = [lr] is a decomposer (deco); allowed: a quantizer");
    ck_assert_int_eq(caldera_inst_set_ref(n, "lr", q), CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[cal] needs: option 'lr' = [q] is a quantizer (opts); allowed: a decomposer");
    ck_assert_int_eq(caldera_inst_set_ref(n, "inne", q), CALDERA_ERR_NOT_FOUND);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[cal] needs: no reference option 'inne'");
    ck_assert_int_eq(caldera_inst_set_ref(n, "seed", q), CALDERA_ERR_NOT_FOUND);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[cal] needs: no reference option 'seed'");
    struct needs_priv * p = caldera_inst_priv(n);
    ck_assert_ptr_null(p->inner);
    ck_assert_ptr_null(p->lr);

    ck_assert_int_eq(caldera_inst_set_ref(n, "inner", q), 0);
    ck_assert_ptr_eq(p->inner, q);
    char * t = caldera_inst_get_text(n, "inner");
    ck_assert_str_eq(t, "q");
    caldera_free(t);
    ck_assert_int_eq(caldera_inst_start(n), 0);  // lr is optional
    ck_assert_int_eq(caldera_inst_set_ref(n, "lr", d), 0);
    ck_assert_ptr_eq(p->lr, d);
    ck_assert_int_eq(caldera_inst_set_ref(n, "lr", NULL), 0);  // cleared
    ck_assert_ptr_null(p->lr);

    // Required values are still range checked.
    ck_assert_int_eq(caldera_inst_set(n, "seed", "1001"), CALDERA_ERR_RANGE);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[cal] needs: option 'seed' = 1001 out of range [0, 1000]");
    caldera_inst_free(n);
    caldera_inst_free(q);
    caldera_inst_free(d);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_round_trip) {
    // For every option: set a non-default value, print it, set the printed text on a fresh
    // instance, print again: the texts and the bound values agree.
    static const char * values[][2] = {
        { "flag", "off" },   { "bits", "3" },          { "group", "-12345678901" }, { "damp", "0.30000000000000004" },
        { "gain", "1e-300" }, { "label", "a b, c; d" }, { "mode", "absmax" },       { "path", "/x/y z.gguf" },
        { "layers", "3,1,4,1,5,9,2,6,5,3" },
    };
    struct caldera_ctx * ctx = opt_ctx();
    struct caldera_inst * a = new_inst(ctx, "opts", "a");
    struct caldera_inst * b = new_inst(ctx, "opts", "b");
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        ck_assert_msg(caldera_inst_set(a, values[i][0], values[i][1]) == 0, "%s", caldera_ctx_errmsg(ctx));
        char * ta = caldera_inst_get_text(a, values[i][0]);
        ck_assert_msg(caldera_inst_set(b, values[i][0], ta) == 0, "%s = '%s': %s", values[i][0], ta, caldera_ctx_errmsg(ctx));
        char * tb = caldera_inst_get_text(b, values[i][0]);
        ck_assert_str_eq(ta, tb);
        caldera_free(ta);
        caldera_free(tb);
    }
    const struct opts_priv * pa = caldera_inst_priv(a), * pb = caldera_inst_priv(b);
    ck_assert_int_eq(pa->flag, pb->flag);
    ck_assert_int_eq(pa->bits, pb->bits);
    ck_assert_int_eq(pa->group, pb->group);
    ck_assert(pa->damp == pb->damp && pa->damp == 0.30000000000000004);
    ck_assert(pa->gain == pb->gain && pa->gain == 1e-300);
    ck_assert_str_eq(pa->label, pb->label);
    ck_assert_int_eq(pa->mode, pb->mode);
    ck_assert_str_eq(pa->path, pb->path);
    ck_assert_int_eq(pa->layers.n, 10);
    ck_assert_int_eq(pb->layers.n, 10);
    ck_assert_int_eq(memcmp(pa->layers.v, pb->layers.v, 10 * sizeof(int64_t)), 0);
    // References print the referenced instance's name.
    ck_assert_int_eq(caldera_inst_set_ref(a, "inner", b), 0);
    char * t = caldera_inst_get_text(a, "inner");
    ck_assert_str_eq(t, "b");
    caldera_free(t);
    caldera_inst_free(a);
    caldera_inst_free(b);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_deprecated) {
    struct caldera_ctx * ctx = opt_ctx();
    struct caldera_inst * o = new_inst(ctx, "opts", "q");
    tu_log_clear();
    ck_assert_int_eq(caldera_inst_set(o, "old", "5"), 0);
    ck_assert(strstr(tu_log(), "[q] opts: option 'old' is deprecated") != NULL);
    caldera_inst_free(o);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_lifecycle) {
    struct caldera_ctx * ctx = opt_ctx();
    life_checks = life_inits = life_uninits = 0;

    // init fails after allocating: uninit still runs (and frees what init allocated).
    struct caldera_inst * l = new_inst(ctx, "life", "l");
    ck_assert_int_eq(caldera_inst_set(l, "fail_init", "true"), 0);
    ck_assert_int_eq(caldera_inst_start(l), CALDERA_ERR_NUMERIC);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[l] life: init failed on purpose");
    ck_assert_int_eq(life_inits, 1);
    ck_assert_int_eq(life_uninits, 0);
    caldera_inst_free(l);
    ck_assert_int_eq(life_uninits, 1);

    // check fails: init never ran, so uninit is not due.
    l = new_inst(ctx, "life", "l2");
    ck_assert_int_eq(caldera_inst_set(l, "fail_check", "yes"), 0);
    ck_assert_int_eq(caldera_inst_start(l), CALDERA_ERR_UNSUPPORTED);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[l2] life: fail_check is set; allowed: false");
    caldera_inst_free(l);
    ck_assert_int_eq(life_inits, 1);
    ck_assert_int_eq(life_uninits, 1);

    // Success: start twice runs init once; free runs uninit once.
    l = new_inst(ctx, "life", "l3");
    ck_assert_int_eq(caldera_inst_start(l), 0);
    ck_assert_int_eq(caldera_inst_start(l), 0);
    ck_assert_int_eq(life_inits, 2);
    caldera_inst_free(l);
    ck_assert_int_eq(life_uninits, 2);
    caldera_inst_free(NULL);

    // init fails on its own allocation: NOMEM, and uninit copes with the NULL buffer.
    l = new_inst(ctx, "life", "l4");
    caldera_alloc_fail_at(1);
    ck_assert_int_eq(caldera_inst_start(l), CALDERA_ERR_NOMEM);
    caldera_alloc_fail_at(0);
    caldera_inst_free(l);
    ck_assert_int_eq(life_uninits, 3);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_help) {
    char * buf = NULL;
    size_t len = 0;
    FILE * f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(caldera_plugin_print_help(&opts_plugin, f), 0);
    ck_assert_int_eq(caldera_plugin_print_help(&needs_plugin, f), 0);
    ck_assert_int_eq(caldera_plugin_print_help(&deco_plugin, f), 0);
    fclose(f);
    ck_assert_msg(strstr(buf, "opts (quantizer plugin, version 0.1.0): every option type\n") != NULL, "%s", buf);
    ck_assert_msg(strstr(buf, "default: 2; allowed: [2, 4]\n") != NULL, "%s", buf);
    ck_assert_msg(strstr(buf, "default: rms; allowed: rms, absmax, none\n") != NULL, "%s", buf);
    ck_assert_msg(strstr(buf, "absmax       largest magnitude\n") != NULL, "%s", buf);
    ck_assert_msg(strstr(buf, "default: 1, 2, 3; allowed: [0, 99]\n") != NULL, "%s", buf);  // element range shown
    ck_assert_msg(strstr(buf, "required; allowed: [0, 1000]\n") != NULL, "%s", buf);
    ck_assert_msg(strstr(buf, "allowed: a [section] of kind decomposer\n") != NULL, "%s", buf);
    ck_assert_msg(strstr(buf, "deco (decomposer plugin, version 0.0.0): a decomposer\n  (no options)\n") != NULL, "%s", buf);
    free(buf);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// Option-table validation (what the loader reports as "bad option table")

struct bad_priv { int64_t a, b; struct caldera_int_list l; };

START_TEST(test_table_validation) {
    static const struct caldera_opt_choice none[] = { { NULL, 0, NULL } };
    static const struct {
        struct caldera_option opt;
        const char *          msg;
    } cases[] = {
        { { "Bad", "x", 0, CALDERA_OPT_INT, { .i64 = 0 }, 1, 0 }, "option 0: invalid name 'Bad'; allowed: [a-z][a-z0-9_]*" },
        { { "a", NULL, 0, CALDERA_OPT_INT, { .i64 = 0 }, 1, 0 }, "option 'a' has no help text" },
        { { "a", "x", 0, (enum caldera_opt_type) 99, { .i64 = 0 } }, "option 'a' has invalid type 99" },
        { { "a", "x", 0, CALDERA_OPT_ENUM, { .i64 = 0 }, 0, 0, none }, "enum option 'a' has no choices" },
        { { "a", "x", 0, CALDERA_OPT_ENUM, { .i64 = 0 } }, "enum option 'a' has no choices" },
        { { "a", "x", 0, CALDERA_OPT_DOUBLE, { .dbl = 2.0 }, 0, 1 }, "option 'a': default 2 outside its range [0, 1]" },
        { { "a", "x", 0, CALDERA_OPT_INT, { .i64 = -1 }, 0, 10 }, "option 'a': default -1 outside its range [0, 10]" },
        { { "a", "x", 0, CALDERA_OPT_REF, { .i64 = 0 }, 0, 0, NULL, (enum caldera_plugin_kind) 9 },
          "reference option 'a' has invalid kind 9" },
        { { "a", "x", offsetof(struct bad_priv, l), CALDERA_OPT_INT_LIST, { .str = "1, x" }, 0, 9 },
          "option 'a': default '1, x' is not valid: 'x' is not an integer; allowed: a comma-separated list of integers" },
        { { "a", "x", offsetof(struct bad_priv, l), CALDERA_OPT_INT_LIST, { .str = "1, 10" }, 0, 9 },
          "option 'a': default '1, 10' is not valid: list element 10 out of range [0, 9]" },
        { { "a", "x", 2 * sizeof(struct bad_priv), CALDERA_OPT_INT, { .i64 = 0 }, 1, 0 },
          "option 'a' at offset 64 lies outside priv_size 32" },
    };
    struct caldera_ctx * ctx = tu_ctx();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct caldera_option table[2] = { cases[i].opt, { NULL } };
        struct caldera_plugin p = opts_plugin;
        p.name = "tbl";
        p.options = table;
        p.priv_size = sizeof(struct bad_priv);
        int rc = caldera_plugin_validate(ctx, &p, "t.so");
        ck_assert_msg(rc == CALDERA_ERR_INVAL, "case %zu (%s): rc %d", i, cases[i].msg, rc);
        char want[512];
        snprintf(want, sizeof(want), "t.so: plugin 'tbl' has a bad option table: %s", cases[i].msg);
        ck_assert_str_eq(caldera_ctx_errmsg(ctx), want);
        ck_assert_int_eq(caldera_registry_add(ctx, &p, "t.so"), CALDERA_ERR_INVAL);
    }
    // A REQUIRED enum or int may have a default outside its choices / range (it is never used).
    static const struct caldera_option ok[] = {
        { "a", "x", 0, CALDERA_OPT_INT, { .i64 = -1 }, 0, 10, NULL, 0, CALDERA_OPT_REQUIRED },
        { "b", "x", 8, CALDERA_OPT_ENUM, { .i64 = 42 }, 0, 0, mode_choices, 0, CALDERA_OPT_REQUIRED },
        { NULL },
    };
    struct caldera_plugin p = opts_plugin;
    p.options = ok;
    p.priv_size = sizeof(struct bad_priv);
    ck_assert_int_eq(caldera_plugin_validate(ctx, &p, NULL), 0);
    caldera_ctx_free(ctx);
}
END_TEST

// Allocation N fails for N = 1.. during instance creation and option setting, until the whole
// sequence runs clean: every failure is CALDERA_ERR_NOMEM and nothing leaks (ASan, CK_FORK=no).
START_TEST(test_oom_sweep) {
    struct caldera_ctx * ctx = opt_ctx();
    int64_t failures = 0, n;
    for (n = 1; n < 10000; n++) {
        struct caldera_inst * o = NULL;
        int64_t start = caldera_alloc_count();
        caldera_alloc_fail_at(n);
        int rc = caldera_inst_create(ctx, "opts", "opt", &o);
        if (rc < 0) ck_assert_ptr_null(o);
        if (rc == 0) rc = caldera_inst_set(o, "label", "some text");
        if (rc == 0) rc = caldera_inst_set(o, "path", "/a/b");
        if (rc == 0) rc = caldera_inst_set(o, "layers", "1,2,3,4,5,6,7,8,9,10");
        char * t = rc == 0 ? caldera_inst_get_text(o, "layers") : NULL;
        if (rc == 0 && !t) rc = CALDERA_ERR_NOMEM;
        int64_t used = caldera_alloc_count() - start;
        caldera_alloc_fail_at(0);
        if (rc == 0) ck_assert_str_eq(t, "1, 2, 3, 4, 5, 6, 7, 8, 9, 10");
        caldera_free(t);
        caldera_inst_free(o);
        if (rc < 0) {
            ck_assert_int_eq(rc, CALDERA_ERR_NOMEM);
            failures++;
            continue;
        }
        if (used < n) break;
    }
    ck_assert_int_lt(n, 10000);
    ck_assert_int_ge(failures, 10);
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * options_suite(void) {
    Suite * s = suite_create("options");
    TCase * tc = tcase_create("parse");
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_bool);
    tcase_add_test(tc, test_int);
    tcase_add_test(tc, test_double);
    tcase_add_test(tc, test_string_path_enum);
    tcase_add_test(tc, test_int_list);
    tcase_add_test(tc, test_unknown_key);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_deprecated);
    tcase_add_test(tc, test_help);
    suite_add_tcase(s, tc);
    tc = tcase_create("instances");
    tcase_add_test(tc, test_required_and_refs);
    tcase_add_test(tc, test_lifecycle);
    tcase_add_test(tc, test_table_validation);
    tcase_add_test(tc, test_oom_sweep);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(options_suite)
