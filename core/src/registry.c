// SPDX-License-Identifier: MIT
// Plugin registry and loader. A shared object is loaded with RTLD_NOW from an explicit path
// only, its one entry symbol is called, and the descriptor goes through a fixed sequence of
// checks, each with its own status and message (ggml's load_backend, SQLite's loadext).
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "builtins.h"
#include "internal.h"

#ifndef CALDERA_PLUGIN_INSTALL_DIR
#define CALDERA_PLUGIN_INSTALL_DIR "/usr/local/lib/caldera/plugins"
#endif

// Minimum ops struct sizes of ABI 1, per kind: the members of the first version. Members appended
// later are optional and checked with CALDERA_OPS_HAS before use.
static size_t ops_min_size(enum caldera_plugin_kind kind) {
    switch (kind) {
    case CALDERA_PLUGIN_KIND_FORMAT:     return offsetof(struct caldera_format_ops, update_meta);
    case CALDERA_PLUGIN_KIND_TRANSFORM:  return sizeof(struct caldera_transform_ops);
    case CALDERA_PLUGIN_KIND_QUANTIZER:  return offsetof(struct caldera_quantizer_ops, cb_begin_h);
    case CALDERA_PLUGIN_KIND_DECOMPOSER: return sizeof(struct caldera_decomposer_ops);
    case CALDERA_PLUGIN_KIND_MODEL:      return sizeof(struct caldera_model_ops);
    default:                             return 0;
    }
}

static int ops_complete(const struct caldera_plugin * p, const char ** missing) {
    switch (p->kind) {
    case CALDERA_PLUGIN_KIND_FORMAT: {
        const struct caldera_format_ops * o = p->ops;
        int reader = o->open && o->n_tensors && o->tensor_info && o->read_tensor;
        int writer = o->create && o->write_tensor && o->finish;
        *missing = "open/n_tensors/tensor_info/read_tensor or create/write_tensor/finish";
        return reader || writer;
    }
    case CALDERA_PLUGIN_KIND_TRANSFORM: {
        const struct caldera_transform_ops * o = p->ops;
        *missing = "forward and inverse";
        return o->forward && o->inverse;
    }
    case CALDERA_PLUGIN_KIND_QUANTIZER: {
        const struct caldera_quantizer_ops * o = p->ops;
        *missing = "quantize and dequantize";
        if (!o->quantize || !o->dequantize) return 0;
        // The codebook level (ldlq wraps it) is all five ops or none: name the first one missing.
        const char * names[] = { "cb_dim", "cb_begin", "cb_round", "cb_end", "cb_free" };
        const int set[] = { o->cb_dim != NULL, o->cb_begin != NULL, o->cb_round != NULL, o->cb_end != NULL, o->cb_free != NULL };
        int n_set = set[0] + set[1] + set[2] + set[3] + set[4];
        for (int i = 0; n_set > 0 && n_set < 5 && i < 5; i++) {
            if (!set[i]) {
                *missing = names[i];
                return -1;
            }
        }
        return 1;
    }
    case CALDERA_PLUGIN_KIND_DECOMPOSER: {
        const struct caldera_decomposer_ops * o = p->ops;
        *missing = "decompose and reconstruct";
        return o->decompose && o->reconstruct;
    }
    case CALDERA_PLUGIN_KIND_MODEL: {
        const struct caldera_model_ops * o = p->ops;
        *missing = "load, release, desc, n_linears, n_groups, linear_info and forward";
        return o->load && o->release && o->desc && o->n_linears && o->n_groups && o->linear_info && o->forward;
    }
    default:
        return 1;
    }
}

