// SPDX-License-Identifier: MIT
// Loader negative tests (SQLite loadext.test, HDF5 fixture plugins): every way a shared object
// can fail to become a plugin, each with its exact status and message; directory and
// CALDERA_PLUGIN_PATH loading; and an allocation-failure sweep over load + instance setup.
#include "testutil.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef CALDERA_FIXTURE_DIR
#define CALDERA_FIXTURE_DIR CALDERA_TEST_BIN_DIR "/fixtures"
#endif

// Path of fixture plugin `name` (built from tests/fixtures/plugins/<name>.c).
#define FX(name) CALDERA_FIXTURE_DIR "/fixture_" name ".so"

// Load `path` into a fresh context and expect failure `code` with a message that names the
// path and contains `want`; the registry must be unchanged.
static void expect_load_fail(const char * path, int code, const char * want) {
    struct caldera_ctx * ctx = tu_ctx();
    int64_t n0 = caldera_registry_count(ctx);
    int rc = caldera_registry_load(ctx, path);
    const char * msg = caldera_ctx_errmsg(ctx);
    ck_assert_msg(rc == code, "%s: rc %d (%s), expected %d (%s); message: %s", path, rc, caldera_status_str(rc), code,
                  caldera_status_str(code), msg);
    ck_assert_msg(strncmp(msg, path, strlen(path)) == 0, "message does not start with the path: %s", msg);
    ck_assert_msg(strstr(msg, want) != NULL, "message '%s' lacks '%s'", msg, want);
    ck_assert_int_eq(caldera_registry_count(ctx), n0);
    caldera_ctx_free(ctx);
}

// The shared object at path is not mapped into the process (it was dlclosed after a failure).
static int is_loaded(const char * path) {
    void * h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (h) dlclose(h);
    return h != NULL;
}

// An exported int of a loaded fixture (init/uninit counters).
static int * fixture_int(const char * path, const char * sym) {
    void * h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    ck_assert_msg(h != NULL, "%s is not loaded", path);
    int * p = dlsym(h, sym);
    dlclose(h);  // drop the reference RTLD_NOLOAD took; the registry still holds one
    ck_assert_ptr_nonnull(p);
    return p;
}

// A new empty directory under the test's temporary directory.
static const char * new_dir(const char * name) {
    static char buf[4][1024];
    static int  k;
    char * d = buf[k++ & 3];
    snprintf(d, 1024, "%s/%s", tu_tmpdir(), name);
    ck_assert_int_eq(mkdir(d, 0755), 0);
    return d;
}

static void link_into(const char * dir, const char * name, const char * target) {
    ck_assert_int_eq(symlink(target, tu_path(dir, name)), 0);
}

// ---------------------------------------------------------------------------------------------
// One test per load failure

START_TEST(test_missing_file) {
    expect_load_fail(FX("does_not_exist"), CALDERA_ERR_NOT_FOUND, ": plugin file not found (No such file or directory)");
}
END_TEST

START_TEST(test_empty_path) {
    struct caldera_ctx * ctx = tu_ctx();
    ck_assert_int_eq(caldera_registry_load(ctx, ""), CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "plugin path is empty");
    ck_assert_int_eq(caldera_registry_load(ctx, NULL), CALDERA_ERR_INVAL);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_directory) {
    expect_load_fail(CALDERA_FIXTURE_DIR, CALDERA_ERR_PLUGIN_LOAD, ": not a regular file");
}
END_TEST

START_TEST(test_not_elf) {
    expect_load_fail(FX("not_elf"), CALDERA_ERR_PLUGIN_LOAD, ": cannot load as a shared object: ");
}
END_TEST

START_TEST(test_no_entry) {
    expect_load_fail(FX("no_entry"), CALDERA_ERR_PLUGIN_LOAD,
                     ": no entry point 'caldera_plugin_entry' (build the plugin with CALDERA_PLUGIN_DEFINE and "
                     "-DCALDERA_PLUGIN_SHARED)");
    ck_assert(!is_loaded(FX("no_entry")));
}
END_TEST

