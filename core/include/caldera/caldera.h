// SPDX-License-Identifier: MIT
// caldera.h: the application API of libcaldera: contexts, the plugin registry and loader,
// instances with typed options, INI configuration with diagnostics, and the pipeline engine.
#ifndef CALDERA_H
#define CALDERA_H

#include <stdio.h>

#include "caldera-plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#pragma GCC visibility push(default) // the public API is exported from libcaldera
#endif

#define CALDERA_VERSION_MAJOR 0
#define CALDERA_VERSION_MINOR 1
#define CALDERA_VERSION_PATCH 0
#define CALDERA_VERSION_STRING "0.1.0"

/** Version string of the library actually loaded. */
const char * caldera_version(void);

// ---------------------------------------------------------------------------------------------
// Context

typedef void (*caldera_log_fn)(enum caldera_log_level level, const char * msg, void * user);

/**
 * New context with the built-in plugins registered; threads default to all cores. When the
 * first-party plugins are shared objects (the default build), the context loads the default
 * places (caldera_registry_load_default) at its first registry lookup, so a program sees the
 * same plugins in both build configurations.
 */
int  caldera_ctx_init(struct caldera_ctx ** out);
/** Free a context; NULL is a no-op. Shared objects it loaded are closed last. */
void caldera_ctx_free(struct caldera_ctx * ctx);
/** Route log lines (without trailing newline) to fn; NULL restores the stderr default. */
void caldera_ctx_set_log(struct caldera_ctx * ctx, caldera_log_fn fn, void * user);
/** Lines above @p level are dropped. Default INFO; CALDERA_LOG=error|warn|info|debug overrides. */
void caldera_ctx_set_log_level(struct caldera_ctx * ctx, enum caldera_log_level level);
enum caldera_log_level caldera_ctx_log_level(const struct caldera_ctx * ctx);
/** Threads for OpenBLAS and the core's loops; 0 = all cores. */
int  caldera_ctx_set_threads(struct caldera_ctx * ctx, int threads);
int  caldera_ctx_set_device(struct caldera_ctx * ctx, enum caldera_device device);
/** Ask running work to stop at the next tensor boundary (async-signal-safe). */
void caldera_ctx_cancel(struct caldera_ctx * ctx);
int  caldera_ctx_cancelled(const struct caldera_ctx * ctx);

// ---------------------------------------------------------------------------------------------
// Registry and loader

/** Register a descriptor (built in, or from a test); the same checks as a loaded one. */
int caldera_registry_add(struct caldera_ctx * ctx, const struct caldera_plugin * plugin,
                         const char * origin);
/**
 * Load one plugin shared object (RTLD_NOW|RTLD_LOCAL). Each failure has its own code and
 * message: missing file (NOT_FOUND), not loadable (PLUGIN_LOAD), no entry symbol
 * (PLUGIN_LOAD), entry returned NULL (PLUGIN_LOAD), ABI mismatch (ABI), descriptor too small
 * (ABI), invalid name (INVAL), bad kind (INVAL), bad option table (INVAL), duplicate name
 * (PLUGIN_DUP), probe() == 0 (UNSUPPORTED).
 */
int caldera_registry_load(struct caldera_ctx * ctx, const char * path);
/**
 * Load every *.so in a directory (sorted by name); stops at the first failure. A plugin whose
 * probe() says it cannot run here is skipped with an info line, not a failure.
 */
int caldera_registry_load_dir(struct caldera_ctx * ctx, const char * dir);
/**
 * Load from the default places: every directory of CALDERA_PLUGIN_PATH (':'-separated), then
 * the default directory (caldera_plugin_dir_default). Missing directories are skipped; never the
 * current directory. Runs once per context (later calls return 0). A name found in two places is
 * taken from the one of higher precedence (explicit loads > CALDERA_PLUGIN_PATH > default
 * directory > built-in) with an info notice; twice in places of the same precedence it is a
 * duplicate (PLUGIN_DUP). With first-party plugins built as shared objects, the first registry
 * lookup of a context runs this by itself.
 */
int caldera_registry_load_default(struct caldera_ctx * ctx);
/**
 * The default plugin directory, derived at run time from where libcaldera is
 * (<dir of libcaldera.so>/caldera/plugins: <libdir>/caldera/plugins of an install wherever it is
 * moved, <build>/caldera/plugins in a build tree); the configured install directory when the core
 * is not a libcaldera shared object. Free with caldera_free; NULL when out of memory.
 */
char * caldera_plugin_dir_default(void);
int64_t                       caldera_registry_count(const struct caldera_ctx * ctx);
const struct caldera_plugin * caldera_registry_get(const struct caldera_ctx * ctx, int64_t i);
/** Where plugin i came from: "built-in" or the shared object's path. */
const char *                  caldera_registry_origin(const struct caldera_ctx * ctx, int64_t i);
const struct caldera_plugin * caldera_registry_find(const struct caldera_ctx * ctx, const char * name);

/** Check a descriptor without registering it (what the loader checks); message in ctx. */
int caldera_plugin_validate(struct caldera_ctx * ctx, const struct caldera_plugin * plugin,
                            const char * origin);
