// SPDX-License-Identifier: MIT
// bench-runtime: speed of the llama model runtime as llama-bench measures it: pp512 (one batch
// forward of 512 tokens, logits of the last position only) and tg64 (64 single-token decode steps
// from an empty cache, logits of every step), in tokens/s, for f32 and f16 weights. Random tokens
// (speed does not depend on them). Not a test: prints a Markdown table.
//   usage: bench-runtime MODEL [-t threads] [-r reps] [-p n_prompt] [-n n_gen] [-w f32,f16] [-c COMPRESSED [-d]] [-H f32|f16|q8] [-P TEXT [-N tokens]]
//   -P: perplexity of the first N (512) tokens of TEXT through single-token decode steps instead
//   -H: storage of the output head (the llama plugin's "head" option)
//   -c: the linear layers come from a caldera-pipe output run through the fused kernels (-d: rebuilt dense)
//          (best of reps runs; bench/bench-runtime.sh runs llama-bench beside it)
#include <math.h>
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

// CPU seconds of the whole process (all threads): on a shared machine the wall time depends on
// the load, the work per token much less.
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

static int last_logits(void * user, int64_t seq, int64_t pos0, const struct caldera_tensor * l) {
    *(float *) user = ((const float *) l->data)[0];
    return 0;
}

// -c FILE: the linear layers come from a caldera-pipe output (fused kernels; -d: dense f32 rebuild)
static const char * compressed_path;
static int          compressed_dense;
static const char * head_mode;   // -H f32|f16|q8: the llama plugin's "head" option
static const char * ppl_text;    // -P FILE: perplexity through the decode path instead of speed
static long         ppl_tokens = 512;

