// SPDX-License-Identifier: MIT
// bench-kernels: throughput of the fused compressed-layer kernels (caldera-kernels.h) against
// OpenBLAS f32 sgemv/sgemm on the SmolLM2-135M linear shapes, at batch 1 (decoding) and batch 512
// (prompt processing), per kernel variant; bytes moved and GB/s against this machine's measured
// memory bandwidth (a STREAM-like copy and read), and the sgemm rate. Not a test: prints Markdown.
//   usage: bench-kernels [-t threads] [-r reps] [-b batch] [-f footprint_MiB] [-s] [-k kernel] [-S shape]
//          (-s: short run; -k: only kernels whose name contains the text; -S: only shape 0..3)
// Batch 1 cycles through enough copies of each weight to exceed the footprint (default 128 MiB,
// beyond the L3), so the numbers are those of a model pass streaming weights from memory.
#include <cblas.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "caldera/caldera-kernels.h"
#include "caldera/caldera.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

static void fill_normal(float * x, int64_t n, uint64_t seed) {
    struct caldera_rng rng;
    caldera_rng_seed(&rng, seed);
    for (int64_t i = 0; i < n; i++) {
        x[i] = (float) caldera_rng_normal(&rng);
    }
}

// ---------------------------------------------------------------------------------------------
// Memory bandwidth: copy (2 bytes moved per byte) and read (sum), split over the context's threads.

struct bw_job {
    const float * src;
    float *       dst;
};

static _Thread_local volatile float bw_sink;  // keeps the read loop from being optimised away

static void bw_copy(void * arg, int64_t i0, int64_t i1) {
    struct bw_job * j = arg;
    memcpy(j->dst + i0, j->src + i0, (size_t) (i1 - i0) * sizeof(float));
}

static void bw_read(void * arg, int64_t i0, int64_t i1) {
    struct bw_job * j = arg;
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    int64_t i = i0;
    for (; i + 8 <= i1; i += 8) {
        s0 += j->src[i];     s1 += j->src[i + 1]; s2 += j->src[i + 2]; s3 += j->src[i + 3];
        s4 += j->src[i + 4]; s5 += j->src[i + 5]; s6 += j->src[i + 6]; s7 += j->src[i + 7];
    }
    bw_sink = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
}

static void measure_bandwidth(struct caldera_ctx * ctx, int reps, double * copy_gbs, double * read_gbs) {
    const int64_t n = (int64_t) 64 << 20;  // 256 MiB of floats per array
    float * a = malloc((size_t) n * sizeof(float)), * b = malloc((size_t) n * sizeof(float));
    if (!a || !b) {
        fprintf(stderr, "bench-kernels: out of memory for the bandwidth arrays\n");
        exit(1);
    }
    for (int64_t i = 0; i < n; i++) {
        a[i] = (float) (i & 1023);
        b[i] = 0.0f;
    }
    struct bw_job job = { a, b };
    *copy_gbs = *read_gbs = 0.0;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        caldera_parallel_for(ctx, n, n / 64, bw_copy, &job);
        double t1 = now();
        caldera_parallel_for(ctx, n, n / 64, bw_read, &job);
        double t2 = now();
        double c = 2.0 * (double) n * sizeof(float) / (t1 - t0) / 1e9, d = (double) n * sizeof(float) / (t2 - t1) / 1e9;
        *copy_gbs = c > *copy_gbs ? c : *copy_gbs;
        *read_gbs = d > *read_gbs ? d : *read_gbs;
    }
    free(a);
    free(b);
}

// ---------------------------------------------------------------------------------------------
// One compressed layer, replicated ncopy times (each copy's tensors at its own address).

struct layer {
    const char *      name;
    struct caldera_kw kw[1];
    int               ncopy;
    struct caldera_kw * copies;    // (ncopy) descriptors
    void **           owned;       // buffers to free
    int               nowned;
    uint64_t          bytes;       // compressed bytes of one copy
    struct caldera_inst * q;       // the quantizer (its private state holds the E8P grids)
};

static void * dup_bytes(struct layer * l, const void * src, size_t bytes) {
    void * p = malloc(bytes);
    if (!p) {
        fprintf(stderr, "bench-kernels: out of memory\n");
        exit(1);
    }
    memcpy(p, src, bytes);
    l->owned[l->nowned++] = p;
    return p;
}

