// SPDX-License-Identifier: MIT
// The calibrate phase of a pipeline run: windows of tokens sampled reproducibly from text
// sources, a forward pass of the model (no logits) whose per-group linear inputs x are summed
// into H = Σ x xᵀ / tokens (f64, calib-acc.c), one Hessian per input group (q/k/v share one,
// gate/up share one, o, down), stored in a safetensors cache file keyed by a hash of the model,
// the data and the settings, and reused by later runs. algorithms.md §5.
//
// Window sampling (documented in docs/user-guide.md): source s gets round(sequences · share_s /
// Σ shares) windows (largest remainder; ties to the earlier source). Each window draws a byte
// offset uniformly over the source's files (xoshiro256** seeded by caldera_seed_mix(seed,
// "calibration.<s>")), moves to the next line start, tokenizes the following bytes (no BOS) and
// keeps the first `length` tokens (length − 1 after a BOS); a draw too close to the end of its
// file is drawn again.
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calibrate.h"
#include "pipeline.h"

#define CALIB_CODE_VERSION 1   // bump when the sampling or the accumulation changes what is cached
#define CALIB_MAX_DRAWS    1000

#define COFF(x) offsetof(struct calib_opts, x)
static const struct caldera_opt_choice bos_choices[] = {
    { "model", CALIB_BOS_MODEL, "a BOS first in each window when the model's tokenizer adds one" },
    { "on", CALIB_BOS_ON, "always a BOS first (the model must have one)" },
    { "off", CALIB_BOS_OFF, "never: every token of a window is text" },
    { NULL, 0, NULL },
};
static const struct caldera_option calib_options[] = {
    { "text", "text sources: comma-separated files or folders (every file in a folder; relative: to the pipeline file's folder)",
      COFF(text), CALDERA_OPT_PATH,
      { .str = "${CALDERA_SHARED_DATA:-../shared/data}/wiki-calib, ${CALDERA_SHARED_DATA:-../shared/data}/austen" }, 0, -1, NULL, 0, 0 },
    { "shares", "token share of each source, as relative weights (empty: equal shares)", COFF(shares), CALDERA_OPT_INT_LIST,
      { .str = "" }, 0, 1e9, NULL, 0, 0 },
    { "sequences", "number of windows (sequences) in all", COFF(sequences), CALDERA_OPT_INT, { .i64 = 128 }, 1, 1e7, NULL, 0, 0 },
    { "length", "tokens per window, a BOS included", COFF(length), CALDERA_OPT_INT, { .i64 = 512 }, 2, 1e6, NULL, 0, 0 },
    { "seed", "seed of the window sampling", COFF(seed), CALDERA_OPT_INT, { .i64 = 0 }, 0, 9.2e18, NULL, 0, 0 },
    { "bos", "BOS token first in each window", COFF(bos), CALDERA_OPT_ENUM, { .i64 = CALIB_BOS_MODEL }, 0, -1, bos_choices, 0, 0 },
    { "batch", "windows per forward pass (memory against speed)", COFF(batch), CALDERA_OPT_INT, { .i64 = 8 }, 1, 4096, NULL, 0,
      CALDERA_OPT_EXPERT },
    { "cache", "folder of the Hessian cache, one file per model, data and settings (empty: not kept)", COFF(cache), CALDERA_OPT_PATH,
      { .str = "${CALDERA_CACHE:-${HOME}/.cache/caldera}/hessians" }, 0, -1, NULL, 0, 0 },
    { "sequential", "layer l's Hessians collected with layers < l already compressed (GPTQ's order; (L+1)/2 forward passes; "
      "not cached)", COFF(sequential), CALDERA_OPT_BOOL, { .i64 = 0 }, 0, -1, NULL, 0, 0 },
    { NULL },
};
static const struct caldera_format_ops calib_dummy_ops = { .struct_size = sizeof(struct caldera_format_ops) };
static const struct caldera_plugin calib_desc = {
    .abi_version = CALDERA_PLUGIN_ABI_VERSION, .struct_size = sizeof(struct caldera_plugin),
    .kind = CALDERA_PLUGIN_KIND_FORMAT, .name = "calibration",
    .description = "calibration Hessians (the section named by [caldera] calibration; no plugin key)",
    .version = CALDERA_VERSION_INT(CALDERA_VERSION_MAJOR, CALDERA_VERSION_MINOR, CALDERA_VERSION_PATCH),
    .priv_size = sizeof(struct calib_opts), .options = calib_options, .ops = &calib_dummy_ops,
};

const struct caldera_plugin * caldera_calibration_descriptor(void) { return &calib_desc; }

// ---- sources ----------------------------------------------------------------------------------

struct calib_file {
    char *  path;
    char *  text;   // LF line ends
    size_t  len;
};

struct calib_source {
    char *              spec;      // as resolved (file or folder)
    struct calib_file * files;
    int64_t             n_files;
    size_t              bytes;
    int64_t             share, windows;
};

static void sources_free(struct calib_source * s, int64_t n) {
    for (int64_t i = 0; s && i < n; i++) {
        for (int64_t f = 0; f < s[i].n_files; f++) {
            caldera_free(s[i].files[f].path);
            caldera_free(s[i].files[f].text);
        }
        caldera_free(s[i].files);
        caldera_free(s[i].spec);
    }
    caldera_free(s);
}