int caldera_plugin_validate(struct caldera_ctx * ctx, const struct caldera_plugin * p, const char * origin) {
    if (!origin) origin = "built-in";
    if (!p) return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: descriptor is NULL", origin);
    if (p->abi_version != CALDERA_PLUGIN_ABI_VERSION) {
        return caldera_ctx_error(ctx, CALDERA_ERR_ABI, "%s: plugin built for ABI version %u; this caldera has ABI version %u",
                                 origin, p->abi_version, CALDERA_PLUGIN_ABI_VERSION);
    }
    if (p->struct_size < sizeof(struct caldera_plugin)) {
        return caldera_ctx_error(ctx, CALDERA_ERR_ABI, "%s: descriptor too small (%u bytes; ABI %u needs at least %zu)",
                                 origin, p->struct_size, CALDERA_PLUGIN_ABI_VERSION, sizeof(struct caldera_plugin));
    }
    if (!caldera_name_valid(p->name)) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: invalid plugin name '%s'; allowed: [a-z][a-z0-9_]*, at most 31 characters",
                                 origin, p->name ? p->name : "(null)");
    }
    if ((unsigned) p->kind >= CALDERA_PLUGIN_KIND_COUNT) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: plugin '%s' has invalid kind %d; allowed: 0..%d", origin, p->name,
                                 (int) p->kind, CALDERA_PLUGIN_KIND_COUNT - 1);
    }
    if (!p->ops) return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: plugin '%s' has no ops", origin, p->name);
    uint32_t ops_size = *(const uint32_t *) p->ops;
    if (ops_size < ops_min_size(p->kind)) {
        return caldera_ctx_error(ctx, CALDERA_ERR_ABI, "%s: plugin '%s': %s ops too small (%u bytes; ABI %u needs at least %zu)",
                                 origin, p->name, caldera_plugin_kind_name(p->kind), ops_size, CALDERA_PLUGIN_ABI_VERSION,
                                 ops_min_size(p->kind));
    }
    const char * missing = "";
    int complete = ops_complete(p, &missing);
    if (complete == 0) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: plugin '%s': a %s plugin must provide %s", origin, p->name,
                                 caldera_plugin_kind_name(p->kind), missing);
    }
    if (complete < 0) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: plugin '%s': the codebook ops cb_dim, cb_begin, cb_round, cb_end "
                                 "and cb_free are all five or none; %s is missing", origin, p->name, missing);
    }
    char err[256];
    int vrc = p->options ? caldera_options_validate(p->options, err, sizeof(err)) : 0;
    if (vrc == CALDERA_ERR_NOMEM) return caldera_ctx_error(ctx, vrc, "%s: out of memory checking plugin '%s'", origin, p->name);
    if (vrc < 0) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: plugin '%s' has a bad option table: %s", origin, p->name, err);
    }
    for (int64_t i = 0; p->options && p->options[i].name; i++) {
        const struct caldera_option * o = &p->options[i];
        size_t sz = 0;
        switch (o->type) {
        case CALDERA_OPT_BOOL: case CALDERA_OPT_ENUM: sz = sizeof(int); break;
        case CALDERA_OPT_INT: sz = sizeof(int64_t); break;
        case CALDERA_OPT_DOUBLE: sz = sizeof(double); break;
        case CALDERA_OPT_INT_LIST: sz = sizeof(struct caldera_int_list); break;
        default: sz = sizeof(void *); break;
        }
        if (o->offset + sz > p->priv_size) {
            return caldera_ctx_error(ctx, CALDERA_ERR_INVAL,
                                     "%s: plugin '%s' has a bad option table: option '%s' at offset %zu lies outside priv_size %zu",
                                     origin, p->name, o->name, o->offset, p->priv_size);
        }
    }
    return 0;
}