/** Write the help of one plugin (generated from its option table); CALDERA_OPT_EXPERT options are
 *  counted, not shown. */
int caldera_plugin_print_help(const struct caldera_plugin * plugin, FILE * out);
/** The same with every option, expert ones included. */
int caldera_plugin_print_help_full(const struct caldera_plugin * plugin, FILE * out);

// ---------------------------------------------------------------------------------------------
// Instances created by code (tests, tools). Pipelines create theirs from INI sections.

/** Allocate priv, apply defaults. @p name is the section name used in messages. */
int  caldera_inst_create(struct caldera_ctx * ctx, const char * plugin, const char * name,
                         struct caldera_inst ** out);
/** Parse and set one option from its text form (the same parser the INI uses). */
int  caldera_inst_set(struct caldera_inst * inst, const char * key, const char * value);
/** Set a REF option to another instance (kind checked). */
int  caldera_inst_set_ref(struct caldera_inst * inst, const char * key, struct caldera_inst * ref);
/** Run check() then init(); after a failure, caldera_inst_free still cleans up. */
int  caldera_inst_start(struct caldera_inst * inst);
/** uninit (if started), free option strings and priv; NULL is a no-op. */
void caldera_inst_free(struct caldera_inst * inst);
/** Text form of an option's current value (for --print-config); caller frees with caldera_free. */
char * caldera_inst_get_text(const struct caldera_inst * inst, const char * key);

// ---------------------------------------------------------------------------------------------
// Configuration (INI) and diagnostics

struct caldera_config;

int  caldera_config_init(struct caldera_ctx * ctx, struct caldera_config ** out);
void caldera_config_free(struct caldera_config * cfg);
/** Parse an INI file; syntax errors become diagnostics (the whole file is read). */
int  caldera_config_parse_file(struct caldera_config * cfg, const char * path);
/** Parse INI text (for tests); @p name is used as the file name in messages. */
int  caldera_config_parse_string(struct caldera_config * cfg, const char * name, const char * text);
/** Apply "section.key=value" after parsing (overrides a value or adds a key). */
int  caldera_config_set(struct caldera_config * cfg, const char * assignment);

/** Diagnostics collected by parse/set and by caldera_pipeline_init. */
int64_t      caldera_config_ndiag(const struct caldera_config * cfg);
/** "file:line: [section] plugin: what; allowed" */
const char * caldera_config_diag(const struct caldera_config * cfg, int64_t i);

// ---------------------------------------------------------------------------------------------
// Pipeline

struct caldera_pipeline;

/**
 * Resolve plugins, bind options, check references, shapes (headers of the model are read)
 * and plugin checks. Every problem becomes a diagnostic of @p cfg; returns CALDERA_ERR_CONFIG
 * when there was any. On success *out is a pipeline ready to run.
 */
int  caldera_pipeline_init(struct caldera_ctx * ctx, struct caldera_config * cfg,
                           struct caldera_pipeline ** out);
void caldera_pipeline_free(struct caldera_pipeline * pl);
/** Write the effective configuration (all options, defaults filled in) as INI. */
int  caldera_pipeline_print_config(const struct caldera_pipeline * pl, FILE * out);
/** Run every phase; the output file appears only when complete. */
int  caldera_pipeline_run(struct caldera_pipeline * pl);
/** Descriptor of the [caldera] section's options (for help text and the config reference). */
const struct caldera_plugin * caldera_pipeline_descriptor(void);
/** Descriptors of the core's [calibration] and [eval] sections (named by [caldera] calibration / eval). */
const struct caldera_plugin * caldera_calibration_descriptor(void);
const struct caldera_plugin * caldera_eval_descriptor(void);
/** The report of the last run as JSON text (owned by the pipeline), or NULL. */
const char * caldera_pipeline_report_json(const struct caldera_pipeline * pl);
/**
 * The architecture of the model an initialised pipeline reads (its reader's model_desc).
 * @return 0, or CALDERA_ERR_NOT_FOUND when the reader describes no model (synthetic, a bare tensor file).
 */
int caldera_pipeline_model_desc(const struct caldera_pipeline * pl, struct caldera_model_desc * out);

// ---------------------------------------------------------------------------------------------
// Models: open any readable model file as a model instance, and measure perplexity.

struct caldera_compressed_report;
struct caldera_model_storage;

/** How caldera_model_open reads a file (ABI-like: grows at the end; struct_size = sizeof). */
struct caldera_model_open_params {
    uint32_t     struct_size;  ///< sizeof(struct caldera_model_open_params)
    const char * format;       ///< format plugin name, or NULL to guess by the formats' probe_path
    const char * tokenizer;    ///< tokenizer file for formats that keep it apart (llama2c), or NULL
    const char * model;        ///< model plugin name, or NULL for "llama"
    const char * weights;      ///< model plugin's "weights" option ("f32", "f16"), or NULL: its default
    // since 0.1.0 (after weights)
    int          dense;        ///< a caldera-pipe output: 1 = its compressed layers rebuilt to dense f32 (reference path)
    struct caldera_compressed_report * compressed_report;  ///< out, optional: what a caldera-pipe output's layers became
                                                           ///< (zeros for other files); caldera-kernels.h
    // since 0.1.0 (after compressed_report)
    struct caldera_model_storage * storage;  ///< out, optional: what the file stores, in a pipeline report's terms
};