static int cmp_str(const void * a, const void * b) { return strcmp(*(char * const *) a, *(char * const *) b); }

// The files of one source: the file itself, or every regular, non-hidden file of a folder in name order.
static int source_load(struct caldera_ctx * ctx, struct calib_source * s) {
    struct stat st;
    if (stat(s->spec, &st) != 0) {
        return caldera_ctx_error(ctx, CALDERA_ERR_NOT_FOUND, "calibration text %s: %s; allowed: a file or a folder of text files",
                                 s->spec, strerror(errno));
    }
    char ** names = NULL;
    int64_t n = 0, cap = 0;
    int rc = 0;
    if (S_ISDIR(st.st_mode)) {
        DIR * d = opendir(s->spec);
        if (!d) return caldera_ctx_error(ctx, CALDERA_ERR_IO, "calibration text %s: %s", s->spec, strerror(errno));
        for (struct dirent * e; (e = readdir(d));) {
            if (e->d_name[0] == '.') continue;
            char * p = caldera_asprintf("%s/%s", s->spec, e->d_name);
            struct stat fs;
            if (!p) { rc = CALDERA_ERR_NOMEM; break; }
            if (stat(p, &fs) != 0 || !S_ISREG(fs.st_mode)) { caldera_free(p); continue; }
            if (n == cap) {
                char ** nn = caldera_realloc(names, (size_t) (cap = cap ? 2 * cap : 16) * sizeof(*names));
                if (!nn) { caldera_free(p); rc = CALDERA_ERR_NOMEM; break; }
                names = nn;
            }
            names[n++] = p;
        }
        closedir(d);
        if (rc == 0 && n == 0) rc = caldera_ctx_error(ctx, CALDERA_ERR_NOT_FOUND, "calibration text %s: the folder holds no file", s->spec);
        if (rc == 0) qsort(names, (size_t) n, sizeof(*names), cmp_str);
    } else {
        if (!(names = caldera_realloc(NULL, sizeof(*names))) || !(names[0] = caldera_strdup(s->spec))) rc = CALDERA_ERR_NOMEM;
        else n = 1;
    }
    if (rc == 0 && !(s->files = caldera_calloc((size_t) n, sizeof(*s->files)))) rc = CALDERA_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++) {
        if (rc == 0) {
            s->files[i].path = names[i];
            s->n_files++;
            if ((rc = caldera_text_read(ctx, names[i], CALDERA_TEXT_LF, &s->files[i].text, &s->files[i].len)) == 0) {
                s->bytes += s->files[i].len;
            }
        } else {
            caldera_free(names[i]);
        }
    }
    caldera_free_unaligned(names);
    if (rc == 0 && s->bytes == 0) rc = caldera_ctx_error(ctx, CALDERA_ERR_FORMAT, "calibration text %s is empty", s->spec);
    return rc;
}

// Parse the text list, read every source and split the windows by share.
static int sources_open(struct caldera_pipeline * pl, const struct calib_opts * co, struct calib_source ** out, int64_t * n_out) {
    struct caldera_ctx * ctx = pl->ctx;
    const char * sec = caldera_inst_name(pl->calib);
    struct cfg_entry * te = caldera_config_find(pl->cfg, sec, "text");
    char err[300] = "out of memory";
    char * list = pl_expand_env(co->text ? co->text : "", err, sizeof(err));
    if (!list) return caldera_ctx_error(ctx, CALDERA_ERR_CONFIG, "[%s] text: %s", sec, err);
    struct calib_source * s = NULL;
    int64_t n = 0, cap = 0;
    int rc = 0;
    for (char * save = NULL, * tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ' || *tok == '\t') tok++;
        char * e = tok + strlen(tok);
        while (e > tok && (e[-1] == ' ' || e[-1] == '\t')) *--e = 0;
        if (!*tok) continue;
        if (n == cap) {
            struct calib_source * ns = caldera_realloc(s, (size_t) (cap = cap ? 2 * cap : 4) * sizeof(*s));
            if (!ns) { rc = CALDERA_ERR_NOMEM; break; }
            s = ns;
        }
        memset(&s[n], 0, sizeof(s[n]));
        if (!(s[n].spec = pl_resolve_path(tok, te ? te->file : NULL))) { rc = CALDERA_ERR_NOMEM; break; }
        n++;
        if ((rc = source_load(ctx, &s[n - 1])) < 0) break;
    }
    caldera_free(list);
    if (rc == 0 && n == 0) rc = caldera_ctx_error(ctx, CALDERA_ERR_CONFIG, "[%s] text lists no source; allowed: files or folders", sec);
    if (rc == 0 && co->shares.n && co->shares.n != n) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_CONFIG, "[%s] shares has %lld values for %lld text sources; allowed: one per source, "
                               "or none (equal shares)", sec, (long long) co->shares.n, (long long) n);
    }
    int64_t total = 0;
    for (int64_t i = 0; rc == 0 && i < n; i++) total += s[i].share = co->shares.n ? co->shares.v[i] : 1;
    if (rc == 0 && total <= 0) rc = caldera_ctx_error(ctx, CALDERA_ERR_CONFIG, "[%s] shares are all 0; allowed: at least one > 0", sec);
    if (rc == 0) {   // largest remainder
        int64_t given = 0;
        for (int64_t i = 0; i < n; i++) given += s[i].windows = co->sequences * s[i].share / total;
        while (given < co->sequences) {
            int64_t best = -1, br = -1;
            for (int64_t i = 0; i < n; i++) {
                int64_t r = co->sequences * s[i].share % total;
                if (r > br && s[i].windows * total <= co->sequences * s[i].share) { br = r; best = i; }
            }
            s[best].windows++;
            given++;
        }
    }
    if (rc < 0) {
        sources_free(s, n);
        return rc;
    }
    *out = s;
    *n_out = n;
    return 0;
}

