// SPDX-License-Identifier: MIT
// The pipeline engine: resolve sections to plugins, bind options, resolve references, check
// shapes against the model's headers (all problems reported at once), then stream the model's
// weights one at a time through transforms and a quantizer or decomposer into the writer,
// measuring bits per parameter and (data-aware) error per tensor.
#include <fnmatch.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "calibrate.h"
#include "linalg_cuda.h"
#include "pipeline.h"

#define POFF(x) offsetof(struct pipeline_opts, x)
enum { DEVICE_AUTO = 2 };   // after the public enum caldera_device values
static const struct caldera_opt_choice device_choices[] = {
    { "cpu", CALDERA_DEVICE_CPU, "OpenBLAS/LAPACKE on the CPU" },
    { "cuda", CALDERA_DEVICE_CUDA, "cuBLAS/cuSOLVER (a CUDA build with a GPU); an error without one" },
    { "auto", DEVICE_AUTO, "cuda when a GPU is usable and every stage's plugin accepts it, else cpu" },
    { NULL, 0, NULL },
};
static const struct caldera_opt_choice hmiss_choices[] = {
    { "identity", HMISS_IDENTITY, "use H = I (data-free) for weights without a Hessian" },
    { "error", HMISS_ERROR, "stop with an error naming the expected tensor (a misnamed or partial file shows)" },
    { NULL, 0, NULL },
};
static const struct caldera_opt_choice copy_choices[] = {
    { "auto", COPY_AUTO, "plain dtypes as stored; block-quantized (GGUF) tensors dequantized to f32, losslessly" },
    { "f32", COPY_F32, "every copied float tensor as f32" },
    { "f16", COPY_F16, "every copied float tensor as f16 (halves f32 embeddings; rounds)" },
    { "bf16", COPY_BF16, "every copied float tensor as bf16 (rounds)" },
    { NULL, 0, NULL },
};
static const struct caldera_option pipeline_options[] = {
    { "reader", "format section that reads the model", POFF(reader), CALDERA_OPT_REF, { 0 }, 0, -1, NULL,
      CALDERA_PLUGIN_KIND_FORMAT, 0 },
    { "writer", "format section that writes the compressed model (empty: none)", POFF(writer), CALDERA_OPT_REF, { 0 }, 0, -1,
      NULL, CALDERA_PLUGIN_KIND_FORMAT, CALDERA_OPT_OPTIONAL_REF },
    { "dense_writer", "format section that writes the reconstructed dense weights (empty: none)", POFF(dense_writer),
      CALDERA_OPT_REF, { 0 }, 0, -1, NULL, CALDERA_PLUGIN_KIND_FORMAT, CALDERA_OPT_OPTIONAL_REF },
    { "hessians", "format section holding '<weight>.hessian' tensors (empty: H = I)", POFF(hessians), CALDERA_OPT_REF, { 0 },
      0, -1, NULL, CALDERA_PLUGIN_KIND_FORMAT, CALDERA_OPT_OPTIONAL_REF },
    { "stages", "sections applied to every selected weight: transforms, then one quantizer or decomposer", POFF(stages),
      CALDERA_OPT_STRING, { .str = NULL }, 0, -1, NULL, 0, CALDERA_OPT_REQUIRED },
    { "include", "comma-separated name patterns (fnmatch, on Hugging Face names) of weights to compress", POFF(include),
      CALDERA_OPT_STRING, { .str = "*.self_attn.*_proj.weight, *.mlp.*_proj.weight" }, 0, -1, NULL, 0, 0 },
    { "exclude", "comma-separated name patterns to leave uncompressed", POFF(exclude), CALDERA_OPT_STRING, { .str = "" }, 0,
      -1, NULL, 0, 0 },
    { "device", "where the linear algebra runs", POFF(device), CALDERA_OPT_ENUM, { .i64 = CALDERA_DEVICE_CPU }, 0, -1,
      device_choices, 0, 0 },
    { "threads", "threads for BLAS and the core's loops (0: all cores)", POFF(threads), CALDERA_OPT_INT, { .i64 = 0 }, 0, 4096,
      NULL, 0, 0 },
    { "hessian_missing", "what to do for a compressed weight whose Hessian the hessians section lacks", POFF(hessian_missing),
      CALDERA_OPT_ENUM, { .i64 = HMISS_ERROR }, 0, -1, hmiss_choices, 0, 0 },
    { "report", "write the per-tensor report as JSON to this path (empty: none)", POFF(report), CALDERA_OPT_PATH, { .str = "" },
      0, -1, NULL, 0, 0 },
    { "max_tensors", "compress at most this many weights (0: all), for quick runs", POFF(max_tensors), CALDERA_OPT_INT,
      { .i64 = 0 }, 0, 1e12, NULL, 0, 0 },
    { "copy_dtype", "dtype of the tensors that are copied, not compressed (embeddings, norms)", POFF(copy_dtype),
      CALDERA_OPT_ENUM, { .i64 = COPY_AUTO }, 0, -1, copy_choices, 0, 0 },
    { "plugin_path", "plugin .so files or folders to load, ':'-separated (relative: to the pipeline file's folder)",
      POFF(plugin_path), CALDERA_OPT_STRING, { .str = "" }, 0, -1, NULL, 0, 0 },
    { "checkpoint", "folder for per-weight checkpoints: a run started again continues where it stopped (empty: off)",
      POFF(checkpoint), CALDERA_OPT_PATH, { .str = "" }, 0, -1, NULL, 0, 0 },
    { "verify", "re-decode every pack and check it reproduces the approximation bit for bit", POFF(verify), CALDERA_OPT_BOOL,
      { .i64 = 0 }, 0, -1, NULL, 0, 0 },
    { "calibration", "section of calibration settings: Hessians from the model's forward pass on text (empty: none)",
      POFF(calibration), CALDERA_OPT_STRING, { .str = "" }, 0, -1, NULL, 0, 0 },
    { "eval", "section of evaluation settings: perplexity of what was written next to the original's (empty: none)", POFF(eval),
      CALDERA_OPT_STRING, { .str = "" }, 0, -1, NULL, 0, 0 },
    { "model", "model plugin that runs the forward pass for calibration and evaluation", POFF(model), CALDERA_OPT_STRING,
      { .str = "llama" }, 0, -1, NULL, 0, 0 },
    { NULL },
};