START_TEST(test_entry_null) {
    expect_load_fail(FX("entry_null"), CALDERA_ERR_PLUGIN_LOAD,
                     ": entry point 'caldera_plugin_entry' returned NULL (the plugin refused to load)");
    ck_assert(!is_loaded(FX("entry_null")));
}
END_TEST

START_TEST(test_bad_abi) {
    expect_load_fail(FX("bad_abi"), CALDERA_ERR_ABI, ": plugin built for ABI version 999; this caldera has ABI version 1");
    ck_assert(!is_loaded(FX("bad_abi")));
}
END_TEST

START_TEST(test_short_struct) {
    char want[128];
    snprintf(want, sizeof(want), ": descriptor too small (16 bytes; ABI 1 needs at least %zu)", sizeof(struct caldera_plugin));
    expect_load_fail(FX("short_struct"), CALDERA_ERR_ABI, want);
}
END_TEST

START_TEST(test_bad_name) {
    expect_load_fail(FX("bad_name"), CALDERA_ERR_INVAL,
                     ": invalid plugin name 'Bad-Name'; allowed: [a-z][a-z0-9_]*, at most 31 characters");
}
END_TEST

START_TEST(test_bad_kind) {
    expect_load_fail(FX("bad_kind"), CALDERA_ERR_INVAL, ": plugin 'bad_kind' has invalid kind 42; allowed: 0..4");
}
END_TEST

START_TEST(test_ops_missing) {
    expect_load_fail(FX("ops_missing"), CALDERA_ERR_INVAL,
                     ": plugin 'ops_missing': a quantizer plugin must provide quantize and dequantize");
}
END_TEST

START_TEST(test_ops_short) {
    char want[128];
    // ABI 1's quantizer ops end at cb_free; members appended later (cb_begin_h) are optional
    snprintf(want, sizeof(want), ": plugin 'ops_short': quantizer ops too small (8 bytes; ABI 1 needs at least %zu)",
             offsetof(struct caldera_quantizer_ops, cb_begin_h));
    expect_load_fail(FX("ops_short"), CALDERA_ERR_ABI, want);
}
END_TEST

START_TEST(test_opt_dup) {
    expect_load_fail(FX("opt_dup"), CALDERA_ERR_INVAL, ": plugin 'opt_dup' has a bad option table: option 'bits' is declared twice");
}
END_TEST

START_TEST(test_opt_enum_default) {
    expect_load_fail(FX("opt_enum_default"), CALDERA_ERR_INVAL,
                     ": plugin 'opt_enum_default' has a bad option table: enum option 'mode': default 7 is not one of its choices");
}
END_TEST

START_TEST(test_opt_offset) {
    expect_load_fail(FX("opt_offset"), CALDERA_ERR_INVAL,
                     ": plugin 'opt_offset' has a bad option table: option 'bits' at offset 64 lies outside priv_size 8");
}
END_TEST

START_TEST(test_opt_range) {
    expect_load_fail(FX("opt_range"), CALDERA_ERR_INVAL,
                     ": plugin 'opt_range' has a bad option table: option 'bits': default 8 outside its range [2, 4]");
}
END_TEST

START_TEST(test_cb_partial) {
    expect_load_fail(FX("cb_partial"), CALDERA_ERR_INVAL,
                     ": plugin 'cb_partial': the codebook ops cb_dim, cb_begin, cb_round, cb_end and cb_free are all five or "
                     "none; cb_end is missing");
    ck_assert(!is_loaded(FX("cb_partial")));
}
END_TEST

START_TEST(test_probe_zero) {
    expect_load_fail(FX("probe_zero"), CALDERA_ERR_UNSUPPORTED,
                     ": plugin 'probe_zero' reports that it cannot run on this machine (probe)");
    ck_assert(!is_loaded(FX("probe_zero")));
}
END_TEST