// Replicate pack tensors of quantizer q (m × n) into ncopy independent copies and fill descriptors.
static int make_layer(struct caldera_ctx * ctx, const char * plugin, const char * opts, const char * name,
                      int64_t m, int64_t n, double footprint, struct layer * l) {
    struct caldera_inst * q = NULL;
    struct caldera_pack * pack = NULL;
    struct caldera_tensor w = { 0 }, wh = { 0 };
    int rc;
    memset(l, 0, sizeof(*l));
    l->name = name;
    if (strcmp(plugin, "f32") == 0 || strcmp(plugin, "f16") == 0) {
        int f16 = plugin[1] == '1';
        float * wd = malloc((size_t) (m * n) * sizeof(float));
        fill_normal(wd, m * n, 3);
        l->bytes  = (uint64_t) (m * n) * (f16 ? 2 : 4);
        l->ncopy  = (int) (footprint / (double) l->bytes) + 1;
        l->copies = calloc((size_t) l->ncopy, sizeof(*l->copies));
        l->owned  = calloc((size_t) l->ncopy, sizeof(void *));
        uint16_t * h = f16 ? malloc((size_t) (m * n) * 2) : NULL;
        if (f16) {
            caldera_convert_from_f32(CALDERA_DTYPE_F16, wd, m * n, h);
        }
        for (int c = 0; c < l->ncopy; c++) {
            l->copies[c] = (struct caldera_kw) { .type = f16 ? CALDERA_KW_F16 : CALDERA_KW_F32, .rows = m, .cols = n,
                                                 .ld = n, .data = dup_bytes(l, f16 ? (void *) h : (void *) wd, l->bytes) };
        }
        free(wd);
        free(h);
        return 0;
    }
    char buf[256];
    if ((rc = caldera_inst_create(ctx, plugin, "q", &q)) < 0) {
        return rc;
    }
    snprintf(buf, sizeof(buf), "%s", opts);
    for (char * kv = strtok(buf, ","); kv; kv = strtok(NULL, ",")) {
        char * eq = strchr(kv, '=');
        *eq = 0;
        if ((rc = caldera_inst_set(q, kv, eq + 1)) < 0) {
            goto fail;
        }
    }
    if ((rc = caldera_inst_start(q)) < 0 || (rc = caldera_tensor_alloc_f32(ctx, m, n, &w)) < 0 ||
        (rc = caldera_tensor_alloc_f32(ctx, m, n, &wh)) < 0 || (rc = caldera_pack_init(&pack)) < 0) {
        goto fail;
    }
    fill_normal(w.data, m * n, 7);
    const struct caldera_quantizer_ops * ops = caldera_inst_plugin(q)->ops;
    void * st = NULL;
    if ((rc = ops->quantize(q, &w, NULL, &wh, pack)) < 0 || (rc = ops->linear_init(q, pack, m, n, &st)) < 0) {
        goto fail;
    }
    l->kw[0] = *(const struct caldera_kw *) st;
    ops->linear_free(q, st);
    l->bytes  = caldera_kw_bytes(l->kw);
    l->ncopy  = (int) (footprint / (double) l->bytes) + 1;
    l->copies = calloc((size_t) l->ncopy, sizeof(*l->copies));
    l->owned  = calloc((size_t) l->ncopy * 4, sizeof(void *));
    const struct caldera_kw * k = l->kw;
    const size_t nb = (size_t) (m * n / 8), sb = k->scale_dtype == CALDERA_DTYPE_F16 ? 2 : 4;
    for (int c = 0; c < l->ncopy; c++) {
        struct caldera_kw d = *k;
        if (k->type == CALDERA_KW_E8P) {
            d.codes  = dup_bytes(l, k->codes, nb * 2);
            d.codes2 = k->codes2 ? dup_bytes(l, k->codes2, nb * (k->bits == 4 ? 2 : 1)) : NULL;
            d.scale  = dup_bytes(l, k->scale, (k->scale_per_row ? (size_t) m : 1) * sb);
        } else {
            size_t ns = (size_t) (m * ((n + k->group_size - 1) / k->group_size));   // group scales (as benched)
            d.stream = dup_bytes(l, k->stream, ((size_t) (m * n) * (size_t) k->bits + 7) / 8);
            d.scale  = dup_bytes(l, k->scale, ns * sb);
            d.zero   = k->zero ? dup_bytes(l, k->zero, ns) : NULL;
        }
        l->copies[c] = d;
    }
    l->q = q;   // the grids live in q's private state: freed with the layer
    q = NULL;
fail:
    caldera_pack_free(pack);
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    caldera_inst_free(q);
    return rc;
}