static int registry_append(struct caldera_ctx * ctx, const struct caldera_plugin * p, const char * origin, void * handle,
                           enum caldera_plugin_rank rank) {
    if (ctx->n_plugins == ctx->cap_plugins) {
        int64_t cap = ctx->cap_plugins ? ctx->cap_plugins * 2 : 32;
        struct caldera_registry_entry * e = caldera_realloc(ctx->plugins, (size_t) cap * sizeof(*e));
        if (!e) return caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "out of memory registering plugin '%s'", p->name);
        ctx->plugins = e;
        ctx->cap_plugins = cap;
    }
    char * o = caldera_strdup(origin);
    if (!o) return caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "out of memory registering plugin '%s'", p->name);
    ctx->plugins[ctx->n_plugins++] = (struct caldera_registry_entry) { p, o, handle, rank };
    return 0;
}

// Put p in the place of entry i (a plugin of the same name from a place of lower precedence). The
// old shared object stays mapped until the context is freed: instances may still point into it.
static int registry_replace(struct caldera_ctx * ctx, int64_t i, const struct caldera_plugin * p, const char * origin,
                            void * handle, enum caldera_plugin_rank rank) {
    struct caldera_registry_entry * e = &ctx->plugins[i];
    char * o = caldera_strdup(origin);
    void ** r = e->handle ? caldera_realloc(ctx->retired, (size_t) (ctx->n_retired + 1) * sizeof(void *)) : NULL;
    if (r) ctx->retired = r;
    if (!o || (e->handle && !r)) {
        caldera_free(o);
        return caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "out of memory registering plugin '%s'", p->name);
    }
    caldera_log(ctx, CALDERA_LOG_INFO, "plugin '%s' from %s overrides the one from %s", p->name, origin, e->origin);
    if (e->handle) ctx->retired[ctx->n_retired++] = e->handle;
    caldera_free(e->origin);
    *e = (struct caldera_registry_entry) { p, o, handle, rank };
    return 0;
}

// Checks a new descriptor against the registry. Returns 0 with *slot = -1 (append), 0 with
// *slot = i (replace entry i, which has lower precedence), 1 (skip: a plugin of that name from a
// place of higher precedence is registered; notice logged) or a negative status.
static int registry_check_new(struct caldera_ctx * ctx, const struct caldera_plugin * p, const char * origin,
                              enum caldera_plugin_rank rank, int64_t * slot) {
    *slot = -1;
    int rc = caldera_plugin_validate(ctx, p, origin);
    if (rc < 0) return rc;
    for (int64_t i = 0; i < ctx->n_plugins; i++) {
        if (strcmp(ctx->plugins[i].plugin->name, p->name) != 0) continue;
        if (ctx->plugins[i].rank == rank) {
            return caldera_ctx_error(ctx, CALDERA_ERR_PLUGIN_DUP, "%s: a plugin named '%s' is already registered (from %s)",
                                     origin, p->name, ctx->plugins[i].origin);
        }
        if (ctx->plugins[i].rank > rank) {
            caldera_log(ctx, CALDERA_LOG_INFO, "plugin '%s' from %s overrides the one from %s", p->name,
                        ctx->plugins[i].origin, origin);
            return 1;
        }
        *slot = i;
    }
    if (p->probe && p->probe(ctx) <= 0) {
        return caldera_ctx_error(ctx, CALDERA_ERR_UNSUPPORTED, "%s: plugin '%s' reports that it cannot run on this machine (probe)",
                                 origin, p->name);
    }
    return 0;
}

static int registry_add_rank(struct caldera_ctx * ctx, const struct caldera_plugin * p, const char * origin,
                             enum caldera_plugin_rank rank) {
    if (!origin) origin = "built-in";
    int64_t slot;
    int rc = registry_check_new(ctx, p, origin, rank, &slot);
    if (rc != 0) return rc < 0 ? rc : 0;
    return slot >= 0 ? registry_replace(ctx, slot, p, origin, NULL, rank) : registry_append(ctx, p, origin, NULL, rank);
}

int caldera_registry_add(struct caldera_ctx * ctx, const struct caldera_plugin * p, const char * origin) {
    return registry_add_rank(ctx, p, origin, CALDERA_RANK_EXPLICIT);
}