// ---- cache key --------------------------------------------------------------------------------

static int hash_path_tree(struct caldera_ctx * ctx, struct calib_hash * h, const char * path) {
    struct stat st;
    if (!path || !*path || stat(path, &st) != 0) return 0;   // no file (e.g. a generated model): its options say it all
    if (S_ISREG(st.st_mode)) {
        calib_hash_str(h, "file");
        return calib_hash_file(ctx, h, path);
    }
    if (!S_ISDIR(st.st_mode)) return 0;
    // a folder model (HF style): every file in it, in name order
    DIR * d = opendir(path);
    if (!d) return caldera_ctx_error(ctx, CALDERA_ERR_IO, "calibration: %s: %s", path, strerror(errno));
    char ** names = NULL;
    int64_t n = 0, cap = 0;
    int rc = 0;
    for (struct dirent * e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            char ** nn = caldera_realloc(names, (size_t) (cap = cap ? 2 * cap : 16) * sizeof(*names));
            if (!nn) { rc = CALDERA_ERR_NOMEM; break; }
            names = nn;
        }
        if (!(names[n] = caldera_asprintf("%s/%s", path, e->d_name))) { rc = CALDERA_ERR_NOMEM; break; }
        n++;
    }
    closedir(d);
    if (rc == 0) qsort(names, (size_t) n, sizeof(*names), cmp_str);
    for (int64_t i = 0; i < n; i++) {
        struct stat fs;
        if (rc == 0 && stat(names[i], &fs) == 0 && S_ISREG(fs.st_mode)) {
            calib_hash_str(h, strrchr(names[i], '/') + 1);
            rc = calib_hash_file(ctx, h, names[i]);
        }
        caldera_free(names[i]);
    }
    caldera_free_unaligned(names);
    return rc;
}

int pl_model_hash(struct caldera_pipeline * pl, struct pl_run * run, struct calib_hash * hp) {
    struct caldera_ctx * ctx = pl->ctx;
    struct pipeline_opts * o = popts(pl);
    struct calib_hash h = *hp;
    calib_hash_str(&h, CALDERA_VERSION_STRING);
    const struct caldera_plugin * rp = caldera_inst_plugin(o->reader);
    calib_hash_str(&h, rp->name);
    char * owned = NULL;
    const char * mpath = pl_format_path(o->reader, &owned);
    // The reader's options, except the path whose contents are hashed below: the same model
    // reached through another folder (a copy, a link, another CALDERA_CACHE) is the same model.
    for (const struct caldera_option * op = rp->options; op && op->name; op++) {
        char * v = caldera_option_format(op, caldera_inst_priv(o->reader));
        if (!v) {
            caldera_free(owned);
            return CALDERA_ERR_NOMEM;
        }
        calib_hash_str(&h, op->name);
        calib_hash_str(&h, op->type == CALDERA_OPT_PATH && mpath && !strcmp(v, mpath) ? "(contents)" : v);
        caldera_free(v);
    }
    int rc = hash_path_tree(ctx, &h, mpath);
    caldera_free(owned);
    if (rc < 0) return rc;
    const struct caldera_plugin * mp = caldera_registry_find(ctx, o->model);
    calib_hash_str(&h, o->model);
    calib_hash_i64(&h, mp ? mp->version : 0);
    // The loaded model's tokenizer (which the file's contents may not include: llama2c reads
    // tok512.bin beside its checkpoint): every piece and the special ids.
    struct caldera_model_vocab voc;
    if (run && run->model && run->mops && run->mops->vocab && run->mops->token_piece &&
        run->mops->vocab(run->model, &voc) == 0) {
        calib_hash_i64(&h, voc.n_vocab);
        calib_hash_i64(&h, ((int64_t) voc.bos << 32) ^ (uint32_t) voc.eos);
        calib_hash_i64(&h, ((int64_t) voc.eot << 1) ^ voc.add_bos);
        for (int64_t t = 0; t < voc.n_vocab; t++) {
            const char * piece = NULL;
            size_t       len = 0;
            int          control = 0;
            if (run->mops->token_piece(run->model, (int32_t) t, &piece, &len, &control) < 0) piece = NULL, len = 0;
            calib_hash_i64(&h, (int64_t) len * 2 + (control != 0));
            if (piece) calib_hash_bytes(&h, piece, len);
        }
    }
    *hp = h;
    return 0;
}