/**
 * What a model file stores, counted as a pipeline report counts a compressed model (its
 * summary's bits_per_param and model_params), so that a model made elsewhere (a llama.cpp
 * quantization) sits in one table with the pipelines' outputs.
 */
struct caldera_model_storage {
    int64_t  params;         ///< the model's parameters: the elements of every tensor of the file (a caldera-pipe output:
                             ///< its uncompressed tensors plus rows × cols of each compressed weight); = model_params
    int64_t  linear_params;  ///< parameters of the linear weights below
    uint64_t linear_bits;    ///< their stored bits: of the transformer blocks' linear weights (the model's linears with
                             ///< layer >= 0, which pipelines compress by default) tensor_info nbytes × 8; of a
                             ///< caldera-pipe output, its compressed layers' stored bits (compressed = 1)
    int      compressed;     ///< 1: the linear figures are a caldera-pipe output's compressed layers
    char     types[192];     ///< the storage types of those weights with their counts, "q4_0:207 q4_1:3" (truncated)
};

/**
 * Open the model file @p path with a format reader, load it into a new started instance of the
 * model plugin and close the reader. A file written by caldera-pipe opens alone: its metadata
 * carries the model description and the tokenizer, its uncompressed tensors (embeddings, norms)
 * are read as they are, and every linear layer stored compressed runs from the mapped file through
 * its recorded stages (caldera_model_load_compressed: fused kernels, or dense f32 with
 * params->dense), which the instance keeps until it is freed. Free *out with caldera_inst_free.
 * @p params may be NULL (all defaults).
 */
int caldera_model_open(struct caldera_ctx * ctx, const char * path,
                       const struct caldera_model_open_params * params, struct caldera_inst ** out);
/** The model ops of a started model instance (CALDERA_ERR_INVAL with a message if it is not one). */
int caldera_model_ops_of(struct caldera_inst * model, const struct caldera_model_ops ** ops);

enum caldera_ppl_protocol {
    /** llama-perplexity's: the text tokenized whole (BOS first when the model adds one), cut into
     *  non-overlapping windows of ctx tokens; the first token of each window becomes the BOS when
     *  the model adds one; only the second half of each window is scored. */
    CALDERA_PPL_LLAMACPP = 0,
    /** Hugging Face's strided protocol (transformers "Perplexity of fixed-length models"): windows
     *  of ctx tokens starting every stride tokens; each scores only the tokens the previous window
     *  did not (the first scores all but its first token); no BOS inserted. */
    CALDERA_PPL_STRIDED  = 1,
};

/** Perplexity settings (ABI-like: grows at the end; struct_size = sizeof). */
struct caldera_ppl_params {
    uint32_t                  struct_size;
    enum caldera_ppl_protocol protocol;
    int64_t                   ctx;       ///< window length in tokens (e.g. 2048)
    int64_t                   windows;   ///< 0: the whole text; else at most this many windows
    int64_t                   stride;    ///< strided: window step (0: ctx / 2); llamacpp: unused
    int64_t                   batch;     ///< llamacpp: windows per forward pass (0: 1; same result); strided: 1
    /** (optional) progress after each window: done of total windows, running ppl; NULL = none */
    void                    (*progress)(void * user, int64_t done, int64_t total, double ppl);
    void *                    progress_user;
};

struct caldera_ppl_result {
    double  ppl;            ///< exp(mean NLL)
    double  ppl_err;        ///< ± as llama-perplexity reports it (standard error propagated to ppl)
    double  nll;            ///< mean negative log-likelihood (nats per token)
    int64_t tokens_scored;
    int64_t windows;        ///< windows evaluated
    int64_t text_tokens;    ///< tokens of the whole text (BOS included where added)
};

/**
 * Perplexity of a loaded model instance on UTF-8 text (len bytes), tokenized by the model's
 * tokenizer, with @p params's protocol. Logits are consumed in chunks (never ctx × vocab at once).
 */
int caldera_model_perplexity(struct caldera_inst * model, const char * text, size_t len,
                             const struct caldera_ppl_params * params, struct caldera_ppl_result * out);

enum caldera_text_layout {
    CALDERA_TEXT_RAW  = 0,  ///< the bytes as they are
    CALDERA_TEXT_LF   = 1,  ///< CRLF -> LF
    CALDERA_TEXT_ROWS = 2,  ///< CRLF -> LF, rows joined with one blank line ("a\nb\n" -> "a\n\nb\n\n"),
                            ///< the conventional layout of WikiText-2 raw from the shared data folder
};

/** Read a text file into *text (NUL-terminated, caldera_malloc) of *len bytes, in @p layout. */
int caldera_text_read(struct caldera_ctx * ctx, const char * path, enum caldera_text_layout layout,
                      char ** text, size_t * len);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif // CALDERA_H