START_TEST(test_dup_two_files) {
    struct caldera_ctx * ctx = tu_ctx();
    ck_assert_int_eq(caldera_registry_load(ctx, FX("dup_a")), 0);
    int64_t n = caldera_registry_count(ctx);
    ck_assert_int_eq(caldera_registry_load(ctx, FX("dup_b")), CALDERA_ERR_PLUGIN_DUP);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), FX("dup_b") ": a plugin named 'dup' is already registered (from " FX("dup_a") ")");
    ck_assert_int_eq(caldera_registry_count(ctx), n);
    ck_assert_str_eq(caldera_registry_origin(ctx, n - 1), FX("dup_a"));
    ck_assert(!is_loaded(FX("dup_b")));
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_dup_same_file) {
    struct caldera_ctx * ctx = tu_ctx();
    ck_assert_int_eq(caldera_registry_load(ctx, FX("good")), 0);
    ck_assert_int_eq(caldera_registry_load(ctx, FX("good")), CALDERA_ERR_PLUGIN_DUP);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), FX("good") ": a plugin named 'good' is already registered (from " FX("good") ")");
    // The failed second load dropped only its own reference.
    ck_assert(is_loaded(FX("good")));
    ck_assert_ptr_nonnull(caldera_registry_find(ctx, "good"));
    caldera_ctx_free(ctx);
    ck_assert(!is_loaded(FX("good")));
}
END_TEST

static int twin_quantize(struct caldera_inst * inst, const struct caldera_tensor * w, const struct caldera_tensor * h,
                         struct caldera_tensor * w_hat, struct caldera_pack * pack) {
    return CALDERA_ERR_UNSUPPORTED;
}
static int twin_dequantize(struct caldera_inst * inst, const struct caldera_pack * pack, struct caldera_tensor * w_hat) {
    return CALDERA_ERR_UNSUPPORTED;
}
static const struct caldera_quantizer_ops twin_ops = {
    .struct_size = sizeof(struct caldera_quantizer_ops),
    .quantize    = twin_quantize,
    .dequantize  = twin_dequantize,
};
static const struct caldera_plugin twin_plugin = {
    .abi_version = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(struct caldera_plugin),
    .kind        = CALDERA_PLUGIN_KIND_QUANTIZER,
    .name        = "builtin_twin",
    .description = "a built-in the fixture dup_builtin clashes with",
    .ops         = &twin_ops,
};

START_TEST(test_dup_builtin) {
    struct caldera_ctx * ctx = tu_ctx();
    ck_assert_int_eq(caldera_registry_add(ctx, &twin_plugin, NULL), 0);
    ck_assert_int_eq(caldera_registry_load(ctx, FX("dup_builtin")), CALDERA_ERR_PLUGIN_DUP);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx),
                     FX("dup_builtin") ": a plugin named 'builtin_twin' is already registered (from built-in)");
    ck_assert_ptr_eq(caldera_registry_find(ctx, "builtin_twin"), &twin_plugin);
    // And the other way round: a built-in added after a loaded plugin of the same name.
    ck_assert_int_eq(caldera_registry_load(ctx, FX("good")), 0);
    struct caldera_plugin clone = twin_plugin;
    clone.name = "good";
    ck_assert_int_eq(caldera_registry_add(ctx, &clone, NULL), CALDERA_ERR_PLUGIN_DUP);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "built-in: a plugin named 'good' is already registered (from " FX("good") ")");
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_validate_only) {
    struct caldera_ctx * ctx = tu_ctx();
    ck_assert_int_eq(caldera_plugin_validate(ctx, NULL, "x.so"), CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "x.so: descriptor is NULL");
    struct caldera_plugin p = twin_plugin;
    p.ops = NULL;
    ck_assert_int_eq(caldera_plugin_validate(ctx, &p, NULL), CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "built-in: plugin 'builtin_twin' has no ops");
    ck_assert_int_eq(caldera_plugin_validate(ctx, &twin_plugin, NULL), 0);
    ck_assert_int_eq(caldera_registry_count(ctx), 0);  // validate never registers
    // Names: [a-z][a-z0-9_]*, at most 31 characters.
    static const char * bad_names[] = { "", "9lives", "_x", "a-b", "A", "a b", "abcdefghijklmnopqrstuvwxyz_23456" };
    for (int i = 0; i < 7; i++) {
        p = twin_plugin;
        p.name = bad_names[i];
        ck_assert_int_eq(caldera_plugin_validate(ctx, &p, "n.so"), CALDERA_ERR_INVAL);
        char want[256];
        snprintf(want, sizeof(want), "n.so: invalid plugin name '%s'; allowed: [a-z][a-z0-9_]*, at most 31 characters", bad_names[i]);
        ck_assert_str_eq(caldera_ctx_errmsg(ctx), want);
    }
    p.name = NULL;
    ck_assert_int_eq(caldera_plugin_validate(ctx, &p, "n.so"), CALDERA_ERR_INVAL);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "n.so: invalid plugin name '(null)'; allowed: [a-z][a-z0-9_]*, at most 31 characters");
    static const char * good_names[] = { "a", "q8", "x_1", "abcdefghijklmnopqrstuvwxyz_2345" };
    for (int i = 0; i < 4; i++) {
        p = twin_plugin;
        p.name = good_names[i];
        ck_assert_int_eq(caldera_plugin_validate(ctx, &p, "n.so"), 0);
    }
    caldera_ctx_free(ctx);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// The good plugin: found by name, instances with options, init/uninit counted