// Key = model (pl_model_hash) + data (every source file's contents, the shares) + settings.
static int cache_key(struct caldera_pipeline * pl, struct pl_run * run, const struct calib_opts * co,
                     const struct calib_source * s, int64_t n, uint64_t * key) {
    struct calib_hash h;
    calib_hash_init(&h);
    calib_hash_str(&h, "caldera calibration");
    calib_hash_i64(&h, CALIB_CODE_VERSION);
    int rc = pl_model_hash(pl, run, &h);
    if (rc < 0) return rc;
    for (int64_t i = 0; i < n; i++) {
        calib_hash_i64(&h, s[i].share);
        calib_hash_i64(&h, s[i].n_files);
        for (int64_t f = 0; f < s[i].n_files; f++) {
            calib_hash_i64(&h, (int64_t) s[i].files[f].len);
            calib_hash_bytes(&h, s[i].files[f].text, s[i].files[f].len);
        }
    }
    calib_hash_i64(&h, co->sequences);
    calib_hash_i64(&h, co->length);
    calib_hash_i64(&h, co->seed);
    calib_hash_i64(&h, co->bos);
    *key = calib_hash_final(&h);
    return 0;
}

int pl_mkdir_p(struct caldera_ctx * ctx, const char * dir) {
    char * p = caldera_strdup(dir);
    if (!p) return CALDERA_ERR_NOMEM;
    int rc = 0;
    for (char * c = p + 1;; c++) {
        if (*c == '/' || *c == 0) {
            char save = *c;
            *c = 0;
            if (mkdir(p, 0755) != 0 && errno != EEXIST) {
                rc = caldera_ctx_error(ctx, CALDERA_ERR_IO, "calibration cache: cannot create %s: %s", p, strerror(errno));
                break;
            }
            *c = save;
            if (!save) break;
        }
    }
    caldera_free(p);
    return rc;
}

// ---- windows ----------------------------------------------------------------------------------

// Draw the windows of every source into tokens (sequences × length).
static int windows_sample(struct caldera_pipeline * pl, struct pl_run * run, const struct calib_opts * co,
                          const struct calib_source * s, int64_t n, int bos_id, int32_t * tokens) {
    struct caldera_ctx * ctx = pl->ctx;
    int64_t L = co->length, text_len = bos_id >= 0 ? L - 1 : L, w = 0;
    int rc = 0;
    for (int64_t i = 0; i < n; i++) {
        struct caldera_rng rng;
        char what[48];
        snprintf(what, sizeof(what), "calibration.%lld", (long long) i);
        caldera_rng_seed(&rng, caldera_seed_mix((uint64_t) co->seed, what));
        for (int64_t k = 0; k < s[i].windows; k++, w++) {
            int32_t * dst = tokens + w * L;
            int found = 0;
            for (int draw = 0; draw < CALIB_MAX_DRAWS && !found; draw++) {
                size_t u = (size_t) (caldera_rng_uniform(&rng) * (double) s[i].bytes), f = 0;
                while (u >= s[i].files[f].len) u -= s[i].files[f++].len;
                const struct calib_file * cf = &s[i].files[f];
                while (u > 0 && u < cf->len && cf->text[u - 1] != '\n') u++;   // the next line start
                if (u >= cf->len) continue;
                size_t chunk = (size_t) text_len * 16;
                for (;;) {
                    size_t len = cf->len - u < chunk ? cf->len - u : chunk;
                    int at_end = u + len == cf->len;
                    int32_t * ids = NULL;
                    int64_t nid = 0;
                    if ((rc = run->mops->tokenize(run->model, cf->text + u, len, 0, 0, &ids, &nid)) < 0) return rc;
                    // a window ends well inside the chunk, so a word cut at its end cannot change it
                    int enough = at_end ? nid >= text_len : nid >= text_len + 8;
                    if (enough) {
                        if (bos_id >= 0) dst[0] = bos_id;
                        memcpy(dst + (bos_id >= 0), ids, (size_t) text_len * sizeof(int32_t));
                        found = 1;
                    }
                    caldera_free(ids);
                    if (enough || at_end) break;
                    chunk *= 2;
                }
            }
            if (!found) {
                return caldera_ctx_error(ctx, CALDERA_ERR_FORMAT, "calibration text %s: no window of %lld tokens found in %d draws; "
                                         "allowed: files with more than %lld tokens after a line start, or a smaller length",
                                         s[i].spec, (long long) text_len, CALIB_MAX_DRAWS, (long long) text_len);
            }
        }
    }
    return 0;
}

// ---- forward and accumulation -----------------------------------------------------------------

struct observe_state {
    struct caldera_ctx * ctx;
    struct calib_acc *   accs;      // one per group (initialised on first sight)
    int64_t              n_groups;
    float *              scratch;   // (n, n) f32 for the widest group seen
    int64_t              scratch_n;
    const char *         only;      // NULL, or observe only the groups marked 1 here (sequential)
    struct caldera_inst * model;    // for the names in a NaN/Inf message
    const struct caldera_model_ops * mops;
    int64_t              window0;   // calibration window of the batch's first sequence
    int64_t              length;    // tokens per window (rows of x: window-major)
};