static const struct caldera_format_ops pipeline_dummy_ops = { .struct_size = sizeof(struct caldera_format_ops) };
static const struct caldera_plugin pipeline_desc = {
    .abi_version = CALDERA_PLUGIN_ABI_VERSION, .struct_size = sizeof(struct caldera_plugin),
    .kind = CALDERA_PLUGIN_KIND_FORMAT, .name = "caldera", .description = "the pipeline itself ([caldera] section)",
    .version = CALDERA_VERSION_INT(CALDERA_VERSION_MAJOR, CALDERA_VERSION_MINOR, CALDERA_VERSION_PATCH),
    .priv_size = sizeof(struct pipeline_opts), .options = pipeline_options, .ops = &pipeline_dummy_ops,
};

/** The [caldera] section's own descriptor (for --help of the pipeline options). */

const struct caldera_plugin * caldera_pipeline_descriptor(void) { return &pipeline_desc; }

void caldera_pipeline_free(struct caldera_pipeline * pl) {
    if (!pl) return;
    struct pipeline_opts * o = pl->self ? popts(pl) : NULL;
    if (o && pl->reader_open && o->reader) {
        const struct caldera_format_ops * ops = caldera_inst_plugin(o->reader)->ops;
        if (ops->close) ops->close(o->reader);
    }
    if (o && pl->hess_open && o->hessians) {
        const struct caldera_format_ops * ops = caldera_inst_plugin(o->hessians)->ops;
        if (ops->close) ops->close(o->hessians);
    }
    // Instances may reference each other: uninit all before freeing any memory they share.
    for (int64_t i = pl->n_secs - 1; i >= 0; i--) caldera_inst_free(pl->secs[i].inst);
    caldera_inst_free(pl->eval);
    caldera_inst_free(pl->calib);
    caldera_inst_free(pl->self);
    caldera_free_unaligned(pl->secs);
    caldera_free(pl->stages);
    caldera_free(pl->report_json);
    if (pl->report) json_decref(pl->report);
    caldera_free(pl);
}

static struct pl_section * pl_find(struct caldera_pipeline * pl, const char * name) {
    for (int64_t i = 0; i < pl->n_secs; i++) {
        if (strcmp(caldera_inst_name(pl->secs[i].inst), name) == 0) return &pl->secs[i];
    }
    return NULL;
}

static const char * plugin_of(struct caldera_inst * inst) { return caldera_inst_plugin(inst)->name; }

// Suggest the registered plugin name nearest to name.
// Bit 0 set when every key of section name is a calibration setting, bit 1 when every one is an eval setting
// (0: no key, or an unknown one): how a section without a plugin key is recognised as settings.
static int settings_kind(struct caldera_config * cfg, const char * name) {
    const struct caldera_plugin * descs[2] = { caldera_calibration_descriptor(), caldera_eval_descriptor() };
    int mask = 0;
    for (int k = 0; k < 2; k++) {
        int64_t nkeys = 0, known = 0;
        for (int64_t i = 0; i < cfg->n_entries; i++) {
            const struct cfg_entry * e = &cfg->entries[i];
            if (strcmp(e->section, name) != 0) continue;
            nkeys++;
            known += caldera_options_find(descs[k]->options, e->key, NULL) != NULL;
        }
        if (nkeys > 0 && known == nkeys) mask |= 1 << k;
    }
    return mask;
}

static const char * nearest_plugin(struct caldera_ctx * ctx, const char * name) {
    const char * best = NULL;
    int bd = 1 << 30;
    for (int64_t i = 0; i < caldera_registry_count(ctx); i++) {
        int d = caldera_edit_distance(caldera_registry_get(ctx, i)->name, name);
        if (d < bd) { bd = d; best = caldera_registry_get(ctx, i)->name; }
    }
    size_t l = strlen(name);
    return bd <= (l <= 4 ? 1 : l <= 8 ? 2 : 3) ? best : NULL;
}

// Expand ${VAR} and ${VAR:-default} (the default may itself hold ${...}) in a path value.
// Returns a caldera_malloc'd string, or NULL with a message in err.
static char * expand_env(const char * v, char * err, size_t errlen, int depth) {
    size_t cap = strlen(v) + 256, len = 0;
    char * out = caldera_malloc(cap);
    if (!out) return NULL;
    while (*v) {
        if (v[0] == '$' && v[1] == '{' && depth < 4) {
            const char * p = v + 2;
            int level = 1;
            const char * end = p;
            for (; *end && level; end++) level += (*end == '{') - (*end == '}');
            if (level) {
                snprintf(err, errlen, "unterminated '${' in '%s'", v);
                caldera_free(out);
                return NULL;
            }
            end--;   // at the closing brace
            char name[128];
            const char * dflt = NULL;
            size_t nl = (size_t) (end - p);
            const char * colon = memchr(p, ':', nl);
            if (colon && colon[1] == '-') {
                dflt = colon + 2;
                nl = (size_t) (colon - p);
            }
            if (nl == 0 || nl >= sizeof(name)) {
                snprintf(err, errlen, "invalid variable reference in '%s'", v);
                caldera_free(out);
                return NULL;
            }
            memcpy(name, p, nl);
            name[nl] = 0;
            const char * val = getenv(name);
            char * owned = NULL;
            if (!val || !*val) {
                if (!dflt) {
                    snprintf(err, errlen, "environment variable %.60s is not set; allowed: set it, or write ${%.60s:-default}", name, name);
                    caldera_free(out);
                    return NULL;
                }
                char tmp[1024];
                size_t dl = (size_t) (end - dflt);
                if (dl >= sizeof(tmp)) dl = sizeof(tmp) - 1;
                memcpy(tmp, dflt, dl);
                tmp[dl] = 0;
                if (!(owned = expand_env(tmp, err, errlen, depth + 1))) {
                    caldera_free(out);
                    return NULL;
                }
                val = owned;
            }
            size_t vl = strlen(val);
            if (len + vl + 1 > cap) {
                cap = len + vl + 256;
                char * n2 = caldera_malloc(cap);
                if (!n2) { caldera_free(out); caldera_free(owned); return NULL; }
                memcpy(n2, out, len);
                caldera_free(out);
                out = n2;
            }
            memcpy(out + len, val, vl);
            len += vl;
            caldera_free(owned);
            v = end + 1;
            continue;
        }
        if (len + 2 > cap) {
            cap *= 2;
            char * n2 = caldera_malloc(cap);
            if (!n2) { caldera_free(out); return NULL; }
            memcpy(n2, out, len);
            caldera_free(out);
            out = n2;
        }
        out[len++] = *v++;
    }
    out[len] = 0;
    return out;
}

char * pl_expand_env(const char * v, char * err, size_t errlen) { return expand_env(v, err, errlen, 0); }