static void free_layer(struct layer * l) {
    for (int i = 0; i < l->nowned; i++) {
        free(l->owned[i]);
    }
    free(l->owned);
    free(l->copies);
    caldera_inst_free(l->q);
}

// Best seconds per call of y = x Ŵᵀ over reps rounds, each round one call per copy (batch 1) or
// one call (batch > 1).
static double time_layer(struct caldera_ctx * ctx, const struct layer * l, const float * x, int64_t batch, float * y,
                         int reps, int blas) {
    const struct caldera_kw * k = &l->copies[0];
    double best = 1e30;
    const int calls = batch == 1 ? l->ncopy : 1;
    for (int r = 0; r < reps + 1; r++) {   // the first round warms up
        double t0 = now();
        for (int c = 0; c < calls; c++) {
            const struct caldera_kw * kc = &l->copies[c];
            if (blas) {
                if (batch == 1) {
                    cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint) k->rows, (blasint) k->cols, 1.0f, kc->data,
                                (blasint) k->cols, x, 1, 0.0f, y, 1);
                } else {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint) batch, (blasint) k->rows,
                                (blasint) k->cols, 1.0f, x, (blasint) k->cols, kc->data, (blasint) k->cols, 0.0f, y,
                                (blasint) k->rows);
                }
            } else if (caldera_kw_matmul(ctx, kc, x, batch, k->cols, y, k->rows, 0) < 0) {
                fprintf(stderr, "bench-kernels: %s failed: %s\n", l->name, caldera_ctx_errmsg(ctx));
                exit(1);
            }
        }
        double t = (now() - t0) / calls;
        if (r > 0 && t < best) {
            best = t;
        }
    }
    return best;
}