int caldera_registry_add_builtins(struct caldera_ctx * ctx) {
    ctx->defaults_pending = caldera_builtin_autoload;
    for (const caldera_builtin_fn * f = caldera_builtin_list; *f; f++) {
        const struct caldera_plugin * p = (*f)();
        int rc = registry_add_rank(ctx, p, "built-in", CALDERA_RANK_BUILTIN);
        // A built-in whose probe says no (e.g. CUDA without a GPU) is skipped, not fatal.
        if (rc == CALDERA_ERR_UNSUPPORTED) {
            caldera_log(ctx, CALDERA_LOG_DEBUG, "%s", ctx->errmsg);
            continue;
        }
        if (rc < 0) return rc;
    }
    return 0;
}

static int registry_load_rank(struct caldera_ctx * ctx, const char * path, enum caldera_plugin_rank rank) {
    if (!path || !*path) return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "plugin path is empty");
    struct stat st;
    if (stat(path, &st) != 0) {
        return caldera_ctx_error(ctx, CALDERA_ERR_NOT_FOUND, "%s: plugin file not found (%s)", path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) return caldera_ctx_error(ctx, CALDERA_ERR_PLUGIN_LOAD, "%s: not a regular file", path);
    // A path with a '/' keeps dlopen from searching LD_LIBRARY_PATH or the current directory.
    char * full = strchr(path, '/') ? caldera_strdup(path) : caldera_asprintf("./%s", path);
    if (!full) return CALDERA_ERR_NOMEM;
    dlerror();
    void * h = dlopen(full, RTLD_NOW | RTLD_LOCAL);
    caldera_free(full);
    if (!h) {
        const char * e = dlerror();
        return caldera_ctx_error(ctx, CALDERA_ERR_PLUGIN_LOAD, "%s: cannot load as a shared object: %s", path, e ? e : "?");
    }
    int rc;
    int64_t slot;
    caldera_plugin_entry_fn entry;
    *(void **) &entry = dlsym(h, CALDERA_PLUGIN_ENTRY_SYMBOL);
    if (!entry) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_PLUGIN_LOAD, "%s: no entry point '%s' (build the plugin with CALDERA_PLUGIN_DEFINE "
                               "and -DCALDERA_PLUGIN_SHARED)", path, CALDERA_PLUGIN_ENTRY_SYMBOL);
        goto fail;
    }
    const struct caldera_plugin * p = entry(CALDERA_PLUGIN_ABI_VERSION);
    if (!p) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_PLUGIN_LOAD, "%s: entry point '%s' returned NULL (the plugin refused to load)",
                               path, CALDERA_PLUGIN_ENTRY_SYMBOL);
        goto fail;
    }
    if ((rc = registry_check_new(ctx, p, path, rank, &slot)) != 0) {
        if (rc > 0) rc = 0;   // overridden by a plugin of higher precedence: not loaded
        goto fail;
    }
    rc = slot >= 0 ? registry_replace(ctx, slot, p, path, h, rank) : registry_append(ctx, p, path, h, rank);
    if (rc < 0) goto fail;
    caldera_log(ctx, CALDERA_LOG_DEBUG, "loaded plugin '%s' (%s) from %s", p->name, caldera_plugin_kind_name(p->kind), path);
    return 0;
fail:
    dlclose(h);
    return rc;
}

int caldera_registry_load(struct caldera_ctx * ctx, const char * path) {
    return registry_load_rank(ctx, path, CALDERA_RANK_EXPLICIT);
}

static int cmp_str(const void * a, const void * b) { return strcmp(*(char * const *) a, *(char * const *) b); }

