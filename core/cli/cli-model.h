// SPDX-License-Identifier: MIT
// cli-model.h: what the model subcommands of caldera-pipe (eval, generate) share: the common
// options (--model, --tokenizer, --format, --weights, --threads, --plugin-path, -q) and opening
// the model through caldera_model_open.
#ifndef CALDERA_CLI_MODEL_H
#define CALDERA_CLI_MODEL_H

#include "caldera/caldera.h"

#define CLI_EXIT_RUNTIME 1
#define CLI_EXIT_USAGE   2

struct cli_model {
    const char *          model;       // --model PATH
    const char *          tokenizer;   // --tokenizer FILE
    const char *          format;      // --format NAME
    const char *          weights;     // --weights f32|f16
    int                   threads;     // --threads N (-1: default)
    int                   quiet;       // -q
    const char **         paths;       // --plugin-path (argc entries)
    int                   npaths;
    struct caldera_ctx *  ctx;
    struct caldera_inst * inst;
    const struct caldera_model_ops * ops;
    const char *          compressed;  // --compressed FILE: caldera-pipe output whose layers replace the model's
    int                   dense;       // --dense: reconstruct those layers to dense f32 (no fused kernels)
    struct caldera_compressed * cmp;   // what the replaced layers use (freed after the model)
    const char *          head;        // --head f32|f16|q8: the model's output head storage (option "head")
    struct caldera_model_storage storage;  // what --model stores; with --compressed, its linear figures are those
                                           // of the compressed file's layers (storage.compressed = 1)
};

/**
 * Try to consume one common option at argv[*i] (advancing *i past its value). Returns 1 when it
 * was one, 0 when not, -1 (message printed) when its value is missing or invalid.
 */
int  cli_model_option(struct cli_model * m, const char * cmd, int argc, char ** argv, int * i);
/** Usage lines of the options cli_model_option takes for compressed files. */
#define CLI_COMPRESSED_USAGE \
    "  A caldera-pipe output opens alone (--model FILE): its compressed linear layers run from the mapped\n" \
    "  file through the fused CPU kernels; its metadata and tensors give the rest (tokenizer, norms, embeddings).\n" \
    "  --compressed FILE     run the linear layers of a caldera-pipe output FILE on top of --model (the original)\n" \
    "  --dense               with a caldera-pipe output: reconstruct its layers to dense f32 instead (reference path)\n" \
    "  --head f32|f16|q8     storage of the output head for the logits (default f32; q8: int8, a scale per 32)\n"
/** Context, plugins, model: 0, or an exit code (message printed). */
int  cli_model_open(struct cli_model * m, const char * cmd);
void cli_model_close(struct cli_model * m);
/** Seconds of a monotonic clock. */
double cli_now(void);
/** Parse a whole decimal integer / double in [lo, hi]; -1 with a message naming @p opt. */
int  cli_parse_int(const char * cmd, const char * opt, const char * s, long long lo, long long hi, long long * out);
int  cli_parse_double(const char * cmd, const char * opt, const char * s, double lo, double hi, double * out);

int cli_eval(int argc, char ** argv);      ///< caldera-pipe eval ...
int cli_generate(int argc, char ** argv);  ///< caldera-pipe generate ...
int cli_compare(int argc, char ** argv);   ///< caldera-pipe compare ...

#endif
