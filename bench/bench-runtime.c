// SPDX-License-Identifier: MIT
// bench-runtime: speed of the llama model runtime as llama-bench measures it: pp512 (one batch
// forward of 512 tokens, logits of the last position only) and tg64 (64 single-token decode steps
// from an empty cache, logits of every step), in tokens/s, for f32 and f16 weights. Random tokens
// (speed does not depend on them). Not a test: prints a Markdown table.
//   usage: bench-runtime MODEL [-t threads] [-r reps] [-p n_prompt] [-n n_gen] [-w f32,f16] [-c COMPRESSED [-d]]
//   -c: the linear layers come from a caldera-pipe output run through the fused kernels (-d: rebuilt dense)
//          (best of reps runs; bench/bench-runtime.sh runs llama-bench beside it)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "caldera/caldera-kernels.h"
#include "caldera/caldera.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

static int last_logits(void * user, int64_t seq, int64_t pos0, const struct caldera_tensor * l) {
    *(float *) user = ((const float *) l->data)[0];
    return 0;
}

// -c FILE: the linear layers come from a caldera-pipe output (fused kernels; -d: dense f32 rebuild)
static const char * compressed_path;
static int          compressed_dense;

static int run(struct caldera_ctx * ctx, const char * path, const char * weights, int reps, int64_t np, int64_t ng, int threads) {
    struct caldera_model_open_params mp = { .struct_size = sizeof(mp), .weights = weights };
    struct caldera_inst *            m = NULL;
    const struct caldera_model_ops * ops;
    struct caldera_model_desc        d;
    int                              rc;
    if ((rc = caldera_model_open(ctx, path, &mp, &m)) < 0 || (rc = caldera_model_ops_of(m, &ops)) < 0 ||
        (rc = ops->desc(m, &d)) < 0) {
        fprintf(stderr, "bench-runtime: %s: %s\n", path, caldera_ctx_errmsg(ctx));
        caldera_inst_free(m);
        return 1;
    }
    struct caldera_compressed * cmp = NULL;
    char label[96];
    snprintf(label, sizeof(label), "%s", weights);
    if (compressed_path) {
        struct caldera_compressed_params cp = { .struct_size = sizeof(cp), .dense = compressed_dense };
        struct caldera_compressed_report rep;
        if ((rc = caldera_model_load_compressed(ctx, m, compressed_path, &cp, &cmp, &rep)) < 0) {
            fprintf(stderr, "bench-runtime: %s: %s\n", compressed_path, caldera_ctx_errmsg(ctx));
            caldera_inst_free(m);
            caldera_compressed_free(cmp);
            return 1;
        }
        snprintf(label, sizeof(label), "%s + %s %.2f bits (%s)", weights, compressed_dense ? "dense rebuild of" : "fused",
                 8.0 * (double) rep.bytes / (double) rep.params, caldera_kernel_isa_name(caldera_kernel_isa()));
    }
    int32_t * tok = malloc((size_t) (np > ng ? np : ng) * sizeof(int32_t));
    float *   lg = malloc((size_t) d.vocab * sizeof(float));
    struct caldera_rng rng;
    caldera_rng_seed(&rng, 1);
    for (int64_t i = 0; i < (np > ng ? np : ng); i++) tok[i] = (int32_t) (caldera_rng_u64(&rng) % (uint64_t) d.vocab);
    double best_pp = 1e30, best_tg = 1e30;
    float  sink = 0;
    for (int r = 0; r < reps && rc == 0; r++) {
        struct caldera_model_forward_args fa = { .struct_size = sizeof(fa), .tokens = tok, .n_seq = 1, .n_tok = np,
                                                 .on_logits = last_logits, .logits_user = &sink, .logits_from = np - 1,
                                                 .logits_to = np };
        double t0 = now();
        if ((rc = ops->forward(m, &fa)) < 0) break;
        double t1 = now();
        if ((rc = ops->kv_reset(m, ng)) < 0) break;
        for (int64_t i = 0; i < ng && rc == 0; i++) rc = ops->decode(m, &tok[i], 1, lg);
        double t2 = now();
        best_pp = t1 - t0 < best_pp ? t1 - t0 : best_pp;
        best_tg = t2 - t1 < best_tg ? t2 - t1 : best_tg;
    }
    if (rc < 0) fprintf(stderr, "bench-runtime: %s\n", caldera_ctx_errmsg(ctx));
    else {
        printf("| caldera llama | %s | %d | pp%lld | %.1f |\n", label, threads, (long long) np, (double) np / best_pp);
        printf("| caldera llama | %s | %d | tg%lld | %.1f |\n", label, threads, (long long) ng, (double) ng / best_tg);
    }
    free(tok);
    free(lg);
    caldera_inst_free(m);
    caldera_compressed_free(cmp);   // after the model: its layers used it
    return rc < 0;
}

int main(int argc, char ** argv) {
    const char * path = NULL, * wlist = "f32,f16";
    int          threads = 2, reps = 3;
    long         np = 512, ng = 64;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-r") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-p") && i + 1 < argc) np = atol(argv[++i]);
        else if (!strcmp(argv[i], "-n") && i + 1 < argc) ng = atol(argv[++i]);
        else if (!strcmp(argv[i], "-w") && i + 1 < argc) wlist = argv[++i];
        else if (!strcmp(argv[i], "-c") && i + 1 < argc) compressed_path = argv[++i];
        else if (!strcmp(argv[i], "-d")) compressed_dense = 1;
        else if (argv[i][0] != '-' && !path) path = argv[i];
        else {
            fprintf(stderr, "usage: bench-runtime MODEL [-t threads] [-r reps] [-p n_prompt] [-n n_gen] [-w f32,f16] [-c COMPRESSED [-d]]\n");
            return 2;
        }
    }
    if (!path || threads < 1 || reps < 1 || np < 1 || ng < 1) {
        fprintf(stderr, "usage: bench-runtime MODEL [-t threads] [-r reps] [-p n_prompt] [-n n_gen] [-w f32,f16] [-c COMPRESSED [-d]]\n");
        return 2;
    }
    struct caldera_ctx * ctx = NULL;
    if (caldera_ctx_init(&ctx) < 0) return 1;
    caldera_ctx_set_threads(ctx, threads);
    caldera_ctx_set_log_level(ctx, CALDERA_LOG_WARN);
    int fail = 0;
    printf("| runtime | weights | threads | test | tokens/s (best of %d) |\n|---|---|---|---|---|\n", reps);
    char   wbuf[64];
    snprintf(wbuf, sizeof(wbuf), "%s", wlist);
    for (char * w = strtok(wbuf, ","); w; w = strtok(NULL, ",")) fail |= run(ctx, path, w, reps, np, ng, threads);
    caldera_ctx_free(ctx);
    return fail;
}
