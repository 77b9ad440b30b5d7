// SPDX-License-Identifier: MIT
// cli-model.c: common options and model opening of the eval and generate subcommands.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "caldera/caldera-kernels.h"
#include "cli-model.h"

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

int cli_parse_int(const char * cmd, const char * opt, const char * s, long long lo, long long hi, long long * out) {
    char * end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "caldera-pipe %s: %s '%s'; allowed: an integer in [%lld, %lld]\n", cmd, opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_double(const char * cmd, const char * opt, const char * s, double lo, double hi, double * out) {
    char * end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "caldera-pipe %s: %s '%s'; allowed: a number in [%g, %g]\n", cmd, opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_model_option(struct cli_model * m, const char * cmd, int argc, char ** argv, int * i) {
    const char * a    = argv[*i];
    const char * next = *i + 1 < argc ? argv[*i + 1] : NULL;
    static const char * const with_value[] = { "--model", "--tokenizer", "--format", "--weights", "--threads", "--plugin-path",
                                               "--compressed", "--head" };
    int takes = 0;
    for (size_t k = 0; k < sizeof(with_value) / sizeof(with_value[0]); k++) takes |= strcmp(a, with_value[k]) == 0;
    if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
        m->quiet = 1;
        return 1;
    }
    if (!strcmp(a, "--dense")) {
        m->dense = 1;
        return 1;
    }
    if (!takes) return 0;
    if (!next) {
        fprintf(stderr, "caldera-pipe %s: %s needs a value\n", cmd, a);
        return -1;
    }
    (*i)++;
    if (!strcmp(a, "--model")) m->model = next;
    else if (!strcmp(a, "--tokenizer")) m->tokenizer = next;
    else if (!strcmp(a, "--format")) m->format = next;
    else if (!strcmp(a, "--plugin-path")) m->paths[m->npaths++] = next;
    else if (!strcmp(a, "--compressed")) m->compressed = next;
    else if (!strcmp(a, "--head")) {
        if (strcmp(next, "f32") != 0 && strcmp(next, "f16") != 0 && strcmp(next, "q8") != 0) {
            fprintf(stderr, "caldera-pipe %s: --head '%s'; allowed: f32, f16, q8\n", cmd, next);
            return -1;
        }
        m->head = next;
    }
    else if (!strcmp(a, "--weights")) {
        if (strcmp(next, "f32") != 0 && strcmp(next, "f16") != 0) {
            fprintf(stderr, "caldera-pipe %s: --weights '%s'; allowed: f32, f16\n", cmd, next);
            return -1;
        }
        m->weights = next;
    } else {
        long long v;
        if (cli_parse_int(cmd, "--threads", next, 0, 4096, &v) < 0) return -1;
        m->threads = (int) v;
    }
    return 1;
}

static void cli_log(enum caldera_log_level level, const char * msg, void * user) {
    (void) user;
    static const char * tags[] = { "error: ", "warning: ", "", "debug: " };
    fprintf(stderr, "%s%s\n", tags[level], msg);
}

static void print_compressed(const char * cmd, const char * path, const struct caldera_compressed_report * rep, double secs) {
    fprintf(stderr, "%s: %lld linear layers from %s (%lld fused, %lld dense f32; kernels: %s%s), %.1f s; "
            "resident weights of those layers: %.2f MiB = %.3f bits/param over %.1f M params\n", cmd,
            (long long) (rep->n_fused + rep->n_dense), path, (long long) rep->n_fused, (long long) rep->n_dense,
            caldera_kernel_isa_name(caldera_kernel_isa()), caldera_kernel_q8() ? ", int8 activations at batch 1" : "", secs,
            (double) rep->bytes / 1048576.0,
            8.0 * (double) rep->bytes / (double) rep->params, (double) rep->params / 1e6);
}

int cli_model_open(struct cli_model * m, const char * cmd) {
    int rc;
    if (!m->model) {
        fprintf(stderr, "caldera-pipe %s: --model PATH is required\n", cmd);
        return CLI_EXIT_USAGE;
    }
    if ((rc = caldera_ctx_init(&m->ctx)) < 0) {
        fprintf(stderr, "caldera-pipe %s: cannot initialise: %s\n", cmd, caldera_status_str(rc));
        return CLI_EXIT_RUNTIME;
    }
    caldera_ctx_set_log(m->ctx, cli_log, NULL);
    caldera_ctx_set_log_level(m->ctx, m->quiet ? CALDERA_LOG_WARN : CALDERA_LOG_INFO);
    if (m->threads >= 0) caldera_ctx_set_threads(m->ctx, m->threads);
    for (int i = 0; i < m->npaths; i++) {
        struct stat st;
        int r = (stat(m->paths[i], &st) == 0 && S_ISDIR(st.st_mode)) ? caldera_registry_load_dir(m->ctx, m->paths[i])
                                                                       : caldera_registry_load(m->ctx, m->paths[i]);
        if (r < 0) {
            fprintf(stderr, "caldera-pipe %s: --plugin-path: %s\n", cmd, caldera_ctx_errmsg(m->ctx));
            return CLI_EXIT_USAGE;
        }
    }
    if (caldera_registry_load_default(m->ctx) < 0) {
        fprintf(stderr, "caldera-pipe %s: %s\n", cmd, caldera_ctx_errmsg(m->ctx));
        return CLI_EXIT_USAGE;
    }
    struct caldera_compressed_report rep;
    struct caldera_model_open_params mp = { .struct_size = sizeof(mp), .format = m->format, .tokenizer = m->tokenizer,
                                            .weights = m->weights, .dense = m->dense && !m->compressed,
                                            .compressed_report = &rep, .storage = &m->storage };
    double t0 = cli_now();
    if ((rc = caldera_model_open(m->ctx, m->model, &mp, &m->inst)) < 0) {
        fprintf(stderr, "caldera-pipe %s: %s: %s\n", cmd, m->model, caldera_ctx_errmsg(m->ctx));
        return CLI_EXIT_RUNTIME;
    }
    caldera_model_ops_of(m->inst, &m->ops);
    if (m->head && caldera_inst_set(m->inst, "head", m->head) < 0) {
        fprintf(stderr, "caldera-pipe %s: --head %s: %s\n", cmd, m->head, caldera_ctx_errmsg(m->ctx));
        return CLI_EXIT_USAGE;
    }
    if (rep.n_fused + rep.n_dense > 0) print_compressed(cmd, m->model, &rep, cli_now() - t0);   // a caldera-pipe output alone
    if (m->dense && !m->compressed && rep.n_fused + rep.n_dense == 0) {
        fprintf(stderr, "caldera-pipe %s: --dense needs a caldera-pipe output: --model FILE or --compressed FILE\n", cmd);
        return CLI_EXIT_USAGE;
    }
    if (m->compressed) {
        struct caldera_compressed_params cp = { .struct_size = sizeof(cp), .dense = m->dense };
        t0 = cli_now();
        if ((rc = caldera_model_load_compressed(m->ctx, m->inst, m->compressed, &cp, &m->cmp, &rep)) < 0) {
            fprintf(stderr, "caldera-pipe %s: %s: %s\n", cmd, m->compressed, caldera_ctx_errmsg(m->ctx));
            return CLI_EXIT_RUNTIME;
        }
        if (rep.n_fused + rep.n_dense == 0) {
            fprintf(stderr, "caldera-pipe %s: %s: no linear layer of the model is stored compressed there\n", cmd,
                    m->compressed);
            return CLI_EXIT_RUNTIME;
        }
        print_compressed(cmd, m->compressed, &rep, cli_now() - t0);
        m->storage.linear_params = (int64_t) rep.params;   // the layers that run are the compressed file's
        m->storage.linear_bits = rep.stored_bits;
        m->storage.compressed = 1;
        snprintf(m->storage.types, sizeof(m->storage.types), "compressed:%lld", (long long) (rep.n_fused + rep.n_dense));
    }
    return 0;
}

void cli_model_close(struct cli_model * m) {
    caldera_inst_free(m->inst);
    caldera_compressed_free(m->cmp);   // after the model: its layers used it
    m->cmp = NULL;
    caldera_ctx_free(m->ctx);
    m->inst = NULL;
    m->ctx  = NULL;
}
