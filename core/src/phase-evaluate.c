// SPDX-License-Identifier: MIT
// The evaluate phase of a pipeline run: the perplexity of what the pipeline wrote (the model with
// every compressed linear replaced by its reconstruction, which the compress phase hands to the
// model as it goes) next to the original model's, on one text with one protocol. The original's
// number does not change with the compression, so it is cached (a small JSON file keyed by the
// model, the text and the protocol settings).
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "calibrate.h"
#include "pipeline.h"

#define EVAL_CODE_VERSION 1

struct eval_opts {
    char *  text;
    int     layout;
    int64_t ctx;
    int64_t windows;
    int     protocol;
    int64_t stride;
    int64_t batch;
    int     original;
    char *  cache;
};

#define EOFF(x) offsetof(struct eval_opts, x)
static const struct caldera_opt_choice layout_choices[] = {
    { "rows", CALDERA_TEXT_ROWS, "CRLF to LF, rows joined by a blank line (WikiText-2 raw's conventional layout)" },
    { "lf", CALDERA_TEXT_LF, "CRLF to LF" },
    { "raw", CALDERA_TEXT_RAW, "the bytes as they are" },
    { NULL, 0, NULL },
};
static const struct caldera_opt_choice protocol_choices[] = {
    { "llamacpp", CALDERA_PPL_LLAMACPP, "llama-perplexity's: non-overlapping windows of ctx, the second half of each scored" },
    { "strided", CALDERA_PPL_STRIDED, "Hugging Face's: windows every stride tokens, each scoring what the previous did not" },
    { NULL, 0, NULL },
};
static const struct caldera_option eval_options[] = {
    { "text", "evaluation text file (relative: to the pipeline file's folder)", EOFF(text), CALDERA_OPT_PATH,
      { .str = "${CALDERA_SHARED_DATA:-../shared/data}/wikitext-2-raw/wiki.test.raw" }, 0, -1, NULL, 0, 0 },
    { "layout", "how the text file is read", EOFF(layout), CALDERA_OPT_ENUM, { .i64 = CALDERA_TEXT_ROWS }, 0, -1, layout_choices, 0, 0 },
    { "ctx", "window length in tokens", EOFF(ctx), CALDERA_OPT_INT, { .i64 = 2048 }, 2, 1e6, NULL, 0, 0 },
    { "windows", "score the first this many windows (0: the whole text)", EOFF(windows), CALDERA_OPT_INT, { .i64 = 20 }, 0, 1e9,
      NULL, 0, 0 },
    { "protocol", "how windows are cut and scored", EOFF(protocol), CALDERA_OPT_ENUM, { .i64 = CALDERA_PPL_LLAMACPP }, 0, -1,
      protocol_choices, 0, 0 },
    { "stride", "strided protocol: window step (0: ctx / 2)", EOFF(stride), CALDERA_OPT_INT, { .i64 = 0 }, 0, 1e6, NULL, 0, 0 },
    { "batch", "windows per forward pass", EOFF(batch), CALDERA_OPT_INT, { .i64 = 1 }, 1, 1024, NULL, 0, CALDERA_OPT_EXPERT },
    { "original", "also the original model's perplexity (cached), for comparison", EOFF(original), CALDERA_OPT_BOOL, { .i64 = 1 }, 0,
      -1, NULL, 0, 0 },
    { "cache", "folder of cached perplexities of original models (empty: not kept)", EOFF(cache), CALDERA_OPT_PATH,
      { .str = "${CALDERA_CACHE:-${HOME}/.cache/caldera}/eval" }, 0, -1, NULL, 0, 0 },
    { NULL },
};
static const struct caldera_format_ops eval_dummy_ops = { .struct_size = sizeof(struct caldera_format_ops) };
static const struct caldera_plugin eval_desc = {
    .abi_version = CALDERA_PLUGIN_ABI_VERSION, .struct_size = sizeof(struct caldera_plugin),
    .kind = CALDERA_PLUGIN_KIND_FORMAT, .name = "eval",
    .description = "perplexity of the compressed and the original model (the section named by [caldera] eval; no plugin key)",
    .version = CALDERA_VERSION_INT(CALDERA_VERSION_MAJOR, CALDERA_VERSION_MINOR, CALDERA_VERSION_PATCH),
    .priv_size = sizeof(struct eval_opts), .options = eval_options, .ops = &eval_dummy_ops,
};

const struct caldera_plugin * caldera_eval_descriptor(void) { return &eval_desc; }

