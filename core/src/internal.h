// SPDX-License-Identifier: MIT
// Internal definitions shared by the core's source files (never installed).
#ifndef CALDERA_INTERNAL_H
#define CALDERA_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>

#include "caldera/caldera.h"

#define CALDERA_ERRMSG_MAX 2048
// Errors raised on the calling thread go to buf (CALDERA_ERRMSG_MAX bytes; NULL: the context's
// message again) until it is reset; returns the previous buffer. For workers running jobs at once.
char * caldera_ctx_thread_errmsg(char * buf);

// Where a registered plugin came from, in increasing precedence: a later place overrides an
// earlier one of the same name (with a notice); the same place twice is a duplicate-name error.
enum caldera_plugin_rank {
    CALDERA_RANK_BUILTIN  = 0,  // compiled into this binary
    CALDERA_RANK_DEFAULT  = 1,  // the default directory (next to libcaldera, or installed)
    CALDERA_RANK_ENV      = 2,  // a directory of CALDERA_PLUGIN_PATH
    CALDERA_RANK_EXPLICIT = 3,  // caldera_registry_load / _load_dir / _add (--plugin-path, plugin_path)
};

struct caldera_registry_entry {
    const struct caldera_plugin * plugin;
    char *                        origin;  // "built-in" or the .so path
    void *                        handle;  // dlopen handle or NULL
    enum caldera_plugin_rank      rank;
};

struct caldera_pool;
struct ccu_dev;
void caldera_pool_free(struct caldera_pool * pool);
// 1 when a caldera_parallel_for called on this thread now is offered to idle threads while
// running inside a chunk (inside caldera_parallel_tasks): loops may then use a finer grain.
int caldera_parallel_nested(void);

struct caldera_ctx {
    caldera_log_fn                  log_fn;
    void *                          log_user;
    enum caldera_log_level          log_level;
    int                             threads;
    enum caldera_device             device;
    atomic_int                      cancelled;
    char                            errmsg[CALDERA_ERRMSG_MAX];
    struct caldera_registry_entry * plugins;
    int64_t                         n_plugins;
    int64_t                         cap_plugins;
    struct caldera_pool *           pool;   // worker threads of caldera_parallel_for (lazy)
    void **                         retired;     // handles of overridden plugins, closed at free
    int64_t                         n_retired;
    int                             defaults_pending; // load the default places at first lookup
    int                             defaults_loaded;  // caldera_registry_load_default ran
    struct ccu_dev *                cuda_dev;   // the CUDA device: stream and handles (lazy; linalg_cuda.c)
};

struct caldera_inst {
    struct caldera_ctx *          ctx;
    const struct caldera_plugin * plugin;
    char *                        name;
    void *                        priv;
    bool                          started;   // init() ran (uninit is due)
    bool *                        is_set;    // per option: set explicitly (not default)
    int64_t                       n_options;
    void                       (*on_free)(void *);   // caldera_inst_on_free: run after uninit
    void *                        on_free_arg;
};
/** Have caldera_inst_free call fn(arg) after the plugin's uninit (one per instance; e.g. what the
 *  instance's replaced layers use). */
void caldera_inst_on_free(struct caldera_inst * inst, void (*fn)(void *), void * arg);

// registry.c
int caldera_registry_add_builtins(struct caldera_ctx * ctx);
void caldera_registry_free(struct caldera_ctx * ctx);

// options.c
int64_t caldera_options_count(const struct caldera_option * opts);
const struct caldera_option * caldera_options_find(const struct caldera_option * opts, const char * name,
                                                   int64_t * index);
/** Parse text into the field of opt in priv. Writes a message to err (allowed values) on failure. */
int  caldera_option_parse(const struct caldera_option * opt, void * priv, const char * text,
                          char * err, size_t errlen);
int  caldera_option_set_default(const struct caldera_option * opt, void * priv);
void caldera_option_free_value(const struct caldera_option * opt, void * priv);
/** Text of the current value (caller frees). REF values print the referenced instance name. */
char * caldera_option_format(const struct caldera_option * opt, const void * priv);
/** Validate an option table; message in err. */
int  caldera_options_validate(const struct caldera_option * opts, char * err, size_t errlen);
/** Nearest option name to key by edit distance (NULL if none is close). */
const char * caldera_options_suggest(const struct caldera_option * opts, const char * key);
int  caldera_edit_distance(const char * a, const char * b);
const char * caldera_opt_type_name(enum caldera_opt_type t);

// misc
int  caldera_name_valid(const char * name);
size_t caldera_strlcpy(char * dst, const char * src, size_t n);
char * caldera_asprintf(const char * fmt, ...) CALDERA_PRINTF(1, 2);
void caldera_log_prefixed(struct caldera_ctx * ctx, enum caldera_log_level level, const char * prefix,
                          const char * fmt, va_list ap);

// linalg
void caldera_blas_set_threads(int n);
// caldera_linalg_syrk that leaves C's strict upper triangle as it was (no mirror; the CUDA path
// mirrors anyway): for callers that read only the lower one.
int  caldera_linalg_syrk_lower(struct caldera_ctx * ctx, enum caldera_trans trans, float alpha, const struct caldera_tensor * a,
                               float beta, struct caldera_tensor * c);

// Atomic file output: write to "<path>.tmp.<pid>" and rename on commit.
struct caldera_atomic_file {
    char * path;
    char * tmp;
    void * fp;   // FILE *
};
int  caldera_atomic_open(struct caldera_ctx * ctx, const char * path, struct caldera_atomic_file * af);
int  caldera_atomic_commit(struct caldera_ctx * ctx, struct caldera_atomic_file * af);
void caldera_atomic_abort(struct caldera_atomic_file * af);
/**
 * Remove the temporaries that writers of @p path left when their process was killed (SIGKILL
 * gives no chance to clean up): "<path>.tmp.<pid>" and "<path>.<word>.tmp.<pid>" (word: [a-z]+,
 * e.g. safetensors' "data") in path's folder, when <pid> is not this process and no process with
 * that id exists (kill(pid, 0) fails with ESRCH). A live process's temporaries are never touched.
 * Returns the number removed (logged), or 0 when there are none or the folder cannot be read.
 */
int64_t caldera_tmp_remove_stale(struct caldera_ctx * ctx, const char * path);

#endif