// CALDERA_ERR_NUMERIC naming the group, its first linear and the NaN/Inf's calibration window,
// position and input column, or 0 when x (tokens × n) is finite: a NaN/Inf is caught where it
// enters a Hessian, not after it has spread through Σ x xᵀ.
static int observe_check_finite(struct observe_state * st, int64_t group, int64_t linear, const struct caldera_tensor * x) {
    int64_t bad = 0;
    if (caldera_tensor_check_finite(x, &bad) == 0) return 0;
    struct caldera_model_linear li = { .name = "?", .group_key = "?" };
    if (st->mops && st->mops->linear_info(st->model, linear, &li) < 0) li = (struct caldera_model_linear) { .name = "?", .group_key = "?" };
    int64_t row = bad / x->ne[1], col = bad % x->ne[1], len = st->length > 0 ? st->length : x->ne[0];
    double  v = x->dtype == CALDERA_DTYPE_F32 ? (double) ((const float *) x->data)[row * (x->ld > 0 ? x->ld : x->ne[1]) + col] : NAN;
    return caldera_ctx_error(st->ctx, CALDERA_ERR_NUMERIC, "calibration: the input of %s (group %lld, read by %s) has %s at "
                             "window %lld, position %lld (row %lld of the batch), column %lld: the forward pass overflowed "
                             "there; its Hessian would not be finite", li.group_key, (long long) group, li.name,
                             isnan(v) ? "a NaN" : "an Inf", (long long) (st->window0 + row / len), (long long) (row % len),
                             (long long) row, (long long) col);
}

static int observe(void * user, int64_t group, int64_t linear, const struct caldera_tensor * x) {
    struct observe_state * st = user;
    if (group < 0 || group >= st->n_groups) {
        return caldera_ctx_error(st->ctx, CALDERA_ERR_BUG, "calibration: the model observed group %lld of %lld", (long long) group,
                                 (long long) st->n_groups);
    }
    if (st->only && !st->only[group]) return 0;
    struct calib_acc * a = &st->accs[group];
    int rc;
    if ((rc = observe_check_finite(st, group, linear, x)) < 0) return rc;
    if (!a->h && (rc = calib_acc_init(st->ctx, x->ne[1], a)) < 0) return rc;
    if (caldera_ctx_cancelled(st->ctx)) return caldera_ctx_error(st->ctx, CALDERA_ERR_CANCELLED, "calibration cancelled");
    if (a->n > st->scratch_n) {
        caldera_free(st->scratch);
        st->scratch_n = 0;
        if (!(st->scratch = caldera_malloc((size_t) (a->n * a->n) * sizeof(float)))) return CALDERA_ERR_NOMEM;
        st->scratch_n = a->n;
    }
    return calib_acc_add(st->ctx, a, x, st->scratch);
}

// Run the forward passes and write every group's H into a safetensors file at path (atomically).
static int collect(struct caldera_pipeline * pl, struct pl_run * run, const struct calib_opts * co, const int32_t * tokens,
                   const char * path, struct caldera_meta * meta) {
    struct caldera_ctx * ctx = pl->ctx;
    struct observe_state st = { .ctx = ctx, .model = run->model, .mops = run->mops, .length = co->length };
    struct caldera_inst * w = NULL;
    float * hbuf = NULL;
    int rc = 0, open = 0;
    st.n_groups = run->mops->n_groups(run->model);
    if (!(st.accs = caldera_calloc((size_t) (st.n_groups > 0 ? st.n_groups : 1), sizeof(*st.accs)))) return CALDERA_ERR_NOMEM;
    double t0 = pl_now();
    for (int64_t b0 = 0; b0 < co->sequences; b0 += co->batch) {
        int64_t nb = co->sequences - b0 < co->batch ? co->sequences - b0 : co->batch;
        struct caldera_model_forward_args fa = { .struct_size = sizeof(fa), .tokens = tokens + b0 * co->length, .n_seq = nb,
                                                 .n_tok = co->length, .observe = observe, .observe_user = &st };
        st.window0 = b0;
        if ((rc = run->mops->forward(run->model, &fa)) < 0) goto done;
        double el = pl_now() - t0;
        caldera_log(ctx, CALDERA_LOG_INFO, "calibration: %lld/%lld windows (%.0f tokens/s, ETA %.0f s)", (long long) (b0 + nb),
                    (long long) co->sequences, (double) ((b0 + nb) * co->length) / el,
                    el / (double) (b0 + nb) * (double) (co->sequences - b0 - nb));
    }
    if ((rc = caldera_inst_create(ctx, "safetensors", "calibration-cache", &w)) < 0) goto done;
    if ((rc = caldera_inst_start(w)) < 0) goto done;
    const struct caldera_format_ops * wo = caldera_inst_plugin(w)->ops;
    if ((rc = wo->create(w, path, meta)) < 0) goto done;
    open = 1;
    for (int64_t g = 0; g < st.n_groups; g++) {
        struct calib_acc * a = &st.accs[g];
        struct caldera_model_linear li = { 0 };
        int has = 0;
        for (int64_t i = 0; i < run->mops->n_linears(run->model) && !has; i++) {
            if ((rc = run->mops->linear_info(run->model, i, &li)) < 0) goto done;
            has = li.group == g;
        }
        if (!has) continue;   // a group without linears (none to compress there)
        if (!a->h) {
            rc = caldera_ctx_error(ctx, CALDERA_ERR_BUG, "calibration: the forward pass never observed group %s", li.group_key);
            goto done;
        }
        caldera_free(hbuf);
        if (!(hbuf = caldera_malloc((size_t) (a->n * a->n) * sizeof(float)))) { rc = CALDERA_ERR_NOMEM; goto done; }
        if ((rc = calib_acc_mean(a, hbuf)) < 0) goto done;
        struct caldera_tensor ht = caldera_tensor_view_f32(hbuf, a->n, a->n);   // (n, n) f32, H = Σ x xᵀ / tokens
        int64_t bad = 0;
        if (caldera_tensor_check_finite(&ht, &bad) < 0) {   // finite inputs whose Σ x xᵀ / tokens overflowed f32
            rc = caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "calibration: the Hessian of %s (group %lld, read by %s) has a NaN or "
                                   "Inf at row %lld, column %lld (x xᵀ of finite inputs overflowed f32)", li.group_key,
                                   (long long) g, li.name, (long long) (bad / a->n), (long long) (bad % a->n));
            goto done;
        }
        char * name = caldera_asprintf("%s.hessian", li.group_key);
        if (!name) { rc = CALDERA_ERR_NOMEM; goto done; }
        rc = wo->write_tensor(w, name, &ht);
        caldera_free(name);
        if (rc < 0) goto done;
        calib_acc_free(a);   // keep the peak low: one f64 accumulator freed per group written
    }
    open = 0;
    rc = wo->finish(w, 1);
