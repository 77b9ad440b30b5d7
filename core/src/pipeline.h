// SPDX-License-Identifier: MIT
// Internal definitions of the pipeline engine, shared by pipeline.c (options, init, the run's
// order of phases) and the phases, each in its own file: phase-calibrate.c (Hessians from the
// model's forward pass), phase-compress.c (weights streamed through the stages into the writers)
// and phase-evaluate.c (perplexity of what was written next to the original's).
#ifndef CALDERA_PIPELINE_INTERNAL_H
#define CALDERA_PIPELINE_INTERNAL_H

#include <jansson.h>

#include "checkpoint.h"
#include "config.h"

enum { HMISS_IDENTITY = 0, HMISS_ERROR = 1 };
enum { COPY_AUTO = 0, COPY_F32, COPY_F16, COPY_BF16 };

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
    char *                calibration;   // name of the [calibration] section ("" : none)
    char *                eval;          // name of the [eval] section ("" : none)
    char *                model;         // model plugin that runs the forward pass
};

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
    struct caldera_inst *   calib;       // the [calibration] section's options, or NULL
    struct cfg_section *    calib_sec;
    struct caldera_inst *   eval;        // the [eval] section's options, or NULL
    struct cfg_section *    eval_sec;
    enum caldera_device     device;      // [caldera] device resolved at init (auto: what was found)
};

// State of one run, shared by its phases; pl_run_close releases it.
struct pl_run {
    struct caldera_meta * fmeta;        // metadata of the files written (source's, config, stages, report)
    char *                cfgtext;      // the effective configuration
    struct caldera_ckpt * ckpt;         // NULL: no checkpoint
    int                   writer_open, dense_open;
    json_t *              tensors;      // per-weight report entries, in file order
    // Summary of the compress phase: Frobenius errors over every weight; H-weighted ones only
    // over weights that had a Hessian.
    int64_t               ndone, n_h, resumed;
    double                sum_bits_params, sum_params, sum_err, worst, sum_err_h, worst_h;
    double                model_params; // every tensor of the model read (compressed or copied), in elements
    double                t_start;      // when the compress phase started
    // The model (forward pass) when calibration or evaluation needs it.
    struct caldera_inst *             model;
    const struct caldera_model_ops *  mops;
    // Where Hessians come from: the hessians section, or the calibration cache (opened here).
    struct caldera_inst *             hsrc;
    struct caldera_inst *             hcache;       // the cache reader this run opened (owned)
    char *                            hcache_tmp;   // a cache file to delete at the end (no cache folder)
    struct calib_seq *                seq;          // sequential calibration (Hessians per layer on demand)
    json_t *                          calib_json;   // the calibration's report entry
    json_t *                          eval_json;    // the evaluation's report entry
    json_t *                          eval_original;// the original model's perplexity (until eval_json owns it)
    int64_t                           replaced;     // linears of the model replaced by their reconstruction
    double                            t_calibrate, t_compress, t_evaluate;   // seconds per phase
    double                            c_calibrate, c_compress, c_evaluate;   // process CPU seconds per phase (all threads)
};

static inline struct pipeline_opts * popts(const struct caldera_pipeline * pl) { return caldera_inst_priv(pl->self); }

// pipeline.c
double       pl_now(void);   // monotonic seconds
double       pl_cpu_now(void);   // CPU seconds of the process (all threads)
const char * pl_format_path(struct caldera_inst * inst, char ** owned);
int          pl_selected(const struct pipeline_opts * o, const struct caldera_tensor_info * ti);
int          pl_open_reader(struct caldera_pipeline * pl, struct caldera_inst * inst, int * flag);
char *       pl_config_text(const struct caldera_pipeline * pl);
json_t *     pl_stages_json(const struct caldera_pipeline * pl);
int          pl_find_tensor(struct caldera_inst * fmt, const char * name, int64_t * index);
/** Expand ${VAR} and ${VAR:-default} (caldera_malloc'd result; NULL with a message in err). */
char *       pl_expand_env(const char * v, char * err, size_t errlen);
/** A path given in a pipeline file, relative to that file's folder; absolute, or from --set or a
 *  default (@p file NULL or "--set"): as it is (the current directory). caldera_malloc'd. */
char *       pl_resolve_path(const char * path, const char * file);
/** Load the model ([caldera] model plugin) from the reader into run->model (once per run). */
int          pl_model_load(struct caldera_pipeline * pl, struct pl_run * run);

// phase-calibrate.c
struct calib_seq;
/** Calibration Hessians: from the cache, or by a forward pass over sampled windows (then cached);
 *  sets run->hsrc to the cache reader. */
int  pl_phase_calibrate(struct caldera_pipeline * pl, struct pl_run * run);
/** Name of weight @p name's Hessian tensor in run->hsrc: its input group's "<group>.hessian" after
 *  calibration, "<x>.hessian" for a weight "<x>.weight" otherwise. 0, or NOT_FOUND (no group). */
/** Mix the identity of the model into a cache key: reader plugin and options, the contents of its
 *  file or folder, the version of caldera and of the model plugin. */
struct calib_hash;
int  pl_model_hash(struct caldera_pipeline * pl, struct pl_run * run, struct calib_hash * h);
/** mkdir -p (CALDERA_ERR_IO naming the folder). */
int  pl_mkdir_p(struct caldera_ctx * ctx, const char * dir);
/** Sequential calibration: the Hessian of weight name (cols × cols) as a view into run-owned
 *  memory, computed for its layer (with the layers before it as compressed so far) on first use.
 *  CALDERA_ERR_NOT_FOUND (no message) when the weight is no linear layer of the model. */
int  pl_seq_hessian(struct caldera_pipeline * pl, struct pl_run * run, const char * name, int64_t cols, struct caldera_tensor * h);
void pl_seq_free(struct pl_run * run);
int  pl_hessian_name(struct caldera_pipeline * pl, struct pl_run * run, const char * name, char * out, size_t n);

// phase-compress.c
/** Create the writers (and the checkpoint) with the file metadata; sets run->fmeta, cfgtext. */
int  pl_outputs_open(struct caldera_pipeline * pl, struct pl_run * run);
/** Stream every tensor of the model: selected weights through the stages, the rest copied. */
int  pl_phase_compress(struct caldera_pipeline * pl, struct pl_run * run);
/** Put the report into the files' metadata and finish (commit) the writers. */
int  pl_outputs_finish(struct caldera_pipeline * pl, struct pl_run * run);
/** Release what the run holds; a failed run (rc < 0) aborts its writers and keeps its checkpoint. */
void pl_run_close(struct caldera_pipeline * pl, struct pl_run * run, int rc);

// phase-evaluate.c
/** Load the model; unless [eval] original = false, the original model's perplexity (cached). */
int  pl_phase_evaluate_original(struct caldera_pipeline * pl, struct pl_run * run);
/** The perplexity of the model with its compressed linears replaced (after the compress phase). */
int  pl_phase_evaluate(struct caldera_pipeline * pl, struct pl_run * run);

#endif
