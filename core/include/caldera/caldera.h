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
/** The report of the last run as JSON text (owned by the pipeline), or NULL. */
const char * caldera_pipeline_report_json(const struct caldera_pipeline * pl);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif // CALDERA_H