done:
    if (open) ((const struct caldera_format_ops *) caldera_inst_plugin(w)->ops)->finish(w, 0);
    caldera_inst_free(w);
    for (int64_t g = 0; g < st.n_groups; g++) calib_acc_free(&st.accs[g]);
    caldera_free(st.accs);
    caldera_free(st.scratch);
    caldera_free(hbuf);
    return rc;
}

static int open_cache(struct caldera_pipeline * pl, struct pl_run * run, const char * path) {
    int rc = caldera_inst_create(pl->ctx, "safetensors", "calibration-cache", &run->hcache);
    if (rc == 0) rc = caldera_inst_start(run->hcache);
    if (rc == 0) rc = ((const struct caldera_format_ops *) caldera_inst_plugin(run->hcache)->ops)->open(run->hcache, path);
    if (rc < 0) {
        caldera_inst_free(run->hcache);
        run->hcache = NULL;
        return rc;
    }
    run->hsrc = run->hcache;
    return 0;
}

// ---- sequential calibration ------------------------------------------------------------------

struct calib_seq {
    int32_t * tokens;     // sequences × length
    int64_t   sequences, length, batch;
    int64_t   n_groups;
    int64_t * group_layer;   // layer of each group (-1: after the blocks, e.g. lm_head)
    float **  h;             // per group: (n, n) f32 mean once computed, else NULL
    int64_t * n;
    char *    only;          // scratch: groups of the layer being collected
};

void pl_seq_free(struct pl_run * run) {
    struct calib_seq * q = run->seq;
    if (!q) return;
    for (int64_t g = 0; q->h && g < q->n_groups; g++) caldera_free(q->h[g]);
    caldera_free(q->h);
    caldera_free(q->n);
    caldera_free(q->group_layer);
    caldera_free(q->only);
    caldera_free(q->tokens);
    caldera_free(q);
    run->seq = NULL;
}

// Forward the windows through the blocks up to @p layer (the model as compressed so far) and keep
// the Hessians of that layer's groups.
static int seq_collect_layer(struct caldera_pipeline * pl, struct pl_run * run, int64_t layer) {
    struct caldera_ctx * ctx = pl->ctx;
    struct calib_seq * q = run->seq;
    struct observe_state st = { .ctx = ctx, .n_groups = q->n_groups, .only = q->only, .model = run->model, .mops = run->mops,
                                .length = q->length };
    int rc = 0;
    double t0 = pl_now();
    if (!(st.accs = caldera_calloc((size_t) q->n_groups, sizeof(*st.accs)))) return CALDERA_ERR_NOMEM;
    for (int64_t g = 0; g < q->n_groups; g++) q->only[g] = q->group_layer[g] == layer;
    struct caldera_model_desc d;
    if ((rc = run->mops->desc(run->model, &d)) < 0) goto done;
    for (int64_t b0 = 0; b0 < q->sequences; b0 += q->batch) {
        int64_t nb = q->sequences - b0 < q->batch ? q->sequences - b0 : q->batch;
        struct caldera_model_forward_args fa = { .struct_size = sizeof(fa), .tokens = q->tokens + b0 * q->length, .n_seq = nb,
                                                 .n_tok = q->length, .observe = observe, .observe_user = &st,
                                                 .n_layers = layer >= 0 && layer + 1 < d.n_layers ? layer + 1 : 0 };
        st.window0 = b0;
        if ((rc = run->mops->forward(run->model, &fa)) < 0) goto done;
    }
    for (int64_t g = 0; g < q->n_groups; g++) {
        if (!q->only[g] || !st.accs[g].h) continue;
        int64_t n = st.accs[g].n;
        if (!(q->h[g] = caldera_malloc((size_t) (n * n) * sizeof(float)))) { rc = CALDERA_ERR_NOMEM; goto done; }
        q->n[g] = n;
        if ((rc = calib_acc_mean(&st.accs[g], q->h[g])) < 0) goto done;
    }
    caldera_log(ctx, CALDERA_LOG_INFO, "calibration: layer %lld's Hessians after the layers before it were compressed (%.1f s)",
                (long long) layer, pl_now() - t0);
done:
    run->t_calibrate += pl_now() - t0;
    for (int64_t g = 0; g < q->n_groups; g++) calib_acc_free(&st.accs[g]);
    caldera_free(st.accs);
    caldera_free(st.scratch);
    return rc;
}