int main(int argc, char ** argv) {
    int threads = 2, reps = 5, opt, short_run = 0;
    const char * only = NULL;   // -k: kernels whose name contains this
    int64_t only_shape = -1;    // -S: one shape index
    int64_t big_batch = 512;
    double footprint = 128.0;
    while ((opt = getopt(argc, argv, "t:r:b:f:sk:S:")) != -1) {
        switch (opt) {
        case 't': threads = atoi(optarg); break;
        case 'r': reps = atoi(optarg); break;
        case 'b': big_batch = atoll(optarg); break;
        case 'f': footprint = atof(optarg); break;
        case 's': short_run = 1; break;
        case 'k': only = optarg; break;
        case 'S': only_shape = atoll(optarg); break;
        default:
            fprintf(stderr, "usage: bench-kernels [-t threads] [-r reps] [-b batch] [-f footprint_MiB] [-s] [-k kernel] [-S shape]\n");
            return 2;
        }
    }
    struct caldera_ctx * ctx = NULL;
    if (caldera_ctx_init(&ctx) < 0 || caldera_ctx_set_threads(ctx, threads) < 0) {
        fprintf(stderr, "bench-kernels: cannot create a context\n");
        return 1;
    }
    caldera_ctx_set_log_level(ctx, CALDERA_LOG_WARN);
    double copy_gbs, read_gbs;
    measure_bandwidth(ctx, short_run ? 2 : reps, &copy_gbs, &read_gbs);
    // sgemm rate (1024^3, best of reps)
    const int64_t gs = 1024;
    float * ga = malloc((size_t) (gs * gs) * sizeof(float) * 3);
    fill_normal(ga, gs * gs * 2, 1);
    double gbest = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint) gs, (blasint) gs, (blasint) gs, 1.0f, ga,
                    (blasint) gs, ga + gs * gs, (blasint) gs, 0.0f, ga + 2 * gs * gs, (blasint) gs);
        double t = now() - t0;
        gbest = t < gbest ? t : gbest;
    }
    free(ga);
    const double sgemm_gflops = 2.0 * (double) (gs * gs * gs) / gbest / 1e9;
    printf("# bench-kernels (threads %d, best of %d; footprint %.0f MiB at batch 1)\n\n", threads, reps, footprint);
    printf("memory bandwidth: copy %.1f GB/s, read %.1f GB/s; sgemm 1024^3: %.1f GFLOP/s; kernel variant "
           "chosen: %s\n\n", copy_gbs, read_gbs, sgemm_gflops, caldera_kernel_isa_name(caldera_kernel_isa()));

    static const int64_t shapes[][2] = { { 576, 576 }, { 1536, 576 }, { 576, 1536 }, { 192, 576 } };
    static const struct { const char * plugin, * opts, * name; } kinds[] = {
        { "f32",     "",                                                   "f32 (OpenBLAS)" },
        { "f32",     "",                                                   "f32 (kernels)" },
        { "f16",     "",                                                   "f16" },
        { "e8",      "bits=2",                                             "E8P 2-bit" },
        { "e8",      "bits=3",                                             "E8P 3-bit" },
        { "e8",      "bits=4",                                             "E8P 4-bit" },
        { "uniform", "bits=4,granularity=group,group_size=64,symmetric=0", "uniform 4-bit g64 asym" },
        { "uniform", "bits=2,granularity=group,group_size=64,symmetric=0", "uniform 2-bit g64 asym" },
    };
    const int nkinds = (int) (sizeof(kinds) / sizeof(kinds[0]));
    float * x = malloc((size_t) (big_batch * 1536) * sizeof(float)), * y = malloc((size_t) (big_batch * 1536) * sizeof(float));
    fill_normal(x, big_batch * 1536, 11);
    printf("| shape (out x in) | kernel | variant | bits/w | batch | us/call | GFLOP/s | bytes/call | GB/s | %% of read BW | vs f32 BLAS |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        const int64_t m = shapes[s][0], n = shapes[s][1];
        double ref_t[2] = { 0, 0 };
        if (only_shape >= 0 && (int64_t) s != only_shape) {
            continue;
        }
        for (int ki = 0; ki < nkinds; ki++) {
            struct layer l;
            if (ki > 0 && only && !strstr(kinds[ki].name, only)) {
                continue;
            }
            if (make_layer(ctx, kinds[ki].plugin, kinds[ki].opts, kinds[ki].name, m, n, footprint * 1048576.0, &l) < 0) {
                fprintf(stderr, "bench-kernels: cannot build %s: %s\n", kinds[ki].name, caldera_ctx_errmsg(ctx));
                return 1;
            }
            const int blas = ki == 0;
            for (int bi = 0; bi < (big_batch > 1 ? 2 : 1); bi++) {   // -b 1: the batch-1 rows once
                const int64_t batch = bi ? big_batch : 1;
                for (int isa = blas ? 0 : CALDERA_ISA_COUNT - 1; isa >= 0; isa--) {
                    if (!blas && (!caldera_kernel_isa_supported(isa) || caldera_kernel_set_isa(isa) < 0)) {
                        continue;
                    }
                    if (!blas && batch > 1 && isa != CALDERA_ISA_COUNT - 1 && short_run) {
                        continue;
                    }
                    double t = time_layer(ctx, &l, x, batch, y, short_run ? 2 : reps, blas);
                    if (blas) {
                        ref_t[bi] = t;
                    }
                    const double flops = 2.0 * (double) (m * n) * (double) batch;
                    const double bytes = (double) l.bytes + 4.0 * (double) batch * (double) (m + n);
                    printf("| %" PRId64 " x %" PRId64 " | %s | %s | %.2f | %" PRId64 " | %.1f | %.1f | %.0f | %.1f | %.0f%% | %.2fx |\n",
                           m, n, l.name, blas ? "openblas" : caldera_kernel_isa_name(isa),
                           8.0 * (double) l.bytes / (double) (m * n), batch, t * 1e6, flops / t / 1e9, bytes,
                           bytes / t / 1e9, 100.0 * bytes / t / 1e9 / read_gbs, ref_t[bi] / t);
                    fflush(stdout);
                    if (blas) {
                        break;
                    }
                }
                caldera_kernel_set_isa(-1);
            }
            free_layer(&l);
        }
    }
    free(x);
    free(y);
    caldera_ctx_free(ctx);
    return 0;
}