char * pl_resolve_path(const char * path, const char * file) {
    const char * slash = file ? strrchr(file, '/') : NULL;
    if (path[0] == '/' || !file || strcmp(file, "--set") == 0 || !slash) return caldera_strdup(path);
    return caldera_asprintf("%.*s/%s", (int) (slash - file), file, path);
}

// Bind every key of a section to inst's options; REFs are resolved later.
static void bind_section(struct caldera_pipeline * pl, struct caldera_inst * inst, const char * section) {
    struct caldera_config * cfg = pl->cfg;
    const struct caldera_plugin * p = caldera_inst_plugin(inst);
    const char * pname = inst == pl->self ? NULL : p->name;   // "[caldera] " needs no plugin name
    for (int64_t i = 0; i < cfg->n_entries; i++) {
        struct cfg_entry * e = &cfg->entries[i];
        if (strcmp(e->section, section) != 0 || e->used) continue;
        e->used = 1;
        const struct caldera_option * o = caldera_options_find(p->options, e->key, NULL);
        if (!o) {
            const char * s = caldera_options_suggest(p->options, e->key);
            if (s) caldera_config_diagf(cfg, e->file, e->line, section, pname, "unknown option '%s'; did you mean '%s'?", e->key, s);
            else caldera_config_diagf(cfg, e->file, e->line, section, pname,
                                      "unknown option '%s'; allowed: see caldera-pipe --help-plugin %s", e->key, p->name);
            continue;
        }
        if (o->type == CALDERA_OPT_REF) continue;
        const char * value = e->value;
        char * expanded = NULL;
        if (o->type == CALDERA_OPT_PATH && strstr(value, "${")) {
            char err[300] = "out of memory";
            if (!(expanded = expand_env(value, err, sizeof(err), 0))) {
                caldera_config_diagf(cfg, e->file, e->line, section, pname, "option '%s': %s", e->key, err);
                continue;
            }
            value = expanded;
        }
        int src = caldera_inst_set(inst, e->key, value);
        caldera_free(expanded);
        if (src < 0) {
            // the message carries "[section] plugin: "; drop it, the diagnostic adds it with the place
            const char * m = caldera_ctx_errmsg(pl->ctx);
            const char * colon = strstr(m, ": ");
            caldera_config_diagf(cfg, e->file, e->line, section, pname, "%s", colon ? colon + 2 : m);
        }
    }
}

static void resolve_refs(struct caldera_pipeline * pl, struct caldera_inst * inst, const char * section) {
    struct caldera_config * cfg = pl->cfg;
    const struct caldera_plugin * p = caldera_inst_plugin(inst);
    const char * pname = inst == pl->self ? NULL : p->name;
    for (const struct caldera_option * o = p->options; o && o->name; o++) {
        if (o->type != CALDERA_OPT_REF) continue;
        struct cfg_entry * e = caldera_config_find(cfg, section, o->name);
        if (!e || !*e->value) continue;   // missing required refs are reported by the check phase
        struct pl_section * target = pl_find(pl, e->value);
        if (!target && caldera_config_find_section(cfg, e->value)) {
            caldera_config_find_section(cfg, e->value)->referenced = 1;   // its own problem is reported already
            continue;
        }
        if (!target) {
            char allowed[512] = "";
            size_t n = 0;
            for (int64_t i = 0; i < pl->n_secs; i++) {
                if (caldera_inst_plugin(pl->secs[i].inst)->kind == o->ref_kind && n < sizeof(allowed)) {
                    n += (size_t) snprintf(allowed + n, sizeof(allowed) - n, "%s%s", n ? ", " : "", caldera_inst_name(pl->secs[i].inst));
                }
            }
            caldera_config_diagf(cfg, e->file, e->line, section, pname, "option '%s' = '%s' names no section; allowed: %s", o->name,
                                 e->value, n ? allowed : "(no section of that kind)");
            continue;
        }
        if (target->inst == inst) {
            caldera_config_diagf(cfg, e->file, e->line, section, pname, "option '%s' refers to its own section", o->name);
            continue;
        }
        if (caldera_inst_set_ref(inst, o->name, target->inst) < 0) {
            caldera_config_diagf(cfg, e->file, e->line, section, pname, "option '%s' = [%s] is a %s (%s); allowed: a %s section",
                                 o->name, e->value, caldera_plugin_kind_name(caldera_inst_plugin(target->inst)->kind),
                                 plugin_of(target->inst), caldera_plugin_kind_name(o->ref_kind));
            continue;
        }
        target->sec->referenced = 1;
    }
}

const char * pl_format_path(struct caldera_inst * inst, char ** owned) {
    *owned = caldera_inst_get_text(inst, "path");
    return (*owned && **owned) ? *owned : NULL;
}

// Does name match any of the comma-separated fnmatch patterns?
static int match_any(const char * patterns, const char * name) {
    if (!patterns || !*patterns) return 0;
    char buf[2048];
    caldera_strlcpy(buf, patterns, sizeof(buf));
    for (char * save = NULL, * tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ' || *tok == '\t') tok++;
        char * e = tok + strlen(tok);
        while (e > tok && (e[-1] == ' ' || e[-1] == '\t')) *--e = 0;
        if (*tok && fnmatch(tok, name, 0) == 0) return 1;
    }
    return 0;
}

int pl_selected(const struct pipeline_opts * o, const struct caldera_tensor_info * ti) {
    const char * name = ti->hf_name ? ti->hf_name : ti->name;
    return ti->ndim == 2 && match_any(o->include, name) && !match_any(o->exclude, name);
}

int pl_open_reader(struct caldera_pipeline * pl, struct caldera_inst * inst, int * flag) {
    const struct caldera_format_ops * ops = caldera_inst_plugin(inst)->ops;
    if (!ops->open) return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "this format plugin cannot read models");
    char * owned = NULL;
    const char * path = pl_format_path(inst, &owned);
    int rc = ops->open(inst, path);
    caldera_free(owned);
    if (rc == 0) *flag = 1;
    return rc;
}

// Turn the context's last message ("[section] plugin: text" or plain text) into a diagnostic
// placed at the section's header line.
static void diag_from_ctx(struct caldera_pipeline * pl, struct cfg_section * sec, const char * what) {
    const char * m = caldera_ctx_errmsg(pl->ctx);
    char section[64] = "", plugin[64] = "";
    const char * rest = m;
    const char * close = m[0] == '[' ? strchr(m, ']') : NULL;
    const char * colon = close ? strstr(close, ": ") : NULL;
    if (close && colon && close - m - 1 < (long) sizeof(section) && colon - close - 2 < (long) sizeof(plugin) && colon > close + 1) {
        memcpy(section, m + 1, (size_t) (close - m - 1));
        memcpy(plugin, close + 2, (size_t) (colon - close - 2));
        rest = colon + 2;
    }
    caldera_config_diagf(pl->cfg, sec ? sec->file : pl->cfg->main_file, sec ? sec->line : 0, section[0] ? section : NULL,
                         plugin[0] ? plugin : NULL, "%s%s", what ? what : "", rest);
}