static int registry_load_dir_rank(struct caldera_ctx * ctx, const char * dir, enum caldera_plugin_rank rank) {
    DIR * d = opendir(dir);
    if (!d) return caldera_ctx_error(ctx, CALDERA_ERR_NOT_FOUND, "%s: cannot open plugin directory (%s)", dir, strerror(errno));
    char ** names = NULL;
    int64_t n = 0, cap = 0;
    int rc = 0;
    struct dirent * de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l < 4 || strcmp(de->d_name + l - 3, ".so") != 0) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char ** nn = caldera_realloc(names, (size_t) cap * sizeof(char *));
            if (!nn) { rc = CALDERA_ERR_NOMEM; break; }
            names = nn;
        }
        if (!(names[n] = caldera_asprintf("%s/%s", dir, de->d_name))) { rc = CALDERA_ERR_NOMEM; break; }
        n++;
    }
    closedir(d);
    if (rc == 0 && n) qsort(names, (size_t) n, sizeof(char *), cmp_str);
    for (int64_t i = 0; rc == 0 && i < n; i++) {
        rc = registry_load_rank(ctx, names[i], rank);
        // A plugin whose probe() says it cannot run here (a CUDA build without a GPU) is
        // skipped, as built-ins are: it must not keep the rest of the directory from loading.
        if (rc == CALDERA_ERR_UNSUPPORTED) {
            caldera_log(ctx, CALDERA_LOG_INFO, "%s; skipped", ctx->errmsg);
            rc = 0;
        }
    }
    for (int64_t i = 0; i < n; i++) caldera_free(names[i]);
    caldera_free_unaligned(names);
    return rc;
}

int caldera_registry_load_dir(struct caldera_ctx * ctx, const char * dir) {
    return registry_load_dir_rank(ctx, dir, CALDERA_RANK_EXPLICIT);
}

// Directories already loaded by load_default, by identity: the same directory written twice
// (a trailing '/', a symlink, or the install directory also listed in CALDERA_PLUGIN_PATH) is
// loaded once, instead of failing on its own plugins as duplicates.
struct dir_ids {
    dev_t dev[64];
    ino_t ino[64];
    int   n;
};

static int dir_first_time(struct caldera_ctx * ctx, struct dir_ids * ids, const char * dir, const char * from) {
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {  // missing: skipped
        caldera_log(ctx, CALDERA_LOG_DEBUG, "plugin directory %s (%s): not found, skipped", dir, from);
        return 0;
    }
    for (int i = 0; i < ids->n; i++) {
        if (ids->dev[i] == st.st_dev && ids->ino[i] == st.st_ino) {
            caldera_log(ctx, CALDERA_LOG_DEBUG, "plugin directory %s (%s): already searched", dir, from);
            return 0;
        }
    }
    if (ids->n < 64) {
        ids->dev[ids->n] = st.st_dev;
        ids->ino[ids->n++] = st.st_ino;
    }
    caldera_log(ctx, CALDERA_LOG_DEBUG, "plugin directory %s (%s): searching", dir, from);
    return 1;
}

char * caldera_plugin_dir_default(void) {
    // <dir of the object holding this code>/caldera/plugins: <libdir>/caldera/plugins of an
    // install wherever it was moved, and <build>/caldera/plugins in the build tree. An executable
    // linked with the core objects (the unit tests) falls back to the configured install path.
    Dl_info info;
    if (dladdr((const void *) &caldera_plugin_dir_default, &info) && info.dli_fname) {
        const char * slash = strrchr(info.dli_fname, '/');
        const char * base = slash ? slash + 1 : info.dli_fname;
        if (slash && strncmp(base, "libcaldera.so", 13) == 0) {
            // "<prefix>/bin/../lib" (a library found through the RPATH) is written as "<prefix>/lib"
            char * libdir = caldera_asprintf("%.*s", (int) (slash - info.dli_fname), info.dli_fname);
            char * real = libdir ? realpath(libdir, NULL) : NULL;
            char * dir = caldera_asprintf("%s/caldera/plugins", real ? real : libdir ? libdir : ".");
            free(real);   // from libc's realpath
            caldera_free(libdir);
            return dir;
        }
    }
    return caldera_strdup(CALDERA_PLUGIN_INSTALL_DIR);
}