// Perplexity of the first ppl_tokens tokens of ppl_text (BOS first), one decode step per token:
// the batch-1 path (int8 activations, the compact head) that pp/eval never takes. Prints a row.
static int decode_ppl(struct caldera_ctx * ctx, struct caldera_inst * m, const struct caldera_model_ops * ops,
                      int64_t vocab, const char * label) {
    FILE * f = fopen(ppl_text, "rb");
    if (!f) {
        fprintf(stderr, "bench-runtime: -P %s: cannot open\n", ppl_text);
        return 1;
    }
    size_t cap = 1 << 16, len;
    char * text = malloc(cap);
    len = text ? fread(text, 1, cap, f) : 0;
    fclose(f);
    int32_t * ids = NULL;
    int64_t   n = 0;
    float *   lg = malloc((size_t) vocab * sizeof(float));
    int       rc = text && lg ? ops->tokenize(m, text, len, 1, 0, &ids, &n) : -1;
    if (rc < 0 || n < 2) {
        fprintf(stderr, "bench-runtime: -P %s: cannot tokenize: %s\n", ppl_text, caldera_ctx_errmsg(ctx));
        free(text);
        free(lg);
        caldera_free(ids);
        return 1;
    }
    n = n > ppl_tokens + 1 ? ppl_tokens + 1 : n;
    double nll = 0;
    rc = ops->kv_reset(m, n);
    for (int64_t i = 0; i + 1 < n && rc == 0; i++) {
        if ((rc = ops->decode(m, &ids[i], 1, lg)) < 0) break;
        double mx = lg[0], se = 0;
        for (int64_t v = 1; v < vocab; v++) mx = lg[v] > mx ? lg[v] : mx;
        for (int64_t v = 0; v < vocab; v++) se += exp((double) lg[v] - mx);
        nll += mx + log(se) - (double) lg[ids[i + 1]];
    }
    if (rc < 0) fprintf(stderr, "bench-runtime: %s\n", caldera_ctx_errmsg(ctx));
    else printf("| caldera llama | %s | decode perplexity, %lld tokens | %.4f |\n", label, (long long) (n - 1), exp(nll / (double) (n - 1)));
    free(text);
    free(lg);
    caldera_free(ids);
    return rc < 0;
}

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
    char label[160];
    snprintf(label, sizeof(label), "%s", weights);
    if (head_mode && caldera_inst_set(m, "head", head_mode) < 0) {
        fprintf(stderr, "bench-runtime: -H %s: %s\n", head_mode, caldera_ctx_errmsg(ctx));
        caldera_inst_free(m);
        return 1;
    }
    if (compressed_path) {
        struct caldera_compressed_params cp = { .struct_size = sizeof(cp), .dense = compressed_dense };
        struct caldera_compressed_report rep;
        if ((rc = caldera_model_load_compressed(ctx, m, compressed_path, &cp, &cmp, &rep)) < 0) {
            fprintf(stderr, "bench-runtime: %s: %s\n", compressed_path, caldera_ctx_errmsg(ctx));
            caldera_inst_free(m);
            caldera_compressed_free(cmp);
            return 1;
        }
        snprintf(label, sizeof(label), "%s + %s %.2f bits (%s%s)", weights, compressed_dense ? "dense rebuild of" : "fused",
                 8.0 * (double) rep.bytes / (double) rep.params, caldera_kernel_isa_name(caldera_kernel_isa()),
                 caldera_kernel_q8() ? ", int8 activations" : "");
    }
    if (head_mode) {
        size_t l = strlen(label);
        snprintf(label + l, sizeof(label) - l, ", head %s", head_mode);
    }
    if (ppl_text) {
        int fail = decode_ppl(ctx, m, ops, d.vocab, label);
        caldera_inst_free(m);
        caldera_compressed_free(cmp);
        return fail;
    }
    int32_t * tok = malloc((size_t) (np > ng ? np : ng) * sizeof(int32_t));
    float *   lg = malloc((size_t) d.vocab * sizeof(float));
    struct caldera_rng rng;
    caldera_rng_seed(&rng, 1);
    for (int64_t i = 0; i < (np > ng ? np : ng); i++) tok[i] = (int32_t) (caldera_rng_u64(&rng) % (uint64_t) d.vocab);
    double best_pp = 1e30, best_tg = 1e30, cpu_pp = 1e30, cpu_tg = 1e30;
    float  sink = 0;
    for (int r = 0; r < reps && rc == 0; r++) {
        struct caldera_model_forward_args fa = { .struct_size = sizeof(fa), .tokens = tok, .n_seq = 1, .n_tok = np,
                                                 .on_logits = last_logits, .logits_user = &sink, .logits_from = np - 1,
                                                 .logits_to = np };
        double c0 = cpu_now(), t0 = now();
        if ((rc = ops->forward(m, &fa)) < 0) break;
        double t1 = now(), c1 = cpu_now();
        if ((rc = ops->kv_reset(m, ng)) < 0) break;
        for (int64_t i = 0; i < ng && rc == 0; i++) rc = ops->decode(m, &tok[i], 1, lg);
        double t2 = now(), c2 = cpu_now();
        cpu_pp = c1 - c0 < cpu_pp ? c1 - c0 : cpu_pp;
        cpu_tg = c2 - c1 < cpu_tg ? c2 - c1 : cpu_tg;
        best_pp = t1 - t0 < best_pp ? t1 - t0 : best_pp;
        best_tg = t2 - t1 < best_tg ? t2 - t1 : best_tg;
    }
    if (rc < 0) fprintf(stderr, "bench-runtime: %s\n", caldera_ctx_errmsg(ctx));
    else {
        printf("| caldera llama | %s | %d | pp%lld | %.1f | %.2f |\n", label, threads, (long long) np, (double) np / best_pp,
               1e3 * cpu_pp / (double) np);
        printf("| caldera llama | %s | %d | tg%lld | %.1f | %.2f |\n", label, threads, (long long) ng, (double) ng / best_tg,
               1e3 * cpu_tg / (double) ng);
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
        else if (!strcmp(argv[i], "-H") && i + 1 < argc) head_mode = argv[++i];
        else if (!strcmp(argv[i], "-P") && i + 1 < argc) ppl_text = argv[++i];
        else if (!strcmp(argv[i], "-N") && i + 1 < argc) ppl_tokens = atol(argv[++i]);
        else if (argv[i][0] != '-' && !path) path = argv[i];
        else {
            fprintf(stderr, "usage: bench-runtime MODEL [-t threads] [-r reps] [-p n_prompt] [-n n_gen] [-w f32,f16] [-c COMPRESSED [-d]] [-H f32|f16|q8] [-P TEXT [-N tokens]]\n");
            return 2;
        }
    }
    if (!path || threads < 1 || reps < 1 || np < 1 || ng < 1) {
        fprintf(stderr, "usage: bench-runtime MODEL [-t threads] [-r reps] [-p n_prompt] [-n n_gen] [-w f32,f16] [-c COMPRESSED [-d]] [-H f32|f16|q8] [-P TEXT [-N tokens]]\n");
        return 2;
    }
    struct caldera_ctx * ctx = NULL;
    if (caldera_ctx_init(&ctx) < 0) return 1;
    caldera_ctx_set_threads(ctx, threads);
    caldera_ctx_set_log_level(ctx, CALDERA_LOG_WARN);
    int fail = 0;
    printf("| runtime | weights | threads | test | tokens/s (best of %d) | CPU ms/token (all threads, least of %d) |\n"
           "|---|---|---|---|---|---|\n", reps, reps);
    char   wbuf[64];
    snprintf(wbuf, sizeof(wbuf), "%s", wlist);
    char * save = NULL;   // strtok_r: loading a compressed file uses strtok
    for (char * w = strtok_r(wbuf, ",", &save); w; w = strtok_r(NULL, ",", &save)) fail |= run(ctx, path, w, reps, np, ng, threads);
    caldera_ctx_free(ctx);
    return fail;
}
