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
    double                t_start;      // when the compress phase started
};

static inline struct pipeline_opts * popts(const struct caldera_pipeline * pl) { return caldera_inst_priv(pl->self); }

// pipeline.c
double       pl_now(void);   // monotonic seconds
const char * pl_format_path(struct caldera_inst * inst, char ** owned);
int          pl_selected(const struct pipeline_opts * o, const struct caldera_tensor_info * ti);
int          pl_open_reader(struct caldera_pipeline * pl, struct caldera_inst * inst, int * flag);
char *       pl_config_text(const struct caldera_pipeline * pl);
json_t *     pl_stages_json(const struct caldera_pipeline * pl);
int          pl_find_tensor(struct caldera_inst * fmt, const char * name, int64_t * index);

// phase-compress.c
/** Create the writers (and the checkpoint) with the file metadata; sets run->fmeta, cfgtext. */
int  pl_outputs_open(struct caldera_pipeline * pl, struct pl_run * run);
/** Stream every tensor of the model: selected weights through the stages, the rest copied. */
int  pl_phase_compress(struct caldera_pipeline * pl, struct pl_run * run);
/** Put the report into the files' metadata and finish (commit) the writers. */
int  pl_outputs_finish(struct caldera_pipeline * pl, struct pl_run * run);
/** Release what the run holds; a failed run (rc < 0) aborts its writers and keeps its checkpoint. */
void pl_run_close(struct caldera_pipeline * pl, struct pl_run * run, int rc);

#endif