int caldera_registry_load_default(struct caldera_ctx * ctx) {
    if (ctx->defaults_loaded) return 0;
    ctx->defaults_loaded = 1;
    ctx->defaults_pending = 0;
    struct dir_ids ids = { .n = 0 };
    const char * env = getenv("CALDERA_PLUGIN_PATH");
    if (env && *env) {
        char * copy = caldera_strdup(env);
        if (!copy) return CALDERA_ERR_NOMEM;
        int rc = 0;
        for (char * save = NULL, * tok = strtok_r(copy, ":", &save); tok && rc == 0; tok = strtok_r(NULL, ":", &save)) {
            if (tok[0] != '/') {
                caldera_log(ctx, CALDERA_LOG_WARN, "CALDERA_PLUGIN_PATH entry '%s' is not absolute; skipped", tok);
                continue;
            }
            if (dir_first_time(ctx, &ids, tok, "CALDERA_PLUGIN_PATH")) rc = registry_load_dir_rank(ctx, tok, CALDERA_RANK_ENV);
        }
        caldera_free(copy);
        if (rc < 0) return rc;
    }
    char * dir = caldera_plugin_dir_default();
    if (!dir) return CALDERA_ERR_NOMEM;
    int rc = dir_first_time(ctx, &ids, dir, "default") ? registry_load_dir_rank(ctx, dir, CALDERA_RANK_DEFAULT) : 0;
    caldera_free(dir);
    return rc;
}

// A context of a build whose first-party plugins are shared objects loads the default places at
// its first lookup, after the application had its say (log level, explicit loads). An error is
// logged; the lookup then sees what did load.
static void registry_autoload(const struct caldera_ctx * cctx) {
    if (!cctx || !cctx->defaults_pending) return;
    struct caldera_ctx * ctx = (struct caldera_ctx *) cctx;   // a context is never const-defined
    if (caldera_registry_load_default(ctx) < 0) {
        caldera_log(ctx, CALDERA_LOG_ERROR, "loading the default plugins: %s", ctx->errmsg);
    }
}

int64_t caldera_registry_count(const struct caldera_ctx * ctx) {
    registry_autoload(ctx);
    return ctx->n_plugins;
}

const struct caldera_plugin * caldera_registry_get(const struct caldera_ctx * ctx, int64_t i) {
    registry_autoload(ctx);
    return (i >= 0 && i < ctx->n_plugins) ? ctx->plugins[i].plugin : NULL;
}

const char * caldera_registry_origin(const struct caldera_ctx * ctx, int64_t i) {
    registry_autoload(ctx);
    return (i >= 0 && i < ctx->n_plugins) ? ctx->plugins[i].origin : NULL;
}

const struct caldera_plugin * caldera_registry_find(const struct caldera_ctx * ctx, const char * name) {
    registry_autoload(ctx);
    for (int64_t i = 0; name && i < ctx->n_plugins; i++) {
        if (strcmp(ctx->plugins[i].plugin->name, name) == 0) return ctx->plugins[i].plugin;
    }
    return NULL;
}

void caldera_registry_free(struct caldera_ctx * ctx) {
    // Shared objects are closed last, after every instance is gone (the caller's duty).
    for (int64_t i = ctx->n_plugins - 1; i >= 0; i--) {
        if (ctx->plugins[i].handle) dlclose(ctx->plugins[i].handle);
        caldera_free(ctx->plugins[i].origin);
    }
    for (int64_t i = ctx->n_retired - 1; i >= 0; i--) dlclose(ctx->retired[i]);
    caldera_free_unaligned(ctx->retired);
    ctx->retired = NULL;
    ctx->n_retired = 0;
    caldera_free_unaligned(ctx->plugins);
    ctx->plugins = NULL;
    ctx->n_plugins = ctx->cap_plugins = 0;
}
