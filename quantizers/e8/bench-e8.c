// SPDX-License-Identifier: MIT
// bench-e8: MSE per weight of e8 (2, 3, 4 bits) and uniform (per tensor, per group) on N(0,1)
// weights against the Gaussian rate-distortion limit 2^(-2b), and the speed of E8P encoding
// (raw e8p_encode, and the plugin with 1 and 2 threads). Not a test: prints a Markdown table.
//   usage: bench-e8 [rows cols]     (default 1024 1024: 1M weights)
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "caldera/caldera.h"
#include "e8p.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

struct result {
    double mse, bits, seconds;
};

// Quantize w with a fresh instance of plugin configured by "key=value" pairs (NULL-terminated).
static int run(struct caldera_ctx * ctx, const char * plugin, const char * const * kv,
               const struct caldera_tensor * w, struct caldera_tensor * wh, struct result * res) {
    struct caldera_inst * q = NULL;
    struct caldera_pack * pack = NULL;
    int rc;
    if ((rc = caldera_inst_create(ctx, plugin, "q", &q)) < 0) goto fail;
    for (int k = 0; kv[k]; k += 2) {
        if ((rc = caldera_inst_set(q, kv[k], kv[k + 1])) < 0) goto fail;
    }
    if ((rc = caldera_inst_start(q)) < 0 || (rc = caldera_pack_init(&pack)) < 0) goto fail;
    double t0 = now();
    if ((rc = caldera_quantizer_quantize(q, w, NULL, wh, pack)) < 0) goto fail;
    res->seconds = now() - t0;
    const int64_t n = w->ne[0] * w->ne[1];
    double s = 0.0;
    for (int64_t k = 0; k < n; k++) {
        double d = (double) ((const float *) w->data)[k] - ((const float *) wh->data)[k];
        s += d * d;
    }
    res->mse  = s / (double) n;
    res->bits = (double) caldera_pack_bits(pack) / (double) n;
fail:
    if (rc < 0) fprintf(stderr, "bench-e8: %s: %s\n", plugin, caldera_ctx_errmsg(ctx));
    caldera_pack_free(pack);
    caldera_inst_free(q);
    return rc;
}