START_TEST(test_good_plugin) {
    struct caldera_ctx * ctx = tu_ctx();
    ck_assert_ptr_null(caldera_registry_find(ctx, "good"));
    ck_assert_int_eq(caldera_registry_load(ctx, FX("good")), 0);
    const struct caldera_plugin * p = caldera_registry_find(ctx, "good");
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(p->kind, CALDERA_PLUGIN_KIND_QUANTIZER);
    ck_assert_uint_eq(p->version, CALDERA_VERSION_INT(1, 2, 3));
    int64_t i = caldera_registry_count(ctx) - 1;
    ck_assert_ptr_eq(caldera_registry_get(ctx, i), p);
    ck_assert_str_eq(caldera_registry_origin(ctx, i), FX("good"));
    ck_assert(strstr(tu_log(), "loaded plugin 'good' (quantizer) from " FX("good")) != NULL);

    int * inits = fixture_int(FX("good"), "fixture_good_inits");
    int * uninits = fixture_int(FX("good"), "fixture_good_uninits");
    ck_assert_int_eq(*inits, 0);

    struct caldera_inst * q = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, "good", "q", &q), 0);
    ck_assert_str_eq(caldera_inst_name(q), "q");
    ck_assert_ptr_eq(caldera_inst_plugin(q), p);
    static const char * defaults[][2] = { { "bits", "2" }, { "mode", "fast" }, { "scale", "1" }, { "label", "none" } };
    for (int k = 0; k < 4; k++) {
        char * t = caldera_inst_get_text(q, defaults[k][0]);
        ck_assert_str_eq(t, defaults[k][1]);
        caldera_free(t);
    }
    ck_assert_int_eq(caldera_inst_set(q, "bits", "3"), 0);
    ck_assert_int_eq(caldera_inst_set(q, "mode", "exact"), 0);
    ck_assert_int_eq(caldera_inst_set(q, "scale", "0.25"), 0);
    ck_assert_int_eq(caldera_inst_set(q, "label", "hello world"), 0);
    static const char * set[][2] = { { "bits", "3" }, { "mode", "exact" }, { "scale", "0.25" }, { "label", "hello world" } };
    for (int k = 0; k < 4; k++) {
        char * t = caldera_inst_get_text(q, set[k][0]);
        ck_assert_str_eq(t, set[k][1]);
        caldera_free(t);
    }
    ck_assert_int_eq(caldera_inst_set(q, "bits", "5"), CALDERA_ERR_RANGE);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[q] good: option 'bits' = 5 out of range [2, 4]");
    ck_assert_int_eq(caldera_inst_set(q, "mods", "fast"), CALDERA_ERR_NOT_FOUND);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "[q] good: unknown option 'mods'; did you mean 'mode'?");
    ck_assert_ptr_null(caldera_inst_get_text(q, "nope"));

    ck_assert_int_eq(caldera_inst_start(q), 0);
    ck_assert_int_eq(*inits, 1);
    ck_assert_int_eq(*uninits, 0);
    caldera_inst_free(q);
    ck_assert_int_eq(*uninits, 1);

    // An instance never started is not uninit'ed.
    ck_assert_int_eq(caldera_inst_create(ctx, "good", NULL, &q), 0);
    ck_assert_str_eq(caldera_inst_name(q), "good");
    caldera_inst_free(q);
    ck_assert_int_eq(*inits, 1);
    ck_assert_int_eq(*uninits, 1);

    ck_assert_int_eq(caldera_inst_create(ctx, "goood", "x", &q), CALDERA_ERR_NOT_FOUND);
    ck_assert_ptr_null(q);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "no plugin named 'goood' (caldera-pipe --list-plugins lists them)");

    caldera_ctx_free(ctx);
    ck_assert(!is_loaded(FX("good")));  // the context closed its shared objects
}
END_TEST