int pl_seq_hessian(struct caldera_pipeline * pl, struct pl_run * run, const char * name, int64_t cols, struct caldera_tensor * h) {
    struct calib_seq * q = run->seq;
    int64_t i = run->mops->linear_find(run->model, name);
    struct caldera_model_linear li;
    int rc;
    if (i < 0 || run->mops->linear_info(run->model, i, &li) < 0) return CALDERA_ERR_NOT_FOUND;
    if (!q->h[li.group] && (rc = seq_collect_layer(pl, run, li.layer)) < 0) return rc;
    if (!q->h[li.group] || q->n[li.group] != cols) {
        return caldera_ctx_error(pl->ctx, CALDERA_ERR_BUG, "calibration: no %lld x %lld Hessian for %s after its layer's forward pass",
                                 (long long) cols, (long long) cols, name);
    }
    *h = caldera_tensor_view_f32(q->h[li.group], cols, cols);   // (cols, cols) f32, owned by run->seq
    return 0;
}

int pl_phase_calibrate(struct caldera_pipeline * pl, struct pl_run * run) {
    struct caldera_ctx * ctx = pl->ctx;
    const struct calib_opts * co = caldera_inst_priv(pl->calib);
    const char * sec = caldera_inst_name(pl->calib);
    struct calib_source * src = NULL;
    int64_t n_src = 0;
    int32_t * tokens = NULL;
    char * dir = NULL, * path = NULL;
    struct caldera_meta * meta = NULL;
    double t0 = pl_now();
    uint64_t key = 0;
    int rc, hit = 0;
    if ((rc = pl_model_load(pl, run)) < 0) goto done;
    if ((rc = sources_open(pl, co, &src, &n_src)) < 0) goto done;
    if ((rc = cache_key(pl, run, co, src, n_src, &key)) < 0) goto done;
    if (co->sequential) {   // windows now, Hessians layer by layer during the compress phase (not cached)
        struct caldera_model_vocab voc = { 0 };
        if ((rc = run->mops->vocab(run->model, &voc)) < 0) goto done;
        int bos_id = co->bos == CALIB_BOS_ON || (co->bos == CALIB_BOS_MODEL && voc.add_bos) ? voc.bos : -1;
        if (co->bos == CALIB_BOS_ON && voc.bos < 0) {
            rc = caldera_ctx_error(ctx, CALDERA_ERR_CONFIG, "[%s] bos = on, but the model's tokenizer has no BOS token; allowed: "
                                   "bos = off or model", sec);
            goto done;
        }
        struct calib_seq * q = caldera_calloc(1, sizeof(*q));
        if (!(run->seq = q)) { rc = CALDERA_ERR_NOMEM; goto done; }
        q->sequences = co->sequences;
        q->length = co->length;
        q->batch = co->batch;
        q->n_groups = run->mops->n_groups(run->model);
        q->tokens = caldera_malloc((size_t) (co->sequences * co->length) * sizeof(int32_t));
        q->group_layer = caldera_malloc((size_t) (q->n_groups + 1) * sizeof(int64_t));
        q->h = caldera_calloc((size_t) (q->n_groups + 1), sizeof(float *));
        q->n = caldera_calloc((size_t) (q->n_groups + 1), sizeof(int64_t));
        q->only = caldera_calloc((size_t) (q->n_groups + 1), 1);
        if (!q->tokens || !q->group_layer || !q->h || !q->n || !q->only) { rc = CALDERA_ERR_NOMEM; goto done; }
        for (int64_t i = 0; i < run->mops->n_linears(run->model); i++) {
            struct caldera_model_linear li;
            if ((rc = run->mops->linear_info(run->model, i, &li)) < 0) goto done;
            q->group_layer[li.group] = li.layer;
        }
        if ((rc = windows_sample(pl, run, co, src, n_src, bos_id, q->tokens)) < 0) goto done;
        json_t * sj = json_array();
        for (int64_t i = 0; sj && i < n_src; i++) {
            json_array_append_new(sj, json_pack("{s:s, s:I}", "text", src[i].spec, "windows", (json_int_t) src[i].windows));
        }
        run->calib_json = json_pack("{s:o, s:I, s:I, s:I, s:s, s:b}", "sources", sj ? sj : json_null(), "sequences",
                                    (json_int_t) co->sequences, "length", (json_int_t) co->length, "seed", (json_int_t) co->seed,
                                    "bos", co->bos == CALIB_BOS_ON ? "on" : co->bos == CALIB_BOS_OFF ? "off" : "model",
                                    "sequential", 1);
        if (!run->calib_json) rc = CALDERA_ERR_NOMEM;
        goto done;
    }
    {
        char err[300] = "out of memory";
        char * cdir = pl_expand_env(co->cache ? co->cache : "", err, sizeof(err));
        if (!cdir) { rc = caldera_ctx_error(ctx, CALDERA_ERR_CONFIG, "[%s] cache: %s", sec, err); goto done; }
        struct cfg_entry * ce = caldera_config_find(pl->cfg, sec, "cache");
        dir = *cdir ? pl_resolve_path(cdir, ce ? ce->file : NULL) : NULL;
        int none = !*cdir;
        caldera_free(cdir);
        if (!none && !dir) { rc = CALDERA_ERR_NOMEM; goto done; }
    }
    if (dir) {
        if ((rc = pl_mkdir_p(ctx, dir)) < 0) goto done;
        path = caldera_asprintf("%s/%016" PRIx64 ".safetensors", dir, key);
    } else {   // no cache folder: a file of this run only
        const char * tmpdir = getenv("TMPDIR");
        path = caldera_asprintf("%s/caldera-hessians-%016" PRIx64 ".%ld.safetensors", tmpdir && *tmpdir ? tmpdir : "/tmp", key,
                                (long) getpid());
        if (path && !(run->hcache_tmp = caldera_strdup(path))) { rc = CALDERA_ERR_NOMEM; goto done; }
    }
    if (!path) { rc = CALDERA_ERR_NOMEM; goto done; }
    if (dir && access(path, R_OK) == 0) {
        if ((rc = open_cache(pl, run, path)) == 0) {
            hit = 1;
            caldera_log(ctx, CALDERA_LOG_INFO, "calibration: Hessians from the cache %s", path);
        } else {
            caldera_log(ctx, CALDERA_LOG_WARN, "calibration: the cache file %s cannot be read (%s); computing it again", path,
                        caldera_ctx_errmsg(ctx));
        }
    }
    if (!hit) {
        struct caldera_model_vocab voc = { 0 };
        if ((rc = run->mops->vocab(run->model, &voc)) < 0) goto done;
        int bos_id = -1;
        if (co->bos == CALIB_BOS_ON || (co->bos == CALIB_BOS_MODEL && voc.add_bos)) {
            if (voc.bos < 0) {
                rc = caldera_ctx_error(ctx, CALDERA_ERR_CONFIG, "[%s] bos = on, but the model's tokenizer has no BOS token; allowed: "
                                       "bos = off or model", sec);
                goto done;
            }
            bos_id = voc.bos;
        }
        if (!(tokens = caldera_malloc((size_t) (co->sequences * co->length) * sizeof(int32_t)))) { rc = CALDERA_ERR_NOMEM; goto done; }
        if ((rc = windows_sample(pl, run, co, src, n_src, bos_id, tokens)) < 0) goto done;
        char keyhex[17];
        snprintf(keyhex, sizeof(keyhex), "%016" PRIx64, key);
        json_t * sj = json_array();
        for (int64_t i = 0; sj && i < n_src; i++) {
            json_array_append_new(sj, json_pack("{s:s, s:I, s:I}", "text", src[i].spec, "share", (json_int_t) src[i].share,
                                                "windows", (json_int_t) src[i].windows));
        }
        json_t * info = json_pack("{s:s, s:o, s:I, s:I, s:I, s:b, s:I}", "key", keyhex, "sources", sj ? sj : json_null(),
                                  "sequences", (json_int_t) co->sequences, "length", (json_int_t) co->length, "seed",
                                  (json_int_t) co->seed, "bos", bos_id >= 0, "tokens", (json_int_t) (co->sequences * co->length));
        char * js = info ? json_dumps(info, JSON_COMPACT) : NULL;
        if (info) json_decref(info);
        rc = caldera_meta_init(&meta);
        if (rc == 0) rc = js ? caldera_meta_set_string(meta, "caldera.calibration", js) : CALDERA_ERR_NOMEM;
        free(js);
        if (rc < 0) goto done;
        if ((rc = collect(pl, run, co, tokens, path, meta)) < 0) goto done;
        if ((rc = open_cache(pl, run, path)) < 0) goto done;
        if (dir) caldera_log(ctx, CALDERA_LOG_INFO, "calibration: Hessians cached in %s", path);
    }
    {
        json_t * sj = json_array();
        for (int64_t i = 0; sj && i < n_src; i++) {
            json_array_append_new(sj, json_pack("{s:s, s:I}", "text", src[i].spec, "windows", (json_int_t) src[i].windows));
        }
        run->calib_json = json_pack("{s:o, s:I, s:I, s:I, s:s, s:s*, s:b}", "sources", sj ? sj : json_null(), "sequences",
                                    (json_int_t) co->sequences, "length", (json_int_t) co->length, "seed", (json_int_t) co->seed,
                                    "bos", co->bos == CALIB_BOS_ON ? "on" : co->bos == CALIB_BOS_OFF ? "off" : "model", "cache",
                                    dir ? path : NULL, "cache_hit", hit);
        if (!run->calib_json) { rc = CALDERA_ERR_NOMEM; goto done; }
    }
done:
    run->t_calibrate = pl_now() - t0;
    sources_free(src, n_src);
    caldera_free(tokens);
    caldera_free(dir);
    caldera_free(path);
    caldera_meta_free(meta);
    return rc;
}

int pl_hessian_name(struct caldera_pipeline * pl, struct pl_run * run, const char * name, char * out, size_t n) {
    if (pl->calib && run->model) {
        int64_t i = run->mops->linear_find(run->model, name);
        struct caldera_model_linear li;
        if (i < 0 || run->mops->linear_info(run->model, i, &li) < 0) {
            snprintf(out, n, "(no linear layer %s in the model)", name);
            return CALDERA_ERR_NOT_FOUND;
        }
        snprintf(out, n, "%s.hessian", li.group_key);
        return 0;
    }
    size_t l = strlen(name);   // "<x>.weight" -> "<x>.hessian"
    if (l > 7 && strcmp(name + l - 7, ".weight") == 0) snprintf(out, n, "%.*s.hessian", (int) (l - 7), name);
    else snprintf(out, n, "%s.hessian", name);
    return 0;
}