int main(int argc, char ** argv) {
    int64_t m = argc > 2 ? atoll(argv[1]) : 1024, n = argc > 2 ? atoll(argv[2]) : 1024;
    struct caldera_ctx * ctx = NULL;
    struct caldera_tensor w = { 0 }, wh = { 0 };
    struct e8p_tables * tab = NULL;
    int rc = 1;
    if (m < 1 || n < 8 || n % 8 || caldera_ctx_init(&ctx) < 0) {
        fprintf(stderr, "usage: bench-e8 [rows cols], cols a multiple of 8\n");
        return 2;
    }
    caldera_ctx_set_log_level(ctx, CALDERA_LOG_WARN);
    if (caldera_tensor_alloc_f32(ctx, m, n, &w) < 0 || caldera_tensor_alloc_f32(ctx, m, n, &wh) < 0) goto done;
    struct caldera_rng rng;
    caldera_rng_seed(&rng, 1);
    for (int64_t k = 0; k < m * n; k++) ((float *) w.data)[k] = (float) caldera_rng_normal(&rng);

    printf("N(0,1) weights, %" PRId64 "x%" PRId64 " (%" PRId64 " weights), seed 1\n\n", m, n, m * n);
    printf("| quantizer | options | bits/weight (with scales) | MSE per weight | MSE / 2^(-2b) | quantize ms (%d threads) |\n",
           caldera_ctx_threads(ctx));
    printf("|---|---|---|---|---|---|\n");
    for (int b = 2; b <= 4; b++) {
        char bs[2] = { (char) ('0' + b), 0 };
        double rd = pow(2.0, -2.0 * b);
        const char * e8t[] = { "bits", bs, NULL };
        const char * e8r[] = { "bits", bs, "scale_mode", "row", NULL };
        const char * ut[]  = { "bits", bs, "granularity", "tensor", NULL };
        const char * utc[] = { "bits", bs, "granularity", "tensor", "clip_search", "1", NULL };
        const char * urf[] = { "bits", bs, "granularity", "tensor", "levels", "reference", NULL };
        const char * ug[]  = { "bits", bs, "granularity", "group", "group_size", "64", NULL };
        const char * uga[] = { "bits", bs, "granularity", "group", "group_size", "64", "symmetric", "0", NULL };
        const char * ugc[] = { "bits", bs, "granularity", "group", "group_size", "64", "clip_search", "1", NULL };
        struct { const char * plugin, * label; const char * const * kv; } cfg[] = {
            { "e8", "scale_mode=tensor", e8t },
            { "e8", "scale_mode=row", e8r },
            { "uniform", "tensor, symmetric, levels=full", ut },
            { "uniform", "tensor, symmetric, levels=full, clip_search", utc },
            { "uniform", "tensor, symmetric, levels=reference (CALDERA)", urf },
            { "uniform", "group 64, symmetric, levels=full", ug },
            { "uniform", "group 64, asymmetric", uga },
            { "uniform", "group 64, symmetric, clip_search", ugc },
        };
        for (size_t c = 0; c < sizeof(cfg) / sizeof(cfg[0]); c++) {
            struct result r;
            if (run(ctx, cfg[c].plugin, cfg[c].kv, &w, &wh, &r) < 0) goto done;
            printf("| %s %d-bit | %s | %.4f | %.5f | %.2f | %.1f |\n", cfg[c].plugin, b, cfg[c].label, r.bits,
                   r.mse, r.mse / rd, 1e3 * r.seconds);
        }
        printf("| Gaussian R(D) limit | b = %d | %d | %.5f | 1.00 | |\n", b, b, rd);
    }

    // Speed of the raw search (one thread), then the plugin with 1 and 2 threads.
    if (!(tab = malloc(sizeof(*tab)))) goto done;
    e8p_tables_build(tab);
    const int64_t nvec = m * n / 8;
    uint32_t sink = 0;
    double t_raw[2] = { INFINITY, INFINITY };
    for (int which = 0; which < 2; which++) {
        for (int rep = 0; rep < 5; rep++) {  // best of 5: the machine may be shared
            double t0 = now();
            for (int64_t v = 0; v < nvec; v++) {
                float x[8], out[8];
                for (int i = 0; i < 8; i++) x[i] = ((float *) w.data)[v * 8 + i] * (1.0f / 1.03f);
                sink += which ? e8p_encode_simple(tab, x, out) : e8p_encode(tab, x, out);
            }
            t_raw[which] = fmin(t_raw[which], now() - t0);
        }
    }
    printf("\nE8P encode speed (%" PRId64 " vectors of 8, best of 5 / 3 runs):\n\n", nvec);
    printf("| what | threads | vectors/s | weights/s |\n|---|---|---|---|\n");
    printf("| e8p_encode (e8p.h, sorted matching) | 1 | %.3g | %.3g |\n", (double) nvec / t_raw[0],
           8.0 * (double) nvec / t_raw[0]);
    printf("| e8p_encode_simple (e8p.h, 512 candidates) | 1 | %.3g | %.3g |\n", (double) nvec / t_raw[1],
           8.0 * (double) nvec / t_raw[1]);
    for (int th = 1; th <= 2; th++) {
        caldera_ctx_set_threads(ctx, th);
        for (int b = 2; b <= 4; b += 1) {
            char bs[2] = { (char) ('0' + b), 0 };
            const char * kv[] = { "bits", bs, NULL };
            struct result r;
            double best = INFINITY;
            for (int rep = 0; rep < 3; rep++) {  // best of 3
                if (run(ctx, "e8", kv, &w, &wh, &r) < 0) goto done;
                best = fmin(best, r.seconds);
            }
            r.seconds = best;
            printf("| e8 plugin quantize, bits=%d | %d | %.3g | %.3g |\n", b, th, (double) nvec / r.seconds,
                   8.0 * (double) nvec / r.seconds);
        }
    }
    fprintf(stderr, "(checksum %u)\n", sink);
    rc = 0;
done:
    free(tab);
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    caldera_ctx_free(ctx);
    return rc;
}