// An instance of one of the core's own section descriptors ([caldera], calibration, eval).
static int core_inst_create(struct caldera_ctx * ctx, const struct caldera_plugin * desc, const char * name, struct caldera_inst ** out) {
    struct caldera_inst * inst = caldera_calloc(1, sizeof(*inst));
    *out = inst;
    if (!inst) return CALDERA_ERR_NOMEM;
    inst->ctx = ctx;
    inst->plugin = desc;
    inst->name = caldera_strdup(name);
    inst->priv = caldera_calloc(1, desc->priv_size);
    inst->n_options = caldera_options_count(desc->options);
    inst->is_set = caldera_calloc((size_t) inst->n_options + 1, sizeof(bool));
    if (!inst->name || !inst->priv || !inst->is_set) return CALDERA_ERR_NOMEM;
    for (int64_t i = 0; i < inst->n_options; i++) {
        if (caldera_option_set_default(&desc->options[i], inst->priv) < 0) return CALDERA_ERR_NOMEM;
    }
    return 0;
}

// device = cuda needs a usable GPU; auto takes it when there is one and every stage's plugin
// probe (asked with the context's device set to cuda) accepts it. Plugins without a probe accept.
static void resolve_device(struct caldera_pipeline * pl, struct cfg_section * main_sec) {
    struct caldera_ctx * ctx = pl->ctx;
    const int want = popts(pl)->device;
    struct cfg_entry * de = caldera_config_find(pl->cfg, "caldera", "device");
    const char * file = de ? de->file : main_sec->file;
    int line = de ? de->line : main_sec->line;
    pl->device = CALDERA_DEVICE_CPU;
    if (want == CALDERA_DEVICE_CPU) return;
    char why[1024] = "";
    if (caldera_cuda_probe(why, sizeof(why)) <= 0) {
        if (want == CALDERA_DEVICE_CUDA) {
            caldera_config_diagf(pl->cfg, file, line, "caldera", NULL,
                                 "device = cuda, but no CUDA device can be used: %s; allowed: cpu, or auto (the CPU when "
                                 "there is no GPU)", why);
        } else {
            caldera_log(ctx, CALDERA_LOG_INFO, "device = auto: using the CPU (%s)", why);
        }
        return;
    }
    const enum caldera_device saved = ctx->device;
    const char * refuser = NULL;
    ctx->device = CALDERA_DEVICE_CUDA;
    for (int64_t i = 0; i < pl->n_stages && !refuser; i++) {
        const struct caldera_plugin * p = caldera_inst_plugin(pl->stages[i]);
        if (p->probe && p->probe(ctx) <= 0) refuser = caldera_inst_name(pl->stages[i]);
    }
    ctx->device = saved;
    if (!refuser) {
        pl->device = CALDERA_DEVICE_CUDA;
    } else if (want == CALDERA_DEVICE_CUDA) {
        caldera_config_diagf(pl->cfg, file, line, "caldera", NULL,
                             "device = cuda, but stage [%s] (plugin %s) cannot run with it (its probe); allowed: cpu, auto",
                             refuser, plugin_of(pl_find(pl, refuser)->inst));
    } else {
        caldera_log(ctx, CALDERA_LOG_INFO, "device = auto: using the CPU (stage [%s] cannot run with cuda)", refuser);
    }
}

