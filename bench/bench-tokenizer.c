// SPDX-License-Identifier: MIT
// bench-tokenizer: encoding speed of the llama tokenizer (models/llama/tokenizer.c) on a text
// file, with the vocabulary of any model a format plugin reads (GGUF, llama2.c + tok512, ...).
// Prints MB/s over wall and process CPU time (best of reps each) and the token count; --ids writes the ids as llama-tokenize --ids
// prints them ("[1, 2, 3]"), so the two can be compared by hand. Not a test.
//   usage: bench-tokenizer MODEL TEXT [-r reps] [--bos] [--no-parse-special] [--ids]
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "caldera/caldera.h"
#include "tokenizer.h"

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

static char * read_all(const char * path, size_t * len) {
    FILE * f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 20, n = 0;
    char * b = malloc(cap);
    for (size_t k; b && (k = fread(b + n, 1, cap - n, f)) > 0;) {
        n += k;
        if (n == cap) {
            char * nb = realloc(b, cap *= 2);
            if (!nb) { free(b); b = NULL; }
            else b = nb;
        }
    }
    fclose(f);
    *len = n;
    return b;
}

int main(int argc, char ** argv) {
    const char * model = NULL, * text_path = NULL;
    int reps = 3, bos = 0, parse_special = 1, print_ids = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-r") == 0 && i + 1 < argc) reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--bos") == 0) bos = 1;
        else if (strcmp(argv[i], "--no-parse-special") == 0) parse_special = 0;
        else if (strcmp(argv[i], "--ids") == 0) print_ids = 1;
        else if (!model) model = argv[i];
        else if (!text_path) text_path = argv[i];
        else {
            fprintf(stderr, "bench-tokenizer: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!model || !text_path || reps < 1) {
        fprintf(stderr, "usage: bench-tokenizer MODEL TEXT [-r reps] [--bos] [--no-parse-special] [--ids]\n");
        return 2;
    }
    struct caldera_ctx * ctx = NULL;
    struct caldera_inst * rd = NULL;
    struct llm_tokenizer * tok = NULL;
    int32_t * ids = NULL;
    int64_t n = 0;
    size_t len = 0;
    char * text = read_all(text_path, &len);
    int rc = 1;
    if (!text) {
        fprintf(stderr, "bench-tokenizer: %s: cannot read\n", text_path);
        return 1;
    }
    if (caldera_ctx_init(&ctx) < 0) goto done;
    const struct caldera_plugin * best = NULL;
    int best_score = 0;
    for (int64_t i = 0; i < caldera_registry_count(ctx); i++) {
        const struct caldera_plugin * q = caldera_registry_get(ctx, i);
        if (q->kind != CALDERA_PLUGIN_KIND_FORMAT) continue;
        const struct caldera_format_ops * o = q->ops;
        int s = o->probe_path && o->open ? o->probe_path(model) : 0;
        if (s > best_score) {
            best_score = s;
            best = q;
        }
    }
    if (!best) {
        fprintf(stderr, "bench-tokenizer: %s: no format plugin reads this file\n", model);
        goto done;
    }
    const struct caldera_format_ops * ops = best->ops;
    if (caldera_inst_create(ctx, best->name, "model", &rd) < 0 || caldera_inst_start(rd) < 0 || ops->open(rd, model) < 0 ||
        !ops->meta || llm_tokenizer_init(ctx, ops->meta(rd), &tok) < 0) {
        fprintf(stderr, "bench-tokenizer: %s\n", caldera_ctx_errmsg(ctx));
        goto done;
    }
    double best_t = 1e30, best_cpu = 1e30;  // wall and process CPU time (the machine may be shared)
    for (int r = 0; r < reps; r++) {
        caldera_freep(&ids);
        double t0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
        if (llm_tokenizer_encode(tok, text, len, bos, parse_special, &ids, &n) < 0) {
            fprintf(stderr, "bench-tokenizer: %s\n", caldera_ctx_errmsg(ctx));
            goto done;
        }
        double dt = clock_s(CLOCK_MONOTONIC) - t0, dc = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
        if (dt < best_t) best_t = dt;
        if (dc < best_cpu) best_cpu = dc;
    }
    if (print_ids) {
        printf("[");
        for (int64_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", (int) ids[i]);
        printf("]\n");
    }
    fprintf(stderr, "%s: %zu bytes -> %" PRId64 " tokens; best of %d: wall %.3f s = %.2f MB/s, CPU %.3f s = %.2f MB/s (%.0f tokens/s)\n",
            text_path, len, n, reps, best_t, (double) len / best_t / 1e6, best_cpu, (double) len / best_cpu / 1e6, (double) n / best_cpu);
    rc = 0;
done:
    caldera_free(ids);
    llm_tokenizer_free(tok);
    if (rd) caldera_inst_free(rd);
    caldera_ctx_free(ctx);
    free(text);
    return rc;
}
