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

#include "checkpoint.h"
#include "config.h"

enum { HMISS_IDENTITY = 0, HMISS_ERROR = 1 };

// Options of the [caldera] section (bound like a plugin's, so help and --print-config are generated).
struct pipeline_opts {
    struct caldera_inst * reader;
    struct caldera_inst * writer;
    struct caldera_inst * dense_writer;
    struct caldera_inst * hessians;
    char *                stages;
    char *                include;
    char *                exclude;
    int                   device;
    int64_t               threads;
    int                   hessian_missing;
    char *                report;
    int64_t               max_tensors;
    int                   verify;
    int                   copy_dtype;
    char *                plugin_path;
    char *                checkpoint;
};

enum { COPY_AUTO = 0, COPY_F32, COPY_F16, COPY_BF16 };

#define POFF(x) offsetof(struct pipeline_opts, x)
static const struct caldera_opt_choice device_choices[] = {
    { "cpu", CALDERA_DEVICE_CPU, "OpenBLAS/LAPACKE on the CPU" },
    { "cuda", CALDERA_DEVICE_CUDA, "cuBLAS/cuSOLVER (a CUDA build with a GPU)" },
    { NULL, 0, NULL },
};
static const struct caldera_opt_choice hmiss_choices[] = {
    { "identity", HMISS_IDENTITY, "use H = I (data-free) for weights without a Hessian" },
    { "error", HMISS_ERROR, "stop with an error" },
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
    { "hessian_missing", "what to do for a weight without a Hessian", POFF(hessian_missing), CALDERA_OPT_ENUM,
      { .i64 = HMISS_IDENTITY }, 0, -1, hmiss_choices, 0, 0 },
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

struct pl_section {
    struct caldera_inst * inst;
    struct cfg_section *  sec;
};

struct caldera_pipeline {
    struct caldera_ctx *    ctx;
    struct caldera_config * cfg;
    struct caldera_inst *   self;        // the [caldera] options
    struct pl_section *     secs;
    int64_t                 n_secs;
    struct caldera_inst **  stages;
    int64_t                 n_stages;
    int                     reader_open, hess_open;
    char *                  report_json;
    json_t *                report;
};

static struct pipeline_opts * popts(const struct caldera_pipeline * pl) { return caldera_inst_priv(pl->self); }

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

static const char * format_path(struct caldera_inst * inst, char ** owned) {
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

static int selected(const struct pipeline_opts * o, const struct caldera_tensor_info * ti) {
    const char * name = ti->hf_name ? ti->hf_name : ti->name;
    return ti->ndim == 2 && match_any(o->include, name) && !match_any(o->exclude, name);
}

static int open_reader(struct caldera_pipeline * pl, struct caldera_inst * inst, int * flag) {
    const struct caldera_format_ops * ops = caldera_inst_plugin(inst)->ops;
    if (!ops->open) return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "this format plugin cannot read models");
    char * owned = NULL;
    const char * path = format_path(inst, &owned);
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

int caldera_pipeline_init(struct caldera_ctx * ctx, struct caldera_config * cfg, struct caldera_pipeline ** out) {
    *out = NULL;
    struct caldera_pipeline * pl = caldera_calloc(1, sizeof(*pl));
    if (!pl) return CALDERA_ERR_NOMEM;
    pl->ctx = ctx;
    pl->cfg = cfg;
    int rc = 0;
    // The [caldera] section.
    struct caldera_inst * self = caldera_calloc(1, sizeof(*self));
    if (!self) { rc = CALDERA_ERR_NOMEM; goto fail; }
    self->ctx = ctx;
    self->plugin = &pipeline_desc;
    self->name = caldera_strdup("caldera");
    self->priv = caldera_calloc(1, sizeof(struct pipeline_opts));
    self->n_options = caldera_options_count(pipeline_options);
    self->is_set = caldera_calloc((size_t) self->n_options + 1, sizeof(bool));
    pl->self = self;
    if (!self->name || !self->priv || !self->is_set) { rc = CALDERA_ERR_NOMEM; goto fail; }
    for (int64_t i = 0; i < self->n_options; i++) caldera_option_set_default(&pipeline_options[i], self->priv);

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
    for (int64_t i = 0; i < cfg->n_sections; i++) {
        struct cfg_section * s = &cfg->sections[i];
        if (strcmp(s->name, "caldera") == 0) continue;
        struct cfg_entry * pe = caldera_config_find(cfg, s->name, "plugin");
        if (!pe) {
            caldera_config_diagf(cfg, s->file, s->line, s->name, NULL, "no 'plugin = NAME' key; caldera-pipe --list-plugins lists them");
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
    // 6. Shapes: read the model's headers and ask every stage about every selected weight.
    if (caldera_config_ndiag(cfg) == 0 && o->reader) {
        struct pl_section * rs = pl_find(pl, caldera_inst_name(o->reader));
        if (open_reader(pl, o->reader, &pl->reader_open) < 0) {
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
                if (!selected(o, &ti)) continue;
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
            if (open_reader(pl, o->hessians, &pl->hess_open) < 0) diag_from_ctx(pl, hs->sec, NULL);
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
    for (int64_t i = 0; rc == 0 && i < pl->n_secs; i++) rc = print_section(out, pl->secs[i].inst, 1);
    return rc;
}

static char * config_text(const struct caldera_pipeline * pl) {
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
// Run

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

static int find_tensor(struct caldera_inst * fmt, const char * name, int64_t * index) {
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

// Hessian name of a weight: "<x>.weight" -> "<x>.hessian".
static void hessian_name(const char * wname, char * out, size_t n) {
    size_t l = strlen(wname);
    if (l > 7 && strcmp(wname + l - 7, ".weight") == 0) snprintf(out, n, "%.*s.hessian", (int) (l - 7), wname);
    else snprintf(out, n, "%s.hessian", wname);
}

struct tensor_result {
    double bits, rel_fro, rel_h, seconds;
    int    has_h;
};

// CALDERA_ERR_NUMERIC naming the tensor and the first non-finite element of t (f32/f64/f16/bf16),
// or 0 when t is finite: a NaN or Inf is never passed on to a stage or into an output.
static int check_finite_named(struct caldera_ctx * ctx, const char * what, const char * name,
                              const struct caldera_tensor * t) {
    int64_t bad = 0;
    if (caldera_tensor_check_finite(t, &bad) == 0) return 0;
    if (t->ndim == 2 && t->ne[1] > 0) {
        return caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "%s %s has a NaN or Inf at row %lld, column %lld", what, name,
                                 (long long) (bad / t->ne[1]), (long long) (bad % t->ne[1]));
    }
    return caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "%s %s has a NaN or Inf at element %lld", what, name, (long long) bad);
}

static int compress_one(struct caldera_pipeline * pl, const char * name, const struct caldera_tensor * w,
                        const struct caldera_tensor * h, struct caldera_pack * pack, struct caldera_tensor * w_hat,
                        struct tensor_result * res) {
    struct caldera_ctx * ctx = pl->ctx;
    struct pipeline_opts * o = popts(pl);
    int rc = 0;
    int64_t nt = pl->n_stages - 1;
    struct caldera_tensor * ws = caldera_calloc((size_t) (nt + 1), sizeof(*ws));   // transformed W per level
    struct caldera_tensor * hs = caldera_calloc((size_t) (nt + 1), sizeof(*hs));
    void ** states = caldera_calloc((size_t) (nt + 1), sizeof(void *));
    struct caldera_tensor cur_hat = { 0 }, back = { 0 };
    if (!ws || !hs || !states) { rc = CALDERA_ERR_NOMEM; goto done; }
    const struct caldera_tensor * cw = w, * ch = h;
    for (int64_t s = 0; s < nt; s++) {
        struct caldera_inst * st = pl->stages[s];
        const struct caldera_transform_ops * to = caldera_inst_plugin(st)->ops;
        if ((rc = caldera_pack_push_prefix(pack, caldera_inst_name(st))) < 0) goto done;
        caldera_pack_push_prefix(pack, ".");
        rc = to->forward(st, name, cw, ch, &ws[s], ch ? &hs[s] : NULL, pack, &states[s]);
        caldera_pack_pop_prefix(pack);
        caldera_pack_pop_prefix(pack);
        if (rc < 0) goto done;
        cw = &ws[s];
        ch = ch ? &hs[s] : NULL;
    }
    struct caldera_inst * last = pl->stages[nt];
    const struct caldera_plugin * lp = caldera_inst_plugin(last);
    if (lp->check_shape && (rc = lp->check_shape(last, cw->ne[0], cw->ne[1])) < 0) goto done;
    if ((rc = caldera_tensor_alloc_f32(ctx, cw->ne[0], cw->ne[1], &cur_hat)) < 0) goto done;
    if ((rc = caldera_pack_push_prefix(pack, caldera_inst_name(last))) < 0) goto done;
    caldera_pack_push_prefix(pack, ".");
    if (lp->kind == CALDERA_PLUGIN_KIND_QUANTIZER) {
        rc = ((const struct caldera_quantizer_ops *) lp->ops)->quantize(last, cw, ch, &cur_hat, pack);
    } else {
        rc = ((const struct caldera_decomposer_ops *) lp->ops)->decompose(last, cw, ch, &cur_hat, pack);
    }
    if (rc == 0 && o->verify) {
        struct caldera_tensor chk = { 0 };
        rc = caldera_tensor_alloc_f32(ctx, cw->ne[0], cw->ne[1], &chk);
        if (rc == 0) {
            rc = lp->kind == CALDERA_PLUGIN_KIND_QUANTIZER
                     ? ((const struct caldera_quantizer_ops *) lp->ops)->dequantize(last, pack, &chk)
                     : ((const struct caldera_decomposer_ops *) lp->ops)->reconstruct(last, pack, &chk);
        }
        // Values must agree exactly (−0 and +0 are the same value; a NaN never agrees).
        for (int64_t k = 0; rc == 0 && k < cw->ne[0] * cw->ne[1]; k++) {
            if (((const float *) chk.data)[k] != ((const float *) cur_hat.data)[k]) {
                // %.9g: enough digits to tell any two floats apart
                rc = caldera_error(last, CALDERA_ERR_BUG, "verify: decoding the pack of %s does not reproduce the approximation "
                                   "(element %lld = row %lld, col %lld: decoded %.9g vs %.9g)", name, (long long) k,
                                   (long long) (k / cw->ne[1]), (long long) (k % cw->ne[1]),
                                   (double) ((const float *) chk.data)[k], (double) ((const float *) cur_hat.data)[k]);
            }
        }
        caldera_tensor_free(&chk);
    }
    caldera_pack_pop_prefix(pack);
    caldera_pack_pop_prefix(pack);
    if (rc < 0) goto done;
    // Back through the transforms, last first.
    for (int64_t s = nt - 1; s >= 0; s--) {
        struct caldera_inst * st = pl->stages[s];
        const struct caldera_transform_ops * to = caldera_inst_plugin(st)->ops;
        if ((rc = to->inverse(st, states[s], &cur_hat, &back)) < 0) goto done;
        caldera_tensor_free(&cur_hat);
        cur_hat = back;
        memset(&back, 0, sizeof(back));
    }
    if (cur_hat.ne[0] != w->ne[0] || cur_hat.ne[1] != w->ne[1]) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_BUG, "%s: the stages returned a %lld x %lld approximation of a %lld x %lld weight",
                               name, (long long) cur_hat.ne[0], (long long) cur_hat.ne[1], (long long) w->ne[0], (long long) w->ne[1]);
        goto done;
    }
    *w_hat = cur_hat;
    memset(&cur_hat, 0, sizeof(cur_hat));
    // Metrics in the original domain (the RHT leaves both invariant).
    int64_t m = w->ne[0], n = w->ne[1];
    double num = 0, den = 0;
    for (int64_t i = 0; i < m; i++) {
        const float * wr = (const float *) w->data + i * w->ld;
        const float * hr = (const float *) w_hat->data + i * w_hat->ld;
        for (int64_t j = 0; j < n; j++) {
            double d = (double) wr[j] - hr[j];
            num += d * d;
            den += (double) wr[j] * wr[j];
        }
    }
    if (!isfinite(num)) {  // finite input, yet the stages produced a NaN or Inf (e.g. a scale overflowed)
        rc = check_finite_named(ctx, "the approximation of weight", name, w_hat);
        if (rc == 0) {
            rc = caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "weight %s: the squared error overflows a double", name);
        }
        caldera_tensor_free(w_hat);
        goto done;
    }
    res->rel_fro = den > 0 ? sqrt(num / den) : sqrt(num);
    res->has_h = h != NULL;
    res->rel_h = res->rel_fro;
    if (h) {
        struct caldera_tensor e = { 0 };
        if ((rc = caldera_tensor_alloc_f32(ctx, m, n, &e)) < 0) goto done;
        float * ed = e.data;
        for (int64_t i = 0; i < m; i++) {
            for (int64_t j = 0; j < n; j++) {
                ed[i * n + j] = ((const float *) w->data)[i * w->ld + j] - ((const float *) w_hat->data)[i * w_hat->ld + j];
            }
        }
        double te = 0, tw = 0;
        rc = caldera_linalg_trace_quad(ctx, &e, h, &te);
        if (rc == 0) rc = caldera_linalg_trace_quad(ctx, w, h, &tw);
        caldera_tensor_free(&e);
        if (rc < 0) goto done;
        res->rel_h = tw > 0 ? sqrt(fmax(te, 0) / tw) : sqrt(fmax(te, 0));
    }
    res->bits = (double) caldera_pack_bits(pack) / (double) (m * n);
done:
    for (int64_t s = 0; states && s < nt; s++) {
        if (states[s]) ((const struct caldera_transform_ops *) caldera_inst_plugin(pl->stages[s])->ops)->free_state(pl->stages[s], states[s]);
        caldera_tensor_free(&ws[s]);
        caldera_tensor_free(&hs[s]);
    }
    caldera_free(ws);
    caldera_free(hs);
    caldera_free(states);
    caldera_tensor_free(&cur_hat);
    caldera_tensor_free(&back);
    return rc;
}

static int write_tensor(struct caldera_inst * wr, const char * name, const struct caldera_tensor * t) {
    if (!wr) return 0;
    return ((const struct caldera_format_ops *) caldera_inst_plugin(wr)->ops)->write_tensor(wr, name, t);
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

static json_t * stages_json(const struct caldera_pipeline * pl) {
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

int caldera_pipeline_run(struct caldera_pipeline * pl) {
    struct caldera_ctx * ctx = pl->ctx;
    struct pipeline_opts * o = popts(pl);
    int rc = 0;
    struct caldera_meta * fmeta = NULL;
    struct caldera_pack * pack = NULL;
    struct caldera_tensor w = { 0 }, h = { 0 }, w_hat = { 0 };
    int w_owned = 0, h_owned = 0, writer_open = 0, dense_open = 0;
    char * cfgtext = NULL;
    struct caldera_ckpt * ckpt = NULL;
    int64_t resumed = 0;
    json_t * tensors = json_array();
    if (!tensors) return CALDERA_ERR_NOMEM;
    if ((rc = caldera_ctx_set_device(ctx, (enum caldera_device) o->device)) < 0) goto done;
    if (o->threads > 0 && (rc = caldera_ctx_set_threads(ctx, (int) o->threads)) < 0) goto done;
    if (!pl->reader_open && (rc = open_reader(pl, o->reader, &pl->reader_open)) < 0) goto done;
    if (o->hessians && o->hessians != o->reader && !pl->hess_open && (rc = open_reader(pl, o->hessians, &pl->hess_open)) < 0) goto done;
    const struct caldera_format_ops * rops = caldera_inst_plugin(o->reader)->ops;
    const struct caldera_format_ops * hops = o->hessians ? caldera_inst_plugin(o->hessians)->ops : NULL;

    if ((rc = caldera_meta_init(&fmeta)) < 0) goto done;
    if (!(cfgtext = config_text(pl))) { rc = CALDERA_ERR_NOMEM; goto done; }
    if (rops->meta && rops->meta(o->reader)) {
        // carry the source's architecture and tokenizer metadata through
        if ((rc = caldera_meta_copy(fmeta, rops->meta(o->reader))) < 0) goto done;
    }
    {
        json_t * st = stages_json(pl);
        char * sj = st ? json_dumps(st, JSON_COMPACT) : NULL;
        if (st) json_decref(st);
        rc = caldera_meta_set_string(fmeta, "caldera.version", CALDERA_VERSION_STRING);
        if (rc == 0) rc = caldera_meta_set_string(fmeta, "caldera.config", cfgtext);
        if (rc == 0) rc = sj ? caldera_meta_set_string(fmeta, "caldera.stages", sj) : CALDERA_ERR_NOMEM;
        free(sj);
        if (rc < 0) goto done;
    }
    if (o->checkpoint && *o->checkpoint && (rc = caldera_ckpt_open(ctx, o->checkpoint, cfgtext, &ckpt)) < 0) goto done;
    char * wpath = NULL;
    if (o->writer) {
        const char * p = format_path(o->writer, &wpath);
        rc = ((const struct caldera_format_ops *) caldera_inst_plugin(o->writer)->ops)->create(o->writer, p, fmeta);
        caldera_free(wpath);
        if (rc < 0) goto done;
        writer_open = 1;
    }
    if (o->dense_writer) {
        const char * p = format_path(o->dense_writer, &wpath);
        rc = ((const struct caldera_format_ops *) caldera_inst_plugin(o->dense_writer)->ops)->create(o->dense_writer, p, fmeta);
        caldera_free(wpath);
        if (rc < 0) goto done;
        dense_open = 1;
    }
    int64_t nt = rops->n_tensors(o->reader), nsel = 0, ndone = 0;
    for (int64_t t = 0; t < nt; t++) {
        struct caldera_tensor_info ti;
        if ((rc = rops->tensor_info(o->reader, t, &ti)) < 0) goto done;
        if (selected(o, &ti) && (o->max_tensors == 0 || nsel < o->max_tensors)) nsel++;
    }
    // Frobenius errors over every weight; H-weighted ones only over weights that had a Hessian.
    double t_start = now_s(), sum_bits_params = 0, sum_params = 0, worst = 0, sum_err = 0, worst_h = 0, sum_err_h = 0;
    int64_t counted = 0, n_h = 0;
    for (int64_t t = 0; t < nt; t++) {
        if (caldera_ctx_cancelled(ctx)) { rc = caldera_ctx_error(ctx, CALDERA_ERR_CANCELLED, "cancelled after %lld weights", (long long) ndone); goto done; }
        struct caldera_tensor_info ti;
        if ((rc = rops->tensor_info(o->reader, t, &ti)) < 0) goto done;
        const char * name = ti.hf_name ? ti.hf_name : ti.name;
        int sel = selected(o, &ti) && (o->max_tensors == 0 || counted < o->max_tensors);
        if (!sel) {
            if (!writer_open && !dense_open) continue;
            int plain = caldera_dtype_block_elems(ti.dtype) == 1;
            int is_float = ti.dtype == CALDERA_DTYPE_F32 || ti.dtype == CALDERA_DTYPE_F64 || ti.dtype == CALDERA_DTYPE_F16 ||
                           ti.dtype == CALDERA_DTYPE_BF16 || !plain;
            enum caldera_dtype want = plain ? ti.dtype : CALDERA_DTYPE_F32;
            if (o->copy_dtype == COPY_F32 && is_float) want = CALDERA_DTYPE_F32;
            if (o->copy_dtype == COPY_F16 && is_float) want = CALDERA_DTYPE_F16;
            if (o->copy_dtype == COPY_BF16 && is_float) want = CALDERA_DTYPE_BF16;
            if ((rc = rops->read_tensor(o->reader, t, want, &w, &w_owned)) < 0) goto done;
            if ((rc = check_finite_named(ctx, "tensor", name, &w)) < 0) goto done;
            if (writer_open && (rc = write_tensor(o->writer, name, &w)) < 0) goto done;
            if (dense_open && (rc = write_tensor(o->dense_writer, name, &w)) < 0) goto done;
            if (w_owned) caldera_tensor_free(&w);
            memset(&w, 0, sizeof(w));
            continue;
        }
        counted++;
        double t0 = now_s();
        struct tensor_result res = { 0 };
        if ((rc = caldera_pack_init(&pack)) < 0) goto done;
        int from_ckpt = 0;
        if (ckpt) {
            struct caldera_ckpt_result cr;
            if (dense_open && (rc = caldera_tensor_alloc_f32(ctx, ti.ne[0], ti.ne[1], &w_hat)) < 0) goto done;
            rc = caldera_ckpt_load(ckpt, t, name, pack, &cr, dense_open ? &w_hat : NULL);
            if (rc == 0) {
                res = (struct tensor_result) { cr.bits, cr.rel_fro, cr.rel_h, cr.seconds, cr.has_h };
                w.ne[0] = ti.ne[0];
                w.ne[1] = ti.ne[1];
                from_ckpt = 1;
                resumed++;
            } else if (rc != CALDERA_ERR_NOT_FOUND) {
                goto done;
            } else {
                caldera_tensor_free(&w_hat);
            }
            rc = 0;
        }
        if (!from_ckpt) {
            if ((rc = rops->read_tensor(o->reader, t, CALDERA_DTYPE_F32, &w, &w_owned)) < 0) goto done;
            if ((rc = check_finite_named(ctx, "weight", name, &w)) < 0) goto done;
            const struct caldera_tensor * hp = NULL;
            if (o->hessians) {
                char hname[1024];
                int64_t hi;
                hessian_name(name, hname, sizeof(hname));
                if (find_tensor(o->hessians, hname, &hi) == 0) {
                    if ((rc = hops->read_tensor(o->hessians, hi, CALDERA_DTYPE_F32, &h, &h_owned)) < 0) goto done;
                    if (h.ndim != 2 || h.ne[0] != w.ne[1] || h.ne[1] != w.ne[1]) {
                        rc = caldera_ctx_error(ctx, CALDERA_ERR_FORMAT, "Hessian %s is %lld x %lld; weight %s needs %lld x %lld", hname,
                                               (long long) h.ne[0], (long long) h.ne[1], name, (long long) w.ne[1], (long long) w.ne[1]);
                        goto done;
                    }
                    if ((rc = check_finite_named(ctx, "Hessian", hname, &h)) < 0) goto done;
                    hp = &h;
                } else if (o->hessian_missing == HMISS_ERROR) {
                    rc = caldera_ctx_error(ctx, CALDERA_ERR_NOT_FOUND, "no Hessian '%s' for weight %s in [%s]", hname, name,
                                           caldera_inst_name(o->hessians));
                    goto done;
                }
            }
            rc = compress_one(pl, name, &w, hp, pack, &w_hat, &res);
            if (rc < 0) {
                char msg[CALDERA_ERRMSG_MAX];
                caldera_strlcpy(msg, caldera_ctx_errmsg(ctx), sizeof(msg));
                caldera_ctx_error(ctx, rc, "weight %s (%lld x %lld): %s", name, (long long) w.ne[0], (long long) w.ne[1], msg);
                goto done;
            }
            if (ckpt && (rc = caldera_ckpt_save(ckpt, t, name, pack, &(struct caldera_ckpt_result) { res.bits, res.rel_fro,
                                                  res.rel_h, now_s() - t0, res.has_h }, dense_open ? &w_hat : NULL)) < 0) {
                goto done;
            }
        }
        if (!from_ckpt) res.seconds = now_s() - t0;
        for (int64_t k = 0; writer_open && k < caldera_pack_count(pack); k++) {
            struct caldera_tensor pt;
            caldera_pack_get(pack, k, &pt);
            char * full = caldera_asprintf("%s.%s", name, caldera_pack_name(pack, k));
            if (!full) { rc = CALDERA_ERR_NOMEM; goto done; }
            rc = write_tensor(o->writer, full, &pt);
            caldera_free(full);
            if (rc < 0) goto done;
        }
        if (dense_open && (rc = write_tensor(o->dense_writer, name, &w_hat)) < 0) goto done;
        double params = (double) (w.ne[0] * w.ne[1]);
        sum_bits_params += res.bits * params;
        sum_params += params;
        sum_err += res.rel_fro;
        if (res.rel_fro > worst) worst = res.rel_fro;
        if (res.has_h) {
            n_h++;
            sum_err_h += res.rel_h;
            if (res.rel_h > worst_h) worst_h = res.rel_h;
        }
        ndone++;
        json_t * tj = json_pack("{s:s, s:[I,I], s:f, s:f, s:f, s:b, s:f}", "name", name, "shape", (json_int_t) w.ne[0],
                                (json_int_t) w.ne[1], "bits_per_param", res.bits, "rel_err", res.rel_fro, "rel_err_h", res.rel_h,
                                "data_aware", res.has_h, "seconds", res.seconds);
        if (tj) json_array_append_new(tensors, tj);
        double el = now_s() - t_start, eta = ndone ? el / (double) ndone * (double) (nsel - ndone) : 0;
        char herr[48] = "";
        if (res.has_h) snprintf(herr, sizeof(herr), ", data-aware %.4f", res.rel_h);
        caldera_log(ctx, CALDERA_LOG_INFO, "[%lld/%lld] %s (%lld x %lld): %.3f bits/param, rel. error %.4f%s (%.2f s; %.2f weights/s, ETA %.0f s)",
                    (long long) ndone, (long long) nsel, name, (long long) w.ne[0], (long long) w.ne[1], res.bits, res.rel_fro,
                    herr, res.seconds, el > 0 ? (double) ndone / el : 0.0, eta);
        caldera_pack_free(pack);
        pack = NULL;
        caldera_tensor_free(&w_hat);
        if (w_owned) caldera_tensor_free(&w);
        if (h_owned) caldera_tensor_free(&h);
        memset(&w, 0, sizeof(w));
        memset(&h, 0, sizeof(h));
        w_owned = h_owned = 0;
    }
    {
        json_t * rep = json_pack("{s:s, s:o, s:o, s:{s:I, s:f, s:f, s:f, s:f, s:I, s:o, s:o, s:f}}", "caldera_version",
                                 CALDERA_VERSION_STRING, "stages", stages_json(pl), "tensors", tensors, "summary", "weights",
                                 (json_int_t) ndone, "params", sum_params, "bits_per_param",
                                 sum_params > 0 ? sum_bits_params / sum_params : 0.0, "mean_rel_err",
                                 ndone ? sum_err / (double) ndone : 0.0, "worst_rel_err", worst, "weights_with_hessian",
                                 (json_int_t) n_h, "mean_rel_err_h", n_h ? json_real(sum_err_h / (double) n_h) : json_null(),
                                 "worst_rel_err_h", n_h ? json_real(worst_h) : json_null(), "seconds", now_s() - t_start);
        tensors = NULL;   // owned by rep now
        if (!rep) { rc = CALDERA_ERR_NOMEM; goto done; }
        if (pl->report) json_decref(pl->report);
        pl->report = rep;
        caldera_free(pl->report_json);
        char * js = json_dumps(rep, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
        pl->report_json = js ? caldera_strdup(js) : NULL;
        free(js);
    }
    // The report goes into the file metadata too, so a compressed file says how it was made; without
    // the timings, so that a resumed run writes the same bytes as an uninterrupted one.
    if (pl->report) {
        json_t * frep = json_deep_copy(pl->report);
        size_t ti_;
        json_t * tj;
        json_array_foreach(json_object_get(frep, "tensors"), ti_, tj) json_object_del(tj, "seconds");
        json_object_del(json_object_get(frep, "summary"), "seconds");
        char * fj = frep ? json_dumps(frep, JSON_INDENT(2) | JSON_REAL_PRECISION(10)) : NULL;
        json_decref(frep);
        rc = fj ? caldera_meta_set_string(fmeta, "caldera.report", fj) : CALDERA_ERR_NOMEM;
        free(fj);
        if (rc < 0) goto done;
        struct caldera_inst * ws[2] = { writer_open ? o->writer : NULL, dense_open ? o->dense_writer : NULL };
        for (int k = 0; k < 2; k++) {
            if (!ws[k]) continue;
            const struct caldera_format_ops * wo = caldera_inst_plugin(ws[k])->ops;
            if (CALDERA_OPS_HAS(wo, struct caldera_format_ops, update_meta) && (rc = wo->update_meta(ws[k], fmeta)) < 0) goto done;
        }
    }
    if (writer_open) {
        writer_open = 0;
        if ((rc = ((const struct caldera_format_ops *) caldera_inst_plugin(o->writer)->ops)->finish(o->writer, 1)) < 0) goto done;
    }
    if (dense_open) {
        dense_open = 0;
        if ((rc = ((const struct caldera_format_ops *) caldera_inst_plugin(o->dense_writer)->ops)->finish(o->dense_writer, 1)) < 0) goto done;
    }
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
        if (n_h) snprintf(herr, sizeof(herr), "; data-aware (%lld with H) mean %.4f, worst %.4f", (long long) n_h,
                          sum_err_h / (double) n_h, worst_h);
        caldera_log(ctx, CALDERA_LOG_INFO, "compressed %lld weights (%.0f parameters): %.4f bits/param, rel. error mean %.4f, worst %.4f%s, %.1f s",
                    (long long) ndone, sum_params, sum_params > 0 ? sum_bits_params / sum_params : 0.0,
                    ndone ? sum_err / (double) ndone : 0.0, worst, herr, now_s() - t_start);
    }
    if (resumed) caldera_log(ctx, CALDERA_LOG_INFO, "%lld of them resumed from the checkpoint %s", (long long) resumed, o->checkpoint);
done:
    // A finished run removes its checkpoint; a failed or cancelled one keeps it to continue from.
    caldera_ckpt_close(ckpt, rc == 0);
    if (writer_open) ((const struct caldera_format_ops *) caldera_inst_plugin(o->writer)->ops)->finish(o->writer, 0);
    if (dense_open) ((const struct caldera_format_ops *) caldera_inst_plugin(o->dense_writer)->ops)->finish(o->dense_writer, 0);
    caldera_pack_free(pack);
    caldera_tensor_free(&w_hat);
    if (w_owned) caldera_tensor_free(&w);
    if (h_owned) caldera_tensor_free(&h);
    caldera_meta_free(fmeta);
    caldera_free(cfgtext);
    if (tensors) json_decref(tensors);
    return rc;
}

const char * caldera_pipeline_report_json(const struct caldera_pipeline * pl) { return pl->report_json; }