int caldera_pipeline_init(struct caldera_ctx * ctx, struct caldera_config * cfg, struct caldera_pipeline ** out) {
    *out = NULL;
    struct caldera_pipeline * pl = caldera_calloc(1, sizeof(*pl));
    if (!pl) return CALDERA_ERR_NOMEM;
    pl->ctx = ctx;
    pl->cfg = cfg;
    int rc = 0;
    // The [caldera] section.
    struct caldera_inst * self = NULL;
    rc = core_inst_create(ctx, &pipeline_desc, "caldera", &self);
    pl->self = self;
    if (rc < 0) goto fail;

    struct cfg_section * main_sec = caldera_config_find_section(cfg, "caldera");
    if (!main_sec) {
        caldera_config_diagf(cfg, cfg->main_file ? cfg->main_file : "(config)", 0, NULL, NULL,
                             "no [caldera] section; it names the reader, writer and stages of the pipeline");
    } else {
        main_sec->referenced = 1;
    }
    // 0. Plugins named by the pipeline itself ([caldera] plugin_path), before anything is resolved.
    struct cfg_entry * ppe = caldera_config_find(cfg, "caldera", "plugin_path");
    if (ppe && *ppe->value) {
        char * list = caldera_strdup(ppe->value);
        if (!list) { rc = CALDERA_ERR_NOMEM; goto fail; }
        for (char * save = NULL, * tok = strtok_r(list, ":", &save); tok; tok = strtok_r(NULL, ":", &save)) {
            char path[4096];
            const char * slash = strrchr(ppe->file, '/');
            if (tok[0] == '/' || strcmp(ppe->file, "--set") == 0) {
                snprintf(path, sizeof(path), "%s", tok);
            } else {   // relative to the pipeline file's folder, never to the current directory
                snprintf(path, sizeof(path), "%.*s/%s", slash ? (int) (slash - ppe->file) : 1, slash ? ppe->file : ".", tok);
            }
            struct stat st;
            int lrc = (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) ? caldera_registry_load_dir(ctx, path)
                                                                    : caldera_registry_load(ctx, path);
            if (lrc == CALDERA_ERR_NOMEM) {
                caldera_free(list);
                rc = lrc;
                goto fail;
            }
            if (lrc < 0) caldera_config_diagf(cfg, ppe->file, ppe->line, "caldera", NULL, "plugin_path: %s", caldera_ctx_errmsg(ctx));
        }
        caldera_free(list);
    }
    // 1. Resolve every other section to a plugin instance.
    pl->secs = caldera_realloc(NULL, (size_t) (cfg->n_sections + 1) * sizeof(*pl->secs));
    if (!pl->secs) { rc = CALDERA_ERR_NOMEM; goto fail; }
    // The sections named by [caldera] calibration / eval are bound to the core's descriptors (no plugin key).
    struct cfg_entry * cal_e = caldera_config_find(cfg, "caldera", "calibration");
    struct cfg_entry * ev_e = caldera_config_find(cfg, "caldera", "eval");
    struct { struct cfg_entry * e; const struct caldera_plugin * desc; struct caldera_inst ** inst; struct cfg_section ** sec; } cores[2] = {
        { cal_e, caldera_calibration_descriptor(), &pl->calib, &pl->calib_sec },
        { ev_e, caldera_eval_descriptor(), &pl->eval, &pl->eval_sec },
    };
    for (int k = 0; k < 2; k++) {
        if (!cores[k].e || !*cores[k].e->value) continue;
        struct cfg_section * s = caldera_config_find_section(cfg, cores[k].e->value);
        if (!s || !strcmp(s->name, "caldera") || (k == 1 && cal_e && !strcmp(cal_e->value, ev_e->value))) {
            caldera_config_diagf(cfg, cores[k].e->file, cores[k].e->line, "caldera", NULL, "option '%s' = '%s' names no section%s",
                                 cores[k].e->key, cores[k].e->value, s ? " of its own" : "; allowed: a section of its settings");
            continue;
        }
        s->referenced = 1;
        if ((rc = core_inst_create(ctx, cores[k].desc, s->name, cores[k].inst)) < 0) goto fail;
        *cores[k].sec = s;
    }
    for (int64_t i = 0; i < cfg->n_sections; i++) {
        struct cfg_section * s = &cfg->sections[i];
        if (strcmp(s->name, "caldera") == 0) continue;
        if (s == pl->calib_sec || s == pl->eval_sec) continue;
        struct cfg_entry * pe = caldera_config_find(cfg, s->name, "plugin");
        if (!pe) {
            // A settings section that [caldera] does not name: switched off by an empty calibration or eval (e.g.
            // --set caldera.eval=), it is ignored with a warning, so that an ablation is one override; otherwise
            // (the key absent, or naming another section) it is an error, like any section that is never used.
            int mask = settings_kind(cfg, s->name), kind = -1;
            for (int k = 0; k < 2; k++) {   // the kind switched off, else the first that fits
                if ((mask >> k & 1) && (kind < 0 || (cores[k].e && !*cores[k].e->value))) kind = k;
            }
            if (kind >= 0) {
                struct cfg_entry * ke = cores[kind].e;
                if (ke && !*ke->value) {
                    caldera_log(ctx, CALDERA_LOG_WARN, "%s:%d: [%s]: section ignored: [caldera] %s is empty, so these %s settings are "
                                "not used", s->file, s->line, s->name, kind ? "eval" : "calibration", kind ? "eval" : "calibration");
                    for (int64_t k = 0; k < cfg->n_entries; k++) {
                        if (!strcmp(cfg->entries[k].section, s->name)) cfg->entries[k].used = 1;
                    }
                    s->referenced = 1;
                } else {
                    caldera_config_diagf(cfg, s->file, s->line, s->name, NULL, "section of %s settings is never used; allowed: [caldera] %s = %s "
                                         "(or %s = with an empty value to switch it off)", kind ? "eval" : "calibration",
                                         kind ? "eval" : "calibration", s->name, kind ? "eval" : "calibration");
                }
                continue;
            }
            caldera_config_diagf(cfg, s->file, s->line, s->name, NULL, "no 'plugin = NAME' key; caldera-pipe --list-plugins lists them (settings "
                                 "sections have none: they are named by [caldera] calibration or eval)");
            continue;
        }
        pe->used = 1;
        if (!caldera_registry_find(ctx, pe->value)) {
            const char * near = nearest_plugin(ctx, pe->value);
            if (near) caldera_config_diagf(cfg, pe->file, pe->line, s->name, NULL, "unknown plugin '%s'; did you mean '%s'?", pe->value, near);
            else caldera_config_diagf(cfg, pe->file, pe->line, s->name, NULL, "unknown plugin '%s'; see caldera-pipe --list-plugins", pe->value);
            continue;
        }
        struct caldera_inst * inst = NULL;
        if ((rc = caldera_inst_create(ctx, pe->value, s->name, &inst)) < 0) goto fail;
        pl->secs[pl->n_secs++] = (struct pl_section) { inst, s };
    }
    // 2. Bind values; 3. resolve references.
    if (main_sec) bind_section(pl, self, "caldera");
    if (pl->calib) bind_section(pl, pl->calib, caldera_inst_name(pl->calib));
    if (pl->eval) bind_section(pl, pl->eval, caldera_inst_name(pl->eval));
    for (int64_t i = 0; i < pl->n_secs; i++) bind_section(pl, pl->secs[i].inst, caldera_inst_name(pl->secs[i].inst));
    if (main_sec) resolve_refs(pl, self, "caldera");
    for (int64_t i = 0; i < pl->n_secs; i++) resolve_refs(pl, pl->secs[i].inst, caldera_inst_name(pl->secs[i].inst));
    // Keys of sections that had no usable plugin are ignored silently: their section already has a diagnostic.
    for (int64_t i = 0; i < cfg->n_entries; i++) {
        struct cfg_entry * e = &cfg->entries[i];
        if (!e->used && !caldera_config_find_section(cfg, e->section)) {
            caldera_config_diagf(cfg, e->file, e->line, e->section, NULL, "no such section");
        }
    }
    struct pipeline_opts * o = popts(pl);
    // 4. Stages.
    if (main_sec && o->stages) {
        struct cfg_entry * se = caldera_config_find(cfg, "caldera", "stages");
        char buf[1024];
        caldera_strlcpy(buf, o->stages, sizeof(buf));
        int64_t cap = 16;
        pl->stages = caldera_calloc((size_t) cap, sizeof(*pl->stages));
        if (!pl->stages) { rc = CALDERA_ERR_NOMEM; goto fail; }
        for (char * save = NULL, * tok = strtok_r(buf, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
            struct pl_section * s = pl_find(pl, tok);
            if (!s && caldera_config_find_section(cfg, tok)) {
                caldera_config_find_section(cfg, tok)->referenced = 1;   // its own problem is reported already
                continue;
            }
            if (!s) {
                caldera_config_diagf(cfg, se->file, se->line, "caldera", NULL, "stage '%s' names no section", tok);
                continue;
            }
            if (pl->n_stages == cap) {
                caldera_config_diagf(cfg, se->file, se->line, "caldera", NULL, "too many stages; allowed: at most %lld", (long long) cap);
                break;
            }
            s->sec->referenced = 1;
            pl->stages[pl->n_stages++] = s->inst;
        }
        for (int64_t i = 0; i < pl->n_stages; i++) {
            enum caldera_plugin_kind k = caldera_inst_plugin(pl->stages[i])->kind;
            int last = i == pl->n_stages - 1;
            if (!last && k != CALDERA_PLUGIN_KIND_TRANSFORM) {
                caldera_config_diagf(cfg, se->file, se->line, "caldera", NULL,
                                     "stage '%s' is a %s; allowed: transforms first, then one quantizer or decomposer last",
                                     caldera_inst_name(pl->stages[i]), caldera_plugin_kind_name(k));
            }
            if (last && k != CALDERA_PLUGIN_KIND_QUANTIZER && k != CALDERA_PLUGIN_KIND_DECOMPOSER) {
                caldera_config_diagf(cfg, se->file, se->line, "caldera", NULL,
                                     "the last stage '%s' is a %s; allowed: a quantizer or a decomposer",
                                     caldera_inst_name(pl->stages[i]), caldera_plugin_kind_name(k));
            }
        }
        if (pl->n_stages == 0) caldera_config_diagf(cfg, se->file, se->line, "caldera", NULL, "'stages' lists no section");
    }
    for (int64_t i = 0; i < pl->n_secs; i++) {
        if (!pl->secs[i].sec->referenced) {
            caldera_config_diagf(cfg, pl->secs[i].sec->file, pl->secs[i].sec->line, caldera_inst_name(pl->secs[i].inst),
                                 plugin_of(pl->secs[i].inst), "section is never used (no stage or reference names it)");
        }
    }
    // 5. Required options, plugin checks and init (the [caldera] section first).
    if (main_sec) {
        for (int64_t i = 0; i < self->n_options; i++) {
            const struct caldera_option * op = &pipeline_options[i];
            if ((op->flags & CALDERA_OPT_REQUIRED) && !caldera_config_find(cfg, "caldera", op->name)) {
                caldera_config_diagf(cfg, main_sec->file, main_sec->line, "caldera", NULL, "required option '%s' is not set", op->name);
            }
        }
        if (o->hessians && pl->calib) {
            caldera_config_diagf(cfg, cal_e->file, cal_e->line, "caldera", NULL,
                                 "both 'hessians' and 'calibration' are set; allowed: one source of Hessians");
        }
        if ((pl->calib || pl->eval)) {
            const struct caldera_plugin * mp = caldera_registry_find(ctx, o->model);
            if (!mp || mp->kind != CALDERA_PLUGIN_KIND_MODEL) {
                struct cfg_entry * me = caldera_config_find(cfg, "caldera", "model");
                caldera_config_diagf(cfg, me ? me->file : main_sec->file, me ? me->line : main_sec->line, "caldera", NULL,
                                     "model = '%s' is no model plugin%s; allowed: a plugin of kind model (caldera-pipe --list-plugins)",
                                     o->model, mp ? "" : " that is loaded");
            }
        }
        if (!o->reader && !caldera_config_find(cfg, "caldera", "reader")) {
            caldera_config_diagf(cfg, main_sec->file, main_sec->line, "caldera", NULL, "required option 'reader' is not set");
        }
    }
    if (caldera_config_ndiag(cfg) == 0) {
        for (int64_t i = 0; i < pl->n_secs; i++) {
            struct caldera_inst * inst = pl->secs[i].inst;
            if (caldera_inst_start(inst) < 0) diag_from_ctx(pl, pl->secs[i].sec, NULL);
        }
    }
    // 5b. The device, so that --dry-run reports a missing GPU.
    if (main_sec) resolve_device(pl, main_sec);
    // 6. Shapes: read the model's headers and ask every stage about every selected weight.
    if (caldera_config_ndiag(cfg) == 0 && o->reader) {
        struct pl_section * rs = pl_find(pl, caldera_inst_name(o->reader));
        if (pl_open_reader(pl, o->reader, &pl->reader_open) < 0) {
            diag_from_ctx(pl, rs->sec, NULL);
        } else {
            const struct caldera_format_ops * rops = caldera_inst_plugin(o->reader)->ops;
            int64_t nt = rops->n_tensors(o->reader), nsel = 0;
            for (int64_t t = 0; t < nt; t++) {
                struct caldera_tensor_info ti;
                if (rops->tensor_info(o->reader, t, &ti) < 0) {
                    diag_from_ctx(pl, rs->sec, NULL);
                    break;
                }
                if (!pl_selected(o, &ti)) continue;
                nsel++;
                for (int64_t s = 0; s < pl->n_stages; s++) {
                    const struct caldera_plugin * sp = caldera_inst_plugin(pl->stages[s]);
                    if (sp->check_shape && sp->check_shape(pl->stages[s], ti.ne[0], ti.ne[1]) < 0) {
                        char what[300];
                        snprintf(what, sizeof(what), "weight %s (%lld x %lld): ", ti.hf_name ? ti.hf_name : ti.name,
                                 (long long) ti.ne[0], (long long) ti.ne[1]);
                        diag_from_ctx(pl, pl_find(pl, caldera_inst_name(pl->stages[s]))->sec, what);
                        if (caldera_config_ndiag(cfg) > 50) break;
                    }
                    // Transforms may pad: later stages see the padded size, which they check at run time.
                    if (sp->kind == CALDERA_PLUGIN_KIND_TRANSFORM) break;
                }
            }
            if (nsel == 0) {
                struct cfg_entry * ie = caldera_config_find(cfg, "caldera", "include");
                caldera_config_diagf(cfg, ie ? ie->file : main_sec->file, ie ? ie->line : main_sec->line, "caldera", NULL,
                                     "no weight of the model matches include = '%s' (exclude = '%s')", o->include, o->exclude);
            }
        }
        if (o->hessians && o->hessians != o->reader) {
            struct pl_section * hs = pl_find(pl, caldera_inst_name(o->hessians));
            if (pl_open_reader(pl, o->hessians, &pl->hess_open) < 0) diag_from_ctx(pl, hs->sec, NULL);
        }
        if (o->writer && !((const struct caldera_format_ops *) caldera_inst_plugin(o->writer)->ops)->create) {
            struct pl_section * ws = pl_find(pl, caldera_inst_name(o->writer));
            caldera_config_diagf(cfg, ws->sec->file, ws->sec->line, caldera_inst_name(o->writer), plugin_of(o->writer),
                                 "this format plugin cannot write files; allowed: a writer such as safetensors or gguf");
        }
    }
    if (caldera_config_ndiag(cfg) > 0) {
        rc = CALDERA_ERR_CONFIG;
        goto fail;
    }
    *out = pl;
    return 0;
fail:
    caldera_pipeline_free(pl);
    if (rc == CALDERA_ERR_CONFIG) {
        caldera_ctx_error(ctx, rc, "%lld configuration error(s)", (long long) caldera_config_ndiag(cfg));
    }
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Effective configuration

static int print_section(FILE * out, struct caldera_inst * inst, int with_plugin) {
    fprintf(out, "[%s]\n", caldera_inst_name(inst));
    const struct caldera_plugin * p = caldera_inst_plugin(inst);
    if (with_plugin) fprintf(out, "plugin = %s\n", p->name);
    for (const struct caldera_option * o = p->options; o && o->name; o++) {
        char * v = caldera_option_format(o, caldera_inst_priv(inst));
        if (!v) return CALDERA_ERR_NOMEM;
        fprintf(out, "%s = %s\n", o->name, v);
        caldera_free(v);
    }
    fprintf(out, "\n");
    return 0;
}

int caldera_pipeline_print_config(const struct caldera_pipeline * pl, FILE * out) {
    fprintf(out, "; effective configuration (caldera %s): every option, defaults filled in\n", CALDERA_VERSION_STRING);
    int rc = print_section(out, pl->self, 0);
    if (rc == 0 && pl->calib) rc = print_section(out, pl->calib, 0);
    if (rc == 0 && pl->eval) rc = print_section(out, pl->eval, 0);
    for (int64_t i = 0; rc == 0 && i < pl->n_secs; i++) rc = print_section(out, pl->secs[i].inst, 1);
    return rc;
}

char * pl_config_text(const struct caldera_pipeline * pl) {
    char * buf = NULL;
    size_t len = 0;
    FILE * f = open_memstream(&buf, &len);
    if (!f) return NULL;
    caldera_pipeline_print_config(pl, f);
    fclose(f);
    char * s = caldera_strdup(buf ? buf : "");
    free(buf);
    return s;
}

// ---------------------------------------------------------------------------------------------
// Run: the phases in order (each in its own file, see pipeline.h).

double pl_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

double pl_cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

int pl_find_tensor(struct caldera_inst * fmt, const char * name, int64_t * index) {
    const struct caldera_format_ops * ops = caldera_inst_plugin(fmt)->ops;
    int64_t n = ops->n_tensors(fmt);
    for (int64_t i = 0; i < n; i++) {
        struct caldera_tensor_info ti;
        if (ops->tensor_info(fmt, i, &ti) < 0) return CALDERA_ERR_FORMAT;
        if (strcmp(ti.name, name) == 0 || (ti.hf_name && strcmp(ti.hf_name, name) == 0)) {
            *index = i;
            return 0;
        }
    }
    return CALDERA_ERR_NOT_FOUND;
}

// One instance with what it reaches through its REF options (a codebook wrapped by ldlq, the
// factors' quantizer of a decomposer), recursively, so every plugin that produced data is named
// with its version and format version; the core walks the option tables, no plugin code.
static json_t * inst_json(const struct caldera_inst * inst, const char * via, int depth) {
    const struct caldera_plugin * p = caldera_inst_plugin(inst);
    char ver[32];
    snprintf(ver, sizeof(ver), "%u.%u.%u", p->version >> 16, (p->version >> 8) & 0xff, p->version & 0xff);
    json_t * o = json_pack("{s:s, s:s, s:s, s:s, s:i}", "section", caldera_inst_name(inst), "plugin", p->name, "kind",
                           caldera_plugin_kind_name(p->kind), "version", ver, "format_version", (json_int_t) p->format_version);
    if (o && via && json_object_set_new(o, "option", json_string(via)) < 0) {
        json_decref(o);
        return NULL;
    }
    json_t * uses = NULL;
    for (const struct caldera_option * opt = p->options; o && depth < 8 && opt && opt->name; opt++) {
        if (opt->type != CALDERA_OPT_REF) continue;
        const struct caldera_inst * r = *(struct caldera_inst * const *) ((const char *) caldera_inst_priv(inst) + opt->offset);
        if (!r) continue;
        if (!uses && (!(uses = json_array()) || json_object_set_new(o, "uses", uses) < 0)) goto fail;
        json_t * child = inst_json(r, opt->name, depth + 1);
        if (!child || json_array_append_new(uses, child) < 0) goto fail;
    }
    return o;
fail:
    json_decref(o);
    return NULL;
}

json_t * pl_stages_json(const struct caldera_pipeline * pl) {
    json_t * a = json_array();
    for (int64_t s = 0; a && s < pl->n_stages; s++) {
        json_t * st = inst_json(pl->stages[s], NULL, 0);
        if (!st || json_array_append_new(a, st) < 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

// The run's report (pl->report and its JSON text) from the compress phase's results.
static int report_build(struct caldera_pipeline * pl, struct pl_run * run) {
    json_t * rep = json_pack("{s:s, s:o, s:o, s:{s:I, s:f, s:f, s:f, s:f, s:I, s:o, s:o, s:f}}", "caldera_version",
                             CALDERA_VERSION_STRING, "stages", pl_stages_json(pl), "tensors", run->tensors, "summary", "weights",
                             (json_int_t) run->ndone, "params", run->sum_params, "bits_per_param",
                             run->sum_params > 0 ? run->sum_bits_params / run->sum_params : 0.0, "mean_rel_err",
                             run->ndone ? run->sum_err / (double) run->ndone : 0.0, "worst_rel_err", run->worst,
                             "weights_with_hessian", (json_int_t) run->n_h, "mean_rel_err_h",
                             run->n_h ? json_real(run->sum_err_h / (double) run->n_h) : json_null(), "worst_rel_err_h",
                             run->n_h ? json_real(run->worst_h) : json_null(), "seconds", pl_now() - run->t_start);
    run->tensors = NULL;   // owned by rep now
    if (!rep) return CALDERA_ERR_NOMEM;
    // every parameter of the model read (compressed and copied): the denominator of a whole file's bits per parameter
    if (json_object_set_new(json_object_get(rep, "summary"), "model_params", json_real(run->model_params)) < 0) {
        json_decref(rep);
        return CALDERA_ERR_NOMEM;
    }
    if (pl->report) json_decref(pl->report);
    pl->report = rep;
    return 0;
}

static int report_text(struct caldera_pipeline * pl);

// Calibration, evaluation and the time of each phase join the report after the files are written
// (the files' own copy of the report stays free of timings).
static int report_phases(struct caldera_pipeline * pl, struct pl_run * run) {
    if (run->calib_json) json_object_set_new(pl->report, "calibration", run->calib_json);
    run->calib_json = NULL;
    if (run->eval_json) json_object_set_new(pl->report, "eval", run->eval_json);
    run->eval_json = NULL;
    json_t * ph = json_pack("{s:f, s:f, s:f}", "calibrate", run->t_calibrate, "compress", run->t_compress, "evaluate", run->t_evaluate);
    if (!ph || json_object_set_new(pl->report, "phase_seconds", ph) < 0) return CALDERA_ERR_NOMEM;
    // CPU seconds of all threads: on a shared machine the wall times above measure the load too
    ph = json_pack("{s:f, s:f, s:f}", "calibrate", run->c_calibrate, "compress", run->c_compress, "evaluate", run->c_evaluate);
    if (!ph || json_object_set_new(pl->report, "phase_cpu_seconds", ph) < 0) return CALDERA_ERR_NOMEM;
    return report_text(pl);
}

static int report_text(struct caldera_pipeline * pl) {
    caldera_free(pl->report_json);
    char * js = json_dumps(pl->report, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
    pl->report_json = js ? caldera_strdup(js) : NULL;
    free(js);
    return pl->report_json ? 0 : CALDERA_ERR_NOMEM;
}

int pl_model_load(struct caldera_pipeline * pl, struct pl_run * run) {
    if (run->model) return 0;
    struct pipeline_opts * o = popts(pl);
    int rc = caldera_inst_create(pl->ctx, o->model, o->model, &run->model);
    if (rc == 0) rc = caldera_inst_start(run->model);
    if (rc == 0) rc = caldera_model_ops_of(run->model, &run->mops);
    if (rc == 0) rc = run->mops->load(run->model, o->reader);
    if (rc < 0) {
        caldera_inst_free(run->model);
        run->model = NULL;
        run->mops = NULL;
    }
    return rc;
}

// Temporaries of earlier runs of this pipeline killed while writing its outputs (never those of a
// live process): the format writers' and the report's "<path>[.<word>].tmp.<pid>".
static void remove_stale_temporaries(struct caldera_pipeline * pl) {
    struct pipeline_opts * o = popts(pl);
    struct caldera_inst *  writers[2] = { o->writer, o->dense_writer };
    for (int i = 0; i < 2; i++) {
        char * owned = NULL;
        const char * p = writers[i] ? pl_format_path(writers[i], &owned) : NULL;
        if (p) caldera_tmp_remove_stale(pl->ctx, p);
        caldera_free(owned);
    }
    if (o->report && *o->report) caldera_tmp_remove_stale(pl->ctx, o->report);
}

int caldera_pipeline_run(struct caldera_pipeline * pl) {
    struct caldera_ctx * ctx = pl->ctx;
    struct pipeline_opts * o = popts(pl);
    struct pl_run run = { 0 };
    int rc = 0;
    if ((rc = caldera_ctx_set_device(ctx, pl->device)) < 0) goto done;
    if (o->threads > 0 && (rc = caldera_ctx_set_threads(ctx, (int) o->threads)) < 0) goto done;
    if (!pl->reader_open && (rc = pl_open_reader(pl, o->reader, &pl->reader_open)) < 0) goto done;
    if (o->hessians && o->hessians != o->reader && !pl->hess_open && (rc = pl_open_reader(pl, o->hessians, &pl->hess_open)) < 0) goto done;
    run.hsrc = o->hessians;
    double c0 = pl_cpu_now();
    if (pl->calib && (rc = pl_phase_calibrate(pl, &run)) < 0) goto done;
    double c1 = pl_cpu_now();
    run.c_calibrate = c1 - c0;
    if (pl->eval && (rc = pl_phase_evaluate_original(pl, &run)) < 0) goto done;
    double c2 = pl_cpu_now();
    run.c_evaluate = c2 - c1;
    // (sequential calibration, which runs inside the compress phase, is counted here)
    remove_stale_temporaries(pl);
    if ((rc = pl_outputs_open(pl, &run)) < 0) goto done;
    if ((rc = pl_phase_compress(pl, &run)) < 0) goto done;
    if ((rc = report_build(pl, &run)) < 0) goto done;
    if ((rc = report_text(pl)) < 0) goto done;
    if ((rc = pl_outputs_finish(pl, &run)) < 0) goto done;
    double c3 = pl_cpu_now();
    run.c_compress = c3 - c2;
    if (pl->eval && (rc = pl_phase_evaluate(pl, &run)) < 0) goto done;
    run.c_evaluate += pl_cpu_now() - c3;
    if ((pl->calib || pl->eval) && (rc = report_phases(pl, &run)) < 0) goto done;
    // The report file last: it exists only when the model files it describes do.
    if (o->report && *o->report && pl->report_json) {
        struct caldera_atomic_file af;
        if ((rc = caldera_atomic_open(ctx, o->report, &af)) < 0) goto done;
        fputs(pl->report_json, af.fp);
        fputc('\n', af.fp);
        if ((rc = caldera_atomic_commit(ctx, &af)) < 0) goto done;
    }
    {
        char herr[96] = "";
        if (run.n_h) snprintf(herr, sizeof(herr), "; data-aware (%lld with H) mean %.4f, worst %.4f", (long long) run.n_h,
                              run.sum_err_h / (double) run.n_h, run.worst_h);
        caldera_log(ctx, CALDERA_LOG_INFO, "compressed %lld weights (%.0f parameters): %.4f bits/param, rel. error mean %.4f, worst %.4f%s, %.1f s",
                    (long long) run.ndone, run.sum_params, run.sum_params > 0 ? run.sum_bits_params / run.sum_params : 0.0,
                    run.ndone ? run.sum_err / (double) run.ndone : 0.0, run.worst, herr, pl_now() - run.t_start);
    }
    if (run.resumed) caldera_log(ctx, CALDERA_LOG_INFO, "%lld of them resumed from the checkpoint %s", (long long) run.resumed, o->checkpoint);
done:
    pl_run_close(pl, &run, rc);
    return rc;
}

const char * caldera_pipeline_report_json(const struct caldera_pipeline * pl) { return pl->report_json; }

int caldera_pipeline_model_desc(const struct caldera_pipeline * pl, struct caldera_model_desc * out) {
    const struct pipeline_opts * o = pl->self ? caldera_inst_priv(pl->self) : NULL;
    memset(out, 0, sizeof(*out));
    if (!o || !o->reader || !pl->reader_open) return CALDERA_ERR_NOT_FOUND;
    const struct caldera_format_ops * ops = caldera_inst_plugin(o->reader)->ops;
    if (!ops->model_desc || ops->model_desc(o->reader, out) < 0 || !out->arch[0] || out->n_layers <= 0) {
        memset(out, 0, sizeof(*out));
        return CALDERA_ERR_NOT_FOUND;
    }
    return 0;
}