static const char * choice_name(const struct caldera_opt_choice * c, int v) {
    for (; c->name; c++) if (c->value == v) return c->name;
    return "?";
}

static void progress(void * user, int64_t done, int64_t total, double ppl) {
    struct caldera_pipeline * pl = user;
    caldera_log(pl->ctx, CALDERA_LOG_INFO, "evaluation: window %lld/%lld, perplexity so far %.4f", (long long) done, (long long) total, ppl);
}

static json_t * result_json(const struct caldera_ppl_result * r, double seconds, int cached) {
    return json_pack("{s:f, s:f, s:f, s:I, s:I, s:f, s:b}", "ppl", r->ppl, "ppl_err", r->ppl_err, "nll", r->nll, "tokens_scored",
                     (json_int_t) r->tokens_scored, "windows", (json_int_t) r->windows, "seconds", seconds, "cached", cached);
}

// Read the text (once per run) into run-owned memory, resolving the path like the other sections.
static int eval_text(struct caldera_pipeline * pl, const struct eval_opts * eo, char ** text, size_t * len, char ** path) {
    char err[300] = "out of memory";
    char * t = pl_expand_env(eo->text ? eo->text : "", err, sizeof(err));
    if (!t) return caldera_ctx_error(pl->ctx, CALDERA_ERR_CONFIG, "[%s] text: %s", caldera_inst_name(pl->eval), err);
    struct cfg_entry * te = caldera_config_find(pl->cfg, caldera_inst_name(pl->eval), "text");
    *path = pl_resolve_path(t, te ? te->file : NULL);
    caldera_free(t);
    if (!*path) return CALDERA_ERR_NOMEM;
    return caldera_text_read(pl->ctx, *path, (enum caldera_text_layout) eo->layout, text, len);
}

static int perplexity(struct caldera_pipeline * pl, struct pl_run * run, const struct eval_opts * eo, const char * text, size_t len,
                      struct caldera_ppl_result * r) {
    struct caldera_ppl_params pp = { .struct_size = sizeof(pp), .protocol = (enum caldera_ppl_protocol) eo->protocol, .ctx = eo->ctx,
                                     .windows = eo->windows, .stride = eo->stride, .batch = eo->batch, .progress = progress,
                                     .progress_user = pl };
    return caldera_model_perplexity(run->model, text, len, &pp, r);
}

int pl_phase_evaluate_original(struct caldera_pipeline * pl, struct pl_run * run) {
    struct caldera_ctx * ctx = pl->ctx;
    const struct eval_opts * eo = caldera_inst_priv(pl->eval);
    char * text = NULL, * tpath = NULL, * dir = NULL, * cpath = NULL, * js = NULL;
    size_t len = 0;
    json_t * cached = NULL, * res = NULL;
    double t0 = pl_now();
    int rc;
    if ((rc = pl_model_load(pl, run)) < 0) goto done;
    if (!eo->original) goto done;
    if ((rc = eval_text(pl, eo, &text, &len, &tpath)) < 0) goto done;
    struct calib_hash h;
    calib_hash_init(&h);
    calib_hash_str(&h, "caldera evaluation");
    calib_hash_i64(&h, EVAL_CODE_VERSION);
    if ((rc = pl_model_hash(pl, run, &h)) < 0) goto done;
    calib_hash_bytes(&h, text, len);
    calib_hash_i64(&h, (int64_t) len);
    calib_hash_i64(&h, eo->layout);
    calib_hash_i64(&h, eo->ctx);
    calib_hash_i64(&h, eo->windows);
    calib_hash_i64(&h, eo->protocol);
    calib_hash_i64(&h, eo->stride);
    {
        char err[300] = "out of memory";
        char * cdir = pl_expand_env(eo->cache ? eo->cache : "", err, sizeof(err));
        if (!cdir) { rc = caldera_ctx_error(ctx, CALDERA_ERR_CONFIG, "[%s] cache: %s", caldera_inst_name(pl->eval), err); goto done; }
        struct cfg_entry * ce = caldera_config_find(pl->cfg, caldera_inst_name(pl->eval), "cache");
        if (*cdir && !(dir = pl_resolve_path(cdir, ce ? ce->file : NULL))) rc = CALDERA_ERR_NOMEM;
        caldera_free(cdir);
        if (rc < 0) goto done;
    }
    if (dir) {
        if (!(cpath = caldera_asprintf("%s/ppl-%016" PRIx64 ".json", dir, calib_hash_final(&h)))) { rc = CALDERA_ERR_NOMEM; goto done; }
        json_error_t jerr;
        if (access(cpath, R_OK) == 0 && (cached = json_load_file(cpath, 0, &jerr)) && json_is_number(json_object_get(cached, "ppl"))) {
            run->eval_original = json_deep_copy(cached);
            if (!run->eval_original) { rc = CALDERA_ERR_NOMEM; goto done; }
            json_object_set_new(run->eval_original, "cached", json_true());
            caldera_log(ctx, CALDERA_LOG_INFO, "evaluation: the original model's perplexity %.4f from the cache %s",
                        json_real_value(json_object_get(cached, "ppl")), cpath);
            goto done;
        }
    }
    caldera_log(ctx, CALDERA_LOG_INFO, "evaluation: the original model on %s", tpath);
    struct caldera_ppl_result r;
    if ((rc = perplexity(pl, run, eo, text, len, &r)) < 0) goto done;
    if (!(res = result_json(&r, pl_now() - t0, 0))) { rc = CALDERA_ERR_NOMEM; goto done; }
    caldera_log(ctx, CALDERA_LOG_INFO, "evaluation: the original model's perplexity %.4f ± %.4f (%lld tokens scored)", r.ppl, r.ppl_err,
                (long long) r.tokens_scored);
    if (dir) {
        struct caldera_atomic_file af;
        if ((rc = pl_mkdir_p(ctx, dir)) < 0) goto done;
        if (!(js = json_dumps(res, JSON_INDENT(2) | JSON_REAL_PRECISION(17)))) { rc = CALDERA_ERR_NOMEM; goto done; }
        if ((rc = caldera_atomic_open(ctx, cpath, &af)) < 0) goto done;
        fputs(js, af.fp);
        fputc('\n', af.fp);
        if ((rc = caldera_atomic_commit(ctx, &af)) < 0) goto done;
    }
    run->eval_original = res;
    res = NULL;
done:
    run->t_evaluate += pl_now() - t0;
    if (cached) json_decref(cached);
    if (res) json_decref(res);
    free(js);
    caldera_free(text);
    caldera_free(tpath);
    caldera_free(dir);
    caldera_free(cpath);
    return rc;
}