START_TEST(test_relative_file) {
    // An explicit file name without a '/' is the file in the current directory (it is what the
    // user typed), never a search of LD_LIBRARY_PATH or the system directories.
    ck_assert_int_eq(chdir(CALDERA_FIXTURE_DIR), 0);
    struct caldera_ctx * ctx = tu_ctx();
    ck_assert_int_eq(caldera_registry_load(ctx, "fixture_good.so"), 0);
    ck_assert_str_eq(caldera_registry_origin(ctx, 0), "fixture_good.so");
    ck_assert_int_eq(caldera_registry_load(ctx, "libc.so.6"), CALDERA_ERR_NOT_FOUND);  // not searched for
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), "libc.so.6: plugin file not found (No such file or directory)");
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_failure_keeps_ctx_usable) {
    // A failed load leaves the context as it was: the next load works.
    struct caldera_ctx * ctx = tu_ctx();
    static const char * bad[] = { FX("bad_abi"), FX("bad_name"), FX("opt_dup"), FX("not_elf"), FX("probe_zero") };
    for (int k = 0; k < 5; k++) ck_assert_int_lt(caldera_registry_load(ctx, bad[k]), 0);
    ck_assert_int_eq(caldera_registry_count(ctx), 0);
    ck_assert_int_eq(caldera_registry_load(ctx, FX("good")), 0);
    ck_assert_int_eq(caldera_registry_load(ctx, FX("good_two")), 0);
    ck_assert_int_eq(caldera_registry_count(ctx), 2);
    caldera_ctx_free(ctx);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// Directories and CALDERA_PLUGIN_PATH

START_TEST(test_load_dir_sorted) {
    // Files load in name order, whatever the plugin names are; other files are ignored.
    const char * d1 = new_dir("sorted1");
    link_into(d1, "a.so", FX("good_two"));
    link_into(d1, "b.so", FX("good"));
    ck_assert_int_eq(tu_write_file(tu_path(d1, "README.txt"), "not a plugin\n"), 0);
    ck_assert_int_eq(tu_write_file(tu_path(d1, "c.so.txt"), "not a plugin\n"), 0);
    struct caldera_ctx * ctx = tu_ctx();
    ck_assert_int_eq(caldera_registry_load_dir(ctx, d1), 0);
    ck_assert_int_eq(caldera_registry_count(ctx), 2);
    ck_assert_str_eq(caldera_registry_get(ctx, 0)->name, "good_two");
    ck_assert_str_eq(caldera_registry_get(ctx, 1)->name, "good");
    ck_assert_str_eq(caldera_registry_origin(ctx, 0), tu_path(d1, "a.so"));
    caldera_ctx_free(ctx);

    const char * d2 = new_dir("sorted2");
    link_into(d2, "10-z.so", FX("good"));
    link_into(d2, "20-a.so", FX("good_two"));
    ctx = tu_ctx();
    ck_assert_int_eq(caldera_registry_load_dir(ctx, d2), 0);
    ck_assert_str_eq(caldera_registry_get(ctx, 0)->name, "good");
    ck_assert_str_eq(caldera_registry_get(ctx, 1)->name, "good_two");
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_load_dir_stops_at_failure) {
    const char * d = new_dir("stops");
    link_into(d, "a.so", FX("good"));
    link_into(d, "b.so", FX("bad_abi"));
    link_into(d, "c.so", FX("good_two"));
    struct caldera_ctx * ctx = tu_ctx();
    ck_assert_int_eq(caldera_registry_load_dir(ctx, d), CALDERA_ERR_ABI);
    char want[1100];
    snprintf(want, sizeof(want), "%s: plugin built for ABI version 999", tu_path(d, "b.so"));
    ck_assert_msg(strstr(caldera_ctx_errmsg(ctx), want) == caldera_ctx_errmsg(ctx), "%s", caldera_ctx_errmsg(ctx));
    ck_assert_int_eq(caldera_registry_count(ctx), 1);
    ck_assert_ptr_nonnull(caldera_registry_find(ctx, "good"));
    ck_assert_ptr_null(caldera_registry_find(ctx, "good_two"));
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_load_dir_skips_probe_zero) {
    // A plugin that cannot run on this machine (probe() == 0) is skipped, as a built-in would
    // be: an installed CUDA plugin must not stop the other plugins of its directory loading.
    const char * d = new_dir("probe");
    link_into(d, "a.so", FX("probe_zero"));
    link_into(d, "b.so", FX("good"));
    struct caldera_ctx * ctx = tu_ctx();
    ck_assert_int_eq(caldera_registry_load_dir(ctx, d), 0);
    ck_assert_int_eq(caldera_registry_count(ctx), 1);
    ck_assert_ptr_nonnull(caldera_registry_find(ctx, "good"));
    ck_assert_ptr_null(caldera_registry_find(ctx, "probe_zero"));
    ck_assert(strstr(tu_log(), "plugin 'probe_zero' reports that it cannot run on this machine (probe)") != NULL);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_load_dir_missing) {
    struct caldera_ctx * ctx = tu_ctx();
    const char * d = tu_path(tu_tmpdir(), "no-such-dir");
    ck_assert_int_eq(caldera_registry_load_dir(ctx, d), CALDERA_ERR_NOT_FOUND);
    char want[1100];
    snprintf(want, sizeof(want), "%s: cannot open plugin directory (No such file or directory)", d);
    ck_assert_str_eq(caldera_ctx_errmsg(ctx), want);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_precedence) {
    // A name found in CALDERA_PLUGIN_PATH and given explicitly (--plugin-path) is taken from the
    // explicit file, with a notice, in either order; the other copy is not kept loaded.
    const char * env_dir = new_dir("prec");
    link_into(env_dir, "dup.so", FX("dup_a"));
    ck_assert_int_eq(setenv("CALDERA_PLUGIN_PATH", env_dir, 1), 0);
    char env_so[1100];
    snprintf(env_so, sizeof(env_so), "%s/dup.so", env_dir);

    struct caldera_ctx * ctx = tu_ctx();   // explicit first: the path's copy is skipped
    ck_assert_int_eq(caldera_registry_load(ctx, FX("dup_b")), 0);
    int64_t n = caldera_registry_count(ctx);
    ck_assert_int_eq(caldera_registry_load_default(ctx), 0);
    ck_assert_int_eq(caldera_registry_count(ctx), n);
    ck_assert_str_eq(caldera_registry_origin(ctx, n - 1), FX("dup_b"));
    char want[2400];
    snprintf(want, sizeof(want), "plugin 'dup' from %s overrides the one from %s", FX("dup_b"), env_so);
    ck_assert_msg(strstr(tu_log(), want) != NULL, "no notice '%s' in: %s", want, tu_log());
    ck_assert_int_eq(caldera_registry_load_default(ctx), 0);   // once per context
    caldera_ctx_free(ctx);

    ctx = tu_ctx();   // the path first: the explicit file replaces it
    ck_assert_int_eq(caldera_registry_load_default(ctx), 0);
    n = caldera_registry_count(ctx);
    ck_assert_str_eq(caldera_registry_origin(ctx, n - 1), env_so);
    ck_assert_int_eq(caldera_registry_load(ctx, FX("dup_b")), 0);
    ck_assert_int_eq(caldera_registry_count(ctx), n);
    ck_assert_str_eq(caldera_registry_origin(ctx, n - 1), FX("dup_b"));
    ck_assert_msg(strstr(tu_log(), want) != NULL, "no notice '%s' in: %s", want, tu_log());
    // The same place twice stays an error.
    ck_assert_int_eq(caldera_registry_load(ctx, FX("dup_a")), CALDERA_ERR_PLUGIN_DUP);
    caldera_ctx_free(ctx);
    ck_assert(!is_loaded(FX("dup_a")));
    ck_assert(!is_loaded(FX("dup_b")));
    ck_assert_int_eq(setenv("CALDERA_PLUGIN_PATH", "", 1), 0);
}
END_TEST

START_TEST(test_plugin_path_env) {
    // CALDERA_PLUGIN_PATH: absolute directories are loaded in order; relative entries (and so
    // the current directory) are skipped with a warning; missing directories are skipped.
    const char * rel = new_dir("rel");
    const char * abs = new_dir("abs");
    link_into(rel, "good.so", FX("good"));
    link_into(abs, "two.so", FX("good_two"));
    ck_assert_int_eq(chdir(tu_tmpdir()), 0);
    link_into(".", "cwd.so", FX("good"));
    char env[4096];
    snprintf(env, sizeof(env), "rel:.::%s:/nonexistent/caldera-plugins", abs);
    ck_assert_int_eq(setenv("CALDERA_PLUGIN_PATH", env, 1), 0);
    struct caldera_ctx * ctx = tu_ctx();
    ck_assert_int_eq(caldera_registry_load_default(ctx), 0);
    ck_assert_ptr_nonnull(caldera_registry_find(ctx, "good_two"));
    ck_assert_ptr_null(caldera_registry_find(ctx, "good"));
    ck_assert(strstr(tu_log(), "CALDERA_PLUGIN_PATH entry 'rel' is not absolute; skipped") != NULL);
    ck_assert(strstr(tu_log(), "CALDERA_PLUGIN_PATH entry '.' is not absolute; skipped") != NULL);
    caldera_ctx_free(ctx);

    // The same directory spelt three ways is loaded once (not a duplicate-name error).
    ck_assert_int_eq(symlink(abs, tu_path(tu_tmpdir(), "abs-link")), 0);
    snprintf(env, sizeof(env), "%s:%s/:%s/abs-link", abs, abs, tu_tmpdir());
    ck_assert_int_eq(setenv("CALDERA_PLUGIN_PATH", env, 1), 0);
    ctx = tu_ctx();
    int rc = caldera_registry_load_default(ctx);
    ck_assert_msg(rc == 0, "%s", caldera_ctx_errmsg(ctx));
    ck_assert_int_eq(caldera_registry_count(ctx), 1);
    ck_assert_ptr_nonnull(caldera_registry_find(ctx, "good_two"));
    caldera_ctx_free(ctx);

    // A failing plugin on the path is an error of load_default.
    const char * bad = new_dir("badpath");
    link_into(bad, "x.so", FX("opt_dup"));
    snprintf(env, sizeof(env), "%s:%s", abs, bad);
    ck_assert_int_eq(setenv("CALDERA_PLUGIN_PATH", env, 1), 0);
    ctx = tu_ctx();
    ck_assert_int_eq(caldera_registry_load_default(ctx), CALDERA_ERR_INVAL);
    ck_assert(strstr(caldera_ctx_errmsg(ctx), "x.so: plugin 'opt_dup' has a bad option table") != NULL);
    caldera_ctx_free(ctx);

    ck_assert_int_eq(setenv("CALDERA_PLUGIN_PATH", "", 1), 0);
    ctx = tu_ctx();
    ck_assert_int_eq(caldera_registry_load_default(ctx), 0);
    ck_assert_ptr_null(caldera_registry_find(ctx, "good_two"));
    caldera_ctx_free(ctx);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// Allocation failures (SQLite do_malloc_test): fail allocation N for N = 1.. until the whole
// sequence succeeds. Every failure must come back as CALDERA_ERR_NOMEM with nothing leaked
// (run under ASan: cmake -DCALDERA_SANITIZE=ON, CK_FORK=no).

static void quiet_log(enum caldera_log_level level, const char * msg, void * user) { (void) level; (void) msg; (void) user; }

START_TEST(test_oom_sweep) {
    // A directory of two plugins, so the sweep also covers directory listing and sorting.
    const char * dir = new_dir("oom");
    link_into(dir, "a.so", FX("good"));
    link_into(dir, "b.so", FX("good_two"));
    int64_t failures = 0, absorbed = 0, n;
    for (n = 1; n < 100000; n++) {
        struct caldera_ctx * ctx = NULL;
        struct caldera_inst * q = NULL;
        int64_t start = caldera_alloc_count();
        caldera_alloc_fail_at(n);
        int rc = caldera_ctx_init(&ctx);
        if (rc < 0) ck_assert_ptr_null(ctx);
        if (rc == 0) {
            caldera_ctx_set_log(ctx, quiet_log, NULL);
            rc = caldera_registry_load_dir(ctx, dir);
            if (rc < 0) ck_assert_int_le(caldera_registry_count(ctx), 1);
        }
        if (rc == 0) {
            rc = caldera_inst_create(ctx, "good", "q", &q);
            if (rc < 0) ck_assert_ptr_null(q);
        }
        if (rc == 0) rc = caldera_inst_set(q, "label", "a longer label than the default");
        if (rc == 0) rc = caldera_inst_set(q, "mode", "exact");
        int64_t used = caldera_alloc_count() - start;
        caldera_alloc_fail_at(0);
        if (rc == 0) {
            char * t = caldera_inst_get_text(q, "label");
            ck_assert_str_eq(t, "a longer label than the default");
            caldera_free(t);
            t = caldera_inst_get_text(q, "mode");
            ck_assert_str_eq(t, "exact");
            caldera_free(t);
        } else {
            ck_assert_msg(rc == CALDERA_ERR_NOMEM, "allocation %lld failed: rc %d (%s): %s", (long long) n, rc,
                          caldera_status_str(rc), caldera_ctx_errmsg(ctx));
        }
        caldera_inst_free(q);
        caldera_ctx_free(ctx);
        if (rc < 0) {
            failures++;
            continue;
        }
        if (used < n) break;  // allocation n never happened: the sequence ran clean
        absorbed++;           // a failed allocation that did not matter (values checked above)
    }
    ck_assert_int_lt(n, 100000);
    ck_assert_int_ge(failures, 10);
    ck_assert(!is_loaded(FX("good")));
    (void) absorbed;
}
END_TEST

static Suite * loader_suite(void) {
    Suite * s = suite_create("loader");
    TCase * tc = tcase_create("failures");
    tcase_add_test(tc, test_missing_file);
    tcase_add_test(tc, test_empty_path);
    tcase_add_test(tc, test_directory);
    tcase_add_test(tc, test_not_elf);
    tcase_add_test(tc, test_no_entry);
    tcase_add_test(tc, test_entry_null);
    tcase_add_test(tc, test_bad_abi);
    tcase_add_test(tc, test_short_struct);
    tcase_add_test(tc, test_bad_name);
    tcase_add_test(tc, test_bad_kind);
    tcase_add_test(tc, test_ops_missing);
    tcase_add_test(tc, test_cb_partial);
    tcase_add_test(tc, test_ops_short);
    tcase_add_test(tc, test_opt_dup);
    tcase_add_test(tc, test_opt_enum_default);
    tcase_add_test(tc, test_opt_offset);
    tcase_add_test(tc, test_opt_range);
    tcase_add_test(tc, test_probe_zero);
    tcase_add_test(tc, test_dup_two_files);
    tcase_add_test(tc, test_dup_same_file);
    tcase_add_test(tc, test_dup_builtin);
    tcase_add_test(tc, test_validate_only);
    suite_add_tcase(s, tc);

    tc = tcase_create("loading");
    tcase_add_test(tc, test_good_plugin);
    tcase_add_test(tc, test_relative_file);
    tcase_add_test(tc, test_failure_keeps_ctx_usable);
    tcase_add_test(tc, test_load_dir_sorted);
    tcase_add_test(tc, test_load_dir_stops_at_failure);
    tcase_add_test(tc, test_load_dir_skips_probe_zero);
    tcase_add_test(tc, test_load_dir_missing);
    tcase_add_test(tc, test_plugin_path_env);
    tcase_add_test(tc, test_precedence);
    suite_add_tcase(s, tc);

    tc = tcase_create("oom");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_oom_sweep);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(loader_suite)