int pl_phase_evaluate(struct caldera_pipeline * pl, struct pl_run * run) {
    struct caldera_ctx * ctx = pl->ctx;
    const struct eval_opts * eo = caldera_inst_priv(pl->eval);
    char * text = NULL, * tpath = NULL;
    size_t len = 0;
    double t0 = pl_now();
    int rc;
    if ((rc = eval_text(pl, eo, &text, &len, &tpath)) < 0) goto done;
    caldera_log(ctx, CALDERA_LOG_INFO, "evaluation: the compressed model (%lld weights replaced by their reconstructions) on %s",
                (long long) run->replaced, tpath);
    struct caldera_ppl_result r;
    if ((rc = perplexity(pl, run, eo, text, len, &r)) < 0) goto done;
    json_t * comp = result_json(&r, pl_now() - t0, 0);
    run->eval_json = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:o, s:o}", "text", tpath, "layout", choice_name(layout_choices, eo->layout),
                               "protocol", choice_name(protocol_choices, eo->protocol), "ctx", (json_int_t) eo->ctx, "windows",
                               (json_int_t) eo->windows, "stride", (json_int_t) eo->stride, "compressed", comp ? comp : json_null(),
                               "original", run->eval_original ? run->eval_original : json_null());
    run->eval_original = NULL;   // owned by eval_json now
    if (!run->eval_json) { rc = CALDERA_ERR_NOMEM; goto done; }
    json_t * orig = json_object_get(run->eval_json, "original");
    if (json_is_object(orig)) {
        caldera_log(ctx, CALDERA_LOG_INFO, "evaluation: perplexity %.4f ± %.4f against the original's %.4f (%s, ctx %lld, %lld windows, "
                    "%lld tokens scored)", r.ppl, r.ppl_err, json_real_value(json_object_get(orig, "ppl")),
                    choice_name(protocol_choices, eo->protocol), (long long) eo->ctx, (long long) r.windows, (long long) r.tokens_scored);
    } else {
        caldera_log(ctx, CALDERA_LOG_INFO, "evaluation: perplexity %.4f ± %.4f (%s, ctx %lld, %lld windows, %lld tokens scored)", r.ppl,
                    r.ppl_err, choice_name(protocol_choices, eo->protocol), (long long) eo->ctx, (long long) r.windows,
                    (long long) r.tokens_scored);
    }
done:
    run->t_evaluate += pl_now() - t0;
    caldera_free(text);
    caldera_free(tpath);
    return rc;
}
